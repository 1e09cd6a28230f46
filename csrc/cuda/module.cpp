// pybind11 entry point of solar._csrc_cuda (CUDA C++ kernels).
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

namespace py = pybind11;

static py::dict build_info() {
  py::dict d;
  int runtime = 0, driver = 0, count = 0;
  cudaRuntimeGetVersion(&runtime);
  d["runtime_version"] = runtime;
  d["driver_version"] = cudaDriverGetVersion(&driver) == cudaSuccess ? driver : 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  d["device_count"] = err == cudaSuccess ? count : 0;
  d["device_error"] = err == cudaSuccess ? "" : cudaGetErrorString(err);
  return d;
}

PYBIND11_MODULE(_csrc_cuda, m) {
  m.doc() = "solar CUDA C++ kernels";
  m.def("build_info", &build_info, "CUDA runtime/driver versions and visible devices.");
}
