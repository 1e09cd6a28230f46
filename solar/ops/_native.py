"""The ``cpu`` and ``cuda`` backends' tables: one set of wrappers over the binding signature that
both compiled modules share (csrc/common/bindings.h).

The modules (``solar._csrc_cpu``, ``solar._csrc_cuda``) do not link libtorch: every tensor crosses
as a description tuple ``(data_ptr, dtype, device type, device index, shape, strides)`` (``_arg``),
the C++ side checks each one and raises a ValueError/TypeError naming the argument, and outputs
are allocated here with torch and written in place.  Scalars cross as 0-dim float32 tensors on
the device, loss gradients as zero-filled float32 accumulators, and every call ends with the
stream (0 on the CPU, the current stream on CUDA).  Importing this module touches no GPU.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import torch
from torch import Tensor

from .registry import KernelImpl

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


@dataclass(frozen=True)
class Native:
    """One compiled module: ``call`` runs one of its bound functions."""
    module: object
    stream: Callable[[Tensor], int]
    prepare: Callable[[], None] = lambda: None

    def call(self, fn: str, *args) -> None:
        """module.fn(*args, stream) with every tensor replaced by its description tuple.

        The tensors stay referenced by ``args`` for the whole call, so temporaries such as
        ``w.float()`` cannot be freed while the kernel reads them."""
        self.prepare()
        ref = next(a for a in args if isinstance(a, Tensor))
        getattr(self.module, fn)(*[_arg(a) if isinstance(a, Tensor) else a for a in args],
                                 self.stream(ref))


def _last_contiguous(t: Tensor) -> Tensor:
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _c(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def _scalar(t: Optional[Tensor], ref: Tensor) -> Optional[Tensor]:
    return None if t is None else t.detach().to(device=ref.device, dtype=_f32).reshape(())


def _zeros(ref: Tensor, *shape) -> Tensor:
    return torch.zeros(shape, dtype=_f32, device=ref.device)


def _empty(ref: Tensor, *shape) -> Tensor:
    return torch.empty(shape, dtype=_f32, device=ref.device)


# ------------------------------------------------------------------ the canonical signatures
def pool_fwd(n: Native, x, w, normalize, eps):
    xk = _last_contiguous(x)
    B, _, D = x.shape
    y, stats = x.new_empty(B, D), _empty(x, B, 2)
    n.call("masked_pool_fwd", xk, w.float(), y, stats, bool(normalize), float(eps))
    return y, stats


def pool_bwd(n: Native, dy, x, w, normalize, eps, y, stats, needs):
    xk = _last_contiguous(x)
    dx = torch.empty_like(xk)
    dw = _empty(w, *w.shape) if needs[1] else None
    n.call("masked_pool_bwd", dy.contiguous(), xk, w.float(), y.contiguous(), stats.contiguous(),
           dx, dw, bool(normalize), float(eps))
    return dx, dw


def contrastive_fwd(n: Native, a, b, scale, bias, neg, symmetric):
    a, b, neg = a.contiguous(), b.contiguous(), _c(neg)
    B = a.shape[0]
    loss, lse_row, lse_col = _empty(a), _empty(a, B), _empty(a, B if symmetric else 0)
    ws = _empty(a, n.module.contrastive_workspace(B, bool(symmetric)))
    n.call("contrastive_fwd", a, b, neg, _scalar(scale, a), _scalar(bias, a), loss, lse_row,
           lse_col, ws, bool(symmetric))
    return loss, lse_row, lse_col


def contrastive_bwd(n: Native, dloss, a, b, scale, bias, neg, symmetric, loss, lse_row, lse_col,
                    needs):
    a, b, neg = a.contiguous(), b.contiguous(), _c(neg)
    da, db = _zeros(a, *a.shape), _zeros(b, *b.shape)
    dneg = None if neg is None else _zeros(neg, *neg.shape)
    dscale, dbias = _zeros(a), _zeros(a)
    n.call("contrastive_bwd", a, b, neg, _scalar(scale, a), _scalar(bias, a), _scalar(dloss, a),
           lse_row.contiguous(), lse_col.contiguous(), da, db, dneg, dscale, dbias,
           bool(symmetric))
    return da, db, dscale, dbias, dneg


def gcl_fwd(n: Native, ei, et, ef, scale):
    ei, et, ef = ei.contiguous(), et.contiguous(), ef.contiguous()
    loss, lse = _empty(ei), _empty(ei, 3 * ei.shape[0])
    ws = _empty(ei, n.module.gcl_workspace(ei.shape[0]))
    n.call("gcl_fwd", ei, et, ef, _scalar(scale, ei), loss, lse, ws)
    return loss, lse


def gcl_bwd(n: Native, dloss, ei, et, ef, scale, loss, lse, needs):
    ei, et, ef = ei.contiguous(), et.contiguous(), ef.contiguous()
    dei, det, def_ = (_zeros(ei, *ei.shape) for _ in range(3))
    dscale = _zeros(ei)
    n.call("gcl_bwd", ei, et, ef, _scalar(scale, ei), _scalar(dloss, ei), lse.contiguous(), dei,
           det, def_, dscale)
    return dei, det, def_, dscale


def mpi_fwd(n: Native, anchors, cand, pos, valid, scale):
    anchors, cand = anchors.contiguous(), cand.contiguous()
    B = anchors.shape[0]
    loss, lse_all, lse_pos = _empty(anchors), _empty(anchors, B), _empty(anchors, B)
    n.call("mpi_fwd", anchors, cand, pos.contiguous(), valid.contiguous(),
           _scalar(scale, anchors), loss, lse_all, lse_pos)
    return loss, lse_all, lse_pos


def mpi_bwd(n: Native, dloss, anchors, cand, pos, valid, scale, loss, lse_all, lse_pos, needs):
    anchors, cand = anchors.contiguous(), cand.contiguous()
    da, dc, dscale = _zeros(anchors, *anchors.shape), _zeros(cand, *cand.shape), _zeros(anchors)
    n.call("mpi_bwd", anchors, cand, pos.contiguous(), valid.contiguous(),
           _scalar(scale, anchors), _scalar(dloss, anchors), lse_all.contiguous(),
           lse_pos.contiguous(), da, dc, dscale)
    return da, dc, dscale


_WRAPPERS = {
    "masked_pool": (pool_fwd, pool_bwd),
    "contrastive_loss": (contrastive_fwd, contrastive_bwd),
    "gcl_loss": (gcl_fwd, gcl_bwd),
    "multi_positive_infonce": (mpi_fwd, mpi_bwd),
}


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


def _table(native: Native, supports, can_run) -> dict:
    return {op: KernelImpl(partial(fwd, native), partial(bwd, native), supports, can_run)
            for op, (fwd, bwd) in _WRAPPERS.items()}


# ------------------------------------------------------------------------------------ cpu
def _cpu_prepare() -> None:
    cpu_module.set_num_threads(torch.get_num_threads())
    cpu_module.set_chunk_rows(CPU_CHUNK_ROWS)


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


def _cuda_stream(t: Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


# The two tables (the registry reads them); a string says why the module is missing.
CPU_TABLE = (_table(Native(cpu_module, lambda t: 0, _cpu_prepare), _supports("cpu", CPU_DTYPES),
                    lambda: None) if CPU_BUILT else f"solar._csrc_cpu: {cpu_error}")
CUDA_TABLE = (_table(Native(cuda_module, _cuda_stream), _supports("cuda", CUDA_DTYPES),
                     cuda_can_run) if CUDA_BUILT else f"solar._csrc_cuda: {cuda_error}")
