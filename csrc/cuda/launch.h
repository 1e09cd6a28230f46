// Host-side interface of the CUDA kernels: plain parameter structs and launchers.
// Pointers are device pointers; every launcher enqueues on `stream` and returns the launch error.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common/pool_args.h"

namespace solar {
namespace cuda {

using ::solar::ElemType;
using ::solar::kBF16;
using ::solar::kF16;
using ::solar::kF32;

// Masked pooling (fields in common/pool_args.h); vec: x/dx rows allow 16-byte vector access.
struct PoolParams : PoolArgsBase {
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
// GCL: A = C = [ei; et; ef] (M = N = 3B).
// Multi-positive: A = anchors (M = B rows), C = cand (N columns), pos/valid (M, N) byte masks.
// scale, bias (nullable) and dloss are device scalars.
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
  float* lse_pos = nullptr;  // M (multi-positive: log-sum-exp over the positives)
  float* workspace = nullptr;
  // multi-positive masks (bool/uint8), row i at pos + i * ldm
  const std::uint8_t* pos = nullptr;
  const std::uint8_t* valid = nullptr;
  std::int64_t ldm = 0;
  // backward outputs: fp32 accumulators, zeroed by the caller
  OutRows dA, dC;            // GCL: dA only ([dei; det; def], 3B rows)
  float* dscale = nullptr;
  float* dbias = nullptr;    // contrastive only
};

// Workspace (fp32 values) the forward needs.
std::int64_t contrastive_workspace(std::int64_t B, bool symmetric);
std::int64_t gcl_workspace(std::int64_t B);

cudaError_t contrastive_forward(const LossParams& p, cudaStream_t stream);
cudaError_t contrastive_backward(const LossParams& p, cudaStream_t stream);
cudaError_t gcl_forward(const LossParams& p, cudaStream_t stream);
cudaError_t gcl_backward(const LossParams& p, cudaStream_t stream);
cudaError_t mpi_forward(const LossParams& p, cudaStream_t stream);
cudaError_t mpi_backward(const LossParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace solar
