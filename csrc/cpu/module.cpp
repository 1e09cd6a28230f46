// pybind11 entry point of solar._csrc_cpu (CPU C++ kernels).
//
// Every function takes tensors as description tuples (see csrc/common/args.h), checks them all,
// and writes into outputs allocated by the caller (solar/ops/_native.py).  Scalars (scale, bias,
// the incoming gradient) are Python floats: the tensors live on the CPU.
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/args.h"
#include "cpu/ops.h"

namespace py = pybind11;
using solar::DType;
using solar::TensorArg;

namespace {

constexpr const char* kDev = "cpu";

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

// An output or input with exactly the shape and dtype of `like`.
TensorArg like(const char* name, py::handle h, const TensorArg& ref) {
  TensorArg t = arg(name, h, ref.ndim);
  solar::expect_same_dtype(t, ref);
  for (int d = 0; d < ref.ndim; ++d) solar::expect_size(t, d, ref.shape[d], ref.name + "'s shape");
  return t;
}

// A contiguous fp32 vector of n values (n = -1: a 0-dim scalar).
float* f32_out(const char* name, py::handle h, std::int64_t n, const std::string& what) {
  TensorArg t = arg(name, h, n < 0 ? 0 : 1);
  solar::expect_dtype(t, {DType::F32});
  if (n >= 0) solar::expect_size(t, 0, n, what);
  solar::expect_contiguous(t);
  return t.data<float>();
}

void check_eps(float eps) {
  if (!(eps >= 0.f) || !std::isfinite(eps)) solar::value_error("eps", "must be finite and >= 0");
}

void check_scale(float scale) {
  if (!std::isfinite(scale)) solar::value_error("scale", "must be finite");
}

std::int64_t check_chunk(std::int64_t chunk_rows) {
  if (chunk_rows < 0) solar::value_error("chunk_rows", "must be >= 0 (0 picks the heuristic)");
  return chunk_rows;
}

// ----------------------------------------------------------------------------- masked pooling
struct PoolIn {
  TensorArg x, w;
  solar::cpu::PoolArgs a;
};

PoolIn pool_inputs(py::handle x_, py::handle w_, py::handle y_, py::handle stats_, bool normalize,
                   float eps) {
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

void masked_pool_fwd(py::handle x, py::handle w, py::handle y, py::handle stats, bool normalize,
                     float eps) {
  PoolIn in = pool_inputs(x, w, y, stats, normalize, eps);
  py::gil_scoped_release nogil;
  solar::cpu::masked_pool_forward(in.a);
}

void masked_pool_bwd(py::handle dy_, py::handle x_, py::handle w_, py::handle y_,
                     py::handle stats_, py::handle dx_, py::object dw_, bool normalize, float eps) {
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
  py::gil_scoped_release nogil;
  solar::cpu::masked_pool_backward(a);
}

// ----------------------------------------------------------------------------- contrastive
struct PairIn {
  TensorArg a, b;
  solar::cpu::Mat neg;
  bool has_neg = false;
};

PairIn pair(py::handle a_, py::handle b_, py::object neg_) {
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

solar::cpu::LossOptions options(float scale, float bias, bool symmetric, std::int64_t chunk) {
  check_scale(scale);
  if (!std::isfinite(bias)) solar::value_error("bias", "must be finite");
  solar::cpu::LossOptions o;
  o.scale = scale; o.bias = bias; o.symmetric = symmetric; o.chunk_rows = check_chunk(chunk);
  return o;
}

void contrastive_fwd(py::handle a_, py::handle b_, py::object neg_, py::handle loss_,
                     py::handle lse_row_, py::handle lse_col_, float scale, float bias,
                     bool symmetric, std::int64_t chunk_rows) {
  PairIn in = pair(a_, b_, neg_);
  const std::int64_t B = in.a.shape[0];
  float* loss = f32_out("loss", loss_, -1, "");
  float* lse_row = f32_out("lse_row", lse_row_, B, "a's batch");
  float* lse_col = f32_out("lse_col", lse_col_, symmetric ? B : 0,
                           symmetric ? "a's batch (symmetric)" : "0 (not symmetric)");
  auto o = options(scale, bias, symmetric, chunk_rows);
  py::gil_scoped_release nogil;
  *loss = static_cast<float>(
      solar::cpu::contrastive_forward(mat(in.a), mat(in.b), in.neg, o, lse_row, lse_col));
}

void contrastive_bwd(py::handle a_, py::handle b_, py::object neg_, py::handle lse_row_,
                     py::handle lse_col_, py::handle da_, py::handle db_, py::object dneg_,
                     py::handle dscale_, py::handle dbias_, float dloss, float scale, float bias,
                     bool symmetric, std::int64_t chunk_rows) {
  PairIn in = pair(a_, b_, neg_);
  const std::int64_t B = in.a.shape[0];
  f32_out("lse_row", lse_row_, B, "a's batch");  // checked; rows are recomputed per chunk
  float* lse_col = f32_out("lse_col", lse_col_, symmetric ? B : 0,
                           symmetric ? "a's batch (symmetric)" : "0 (not symmetric)");
  TensorArg da = like("da", da_, in.a), db = like("db", db_, in.b);
  solar::cpu::Mat dneg = in.neg;
  if (in.has_neg) {
    if (dneg_.is_none()) solar::value_error("dneg", "required when neg is given");
    TensorArg n = arg("dneg", dneg_, 2);
    solar::expect_same_dtype(n, in.a);
    solar::expect_size(n, 0, in.neg.rows, "neg's rows");
    solar::expect_size(n, 1, in.neg.cols, "neg's feature size");
    dneg = mat(n);
  }
  float* dscale = f32_out("dscale", dscale_, -1, "");
  float* dbias = f32_out("dbias", dbias_, -1, "");
  if (!std::isfinite(dloss)) solar::value_error("dloss", "must be finite");
  auto o = options(scale, bias, symmetric, chunk_rows);
  py::gil_scoped_release nogil;
  solar::cpu::contrastive_backward(mat(in.a), mat(in.b), in.neg, o, dloss, lse_col,
                                   mat(da), mat(db), dneg, dscale, dbias);
}

// ----------------------------------------------------------------------------- GCL
struct TripleIn {
  TensorArg ei, et, ef;
};

TripleIn triple(py::handle ei_, py::handle et_, py::handle ef_) {
  TripleIn in{embeddings("ei", ei_), {}, {}};
  solar::expect_nonempty(in.ei);
  in.et = like("et", et_, in.ei);
  in.ef = like("ef", ef_, in.ei);
  return in;
}

void gcl_fwd(py::handle ei_, py::handle et_, py::handle ef_, py::handle loss_, py::handle lse_,
             float scale, std::int64_t chunk_rows) {
  TripleIn in = triple(ei_, et_, ef_);
  float* loss = f32_out("loss", loss_, -1, "");
  float* lse = f32_out("lse", lse_, 3 * in.ei.shape[0], "3 x batch");
  auto o = options(scale, 0.f, false, chunk_rows);
  py::gil_scoped_release nogil;
  *loss = static_cast<float>(solar::cpu::gcl_forward(mat(in.ei), mat(in.et), mat(in.ef), o, lse));
}

void gcl_bwd(py::handle ei_, py::handle et_, py::handle ef_, py::handle lse_, py::handle dei_,
             py::handle det_, py::handle def_, py::handle dscale_, float dloss, float scale,
             std::int64_t chunk_rows) {
  TripleIn in = triple(ei_, et_, ef_);
  float* lse = f32_out("lse", lse_, 3 * in.ei.shape[0], "3 x batch");
  TensorArg dei = like("dei", dei_, in.ei), det = like("det", det_, in.ei);
  TensorArg def = like("def", def_, in.ei);
  float* dscale = f32_out("dscale", dscale_, -1, "");
  if (!std::isfinite(dloss)) solar::value_error("dloss", "must be finite");
  auto o = options(scale, 0.f, false, chunk_rows);
  py::gil_scoped_release nogil;
  solar::cpu::gcl_backward(mat(in.ei), mat(in.et), mat(in.ef), o, dloss, lse, mat(dei), mat(det),
                           mat(def), dscale);
}

// ----------------------------------------------------------------------------- multi-positive
struct MpiIn {
  TensorArg anchors, cand;
  const std::uint8_t* pos = nullptr;
  const std::uint8_t* valid = nullptr;
};

MpiIn mpi_inputs(py::handle anchors_, py::handle cand_, py::handle pos_, py::handle valid_) {
  MpiIn in{embeddings("anchors", anchors_), embeddings("cand", cand_)};
  solar::expect_nonempty(in.anchors);
  solar::expect_nonempty(in.cand);
  solar::expect_same_dtype(in.cand, in.anchors);
  solar::expect_size(in.cand, 1, in.anchors.shape[1], "anchors' feature size");
  const std::int64_t B = in.anchors.shape[0], N = in.cand.shape[0];
  const std::uint8_t* ptrs[2];
  const char* names[2] = {"pos", "valid"};
  py::handle hs[2] = {pos_, valid_};
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

void mpi_fwd(py::handle anchors_, py::handle cand_, py::handle pos_, py::handle valid_,
             py::handle loss_, py::handle lse_all_, py::handle lse_pos_, float scale,
             std::int64_t chunk_rows) {
  MpiIn in = mpi_inputs(anchors_, cand_, pos_, valid_);
  const std::int64_t B = in.anchors.shape[0];
  float* loss = f32_out("loss", loss_, -1, "");
  float* lse_all = f32_out("lse_all", lse_all_, B, "anchors' rows");
  float* lse_pos = f32_out("lse_pos", lse_pos_, B, "anchors' rows");
  auto o = options(scale, 0.f, false, chunk_rows);
  py::gil_scoped_release nogil;
  *loss = static_cast<float>(solar::cpu::mpi_forward(mat(in.anchors), mat(in.cand), in.pos,
                                                     in.valid, in.cand.shape[0], o, lse_all,
                                                     lse_pos));
}

void mpi_bwd(py::handle anchors_, py::handle cand_, py::handle pos_, py::handle valid_,
             py::handle lse_all_, py::handle lse_pos_, py::handle danchors_, py::handle dcand_,
             py::handle dscale_, float dloss, float scale, std::int64_t chunk_rows) {
  MpiIn in = mpi_inputs(anchors_, cand_, pos_, valid_);
  const std::int64_t B = in.anchors.shape[0];
  f32_out("lse_all", lse_all_, B, "anchors' rows");  // checked; recomputed per chunk
  f32_out("lse_pos", lse_pos_, B, "anchors' rows");
  TensorArg da = like("danchors", danchors_, in.anchors), dc = like("dcand", dcand_, in.cand);
  float* dscale = f32_out("dscale", dscale_, -1, "");
  if (!std::isfinite(dloss)) solar::value_error("dloss", "must be finite");
  auto o = options(scale, 0.f, false, chunk_rows);
  py::gil_scoped_release nogil;
  solar::cpu::mpi_backward(mat(in.anchors), mat(in.cand), in.pos, in.valid, in.cand.shape[0], o,
                           dloss, mat(da), mat(dc), dscale);
}

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

void set_num_threads(int n) {
  if (n < 0) solar::value_error("n", "must be >= 0 (0: the OpenMP default)");
  solar::cpu::set_num_threads(n);
}

}  // namespace

PYBIND11_MODULE(_csrc_cpu, m) {
  using py::arg;
  m.doc() = "solar CPU C++ kernels (tensors passed as description tuples; see solar.ops._native)";
  m.def("build_info", &build_info, "Compile-time and run-time facts of this module.");
  m.def("select_isa", &select_isa, arg("name"),
        "Use one ISA build of the kernels ('auto', 'avx512', 'avx2', 'generic'); returns it.");
  m.def("set_num_threads", &set_num_threads, arg("n"), "Threads used by every kernel.");
  m.def("workspace_bytes", &solar::cpu::workspace_bytes,
        "Bytes of loss scratch memory held for reuse by the calling thread (at most 256 MiB).");
  m.def("release_workspace", &solar::cpu::release_workspace,
        "Free the loss scratch memory held for reuse by the calling thread.");
  m.def("masked_pool_fwd", &masked_pool_fwd, arg("x"), arg("w"), arg("y"), arg("stats"),
        arg("normalize"), arg("eps"));
  m.def("masked_pool_bwd", &masked_pool_bwd, arg("dy"), arg("x"), arg("w"), arg("y"),
        arg("stats"), arg("dx"), arg("dw").none(true), arg("normalize"), arg("eps"));
  m.def("contrastive_fwd", &contrastive_fwd, arg("a"), arg("b"), arg("neg").none(true),
        arg("loss"), arg("lse_row"), arg("lse_col"), arg("scale"), arg("bias"), arg("symmetric"),
        arg("chunk_rows") = 0);
  m.def("contrastive_bwd", &contrastive_bwd, arg("a"), arg("b"), arg("neg").none(true),
        arg("lse_row"), arg("lse_col"), arg("da"), arg("db"), arg("dneg").none(true),
        arg("dscale"), arg("dbias"), arg("dloss"), arg("scale"), arg("bias"), arg("symmetric"),
        arg("chunk_rows") = 0);
  m.def("gcl_fwd", &gcl_fwd, arg("ei"), arg("et"), arg("ef"), arg("loss"), arg("lse"),
        arg("scale"), arg("chunk_rows") = 0);
  m.def("gcl_bwd", &gcl_bwd, arg("ei"), arg("et"), arg("ef"), arg("lse"), arg("dei"), arg("det"),
        arg("def"), arg("dscale"), arg("dloss"), arg("scale"), arg("chunk_rows") = 0);
  m.def("mpi_fwd", &mpi_fwd, arg("anchors"), arg("cand"), arg("pos"), arg("valid"), arg("loss"),
        arg("lse_all"), arg("lse_pos"), arg("scale"), arg("chunk_rows") = 0);
  m.def("mpi_bwd", &mpi_bwd, arg("anchors"), arg("cand"), arg("pos"), arg("valid"),
        arg("lse_all"), arg("lse_pos"), arg("danchors"), arg("dcand"), arg("dscale"),
        arg("dloss"), arg("scale"), arg("chunk_rows") = 0);
}
