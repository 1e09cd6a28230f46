"""Contrastive losses: symmetric CLIP loss (k = 0 or k hard-negative columns) and GCL's 3B x 3B
loss, forward, backward and both, per provider.

Roofline figure: effective TFLOP/s with the same count for every provider:
forward 2 M N D for the logits, backward 6 M N D (recompute + two GEMMs), together 8 M N D, with
M = B rows and N = B + k columns for the CLIP loss (the b->a direction reuses the same B x B
block), and M = N = 3B for GCL (every pair, no use of symmetry).
"""
from __future__ import annotations

import pytest
import torch

import _harness as H
import solar

PRESET = H.current_preset()
PROVIDERS = ("solar-triton", "solar-cuda", "solar-cpu", "torch-eager", "torch-compile", "inf-cl")


def _emb(n, D, preset: H.Preset, seed):
    gen = torch.Generator(device=preset.device).manual_seed(seed)
    e = torch.randn(n, D, device=preset.device, dtype=torch.float32, generator=gen)
    return torch.nn.functional.normalize(e, dim=-1).to(preset.dtype)


def _flop(M, N, D) -> dict:
    return {"fwd": 2 * M * N * D, "bwd": 6 * M * N * D, "fwdbwd": 8 * M * N * D}


def _clip_ref(a, b, s, *neg):
    return solar.contrastive_loss_reference(a, b, s, None, neg[0] if neg else None)


def _inf_cl(a, b, s):
    from inf_cl import cal_inf_loss
    return 0.5 * (cal_inf_loss(a, b, scale=s).mean() + cal_inf_loss(b, a, scale=s).mean())


def _clip_fn(provider):
    backend = H.backend_for(provider)
    if backend is not None:
        return lambda a, b, s, *neg: solar.contrastive_loss(a, b, s, None, neg[0] if neg else None,
                                                            backend=backend)
    if provider == "torch-compile":
        return H.compiled(_clip_ref)
    return _inf_cl if provider == "inf-cl" else _clip_ref


@pytest.mark.parametrize("phase", H.PHASES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", PRESET.loss, ids=lambda s: "B{}-D{}-k{}".format(*s))
def test_contrastive(benchmark, preset, size, provider, phase):
    B, D, k = size
    if provider == "inf-cl" and k:
        pytest.skip("inf-cl has no extra negative columns")
    a, b = _emb(B, D, preset, 1), _emb(B, D, preset, 2)
    scale = torch.tensor(14.285714, device=preset.device)
    inputs = [a, b, scale] + ([_emb(k, D, preset, 3)] if k else [])
    case = H.Case("contrastive_loss", provider, {"B": B, "D": D, "k": k}, _clip_fn(provider),
                  _clip_ref, inputs, [True] * len(inputs), {"flop": _flop(B, B + k, D)})
    H.bench_case(benchmark, case, phase, preset)


def _gcl_fn(provider):
    backend = H.backend_for(provider)
    if backend is not None:
        return lambda ei, et, ef, s: solar.gcl_loss(ei, et, ef, s, backend=backend)
    if provider == "torch-compile":
        return H.compiled(solar.gcl_loss_reference)
    return solar.gcl_loss_reference


@pytest.mark.parametrize("phase", H.PHASES)
@pytest.mark.parametrize("provider", PROVIDERS[:-1])
@pytest.mark.parametrize("size", PRESET.gcl, ids=lambda s: "B{}-D{}".format(*s))
def test_gcl(benchmark, preset, size, provider, phase):
    B, D = size
    inputs = [_emb(B, D, preset, i) for i in range(3)] + [torch.tensor(14.285714,
                                                                       device=preset.device)]
    case = H.Case("gcl_loss", provider, {"B": B, "D": D}, _gcl_fn(provider),
                  solar.gcl_loss_reference, inputs, [True] * 4, {"flop": _flop(3 * B, 3 * B, D)})
    H.bench_case(benchmark, case, phase, preset)
