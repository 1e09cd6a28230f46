"""The ``triton`` backend's table: each op's kernel module in ``solar_kernels`` (kernels/).

Importing this module imports Triton; the registry does so only when the backend is first
considered.
"""
from __future__ import annotations

import solar_kernels

from .registry import KernelImpl

TABLE = {op: KernelImpl(mod.forward, mod.backward, mod.supports, solar_kernels.can_run)
         for op, mod in solar_kernels.OPS.items()}
