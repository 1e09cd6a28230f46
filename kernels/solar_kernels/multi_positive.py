"""SOLAR stage 2's multi-positive InfoNCE on the shared tiled machinery (``_tiled``).

    loss = mean_i [ lse_{k: valid_ik} z_ik - lse_{j: pos_ij} z_ij ],  z = scale * anchors cand^T

(scale = 1 / temperature).  The column groups are data: explicit (B, N) bool ``pos`` and ``valid``
matrices read tile by tile (the facade guarantees every row has a positive and pos implies valid).

Forward: one row pass of ``_tiled_lse_kernel`` with two online LSEs (all valid columns and the
positives).  Backward: one pass of ``_tiled_grad_kernel`` over the (B, N) tiles with
dz = (softmax_valid - softmax_pos) / B.

Saved for backward: anchors, cand, pos, valid (inputs), scale, lse_all (B,) and lse_pos (B,) fp32.
Extra memory: fp32 gradient workspaces (B + N) x D.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import supports
from ._tiled import Tiles, tiled_grad, tiled_lse

__all__ = ["forward", "backward", "supports"]


@triton.jit
def _multi_positive_masks(rows, cols, M, N, G, pos_ptr, valid_ptr, spm, spn, svm, svn):
    """Masks read from the (B, N) bool matrices (as uint8)."""
    inb = (rows < M)[:, None] & (cols < N)[None, :]
    r64 = rows.to(tl.int64)[:, None]     # B x N masks can pass 2**31 entries
    p = tl.load(pos_ptr + r64 * spm + cols[None, :] * spn, mask=inb, other=0)
    v = tl.load(valid_ptr + r64 * svm + cols[None, :] * svn, mask=inb, other=0)
    return inb & (v != 0), inb & (p != 0)


def _tiles(anchors, cand, pos, valid, scale) -> Tiles:
    return Tiles(anchors, cand, scale, _multi_positive_masks, pos=pos, valid=valid, pos_lse=True)


def forward(anchors, cand, pos, valid, scale):
    """anchors (B, D), cand (N, D) fp32/bf16/fp16; pos, valid (B, N) bool; scale 0-dim fp32 ->
    (loss 0-dim fp32, lse_all (B,) fp32, lse_pos (B,) fp32)."""
    lse_all, lse_pos = tiled_lse(_tiles(anchors, cand, pos, valid, scale))
    return (lse_all - lse_pos).mean(), lse_all, lse_pos


def backward(dloss, anchors, cand, pos, valid, scale, loss, lse_all, lse_pos, needs):
    """-> (danchors, dcand, dscale 0-dim fp32)."""
    B, D = anchors.shape
    da = torch.zeros(B, D, device=anchors.device, dtype=torch.float32)
    dc = torch.zeros(cand.shape[0], D, device=anchors.device, dtype=torch.float32)
    dscale, _ = tiled_grad(_tiles(anchors, cand, pos, valid, scale), dloss, da, dc, lse_all,
                           cr_mult=1.0 / B, lse_p=lse_pos)
    return da, dc, dscale
