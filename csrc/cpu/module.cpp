// pybind11 entry point of solar._csrc_cpu (CPU C++ kernels).
#include <pybind11/pybind11.h>

#ifdef SOLAR_HAVE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

static py::dict build_info() {
  py::dict d;
#ifdef SOLAR_HAVE_OPENMP
  d["openmp"] = true;
  d["max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["max_threads"] = 1;
#endif
  return d;
}

PYBIND11_MODULE(_csrc_cpu, m) {
  m.doc() = "solar CPU C++ kernels";
  m.def("build_info", &build_info, "Compile-time facts of this module.");
}
