// The one binding signature of solar._csrc_cpu and solar._csrc_cuda.
//
// Both modules fill an OpTable with their functions and call def_ops, so the names, the argument
// order and the argument types are the same for both; a module whose function differs in any
// argument type does not compile.  Conventions of every op:
//
//   * tensors are description tuples (common/args.h) on the module's device;
//   * inputs first, then outputs (allocated by the caller, written in place), then flags, then
//     `stream` (the CUDA stream as an int; must be 0 on the CPU);
//   * scalars (scale, bias, the incoming gradient dloss) are 0-dim float32 tensors on the device
//     (the CUDA kernels read them there: no host synchronization); bias may be None;
//   * statistics saved for backward (stats, lse_*) are float32;
//   * loss gradients (da, db, dneg, dei, det, def, danchors, dcand, dscale, dbias) are float32,
//     contiguous and zero-filled by the caller (CUDA accumulates into them, the CPU overwrites);
//     pooling gradients: dx in x's dtype, dw float32;
//   * `workspace` is float32 of contrastive_workspace(B, symmetric) / gcl_workspace(B) values
//     (0 on the CPU, which keeps its own reusable scratch).
//
// The math of each op is the reference twin's in solar/ops/reference.py.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

namespace solar {

namespace py = pybind11;

using H = py::handle;      // a tensor description
using Opt = py::object;    // a tensor description or None
using Stream = std::uintptr_t;

struct OpTable {
  // x (B, L, D) last-dim contiguous, w (B, L) fp32 -> y (B, D) x.dtype, stats (B, 2) fp32
  void (*masked_pool_fwd)(H x, H w, H y, H stats, bool normalize, float eps, Stream stream);
  void (*masked_pool_bwd)(H dy, H x, H w, H y, H stats, H dx, Opt dw, bool normalize, float eps,
                          Stream stream);
  // a, b (B, D), neg (K, D) or None -> loss (), lse_row (B,), lse_col (B,) or (0,)
  void (*contrastive_fwd)(H a, H b, Opt neg, H scale, Opt bias, H loss, H lse_row, H lse_col,
                          H workspace, bool symmetric, Stream stream);
  void (*contrastive_bwd)(H a, H b, Opt neg, H scale, Opt bias, H dloss, H lse_row, H lse_col,
                          H da, H db, Opt dneg, H dscale, H dbias, bool symmetric, Stream stream);
  // ei, et, ef (B, D) -> loss (), lse (3B,)
  void (*gcl_fwd)(H ei, H et, H ef, H scale, H loss, H lse, H workspace, Stream stream);
  void (*gcl_bwd)(H ei, H et, H ef, H scale, H dloss, H lse, H dei, H det, H def, H dscale,
                  Stream stream);
  // anchors (B, D), cand (N, D), pos/valid (B, N) bool contiguous -> loss (), lse_all, lse_pos (B,)
  void (*mpi_fwd)(H anchors, H cand, H pos, H valid, H scale, H loss, H lse_all, H lse_pos,
                  Stream stream);
  void (*mpi_bwd)(H anchors, H cand, H pos, H valid, H scale, H dloss, H lse_all, H lse_pos,
                  H danchors, H dcand, H dscale, Stream stream);
  std::int64_t (*contrastive_workspace)(std::int64_t batch, bool symmetric);
  std::int64_t (*gcl_workspace)(std::int64_t batch);
  py::dict (*build_info)();
};

inline void def_ops(py::module_& m, const OpTable& t) {
  using py::arg;
  m.def("build_info", t.build_info, "Compile-time and run-time facts of this module.");
  m.def("contrastive_workspace", t.contrastive_workspace, arg("batch"), arg("symmetric"),
        "float32 values of workspace contrastive_fwd needs.");
  m.def("gcl_workspace", t.gcl_workspace, arg("batch"),
        "float32 values of workspace gcl_fwd needs.");
  m.def("masked_pool_fwd", t.masked_pool_fwd, arg("x"), arg("w"), arg("y"), arg("stats"),
        arg("normalize"), arg("eps"), arg("stream"));
  m.def("masked_pool_bwd", t.masked_pool_bwd, arg("dy"), arg("x"), arg("w"), arg("y"),
        arg("stats"), arg("dx"), arg("dw").none(true), arg("normalize"), arg("eps"),
        arg("stream"));
  m.def("contrastive_fwd", t.contrastive_fwd, arg("a"), arg("b"), arg("neg").none(true),
        arg("scale"), arg("bias").none(true), arg("loss"), arg("lse_row"), arg("lse_col"),
        arg("workspace"), arg("symmetric"), arg("stream"));
  m.def("contrastive_bwd", t.contrastive_bwd, arg("a"), arg("b"), arg("neg").none(true),
        arg("scale"), arg("bias").none(true), arg("dloss"), arg("lse_row"), arg("lse_col"),
        arg("da"), arg("db"), arg("dneg").none(true), arg("dscale"), arg("dbias"),
        arg("symmetric"), arg("stream"));
  m.def("gcl_fwd", t.gcl_fwd, arg("ei"), arg("et"), arg("ef"), arg("scale"), arg("loss"),
        arg("lse"), arg("workspace"), arg("stream"));
  m.def("gcl_bwd", t.gcl_bwd, arg("ei"), arg("et"), arg("ef"), arg("scale"), arg("dloss"),
        arg("lse"), arg("dei"), arg("det"), arg("def"), arg("dscale"), arg("stream"));
  m.def("mpi_fwd", t.mpi_fwd, arg("anchors"), arg("cand"), arg("pos"), arg("valid"),
        arg("scale"), arg("loss"), arg("lse_all"), arg("lse_pos"), arg("stream"));
  m.def("mpi_bwd", t.mpi_bwd, arg("anchors"), arg("cand"), arg("pos"), arg("valid"),
        arg("scale"), arg("dloss"), arg("lse_all"), arg("lse_pos"), arg("danchors"),
        arg("dcand"), arg("dscale"), arg("stream"));
}

}  // namespace solar
