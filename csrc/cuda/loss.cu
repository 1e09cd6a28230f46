// Fused contrastive (CLIP-style, symmetric, shared hard negatives) and GCL 3B x 3B losses.
//
// Never materializes the logits.  Forward: one CTA per 64-row block streams all column tiles
// (S recomputed per tile on tensor cores), keeps an online row log-sum-exp, and writes per
// (row block, column) partial column statistics that a second kernel merges (memory
// 8 * ceil(B/64) * B bytes, e.g. 134 MB at B = 32k).  Backward recomputes S tile by tile, forms
// the logit gradient G in shared memory and applies it: a row kernel accumulates dA (and the
// scale/bias gradients), a column kernel dC; each CTA owns its output rows, so the fp32
// read-modify-write needs no atomics.  GCL needs only the row kernel: S is symmetric, so
// dE_r = scale * sum_j (G_rj + G_jr) E_j, with G_jr rebuilt from lse[j].
// All statistics and accumulations are fp32; exp runs as __expf (fast math).
#include <cmath>

#include "loss_tile.cuh"

namespace solar {
namespace cuda {
namespace {

// Workspace: picked logits [B] (GCL: [3B]), then for the symmetric contrastive loss the column
// partials [row blocks][B] as (max, sum) pairs from an even offset (float2 alignment).
__host__ __device__ __forceinline__ std::int64_t partials_offset(std::int64_t B) { return (B + 1) & ~std::int64_t(1); }

__device__ __forceinline__ float2* col_partials(const LossParams& P) {
  return reinterpret_cast<float2*>(P.workspace + partials_offset(P.B));
}

// One pass over the column tiles for 64 rows: lse_row, the picked logits (diagonal, or the two
// GCL positives summed) into workspace[i], and column partials (contrastive, symmetric).
template <typename T, bool GCL>
__global__ void __launch_bounds__(NT) fwd_rows_kernel(LossParams P) {
  __shared__ Smem<T> sm;
  const int tid = threadIdx.x, r = tid >> 1, h = tid & 1;
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.x) * BM, i = i0 + r;
  const float scale = *P.scale, bias = P.bias != nullptr ? *P.bias : 0.f;
  float m = kNegInf, s = 0.f, picked = 0.f;
  for (std::int64_t j0 = 0; j0 < P.N; j0 += BN) {
    s_tile(sm, P, i0, j0);
    float tm = kNegInf;
#pragma unroll 8
    for (int c = 0; c < 32; ++c) {
      const std::int64_t j = j0 + h * 32 + c;
      const float l = scale * sm.s[r][h * 32 + c] + bias;
      const bool ok = j < P.N && !(GCL && j == i);
      if (ok) tm = fmaxf(tm, l);
      if (!GCL && j == i) picked = l;
      if (GCL && ok && j % P.B == i % P.B) picked += l;
    }
    if (tm != kNegInf) {
      float ts = 0.f;
#pragma unroll 8
      for (int c = 0; c < 32; ++c) {
        const std::int64_t j = j0 + h * 32 + c;
        if (j < P.N && !(GCL && j == i)) ts += __expf(scale * sm.s[r][h * 32 + c] + bias - tm);
      }
      merge(m, s, tm, ts);
    }
    if (!GCL && P.symmetric) {  // column r of the tile over rows h*32 .. h*32+31
      const std::int64_t j = j0 + r;
      float cm = kNegInf, cs = 0.f;
      for (int k = 0; k < 32; ++k)
        if (i0 + h * 32 + k < P.M) cm = fmaxf(cm, scale * sm.s[h * 32 + k][r] + bias);
      if (cm != kNegInf)
        for (int k = 0; k < 32; ++k)
          if (i0 + h * 32 + k < P.M) cs += __expf(scale * sm.s[h * 32 + k][r] + bias - cm);
      merge(cm, cs, __shfl_xor_sync(0xffffffffu, cm, 1), __shfl_xor_sync(0xffffffffu, cs, 1));
      if (h == 0 && j < P.B) col_partials(P)[blockIdx.x * P.B + j] = make_float2(cm, cs);
    }
    __syncthreads();  // sm.s is rewritten by the next tile
  }
  merge(m, s, __shfl_xor_sync(0xffffffffu, m, 1), __shfl_xor_sync(0xffffffffu, s, 1));
  picked += __shfl_xor_sync(0xffffffffu, picked, 1);
  if (h == 0 && i < P.M) {
    P.lse_row[i] = m + __logf(s);
    P.workspace[i] = picked;
  }
}

__global__ void merge_cols_kernel(LossParams P, int row_blocks) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= P.B) return;
  const float2* part = col_partials(P);
  float m = kNegInf, s = 0.f;
  for (int rb = 0; rb < row_blocks; ++rb) {
    const float2 v = part[static_cast<std::int64_t>(rb) * P.B + j];
    merge(m, s, v.x, v.y);
  }
  P.lse_col[j] = m + __logf(s);
}

// loss = mean over rows of (lse - picked logit), halves of both directions when symmetric;
// GCL: sum_r (2 lse_r - pos_r) / (6B).
template <bool GCL>
__global__ void __launch_bounds__(1024) loss_kernel(LossParams P) {
  __shared__ float scratch[32];
  double acc = 0.0;
  for (std::int64_t i = threadIdx.x; i < P.M; i += blockDim.x) {
    if (GCL) {
      acc += 2.0 * P.lse_row[i] - P.workspace[i];
    } else {
      acc += static_cast<double>(P.lse_row[i]) - P.workspace[i];
      if (P.symmetric) acc += static_cast<double>(P.lse_col[i]) - P.workspace[i];
    }
  }
  const float total = block_sum(static_cast<float>(acc), scratch);
  if (threadIdx.x == 0)
    *P.loss = GCL ? total / (6.f * P.B) : total / P.B * (P.symmetric ? 0.5f : 1.f);
}

// Logit gradient (in units of the direction weight w) at (i, j) from the raw dot product sv;
// g_row is the part owned by row i (for the scale/bias gradients).
template <bool GCL>
__device__ __forceinline__ float g_value(const LossParams& P, float scale, float bias,
                                         std::int64_t i, std::int64_t j, float sv, float& g_row) {
  g_row = 0.f;
  if (i >= P.M || j >= P.N || (GCL && i == j)) return 0.f;
  const float l = scale * sv + bias;
  if (GCL) {
    const float pos = (j % P.B == i % P.B) ? 1.f : 0.f;
    g_row = 2.f * __expf(l - P.lse_row[i]) - pos;
    return g_row + 2.f * __expf(l - P.lse_row[j]) - pos;
  }
  const float diag = i == j ? 1.f : 0.f;
  float g = __expf(l - P.lse_row[i]) - diag;
  if (P.symmetric && j < P.B) g += __expf(l - P.lse_col[j]) - diag;
  g_row = g;
  return g;
}

template <typename T, bool GCL>
__device__ __forceinline__ void fill_g(Smem<T>& sm, const LossParams& P, float scale, float bias,
                                       std::int64_t i0, std::int64_t j0, float& gs, float& gsum) {
  const int r = threadIdx.x >> 1, h = threadIdx.x & 1;
#pragma unroll 4
  for (int c = 0; c < 32; ++c) {
    const int cc = h * 32 + c;
    const float sv = sm.s[r][cc];
    float g_row;
    const float g = g_value<GCL>(P, scale, bias, i0 + r, j0 + cc, sv, g_row);
    gs += g_row * sv;
    gsum += g_row;
    put_g(sm, r, cc, g);
  }
  __syncthreads();
}

__device__ __forceinline__ float direction_weight(const LossParams& P, bool gcl) {
  return gcl ? *P.dloss / (6.f * P.B) : *P.dloss / P.B * (P.symmetric ? 0.5f : 1.f);
}

// dA[rows of this CTA] += w * scale * G C; dscale += w * sum G*S, dbias += w * sum G.
template <typename T, bool GCL>
__global__ void __launch_bounds__(NT) bwd_rows_kernel(LossParams P) {
  __shared__ Smem<T> sm;
  __shared__ float scratch[32];
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.x) * BM;
  const float scale = *P.scale, bias = P.bias != nullptr ? *P.bias : 0.f;
  const float w = direction_weight(P, GCL);
  float gs = 0.f, gsum = 0.f;
  for (std::int64_t j0 = 0; j0 < P.N; j0 += BN) {
    s_tile(sm, P, i0, j0);
    fill_g<T, GCL>(sm, P, scale, bias, i0, j0, gs, gsum);
    tile_product<T, false>(sm, P, P.C, j0, P.dA, i0, P.M, w * scale);
  }
  gs = block_sum(gs, scratch);
  gsum = block_sum(gsum, scratch);
  if (threadIdx.x == 0) {
    atomicAdd(P.dscale, w * gs);
    if (!GCL) atomicAdd(P.dbias, w * gsum);
  }
}

// dC[columns of this CTA] += w * scale * G^T A (contrastive only).
template <typename T>
__global__ void __launch_bounds__(NT) bwd_cols_kernel(LossParams P) {
  __shared__ Smem<T> sm;
  const std::int64_t j0 = static_cast<std::int64_t>(blockIdx.x) * BN;
  const float scale = *P.scale, bias = P.bias != nullptr ? *P.bias : 0.f;
  const float w = direction_weight(P, false);
  float unused_s = 0.f, unused_g = 0.f;
  for (std::int64_t i0 = 0; i0 < P.M; i0 += BM) {
    s_tile(sm, P, i0, j0);
    fill_g<T, false>(sm, P, scale, bias, i0, j0, unused_s, unused_g);
    tile_product<T, true>(sm, P, P.A, i0, P.dC, j0, P.N, w * scale);
  }
}

template <typename T>
cudaError_t cl_forward(const LossParams& P, cudaStream_t st) {
  fwd_rows_kernel<T, false><<<blocks(P.M, BM), NT, 0, st>>>(P);
  if (P.symmetric) merge_cols_kernel<<<blocks(P.B, 256), 256, 0, st>>>(P, static_cast<int>(blocks(P.M, BM)));
  loss_kernel<false><<<1, 1024, 0, st>>>(P);
  return cudaGetLastError();
}

template <typename T>
cudaError_t cl_backward(const LossParams& P, cudaStream_t st) {
  bwd_rows_kernel<T, false><<<blocks(P.M, BM), NT, 0, st>>>(P);
  bwd_cols_kernel<T><<<blocks(P.N, BN), NT, 0, st>>>(P);
  return cudaGetLastError();
}

template <typename T>
cudaError_t g_forward(const LossParams& P, cudaStream_t st) {
  fwd_rows_kernel<T, true><<<blocks(P.M, BM), NT, 0, st>>>(P);
  loss_kernel<true><<<1, 1024, 0, st>>>(P);
  return cudaGetLastError();
}

template <typename T>
cudaError_t g_backward(const LossParams& P, cudaStream_t st) {
  bwd_rows_kernel<T, true><<<blocks(P.M, BM), NT, 0, st>>>(P);
  return cudaGetLastError();
}

}  // namespace

std::int64_t contrastive_workspace(std::int64_t B, bool symmetric) {
  const std::int64_t row_blocks = (B + BM - 1) / BM;
  return partials_offset(B) + (symmetric ? 2 * row_blocks * B : 0);
}

std::int64_t gcl_workspace(std::int64_t B) { return 3 * B; }

cudaError_t contrastive_forward(const LossParams& P, cudaStream_t st) { SOLAR_DISPATCH(cl_forward, P, st) }
cudaError_t contrastive_backward(const LossParams& P, cudaStream_t st) { SOLAR_DISPATCH(cl_backward, P, st) }
cudaError_t gcl_forward(const LossParams& P, cudaStream_t st) { SOLAR_DISPATCH(g_forward, P, st) }
cudaError_t gcl_backward(const LossParams& P, cudaStream_t st) { SOLAR_DISPATCH(g_backward, P, st) }

}  // namespace cuda
}  // namespace solar
