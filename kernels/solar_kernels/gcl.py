"""GCL's 3B x 3B loss on the shared tiled machinery (``_tiled``).

E = [e_image; e_text; e_fused] (3B, D), S = scale * E E^T.  Row r = (m, j) (modality m, document
j) excludes itself from the denominator and has two positives, the same document in the two other
modalities:  loss = sum_r [2 lse_{c != r} S_rc - S_{r,p1} - S_{r,p2}] / (6B)   (the mean NLL over
the 6B (row, positive) entries, as ``gcl_loss_reference``).

Forward: one row pass of ``_tiled_lse_kernel`` (E against itself) -> lse (3B,) and the positive
logit sums.  Backward: one pass of ``_tiled_grad_kernel`` over all 3B x 3B tiles; since rows and
columns are the same matrix, dR and dC accumulate into one fp32 (3B, D) workspace, giving
dE = scale (dS + dS^T) E.  (S is symmetric, so a later version can visit only the upper triangle.)

Saved for backward: e_image, e_text, e_fused (inputs), scale and lse (3B,) fp32.  Extra memory:
the (3B, D) concatenation and one fp32 (3B, D) workspace.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import supports
from ._tiled import Tiles, copy_out, tiled_grad, tiled_lse

__all__ = ["forward", "backward", "supports"]


@triton.jit
def _gcl_masks(rows, cols, M, N, G, pos_ptr, valid_ptr, spm, spn, svm, svn):
    """G = B: denominator = every other row of E; positives = same document (index mod B)."""
    inb = (rows < M)[:, None] & (cols < N)[None, :]
    valid = inb & (rows[:, None] != cols[None, :])
    return valid, valid & ((rows % G)[:, None] == (cols % G)[None, :])


def _tiles(ei, et, ef, scale) -> Tiles:
    e = torch.cat([ei, et, ef], dim=0)
    return Tiles(e, e, scale, _gcl_masks, group=ei.shape[0])


def forward(ei, et, ef, scale):
    """ei, et, ef (B, D) fp32/bf16/fp16, scale 0-dim fp32 -> (loss 0-dim fp32, lse (3B,) fp32)."""
    B = ei.shape[0]
    lse, pos_sum = tiled_lse(_tiles(ei, et, ef, scale))
    return (2.0 * lse - pos_sum).sum() / (6 * B), lse


def backward(dloss, ei, et, ef, scale, loss, lse, needs):
    """-> (dei, det, def, dscale 0-dim fp32)."""
    B, D = ei.shape
    t = _tiles(ei, et, ef, scale)
    de = torch.zeros(3 * B, D, device=ei.device, dtype=torch.float32)
    dscale, _ = tiled_grad(t, dloss, de, de, lse, cr_mult=1.0 / (6 * B), npos=2.0)
    return copy_out(ei, de[:B]), copy_out(et, de[B:2 * B]), copy_out(ef, de[2 * B:]), dscale
