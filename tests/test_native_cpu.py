"""The csrc CPU module beyond the conformance test (tests/test_ops_conformance.py): its ISA builds,
threads and chunks, reusable scratch memory, dispatch, and the checks of its bound functions.
"""
from __future__ import annotations

import pytest
import torch

import solar
import solar.ops
from solar.ops import _native

from common import assert_close, embeddings, generator, mpi_masks, pool_inputs

pytestmark = pytest.mark.skipif(not _native.CPU_BUILT,
                                reason=f"solar._csrc_cpu is not built ({_native.cpu_error})")

F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16


@pytest.fixture
def chunk_rows():
    """Set the CPU losses' chunk size for one test (0 restores the heuristic)."""
    def set_rows(n: int):
        _native.CPU_CHUNK_ROWS = n
    yield set_rows
    _native.CPU_CHUNK_ROWS = 0


def _leaves(*ts, dtype):
    return [None if t is None else t.detach().to(dtype).clone().requires_grad_() for t in ts]


def _run(fn, inputs, seed=0):
    """fn(*inputs) and the gradients of <out, g> w.r.t. every input (g random, fixed by seed)."""
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=generator(seed), dtype=F64).to(out.dtype)
    grads = torch.autograd.grad((out * g).sum(), [t for t in inputs if t is not None])
    return out, grads


def _compare(fn_kernel, fn_ref, inputs64, names, dtype=F32):
    out, grads = _run(fn_kernel, _leaves(*inputs64, dtype=dtype))
    ref, ref_grads = _run(fn_ref, _leaves(*inputs64, dtype=F64))
    assert_close(out, ref, dtype, "output")
    present = [n for n, t in zip(names, inputs64) if t is not None]
    for name, g, r in zip(present, grads, ref_grads):
        assert_close(g, r, dtype, f"d{name}")


def _cl(backend, symmetric):
    def fn(a, b, scale, bias=None, neg=None):
        return solar.contrastive_loss(a, b, scale, bias, neg, symmetric, backend=backend)
    return fn


def _gcl(backend):
    return lambda i, t, f, s: solar.gcl_loss(i, t, f, s, backend=backend)


# ----------------------------------------------------------------------------------- ISA builds
def test_every_isa_build_agrees():
    """The avx512 / avx2 / generic builds each match the reference (those this CPU runs).

    Column counts (44, 111, 53) are not multiples of any vector width, so every loss kernel runs
    both its whole-vector loop and its scalar tail.
    """
    mod = _native.cpu_module
    isas = mod.build_info()["runnable_isas"]
    a, b = embeddings(37, 45, seed=40), embeddings(37, 45, seed=41)
    neg = embeddings(7, 45, seed=42)
    x, w = pool_inputs(3, 19, 45, dtype=F64)
    e = [embeddings(37, 45, seed=43 + k) for k in range(3)]
    c = embeddings(53, 45, seed=46)
    pos, valid = mpi_masks(37, 53, 47, valid_2d=True)
    s = torch.tensor(14.285714, dtype=F64)

    def mpi(backend):
        return lambda a_, c_, t_: solar.multi_positive_infonce(a_, c_, pos, valid, t_,
                                                               backend=backend)
    try:
        for isa in isas:
            assert mod.select_isa(isa) == isa
            _compare(_cl("cpu", True), _cl("torch", True), [a, b, s, None, neg], "asbln")
            _compare(_gcl("cpu"), _gcl("torch"), [*e, s], "itfs")
            _compare(mpi("cpu"), mpi("torch"), [a, c, torch.tensor(0.07, dtype=F64)], "act")
            _compare(lambda x_, w_: solar.masked_pool(x_, w_, backend="cpu"),
                     solar.masked_pool_reference, [x, w], "xw")
    finally:
        mod.select_isa("auto")


# ----------------------------------------------------------------------------------- threads
# Shapes with M*N*D above 2**21, so the losses run on two threads (the module gives each thread
# one multiply-add per 2**20), each over its own chunks with its own dC and column statistics.
THREADED = pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs 2 torch threads")


@THREADED
@pytest.mark.parametrize("rows", [0, 7])
def test_losses_on_two_threads_match_reference(rows, chunk_rows):
    chunk_rows(rows)
    s = torch.tensor(14.285714, dtype=F64)
    a, b = embeddings(131, 129, seed=50), embeddings(131, 129, seed=51, duplicate=True)
    neg = embeddings(9, 129, seed=52)
    _compare(_cl("cpu", True), _cl("torch", True), [a, b, s, None, neg], "asbln")
    e = [embeddings(51, 97, seed=53 + k) for k in range(3)]
    _compare(_gcl("cpu"), _gcl("torch"), [*e, s], "itfs")
    c = embeddings(173, 129, seed=56)
    pos, valid = mpi_masks(131, 173, 57, valid_2d=False)
    _compare(lambda a_, c_, t_: solar.multi_positive_infonce(a_, c_, pos, valid, t_,
                                                             backend="cpu"),
             lambda a_, c_, t_: solar.multi_positive_infonce(a_, c_, pos, valid, t_,
                                                             backend="torch"),
             [a, c, torch.tensor(0.07, dtype=F64)], "act")


@THREADED
def test_threaded_losses_are_deterministic(chunk_rows):
    """Same inputs, same thread count: bitwise the same loss and gradients."""
    chunk_rows(5)
    a, b = embeddings(131, 129, seed=58, dtype=F32), embeddings(131, 129, seed=59, dtype=F32)

    def once():
        a_, b_ = a.clone().requires_grad_(), b.clone().requires_grad_()
        scale = torch.tensor(14.285714, requires_grad=True)
        loss = solar.contrastive_loss(a_, b_, scale, backend="cpu")
        loss.backward()
        return [loss.detach(), a_.grad, b_.grad, scale.grad]

    first = once()
    for _ in range(3):
        for x, y in zip(first, once()):
            assert torch.equal(x, y)


def test_workspace_is_reused_and_released():
    mod = _native.cpu_module
    mod.release_workspace()
    assert mod.workspace_bytes() == 0
    a, b = embeddings(40, 64, seed=60, dtype=F32), embeddings(40, 64, seed=61, dtype=F32)
    a.requires_grad_()
    solar.contrastive_loss(a, b, 10.0, backend="cpu").backward()
    held = mod.workspace_bytes()
    assert held >= 2 * 40 * 64 * 4  # at least the packed a and b
    first = a.grad.clone()
    a.grad = None
    solar.contrastive_loss(a, b, 10.0, backend="cpu").backward()
    assert mod.workspace_bytes() == held  # same sizes: no new buffers
    assert torch.equal(a.grad, first)
    mod.release_workspace()
    assert mod.workspace_bytes() == 0


# ----------------------------------------------------------------------------------- dispatch
def test_auto_picks_cpu_and_falls_back_for_float64():
    a = torch.randn(4, 8)
    assert solar.ops.resolve("masked_pool", "auto", a[:, None, :], a[:, :1], None) == "cpu"
    assert solar.ops.resolve("contrastive_loss", "auto", a, a, None) == "cpu"
    assert solar.ops.resolve("gcl_loss", "auto", a, a, a) == "cpu"
    assert solar.ops.resolve("contrastive_loss", "cpu", a, a, None) == "cpu"
    assert solar.ops.resolve("contrastive_loss", "auto", a.double(), a.double(), None) == "torch"
    with pytest.raises(solar.ops.BackendUnavailable, match="float64"):
        solar.contrastive_loss(a.double(), a.double(), 10.0, backend="cpu")


# ----------------------------------------------------------------------------------- bad arguments
def _pool_args(B=2, L=3, D=4):
    x, w = torch.randn(B, L, D), torch.rand(B, L)
    return dict(x=x, w=w, y=torch.empty(B, D), stats=torch.empty(B, 2))


def _call_pool(**tensors):
    A = _native._arg
    return _native.cpu_module.masked_pool_fwd(A(tensors["x"]), A(tensors["w"]), A(tensors["y"]),
                                              A(tensors["stats"]), True, 1e-12, 0)


@pytest.mark.parametrize("name,bad,exc,match", [
    ("x", torch.randn(2, 3, 4, dtype=F64), TypeError, "argument 'x': dtype"),
    ("x", torch.randn(2, 3), ValueError, "argument 'x': must have 3 dimensions"),
    ("x", torch.randn(2, 4, 3).transpose(1, 2), ValueError, "argument 'x': last dimension"),
    ("w", torch.rand(2, 5), ValueError, "argument 'w': size 5 along dim 1"),
    ("w", torch.rand(2, 3).bfloat16(), TypeError, "argument 'w': dtype must be float32"),
    ("y", torch.empty(2, 4, dtype=BF16), TypeError, "argument 'y': dtype bfloat16 differs"),
    ("y", torch.empty(4, 2).t(), ValueError, "argument 'y': must be contiguous"),
    ("stats", torch.empty(2, 3), ValueError, "argument 'stats': size 3"),
])
def test_bad_pool_arguments_name_the_argument(name, bad, exc, match):
    args = _pool_args()
    args[name] = bad
    with pytest.raises(exc, match=match):
        _call_pool(**args)


def test_bad_descriptions_name_the_argument():
    mod, A = _native.cpu_module, _native._arg
    args = _pool_args()
    y, st = A(args["y"]), A(args["stats"])
    null_x = (0, "float32", "cpu", -1, (2, 3, 4), (12, 4, 1))
    with pytest.raises(ValueError, match="argument 'x': null data pointer"):
        mod.masked_pool_fwd(null_x, A(args["w"]), y, st, True, 1e-12, 0)
    with pytest.raises(TypeError, match="argument 'w': expected a tensor description"):
        mod.masked_pool_fwd(A(args["x"]), args["w"], y, st, True, 1e-12, 0)
    cuda_x = A(args["x"])[:2] + ("cuda", 0) + A(args["x"])[4:]
    with pytest.raises(ValueError, match="argument 'x': must be a cpu tensor"):
        mod.masked_pool_fwd(cuda_x, A(args["w"]), y, st, True, 1e-12, 0)
    with pytest.raises(ValueError, match="argument 'eps'"):
        mod.masked_pool_fwd(A(args["x"]), A(args["w"]), y, st, True, -1.0, 0)
    with pytest.raises(ValueError, match="argument 'stream': must be 0"):
        mod.masked_pool_fwd(A(args["x"]), A(args["w"]), y, st, True, 1e-12, 7)


def test_bad_loss_arguments_name_the_argument():
    mod, A = _native.cpu_module, _native._arg
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    loss, lse, lse_c = torch.empty(()), torch.empty(5), torch.empty(5)
    scale, nan, f64 = torch.tensor(10.0), torch.tensor(float("nan")), torch.tensor(1.0).double()
    ok = dict(a=A(a), b=A(b), neg=None, scale=A(scale), bias=None, loss=A(loss), lse_row=A(lse),
              lse_col=A(lse_c), workspace=A(torch.empty(0)), symmetric=True, stream=0)
    mod.contrastive_fwd(**ok)
    cases = [
        (dict(b=A(torch.randn(4, 8))), ValueError, "argument 'b': size 4 along dim 0"),
        (dict(b=A(b.bfloat16())), TypeError, "argument 'b': dtype bfloat16 differs"),
        (dict(neg=A(torch.randn(3, 7))), ValueError, "argument 'neg': size 7 along dim 1"),
        (dict(lse_col=A(torch.empty(0))), ValueError, "argument 'lse_col': size 0"),
        (dict(loss=A(torch.empty(1))), ValueError, "argument 'loss': must have 0 dimensions"),
        (dict(scale=A(nan)), ValueError, "argument 'scale': must be finite"),
        (dict(scale=A(f64)), TypeError, "argument 'scale': dtype must be float32"),
        (dict(bias=A(torch.ones(1))), ValueError, "argument 'bias': must have 0 dimensions"),
        (dict(a=A(torch.randn(0, 8))), ValueError, "argument 'a': must not be empty"),
        (dict(workspace=A(torch.empty(3))), ValueError, "argument 'workspace': size 3"),
        (dict(stream=1), ValueError, "argument 'stream'"),
    ]
    for change, exc, match in cases:
        with pytest.raises(exc, match=match):
            mod.contrastive_fwd(**{**ok, **change})
    with pytest.raises(ValueError, match="argument 'chunk_rows'"):
        mod.set_chunk_rows(-1)
    pos = torch.ones(5, 6, dtype=torch.bool)
    with pytest.raises(TypeError, match="argument 'valid': dtype must be bool or uint8"):
        mod.mpi_fwd(A(a), A(torch.randn(6, 8)), A(pos), A(pos.float()), A(scale), A(loss),
                    A(lse), A(torch.empty(5)), 0)
    one, zero = torch.tensor(1.0), torch.zeros(())  # referenced: the module reads their values
    ei, s0 = A(a), A(zero)
    with pytest.raises(ValueError, match="argument 'def': size 4"):
        mod.gcl_bwd(ei, ei, ei, A(scale), A(one), A(torch.empty(15)), ei, ei,
                    A(torch.empty(4, 8)), s0, 0)
    with pytest.raises(TypeError, match="argument 'dei': dtype must be float32"):
        mod.gcl_bwd(ei, ei, ei, A(scale), A(one), A(torch.empty(15)),
                    A(torch.empty(5, 8, dtype=torch.bfloat16)), ei, ei, s0, 0)
