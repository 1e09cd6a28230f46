// pybind11 entry point of solar._csrc_cpu (CPU C++ kernels).
//
// The binding signature is the one of common/bindings.h, shared with the CUDA module: tensors as
// description tuples (common/args.h), every argument checked before any work, outputs allocated
// by the caller (solar/ops/_native.py) and written in place, scalars as 0-dim float32 tensors
// (read here on the host), and `stream` 0.  CPU-only extras: ISA choice, threads, the losses'
// chunk size and their reusable scratch memory.
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/args.h"
#include "common/bindings.h"
#include "cpu/ops.h"

namespace py = pybind11;
using solar::DType;
using solar::H;
using solar::Opt;
using solar::Stream;
using solar::TensorArg;

namespace {

constexpr const char* kDev = "cpu";

// Rows per logits chunk of the losses (0: the heuristic of loss.cpp, about 4 MiB of logits).
std::int64_t g_chunk_rows = 0;

TensorArg arg(const char* name, py::handle h, int ndim) {
  return solar::parse_tensor(name, h, kDev, ndim);
}

int elem_type(const TensorArg& t) { return t.dtype == DType::BF16 ? solar::cpu::kBF16 : solar::cpu::kF32; }

// A (rows, cols) embedding matrix in fp32 or bf16, any strides.
TensorArg embeddings(const char* name, py::handle h) {
  TensorArg t = arg(name, h, 2);
  solar::expect_dtype(t, {DType::F32, DType::BF16});
  return t;
}

solar::cpu::Mat mat(const TensorArg& t) {
  solar::cpu::Mat m;
  m.p = reinterpret_cast<void*>(t.ptr);
  m.type = elem_type(t);
  m.rows = t.shape[0];
  m.cols = t.shape[1];
  m.rs = t.stride[0];
  m.cs = t.stride[1];
  return m;
}

// An input with exactly the shape and dtype of `ref`.
TensorArg like(const char* name, py::handle h, const TensorArg& ref) {
  TensorArg t = arg(name, h, ref.ndim);
  solar::expect_same_dtype(t, ref);
  for (int d = 0; d < ref.ndim; ++d) solar::expect_size(t, d, ref.shape[d], ref.name + "'s shape");
  return t;
}

// A gradient output: float32, contiguous, the shape of `ref`.
solar::cpu::Mat grad_of(const char* name, py::handle h, const TensorArg& ref) {
  TensorArg t = arg(name, h, ref.ndim);
  solar::expect_dtype(t, {DType::F32});
  for (int d = 0; d < ref.ndim; ++d) solar::expect_size(t, d, ref.shape[d], ref.name + "'s shape");
  solar::expect_contiguous(t);
  return mat(t);
}

// A contiguous fp32 vector of n values (n = -1: a 0-dim scalar).
float* f32_out(const char* name, py::handle h, std::int64_t n, const std::string& what) {
  TensorArg t = arg(name, h, n < 0 ? 0 : 1);
  solar::expect_dtype(t, {DType::F32});
  if (n >= 0) solar::expect_size(t, 0, n, what);
  solar::expect_contiguous(t);
  return t.data<float>();
}

// The value of a finite 0-dim fp32 scalar (None: `none`).
float scalar(const char* name, py::handle h, float none = 0.f) {
  if (h.is_none()) return none;
  const float v = *f32_out(name, h, -1, "");
  if (!std::isfinite(v)) solar::value_error(name, "must be finite");
  return v;
}

void check_eps(float eps) {
  if (!(eps >= 0.f) || !std::isfinite(eps)) solar::value_error("eps", "must be finite and >= 0");
}

void check_stream(Stream stream) {
  if (stream != 0) solar::value_error("stream", "must be 0 for the CPU module");
}

void check_workspace(py::handle h, std::int64_t n) {
  f32_out("workspace", h, n, "the workspace size this module reports");
}

// ----------------------------------------------------------------------------- masked pooling
struct PoolIn {
  TensorArg x, w;
  solar::cpu::PoolArgs a;
};

PoolIn pool_inputs(H x_, H w_, H y_, H stats_, bool normalize, float eps) {
  PoolIn in{arg("x", x_, 3), arg("w", w_, 2), {}};
  const TensorArg& x = in.x;
  solar::expect_dtype(x, {DType::F32, DType::BF16});
  solar::expect_nonempty(x);
  solar::expect_last_contiguous(x);
  solar::expect_dtype(in.w, {DType::F32});
  solar::expect_size(in.w, 0, x.shape[0], "x's batch");
  solar::expect_size(in.w, 1, x.shape[1], "x's length");
  TensorArg y = arg("y", y_, 2);
  solar::expect_same_dtype(y, x);
  solar::expect_size(y, 0, x.shape[0], "x's batch");
  solar::expect_size(y, 1, x.shape[2], "x's feature size");
  solar::expect_contiguous(y);
  check_eps(eps);
  auto& a = in.a;
  a.x = reinterpret_cast<const void*>(x.ptr);
  a.type = elem_type(x);
  a.B = x.shape[0]; a.L = x.shape[1]; a.D = x.shape[2];
  a.sxb = x.stride[0]; a.sxl = x.stride[1];
  a.w = in.w.data<const float>(); a.swb = in.w.stride[0]; a.swl = in.w.stride[1];
  a.y = reinterpret_cast<void*>(y.ptr);
  TensorArg st = arg("stats", stats_, 2);
  solar::expect_dtype(st, {DType::F32});
  solar::expect_size(st, 0, a.B, "x's batch");
  solar::expect_size(st, 1, 2, "2 statistics");
  solar::expect_contiguous(st);
  a.stats = st.data<float>();
  a.normalize = normalize;
  a.eps = eps;
  return in;
}

void masked_pool_fwd(H x, H w, H y, H stats, bool normalize, float eps, Stream stream) {
  PoolIn in = pool_inputs(x, w, y, stats, normalize, eps);
  check_stream(stream);
  py::gil_scoped_release nogil;
  solar::cpu::masked_pool_forward(in.a);
}

void masked_pool_bwd(H dy_, H x_, H w_, H y_, H stats_, H dx_, Opt dw_, bool normalize,
                     float eps, Stream stream) {
  PoolIn in = pool_inputs(x_, w_, y_, stats_, normalize, eps);
  auto& a = in.a;
  TensorArg dy = arg("dy", dy_, 2);
  solar::expect_same_dtype(dy, in.x);
  solar::expect_size(dy, 0, a.B, "x's batch");
  solar::expect_size(dy, 1, a.D, "x's feature size");
  solar::expect_contiguous(dy);
  TensorArg dx = like("dx", dx_, in.x);
  solar::expect_last_contiguous(dx);
  a.dy = reinterpret_cast<const void*>(dy.ptr);
  a.dx = reinterpret_cast<void*>(dx.ptr);
  a.sdxb = dx.stride[0]; a.sdxl = dx.stride[1];
  if (!dw_.is_none()) {
    TensorArg dw = like("dw", dw_, in.w);
    solar::expect_contiguous(dw);
    a.dw = dw.data<float>();
  }
  check_stream(stream);
  py::gil_scoped_release nogil;
  solar::cpu::masked_pool_backward(a);
}

// ----------------------------------------------------------------------------- contrastive
struct PairIn {
  TensorArg a, b;
  solar::cpu::Mat neg;
  bool has_neg = false;
};

PairIn pair(H a_, H b_, Opt neg_) {
  PairIn in{embeddings("a", a_), {}, {}, false};
  solar::expect_nonempty(in.a);
  in.b = like("b", b_, in.a);
  in.neg.type = elem_type(in.a);
  in.neg.cols = in.a.shape[1];
  if (!neg_.is_none()) {
    TensorArg n = embeddings("neg", neg_);
    solar::expect_same_dtype(n, in.a);
    solar::expect_size(n, 1, in.a.shape[1], "a's feature size");
    in.neg = mat(n);
    in.has_neg = n.shape[0] > 0;
  }
  return in;
}

solar::cpu::LossOptions options(H scale, Opt bias, bool symmetric) {
  solar::cpu::LossOptions o;
  o.scale = scalar("scale", scale);
  o.bias = scalar("bias", bias);
  o.symmetric = symmetric;
  o.chunk_rows = g_chunk_rows;
  return o;
}

float* lse_col_of(H lse_col_, std::int64_t B, bool symmetric) {
  return f32_out("lse_col", lse_col_, symmetric ? B : 0,
                 symmetric ? "a's batch (symmetric)" : "0 (not symmetric)");
}

void contrastive_fwd(H a_, H b_, Opt neg_, H scale, Opt bias, H loss_, H lse_row_, H lse_col_,
                     H workspace, bool symmetric, Stream stream) {
  PairIn in = pair(a_, b_, neg_);
  const std::int64_t B = in.a.shape[0];
  auto o = options(scale, bias, symmetric);
  float* loss = f32_out("loss", loss_, -1, "");
  float* lse_row = f32_out("lse_row", lse_row_, B, "a's batch");
  float* lse_col = lse_col_of(lse_col_, B, symmetric);
  check_workspace(workspace, 0);
  check_stream(stream);
  py::gil_scoped_release nogil;
  *loss = static_cast<float>(
      solar::cpu::contrastive_forward(mat(in.a), mat(in.b), in.neg, o, lse_row, lse_col));
}

void contrastive_bwd(H a_, H b_, Opt neg_, H scale, Opt bias, H dloss_, H lse_row_, H lse_col_,
                     H da_, H db_, Opt dneg_, H dscale_, H dbias_, bool symmetric,
                     Stream stream) {
  PairIn in = pair(a_, b_, neg_);
  const std::int64_t B = in.a.shape[0];
  auto o = options(scale, bias, symmetric);
  const float dloss = scalar("dloss", dloss_);
  f32_out("lse_row", lse_row_, B, "a's batch");  // checked; rows are recomputed per chunk
  float* lse_col = lse_col_of(lse_col_, B, symmetric);
  solar::cpu::Mat da = grad_of("da", da_, in.a), db = grad_of("db", db_, in.b);
  solar::cpu::Mat dneg = in.neg;
  if (in.has_neg) {
    if (dneg_.is_none()) solar::value_error("dneg", "required when neg is given");
    TensorArg n = arg("dneg", dneg_, 2);
    solar::expect_dtype(n, {DType::F32});
    solar::expect_size(n, 0, in.neg.rows, "neg's rows");
    solar::expect_size(n, 1, in.neg.cols, "neg's feature size");
    solar::expect_contiguous(n);
    dneg = mat(n);
  }
  float* dscale = f32_out("dscale", dscale_, -1, "");
  float* dbias = f32_out("dbias", dbias_, -1, "");
  check_stream(stream);
  py::gil_scoped_release nogil;
  solar::cpu::contrastive_backward(mat(in.a), mat(in.b), in.neg, o, dloss, lse_col, da, db, dneg,
                                   dscale, dbias);
}

// ----------------------------------------------------------------------------- GCL
struct TripleIn {
  TensorArg ei, et, ef;
};

TripleIn triple(H ei_, H et_, H ef_) {
  TripleIn in{embeddings("ei", ei_), {}, {}};
  solar::expect_nonempty(in.ei);
  in.et = like("et", et_, in.ei);
  in.ef = like("ef", ef_, in.ei);
  return in;
}

void gcl_fwd(H ei_, H et_, H ef_, H scale, H loss_, H lse_, H workspace, Stream stream) {
  TripleIn in = triple(ei_, et_, ef_);
  auto o = options(scale, py::none(), false);
  float* loss = f32_out("loss", loss_, -1, "");
  float* lse = f32_out("lse", lse_, 3 * in.ei.shape[0], "3 x batch");
  check_workspace(workspace, 0);
  check_stream(stream);
  py::gil_scoped_release nogil;
  *loss = static_cast<float>(solar::cpu::gcl_forward(mat(in.ei), mat(in.et), mat(in.ef), o, lse));
}

void gcl_bwd(H ei_, H et_, H ef_, H scale, H dloss_, H lse_, H dei_, H det_, H def_, H dscale_,
             Stream stream) {
  TripleIn in = triple(ei_, et_, ef_);
  auto o = options(scale, py::none(), false);
  const float dloss = scalar("dloss", dloss_);
  float* lse = f32_out("lse", lse_, 3 * in.ei.shape[0], "3 x batch");
  solar::cpu::Mat dei = grad_of("dei", dei_, in.ei), det = grad_of("det", det_, in.ei);
  solar::cpu::Mat def = grad_of("def", def_, in.ei);
  float* dscale = f32_out("dscale", dscale_, -1, "");
  check_stream(stream);
  py::gil_scoped_release nogil;
  solar::cpu::gcl_backward(mat(in.ei), mat(in.et), mat(in.ef), o, dloss, lse, dei, det, def,
                           dscale);
}

// ----------------------------------------------------------------------------- multi-positive
struct MpiIn {
  TensorArg anchors, cand;
  const std::uint8_t* pos = nullptr;
  const std::uint8_t* valid = nullptr;
};

MpiIn mpi_inputs(H anchors_, H cand_, H pos_, H valid_) {
  MpiIn in{embeddings("anchors", anchors_), embeddings("cand", cand_)};
  solar::expect_nonempty(in.anchors);
  solar::expect_nonempty(in.cand);
  solar::expect_same_dtype(in.cand, in.anchors);
  solar::expect_size(in.cand, 1, in.anchors.shape[1], "anchors' feature size");
  const std::int64_t B = in.anchors.shape[0], N = in.cand.shape[0];
  const std::uint8_t* ptrs[2];
  const char* names[2] = {"pos", "valid"};
  H hs[2] = {pos_, valid_};
  for (int k = 0; k < 2; ++k) {
    TensorArg m = arg(names[k], hs[k], 2);
    solar::expect_dtype(m, {DType::Bool, DType::U8});
    solar::expect_size(m, 0, B, "anchors' rows");
    solar::expect_size(m, 1, N, "cand's rows");
    solar::expect_contiguous(m);
    ptrs[k] = m.data<const std::uint8_t>();
  }
  in.pos = ptrs[0];
  in.valid = ptrs[1];
  return in;
}

void mpi_fwd(H anchors_, H cand_, H pos_, H valid_, H scale, H loss_, H lse_all_, H lse_pos_,
             Stream stream) {
  MpiIn in = mpi_inputs(anchors_, cand_, pos_, valid_);
  const std::int64_t B = in.anchors.shape[0];
  auto o = options(scale, py::none(), false);
  float* loss = f32_out("loss", loss_, -1, "");
  float* lse_all = f32_out("lse_all", lse_all_, B, "anchors' rows");
  float* lse_pos = f32_out("lse_pos", lse_pos_, B, "anchors' rows");
  check_stream(stream);
  py::gil_scoped_release nogil;
  *loss = static_cast<float>(solar::cpu::mpi_forward(mat(in.anchors), mat(in.cand), in.pos,
                                                     in.valid, in.cand.shape[0], o, lse_all,
                                                     lse_pos));
}

void mpi_bwd(H anchors_, H cand_, H pos_, H valid_, H scale, H dloss_, H lse_all_, H lse_pos_,
             H danchors_, H dcand_, H dscale_, Stream stream) {
  MpiIn in = mpi_inputs(anchors_, cand_, pos_, valid_);
  const std::int64_t B = in.anchors.shape[0];
  auto o = options(scale, py::none(), false);
  const float dloss = scalar("dloss", dloss_);
  f32_out("lse_all", lse_all_, B, "anchors' rows");  // checked; recomputed per chunk
  f32_out("lse_pos", lse_pos_, B, "anchors' rows");
  solar::cpu::Mat da = grad_of("danchors", danchors_, in.anchors);
  solar::cpu::Mat dc = grad_of("dcand", dcand_, in.cand);
  float* dscale = f32_out("dscale", dscale_, -1, "");
  check_stream(stream);
  py::gil_scoped_release nogil;
  solar::cpu::mpi_backward(mat(in.anchors), mat(in.cand), in.pos, in.valid, in.cand.shape[0], o,
                           dloss, da, dc, dscale);
}

// The CPU keeps its own scratch (reused across calls), so the forwards need no workspace.
std::int64_t contrastive_workspace(std::int64_t, bool) { return 0; }
std::int64_t gcl_workspace(std::int64_t) { return 0; }

// ----------------------------------------------------------------------------- module facts
py::dict build_info() {
  py::dict d;
#ifdef _OPENMP
  d["openmp"] = true;
  d["max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["max_threads"] = 1;
#endif
  d["threads"] = solar::cpu::num_threads();
  d["isa"] = solar::cpu::kernels().isa;
  py::list isas;
  for (const auto* k : solar::cpu::runnable_isas()) isas.append(k->isa);
  d["runnable_isas"] = isas;
  return d;
}

std::string select_isa(const std::string& name) {
  if (!solar::cpu::select_isa(name.c_str()))
    solar::value_error("name", "ISA build '" + name + "' is unknown or cannot run on this CPU");
  return solar::cpu::kernels().isa;
}

void set_chunk_rows(std::int64_t chunk_rows) {
  if (chunk_rows < 0) solar::value_error("chunk_rows", "must be >= 0 (0 picks the heuristic)");
  g_chunk_rows = chunk_rows;
}

void set_num_threads(int n) {
  if (n < 0) solar::value_error("n", "must be >= 0 (0: the OpenMP default)");
  solar::cpu::set_num_threads(n);
}

}  // namespace

PYBIND11_MODULE(_csrc_cpu, m) {
  using py::arg;
  m.doc() = "solar CPU C++ kernels (tensors passed as description tuples; see solar.ops._native)";
  solar::def_ops(m, solar::OpTable{masked_pool_fwd, masked_pool_bwd, contrastive_fwd,
                                   contrastive_bwd, gcl_fwd, gcl_bwd, mpi_fwd, mpi_bwd,
                                   contrastive_workspace, gcl_workspace, build_info});
  m.def("select_isa", &select_isa, arg("name"),
        "Use one ISA build of the kernels ('auto', 'avx512', 'avx2', 'generic'); returns it.");
  m.def("set_num_threads", &set_num_threads, arg("n"), "Threads used by every kernel.");
  m.def("set_chunk_rows", &set_chunk_rows, arg("chunk_rows"),
        "Rows per logits chunk of the losses (0: about 4 MiB of logits per chunk).");
  m.def("workspace_bytes", &solar::cpu::workspace_bytes,
        "Bytes of loss scratch memory held for reuse by the calling thread (at most 256 MiB).");
  m.def("release_workspace", &solar::cpu::release_workspace,
        "Free the loss scratch memory held for reuse by the calling thread.");
}
