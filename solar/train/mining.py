"""Offline hard-negative mining by nearest neighbours (docs/method.md, "Stage 2": mined negatives).

The "off-the-shelf retrieval models" are the frozen towers themselves [I]: the similarity of two
documents is the mean of their image-global and text-global cosines.  For each document the
``skip`` nearest neighbours are dropped (likely duplicates or false negatives) and the next
``window`` ranks form its pool; each step samples K of them.

Scale: the search is exact and never forms the N x N similarity matrix.  Rows are taken in blocks
of ``chunk``, each block is scored against the columns in blocks of ``col_chunk`` and only the
running top (skip + window) per row is kept (merged block by block), so memory is
O(chunk x col_chunk + N x (skip + window)) beyond the inputs, which may be memory-mapped
(``numpy.memmap`` / safetensors ``safe_open`` slices) and are moved block by block to ``device``.
The cost is N^2 d multiply-adds: about a minute for 1M documents of d = 1664 on one GPU, hours on
a CPU.  Exact search is chosen over querying the Milvus collection because it needs no running
server, gives the same pools on every run (exact resume), and the corpus being trained on is
usually not ingested yet (nor with this model).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _block(x, s: int, e: int, device) -> torch.Tensor:
    return F.normalize(torch.as_tensor(x[s:e]).to(device, torch.float32), dim=-1)


def neighbour_pools(image_pooled, text_pooled, skip: int, window: int, chunk: int = 1024,
                    col_chunk: int = 16384, device: Optional[torch.device] = None) -> torch.Tensor:
    """(N, d_v), (N, d_l) tower globals -> (N, W) int64 candidate negatives per document.

    W = min(window, N - 1 - skip); raises ValueError when the set is too small.  The inputs may
    be tensors or any array supporting row slices (read block by block).
    """
    N = image_pooled.shape[0]
    W = min(window, N - 1 - skip)
    if W < 1:
        raise ValueError(f"mining needs more documents: N={N}, mine_skip={skip}")
    k = skip + W
    device = torch.device(device or "cpu")
    out = torch.empty(N, W, dtype=torch.long)
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        qi, qt = _block(image_pooled, s, e, device), _block(text_pooled, s, e, device)
        best_v = torch.full((e - s, 0), float("-inf"), device=device)
        best_i = torch.empty((e - s, 0), dtype=torch.long, device=device)
        for cs in range(0, N, col_chunk):
            ce = min(N, cs + col_chunk)
            sim = 0.5 * (qi @ _block(image_pooled, cs, ce, device).T
                         + qt @ _block(text_pooled, cs, ce, device).T)      # (c, c')
            if max(s, cs) < min(e, ce):                                       # never yourself
                rows = torch.arange(max(s, cs), min(e, ce), device=device)
                sim[rows - s, rows - cs] = float("-inf")
            v, i = sim.topk(min(k, ce - cs), dim=1)
            best_v, order = torch.cat([best_v, v], 1).topk(min(k, best_v.shape[1] + v.shape[1]),
                                                           dim=1)
            best_i = torch.cat([best_i, i + cs], 1).gather(1, order)
        out[s:e] = best_i[:, skip:k].cpu()
    return out


def sample_negatives(pools: torch.Tensor, rows: torch.Tensor, k: int,
                     g: torch.Generator) -> torch.Tensor:
    """Sample k distinct pool entries for each document in ``rows`` -> (B, k) int64."""
    W = pools.shape[1]
    k = min(k, W)
    pick = torch.rand(len(rows), W, generator=g).argsort(dim=1)[:, :k]
    return pools[rows][torch.arange(len(rows))[:, None], pick]
