"""Tiled machinery shared by the three losses: log-sum-exp over masked column groups without ever
holding the (M, N) logit matrix, and the gradient of the loss recomputed tile by tile.

Logits: S_ij = scale * <R_i, C_j> (+ bias), R (M, D) rows, C (N, D) columns.  Each loss supplies a
``MASKS`` jit function ``masks(rows, cols, M, N, G, pos_ptr, valid_ptr, spm, spn, svm, svn) ->
(valid, pos)`` (two (BM, BN) bool tiles; ``valid`` includes the bounds) that says which columns
are in row i's denominator and which are its positives.

Forward (``_tiled_lse_kernel``, one program per block of BM rows streaming all column blocks):
online LSE over the valid columns -> lse[M]; per row also either the sum of the positive logits
(``POS_LSE=False``, losses with fixed positives: npos * lse - sum) or an online LSE over the
positives (``POS_LSE=True``, multi-positive InfoNCE).  Operand tiles go to ``tl.dot`` in their own
dtype (bf16/fp16 on tensor cores), accumulation and the LSE are fp32.

Backward (``_tiled_grad_kernel``, one program per (BM, BN) tile): recomputes S from R and C, forms
    dS_ij = cr * (npos * P_ij - pos_ij)                          (POS_LSE=False)
          | cr * (P_ij - pos_ij * exp(S_ij - lse_pos_i))         (POS_LSE=True)
          + cc * (Pc_ij - pos_ij)  for j < NC                     (HAS_COL: column-direction term)
with P = exp(S - lse_row_i) on valid entries, Pc = exp(S - lse_col_j) (all rows valid), then
dR += scale dS C and dC += scale dS^T R over D chunks, accumulated in fp32 workspaces with
``tl.atomic_add``; d scale = sum dS_ij <R_i, C_j> and d bias = sum dS_ij come from per-tile fp32
partials summed on the host (deterministic).  Atomics were chosen over per-row-block partials
because a BM x D fp32 accumulator (196 KB at BM=64, D=768) does not fit in registers, and
per-row-block copies of dC would cost O(B^2 D / BM) memory; the price is fp32 read-modify-write
traffic through L2 per tile, the first thing to tune on the GPU (e.g. larger BN per program, or
materializing dS chunk-wise for two plain GEMMs).  Atomic order makes dR/dC bitwise
non-deterministic across runs (values agree to fp32 rounding).

Extra memory: lse/positive statistics O(M), fp32 gradient workspaces (M + N) x D, per-tile
scalars O(M N / (BM BN)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from ._common import BUILT_INTERPRETED, dot_precision, next_pow2


# --------------------------------------------------------------------------- device functions
@triton.jit
def _logit_tile(r_ptr, c_ptr, rows, cols, M, N, D, srm, srd, scn, scd,
                PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """<R_i, C_j> for a (BM, BN) tile, fp32 accumulation over D in BK chunks."""
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, D, BK):
        offk = k0 + tl.arange(0, BK)
        kmask = offk < D
        r = tl.load(r_ptr + rows[:, None] * srm + offk[None, :] * srd,
                    mask=(rows < M)[:, None] & kmask[None, :], other=0.0)
        c = tl.load(c_ptr + cols[None, :] * scn + offk[:, None] * scd,
                    mask=kmask[:, None] & (cols < N)[None, :], other=0.0)
        acc = tl.dot(r, c, acc, input_precision=PREC)
    return acc


@triton.jit
def _online_lse(m, l, s, keep):
    """Merge the kept entries of tile s (BM, BN) into the running (max m, sum l) of each row."""
    s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    l = l * tl.exp(m - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), axis=1)
    return m_new, l


@triton.jit
def _finish_lse(m, l):
    return tl.where(l > 0, m + tl.log(tl.where(l > 0, l, 1.0)), float("-inf"))


@triton.jit
def _logits(raw, scale_ptr, bias_ptr, HAS_BIAS: tl.constexpr):
    s = raw * tl.load(scale_ptr)
    if HAS_BIAS:
        s += tl.load(bias_ptr)
    return s


# --------------------------------------------------------------------------- kernels
@triton.jit
def _tiled_lse_kernel(r_ptr, c_ptr, scale_ptr, bias_ptr, pos_ptr, valid_ptr, lse_ptr, pstat_ptr,
                      M, N, D, G, srm, srd, scn, scd, spm, spn, svm, svn,
                      MASKS: tl.constexpr, HAS_BIAS: tl.constexpr, POS_LSE: tl.constexpr,
                      PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    m = tl.full((BM,), float("-inf"), tl.float32)
    l = tl.zeros((BM,), dtype=tl.float32)
    pm = tl.full((BM,), float("-inf"), tl.float32)
    pl = tl.zeros((BM,), dtype=tl.float32)
    for n0 in range(0, N, BN):
        cols = n0 + tl.arange(0, BN)
        raw = _logit_tile(r_ptr, c_ptr, rows, cols, M, N, D, srm, srd, scn, scd, PREC, BM, BN, BK)
        s = _logits(raw, scale_ptr, bias_ptr, HAS_BIAS)
        valid, pos = MASKS(rows, cols, M, N, G, pos_ptr, valid_ptr, spm, spn, svm, svn)
        m, l = _online_lse(m, l, s, valid)
        if POS_LSE:
            pm, pl = _online_lse(pm, pl, s, pos)
        else:
            pl += tl.sum(tl.where(pos, s, 0.0), axis=1)
    rmask = rows < M
    tl.store(lse_ptr + rows, _finish_lse(m, l), mask=rmask)
    if POS_LSE:
        tl.store(pstat_ptr + rows, _finish_lse(pm, pl), mask=rmask)
    else:
        tl.store(pstat_ptr + rows, pl, mask=rmask)


@triton.jit
def _tile_dlogits(s, valid, pos, rows, cols, M, NC, lse_r_ptr, lse_p_ptr, lse_c_ptr,
                  cr, cc, npos, POS_LSE: tl.constexpr, HAS_COL: tl.constexpr):
    """d loss / d S on one tile (fp32); zero outside the valid entries and bounds."""
    lse_r = tl.load(lse_r_ptr + rows, mask=rows < M, other=0.0)
    p = tl.where(valid, tl.exp(s - lse_r[:, None]), 0.0)
    if POS_LSE:
        lse_p = tl.load(lse_p_ptr + rows, mask=rows < M, other=0.0)
        ds = cr * (p - tl.where(pos, tl.exp(s - lse_p[:, None]), 0.0))
    else:
        ds = cr * (npos * p - tl.where(pos, 1.0, 0.0))
    if HAS_COL:
        cmask = cols < NC
        lse_c = tl.load(lse_c_ptr + cols, mask=cmask, other=0.0)
        colv = (rows < M)[:, None] & cmask[None, :]
        pc = tl.where(colv, tl.exp(s - lse_c[None, :]), 0.0)
        ds += cc * (pc - tl.where(colv & pos, 1.0, 0.0))
    return ds


@triton.jit
def _tiled_grad_kernel(r_ptr, c_ptr, scale_ptr, bias_ptr, pos_ptr, valid_ptr,
                       lse_r_ptr, lse_p_ptr, lse_c_ptr, dloss_ptr, dr_ptr, dc_ptr, part_ptr,
                       M, N, D, G, NC, cr_mult, cc_mult, npos,
                       srm, srd, scn, scd, spm, spn, svm, svn,
                       MASKS: tl.constexpr, HAS_BIAS: tl.constexpr, POS_LSE: tl.constexpr,
                       HAS_COL: tl.constexpr, PREC: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    raw = _logit_tile(r_ptr, c_ptr, rows, cols, M, N, D, srm, srd, scn, scd, PREC, BM, BN, BK)
    s = _logits(raw, scale_ptr, bias_ptr, HAS_BIAS)
    valid, pos = MASKS(rows, cols, M, N, G, pos_ptr, valid_ptr, spm, spn, svm, svn)
    g = tl.load(dloss_ptr)
    ds = _tile_dlogits(s, valid, pos, rows, cols, M, NC, lse_r_ptr, lse_p_ptr, lse_c_ptr,
                       g * cr_mult, g * cc_mult, npos, POS_LSE, HAS_COL)
    part = part_ptr + (pid_m * tl.num_programs(1) + pid_n) * 2
    tl.store(part, tl.sum(tl.sum(ds * raw, axis=1), axis=0))
    tl.store(part + 1, tl.sum(tl.sum(ds, axis=1), axis=0))
    dsc = (ds * tl.load(scale_ptr)).to(c_ptr.dtype.element_ty)
    rmask = rows < M
    cmask = cols < N
    for k0 in range(0, D, BK):
        offk = k0 + tl.arange(0, BK)
        kmask = offk < D
        c = tl.load(c_ptr + cols[:, None] * scn + offk[None, :] * scd,
                    mask=cmask[:, None] & kmask[None, :], other=0.0)
        dr = tl.dot(dsc, c, input_precision=PREC)
        tl.atomic_add(dr_ptr + rows[:, None] * D + offk[None, :], dr,
                      mask=rmask[:, None] & kmask[None, :], sem="relaxed")
        r = tl.load(r_ptr + rows[:, None] * srm + offk[None, :] * srd,
                    mask=rmask[:, None] & kmask[None, :], other=0.0)
        dc = tl.dot(tl.trans(dsc), r, input_precision=PREC)
        tl.atomic_add(dc_ptr + cols[:, None] * D + offk[None, :], dc,
                      mask=cmask[:, None] & kmask[None, :], sem="relaxed")


# --------------------------------------------------------------------------- heuristics
@dataclass(frozen=True)
class TileConfig:
    bm: int
    bn: int
    bk: int
    num_warps: int
    num_stages: int


def lse_config(M: int, N: int, D: int, dtype: torch.dtype) -> TileConfig:
    """Forward: 128 x 64 tiles with 64-wide K steps (bf16: 16 KB + 8 KB per stage, 3 stages) and
    8 warps, the usual shape of a FlashAttention-style forward on Hopper; fp32 operands halve BK to
    keep shared memory the same.  Under the interpreter 32 x 32 keeps numpy calls few while the
    tests still cross several blocks.  Not yet tuned on a GPU."""
    if BUILT_INTERPRETED:
        return TileConfig(32, 32, min(max(next_pow2(D), 16), 64), 1, 1)
    bk = 32 if dtype == torch.float32 else 64
    return TileConfig(128, 64, bk, 8, 3)


def grad_config(M: int, N: int, D: int, dtype: torch.dtype) -> TileConfig:
    """Backward: 64 x 64 tiles, 4 warps.  Each tile does three GEMM-sized passes (recompute, dR,
    dC) and 2 x 64 x D fp32 atomics, so smaller tiles keep the dS tile and both partial products
    in registers; to be tuned on the GPU against larger BN and fewer atomics."""
    if BUILT_INTERPRETED:
        return TileConfig(32, 32, min(max(next_pow2(D), 16), 64), 1, 1)
    bk = 32 if dtype == torch.float32 else 64
    return TileConfig(64, 64, bk, 4, 2)


# --------------------------------------------------------------------------- host side
@dataclass
class Tiles:
    """One tiled problem: rows R (M, D), columns C (N, D), scale/bias 0-dim fp32 tensors, the
    loss's mask function, G (a group size the mask function may use) and optional (M, N) bool
    pos/valid matrices for data-driven masks."""
    rows: torch.Tensor
    cols: torch.Tensor
    scale: torch.Tensor
    masks: Callable
    bias: Optional[torch.Tensor] = None
    group: int = 0
    pos: Optional[torch.Tensor] = None
    valid: Optional[torch.Tensor] = None
    pos_lse: bool = False

    def args(self):
        """Pointer/stride arguments shared by both kernels."""
        dummy = self.scale
        pos = dummy if self.pos is None else self.pos.view(torch.uint8)
        valid = dummy if self.valid is None else self.valid.view(torch.uint8)
        sp = (0, 0) if self.pos is None else pos.stride()
        sv = (0, 0) if self.valid is None else valid.stride()
        M, D = self.rows.shape
        N = self.cols.shape[0]
        bias = dummy if self.bias is None else self.bias
        return (bias, pos, valid), (M, N, D, self.group), (*self.rows.stride(), *self.cols.stride(),
                                                           *sp, *sv)


def tiled_lse(t: Tiles):
    """-> lse (M,) fp32 over valid columns, pstat (M,) fp32 (positive-logit sum or positive LSE)."""
    (bias, pos, valid), (M, N, D, G), strides = t.args()
    lse = torch.empty(M, device=t.rows.device, dtype=torch.float32)
    pstat = torch.empty_like(lse)
    c = lse_config(M, N, D, t.rows.dtype)
    _tiled_lse_kernel[(triton.cdiv(M, c.bm),)](
        t.rows, t.cols, t.scale, bias, pos, valid, lse, pstat, M, N, D, G, *strides,
        MASKS=t.masks, HAS_BIAS=t.bias is not None, POS_LSE=t.pos_lse,
        PREC=dot_precision(t.rows.dtype), BM=c.bm, BN=c.bn, BK=c.bk,
        num_warps=c.num_warps, num_stages=c.num_stages)
    return lse, pstat


def tiled_grad(t: Tiles, dloss: torch.Tensor, dr: torch.Tensor, dc: torch.Tensor,
               lse_r: torch.Tensor, cr_mult: float, npos: float = 1.0,
               lse_p: Optional[torch.Tensor] = None, lse_c: Optional[torch.Tensor] = None,
               cc_mult: float = 0.0):
    """Accumulate the loss gradient into the fp32 workspaces dr (M, D) and dc (N, D) (they may be
    the same tensor when R is C).  Row coefficient cr = dloss * cr_mult, column coefficient
    cc = dloss * cc_mult for the first len(lse_c) columns.  Returns (dscale, dbias) 0-dim fp32."""
    (bias, pos, valid), (M, N, D, G), strides = t.args()
    c = grad_config(M, N, D, t.rows.dtype)
    grid = (triton.cdiv(M, c.bm), triton.cdiv(N, c.bn))
    part = torch.empty(grid[0] * grid[1], 2, device=t.rows.device, dtype=torch.float32)
    has_col = lse_c is not None and lse_c.numel() > 0
    _tiled_grad_kernel[grid](
        t.rows, t.cols, t.scale, bias, pos, valid, lse_r, lse_r if lse_p is None else lse_p,
        lse_c if has_col else lse_r, dloss.reshape(()).float(), dr, dc, part,
        M, N, D, G, lse_c.numel() if has_col else 0, float(cr_mult), float(cc_mult), float(npos),
        *strides, MASKS=t.masks, HAS_BIAS=t.bias is not None, POS_LSE=t.pos_lse, HAS_COL=has_col,
        PREC=dot_precision(t.rows.dtype), BM=c.bm, BN=c.bn, BK=c.bk,
        num_warps=c.num_warps, num_stages=c.num_stages)
    sums = part.sum(dim=0)
    return sums[0].clone(), sums[1].clone()  # separate tensors: outputs must not alias


def copy_out(like: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Cast an fp32 workspace to a gradient shaped, strided and typed like ``like``."""
    out = torch.empty_like(like)
    out.copy_(acc)
    return out
