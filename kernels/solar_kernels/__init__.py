"""Triton kernels of solar's fused ops (import name ``solar_kernels``).

One module per op (``masked_pool``, ``contrastive``, ``gcl``, ``multi_positive``), each exporting
three plain host functions with the op's canonical signature (see solar/ops/table.py):

    forward(*inputs) -> outputs
    backward(grad, *inputs, *outputs, needs) -> one gradient per differentiable input
    supports(*tensors) -> None, or why these inputs cannot run here

plus ``_tiled`` (the tiled LSE / gradient machinery of the losses).  Nothing here imports solar and
nothing here knows autograd: ``solar.ops`` wraps these functions into its custom ops (backend
``"triton"``), like every other backend.  The kernels run on CUDA GPUs, or on CPU tensors when
``TRITON_INTERPRET=1`` is set before this package is imported.
"""
from __future__ import annotations

from . import contrastive, gcl, masked_pool, multi_positive
from ._common import BUILT_INTERPRETED, can_run, supports

# op name (solar.ops) -> the module implementing it
OPS = {
    "masked_pool": masked_pool,
    "contrastive_loss": contrastive,
    "gcl_loss": gcl,
    "multi_positive_infonce": multi_positive,
}

__all__ = ["BUILT_INTERPRETED", "OPS", "can_run", "supports", "masked_pool", "contrastive", "gcl",
           "multi_positive"]
