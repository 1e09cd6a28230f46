"""Helpers shared by the Triton kernels: where they can run and which inputs they take."""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton

# triton.jit decides at decoration time whether a kernel is compiled or interpreted on the host,
# so the mode the kernels were built in is fixed when this package is imported.
BUILT_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def can_run() -> Optional[str]:
    """None when the kernels can run here, else the reason."""
    if BUILT_INTERPRETED or torch.cuda.is_available():
        return None
    if os.environ.get("TRITON_INTERPRET") == "1":
        return ("TRITON_INTERPRET=1 was set after solar_kernels was imported; set it before the "
                "first import to run the Triton kernels on CPU")
    return "no CUDA device (set TRITON_INTERPRET=1 before importing to run on CPU, slowly)"


def supports(*tensors: Optional[torch.Tensor]) -> Optional[str]:
    """None when every given tensor can be handled, else the reason (bool masks are fine)."""
    for i, t in enumerate(tensors):
        if t is None:
            continue
        if t.device.type == "cpu" and not BUILT_INTERPRETED:
            return f"input {i} is a CPU tensor; the Triton kernels run on CPU only under TRITON_INTERPRET=1"
        if t.device.type not in ("cpu", "cuda"):
            return f"input {i} is on {t.device}, the Triton kernels run on CUDA devices"
        if t.dtype == torch.float64:
            return (f"input {i} is float64; the Triton kernels accumulate in float32 "
                    "(use backend='torch' or 'cpu' for float64)")
        if t.dtype != torch.bool and t.dtype not in SUPPORTED_DTYPES:
            return f"input {i} has dtype {t.dtype}; supported: float32, bfloat16, float16"
    return None


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 operands use exact fp32 products (tf32 would miss the fp32 tolerance); bf16/fp16
    operands go to the tensor cores as they are."""
    return "ieee" if dtype == torch.float32 else "tf32"


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))
