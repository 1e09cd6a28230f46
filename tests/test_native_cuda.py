"""The csrc CUDA backend ("cuda") on a GPU: forward and every gradient against references.

Relative rule (conventions.md): for each output and gradient, the kernel's max error against the
float64 reference is at most 2x that of the PyTorch reference run on the GPU in the same dtype
(plus a floor of 1e-6 x the largest reference value for exact cases).  Skipped without CUDA.
"""
from __future__ import annotations

import pytest
import torch

import solar
from solar.ops import _native

from common import LOSS_SHAPES, MASK_CASES, POOL_SHAPES, SCALES, embeddings, generator, pool_inputs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not _native.CUDA_BUILT,
                       reason=f"solar._csrc_cuda is not built ({_native.cuda_error})"),
]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _grads(fn, inputs64, dtype, device):
    xs = [None if t is None else t.to(device=device, dtype=dtype).requires_grad_() for t in inputs64]
    out = fn(*xs)
    g = torch.randn(out.shape, generator=generator(0), dtype=torch.float64).to(out)
    grads = torch.autograd.grad((out * g).sum(), [x for x in xs if x is not None])
    return [out.detach(), *grads]


def _relative_rule(fn_kernel, fn_ref, inputs64, dtype, names):
    got = _grads(fn_kernel, inputs64, dtype, "cuda")
    low = _grads(fn_ref, inputs64, dtype, "cuda")
    ref = _grads(fn_ref, inputs64, torch.float64, "cpu")
    for name, k, t, r in zip(names, got, low, ref):
        assert torch.isfinite(k).all(), f"{name}: non-finite values"
        err_k = (k.double().cpu() - r).abs().max().item()
        err_t = (t.double().cpu() - r).abs().max().item()
        floor = 1e-6 * max(r.abs().max().item(), 1.0)
        assert err_k <= 2 * err_t + floor, f"{name} ({dtype}): kernel {err_k:.3g} vs torch {err_t:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", POOL_SHAPES + [(64, 577, 768)])
@pytest.mark.parametrize("case", MASK_CASES)
def test_masked_pool_cuda(dtype, shape, case):
    x, w = pool_inputs(*shape, dtype=torch.float64, case=case)
    w = w.double()
    _relative_rule(lambda x_, w_: solar.masked_pool(x_, w_, backend="cuda"),
                   lambda x_, w_: solar.masked_pool_reference(x_, w_), [x, w], dtype,
                   ["y", "dx", "dw"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,D", LOSS_SHAPES + [(1000, 768), (257, 384)])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_contrastive_cuda(dtype, B, D, scale, symmetric):
    a, b = embeddings(B, D, seed=1, duplicate=True), embeddings(B, D, seed=2)
    s = torch.tensor(scale, dtype=torch.float64)

    def run(backend):
        return lambda a_, b_, s_: solar.contrastive_loss(a_, b_, s_.float() if backend == "cuda"
                                                         else s_, symmetric=symmetric,
                                                         backend=backend)
    _relative_rule(run("cuda"), run("torch"), [a, b, s], dtype, ["loss", "da", "db", "dscale"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,D,K", [(1, 8, 1), (97, 131, 31), (300, 256, 200)])
def test_contrastive_hard_negatives_bias_cuda(dtype, B, D, K):
    a, b, n = embeddings(B, D, seed=3), embeddings(B, D, seed=4), embeddings(K, D, seed=5)
    s, bias = torch.tensor(14.285714, dtype=torch.float64), torch.tensor(-0.7, dtype=torch.float64)

    def run(backend):
        def fn(a_, b_, n_, s_, bias_):
            if backend == "cuda":
                s_, bias_ = s_.float(), bias_.float()
            return solar.contrastive_loss(a_, b_, s_, bias_, n_, backend=backend)
        return fn
    _relative_rule(run("cuda"), run("torch"), [a, b, n, s, bias], dtype,
                   ["loss", "da", "db", "dneg", "dscale", "dbias"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,D", [(1, 1), (3, 5), (65, 129), (300, 384)])
@pytest.mark.parametrize("scale", SCALES)
def test_gcl_cuda(dtype, B, D, scale):
    e = [embeddings(B, D, seed=20 + k, duplicate=(k == 0)) for k in range(3)]
    s = torch.tensor(scale, dtype=torch.float64)

    def run(backend):
        return lambda i, t, f, s_: solar.gcl_loss(i, t, f, s_.float() if backend == "cuda" else s_,
                                                  backend=backend)
    _relative_rule(run("cuda"), run("torch"), [*e, s], dtype,
                   ["loss", "dei", "det", "def", "dscale"])


def test_noncontiguous_inputs_cuda():
    x, w = pool_inputs(3, 97, 131, dtype=torch.float64, case="noncontiguous")
    _relative_rule(lambda x_, w_: solar.masked_pool(x_.transpose(1, 2).contiguous().transpose(1, 2),
                                                    w_, backend="cuda"),
                   lambda x_, w_: solar.masked_pool_reference(x_, w_), [x, w.double()],
                   torch.bfloat16, ["y", "dx", "dw"])
    a, b = embeddings(17, 33, seed=6), embeddings(17, 33, seed=7)
    _relative_rule(lambda a_, b_: solar.contrastive_loss(a_[:, :], b_.t().contiguous().t(), 10.0,
                                                         backend="cuda"),
                   lambda a_, b_: solar.contrastive_loss(a_, b_, 10.0, backend="torch"), [a, b],
                   torch.float32, ["loss", "da", "db"])


def test_runs_on_the_current_stream():
    a, b = embeddings(128, 64, dtype=torch.bfloat16, device="cuda"), embeddings(
        128, 64, seed=1, dtype=torch.bfloat16, device="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        loss = solar.contrastive_loss(a, b, 10.0, backend="cuda")
    side.synchronize()
    ref = solar.contrastive_loss(a.double(), b.double(), 10.0, backend="torch")
    assert abs(loss.item() - ref.item()) < 5e-2 * max(1.0, abs(ref.item()))
