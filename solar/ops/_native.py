"""Loads the compiled csrc modules and registers the ``cpu`` and ``cuda`` kernel backends.

The modules (``solar._csrc_cpu``, ``solar._csrc_cuda``) do not link libtorch: every tensor crosses
as a description tuple ``(data_ptr, dtype, device type, device index, shape, strides)`` (see
``_arg``), the C++ side checks each one and raises a ValueError/TypeError naming the argument, and
outputs are allocated here with torch and written in place.  CUDA calls also pass the current
stream.  Importing this module touches no GPU.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch import Tensor

from .registry import KernelImpl, register

_f32 = torch.float32


def _try(name: str):
    try:
        return importlib.import_module(name), None
    except ImportError as err:
        return None, str(err)


cpu_module, cpu_error = _try("solar._csrc_cpu")
cuda_module, cuda_error = _try("solar._csrc_cuda")
CPU_BUILT: bool = cpu_module is not None
CUDA_BUILT: bool = cuda_module is not None

# Rows per logits chunk of the CPU losses (0: the module's heuristic, about 4 MiB of logits).
CPU_CHUNK_ROWS = 0

CPU_DTYPES = (torch.float32, torch.bfloat16)     # float16/float64 fall back to torch in auto
CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _arg(t: Tensor) -> tuple:
    """The description tuple of a tensor (what the bound functions take)."""
    index = -1 if t.device.index is None else t.device.index
    return (t.data_ptr(), str(t.dtype).replace("torch.", ""), t.device.type, index,
            tuple(t.shape), tuple(t.stride()))


def _call(fn, *args):
    """fn with every tensor argument replaced by its description tuple.

    The tensors stay referenced by ``args`` for the whole call, so temporaries such as
    ``w.float()`` cannot be freed while the kernel reads them.
    """
    return fn(*[_arg(a) if isinstance(a, Tensor) else a for a in args])


def _last_contiguous(t: Tensor) -> Tensor:
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _like(ref: Tensor, computed: Tensor) -> Tensor:
    """``computed`` in the layout of ``torch.empty_like(ref)`` (what the fake impls promise)."""
    if computed.stride() == ref.stride() and computed.dtype == ref.dtype:
        return computed  # ref is dense with these strides, so empty_like(ref) has them too
    out = torch.empty_like(ref)
    if out.stride() == computed.stride() and out.dtype == computed.dtype:
        return computed
    return out.copy_(computed)


def _supports(devtype: str, dtypes: tuple):
    def check(*tensors) -> Optional[str]:
        ts = [t for t in tensors if isinstance(t, Tensor)]
        for t in ts:
            if t.device.type != devtype:
                return f"the {devtype!r} backend needs {devtype} tensors, got {t.device}"
        if ts and ts[0].dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            return f"dtype {ts[0].dtype} is not supported (supported: {names})"
        return None
    return check


# ------------------------------------------------------------------------------------ cpu
def _cpu():
    cpu_module.set_num_threads(torch.get_num_threads())
    return cpu_module


def _cpu_pool_fwd(x, w, normalize, eps):
    xk = _last_contiguous(x)
    B, _, D = x.shape
    y, stats = x.new_empty(B, D), x.new_empty(B, 2, dtype=_f32)
    _call(_cpu().masked_pool_fwd, xk, w.float(), y, stats, normalize, eps)
    return y, stats


def _cpu_pool_bwd(dy, x, w, y, stats, normalize, eps, need_dw):
    xk = _last_contiguous(x)
    dx = torch.empty_like(xk)
    dw = torch.empty(w.shape, dtype=_f32) if need_dw else None
    _call(_cpu().masked_pool_bwd, dy.contiguous(), xk, w.float(), y.contiguous(),
          stats.contiguous(), dx, dw, normalize, eps)
    return _like(x, dx), (_like(w, dw) if need_dw else w.new_empty(0))


def _f(t: Optional[Tensor], default: float = 0.0) -> float:
    return default if t is None else float(t)


def _cpu_cl_fwd(a, b, scale, bias, neg, symmetric):
    B = a.shape[0]
    loss, lse_row = torch.empty((), dtype=_f32), torch.empty(B, dtype=_f32)
    lse_col = torch.empty(B if symmetric else 0, dtype=_f32)
    _call(_cpu().contrastive_fwd, a, b, neg, loss, lse_row, lse_col, _f(scale), _f(bias),
          bool(symmetric), CPU_CHUNK_ROWS)
    return loss, lse_row, lse_col


def _cpu_cl_bwd(dloss, a, b, scale, bias, neg, lse_row, lse_col, symmetric):
    da, db = torch.empty_like(a), torch.empty_like(b)
    dneg = torch.empty_like(neg) if neg is not None else a.new_empty(0, a.shape[1])
    dscale, dbias = torch.empty((), dtype=_f32), torch.empty((), dtype=_f32)
    _call(_cpu().contrastive_bwd, a, b, neg, lse_row.contiguous(), lse_col.contiguous(), da, db,
          dneg if neg is not None else None, dscale, dbias, _f(dloss), _f(scale), _f(bias),
          bool(symmetric), CPU_CHUNK_ROWS)
    return da, db, dscale, dbias, dneg


def _cpu_gcl_fwd(ei, et, ef, scale):
    loss, lse = torch.empty((), dtype=_f32), torch.empty(3 * ei.shape[0], dtype=_f32)
    _call(_cpu().gcl_fwd, ei, et, ef, loss, lse, _f(scale), CPU_CHUNK_ROWS)
    return loss, lse


def _cpu_gcl_bwd(dloss, ei, et, ef, scale, lse):
    dei, det, def_ = torch.empty_like(ei), torch.empty_like(et), torch.empty_like(ef)
    dscale = torch.empty((), dtype=_f32)
    _call(_cpu().gcl_bwd, ei, et, ef, lse.contiguous(), dei, det, def_, dscale, _f(dloss),
          _f(scale), CPU_CHUNK_ROWS)
    return dei, det, def_, dscale


def _cpu_mpi_fwd(anchors, cand, pos, valid, scale):
    B = anchors.shape[0]
    loss = torch.empty((), dtype=_f32)
    lse_all, lse_pos = torch.empty(B, dtype=_f32), torch.empty(B, dtype=_f32)
    _call(_cpu().mpi_fwd, anchors, cand, pos.contiguous(), valid.contiguous(), loss, lse_all,
          lse_pos, _f(scale), CPU_CHUNK_ROWS)
    return loss, lse_all, lse_pos


def _cpu_mpi_bwd(dloss, anchors, cand, pos, valid, scale, lse_all, lse_pos):
    da, dc = torch.empty_like(anchors), torch.empty_like(cand)
    dscale = torch.empty((), dtype=_f32)
    _call(_cpu().mpi_bwd, anchors, cand, pos.contiguous(), valid.contiguous(),
          lse_all.contiguous(), lse_pos.contiguous(), da, dc, dscale, _f(dloss), _f(scale),
          CPU_CHUNK_ROWS)
    return da, dc, dscale


def _register_cpu() -> None:
    sup = _supports("cpu", CPU_DTYPES)
    register("masked_pool", "cpu", KernelImpl(_cpu_pool_fwd, _cpu_pool_bwd, sup))
    register("contrastive_loss", "cpu", KernelImpl(_cpu_cl_fwd, _cpu_cl_bwd, sup))
    register("gcl_loss", "cpu", KernelImpl(_cpu_gcl_fwd, _cpu_gcl_bwd, sup))
    register("multi_positive_infonce", "cpu", KernelImpl(_cpu_mpi_fwd, _cpu_mpi_bwd, sup))


# ------------------------------------------------------------------------------------ cuda
_CUDA_REASON: list = []


def cuda_can_run() -> Optional[str]:
    """None when the CUDA module can launch here, else why not (checked once)."""
    if not _CUDA_REASON:
        _CUDA_REASON.append(_cuda_reason())
    return _CUDA_REASON[0]


def _cuda_reason() -> Optional[str]:
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return (f"built, but torch.cuda.is_available() is False here (torch {torch.__version__} "
                f"is {build}); it needs a CUDA GPU and a CUDA build of torch")
    info = cuda_module.build_info()
    if info["device_count"] == 0:
        return f"built, but its CUDA runtime sees no device ({info['device_error']})"
    return None


def _stream(t: Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def _cuda_pool_fwd(x, w, normalize, eps):
    xk = _last_contiguous(x)
    B, _, D = x.shape
    y, stats = x.new_empty(B, D), x.new_empty(B, 2, dtype=_f32)
    _call(cuda_module.masked_pool_fwd, xk, w.float(), y, stats, normalize, eps, _stream(x))
    return y, stats


def _cuda_pool_bwd(dy, x, w, y, stats, normalize, eps, need_dw):
    xk = _last_contiguous(x)
    dx = torch.empty_like(xk)
    dw = torch.empty(w.shape, dtype=_f32, device=w.device) if need_dw else None
    _call(cuda_module.masked_pool_bwd, dy.contiguous(), xk, w.float(), y.contiguous(),
          stats.contiguous(), dx, dw, normalize, eps, _stream(x))
    return _like(x, dx), (_like(w, dw) if need_dw else w.new_empty(0))


def _dev_scalar(t: Optional[Tensor], ref: Tensor) -> Optional[Tensor]:
    return None if t is None else t.detach().to(device=ref.device, dtype=_f32).reshape(())


def _cuda_cl_fwd(a, b, scale, bias, neg, symmetric):
    a, b = a.contiguous(), b.contiguous()
    neg = None if neg is None else neg.contiguous()
    B = a.shape[0]
    f32 = dict(dtype=_f32, device=a.device)
    loss, lse_row = torch.empty((), **f32), torch.empty(B, **f32)
    lse_col = torch.empty(B if symmetric else 0, **f32)
    ws = torch.empty(cuda_module.contrastive_workspace(B, bool(symmetric)), **f32)
    _call(cuda_module.contrastive_fwd, a, b, neg, _dev_scalar(scale, a), _dev_scalar(bias, a),
          loss, lse_row, lse_col, ws, bool(symmetric), _stream(a))
    return loss, lse_row, lse_col


def _cuda_cl_bwd(dloss, a, b, scale, bias, neg, lse_row, lse_col, symmetric):
    ak, bk = a.contiguous(), b.contiguous()
    negk = None if neg is None else neg.contiguous()
    f32 = dict(dtype=_f32, device=a.device)
    da, db = torch.zeros(a.shape, **f32), torch.zeros(b.shape, **f32)
    dneg = torch.zeros(neg.shape, **f32) if neg is not None else None
    grads = torch.zeros(2, **f32)
    _call(cuda_module.contrastive_bwd, ak, bk, negk, _dev_scalar(scale, a), _dev_scalar(bias, a),
          _dev_scalar(dloss, a), lse_row.contiguous(), lse_col.contiguous(), da, db, dneg, grads,
          bool(symmetric), _stream(a))
    dneg_out = _like(neg, dneg.to(neg.dtype)) if neg is not None else a.new_empty(0, a.shape[1])
    return (_like(a, da.to(a.dtype)), _like(b, db.to(b.dtype)), grads[0].clone(),
            grads[1].clone(), dneg_out)


def _cuda_gcl_fwd(ei, et, ef, scale):
    ei, et, ef = ei.contiguous(), et.contiguous(), ef.contiguous()
    f32 = dict(dtype=_f32, device=ei.device)
    loss, lse = torch.empty((), **f32), torch.empty(3 * ei.shape[0], **f32)
    ws = torch.empty(cuda_module.gcl_workspace(ei.shape[0]), **f32)
    _call(cuda_module.gcl_fwd, ei, et, ef, _dev_scalar(scale, ei), loss, lse, ws, _stream(ei))
    return loss, lse


def _cuda_gcl_bwd(dloss, ei, et, ef, scale, lse):
    B = ei.shape[0]
    de = torch.zeros(3 * B, ei.shape[1], dtype=_f32, device=ei.device)
    grads = torch.zeros(2, dtype=_f32, device=ei.device)
    _call(cuda_module.gcl_bwd, ei.contiguous(), et.contiguous(), ef.contiguous(),
          _dev_scalar(scale, ei), _dev_scalar(dloss, ei), lse.contiguous(), de, grads,
          _stream(ei))
    parts = [_like(t, d.to(t.dtype)) for t, d in zip((ei, et, ef), de.split(B))]
    return parts[0], parts[1], parts[2], grads[0].clone()


def _register_cuda() -> None:
    sup = _supports("cuda", CUDA_DTYPES)
    register("masked_pool", "cuda", KernelImpl(_cuda_pool_fwd, _cuda_pool_bwd, sup, cuda_can_run))
    register("contrastive_loss", "cuda",
             KernelImpl(_cuda_cl_fwd, _cuda_cl_bwd, sup, cuda_can_run))
    register("gcl_loss", "cuda", KernelImpl(_cuda_gcl_fwd, _cuda_gcl_bwd, sup, cuda_can_run))


if CPU_BUILT:
    _register_cpu()
if CUDA_BUILT:
    _register_cuda()
