"""Offline hard-negative mining by nearest neighbours (spec 1.4 "Negatives" 3, 3.1.14).

The "off-the-shelf retrieval models" are the frozen towers themselves [I]: the similarity of two
documents is the mean of their image-global and text-global cosines.  For each document the
``skip`` nearest neighbours are dropped (likely duplicates or false negatives) and the next
``window`` ranks form its pool; each step samples K of them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def neighbour_pools(image_pooled: torch.Tensor, text_pooled: torch.Tensor, skip: int,
                    window: int, chunk: int = 1024) -> torch.Tensor:
    """(N, d_v), (N, d_l) tower globals -> (N, W) int64 candidate negatives per document.

    W = min(window, N - 1 - skip); raises ValueError when the set is too small.
    """
    N = image_pooled.shape[0]
    W = min(window, N - 1 - skip)
    if W < 1:
        raise ValueError(f"mining needs more documents: N={N}, mine_skip={skip}")
    zi = F.normalize(image_pooled.float(), dim=-1)
    zt = F.normalize(text_pooled.float(), dim=-1)
    out = torch.empty(N, W, dtype=torch.long)
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        sim = 0.5 * (zi[s:e] @ zi.T + zt[s:e] @ zt.T)                     # (c, N)
        sim[torch.arange(e - s), torch.arange(s, e)] = float("-inf")      # never yourself
        top = sim.topk(skip + W, dim=1).indices
        out[s:e] = top[:, skip:]
    return out


def sample_negatives(pools: torch.Tensor, rows: torch.Tensor, k: int,
                     g: torch.Generator) -> torch.Tensor:
    """Sample k distinct pool entries for each document in ``rows`` -> (B, k) int64."""
    W = pools.shape[1]
    k = min(k, W)
    pick = torch.rand(len(rows), W, generator=g).argsort(dim=1)[:, :k]
    return pools[rows][torch.arange(len(rows))[:, None], pick]
