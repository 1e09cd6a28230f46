"""Explicit column groups for SOLAR stage 2's loss (``multi_positive_infonce``).

Stacking views and negatives into one candidate matrix is where labels silently go wrong (see
sentence-transformers PR #3453: interleaved columns made anchors train toward hard negatives).
``build_columns`` stacks named groups in a fixed order and returns the masks, so no caller computes
column indices by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ColumnGroups:
    """candidates (N, D), positives (B, N) bool, valid (B, N) bool and each group's column slice."""
    candidates: torch.Tensor
    positives: torch.Tensor
    valid: torch.Tensor
    slices: dict[str, slice] = field(default_factory=dict)


def build_columns(anchors: torch.Tensor, positive_views: torch.Tensor,
                  constructed_negatives: torch.Tensor | None = None,
                  mined_negatives: torch.Tensor | None = None,
                  other_anchors: bool = True) -> ColumnGroups:
    """Stack stage-2 columns: [positive views | constructed negatives | mined negatives | anchors].

    Args:
        anchors: (B, D) anchor embeddings.
        positive_views: (B, P, D) the P positive views of each anchor (row i's positives only).
        constructed_negatives: optional (B, Q, D) difference-masked views (negatives for all rows).
        mined_negatives: optional (B, K, D) mined neighbours (negatives for all rows).
        other_anchors: include the anchors as in-batch negatives (each row's own anchor masked out).
    Every row's denominator holds all columns except its own anchor column; its positives are its
    own P views.  Other anchors' positive views are in-batch negatives.
    """
    B, D = anchors.shape
    if positive_views.dim() != 3 or positive_views.shape[0] != B or positive_views.shape[2] != D:
        raise ValueError(f"positive_views must have shape ({B}, P, {D}), got "
                         f"{tuple(positive_views.shape)}")
    groups = [("positives", positive_views.reshape(-1, D))]
    for name, t in (("constructed_negatives", constructed_negatives),
                    ("mined_negatives", mined_negatives)):
        if t is not None:
            if t.dim() != 3 or t.shape[0] != B or t.shape[2] != D:
                raise ValueError(f"{name} must have shape ({B}, n, {D}), got {tuple(t.shape)}")
            groups.append((name, t.reshape(-1, D)))
    if other_anchors:
        groups.append(("anchors", anchors))
    slices, start = {}, 0
    for name, t in groups:
        slices[name] = slice(start, start + t.shape[0])
        start += t.shape[0]
    cand = torch.cat([t for _, t in groups], dim=0)
    N = cand.shape[0]
    dev = anchors.device
    rows = torch.arange(B, device=dev)
    P = positive_views.shape[1]
    positives = torch.zeros(B, N, dtype=torch.bool, device=dev)
    cols = rows[:, None] * P + torch.arange(P, device=dev)[None, :]
    positives[rows[:, None], cols] = True
    valid = torch.ones(B, N, dtype=torch.bool, device=dev)
    if other_anchors:
        valid[rows, slices["anchors"].start + rows] = False
    return ColumnGroups(cand, positives, valid, slices)
