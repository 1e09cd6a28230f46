"""torch.library custom ops that carry the kernel backends (cuda, triton, cpu).

Each op is a forward op and a backward op with a fixed, backend-independent signature, fake
(meta) implementations for torch.compile, and autograd glue.  Kernel backends implement exactly
these signatures (``KernelImpl.forward`` / ``KernelImpl.backward``):

masked_pool
  fwd(x[B,L,D], w[B,L] float, normalize, eps) -> (y[B,D] x.dtype, stats[B,2] fp32)
        stats[:,0] = sum_l w_l, stats[:,1] = ||mean|| (the norm before normalizing; 0 if unused)
  bwd(dy, x, w, y, stats, normalize, eps, need_dw) -> (dx[B,L,D], dw[B,L] or empty)
contrastive_loss
  fwd(a[B,D], b[B,D], scale[] fp32, bias[]?, neg[K,D]?, symmetric) -> (loss[] fp32, lse_row[B], lse_col[B])
        lse_row: log-sum-exp of row i of a->[b; neg]; lse_col: of row i of b->a (empty if not symmetric)
  bwd(dloss, a, b, scale, bias?, neg?, lse_row, lse_col, symmetric) -> (da, db, dscale[], dbias[], dneg[K,D])
gcl_loss
  fwd(ei[B,D], et[B,D], ef[B,D], scale[]) -> (loss[] fp32, lse[3B] fp32)
  bwd(dloss, ei, et, ef, scale, lse) -> (dei, det, def, dscale[])
multi_positive_infonce
  fwd(anchors[B,D], cand[N,D], pos[B,N] bool, valid[B,N] bool, scale[]) -> (loss[], lse_all[B], lse_pos[B])
  bwd(dloss, anchors, cand, pos, valid, scale, lse_all, lse_pos) -> (danchors, dcand, dscale[])

Losses are means (see the references).  "fp32" above means the accumulation dtype: fp32 for
fp32/bf16/fp16 inputs and fp64 for fp64 inputs (kernel backends may refuse fp64 in ``supports``).
Scalars (scale, bias) arrive as 0-dim tensors in that dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .registry import get_impl

def _acc(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _empty(ref: Tensor, *shape, dtype=None) -> Tensor:
    return ref.new_empty(shape, dtype=dtype or ref.dtype)


# --------------------------------------------------------------------------- masked_pool
@torch.library.custom_op("solar::masked_pool_fwd", mutates_args=())
def masked_pool_fwd(x: Tensor, w: Tensor, normalize: bool, eps: float,
                    backend: str) -> tuple[Tensor, Tensor]:
    return get_impl("masked_pool", backend).forward(x, w, normalize, eps)


@masked_pool_fwd.register_fake
def _(x, w, normalize, eps, backend):
    return _empty(x, x.shape[0], x.shape[2]), _empty(x, x.shape[0], 2, dtype=_acc(x))


@torch.library.custom_op("solar::masked_pool_bwd", mutates_args=())
def masked_pool_bwd(dy: Tensor, x: Tensor, w: Tensor, y: Tensor, stats: Tensor, normalize: bool,
                    eps: float, need_dw: bool, backend: str) -> tuple[Tensor, Tensor]:
    return get_impl("masked_pool", backend).backward(dy, x, w, y, stats, normalize, eps, need_dw)


@masked_pool_bwd.register_fake
def _(dy, x, w, y, stats, normalize, eps, need_dw, backend):
    return torch.empty_like(x), (torch.empty_like(w) if need_dw else _empty(w, 0))


def _mp_setup(ctx, inputs, output):
    x, w, normalize, eps, backend = inputs
    ctx.save_for_backward(x, w, output[0], output[1])
    ctx.args = (normalize, eps, backend)


def _mp_backward(ctx, dy, _dstats):
    x, w, y, stats = ctx.saved_tensors
    normalize, eps, backend = ctx.args
    need_dw = ctx.needs_input_grad[1]
    dx, dw = masked_pool_bwd(dy.contiguous(), x, w, y, stats, normalize, eps, need_dw, backend)
    return dx, (dw if need_dw else None), None, None, None


masked_pool_fwd.register_autograd(_mp_backward, setup_context=_mp_setup)


# --------------------------------------------------------------------------- contrastive_loss
@torch.library.custom_op("solar::contrastive_loss_fwd", mutates_args=())
def contrastive_loss_fwd(a: Tensor, b: Tensor, scale: Tensor, bias: Optional[Tensor],
                         neg: Optional[Tensor], symmetric: bool,
                         backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return get_impl("contrastive_loss", backend).forward(a, b, scale, bias, neg, symmetric)


@contrastive_loss_fwd.register_fake
def _(a, b, scale, bias, neg, symmetric, backend):
    B = a.shape[0]
    return (_empty(a, dtype=_acc(a)), _empty(a, B, dtype=_acc(a)),
            _empty(a, B if symmetric else 0, dtype=_acc(a)))


@torch.library.custom_op("solar::contrastive_loss_bwd", mutates_args=())
def contrastive_loss_bwd(dloss: Tensor, a: Tensor, b: Tensor, scale: Tensor, bias: Optional[Tensor],
                         neg: Optional[Tensor], lse_row: Tensor, lse_col: Tensor, symmetric: bool,
                         backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return get_impl("contrastive_loss", backend).backward(dloss, a, b, scale, bias, neg, lse_row,
                                                          lse_col, symmetric)


@contrastive_loss_bwd.register_fake
def _(dloss, a, b, scale, bias, neg, lse_row, lse_col, symmetric, backend):
    dneg = torch.empty_like(neg) if neg is not None else _empty(a, 0, a.shape[1])
    return (torch.empty_like(a), torch.empty_like(b), _empty(scale, dtype=_acc(a)),
            _empty(scale, dtype=_acc(a)), dneg)


def _cl_setup(ctx, inputs, output):
    a, b, scale, bias, neg, symmetric, backend = inputs
    ctx.save_for_backward(a, b, scale, bias, neg, output[1], output[2])
    ctx.args = (symmetric, backend)


def _cl_backward(ctx, dloss, _d1, _d2):
    a, b, scale, bias, neg, lse_row, lse_col = ctx.saved_tensors
    symmetric, backend = ctx.args
    da, db, dscale, dbias, dneg = contrastive_loss_bwd(dloss, a, b, scale, bias, neg, lse_row,
                                                       lse_col, symmetric, backend)
    return (da, db, dscale.to(scale.dtype),
            None if bias is None else dbias.to(bias.dtype),
            None if neg is None else dneg, None, None)


contrastive_loss_fwd.register_autograd(_cl_backward, setup_context=_cl_setup)


# --------------------------------------------------------------------------- gcl_loss
@torch.library.custom_op("solar::gcl_loss_fwd", mutates_args=())
def gcl_loss_fwd(ei: Tensor, et: Tensor, ef: Tensor, scale: Tensor,
                 backend: str) -> tuple[Tensor, Tensor]:
    return get_impl("gcl_loss", backend).forward(ei, et, ef, scale)


@gcl_loss_fwd.register_fake
def _(ei, et, ef, scale, backend):
    return _empty(ei, dtype=_acc(ei)), _empty(ei, 3 * ei.shape[0], dtype=_acc(ei))


@torch.library.custom_op("solar::gcl_loss_bwd", mutates_args=())
def gcl_loss_bwd(dloss: Tensor, ei: Tensor, et: Tensor, ef: Tensor, scale: Tensor, lse: Tensor,
                 backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return get_impl("gcl_loss", backend).backward(dloss, ei, et, ef, scale, lse)


@gcl_loss_bwd.register_fake
def _(dloss, ei, et, ef, scale, lse, backend):
    return (torch.empty_like(ei), torch.empty_like(et), torch.empty_like(ef),
            _empty(scale, dtype=_acc(ei)))


def _gcl_setup(ctx, inputs, output):
    ei, et, ef, scale, backend = inputs
    ctx.save_for_backward(ei, et, ef, scale, output[1])
    ctx.backend = backend


def _gcl_backward(ctx, dloss, _dlse):
    ei, et, ef, scale, lse = ctx.saved_tensors
    dei, det, def_, dscale = gcl_loss_bwd(dloss, ei, et, ef, scale, lse, ctx.backend)
    return dei, det, def_, dscale.to(scale.dtype), None


gcl_loss_fwd.register_autograd(_gcl_backward, setup_context=_gcl_setup)


# --------------------------------------------------------------------------- multi_positive_infonce
@torch.library.custom_op("solar::multi_positive_infonce_fwd", mutates_args=())
def multi_positive_infonce_fwd(anchors: Tensor, cand: Tensor, pos: Tensor, valid: Tensor,
                               scale: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return get_impl("multi_positive_infonce", backend).forward(anchors, cand, pos, valid, scale)


@multi_positive_infonce_fwd.register_fake
def _(anchors, cand, pos, valid, scale, backend):
    B = anchors.shape[0]
    return (_empty(anchors, dtype=_acc(anchors)), _empty(anchors, B, dtype=_acc(anchors)),
            _empty(anchors, B, dtype=_acc(anchors)))


@torch.library.custom_op("solar::multi_positive_infonce_bwd", mutates_args=())
def multi_positive_infonce_bwd(dloss: Tensor, anchors: Tensor, cand: Tensor, pos: Tensor,
                               valid: Tensor, scale: Tensor, lse_all: Tensor, lse_pos: Tensor,
                               backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return get_impl("multi_positive_infonce", backend).backward(dloss, anchors, cand, pos, valid,
                                                                scale, lse_all, lse_pos)


@multi_positive_infonce_bwd.register_fake
def _(dloss, anchors, cand, pos, valid, scale, lse_all, lse_pos, backend):
    return torch.empty_like(anchors), torch.empty_like(cand), _empty(scale, dtype=_acc(anchors))


def _mpi_setup(ctx, inputs, output):
    anchors, cand, pos, valid, scale, backend = inputs
    ctx.save_for_backward(anchors, cand, pos, valid, scale, output[1], output[2])
    ctx.backend = backend


def _mpi_backward(ctx, dloss, _d1, _d2):
    anchors, cand, pos, valid, scale, lse_all, lse_pos = ctx.saved_tensors
    da, dc, dscale = multi_positive_infonce_bwd(dloss, anchors, cand, pos, valid, scale, lse_all,
                                                lse_pos, ctx.backend)
    return da, dc, None, None, dscale.to(scale.dtype), None


multi_positive_infonce_fwd.register_autograd(_mpi_backward, setup_context=_mpi_setup)
