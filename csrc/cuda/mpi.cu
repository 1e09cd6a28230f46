// Fused multi-positive InfoNCE (SOLAR stage 2), on the tile machinery of the contrastive loss.
//
//   loss = mean_i [ lse_{k: valid_ik} l_ik - lse_{j: pos_ij} l_ij ],   l = scale * A C^T
//
// with explicit (M, N) byte masks pos and valid (the facade guarantees every row has a positive
// and pos implies valid).  The logits are never materialized.  Forward: one CTA per 64-row block
// streams all column tiles (S recomputed per tile on tensor cores, s_tile) and keeps two online
// log-sum-exps per row, over the valid and over the positive columns (lse_row = lse_all, lse_pos);
// a one-block kernel then takes the mean.  Backward recomputes S tile by tile and forms
//     G_ij = valid_ij exp(l_ij - lse_all_i) - pos_ij exp(l_ij - lse_pos_i)
// in shared memory (put_g), then, as for the contrastive loss, a row kernel accumulates
// dA += w scale G C and d scale += w sum G*S, and a column kernel dC += w scale G^T A, where
// w = dloss / M; each CTA owns its output rows, so the fp32 read-modify-write needs no atomics.
// Masks are read as bytes straight from global memory: each thread reads 32 consecutive bytes of
// its row per tile.  All statistics and accumulations are fp32; exp runs as __expf (fast math).
#include "loss_tile.cuh"

namespace solar {
namespace cuda {
namespace {

// One pass over the column tiles for 64 rows: lse over the valid and over the positive columns.
template <typename T>
__global__ void __launch_bounds__(NT) mpi_fwd_rows_kernel(LossParams P) {
  __shared__ Smem<T> sm;
  const int tid = threadIdx.x, r = tid >> 1, h = tid & 1;
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.x) * BM, i = i0 + r;
  const bool row_ok = i < P.M;
  const std::uint8_t* vrow = P.valid + (row_ok ? i : 0) * P.ldm;
  const std::uint8_t* prow = P.pos + (row_ok ? i : 0) * P.ldm;
  const float scale = *P.scale;
  float m = kNegInf, s = 0.f, pm = kNegInf, ps = 0.f;
  for (std::int64_t j0 = 0; j0 < P.N; j0 += BN) {
    s_tile(sm, P, i0, j0);
    float tm = kNegInf, tpm = kNegInf;
#pragma unroll 8
    for (int c = 0; c < 32; ++c) {
      const std::int64_t j = j0 + h * 32 + c;
      if (!row_ok || j >= P.N) continue;
      const float l = scale * sm.s[r][h * 32 + c];
      if (vrow[j]) tm = fmaxf(tm, l);
      if (prow[j]) tpm = fmaxf(tpm, l);
    }
    float ts = 0.f, tps = 0.f;
    if (tm != kNegInf || tpm != kNegInf) {
#pragma unroll 8
      for (int c = 0; c < 32; ++c) {
        const std::int64_t j = j0 + h * 32 + c;
        if (!row_ok || j >= P.N) continue;
        const float l = scale * sm.s[r][h * 32 + c];
        if (vrow[j]) ts += __expf(l - tm);
        if (prow[j]) tps += __expf(l - tpm);
      }
    }
    merge(m, s, tm, ts);
    merge(pm, ps, tpm, tps);
    __syncthreads();  // sm.s is rewritten by the next tile
  }
  // The two threads of a row hold halves of each tile's columns.
  merge(m, s, __shfl_xor_sync(0xffffffffu, m, 1), __shfl_xor_sync(0xffffffffu, s, 1));
  merge(pm, ps, __shfl_xor_sync(0xffffffffu, pm, 1), __shfl_xor_sync(0xffffffffu, ps, 1));
  if (h == 0 && row_ok) {
    P.lse_row[i] = m + __logf(s);
    P.lse_pos[i] = pm + __logf(ps);
  }
}

// loss = mean_i (lse_all_i - lse_pos_i).
__global__ void __launch_bounds__(1024) mpi_loss_kernel(LossParams P) {
  __shared__ float scratch[32];
  double acc = 0.0;
  for (std::int64_t i = threadIdx.x; i < P.M; i += blockDim.x)
    acc += static_cast<double>(P.lse_row[i]) - P.lse_pos[i];
  const float total = block_sum(static_cast<float>(acc), scratch);
  if (threadIdx.x == 0) *P.loss = total / P.M;
}

// G of the tile (in units of w) into shared memory; gs += sum_j G_ij S_ij over this thread's
// 32 columns of row r.  sm.s must hold the tile's raw dot products (s_tile).
template <typename T>
__device__ __forceinline__ void mpi_fill_g(Smem<T>& sm, const LossParams& P, float scale,
                                           std::int64_t i0, std::int64_t j0, float& gs) {
  const int r = threadIdx.x >> 1, h = threadIdx.x & 1;
  const std::int64_t i = i0 + r;
  const bool row_ok = i < P.M;
  const float lse_all = row_ok ? P.lse_row[i] : 0.f, lse_pos = row_ok ? P.lse_pos[i] : 0.f;
  const std::uint8_t* vrow = P.valid + (row_ok ? i : 0) * P.ldm;
  const std::uint8_t* prow = P.pos + (row_ok ? i : 0) * P.ldm;
#pragma unroll 4
  for (int c = 0; c < 32; ++c) {
    const int cc = h * 32 + c;
    const std::int64_t j = j0 + cc;
    const float sv = sm.s[r][cc];
    float g = 0.f;
    if (row_ok && j < P.N) {
      const float l = scale * sv;
      if (vrow[j]) g += __expf(l - lse_all);
      if (prow[j]) g -= __expf(l - lse_pos);
    }
    gs += g * sv;
    put_g(sm, r, cc, g);
  }
  __syncthreads();
}

// dA[rows of this CTA] += w * scale * G C; dscale += w * sum G*S.
template <typename T>
__global__ void __launch_bounds__(NT) mpi_bwd_rows_kernel(LossParams P) {
  __shared__ Smem<T> sm;
  __shared__ float scratch[32];
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.x) * BM;
  const float scale = *P.scale, w = *P.dloss / P.M;
  float gs = 0.f;
  for (std::int64_t j0 = 0; j0 < P.N; j0 += BN) {
    s_tile(sm, P, i0, j0);
    mpi_fill_g(sm, P, scale, i0, j0, gs);
    tile_product<T, false>(sm, P, P.C, j0, P.dA, i0, P.M, w * scale);
  }
  gs = block_sum(gs, scratch);
  if (threadIdx.x == 0) atomicAdd(P.dscale, w * gs);
}

// dC[columns of this CTA] += w * scale * G^T A.
template <typename T>
__global__ void __launch_bounds__(NT) mpi_bwd_cols_kernel(LossParams P) {
  __shared__ Smem<T> sm;
  const std::int64_t j0 = static_cast<std::int64_t>(blockIdx.x) * BN;
  const float scale = *P.scale, w = *P.dloss / P.M;
  float unused = 0.f;
  for (std::int64_t i0 = 0; i0 < P.M; i0 += BM) {
    s_tile(sm, P, i0, j0);
    mpi_fill_g(sm, P, scale, i0, j0, unused);
    tile_product<T, true>(sm, P, P.A, i0, P.dC, j0, P.N, w * scale);
  }
}

template <typename T>
cudaError_t m_forward(const LossParams& P, cudaStream_t st) {
  mpi_fwd_rows_kernel<T><<<blocks(P.M, BM), NT, 0, st>>>(P);
  mpi_loss_kernel<<<1, 1024, 0, st>>>(P);
  return cudaGetLastError();
}

template <typename T>
cudaError_t m_backward(const LossParams& P, cudaStream_t st) {
  mpi_bwd_rows_kernel<T><<<blocks(P.M, BM), NT, 0, st>>>(P);
  mpi_bwd_cols_kernel<T><<<blocks(P.N, BN), NT, 0, st>>>(P);
  return cudaGetLastError();
}

}  // namespace

cudaError_t mpi_forward(const LossParams& P, cudaStream_t st) { SOLAR_DISPATCH(m_forward, P, st) }
cudaError_t mpi_backward(const LossParams& P, cudaStream_t st) { SOLAR_DISPATCH(m_backward, P, st) }

}  // namespace cuda
}  // namespace solar
