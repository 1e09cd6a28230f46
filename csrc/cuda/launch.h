// Host-side interface of the CUDA kernels: plain parameter structs and launchers.
// Pointers are device pointers; every launcher enqueues on `stream` and returns the launch error.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace solar {
namespace cuda {

enum ElemType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// Masked pooling.  x: (B, L, D) strides (sxb, sxl, 1); w: fp32 (B, L) strides (swb, swl);
// y: (B, D) contiguous; stats: fp32 (B, 2); dy: (B, D) contiguous; dx: strides (sdxb, sdxl, 1);
// dw: fp32 (B, L) contiguous or null.  vec: x/dx rows allow 16-byte vector access.
struct PoolParams {
  const void* x = nullptr;
  int type = kF32;
  std::int64_t B = 0, L = 0, D = 0, sxb = 0, sxl = 0;
  const float* w = nullptr;
  std::int64_t swb = 0, swl = 0;
  void* y = nullptr;
  float* stats = nullptr;
  const void* dy = nullptr;
  void* dx = nullptr;
  std::int64_t sdxb = 0, sdxl = 0;
  float* dw = nullptr;
  bool normalize = true;
  float eps = 1e-12f;
  bool vec = false;
};

cudaError_t pool_forward(const PoolParams& p, cudaStream_t stream);
cudaError_t pool_backward(const PoolParams& p, cudaStream_t stream);

// Up to three contiguous (n_k, D) matrices stacked by rows.
struct Rows {
  const void* p[3] = {nullptr, nullptr, nullptr};
  std::int64_t n[3] = {0, 0, 0};
};
struct OutRows {
  float* p[3] = {nullptr, nullptr, nullptr};
  std::int64_t n[3] = {0, 0, 0};
};

// Tile edge of the loss kernels (rows and columns per CTA tile).
constexpr int kLossTile = 64;

// Contrastive: A = a (M = B rows), C = [b; neg] (N = B + K columns).
// GCL: A = C = [ei; et; ef] (M = N = 3B).  scale, bias (nullable) and dloss are device scalars.
struct LossParams {
  int type = kF32;
  std::int64_t D = 0, M = 0, N = 0, B = 0;
  Rows A, C;
  const float* scale = nullptr;
  const float* bias = nullptr;
  const float* dloss = nullptr;
  bool symmetric = true;
  bool vec = false;          // every row allows 16-byte vector loads
  // forward outputs and workspace
  float* loss = nullptr;
  float* lse_row = nullptr;  // M
  float* lse_col = nullptr;  // B (contrastive, symmetric)
  float* workspace = nullptr;
  // backward outputs: fp32 accumulators, zeroed by the caller
  OutRows dA, dC;            // GCL: dA only (3B rows)
  float* grads = nullptr;    // [dscale, dbias]
};

// Workspace (fp32 values) the forward needs.
std::int64_t contrastive_workspace(std::int64_t B, bool symmetric);
std::int64_t gcl_workspace(std::int64_t B);

cudaError_t contrastive_forward(const LossParams& p, cudaStream_t stream);
cudaError_t contrastive_backward(const LossParams& p, cudaStream_t stream);
cudaError_t gcl_forward(const LossParams& p, cudaStream_t stream);
cudaError_t gcl_backward(const LossParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace solar
