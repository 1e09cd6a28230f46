"""Evaluate one model on a benchmark: embed every needed document once, search, score.

Result dict (percent values):
``{"sym": {"R@1", "R@5", "R@10", "mR", "Precision", "Avg", "Precision[text_swap]",
"Precision[image_swap]", "queries", "pool"}, "asym": {task: {"R@1", "R@5", "R@10", "queries",
"pool"}}, "asym_R@10_mean", "milvus": {...} (when a URI is given), "seconds": {...}}``.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from .embed import TowerCache, embed_docs
from .manifest import ASYM_TASKS, SYM, TASK_POOLS, Benchmark
from .metrics import recall_at_k, sym_summary
from .search import exact_ranks, milvus_ranks

TASKS = (SYM, *ASYM_TASKS)


def _needed_docs(bench: Benchmark, tasks) -> list[str]:
    ids = set()
    for task in tasks:
        ids.update(bench.pool(TASK_POOLS[task]))
        for q in bench.task_queries(task):
            ids.update((q.query, q.target))
    for t in bench.triplets:
        ids.update((t.anchor, t.positive, t.negative))
    return [d for d in bench.docs if d in ids]          # manifest order


def _task_arrays(bench: Benchmark, task: str, row: dict, emb: torch.Tensor):
    pool_ids = bench.pool(TASK_POOLS[task])
    pos = {d: i for i, d in enumerate(pool_ids)}
    queries = bench.task_queries(task)
    Q = emb[[row[q.query] for q in queries]]
    P = emb[[row[d] for d in pool_ids]]
    target = torch.tensor([pos[q.target] for q in queries], dtype=torch.long)
    exclude = torch.tensor([pos.get(q.query, -1) for q in queries], dtype=torch.long)
    return Q, P, target, exclude


def score(bench: Benchmark, emb: torch.Tensor, row: dict, tasks=TASKS,
          milvus_uri: Optional[str] = None) -> dict:
    """Metrics from embeddings: ``emb`` (N, D) float32 with ``row[doc_id]`` its row."""
    out: dict = {"asym": {}}
    for task in tasks:
        Q, P, target, exclude = _task_arrays(bench, task, row, emb)
        ranks = exact_ranks(Q, P, target, exclude)
        if task == SYM:
            a = emb[[row[t.anchor] for t in bench.triplets]].double()
            p = emb[[row[t.positive] for t in bench.triplets]].double()
            n = emb[[row[t.negative] for t in bench.triplets]].double()
            res = sym_summary(ranks, (a * p).sum(1), (a * n).sum(1),
                              [t.negative_kind for t in bench.triplets])
            out["sym"] = {**res, "queries": len(target), "pool": P.shape[0]}
        else:
            out["asym"][task] = {**recall_at_k(ranks), "queries": len(target), "pool": P.shape[0]}
        if milvus_uri:
            m = milvus_ranks(Q, P, target, exclude, milvus_uri)
            mr = recall_at_k(m)
            out.setdefault("milvus", {})[task] = {
                **mr, "agreement_top10": float(((m <= 10) == (ranks <= 10)).double().mean() * 100)}
    if out["asym"]:
        out["asym_R@10_mean"] = sum(v["R@10"] for v in out["asym"].values()) / len(out["asym"])
    return out


def evaluate(model, bench: Benchmark, tasks=TASKS, batch_size: int = 32,
             cache: Optional[TowerCache] = None, milvus_uri: Optional[str] = None) -> dict:
    """Embed the documents ``tasks`` need with ``model`` and score them (see module docstring).

    cache: a TowerCache shared across models with the same frozen towers (None: ``encode``).
    milvus_uri: also search through Milvus (FLAT, inner product) and report its recall.
    """
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {list(tasks)}")
    t0 = time.perf_counter()
    ids = _needed_docs(bench, tasks)
    emb = embed_docs(model, [bench.docs[d] for d in ids], batch_size=batch_size, cache=cache)
    t1 = time.perf_counter()
    out = score(bench, emb, {d: i for i, d in enumerate(ids)}, tasks, milvus_uri)
    out["seconds"] = {"embed": round(t1 - t0, 2), "search": round(time.perf_counter() - t1, 2)}
    out["docs_embedded"] = len(ids)
    out["dim"] = int(emb.shape[1])
    return out
