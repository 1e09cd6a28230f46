"""Stage-2 view construction from the frozen stage-1 masks (docs/method.md, "Stage 2").

Per document (precomputed once with the stage-1 model):
  * text: which tokens are intersection (score > tau_L) and which are difference;
  * image: patches grouped into at most K segments by agglomerative clustering of the adapter
    features (Ward linkage, 4-neighbour grid connectivity; scikit-learn) [I]; a segment's score
    is the mean of its patch scores, and it is intersection when that mean exceeds tau_V.
Per step, views hide elements of ONE modality each [I] (the partner modality keeps the content):
  positive text view   : hide a random ``pos_ratio`` share of the intersection tokens;
  positive image view  : hide intersection segments (random order) up to ``area_cap`` of patches;
  negative text view   : hide a ``neg_ratio`` share of the difference tokens;
  negative image view  : hide difference segments up to ``area_cap``.
A positive with nothing to hide falls back to hiding random tokens/segments at the same share
[I]; a negative with nothing to hide is marked invalid (it would equal the anchor).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class StageOneMasks:
    """Frozen per-document stage-1 information for N documents.

    token_int, token_diff: (N, T) bool; segments: (N, P) int64 segment id per patch (-1 for
    invalid patches); seg_int, seg_diff: (N, K) bool, per segment.
    """
    token_int: torch.Tensor
    token_diff: torch.Tensor
    segments: torch.Tensor
    seg_int: torch.Tensor
    seg_diff: torch.Tensor

    def tensors(self) -> dict:
        return {k: getattr(self, k) for k in ("token_int", "token_diff", "segments", "seg_int",
                                               "seg_diff")}


def segment_patches(feats: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """Agglomerative (Ward) clustering of one image's (P, W) patch features into <= k segments.

    Features are L2-normalized; on a square grid with every patch valid only 4-neighbour
    clusters may merge, so segments are spatially connected (scikit-learn's
    ``AgglomerativeClustering``, Ward linkage with a connectivity graph).  Returns (P,) int64
    labels in 0..k-1, numbered by each segment's first patch; -1 for invalid patches.
    """
    P = feats.shape[0]
    labels = np.full(P, -1, dtype=np.int64)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return labels
    if k >= idx.size:                                # as many segments as patches
        labels[idx] = np.arange(idx.size)
        return labels
    x = feats[idx].astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    try:
        from sklearn.cluster import AgglomerativeClustering
    except ImportError:
        raise ImportError("stage 2 segments patches with scikit-learn: pip install "
                          "'scikit-learn>=1.3'") from None
    found = AgglomerativeClustering(n_clusters=k, linkage="ward",
                                    connectivity=_grid_connectivity(P, idx)).fit_predict(x)
    first = np.unique(found, return_index=True)[1]              # each cluster's first patch
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    labels[idx] = rank[found]
    return labels


def _grid_connectivity(P: int, idx: np.ndarray):
    """(n, n) 0/1 4-neighbour adjacency of the valid patches on a square grid of P patches;
    None (any two clusters may merge) off-grid or when some patches are invalid."""
    side = int(round(P ** 0.5))
    if side * side != P or idx.size != P:
        return None
    r, c = np.divmod(np.arange(P), side)
    return ((np.abs(r[:, None] - r[None]) + np.abs(c[:, None] - c[None])) == 1).astype(np.int8)


def segment_scores(labels: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """(N, P) labels and (N, P) patch scores -> (N, k) mean score per segment (NaN if empty)."""
    onehot = torch.nn.functional.one_hot(labels.clamp_min(0), k).to(scores.dtype)
    onehot = onehot * (labels >= 0)[..., None]
    cnt = onehot.sum(dim=1)
    s = torch.einsum("npk,np->nk", onehot, scores)
    return torch.where(cnt > 0, s / cnt.clamp_min(1), torch.full_like(s, float("nan")))


def _hide_tokens(cand: torch.Tensor, ratio: float, g: torch.Generator) -> torch.Tensor:
    """(B, T) candidates -> (B, T) bool: a random ``ratio`` share of each row's candidates
    (at least one when there is any)."""
    r = torch.rand(cand.shape, generator=g)
    r = torch.where(cand, r, torch.full_like(r, 2.0))
    n = cand.sum(dim=1)
    k = torch.where(n > 0, (n.float() * ratio).ceil().clamp_min(1).long(), n)
    rank = r.argsort(dim=1).argsort(dim=1)
    return rank < k[:, None]


def _hide_segments(segments: torch.Tensor, chosen: torch.Tensor, cap: float,
                   g: torch.Generator) -> torch.Tensor:
    """Hide whole chosen segments in random order while the hidden share stays <= cap (at least
    one segment when any is chosen).  segments (B, P), chosen (B, K) -> hidden (B, P) bool."""
    B, P = segments.shape
    K = chosen.shape[1]
    hidden = torch.zeros(B, P, dtype=torch.bool)
    order = torch.rand(B, K, generator=g).argsort(dim=1)
    for i in range(B):
        budget = cap * int((segments[i] >= 0).sum())
        used = 0
        for kk in order[i].tolist():
            if not chosen[i, kk]:
                continue
            sel = segments[i] == kk
            size = int(sel.sum())
            if size == 0 or (used and used + size > budget):
                continue
            hidden[i] |= sel
            used += size
    return hidden


def build_views(m: StageOneMasks, text_valid: torch.Tensor, image_valid: torch.Tensor,
                pos_ratio: float, neg_ratio: float, area_cap: float, g: torch.Generator) -> dict:
    """Masks of the four views for a batch (CPU tensors).

    m: the batch rows of StageOneMasks (token tensors trimmed to T); text_valid (B, T),
    image_valid (B, P) bool.  Returns dict with pos_text, neg_text (B, T) bool weights,
    pos_image, neg_image (B, P) bool weights and neg_ok (B, 2) bool (text, image).
    """
    tok_int, tok_diff = m.token_int & text_valid, m.token_diff & text_valid
    fallback = tok_int.sum(dim=1) == 0
    cand = torch.where(fallback[:, None], text_valid, tok_int)
    pos_text = text_valid & ~_hide_tokens(cand, pos_ratio, g)
    neg_text = text_valid & ~_hide_tokens(tok_diff, neg_ratio, g)
    present = torch.stack([(m.segments == k).any(dim=1) for k in range(m.seg_int.shape[1])], 1)
    seg_int, seg_diff = m.seg_int & present, m.seg_diff & present
    seg_fb = seg_int.sum(dim=1) == 0
    chosen = torch.where(seg_fb[:, None], present, seg_int)
    pos_image = image_valid & ~_hide_segments(m.segments, chosen, area_cap, g)
    neg_hidden = _hide_segments(m.segments, seg_diff, area_cap, g)
    neg_image = image_valid & ~neg_hidden
    neg_ok = torch.stack([tok_diff.any(dim=1), neg_hidden.any(dim=1)], dim=1)
    return {"pos_text": pos_text, "neg_text": neg_text, "pos_image": pos_image,
            "neg_image": neg_image, "neg_ok": neg_ok}
