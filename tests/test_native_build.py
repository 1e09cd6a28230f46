"""The compiled csrc modules: built, importable, self-describing, and strict about arguments.

The CUDA module's argument checks run before any launch, so they are tested here without a GPU.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import solar.ops as ops
from solar.ops import _native

NVCC = shutil.which("nvcc") or (os.environ.get("CUDA_HOME") and
                                 shutil.which("nvcc", path=os.path.join(os.environ["CUDA_HOME"], "bin")))
SKIPPED_BY_ENV = os.environ.get("SOLAR_SKIP_CUDA") or os.environ.get("SOLAR_SKIP_NATIVE")

needs_cpu = pytest.mark.skipif(not _native.CPU_BUILT,
                               reason=f"solar._csrc_cpu is not built ({_native.cpu_error})")
needs_cuda_module = pytest.mark.skipif(
    not _native.CUDA_BUILT, reason=f"solar._csrc_cuda is not built ({_native.cuda_error})")


@needs_cpu
def test_cpu_module_build_info():
    info = _native.cpu_module.build_info()
    assert info["isa"] in info["runnable_isas"] and "generic" in info["runnable_isas"]
    assert info["threads"] >= 1 and isinstance(info["openmp"], bool)
    assert ops.backend_status("cpu", "contrastive_loss") == (True, None)


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None,
                    reason="needs cmake and a C++ compiler")
def test_build_without_the_cuda_module_succeeds(tmp_path):
    """A machine without nvcc (or SOLAR_SKIP_CUDA=1) builds the CPU module and skips the CUDA one
    with a warning: the skipped module is neither copied nor listed, so an in-place or editable
    install does not fail on its missing file."""
    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=root, capture_output=True, text=True)
    if files.returncode != 0:
        pytest.skip("not a git checkout")
    for rel in files.stdout.split():
        if not (root / rel).is_file():
            continue  # tracked but deleted in the working tree
        if rel.startswith(("csrc/", "solar/")) or rel in ("setup.py", "CMakeLists.txt",
                                                          "pyproject.toml", "README.md"):
            dst = tmp_path / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, dst)
    for pkg in ("kernels/solar_kernels", "milvus_plugin/solar_milvus"):  # package dirs setup.py maps
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    env = dict(os.environ, SOLAR_SKIP_CUDA="1", SOLAR_REQUIRE_NATIVE="1", SOLAR_BUILD_JOBS="2")
    run = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "the CUDA backend is not built" in run.stderr
    built = sorted(p.name.split(".")[0] for p in (tmp_path / "solar").glob("_csrc_*.so"))
    assert built == ["_csrc_cpu"]


@pytest.mark.skipif(not NVCC or bool(SKIPPED_BY_ENV),
                    reason="no nvcc here (or SOLAR_SKIP_CUDA/SOLAR_SKIP_NATIVE set)")
def test_cuda_module_was_built_where_nvcc_exists():
    assert _native.CUDA_BUILT, f"nvcc is at {NVCC} but solar._csrc_cuda failed: {_native.cuda_error}"


@needs_cuda_module
def test_cuda_module_build_info_and_status():
    info = _native.cuda_module.build_info()
    assert {"runtime_version", "driver_version", "device_count", "archs"} <= set(info)
    assert info["runtime_version"] >= 11000 and info["loss_tile"] == 64
    built, why = ops.backend_status("cuda", "contrastive_loss")
    assert built
    if not torch.cuda.is_available():
        assert why is not None and "torch.cuda.is_available()" in why
    B = 100
    row_blocks = -(-B // info["loss_tile"])
    assert _native.cuda_module.contrastive_workspace(B, True) == B + 2 * row_blocks * B
    assert _native.cuda_module.gcl_workspace(B) == 3 * B


def _signatures(module) -> dict:
    """name -> the first line of each bound function's docstring: its pybind11 signature."""
    return {name: getattr(module, name).__doc__.splitlines()[0].replace(name, "", 1)
            for name in dir(module) if not name.startswith("_")
            and callable(getattr(module, name))}


@needs_cpu
@needs_cuda_module
def test_cpu_and_cuda_modules_share_one_binding_signature():
    """csrc/common/bindings.h: the same functions, argument names and types in both modules."""
    cpu, cuda = _signatures(_native.cpu_module), _signatures(_native.cuda_module)
    shared = set(cpu) & set(cuda)
    assert {"masked_pool_fwd", "masked_pool_bwd", "contrastive_fwd", "contrastive_bwd", "gcl_fwd",
            "gcl_bwd", "mpi_fwd", "mpi_bwd", "contrastive_workspace", "gcl_workspace",
            "build_info"} <= shared
    assert set(cuda) == shared, "the CUDA module has functions the CPU module lacks"
    for name in shared:
        assert cpu[name] == cuda[name], f"{name}: cpu {cpu[name]} vs cuda {cuda[name]}"
    assert "stream: " in cpu["mpi_bwd"] and "scale: object" in cpu["contrastive_fwd"]


def _fake_cuda(shape, dtype="float32", ptr=1 << 20, strides=None):
    """A CUDA tensor description (never dereferenced: the checks reject it first)."""
    if strides is None:
        strides, acc = [], 1
        for n in reversed(shape):
            strides.insert(0, acc)
            acc *= n
    return (ptr, dtype, "cuda", 0, tuple(shape), tuple(strides))


@needs_cuda_module
def test_cuda_bad_arguments_name_the_argument():
    mod = _native.cuda_module
    x, w, y, st = _fake_cuda((2, 3, 8)), _fake_cuda((2, 3)), _fake_cuda((2, 8)), _fake_cuda((2, 2))
    cpu_x = _native._arg(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="argument 'x': must be a cuda tensor"):
        mod.masked_pool_fwd(cpu_x, w, y, st, True, 1e-12, 0)
    with pytest.raises(TypeError, match="argument 'x': dtype must be"):
        mod.masked_pool_fwd(_fake_cuda((2, 3, 8), "float64"), w, y, st, True, 1e-12, 0)
    with pytest.raises(ValueError, match="argument 'w': size 4 along dim 1"):
        mod.masked_pool_fwd(x, _fake_cuda((2, 4)), y, st, True, 1e-12, 0)
    with pytest.raises(ValueError, match="argument 'y': must be contiguous"):
        mod.masked_pool_fwd(x, w, _fake_cuda((2, 8), strides=(1, 2)), st, True, 1e-12, 0)
    with pytest.raises(ValueError, match="argument 'x': null data pointer"):
        mod.masked_pool_fwd(_fake_cuda((2, 3, 8), ptr=0), w, y, st, True, 1e-12, 0)
    a, s = _fake_cuda((4, 8), "bfloat16"), _fake_cuda(())
    lse, ws = _fake_cuda((4,)), _fake_cuda((mod.contrastive_workspace(4, True),))
    with pytest.raises(TypeError, match="argument 'b': dtype float16 differs"):
        mod.contrastive_fwd(a, _fake_cuda((4, 8), "float16"), None, s, None, s, lse, lse, ws, True, 0)
    with pytest.raises(ValueError, match="argument 'neg': size 7 along dim 1"):
        mod.contrastive_fwd(a, a, _fake_cuda((2, 7), "bfloat16"), s, None, s, lse, lse, ws, True, 0)
    with pytest.raises(ValueError, match="argument 'workspace': size 1 along dim 0"):
        mod.contrastive_fwd(a, a, None, s, None, s, lse, lse, _fake_cuda((1,)), True, 0)
    with pytest.raises(ValueError, match="argument 'scale': must have 0 dimensions"):
        mod.contrastive_fwd(a, a, None, _fake_cuda((1,)), None, s, lse, lse, ws, True, 0)
    moved = (1 << 20, "bfloat16", "cuda", 1, (4, 8), (8, 1))
    with pytest.raises(ValueError, match="argument 'et': is on device index 1"):
        mod.gcl_fwd(a, moved, a, s, s, _fake_cuda((12,)), _fake_cuda((12,)), 0)
    d, grad = _fake_cuda((4, 8)), _fake_cuda(())
    with pytest.raises(ValueError, match="argument 'det': size 5 along dim 0"):
        mod.gcl_bwd(a, a, a, s, s, _fake_cuda((12,)), d, _fake_cuda((5, 8)), d, grad, 0)
    with pytest.raises(TypeError, match="argument 'dscale': dtype must be float32"):
        mod.contrastive_bwd(a, a, None, s, None, s, lse, lse, d, d, None,
                            _fake_cuda((), "bfloat16"), grad, True, 0)
    pos = _fake_cuda((4, 6), "bool")
    with pytest.raises(ValueError, match="argument 'valid': size 5 along dim 1"):
        mod.mpi_fwd(a, _fake_cuda((6, 8), "bfloat16"), pos, _fake_cuda((4, 5), "bool"), s, s,
                    lse, lse, 0)
    with pytest.raises(TypeError, match="argument 'cand': dtype float32 differs"):
        mod.mpi_bwd(a, _fake_cuda((6, 8)), pos, pos, s, s, lse, lse, d, _fake_cuda((6, 8)), grad,
                    0)
