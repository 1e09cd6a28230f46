"""Triton kernels of solar's fused ops (import name ``solar_kernels``).

Importing this package registers backend ``"triton"`` for every op with ``solar.ops.registry``;
the registry imports it lazily, so ``import solar`` never loads Triton.  The kernels run on CUDA
GPUs, or on CPU tensors when ``TRITON_INTERPRET=1`` is set before this package is imported.

Modules: ``masked_pool``, ``contrastive``, ``gcl``, ``multi_positive`` (one op each, each with one
``torch.autograd.Function``) and ``_tiled`` (the tiled LSE / gradient machinery of the losses).
"""
from __future__ import annotations

from solar.ops.registry import KernelImpl, register

from ._common import BUILT_INTERPRETED, can_run, supports
from .contrastive import ContrastiveLossFunction, contrastive_backward, contrastive_forward
from .gcl import GclLossFunction, gcl_backward, gcl_forward
from .masked_pool import MaskedPoolFunction, masked_pool_backward, masked_pool_forward
from .multi_positive import (MultiPositiveInfoNCEFunction, multi_positive_backward,
                             multi_positive_forward)

__all__ = [
    "BUILT_INTERPRETED", "can_run", "supports", "MaskedPoolFunction", "ContrastiveLossFunction",
    "GclLossFunction", "MultiPositiveInfoNCEFunction",
]

_IMPLS = {
    "masked_pool": (masked_pool_forward, masked_pool_backward),
    "contrastive_loss": (contrastive_forward, contrastive_backward),
    "gcl_loss": (gcl_forward, gcl_backward),
    "multi_positive_infonce": (multi_positive_forward, multi_positive_backward),
}

for _op, (_fwd, _bwd) in _IMPLS.items():
    register(_op, "triton", KernelImpl(forward=_fwd, backward=_bwd, supports=supports,
                                       can_run=can_run))
