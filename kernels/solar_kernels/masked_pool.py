"""Masked mean pooling + optional L2 normalize, in Triton.

    mean_b = sum_l w_bl x_bl / sum_l w_bl        (0 when sum_l w_bl <= 0)
    y_b    = mean_b / max(||mean_b||, eps)        (normalize=True), else y_b = mean_b

Forward reads x once: ``_masked_pool_fwd_kernel`` runs one program per (row b, chunk of D) and
streams L, accumulating sum_l w x in fp32 into a (B, D) fp32 workspace; a small per-row
``_masked_pool_finalize_kernel`` divides, takes the norm over all of D and writes y and stats.
Backward: ``_masked_pool_bwd_prep_kernel`` turns dy into g_b = d loss / d(sum_l w_l x_l) (fp32,
(B, D)) and ds_b = d loss / d(sum_l w_l); ``_masked_pool_bwd_kernel`` then writes
dx_bl = w_bl g_b and, when the weights need a gradient, dw_bl = <x_bl, g_b> + ds_b (a second read
of x, which only the soft-mask case pays).  Any strides of x and w are used as they are.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import next_pow2, supports

__all__ = ["forward", "backward", "supports"]


# --------------------------------------------------------------------------- kernels
@triton.jit
def _masked_pool_fwd_kernel(x_ptr, w_ptr, acc_ptr, stats_ptr, L, D,
                            sxb, sxl, sxd, swb, swl,
                            BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)   # b * stride can pass 2**31 for large x
    pd = tl.program_id(1)
    offd = pd * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offd < D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    wsum = tl.zeros((BLOCK_L,), dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        offl = l0 + tl.arange(0, BLOCK_L)
        lmask = offl < L
        w = tl.load(w_ptr + b * swb + offl * swl, mask=lmask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + b * sxb + offl[:, None] * sxl + offd[None, :] * sxd,
                    mask=lmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w[:, None] * x, axis=0)
        wsum += w
    tl.store(acc_ptr + b * D + offd, acc, mask=dmask)
    if pd == 0:
        tl.store(stats_ptr + b * 2, tl.sum(wsum, axis=0))


@triton.jit
def _masked_pool_finalize_kernel(acc_ptr, stats_ptr, y_ptr, D, syb, syd, eps,
                                 NORMALIZE: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)   # b * stride can pass 2**31 for large x
    s = tl.load(stats_ptr + b * 2)
    inv_s = tl.where(s > 0, 1.0 / tl.where(s > 0, s, 1.0), 0.0)
    sq = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if NORMALIZE:
        for d0 in range(0, D, BLOCK_D):
            offd = d0 + tl.arange(0, BLOCK_D)
            m = tl.load(acc_ptr + b * D + offd, mask=offd < D, other=0.0) * inv_s
            sq += m * m
    norm = tl.sqrt(tl.sum(sq, axis=0))
    inv_n = 1.0 / tl.maximum(norm, eps) if NORMALIZE else 1.0
    for d0 in range(0, D, BLOCK_D):
        offd = d0 + tl.arange(0, BLOCK_D)
        m = tl.load(acc_ptr + b * D + offd, mask=offd < D, other=0.0) * inv_s
        tl.store(y_ptr + b * syb + offd * syd, (m * inv_n).to(y_ptr.dtype.element_ty),
                 mask=offd < D)
    tl.store(stats_ptr + b * 2 + 1, norm)


@triton.jit
def _masked_pool_bwd_prep_kernel(dy_ptr, y_ptr, stats_ptr, g_ptr, ds_ptr, D,
                                 sdb, sdd, syb, syd, eps,
                                 NORMALIZE: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)   # b * stride can pass 2**31 for large x
    s = tl.load(stats_ptr + b * 2)
    n = tl.load(stats_ptr + b * 2 + 1)
    inv_s = tl.where(s > 0, 1.0 / tl.where(s > 0, s, 1.0), 0.0)
    # mean = y * max(n, eps) when normalized; dm = (dy - y <y, dy>) / n, or dy / eps when clamped
    nc = tl.maximum(n, eps) if NORMALIZE else 1.0
    ydy = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if NORMALIZE:
        for d0 in range(0, D, BLOCK_D):
            offd = d0 + tl.arange(0, BLOCK_D)
            dy = tl.load(dy_ptr + b * sdb + offd * sdd, mask=offd < D, other=0.0).to(tl.float32)
            y = tl.load(y_ptr + b * syb + offd * syd, mask=offd < D, other=0.0).to(tl.float32)
            ydy += y * dy
    proj = tl.sum(ydy, axis=0) if NORMALIZE else 0.0
    if NORMALIZE:
        proj = tl.where(n > eps, proj, 0.0)
    dm_mean = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offd = d0 + tl.arange(0, BLOCK_D)
        dy = tl.load(dy_ptr + b * sdb + offd * sdd, mask=offd < D, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + b * syb + offd * syd, mask=offd < D, other=0.0).to(tl.float32)
        dm = (dy - y * proj) / nc
        dm_mean += dm * (y * nc)
        tl.store(g_ptr + b * D + offd, dm * inv_s, mask=offd < D)
    tl.store(ds_ptr + b, -tl.sum(dm_mean, axis=0) * inv_s)


@triton.jit
def _masked_pool_bwd_kernel(x_ptr, w_ptr, g_ptr, ds_ptr, dx_ptr, dw_ptr, L, D,
                            sxb, sxl, sxd, swb, swl, sdxb, sdxl, sdxd, sdwb, sdwl,
                            NEED_DW: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)   # b * stride can pass 2**31 for large x
    offl = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    lmask = offl < L
    w = tl.load(w_ptr + b * swb + offl * swl, mask=lmask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_L,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offd = d0 + tl.arange(0, BLOCK_D)
        m2 = lmask[:, None] & (offd < D)[None, :]
        g = tl.load(g_ptr + b * D + offd, mask=offd < D, other=0.0)
        dx = w[:, None] * g[None, :]
        tl.store(dx_ptr + b * sdxb + offl[:, None] * sdxl + offd[None, :] * sdxd,
                 dx.to(dx_ptr.dtype.element_ty), mask=m2)
        if NEED_DW:
            x = tl.load(x_ptr + b * sxb + offl[:, None] * sxl + offd[None, :] * sxd,
                        mask=m2, other=0.0).to(tl.float32)
            dw += tl.sum(x * g[None, :], axis=1)
    if NEED_DW:
        dw += tl.load(ds_ptr + b)
        tl.store(dw_ptr + b * sdwb + offl * sdwl, dw.to(dw_ptr.dtype.element_ty), mask=lmask)


# --------------------------------------------------------------------------- heuristics
@dataclass(frozen=True)
class PoolConfig:
    block_l: int
    block_d: int
    num_warps: int


def fwd_config(L: int, D: int) -> PoolConfig:
    """One program per (row, D chunk of <= 256) streams L in 32-token steps: a 32x256 bf16 tile is
    16 KB per load, enough bytes in flight per SM for a bandwidth-bound stream; 1024 rows x 3
    chunks (D=768) give ~23 programs per SM on an H100.  Starting values to tune on the GPU."""
    return PoolConfig(block_l=32, block_d=min(next_pow2(D), 256), num_warps=4)


def row_config(D: int) -> PoolConfig:
    """Per-row finalize / backward prep touch (D,) vectors only: one 1-D block of <= 1024."""
    return PoolConfig(block_l=1, block_d=min(next_pow2(D), 1024), num_warps=4)


def bwd_config(L: int, D: int) -> PoolConfig:
    """One program per (row, 32 tokens) loops over D in 256-wide chunks so dw's dot over D stays
    inside the program (no atomics); dx tiles are 32x256 like the forward's reads."""
    return PoolConfig(block_l=32, block_d=min(next_pow2(D), 256), num_warps=4)


# --------------------------------------------------------------------------- host functions
def forward(x: torch.Tensor, w: torch.Tensor, normalize: bool, eps: float):
    """x (B, L, D) fp32/bf16/fp16 any strides, w (B, L) floating ->
    (y (B, D) x.dtype, stats (B, 2) fp32 = [sum_l w, ||mean|| or 0])."""
    B, L, D = x.shape
    acc = torch.empty(B, D, device=x.device, dtype=torch.float32)
    stats = torch.zeros(B, 2, device=x.device, dtype=torch.float32)
    y = x.new_empty(B, D)
    c = fwd_config(L, D)
    _masked_pool_fwd_kernel[(B, triton.cdiv(D, c.block_d))](
        x, w, acc, stats, L, D, *x.stride(), *w.stride(),
        BLOCK_L=c.block_l, BLOCK_D=c.block_d, num_warps=c.num_warps)
    r = row_config(D)
    _masked_pool_finalize_kernel[(B,)](acc, stats, y, D, *y.stride(), float(eps),
                                       NORMALIZE=bool(normalize), BLOCK_D=r.block_d,
                                       num_warps=r.num_warps)
    return y, stats


def backward(dy, x, w, normalize: bool, eps: float, y, stats, needs):
    """Gradients of the forward: (dx (B, L, D) like x, dw (B, L) like w or None unless
    needs[1]).  Extra memory: a (B, D) fp32 g and a (B,) fp32 ds."""
    need_dw = bool(needs[1])
    B, L, D = x.shape
    g = torch.empty(B, D, device=x.device, dtype=torch.float32)
    ds = torch.empty(B, device=x.device, dtype=torch.float32)
    r = row_config(D)
    _masked_pool_bwd_prep_kernel[(B,)](dy, y, stats, g, ds, D, *dy.stride(), *y.stride(),
                                       float(eps), NORMALIZE=bool(normalize), BLOCK_D=r.block_d,
                                       num_warps=r.num_warps)
    dx = torch.empty_like(x)
    dw = torch.empty_like(w) if need_dw else w.new_empty(0)
    dw_strides = dw.stride() if need_dw else (0, 0)
    c = bwd_config(L, D)
    _masked_pool_bwd_kernel[(B, triton.cdiv(L, c.block_l))](
        x, w, g, ds, dx, dw, L, D, *x.stride(), *w.stride(), *dx.stride(), *dw_strides,
        NEED_DW=need_dw, BLOCK_L=c.block_l, BLOCK_D=c.block_d, num_warps=c.num_warps)
    return dx, (dw if need_dw else None)
