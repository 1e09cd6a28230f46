// Element-wise parts of the chunked losses (one ISA build; see vec.h): row and column
// log-sum-exp of a logits chunk and the in-place logit gradient of each loss.
// Logits are l = scale * S + bias with S the raw dot products of the chunk.
#pragma once

#include "vec.h"

namespace solar {
namespace cpu {
namespace SOLAR_ISA {

constexpr float kNegInf = -__builtin_inff();

// Returns log(sum exp(l - m)) and stores the max m in *max_out.
template <bool Masked>
SOLAR_INLINE float row_lse_one(const float* Sr, const std::uint8_t* mr, std::int64_t N,
                               std::int64_t diag, float scale, float bias, float* max_out) {
  float m = kNegInf;
#pragma omp simd reduction(max : m)
  for (std::int64_t j = 0; j < N; ++j) {
    const bool keep = (!Masked || mr[j] != 0) && j != diag;
    const float l = scale * Sr[j] + bias;
    m = keep ? fmax_(m, l) : m;
  }
  *max_out = m;
  if (m == kNegInf) return 0.f;
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (std::int64_t j = 0; j < N; ++j) {
    const bool keep = (!Masked || mr[j] != 0) && j != diag;
    const float e = fast_exp(scale * Sr[j] + bias - m);
    s += keep ? e : 0.f;
  }
  return __builtin_logf(s);
}

static void row_lse(const RowLseArgs& a) {
  const Chunk& c = a.c;
#pragma omp parallel for schedule(static) num_threads(c.nthreads)
  for (std::int64_t r = 0; r < c.R; ++r) {
    const std::int64_t diag = a.skip_diag ? c.r0 + r : -1;
    const float* Sr = c.S + r * c.ldS;
    float m;
    const float ls = a.mask ? row_lse_one<true>(Sr, a.mask + r * a.ldm, c.N, diag, c.scale, c.bias, &m)
                            : row_lse_one<false>(Sr, nullptr, c.N, diag, c.scale, c.bias, &m);
    if (a.out_max) {
      a.out_max[r] = m;
      a.out[r] = ls;
    } else {
      a.out[r] = m + ls;
    }
  }
}

// Online update of running (max, sum) per column over the chunk's rows.
static void col_lse(const ColLseArgs& a) {
  const Chunk& c = a.c;
  constexpr std::int64_t CB = 256;
  const std::int64_t nb = (a.ncols + CB - 1) / CB;
#pragma omp parallel for schedule(static) num_threads(c.nthreads)
  for (std::int64_t blk = 0; blk < nb; ++blk) {
    const std::int64_t j0 = blk * CB, nj = imin_(CB, a.ncols - j0);
    float m[CB], s[CB];
    for (std::int64_t j = 0; j < nj; ++j) m[j] = a.col_max[j0 + j];
    for (std::int64_t r = 0; r < c.R; ++r) {
      const float* Sr = c.S + r * c.ldS + j0;
#pragma omp simd
      for (std::int64_t j = 0; j < nj; ++j) m[j] = fmax_(m[j], c.scale * Sr[j] + c.bias);
    }
#pragma omp simd
    for (std::int64_t j = 0; j < nj; ++j) s[j] = a.col_sum[j0 + j] * fast_exp(a.col_max[j0 + j] - m[j]);
    for (std::int64_t r = 0; r < c.R; ++r) {
      const float* Sr = c.S + r * c.ldS + j0;
#pragma omp simd
      for (std::int64_t j = 0; j < nj; ++j) s[j] += fast_exp(c.scale * Sr[j] + c.bias - m[j]);
    }
    for (std::int64_t j = 0; j < nj; ++j) {
      a.col_max[j0 + j] = m[j];
      a.col_sum[j0 + j] = s[j];
    }
  }
}

// Contrastive: G = w_row (P - I) over [b; neg] columns + w_col (Q - I) over the first B columns,
// P the row softmax, Q the column softmax (lse_col given only when symmetric).
static void grad_contrastive(GradArgs& a) {
  const Chunk& c = a.c;
  double gs = 0.0, gsum = 0.0;
  const float wdiag = a.w_row + (a.lse_col ? a.w_col : 0.f);
  const std::int64_t nb = imin_(a.B, c.N);
#pragma omp parallel for schedule(static) num_threads(c.nthreads) reduction(+ : gs, gsum)
  for (std::int64_t r = 0; r < c.R; ++r) {
    const std::int64_t i = c.r0 + r;
    const float mr = a.row_max[r], lsr = a.row_ls[r];
    const float* Sr = c.S + r * c.ldS;
    float* Gr = a.G + r * a.ldG;
    float rs = 0.f, rg = 0.f;
#pragma omp simd reduction(+ : rs, rg)
    for (std::int64_t j = 0; j < c.N; ++j) {
      const float sv = Sr[j], l = c.scale * sv + c.bias;
      float g = a.w_row * fast_exp((l - mr) - lsr);
      if (a.lse_col) g += j < nb ? a.w_col * fast_exp(l - a.lse_col[j < nb ? j : 0]) : 0.f;
      g -= j == i ? wdiag : 0.f;
      rs += g * sv;
      rg += g;
      Gr[j] = g;
    }
    for (std::int64_t j = c.N; j < a.Np; ++j) Gr[j] = 0.f;
    gs += rs;
    gsum += rg;
  }
  a.sums[0] = gs;
  a.sums[1] = gsum;
}

// GCL: rows of E = [I; T; F] (3B); G = w (2 P - pos), self column excluded.  S is symmetric, so
// the chunk is overwritten with H = G + G^T (G^T from the column's lse in lse_col) and a single
// GEMM gives dE[chunk] = scale * H E; sums[0] keeps sum G*S over the chunk's rows only.
static void grad_gcl(GradArgs& a) {
  const Chunk& c = a.c;
  double gs = 0.0;
  const std::int64_t B = a.B, N = c.N;
#pragma omp parallel for schedule(static) num_threads(c.nthreads) reduction(+ : gs)
  for (std::int64_t r = 0; r < c.R; ++r) {
    const std::int64_t i = c.r0 + r, p1 = (i + B) % N, p2 = (i + 2 * B) % N;
    const float mr = a.row_max[r], lsr = a.row_ls[r], w = a.w_row, w2 = 2.f * a.w_row;
    const float* Sr = c.S + r * c.ldS;
    float* Gr = a.G + r * a.ldG;
    float rs = 0.f;
#pragma omp simd reduction(+ : rs)
    for (std::int64_t j = 0; j < N; ++j) {
      const float sv = Sr[j], l = c.scale * sv + c.bias;
      const float pos = (j == p1 || j == p2) ? w : 0.f;
      const float g_row = w2 * fast_exp((l - mr) - lsr) - pos;
      const float g_col = w2 * fast_exp(l - a.lse_col[j]) - pos;
      rs += j == i ? 0.f : g_row * sv;
      Gr[j] = j == i ? 0.f : g_row + g_col;
    }
    for (std::int64_t j = N; j < a.Np; ++j) Gr[j] = 0.f;
    gs += rs;
  }
  a.sums[0] = gs;
  a.sums[1] = 0.0;
}

// Multi-positive InfoNCE: G = w (valid * P_all - pos * P_pos).
static void grad_mpi(GradArgs& a) {
  const Chunk& c = a.c;
  double gs = 0.0;
#pragma omp parallel for schedule(static) num_threads(c.nthreads) reduction(+ : gs)
  for (std::int64_t r = 0; r < c.R; ++r) {
    const float ma = a.row_max[r], la = a.row_ls[r], mp = a.pos_max[r], lp = a.pos_ls[r];
    const std::uint8_t* vr = a.valid + r * a.ldm;
    const std::uint8_t* pr = a.pos + r * a.ldm;
    const float* Sr = c.S + r * c.ldS;
    float* Gr = a.G + r * a.ldG;
    float rs = 0.f;
#pragma omp simd reduction(+ : rs)
    for (std::int64_t j = 0; j < c.N; ++j) {
      const float sv = Sr[j], l = c.scale * sv + c.bias;
      const float ea = fast_exp((l - ma) - la), ep = fast_exp((l - mp) - lp);
      const float g = a.w_row * ((vr[j] ? ea : 0.f) - (pr[j] ? ep : 0.f));
      rs += g * sv;
      Gr[j] = g;
    }
    for (std::int64_t j = c.N; j < a.Np; ++j) Gr[j] = 0.f;
    gs += rs;
  }
  a.sums[0] = gs;
  a.sums[1] = 0.0;
}

}  // namespace SOLAR_ISA
}  // namespace cpu
}  // namespace solar
