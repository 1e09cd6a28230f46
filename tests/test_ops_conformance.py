"""Every kernel backend against the float64 reference twins: the output and every gradient.

One test per (backend, case).  A case is one op on one input built from the shared lists of
tests/common.py: non-powers of two, batch 1, a single valid token, an all-masked row, duplicate
embeddings, large logit scales, non-contiguous inputs.  Every case runs through the public facade
(``solar.<op>(..., backend=...)``), so it covers the one autograd path all backends share.  A new
kernel backend is tested by adding its name to ``KERNEL_BACKENDS``; a backend that is not built or
cannot run here is skipped with its reason (``cuda`` without a GPU, ``triton`` without Triton).

Rules (conventions): float32 runs match the float64 reference within ``TOL[float32]``, except that
on a GPU the CUDA module is held to the relative rule in every dtype, as its tests always were.
bfloat16 / float16 runs (GPU; bfloat16 on the CPU for the ``low`` cases) follow the relative rule:
the kernel's max error against the float64 reference is at most 2x that of the PyTorch reference
run in the same dtype on the same device, plus the backend's floor (``REL_FLOOR``).  The Triton
kernels run on CPU tensors under TRITON_INTERPRET=1 (set here, before solar_kernels is imported).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import solar  # noqa: E402
from solar.ops import registry  # noqa: E402

from common import (GCL_SHAPES, LOSS_SHAPES, MASK_CASES, MPI_SHAPES, NEG_SHAPES,  # noqa: E402
                    POOL_SHAPES, SCALES, TEMPERATURES, TOL, assert_close, embeddings, generator,
                    mpi_masks, noncontiguous, pool_inputs)

KERNEL_BACKENDS = ("cpu", "cuda", "triton")
F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
GPU = torch.cuda.is_available()

# Floors of the relative rule, as each backend's tests had them (max_ref: max |reference|).
REL_FLOOR = {
    "cpu": lambda max_ref, dtype: 1e-3 * max(max_ref, 1e-3),
    "cuda": lambda max_ref, dtype: 1e-6 * max(max_ref, 1.0),
    "triton": lambda max_ref, dtype: TOL[dtype]["atol"],
}
RELATIVE_FP32_ON_GPU = {"cuda"}


def device_of(backend: str) -> str:
    return "cpu" if backend == "cpu" else ("cuda" if GPU else "cpu")


# --------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    op: str
    id: str
    inputs: Callable[[], list]   # float64 CPU tensors; bool masks and None pass through as they are
    names: tuple                 # the name of each input, for messages
    call: Callable               # call(backend, *inputs) -> output, through the public facade
    gpu_only: bool = False       # sizes that only make sense on a GPU
    low: bool = False            # also checked in bfloat16 on the CPU
    normwise: bool = False       # gradients compared norm-wise (see the case)
    seed: int = 0
    tags: dict = field(default_factory=dict)

    def __str__(self):
        return f"{self.op}-{self.id}"


def _s(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=F64)


def _shape_id(shape) -> str:
    return "x".join(map(str, shape))


def _pool_cases():
    def call(normalize, strided):
        def run(backend, x, w):
            if strided:  # same values, other strides: x permuted in memory, w with stride 2
                x = x.transpose(1, 2).contiguous().transpose(1, 2)
                w = torch.stack([w, w], dim=-1)[..., 0]
            return solar.masked_pool(x, w, normalize, backend=backend)
        return run

    for shape in POOL_SHAPES + [(64, 577, 768)]:
        for case in MASK_CASES:
            for normalize in (True, False):
                yield Case("masked_pool", f"{_shape_id(shape)}-{case}-{'norm' if normalize else 'mean'}",
                           lambda shape=shape, case=case: list(pool_inputs(*shape, case=case,
                                                                           seed=sum(shape))),
                           ("x", "weights"), call(normalize, case == "noncontiguous"),
                           gpu_only=shape == (64, 577, 768),
                           low=case == "soft" and normalize and shape in ((3, 97, 131), (5, 16, 64)))


def _contrastive(symmetric, strided=False):
    def run(backend, a, b, scale, bias=None, neg=None):
        if strided:
            a, b = noncontiguous(a), b.t().contiguous().t()
        return solar.contrastive_loss(a, b, scale, bias, neg, symmetric, backend=backend)
    return run


def _contrastive_cases():
    for (B, D) in LOSS_SHAPES + [(1000, 768), (257, 384)]:
        for scale in SCALES:
            for symmetric in (True, False):
                yield Case("contrastive_loss", f"{B}x{D}-s{scale:g}-{'sym' if symmetric else 'a2b'}",
                           lambda B=B, D=D, scale=scale: [embeddings(B, D, seed=1, duplicate=True),
                                                          embeddings(B, D, seed=2), _s(scale)],
                           ("a", "b", "logit_scale"), _contrastive(symmetric),
                           gpu_only=B >= 257, low=(B, D) == (65, 129) and scale == SCALES[1]
                           and symmetric)
    for (B, D, K) in NEG_SHAPES + [(300, 256, 200)]:
        for scale in SCALES:
            for symmetric in (True, False):
                yield Case("contrastive_loss", f"{B}x{D}-neg{K}-bias-s{scale:g}-"
                           f"{'sym' if symmetric else 'a2b'}",
                           lambda B=B, D=D, K=K, scale=scale: [
                               embeddings(B, D, seed=3), embeddings(B, D, seed=4, duplicate=True),
                               _s(scale), _s(-0.7), embeddings(K, D, seed=5)],
                           ("a", "b", "logit_scale", "logit_bias", "extra_negatives"),
                           _contrastive(symmetric), gpu_only=B >= 257)
    for symmetric in (True, False):
        yield Case("contrastive_loss", f"noncontiguous-duplicates-neg-{'sym' if symmetric else 'a2b'}",
                   lambda: [embeddings(33, 40, seed=6, duplicate=True),
                            embeddings(33, 40, seed=7, duplicate=True), _s(14.285714), None,
                            embeddings(5, 40, seed=8)],
                   ("a", "b", "logit_scale", "logit_bias", "extra_negatives"),
                   _contrastive(symmetric, True))
    # Unnormalized embeddings at scale 100 give logits near 800: no overflow, loss within TOL.  The
    # gradients are compared norm-wise (max error <= rtol * max |ref|): the column direction uses
    # the forward's fp32 log-sum-exp, whose rounding at |lse| ~ 800 (ulp 6e-5) scales every
    # probability of a column alike, so tiny entries carry that absolute error.
    yield Case("contrastive_loss", "unnormalized-logits-800",
               lambda: [embeddings(33, 17, seed=8, normalize=False),
                        embeddings(33, 17, seed=9, normalize=False), _s(100.0)],
               ("a", "b", "logit_scale"), _contrastive(True), normwise=True)


def _gcl_cases():
    def run(backend, ei, et, ef, scale):
        return solar.gcl_loss(ei, et, ef, scale, backend=backend)

    def run_strided(backend, ei, et, ef, scale):
        return solar.gcl_loss(noncontiguous(ei), et, ef, scale, backend=backend)

    for (B, D) in GCL_SHAPES + [(300, 384)]:
        for scale in SCALES:
            yield Case("gcl_loss", f"{B}x{D}-s{scale:g}",
                       lambda B=B, D=D, scale=scale: [
                           *(embeddings(B, D, seed=20 + k, duplicate=(k == 0)) for k in range(3)),
                           _s(scale)],
                       ("e_image", "e_text", "e_fused", "logit_scale"), run, gpu_only=B >= 300,
                       low=(B, D) == (17, 33) and scale == SCALES[1])
    yield Case("gcl_loss", "noncontiguous",
               lambda: [*(embeddings(13, 21, seed=k) for k in range(3)), _s(7.0)],
               ("e_image", "e_text", "e_fused", "logit_scale"), run_strided)


MPI_NAMES = ("anchors", "candidates", "positives", "valid", "temperature")


def _mpi(backend, anchors, cand, pos, valid, temperature):
    return solar.multi_positive_infonce(anchors, cand, pos, valid, temperature, backend=backend)


def _mpi_cases():
    for (B, N, D) in MPI_SHAPES:
        for t in TEMPERATURES:
            for valid_2d in (True, False):
                yield Case("multi_positive_infonce",
                           f"{B}x{N}x{D}-t{t:g}-valid{'2d' if valid_2d else '1d'}",
                           lambda B=B, N=N, D=D, t=t, v=valid_2d: [
                               embeddings(B, D, seed=30), embeddings(N, D, seed=31, duplicate=True),
                               *mpi_masks(B, N, B + N, v), _s(t)],
                           MPI_NAMES, _mpi,
                           low=(B, N, D) == (17, 40, 33) and t == 0.07 and valid_2d)

    def with_columns():
        B, D = 9, 24
        anchors = embeddings(B, D, seed=3)
        cols = solar.build_columns(anchors, embeddings(B * 2, D, seed=4).reshape(B, 2, D),
                                   embeddings(B, D, seed=6).reshape(B, 1, D),
                                   embeddings(B * 3, D, seed=5).reshape(B, 3, D))
        return [anchors, cols.candidates, cols.positives, cols.valid, _s(0.05)]

    yield Case("multi_positive_infonce", "build_columns", with_columns, MPI_NAMES, _mpi)


CASES = [*_pool_cases(), *_contrastive_cases(), *_gcl_cases(), *_mpi_cases()]
# Low precision: every case on a GPU, the 'low' ones (bfloat16) on the CPU.
LOW_CASES = CASES if GPU else [c for c in CASES if c.low]


# --------------------------------------------------------------------------------- running
def _leaves(inputs, dtype, device):
    """Fresh leaves: floating tensors in ``dtype`` (0-dim scalars in float32 unless dtype is
    float64) requiring grad; masks as they are."""
    out = []
    for t in inputs:
        if t is None or not t.is_floating_point():
            out.append(None if t is None else t.to(device))
            continue
        d = dtype if (t.dim() > 0 or dtype == F64) else F32
        out.append(t.detach().to(device=device, dtype=d).clone().requires_grad_())
    return out


def _grad_names(case: Case, inputs) -> list:
    return [n for n, t in zip(case.names, inputs) if t is not None and t.is_floating_point()]


def _run(case: Case, backend: str, inputs, dtype, device):
    """[output, gradient of <output, g> for every floating input], g random with a fixed seed."""
    xs = _leaves(inputs, dtype, device)
    out = case.call(backend, *xs)
    g = torch.randn(out.shape, generator=generator(case.seed), dtype=F64).to(out)
    grads = torch.autograd.grad((out * g).sum(), [x for x in xs if x is not None and x.requires_grad])
    return [out.detach(), *grads]


def _skip_unless_runs(backend: str, op: str, case: Optional[Case] = None) -> str:
    built, why = registry.backend_status(backend, op)
    if not built or why:
        pytest.skip(f"backend {backend!r}: {why}")
    device = device_of(backend)
    if case is not None and case.gpu_only and device != "cuda":
        pytest.skip("GPU-size case")
    return device


@pytest.fixture(autouse=True)
def _cpu_chunks():
    """The CPU losses in chunks of 4 rows: every loss shape above crosses several chunks."""
    from solar.ops import _native
    _native.CPU_CHUNK_ROWS = 4
    yield
    _native.CPU_CHUNK_ROWS = 0


def _relative_rule(case, backend, inputs, dtype, device):
    got = _run(case, backend, inputs, dtype, device)
    low = _run(case, "torch", inputs, dtype, device)
    ref = _run(case, "torch", inputs, F64, "cpu")
    assert len(got) == len(low) == len(ref) == len(_grad_names(case, inputs)) + 1
    for name, k, t, r in zip(("output", *_grad_names(case, inputs)), got, low, ref):
        assert torch.isfinite(k).all(), f"{name} ({dtype}): non-finite values"
        err_k = (k.double().cpu() - r).abs().max().item()
        err_t = (t.double().cpu() - r).abs().max().item()
        floor = REL_FLOOR.get(backend, REL_FLOOR["cuda"])(r.abs().max().item(), dtype)
        assert err_k <= 2 * err_t + floor, \
            f"{name} ({dtype}): kernel error {err_k:.3g} > 2 x torch's {err_t:.3g} + {floor:.3g}"


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_matches_reference(backend, case):
    """float32 output and every gradient against the float64 reference."""
    device = _skip_unless_runs(backend, case.op, case)
    inputs = case.inputs()
    if device == "cuda" and backend in RELATIVE_FP32_ON_GPU:
        return _relative_rule(case, backend, inputs, F32, device)
    got = _run(case, backend, inputs, F32, device)
    ref = _run(case, "torch", inputs, F64, "cpu")
    names = _grad_names(case, inputs)
    assert len(got) == len(ref) == len(names) + 1
    assert_close(got[0], ref[0], F32, "output")
    for name, g, r in zip(names, got[1:], ref[1:]):
        if case.normwise:
            err = (g.double().cpu() - r).abs().max().item()
            assert err <= TOL[F32]["rtol"] * r.abs().max().item(), f"d{name}: max error {err}"
        else:
            assert_close(g, r, F32, f"d{name}")


@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
@pytest.mark.parametrize("case", LOW_CASES, ids=str)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_low_precision_relative_rule(backend, case, dtype):
    device = _skip_unless_runs(backend, case.op, case)
    if device == "cpu" and (dtype != BF16 or backend == "triton"):
        pytest.skip("on the CPU: bfloat16 only, and not under the Triton interpreter")
    reason = registry.get_impl(case.op, backend).supports(torch.empty(1, dtype=dtype,
                                                                      device=device))
    if reason:
        pytest.skip(reason)
    _relative_rule(case, backend, case.inputs(), dtype, device)


# --------------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_all_masked_row_is_exactly_zero(backend):
    device = _skip_unless_runs(backend, "masked_pool")
    x, w = pool_inputs(3, 20, 40, dtype=F32, case="all_masked_row", device=device)
    x.requires_grad_()
    w.requires_grad_()
    y = solar.masked_pool(x, w, backend=backend)
    (y.sum() + (y ** 2).sum()).backward()
    assert torch.all(y[0] == 0)
    assert torch.all(x.grad[0] == 0) and torch.all(w.grad[0] == 0)
    assert torch.any(x.grad[1] != 0)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_saved_statistics(backend):
    """The forward's statistics (what backward relies on) are what the op table says."""
    device = _skip_unless_runs(backend, "masked_pool")
    x, w = pool_inputs(2, 9, 17, dtype=F32, device=device)
    y, stats = registry.get_impl("masked_pool", backend).forward(x, w, True, 1e-12)
    mean = solar.masked_pool_reference(x.double(), w.double(), normalize=False)
    assert_close(stats[:, 0], w.double().sum(1), F32, "stats[:, 0] = sum w")
    assert_close(stats[:, 1], mean.norm(dim=1), F32, "stats[:, 1] = ||mean||")
    a, b = embeddings(13, 21, dtype=F32, device=device), embeddings(13, 21, seed=1, dtype=F32,
                                                                    device=device)
    s = torch.tensor(10.0, device=device)
    loss, lse_row, lse_col = registry.get_impl("contrastive_loss", backend).forward(
        a, b, s, None, None, True)
    assert_close(lse_row, torch.logsumexp(10.0 * a.double() @ b.double().T, 1), F32, "lse_row")
    assert_close(lse_col, torch.logsumexp(10.0 * b.double() @ a.double().T, 1), F32, "lse_col")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gradients_keep_the_input_layout(backend):
    """Gradients come back like torch.empty_like of their input (what the fake impls promise)."""
    device = _skip_unless_runs(backend, "masked_pool")
    x, w = pool_inputs(3, 97, 131, dtype=F32, case="noncontiguous", device=device)
    x.requires_grad_()
    y = solar.masked_pool(x, w, backend=backend)
    (dx,) = torch.autograd.grad(y.sum(), [x])
    assert dx.stride() == torch.empty_like(x).stride()
    x_ref = x.detach().double().cpu().requires_grad_()
    (dx_ref,) = torch.autograd.grad(solar.masked_pool_reference(x_ref, w.double().cpu()).sum(),
                                    [x_ref])
    assert_close(dx, dx_ref, F32, "dx")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_torch_compile_through_the_facade(backend):
    device = _skip_unless_runs(backend, "contrastive_loss")
    x, w = pool_inputs(5, 9, 16, dtype=F32, case="bool", device=device)
    b = embeddings(5, 16, seed=51, dtype=F32, device=device)

    def step(x_, w_, b_, scale):
        e = solar.masked_pool(x_, w_, backend=backend)
        return (solar.contrastive_loss(e, b_, scale, backend=backend)
                + solar.gcl_loss(e, b_, e, scale, backend=backend))

    interpreted = backend == "triton" and device == "cpu"
    compiled = torch.compile(step, fullgraph=True,
                             backend="aot_eager" if interpreted else "inductor")
    inputs = _leaves([x, w.to(F64), b, torch.tensor(10.0)], F32, device)
    out = compiled(*inputs)
    grads = torch.autograd.grad(out, inputs)
    refs = _leaves(inputs, F64, "cpu")
    e = solar.masked_pool_reference(refs[0], refs[1])
    ref = (solar.contrastive_loss_reference(e, refs[2], refs[3])
           + solar.gcl_loss_reference(e, refs[2], e, refs[3]))
    ref_grads = torch.autograd.grad(ref, refs)
    assert_close(out, ref, F32, "loss")
    for name, g, r in zip("xwbs", grads, ref_grads):
        assert_close(g, r, F32, f"d{name}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_float64_runs_or_falls_back(backend):
    """A backend that refuses float64 says so; ``auto`` then runs the torch reference."""
    device = _skip_unless_runs(backend, "contrastive_loss")
    a = embeddings(4, 8, device=device)
    if registry.get_impl("contrastive_loss", backend).supports(a, a) is None:
        pytest.skip(f"backend {backend!r} runs float64")
    with pytest.raises(solar.BackendUnavailable, match="float64"):
        solar.contrastive_loss(a, a, 10.0, backend=backend)
    assert registry.resolve("contrastive_loss", "auto", a, a, None) == "torch"


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_runs_on_the_current_stream(backend):
    device = _skip_unless_runs(backend, "contrastive_loss")
    if device != "cuda":
        pytest.skip("needs a CUDA device")
    a, b = (embeddings(128, 64, seed=k, dtype=BF16, device="cuda") for k in (0, 1))
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        loss = solar.contrastive_loss(a, b, 10.0, backend=backend)
    side.synchronize()
    ref = solar.contrastive_loss(a.double(), b.double(), 10.0, backend="torch")
    assert abs(loss.item() - ref.item()) < 5e-2 * max(1.0, abs(ref.item()))
