"""Masked pooling + L2 normalize: forward, backward and both, per provider.

Roofline figure: GB/s over the bytes a fused kernel must move: forward reads x and the weights
and writes y; backward reads dy and the weights and writes dx, and with a soft (learnable) mask
also reads x again and writes dw.  The op is bandwidth-bound (2 B L D FLOPs against B L D bytes
of x), so GB/s against the device's measured copy bandwidth is the figure of merit.
"""
from __future__ import annotations

import pytest
import torch

import _harness as H
import solar

PRESET = H.current_preset()
PROVIDERS = ("solar-triton", "solar-cuda", "solar-cpu", "torch-eager", "torch-compile")


def _inputs(B, L, D, mask, preset: H.Preset):
    gen = torch.Generator(device=preset.device).manual_seed(0)
    x = torch.randn(B, L, D, device=preset.device, dtype=preset.dtype, generator=gen)
    if mask == "soft":
        w = torch.rand(B, L, device=preset.device, dtype=preset.dtype, generator=gen)
    else:       # padding mask with random lengths in [1, L]
        lengths = torch.randint(1, L + 1, (B, 1), device=preset.device, generator=gen)
        w = torch.arange(L, device=preset.device)[None, :] < lengths
    return x, w


def _bytes(x, w, mask) -> dict:
    xb = x.numel() * x.element_size()
    wb = w.numel() * w.element_size()
    yb = x.shape[0] * x.shape[2] * x.element_size()
    fwd = xb + wb + yb
    bwd = yb + wb + xb + ((xb + wb) if mask == "soft" else 0)
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}


def _fn(provider):
    backend = H.backend_for(provider)
    if backend is not None:
        return lambda x, w: solar.masked_pool(x, w, backend=backend)
    if provider == "torch-compile":
        return H.compiled(solar.masked_pool_reference)
    return solar.masked_pool_reference


@pytest.mark.parametrize("phase", H.PHASES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", PRESET.pool, ids=lambda s: "x".join(map(str, s)))
def test_masked_pool(benchmark, preset, size, provider, phase):
    B, L, D, mask = size
    x, w = _inputs(B, L, D, mask, preset)
    up = torch.randn(B, D, device=preset.device, dtype=preset.dtype)
    case = H.Case("masked_pool", provider, {"B": B, "L": L, "D": D, "mask": mask}, _fn(provider),
                  solar.masked_pool_reference, [x, w], [True, mask == "soft"],
                  {"bytes": _bytes(x, w, mask)}, upstream=up)
    H.bench_case(benchmark, case, phase, preset)
