"""Build orchestration only: metadata lives in pyproject.toml.

The native code in csrc/ is built by CMake into two pybind11 modules:

* ``solar._csrc_cpu``  -- CPU C++ kernels (always built, unless SOLAR_SKIP_NATIVE=1);
* ``solar._csrc_cuda`` -- CUDA C++ kernels (built when nvcc is found, unless SOLAR_SKIP_CUDA=1).

Neither module links against libtorch: they take raw device pointers plus shapes and strides from
the Python side, so the same build works with the CPU torch wheel and with a CUDA torch.

Environment switches:
  SOLAR_SKIP_NATIVE=1     build no native module at all (pure-Python install)
  SOLAR_SKIP_CUDA=1       skip the CUDA module even when nvcc is present
  SOLAR_REQUIRE_NATIVE=1  turn native build failures into errors instead of warnings
  SOLAR_CUDA_ARCHS="90"   CUDA architectures to compile for (default "80;90")
  SOLAR_BUILD_JOBS=N      parallel compile jobs (default: CPU count)
"""
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class CMakeExtension(Extension):
    def __init__(self, name: str, target: str):
        super().__init__(name, sources=[])
        self.target = target


class CMakeBuild(build_ext):
    """Configure CMake once, then build each requested module target."""

    def run(self):
        self._skipped = set()
        if _flag("SOLAR_SKIP_NATIVE"):
            warnings.warn("SOLAR_SKIP_NATIVE=1: native csrc modules are not built; "
                          "only the 'torch' (and 'triton') backends will be available.")
            self._skipped = {e.name for e in self.extensions}
            return
        if shutil.which("cmake") is None:
            self._skipped = {e.name for e in self.extensions}
            return self._fail("cmake was not found on PATH (pip install cmake)")
        super().run()

    def _fail(self, why: str, ext: Extension = None):
        if _flag("SOLAR_REQUIRE_NATIVE"):
            raise RuntimeError(why)
        if ext is not None:
            self._skip(ext)
        warnings.warn(f"solar native build skipped: {why}")

    def _skip(self, ext: Extension):
        if not hasattr(self, "_skipped"):
            self._skipped = set()
        self._skipped.add(ext.name)

    def _not_built(self, ext: Extension) -> bool:
        """Skipped in this run, or sure to be (CUDA without nvcc), so never copied or listed."""
        return (ext.name in getattr(self, "_skipped", ())
                or (getattr(ext, "target", "") == "_csrc_cuda" and self._nvcc() is None))

    def copy_extensions_to_source(self):
        every = self.extensions
        self.extensions = [e for e in every if not self._not_built(e)]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = every

    def get_outputs(self):
        skipped = {self.get_ext_fullpath(e.name) for e in self.extensions if self._not_built(e)}
        return [out for out in super().get_outputs() if out not in skipped]

    def _nvcc(self):
        if _flag("SOLAR_SKIP_CUDA"):
            return None
        cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
        cand = Path(cuda_home, "bin", "nvcc") if cuda_home else None
        if cand is not None and cand.exists():
            return str(cand)
        return shutil.which("nvcc")

    def build_extension(self, ext: CMakeExtension):
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_temp = Path(self.build_temp).resolve() / "cmake"
        build_temp.mkdir(parents=True, exist_ok=True)
        nvcc = self._nvcc() if ext.target == "_csrc_cuda" else None
        if ext.target == "_csrc_cuda" and nvcc is None:
            warnings.warn("nvcc not found (or SOLAR_SKIP_CUDA=1): the CUDA backend is not built.")
            self._skip(ext)
            return
        import pybind11

        lib_dir = build_temp / ext.target / "lib"
        cfg = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={lib_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DSOLAR_WITH_CUDA={'ON' if nvcc else 'OFF'}",
        ]
        if nvcc:
            cfg += [f"-DCMAKE_CUDA_COMPILER={nvcc}",
                    f"-DCMAKE_CUDA_ARCHITECTURES={os.environ.get('SOLAR_CUDA_ARCHS', '80;90')}"]
        jobs = os.environ.get("SOLAR_BUILD_JOBS", str(os.cpu_count() or 2))
        try:
            subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_temp / ext.target), *cfg],
                           check=True)
            subprocess.run(["cmake", "--build", str(build_temp / ext.target), "--target", ext.target,
                            "-j", jobs], check=True)
        except subprocess.CalledProcessError as err:
            return self._fail(f"building {ext.name} failed ({err}); see the CMake output above",
                              ext)
        self._install_atomically(lib_dir, out_dir, ext.target)

    @staticmethod
    def _install_atomically(lib_dir: Path, out_dir: Path, target: str):
        """Copy the module next to its package and rename it into place: a process that has the
        old module loaded keeps its mapping instead of crashing on a file rewritten under it."""
        out_dir.mkdir(parents=True, exist_ok=True)
        for built in lib_dir.glob(f"{target}*.so"):
            tmp = out_dir / f".{built.name}.tmp"
            shutil.copy2(built, tmp)
            os.replace(tmp, out_dir / built.name)


setup(
    package_dir={"solar": "solar", "solar_kernels": "kernels/solar_kernels",
                 "solar_milvus": "milvus_plugin/solar_milvus"},
    packages=(find_packages(include=["solar", "solar.*"])
              + ["solar_kernels"]
              + ["solar_milvus"]),
    ext_modules=[CMakeExtension("solar._csrc_cpu", "_csrc_cpu"),
                 CMakeExtension("solar._csrc_cuda", "_csrc_cuda")],
    cmdclass={"build_ext": CMakeBuild},
)
