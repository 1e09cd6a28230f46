"""``solar-index eval`` as a library call: load or build the benchmark, evaluate models, report."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .construct import BenchmarkConfig, build_benchmark
from .evaluate import TASKS, evaluate
from .manifest import Benchmark, load_benchmark
from .report import asym_table, flat, markdown_table


@dataclass
class EvalConfig:
    """models: (label, checkpoint folder or preset name) pairs.
    benchmark: a manifest path, or None to build one from ``build``.
    save_benchmark: where to write the built manifest (optional).
    out: JSON results path (optional).  milvus_uri: also search through Milvus.
    tower_cache: reuse frozen tower outputs across the models (same numbers, less time).
    """
    models: list
    benchmark: Optional[str] = None
    build: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    save_benchmark: Optional[str] = None
    out: Optional[str] = None
    milvus_uri: Optional[str] = None
    batch_size: int = 32
    tower_cache: bool = False
    tasks: tuple = TASKS
    device: Optional[str] = None


def manifest_digest(bench: Benchmark) -> str:
    """sha256 of the benchmark's content (documents, triplets, queries; not the header), so
    identical builds give identical digests."""
    h = hashlib.sha256()
    for obj in (list(bench.docs.values()), bench.triplets, bench.queries):
        h.update(json.dumps(obj, default=lambda o: o.__dict__, sort_keys=True).encode())
    return h.hexdigest()


def get_benchmark(cfg: EvalConfig, log: Callable = print) -> Benchmark:
    if cfg.benchmark:
        return load_benchmark(cfg.benchmark)
    t = time.perf_counter()
    bench = build_benchmark(cfg.build)
    log(f"built the benchmark in {time.perf_counter() - t:.0f} s: {bench.stats['triplets']} triplets, "
        f"sym pool {bench.stats['pool_sizes'].get('sym', 0)} documents")
    if cfg.save_benchmark:
        bench.save(cfg.save_benchmark)
    return bench


def run_eval(cfg: EvalConfig, log: Callable = print) -> dict:
    """Evaluate every model of ``cfg``; returns {"benchmark": {...}, "models": {label: result}}."""
    from solar.model import load_model
    if not cfg.models:
        raise ValueError("give at least one model (checkpoint folder or preset name)")
    if cfg.batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {cfg.batch_size}")
    bench = get_benchmark(cfg, log)
    cache = None
    if cfg.tower_cache:
        from .embed import TowerCache
        cache = TowerCache()
    out = {"benchmark": {"manifest": cfg.benchmark, "sha256": manifest_digest(bench),
                         "config": bench.config, "stats": bench.stats},
           "models": {}}
    for label, path in cfg.models:
        model = load_model(path, device=cfg.device)
        res = evaluate(model, bench, cfg.tasks, cfg.batch_size, cache, cfg.milvus_uri)
        res["checkpoint"] = str(path)
        out["models"][label] = res
        log(f"{label}: Avg {res['sym']['Avg']:.1f} (embedded {res['docs_embedded']} docs "
            f"in {res['seconds']['embed']:.0f} s)" if "sym" in res else f"{label}: done")
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(out, indent=2))
    return out


def tables(result: dict) -> str:
    """The symmetric and asymmetric tables of a ``run_eval`` result, in Markdown."""
    rows = [(label, flat(r)) for label, r in result["models"].items()]
    parts = []
    if "R@1" in rows[0][1]:
        parts.append(markdown_table(rows))
    if any(k.startswith(("t->", "i->")) for k in rows[0][1]):
        parts.append(asym_table(rows))
    return "\n\n".join(parts)
