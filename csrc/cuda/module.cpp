// pybind11 entry point of solar._csrc_cuda (CUDA C++ kernels).
//
// The binding signature is the one of common/bindings.h, shared with the CPU module.  Tensors
// arrive as description tuples (common/args.h) on one CUDA device; scale, bias and the incoming
// gradient stay on the device (no host synchronization).  Every argument is checked before
// anything is launched on the caller's stream (passed as an int, e.g.
// torch.cuda.current_stream().cuda_stream).  The module links the CUDA runtime statically and
// needs only the driver at run time.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "common/args.h"
#include "common/bindings.h"
#include "cuda/launch.h"

namespace py = pybind11;
using solar::DType;
using solar::TensorArg;

namespace {

namespace sc = solar::cuda;

TensorArg arg(const char* name, py::handle h, int ndim) {
  return solar::parse_tensor(name, h, "cuda", ndim);
}

int elem_type(const TensorArg& t) {
  return t.dtype == DType::BF16 ? sc::kBF16 : (t.dtype == DType::F16 ? sc::kF16 : sc::kF32);
}

bool aligned16(const TensorArg& t) { return t.ptr % 16 == 0; }

// Sets the device of the tensors for the call and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&prev_) != cudaSuccess) prev_ = -1;
    if (device >= 0 && device != prev_) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (prev_ >= 0) cudaSetDevice(prev_);
  }
  static void check(cudaError_t err, const std::string& what) {
    if (err != cudaSuccess) throw std::runtime_error(what + ": " + cudaGetErrorString(err));
  }

 private:
  int prev_ = -1;
};

cudaStream_t stream_of(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// A contiguous embedding matrix (rows, D) in fp32/bf16/fp16 on the device of `ref` (if given).
TensorArg embeddings(const char* name, py::handle h, const TensorArg* ref) {
  TensorArg t = arg(name, h, 2);
  solar::expect_dtype(t, {DType::F32, DType::BF16, DType::F16});
  solar::expect_contiguous(t);
  if (ref) {
    solar::expect_same_dtype(t, *ref);
    solar::expect_same_device(t, *ref);
    solar::expect_size(t, 1, ref->shape[1], ref->name + "'s feature size");
  }
  return t;
}

// A contiguous fp32 tensor of the given shape on ref's device (n1 < 0: 0-dim; n2 < 0: 1-D).
float* f32(const char* name, py::handle h, const TensorArg& ref, std::int64_t n1,
           std::int64_t n2 = -1) {
  const int ndim = n1 < 0 ? 0 : (n2 < 0 ? 1 : 2);
  TensorArg t = arg(name, h, ndim);
  solar::expect_dtype(t, {DType::F32});
  solar::expect_same_device(t, ref);
  if (ndim >= 1) solar::expect_size(t, 0, n1, "the expected size");
  if (ndim == 2) solar::expect_size(t, 1, n2, "the expected size");
  solar::expect_contiguous(t);
  return t.data<float>();
}

// ----------------------------------------------------------------------------- masked pooling
struct PoolIn {
  TensorArg x;
  sc::PoolParams p;
};

PoolIn pool_inputs(py::handle x_, py::handle w_, py::handle y_, py::handle stats_, bool normalize,
                   float eps) {
  PoolIn in{arg("x", x_, 3), {}};
  const TensorArg& x = in.x;
  solar::expect_dtype(x, {DType::F32, DType::BF16, DType::F16});
  solar::expect_nonempty(x);
  solar::expect_last_contiguous(x);
  TensorArg w = arg("w", w_, 2);
  solar::expect_dtype(w, {DType::F32});
  solar::expect_same_device(w, x);
  solar::expect_size(w, 0, x.shape[0], "x's batch");
  solar::expect_size(w, 1, x.shape[1], "x's length");
  TensorArg y = arg("y", y_, 2);
  solar::expect_same_dtype(y, x);
  solar::expect_same_device(y, x);
  solar::expect_size(y, 0, x.shape[0], "x's batch");
  solar::expect_size(y, 1, x.shape[2], "x's feature size");
  solar::expect_contiguous(y);
  if (!(eps >= 0.f) || eps != eps) solar::value_error("eps", "must be >= 0");
  auto& p = in.p;
  p.x = reinterpret_cast<const void*>(x.ptr);
  p.type = elem_type(x);
  p.B = x.shape[0]; p.L = x.shape[1]; p.D = x.shape[2];
  p.sxb = x.stride[0]; p.sxl = x.stride[1];
  p.w = w.data<const float>(); p.swb = w.stride[0]; p.swl = w.stride[1];
  p.y = reinterpret_cast<void*>(y.ptr);
  p.stats = f32("stats", stats_, x, p.B, 2);
  p.normalize = normalize;
  p.eps = eps;
  const std::int64_t V = x.dtype == DType::F32 ? 4 : 8;
  p.vec = aligned16(x) && p.D % V == 0 && p.sxb % V == 0 && p.sxl % V == 0;
  return in;
}

void masked_pool_fwd(py::handle x, py::handle w, py::handle y, py::handle stats, bool normalize,
                     float eps, std::uintptr_t stream) {
  PoolIn in = pool_inputs(x, w, y, stats, normalize, eps);
  DeviceGuard g(in.x.device_index);
  DeviceGuard::check(sc::pool_forward(in.p, stream_of(stream)), "masked_pool_fwd launch");
}

void masked_pool_bwd(py::handle dy_, py::handle x_, py::handle w_, py::handle y_,
                     py::handle stats_, py::handle dx_, py::object dw_, bool normalize, float eps,
                     std::uintptr_t stream) {
  PoolIn in = pool_inputs(x_, w_, y_, stats_, normalize, eps);
  auto& p = in.p;
  TensorArg dy = arg("dy", dy_, 2);
  solar::expect_same_dtype(dy, in.x);
  solar::expect_same_device(dy, in.x);
  solar::expect_size(dy, 0, p.B, "x's batch");
  solar::expect_size(dy, 1, p.D, "x's feature size");
  solar::expect_contiguous(dy);
  TensorArg dx = arg("dx", dx_, 3);
  solar::expect_same_dtype(dx, in.x);
  solar::expect_same_device(dx, in.x);
  for (int d = 0; d < 3; ++d) solar::expect_size(dx, d, in.x.shape[d], "x's shape");
  solar::expect_last_contiguous(dx);
  p.dy = reinterpret_cast<const void*>(dy.ptr);
  p.dx = reinterpret_cast<void*>(dx.ptr);
  p.sdxb = dx.stride[0]; p.sdxl = dx.stride[1];
  const std::int64_t V = in.x.dtype == DType::F32 ? 4 : 8;
  p.vec = p.vec && aligned16(dx) && p.sdxb % V == 0 && p.sdxl % V == 0;
  if (!dw_.is_none()) p.dw = f32("dw", dw_, in.x, p.B, p.L);
  DeviceGuard g(in.x.device_index);
  DeviceGuard::check(sc::pool_backward(p, stream_of(stream)), "masked_pool_bwd launch");
}

// ----------------------------------------------------------------------------- losses
bool rows_vec(const sc::Rows& r, std::int64_t D, int type) {
  const std::int64_t V = type == sc::kF32 ? 4 : 8;
  if (D % V != 0) return false;
  for (int k = 0; k < 3; ++k)
    if (r.n[k] > 0 && reinterpret_cast<std::uintptr_t>(r.p[k]) % 16 != 0) return false;
  return true;
}

void set_scalars(sc::LossParams& P, const TensorArg& ref, py::handle scale, py::object bias) {
  P.scale = f32("scale", scale, ref, -1);
  P.bias = bias.is_none() ? nullptr : f32("bias", bias, ref, -1);
}

struct ContrastiveIn {
  TensorArg a;
  sc::LossParams P;
};

ContrastiveIn contrastive_inputs(py::handle a_, py::handle b_, py::object neg_, py::handle scale,
                                 py::object bias, bool symmetric) {
  ContrastiveIn in{embeddings("a", a_, nullptr), {}};
  solar::expect_nonempty(in.a);
  TensorArg b = embeddings("b", b_, &in.a);
  solar::expect_size(b, 0, in.a.shape[0], "a's batch");
  auto& P = in.P;
  P.type = elem_type(in.a);
  P.D = in.a.shape[1];
  P.B = P.M = in.a.shape[0];
  P.A.p[0] = reinterpret_cast<const void*>(in.a.ptr); P.A.n[0] = P.B;
  P.C.p[0] = reinterpret_cast<const void*>(b.ptr); P.C.n[0] = P.B;
  if (!neg_.is_none()) {
    TensorArg n = embeddings("neg", neg_, &in.a);
    P.C.p[1] = reinterpret_cast<const void*>(n.ptr); P.C.n[1] = n.shape[0];
  }
  P.N = P.C.n[0] + P.C.n[1];
  P.symmetric = symmetric;
  P.vec = rows_vec(P.A, P.D, P.type) && rows_vec(P.C, P.D, P.type);
  set_scalars(P, in.a, scale, bias);
  return in;
}

void contrastive_fwd(py::handle a, py::handle b, py::object neg, py::handle scale, py::object bias,
                     py::handle loss, py::handle lse_row, py::handle lse_col, py::handle workspace,
                     bool symmetric, std::uintptr_t stream) {
  ContrastiveIn in = contrastive_inputs(a, b, neg, scale, bias, symmetric);
  auto& P = in.P;
  P.loss = f32("loss", loss, in.a, -1);
  P.lse_row = f32("lse_row", lse_row, in.a, P.B);
  P.lse_col = f32("lse_col", lse_col, in.a, symmetric ? P.B : 0);
  P.workspace = f32("workspace", workspace, in.a, sc::contrastive_workspace(P.B, symmetric));
  DeviceGuard g(in.a.device_index);
  DeviceGuard::check(sc::contrastive_forward(P, stream_of(stream)), "contrastive_fwd launch");
}

void contrastive_bwd(py::handle a, py::handle b, py::object neg, py::handle scale, py::object bias,
                     py::handle dloss, py::handle lse_row, py::handle lse_col, py::handle da,
                     py::handle db, py::object dneg, py::handle dscale, py::handle dbias,
                     bool symmetric, std::uintptr_t stream) {
  ContrastiveIn in = contrastive_inputs(a, b, neg, scale, bias, symmetric);
  auto& P = in.P;
  P.dloss = f32("dloss", dloss, in.a, -1);
  P.lse_row = f32("lse_row", lse_row, in.a, P.B);
  P.lse_col = f32("lse_col", lse_col, in.a, symmetric ? P.B : 0);
  P.dA.p[0] = f32("da", da, in.a, P.B, P.D); P.dA.n[0] = P.B;
  P.dC.p[0] = f32("db", db, in.a, P.B, P.D); P.dC.n[0] = P.B;
  if (P.C.n[1] > 0) {
    if (dneg.is_none()) solar::value_error("dneg", "required when neg is given");
    P.dC.p[1] = f32("dneg", dneg, in.a, P.C.n[1], P.D); P.dC.n[1] = P.C.n[1];
  }
  P.dscale = f32("dscale", dscale, in.a, -1);
  P.dbias = f32("dbias", dbias, in.a, -1);
  DeviceGuard g(in.a.device_index);
  DeviceGuard::check(sc::contrastive_backward(P, stream_of(stream)), "contrastive_bwd launch");
}

struct GclIn {
  TensorArg ei;
  sc::LossParams P;
};

GclIn gcl_inputs(py::handle ei_, py::handle et_, py::handle ef_, py::handle scale) {
  GclIn in{embeddings("ei", ei_, nullptr), {}};
  solar::expect_nonempty(in.ei);
  TensorArg et = embeddings("et", et_, &in.ei), ef = embeddings("ef", ef_, &in.ei);
  solar::expect_size(et, 0, in.ei.shape[0], "ei's batch");
  solar::expect_size(ef, 0, in.ei.shape[0], "ei's batch");
  auto& P = in.P;
  P.type = elem_type(in.ei);
  P.D = in.ei.shape[1];
  P.B = in.ei.shape[0];
  P.M = P.N = 3 * P.B;
  const TensorArg* parts[3] = {&in.ei, &et, &ef};
  for (int k = 0; k < 3; ++k) {
    P.A.p[k] = reinterpret_cast<const void*>(parts[k]->ptr);
    P.A.n[k] = P.B;
  }
  P.C = P.A;
  P.symmetric = false;
  P.vec = rows_vec(P.A, P.D, P.type);
  set_scalars(P, in.ei, scale, py::none());
  return in;
}

void gcl_fwd(py::handle ei, py::handle et, py::handle ef, py::handle scale, py::handle loss,
             py::handle lse, py::handle workspace, std::uintptr_t stream) {
  GclIn in = gcl_inputs(ei, et, ef, scale);
  auto& P = in.P;
  P.loss = f32("loss", loss, in.ei, -1);
  P.lse_row = f32("lse", lse, in.ei, P.M);
  P.workspace = f32("workspace", workspace, in.ei, sc::gcl_workspace(P.B));
  DeviceGuard g(in.ei.device_index);
  DeviceGuard::check(sc::gcl_forward(P, stream_of(stream)), "gcl_fwd launch");
}

void gcl_bwd(py::handle ei, py::handle et, py::handle ef, py::handle scale, py::handle dloss,
             py::handle lse, py::handle dei, py::handle det, py::handle def, py::handle dscale,
             std::uintptr_t stream) {
  GclIn in = gcl_inputs(ei, et, ef, scale);
  auto& P = in.P;
  P.dloss = f32("dloss", dloss, in.ei, -1);
  P.lse_row = f32("lse", lse, in.ei, P.M);
  const char* names[3] = {"dei", "det", "def"};
  py::handle outs[3] = {dei, det, def};
  for (int k = 0; k < 3; ++k) {  // dA = [dei; det; def], the 3B rows of E
    P.dA.p[k] = f32(names[k], outs[k], in.ei, P.B, P.D);
    P.dA.n[k] = P.B;
  }
  P.dscale = f32("dscale", dscale, in.ei, -1);
  DeviceGuard g(in.ei.device_index);
  DeviceGuard::check(sc::gcl_backward(P, stream_of(stream)), "gcl_bwd launch");
}

// ----------------------------------------------------------------------------- multi-positive
struct MpiIn {
  TensorArg anchors;
  sc::LossParams P;
};

MpiIn mpi_inputs(py::handle anchors_, py::handle cand_, py::handle pos_, py::handle valid_,
                 py::handle scale) {
  MpiIn in{embeddings("anchors", anchors_, nullptr), {}};
  solar::expect_nonempty(in.anchors);
  TensorArg cand = embeddings("cand", cand_, &in.anchors);
  solar::expect_nonempty(cand);
  auto& P = in.P;
  P.type = elem_type(in.anchors);
  P.D = in.anchors.shape[1];
  P.B = P.M = in.anchors.shape[0];
  P.N = cand.shape[0];
  P.A.p[0] = reinterpret_cast<const void*>(in.anchors.ptr); P.A.n[0] = P.M;
  P.C.p[0] = reinterpret_cast<const void*>(cand.ptr); P.C.n[0] = P.N;
  const char* names[2] = {"pos", "valid"};
  py::handle hs[2] = {pos_, valid_};
  const std::uint8_t* ptrs[2];
  for (int k = 0; k < 2; ++k) {
    TensorArg m = arg(names[k], hs[k], 2);
    solar::expect_dtype(m, {DType::Bool, DType::U8});
    solar::expect_same_device(m, in.anchors);
    solar::expect_size(m, 0, P.M, "anchors' rows");
    solar::expect_size(m, 1, P.N, "cand's rows");
    solar::expect_contiguous(m);
    ptrs[k] = m.data<const std::uint8_t>();
  }
  P.pos = ptrs[0];
  P.valid = ptrs[1];
  P.ldm = P.N;
  P.symmetric = false;
  P.vec = rows_vec(P.A, P.D, P.type) && rows_vec(P.C, P.D, P.type);
  set_scalars(P, in.anchors, scale, py::none());
  return in;
}

void mpi_fwd(py::handle anchors, py::handle cand, py::handle pos, py::handle valid,
             py::handle scale, py::handle loss, py::handle lse_all, py::handle lse_pos,
             std::uintptr_t stream) {
  MpiIn in = mpi_inputs(anchors, cand, pos, valid, scale);
  auto& P = in.P;
  P.loss = f32("loss", loss, in.anchors, -1);
  P.lse_row = f32("lse_all", lse_all, in.anchors, P.M);
  P.lse_pos = f32("lse_pos", lse_pos, in.anchors, P.M);
  DeviceGuard g(in.anchors.device_index);
  DeviceGuard::check(sc::mpi_forward(P, stream_of(stream)), "mpi_fwd launch");
}

void mpi_bwd(py::handle anchors, py::handle cand, py::handle pos, py::handle valid,
             py::handle scale, py::handle dloss, py::handle lse_all, py::handle lse_pos,
             py::handle danchors, py::handle dcand, py::handle dscale, std::uintptr_t stream) {
  MpiIn in = mpi_inputs(anchors, cand, pos, valid, scale);
  auto& P = in.P;
  P.dloss = f32("dloss", dloss, in.anchors, -1);
  P.lse_row = f32("lse_all", lse_all, in.anchors, P.M);
  P.lse_pos = f32("lse_pos", lse_pos, in.anchors, P.M);
  P.dA.p[0] = f32("danchors", danchors, in.anchors, P.M, P.D); P.dA.n[0] = P.M;
  P.dC.p[0] = f32("dcand", dcand, in.anchors, P.N, P.D); P.dC.n[0] = P.N;
  P.dscale = f32("dscale", dscale, in.anchors, -1);
  DeviceGuard g(in.anchors.device_index);
  DeviceGuard::check(sc::mpi_backward(P, stream_of(stream)), "mpi_bwd launch");
}

// ----------------------------------------------------------------------------- module facts
py::dict build_info() {
  py::dict d;
  int runtime = 0, driver = 0, count = 0;
  cudaRuntimeGetVersion(&runtime);
  d["runtime_version"] = runtime;
  d["driver_version"] = cudaDriverGetVersion(&driver) == cudaSuccess ? driver : 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  d["device_count"] = err == cudaSuccess ? count : 0;
  d["device_error"] = err == cudaSuccess ? "" : cudaGetErrorString(err);
  d["archs"] = SOLAR_CUDA_ARCHS_STR;
  d["loss_tile"] = sc::kLossTile;
  return d;
}

}  // namespace

PYBIND11_MODULE(_csrc_cuda, m) {
  m.doc() = "solar CUDA C++ kernels (tensors passed as description tuples; see solar.ops._native)";
  solar::def_ops(m, solar::OpTable{masked_pool_fwd, masked_pool_bwd, contrastive_fwd,
                                   contrastive_bwd, gcl_fwd, gcl_bwd, mpi_fwd, mpi_bwd,
                                   sc::contrastive_workspace, sc::gcl_workspace, build_info});
}
