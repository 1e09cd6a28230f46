"""Retrieval metrics of the benchmark (method.md 1.6): R@k, mR, Precision, Avg.

All metrics are returned in percent (0-100), as the paper's tables are.  Ties are counted against
the model: a distractor scoring *equal* to the target ranks ahead of it, and a hard negative
scoring equal to the positive is a Precision failure (the paper's "closer" is strict).
"""
from __future__ import annotations

from typing import Sequence

import torch

KS = (1, 5, 10)


def target_ranks(sims: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """1-based rank of each query's target among the pool.

    sims: (Q, N) float similarities of Q queries to N pool documents; target: (Q,) int64 pool
    index of each query's target; exclude: (Q,) int64 pool index to leave out (the query itself
    when it is in the pool) or -1.  rank = 1 + #{j != target, j != exclude : sims[q, j] >= sims[q,
    target]}.  Returns (Q,) int64.
    """
    if sims.dim() != 2:
        raise ValueError(f"sims must be (Q, N), got shape {tuple(sims.shape)}")
    Q, N = sims.shape
    for name, t in (("target", target), ("exclude", exclude)):
        if t.shape != (Q,):
            raise ValueError(f"{name} must have shape ({Q},), got {tuple(t.shape)}")
    if Q and (target.min() < 0 or target.max() >= N):
        raise ValueError(f"target indices must lie in [0, {N})")
    if Q and (exclude.min() < -1 or exclude.max() >= N):
        raise ValueError(f"exclude indices must be -1 or lie in [0, {N})")
    if torch.any(target == exclude):
        raise ValueError("a query's target cannot be the excluded document (the query itself)")
    rows = torch.arange(Q)
    t_sim = sims[rows, target]                                           # (Q,)
    ge = sims >= t_sim[:, None]                                          # (Q, N)
    ge[rows, target] = False
    has_ex = exclude >= 0
    ge[rows[has_ex], exclude[has_ex]] = False
    return 1 + ge.sum(dim=1)


def recall_at_k(ranks: torch.Tensor, ks: Sequence[int] = KS) -> dict:
    """{"R@k": percent of queries whose target rank <= k} for each k."""
    if ranks.numel() == 0:
        raise ValueError("no queries: recall is undefined")
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    r = ranks.double()
    return {f"R@{k}": float((r <= k).double().mean() * 100) for k in ks}


def precision(sim_pos: torch.Tensor, sim_neg: torch.Tensor) -> float:
    """Percent of triplets where sim(anchor, positive) > sim(anchor, hard negative) (strict)."""
    if sim_pos.shape != sim_neg.shape or sim_pos.dim() != 1:
        raise ValueError(f"sim_pos and sim_neg must be equal-length 1-D, got "
                         f"{tuple(sim_pos.shape)} and {tuple(sim_neg.shape)}")
    if sim_pos.numel() == 0:
        raise ValueError("no triplets: precision is undefined")
    return float((sim_pos > sim_neg).double().mean() * 100)


def sym_summary(ranks: torch.Tensor, sim_pos: torch.Tensor, sim_neg: torch.Tensor,
                kinds: Sequence[str] = ()) -> dict:
    """R@1/5/10, mR (their mean), Precision, Avg = (mR + Precision)/2, and Precision per
    negative kind when ``kinds`` (one label per triplet) is given.  All in percent."""
    out = recall_at_k(ranks, KS)
    out["mR"] = sum(out[f"R@{k}"] for k in KS) / len(KS)
    out["Precision"] = precision(sim_pos, sim_neg)
    out["Avg"] = (out["mR"] + out["Precision"]) / 2
    if kinds:
        if len(kinds) != len(sim_pos):
            raise ValueError(f"kinds has {len(kinds)} labels for {len(sim_pos)} triplets")
        for kind in sorted(set(kinds)):
            idx = torch.tensor([i for i, k in enumerate(kinds) if k == kind])
            out[f"Precision[{kind}]"] = precision(sim_pos[idx], sim_neg[idx])
    return out
