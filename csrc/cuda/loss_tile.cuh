// Tile machinery of the fused contrastive / GCL kernels.
//
// A CTA of 128 threads (4 warps) works on 64 x 64 tiles of the logits S = A C^T:
//   * s_tile: S tile in fp32 shared memory.  bf16/fp16 use tensor cores through WMMA
//     (16x16x16, fp32 accumulation; each warp owns a 32x32 quarter); fp32 uses CUDA cores
//     (each thread an 8x4 register block).  K (the feature dim) is streamed in steps of 32.
//   * tile_product: out(64 x 64 slice of D) = G(64x64) @ src or G^T @ src, accumulated by the
//     caller into fp32 global rows with a read-modify-write (rows owned by this CTA, no atomics).
// Shared memory stays below the 48 KB static limit for every type (see Smem).
#pragma once

#include <mma.h>

#include <cmath>

#include <type_traits>

#include "common.cuh"
#include "launch.h"

namespace solar {
namespace cuda {

constexpr int BM = kLossTile, BN = kLossTile, BD = 64, BK = 32, NT = 128;

constexpr float kNegInf = -INFINITY;

// Merges the (max, sum) pair (tm, ts) into (m, s).
__device__ __forceinline__ void merge(float& m, float& s, float tm, float ts) {
  const float nm = fmaxf(m, tm);
  if (nm == kNegInf) return;
  s = s * __expf(m - nm) + ts * __expf(tm - nm);
  m = nm;
}

inline unsigned blocks(std::int64_t n, std::int64_t per) {
  return static_cast<unsigned>((n + per - 1) / per);
}

#define SOLAR_DISPATCH(fn, P, st)                               \
  switch ((P).type) {                                           \
    case kBF16: return fn<__nv_bfloat16>((P), (st));            \
    case kF16: return fn<__half>((P), (st));                    \
    default: return fn<float>((P), (st));                       \
  }

template <typename T>
constexpr bool kTensorCores = !std::is_same<T, float>::value;

template <typename T>
struct Smem {
  // Row pitches: +8 halves keeps WMMA pointers 32-byte aligned and spreads banks;
  // +1 float makes the CUDA-core path conflict-free.
  static constexpr int LDK = BK + (kTensorCores<T> ? 8 : 1);
  static constexpr int LDG = BD + (kTensorCores<T> ? 8 : 1);
  static constexpr int LDS = BN + 4;
  struct MM { T a[BM][LDK]; T c[BN][LDK]; };
  struct PVh { T g[BM][LDG]; T src[BN][LDG]; };   // G in the input type for the tensor cores
  struct PVf { T src[BN][LDG]; };                 // fp32: G stays in s
  using PV = typename std::conditional<kTensorCores<T>, PVh, PVf>::type;
  union U { MM mm; PV pv; };
  alignas(128) U u;
  alignas(128) float s[BM][LDS];
};

__device__ __forceinline__ std::int64_t rows_total(const Rows& r) { return r.n[0] + r.n[1] + r.n[2]; }

template <typename T>
__device__ __forceinline__ const T* row_ptr(const Rows& r, std::int64_t i, std::int64_t D) {
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    if (i < r.n[k]) return static_cast<const T*>(r.p[k]) + i * D;
    i -= r.n[k];
  }
  return nullptr;
}

__device__ __forceinline__ float* out_row(const OutRows& r, std::int64_t i, std::int64_t D) {
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    if (i < r.n[k]) return r.p[k] + i * D;
    i -= r.n[k];
  }
  return nullptr;
}

// dst[r][c] = rows[row0 + r][k0 + c] for r < 64, c < COLS (zero outside the matrix).
template <typename T, int COLS, int LD>
__device__ __forceinline__ void load_tile(T (*dst)[LD], const Rows& rows, std::int64_t row0,
                                          std::int64_t k0, std::int64_t D, bool vec) {
  constexpr int VEC = 16 / sizeof(T), PER_ROW = COLS / VEC;
  for (int e = threadIdx.x; e < 64 * PER_ROW; e += NT) {
    const int r = e / PER_ROW, c = (e % PER_ROW) * VEC;
    const T* src = row_ptr<T>(rows, row0 + r, D);
    const std::int64_t k = k0 + c;
    uint4 raw;
    T* vals = reinterpret_cast<T*>(&raw);
    if (src != nullptr && vec && k + VEC <= D) {
      raw = *reinterpret_cast<const uint4*>(src + k);
    } else {
#pragma unroll
      for (int v = 0; v < VEC; ++v)
        vals[v] = (src != nullptr && k + v < D) ? src[k + v] : from_f<T>(0.f);
    }
    if constexpr (sizeof(T) == 2) {
      *reinterpret_cast<uint4*>(&dst[r][c]) = raw;  // row pitch keeps 16-byte alignment
    } else {
#pragma unroll
      for (int v = 0; v < VEC; ++v) dst[r][c + v] = vals[v];
    }
  }
}

// sm.s = A[i0 : i0+64] . C[j0 : j0+64]^T (raw dot products, fp32).  Ends synchronized.
template <typename T>
__device__ void s_tile(Smem<T>& sm, const LossParams& P, std::int64_t i0, std::int64_t j0) {
  using namespace nvcuda;
  constexpr int LDK = Smem<T>::LDK, LDS = Smem<T>::LDS;
  if constexpr (kTensorCores<T>) {
    const int warp = threadIdx.x >> 5, wr = warp >> 1, wc = warp & 1;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
    for (std::int64_t k0 = 0; k0 < P.D; k0 += BK) {
      load_tile<T, BK, LDK>(sm.u.mm.a, P.A, i0, k0, P.D, P.vec);
      load_tile<T, BK, LDK>(sm.u.mm.c, P.C, j0, k0, P.D, P.vec);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &sm.u.mm.a[wr * 32 + i * 16][kk], LDK);
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &sm.u.mm.c[wc * 32 + j * 16][kk], LDK);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(&sm.s[wr * 32 + i * 16][wc * 32 + j * 16], acc[i][j], LDS,
                                wmma::mem_row_major);
  } else {
    const int tr = threadIdx.x >> 4, tc = threadIdx.x & 15;
    float acc[8][4] = {};
    for (std::int64_t k0 = 0; k0 < P.D; k0 += BK) {
      load_tile<T, BK, LDK>(sm.u.mm.a, P.A, i0, k0, P.D, P.vec);
      load_tile<T, BK, LDK>(sm.u.mm.c, P.C, j0, k0, P.D, P.vec);
      __syncthreads();
#pragma unroll 4
      for (int k = 0; k < BK; ++k) {
        float av[8], cv[4];
#pragma unroll
        for (int i = 0; i < 8; ++i) av[i] = to_f(sm.u.mm.a[tr + 8 * i][k]);
#pragma unroll
        for (int j = 0; j < 4; ++j) cv[j] = to_f(sm.u.mm.c[tc + 16 * j][k]);
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], cv[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) sm.s[tr + 8 * i][tc + 16 * j] = acc[i][j];
  }
  __syncthreads();
}

// Stores one G value of the tile (row r, column c) where tile_product reads it.
template <typename T>
__device__ __forceinline__ void put_g(Smem<T>& sm, int r, int c, float g) {
  if constexpr (kTensorCores<T>) sm.u.pv.g[r][c] = from_f<T>(g);
  else sm.s[r][c] = g;  // in place: each element is read and written by one thread
}

// For d0 in steps of 64: dst[out0 + o][d0 + x] += f * sum_k G'[o][k] * src[src0 + k][d0 + x]
// with G' = G (TRANSPOSE = false, o a row of the tile) or G^T (o a column of the tile).
// G must be in place (put_g) and the block synchronized before the call.
template <typename T, bool TRANSPOSE>
__device__ void tile_product(Smem<T>& sm, const LossParams& P, const Rows& src,
                             std::int64_t src0, const OutRows& dst, std::int64_t out0,
                             std::int64_t nout, float f) {
  using namespace nvcuda;
  constexpr int LDG = Smem<T>::LDG, LDS = Smem<T>::LDS;
  for (std::int64_t d0 = 0; d0 < P.D; d0 += BD) {
    load_tile<T, BD, LDG>(sm.u.pv.src, src, src0, d0, P.D, P.vec);
    __syncthreads();
    if constexpr (kTensorCores<T>) {
      const int warp = threadIdx.x >> 5, wr = warp >> 1, wc = warp & 1;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
      using ALayout = typename std::conditional<TRANSPOSE, wmma::col_major, wmma::row_major>::type;
#pragma unroll
      for (int kk = 0; kk < BN; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, ALayout> fa[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const T* ptr = TRANSPOSE ? &sm.u.pv.g[kk][wr * 32 + i * 16] : &sm.u.pv.g[wr * 32 + i * 16][kk];
          wmma::load_matrix_sync(fa[i], ptr, LDG);
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &sm.u.pv.src[kk][wc * 32 + j * 16], LDG);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
          wmma::store_matrix_sync(&sm.s[wr * 32 + i * 16][wc * 32 + j * 16], acc[i][j], LDS,
                                  wmma::mem_row_major);
      __syncthreads();
      for (int e = threadIdx.x; e < BM * BD; e += NT) {
        const int o = e / BD, x = e % BD;
        const std::int64_t row = out0 + o, d = d0 + x;
        if (row < nout && d < P.D) out_row(dst, row, P.D)[d] += f * sm.s[o][x];
      }
    } else {
      const int tr = threadIdx.x >> 4, tc = threadIdx.x & 15;
      float acc[8][4] = {};
#pragma unroll 4
      for (int k = 0; k < BN; ++k) {
        float gv[8], sv[4];
#pragma unroll
        for (int i = 0; i < 8; ++i) gv[i] = TRANSPOSE ? sm.s[k][tr + 8 * i] : sm.s[tr + 8 * i][k];
#pragma unroll
        for (int j = 0; j < 4; ++j) sv[j] = to_f(sm.u.pv.src[k][tc + 16 * j]);
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(gv[i], sv[j], acc[i][j]);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const std::int64_t row = out0 + tr + 8 * i;
        if (row >= nout) continue;
        float* o = out_row(dst, row, P.D);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const std::int64_t d = d0 + tc + 16 * j;
          if (d < P.D) o[d] += f * acc[i][j];
        }
      }
    }
    __syncthreads();
  }
}

}  // namespace cuda
}  // namespace solar
