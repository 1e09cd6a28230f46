"""Measure ingestion and search on one data set: ``python -m solar_milvus.measure``.

* encode-only docs/s: the same records decoded in memory beforehand, then encoded in batches
  (the model's cost alone);
* end-to-end docs/s: the ingestion job from the source into a fresh Milvus Lite folder (read,
  decode in workers, encode, upsert, ledger), on the same records with the same batch size;
* search latency p50/p95 over single-query requests (text only, image only, image + text), once
  for the store alone (pre-encoded vectors) and once including the query's encoding.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q))


def encode_only(embedder, records, batch_size: int) -> float:
    """docs/s of embedder.encode_batch over decoded records."""
    t = time.perf_counter()
    for i in range(0, len(records), batch_size):
        b = records[i:i + batch_size]
        embedder.encode_batch([r.image for r in b], [r.text for r in b])
    return len(records) / (time.perf_counter() - t)


def measure(model: str, source: str, batch_size: int, workers: int, queries: int,
            root: Path, rounds: int = 2) -> dict:
    """Alternate encode-only and end-to-end runs ``rounds`` times (other load on the machine
    then hits both alike) and time searches on the last ingested collection."""
    from solar.data import Document, decode_record, open_source

    from .ingest import IngestConfig, ingest
    from .models import load_embedder
    from .search import Searcher
    from .store import connect
    emb = load_embedder(model, batch_size=batch_size)
    records = [d for d in (decode_record(r) for r in open_source(source))
               if isinstance(d, Document)]
    encode_only(emb, records[:batch_size], batch_size)               # warm-up
    uri = str(root / "measure.db")
    client = connect(uri, "")
    enc, runs = [], []
    for k in range(rounds):
        enc.append(encode_only(emb, records, batch_size))
        runs.append(ingest(emb, IngestConfig([source], uri=uri, token="", collection=f"m{k}",
                                             batch_size=batch_size, workers=workers,
                                             progress=False), client=client))
    e2e = [r.docs_per_s for r in runs]
    lat = _latencies(Searcher(client, runs[-1].collection, emb), records, queries)
    return {
        "model": model, "source": source, "docs": len(records), "batch_size": batch_size,
        "workers": workers, "fingerprint": emb.fingerprint, "dim": emb.dim, "rounds": rounds,
        "encode_only_docs_per_s": enc, "end_to_end_docs_per_s": e2e,
        "end_to_end_over_encode_only": [b / a for a, b in zip(enc, e2e)],
        "overhead_median": 1.0 - statistics.median(e2e) / statistics.median(enc),
        "encoder_share_of_ingest_wall": [r.encode_seconds / r.seconds for r in runs],
        "ingest": [r.to_dict() for r in runs], **lat, "rows": runs[-1].ingested,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1m_at_end": os.getloadavg()[0]},
    }


def _latencies(searcher, records, queries: int) -> dict:
    """p50/p95 of single-query searches: store only (pre-encoded) and with the query encode."""
    rng = np.random.default_rng(0)
    picks = rng.choice(len(records), size=queries, replace=len(records) < queries)
    qs = []
    for k, i in enumerate(picks):
        r = records[i]
        q = ({"text": r.text} if k % 3 == 0 else {"image": r.image} if k % 3 == 1
             else {"text": r.text, "image": r.image})
        qs.append({a: b for a, b in q.items() if b is not None} or {"text": "query"})
    vecs = searcher.embedder.encode_queries(qs)
    store, full = [], []
    for q, v in zip(qs, vecs):
        t = time.perf_counter()
        searcher.search_vectors([v], top_k=10)
        store.append(time.perf_counter() - t)
        t = time.perf_counter()
        searcher.search([q], top_k=10)
        full.append(time.perf_counter() - t)
    return {"queries": queries,
            "search_store_ms": {"p50": _pct(store, 50), "p95": _pct(store, 95)},
            "search_with_encode_ms": {"p50": _pct(full, 50), "p95": _pct(full, 95)}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint / preset (default: solar-clipart)")
    p.add_argument("--source", default="clipart:256")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the result JSON here")
    a = p.parse_args(argv)
    from .ingest import default_workers
    from .models import default_model
    root = Path(tempfile.mkdtemp(prefix="solar-measure-"))
    try:
        res = measure(a.model or default_model(), a.source, a.batch_size,
                      default_workers() if a.workers is None else a.workers, a.queries, root,
                      a.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
