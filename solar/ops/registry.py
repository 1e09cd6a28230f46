"""One backend switch for every fused op.

Backends: ``cuda`` (csrc CUDA C++), ``triton`` (kernels/), ``cpu`` (csrc CPU C++) and ``torch``
(the pure-PyTorch references of ``table.OPS``, always there).  Each kernel backend is one table,
``{op name: KernelImpl}``, held by its provider module (``_PROVIDERS``), which is imported only the
first time that backend is considered, so ``import solar`` never loads triton or a compiled
module.  A new backend is one provider module with its table and one line here.

Choice: ``backend=None`` (the ops' default) reads the ``SOLAR_BACKEND`` environment variable and
falls back to ``"auto"``; ``"auto"`` takes the first backend
in ``AUTO_ORDER`` for the inputs' device that is built, can run here and supports the inputs; an
explicit backend that cannot run raises ``BackendUnavailable`` listing what is available.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .table import OPS as _OP_TABLE

BACKENDS = ("cuda", "triton", "cpu", "torch")
OPS = tuple(_OP_TABLE)
ENV_VAR = "SOLAR_BACKEND"

# Preference per device type for backend="auto".
AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}
# Per-op exceptions to AUTO_ORDER: (device, op) -> order.  None today: on a 2-core x86-64
# (bench/results/cpu-*.md, fwd+bwd) the cpu backend beats eager for pooling (1.1-1.2x; most of
# the backward is page faults of the fresh dx, the same for both) and for the losses (1.9-3.1x
# at B = 2048-4096, 1.2-1.5x from B = 256, at 7-15x less memory); below B ~ 64 both take < 1 ms.
AUTO_ORDER_OP: dict = {}

# backend -> (provider module, its table's name, how to get it)
_PROVIDERS = {
    "triton": ("solar.ops._triton", "TABLE",
               "install Triton (pip install 'solar-mm[triton]'); it runs on CUDA GPUs, or on CPU "
               "tensors under TRITON_INTERPRET=1 (slow, for tests)"),
    "cpu": ("solar.ops._native", "CPU_TABLE",
            "build the csrc module: pip install -e . with a C++ compiler and cmake "
            "(and SOLAR_SKIP_NATIVE unset)"),
    "cuda": ("solar.ops._native", "CUDA_TABLE",
             "build the csrc CUDA module (nvcc on PATH, SOLAR_SKIP_CUDA unset) and run on a CUDA GPU "
             "with a CUDA build of torch"),
}


class BackendUnavailable(RuntimeError):
    """The requested backend is not built, cannot run here, or does not support the inputs."""


@dataclass
class KernelImpl:
    """A kernel backend's implementation of one op.

    ``forward`` and ``backward`` follow the op's canonical signature (see solar/ops/table.py);
    ``supports(*tensors)`` returns None when the inputs can be handled, else the reason.
    ``can_run()`` says whether the backend runs on this machine at all.
    """
    forward: Callable
    backward: Callable
    supports: Callable[..., Optional[str]] = lambda *a, **k: None
    can_run: Callable[[], Optional[str]] = lambda: None


_TABLES: dict[str, dict[str, KernelImpl]] = {}     # backend -> its provider's table, once loaded
_IMPLS: dict[tuple[str, str], KernelImpl] = {}      # (op, backend) -> entries set by register()
_LOAD_ERRORS: dict[str, str] = {}
_LOADED: set[str] = set()


def register(op: str, backend: str, impl: KernelImpl) -> None:
    """Set (or replace) one entry of a kernel backend's table."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops are {OPS}")
    if backend not in BACKENDS or backend == "torch":
        raise ValueError(f"cannot register backend {backend!r}; kernel backends are {BACKENDS[:3]}")
    _IMPLS[(op, backend)] = impl


def _load(backend: str) -> None:
    if backend == "torch" or backend in _LOADED:
        return
    _LOADED.add(backend)
    module, table, _ = _PROVIDERS[backend]
    try:
        impls = getattr(importlib.import_module(module), table)
    except Exception as err:  # a missing optional part must not break the other backends
        _LOAD_ERRORS[backend] = f"{type(err).__name__}: {err}"
        return
    if isinstance(impls, str):  # the provider says why it has nothing (e.g. a module not built)
        _LOAD_ERRORS[backend] = impls
        return
    _TABLES[backend] = dict(impls)


def _lookup(op: str, backend: str) -> Optional[KernelImpl]:
    _load(backend)
    return _IMPLS.get((op, backend)) or _TABLES.get(backend, {}).get(op)


def get_impl(op: str, backend: str) -> KernelImpl:
    impl = _lookup(op, backend)
    if impl is None:
        raise BackendUnavailable(_why_missing(op, backend))
    return impl


def _why_missing(op: str, backend: str) -> str:
    err = _LOAD_ERRORS.get(backend)
    why = f"not built or not installed ({err})" if err else f"provides no {op!r}"
    return f"backend {backend!r} {why}; to get it: {_PROVIDERS[backend][2]}"


def backend_status(backend: str, op: str = "masked_pool") -> tuple[bool, Optional[str]]:
    """(built, reason it cannot run here or None)."""
    if backend == "torch":
        return True, None
    impl = _lookup(op, backend)
    if impl is None:
        return False, _why_missing(op, backend)
    return True, impl.can_run()


def available_backends(op: str = "masked_pool") -> list[str]:
    """Backends that are built and can run on this machine for ``op``."""
    return [b for b in BACKENDS if backend_status(b, op) == (True, None)]


def requested_backend(backend: Optional[str]) -> str:
    name = (backend or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {name!r}"
                         + (f" (from ${ENV_VAR})" if not backend else ""))
    return name


def resolve(op: str, backend: Optional[str], *tensors: Optional[torch.Tensor]) -> str:
    """The backend that will run ``op`` on these tensors."""
    name = requested_backend(backend)
    ts = [t for t in tensors if isinstance(t, torch.Tensor)]
    device = ts[0].device.type if ts else "cpu"
    if name == "torch":
        return name
    if name != "auto":
        impl = get_impl(op, name)
        reason = impl.can_run() or impl.supports(*tensors)
        if reason:
            raise BackendUnavailable(
                f"backend {name!r} cannot run {op!r} here: {reason}. "
                f"Available for {op!r}: {available_backends(op)}")
        return name
    for cand in AUTO_ORDER_OP.get((device, op)) or AUTO_ORDER.get(device, ("torch",)):
        if cand == "torch":
            return cand
        try:
            impl = get_impl(op, cand)
        except BackendUnavailable:
            continue
        if impl.can_run() is None and impl.supports(*tensors) is None:
            return cand
    return "torch"
