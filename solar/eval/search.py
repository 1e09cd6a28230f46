"""Search a pool for each query's target: exact inner product, or through Milvus.

Both return 1-based target ranks (see ``metrics.target_ranks``).  The Milvus path fetches the top
``k_max`` (+1 for the query itself) from a FLAT inner-product index, so ranks beyond ``k_max`` are
reported as ``k_max + 1``; R@k for k <= k_max is then exact up to the order of tied scores.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import torch

from .metrics import target_ranks


def exact_ranks(queries: torch.Tensor, pool: torch.Tensor, target: torch.Tensor,
                exclude: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Exact inner-product ranks.

    queries: (Q, D) float32; pool: (N, D) float32 (both L2-normalized, so IP = cosine);
    target, exclude: (Q,) int64 pool indices (exclude = -1 for none).  Returns (Q,) int64.
    """
    if queries.dim() != 2 or pool.dim() != 2 or queries.shape[1] != pool.shape[1]:
        raise ValueError(f"queries (Q, D) and pool (N, D) must share D, got {tuple(queries.shape)} "
                         f"and {tuple(pool.shape)}")
    out = []
    for s in range(0, queries.shape[0], chunk):
        sims = queries[s:s + chunk].double() @ pool.double().T                 # (q, N)
        out.append(target_ranks(sims, target[s:s + chunk], exclude[s:s + chunk]))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def milvus_ranks(queries: torch.Tensor, pool: torch.Tensor, target: torch.Tensor,
                 exclude: torch.Tensor, uri: str, k_max: int = 10,
                 collection: str = "solar_eval_pool", batch: int = 256) -> torch.Tensor:
    """Ranks through Milvus: insert the pool into a fresh collection with a FLAT IP index and
    search every query for its top ``k_max + 1``.

    uri: a Milvus Lite path ending in ".db" (a directory is created) or a server URI.  The
    collection ``collection`` is dropped first and after the search.  Returns (Q,) int64 ranks,
    ``k_max + 1`` where the target is not in the top ``k_max``.
    """
    try:
        from pymilvus import DataType, MilvusClient
    except ImportError as err:
        raise ImportError("the Milvus path needs pymilvus (pip install 'pymilvus[milvus-lite]')") from err
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"milvus uri must be a non-empty string, got {uri!r}")
    client = MilvusClient(uri)
    try:
        if client.has_collection(collection):
            client.drop_collection(collection)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(pool.shape[1]))
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        client.create_collection(collection, schema=schema, index_params=index,
                                 consistency_level="Strong")
        vecs = pool.float().tolist()
        for s in range(0, len(vecs), 1000):
            client.insert(collection, [{"id": i, "vector": vecs[i]} for i in range(s, min(s + 1000, len(vecs)))])
        client.flush(collection)
        client.load_collection(collection)
        ranks = []
        qs = queries.float().tolist()
        for s in range(0, len(qs), batch):
            res = client.search(collection, data=qs[s:s + batch], limit=k_max + 1,
                                anns_field="vector", search_params={"metric_type": "IP"},
                                output_fields=["id"])
            for j, hits in enumerate(res):
                q = s + j
                ids = [int(h["id"]) for h in hits if int(h["id"]) != int(exclude[q])][:k_max]
                t = int(target[q])
                ranks.append(ids.index(t) + 1 if t in ids else k_max + 1)
        client.drop_collection(collection)
    finally:
        client.close()
    return torch.tensor(ranks, dtype=torch.long)


def temp_milvus_uri() -> tuple[str, tempfile.TemporaryDirectory]:
    """A fresh Milvus Lite path in a temporary folder (keep the returned handle alive)."""
    tmp = tempfile.TemporaryDirectory(prefix="solar-eval-milvus-")
    return str(Path(tmp.name) / "eval.db"), tmp


def ranks_for(queries: torch.Tensor, pool: torch.Tensor, target: torch.Tensor,
              exclude: torch.Tensor, milvus_uri: Optional[str] = None) -> torch.Tensor:
    """Exact ranks, or Milvus ranks when ``milvus_uri`` is given."""
    if milvus_uri:
        return milvus_ranks(queries, pool, target, exclude, milvus_uri)
    return exact_ranks(queries, pool, target, exclude)
