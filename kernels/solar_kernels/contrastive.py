"""Symmetric CLIP-style contrastive loss (InfoNCE) on the shared tiled machinery (``_tiled``).

    loss_ab = mean_i [ lse_j S_ij - S_ii ],  S = scale * a [b; neg]^T (+ bias),  j over B + K columns
    loss_ba = mean_i [ lse_j S'_ij - S'_ii ], S' = scale * b a^T (+ bias)      (the B x B block only)
    loss    = (loss_ab + loss_ba) / 2  if symmetric else loss_ab

The (B, B + K) logit matrix is never held.  Forward: two row passes of ``_tiled_lse_kernel`` with
online LSE, rows a over columns [b; neg] (lse_row) and rows b over columns a (lse_col, which is
the column LSE of the first B columns of S).  Backward: one pass of ``_tiled_grad_kernel`` over
the tiles of S that recomputes each tile and applies both directions at once (row term with
lse_row, column term with lse_col), returning d a, d b, d neg, d scale and d bias (the last is
zero up to rounding, since a shared bias cancels under softmax; it is computed, not assumed).

Saved for backward: a, b, neg (inputs), scale, bias and lse_row (B,), lse_col (B,) fp32.  Extra
memory: the (B + K, D) concatenation of columns and fp32 gradient workspaces (2B + K) x D.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import supports
from ._tiled import Tiles, copy_out, tiled_grad, tiled_lse

__all__ = ["forward", "backward", "supports"]


@triton.jit
def _contrastive_masks(rows, cols, M, N, G, pos_ptr, valid_ptr, spm, spn, svm, svn):
    """Every column is in the denominator; row i's positive is column i."""
    valid = (rows < M)[:, None] & (cols < N)[None, :]
    return valid, valid & (rows[:, None] == cols[None, :])


def _columns(b: torch.Tensor, neg: Optional[torch.Tensor]) -> torch.Tensor:
    return b if neg is None or neg.shape[0] == 0 else torch.cat([b, neg], dim=0)


def forward(a, b, scale, bias, neg, symmetric):
    """a, b (B, D), neg (K, D) or None, fp32/bf16/fp16; scale/bias 0-dim fp32 ->
    (loss 0-dim fp32, lse_row (B,) fp32, lse_col (B,) fp32 or (0,) when not symmetric)."""
    lse_row, pos_row = tiled_lse(Tiles(a, _columns(b, neg), scale, _contrastive_masks, bias))
    loss = (lse_row - pos_row).mean()
    if not symmetric:
        return loss, lse_row, lse_row.new_empty(0)
    lse_col, pos_col = tiled_lse(Tiles(b, a, scale, _contrastive_masks, bias))
    return 0.5 * (loss + (lse_col - pos_col).mean()), lse_row, lse_col


def backward(dloss, a, b, scale, bias, neg, symmetric, loss, lse_row, lse_col, needs):
    """-> (da, db, dscale 0-dim fp32, dbias 0-dim fp32, dneg (K, D) or None)."""
    B, D = a.shape
    cols = _columns(b, neg)
    dr = torch.zeros(B, D, device=a.device, dtype=torch.float32)
    dc = torch.zeros(cols.shape[0], D, device=a.device, dtype=torch.float32)
    w = 0.5 if symmetric else 1.0
    dscale, dbias = tiled_grad(Tiles(a, cols, scale, _contrastive_masks, bias), dloss, dr, dc,
                               lse_row, cr_mult=w / B, lse_c=lse_col if symmetric else None,
                               cc_mult=w / B)
    dneg = copy_out(neg, dc[B:]) if neg is not None else None
    return dr, copy_out(b, dc[:B]), dscale, dbias, dneg
