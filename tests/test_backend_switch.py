"""The backend switch, the torch.library plumbing and torch.compile tracing.

The custom-op plumbing is exercised with a kernel backend written here in plain torch (explicit
forward/backward formulas), so it is tested whether or not a compiled backend exists."""
import subprocess
import sys

import pytest
import torch

import solar
from solar.ops import registry
from common import assert_close, embeddings, pool_inputs


def _mp_forward(x, w, normalize, eps):
    w = w.to(x.dtype)
    s = w.sum(1)
    v = torch.einsum("bl,bld->bd", w, x)
    mean = torch.where(s[:, None] > 0, v / s.clamp_min(1e-30)[:, None], torch.zeros_like(v))
    n = mean.norm(dim=1)
    y = mean / n.clamp_min(eps)[:, None] if normalize else mean
    return y, torch.stack([s, n if normalize else torch.zeros_like(n)], 1)


def _mp_backward(dy, x, w, normalize, eps, y, stats, needs):
    need_dw = needs[1]
    s, n = stats[:, 0].to(x.dtype), stats[:, 1].to(x.dtype)
    if normalize:
        dmean = (dy - y * (y * dy).sum(1, keepdim=True)) / n.clamp_min(eps)[:, None]
        mean = y * n[:, None]
    else:
        dmean, mean = dy, y
    dv = torch.where(s[:, None] > 0, dmean / s.clamp_min(1e-30)[:, None], torch.zeros_like(dmean))
    dx = w.to(x.dtype)[:, :, None] * dv[:, None, :]
    dw = (torch.einsum("bld,bd->bl", x, dv) - (mean * dv).sum(1, keepdim=True)).to(w.dtype) \
        if need_dw else None
    return dx, dw


@pytest.fixture
def plain_torch_kernel(monkeypatch):
    impl = registry.KernelImpl(_mp_forward, _mp_backward)
    monkeypatch.setitem(registry._IMPLS, ("masked_pool", "cpu"), impl)
    return impl


def test_custom_op_path_matches_reference(plain_torch_kernel):
    for case in ("soft", "all_masked_row", "noncontiguous"):
        x, w = pool_inputs(3, 11, 6, case=case)
        x.requires_grad_(True)
        w.requires_grad_(True)
        y = solar.masked_pool(x, w, backend="cpu")
        g = torch.randn_like(y)
        dx, dw = torch.autograd.grad((y * g).sum(), (x, w))
        x2, w2 = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
        y2 = solar.masked_pool_reference(x2, w2)
        dx2, dw2 = torch.autograd.grad((y2 * g).sum(), (x2, w2))
        for got, exp, what in ((y, y2, "y"), (dx, dx2, "dx"), (dw, dw2, "dw")):
            assert_close(got, exp, torch.float64, f"{case} {what}")


def test_torch_compile_traces_custom_op(plain_torch_kernel):
    x, w = pool_inputs(2, 5, 4, dtype=torch.float32)
    fn = torch.compile(lambda x, w: solar.masked_pool(x, w, backend="cpu") * 2, fullgraph=True,
                       backend="aot_eager")
    assert_close(fn(x, w), 2 * solar.masked_pool_reference(x, w), torch.float32, "compiled")


def test_torch_compile_reference_backend():
    a, b = embeddings(5, 8, dtype=torch.float32), embeddings(5, 8, dtype=torch.float32, seed=1)
    fn = torch.compile(lambda a, b: solar.contrastive_loss(a, b, 10.0, backend="torch"),
                       fullgraph=True, backend="aot_eager")
    assert_close(fn(a, b), solar.contrastive_loss_reference(a, b, 10.0), torch.float32, "loss")


def test_env_variable_selects_backend(monkeypatch):
    monkeypatch.setenv("SOLAR_BACKEND", "torch")
    assert registry.resolve("masked_pool", None, torch.zeros(1)) == "torch"
    monkeypatch.setenv("SOLAR_BACKEND", "nope")
    with pytest.raises(ValueError, match="SOLAR_BACKEND"):
        registry.resolve("masked_pool", None, torch.zeros(1))


def test_unavailable_backend_lists_alternatives(monkeypatch):
    monkeypatch.setitem(registry._IMPLS, ("gcl_loss", "cuda"), registry.KernelImpl(
        None, None, can_run=lambda: "no CUDA device"))
    a = embeddings(3, 4)
    with pytest.raises(solar.BackendUnavailable, match="no CUDA device.*Available.*torch"):
        solar.gcl_loss(a, a, a, 1.0, backend="cuda")


def test_auto_skips_backends_that_cannot_run(monkeypatch):
    monkeypatch.setitem(registry._IMPLS, ("masked_pool", "cpu"), registry.KernelImpl(
        None, None, supports=lambda *t: "float64 not supported"))
    x, w = pool_inputs(2, 3, 4)
    assert registry.resolve("masked_pool", "auto", x, w) == "torch"
    assert_close(solar.masked_pool(x, w), solar.masked_pool_reference(x, w), torch.float64, "auto")


def test_import_solar_is_light():
    code = ("import sys, solar; heavy = [m for m in ('triton', 'pymilvus', 'transformers', "
            "'solar_kernels', 'solar._csrc_cpu', 'solar._csrc_cuda', 'milvus_lite') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, f"import solar loaded {out.stdout.strip()} {out.stderr[-500:]}"


def test_kernels_package_imports_nothing_from_solar():
    """solar_kernels is a leaf: the triton backend's table (solar/ops/_triton.py) imports it."""
    pytest.importorskip("triton", reason="triton is not installed")
    code = ("import sys, solar_kernels; "
            "bad = [m for m in sys.modules if m == 'solar' or m.startswith('solar.')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, f"solar_kernels imported {out.stdout.strip()} {out.stderr[-500:]}"
