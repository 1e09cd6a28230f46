// Element-wise parts of the chunked losses (one ISA build; see vec.h): row and column
// log-sum-exp of a logits chunk and the in-place logit gradient of each loss.
// Logits are l = scale * S + bias with S the raw dot products of the chunk.
//
// The inner loops are written on whole vectors (vf, with lane masks for the excluded diagonal
// and the 0/1 masks) plus a scalar tail: GCC keeps the masked exp reductions scalar otherwise,
// which made them cost as much as the GEMMs.
#pragma once

#include "vec.h"

namespace solar {
namespace cpu {
namespace SOLAR_ISA {

constexpr float kNegInf = -__builtin_inff();

// Lane mask of the columns j .. j + kVF that are kept: not `diag`, and mr[j] != 0 when Masked.
template <bool Masked>
SOLAR_INLINE vi keep_lanes(const std::uint8_t* mr, std::int64_t j, std::int64_t diag) {
  vi keep = (vlanes() + static_cast<std::int32_t>(j - diag)) != 0;
  if (Masked) keep &= vmask_u8(mr + j);
  return keep;
}

// Returns log(sum exp(l - m)) and stores the max m in *max_out.
template <bool Masked>
SOLAR_INLINE float row_lse_one(const float* Sr, const std::uint8_t* mr, std::int64_t N,
                               std::int64_t diag, float scale, float bias, float* max_out) {
  const std::int64_t nv = N - N % kVF;
  vf vm = vsplat(kNegInf);
  for (std::int64_t j = 0; j < nv; j += kVF) {
    const vf l = vload(Sr + j) * scale + bias;
    vm = vsel(keep_lanes<Masked>(mr, j, diag) & (l > vm), l, vm);
  }
  float m = hmax(vm);
  for (std::int64_t j = nv; j < N; ++j) {
    const bool keep = (!Masked || mr[j] != 0) && j != diag;
    const float l = scale * Sr[j] + bias;
    m = keep ? fmax_(m, l) : m;
  }
  *max_out = m;
  if (m == kNegInf) return 0.f;
  vf vs = vf{};
  for (std::int64_t j = 0; j < nv; j += kVF) {
    const vf e = vexp((vload(Sr + j) * scale + bias) - m);
    vs += vsel(keep_lanes<Masked>(mr, j, diag), e, vf{});
  }
  float s = hsum(vs);
  for (std::int64_t j = nv; j < N; ++j) {
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
  constexpr std::int64_t CB = 256, NVB = CB / kVF;
  const std::int64_t nb = (a.ncols + CB - 1) / CB;
#pragma omp parallel for schedule(static) num_threads(c.nthreads)
  for (std::int64_t blk = 0; blk < nb; ++blk) {
    const std::int64_t j0 = blk * CB, nj = imin_(CB, a.ncols - j0), nv = nj / kVF;
    vf m[NVB], s[NVB];
    for (std::int64_t v = 0; v < nv; ++v) m[v] = vload(a.col_max + j0 + v * kVF);
    for (std::int64_t r = 0; r < c.R; ++r) {
      const float* Sr = c.S + r * c.ldS + j0;
      for (std::int64_t v = 0; v < nv; ++v) m[v] = vmax(m[v], vload(Sr + v * kVF) * c.scale + c.bias);
    }
    for (std::int64_t v = 0; v < nv; ++v)
      s[v] = vload(a.col_sum + j0 + v * kVF) * vexp(vload(a.col_max + j0 + v * kVF) - m[v]);
    for (std::int64_t r = 0; r < c.R; ++r) {
      const float* Sr = c.S + r * c.ldS + j0;
      for (std::int64_t v = 0; v < nv; ++v)
        s[v] += vexp(vload(Sr + v * kVF) * c.scale + c.bias - m[v]);
    }
    for (std::int64_t v = 0; v < nv; ++v) {
      vstore(a.col_max + j0 + v * kVF, m[v]);
      vstore(a.col_sum + j0 + v * kVF, s[v]);
    }
    // Columns past the last whole vector of the block (only in the last block).
    for (std::int64_t j = j0 + nv * kVF; j < j0 + nj; ++j) {
      float mj = a.col_max[j];
      for (std::int64_t r = 0; r < c.R; ++r) mj = fmax_(mj, c.scale * c.S[r * c.ldS + j] + c.bias);
      float sj = a.col_sum[j] * fast_exp(a.col_max[j] - mj);
      for (std::int64_t r = 0; r < c.R; ++r) sj += fast_exp(c.scale * c.S[r * c.ldS + j] + c.bias - mj);
      a.col_max[j] = mj;
      a.col_sum[j] = sj;
    }
  }
}

// Contrastive: G = w_row (P - I) over [b; neg] columns + w_col (Q - I) over the first B columns,
// P the row softmax, Q the column softmax (lse_col given only when symmetric).
static void grad_contrastive(GradArgs& a) {
  const Chunk& c = a.c;
  double gs = 0.0, gsum = 0.0;
  const float wdiag = a.w_row + (a.lse_col ? a.w_col : 0.f);
  // Columns [0, ncol) carry the column-softmax term.
  const std::int64_t ncol = a.lse_col ? imin_(a.B, c.N) : 0;
#pragma omp parallel for schedule(static) num_threads(c.nthreads) reduction(+ : gs, gsum)
  for (std::int64_t r = 0; r < c.R; ++r) {
    const std::int64_t i = c.r0 + r;
    const float mr = a.row_max[r], lsr = a.row_ls[r];
    const float* Sr = c.S + r * c.ldS;
    float* Gr = a.G + r * a.ldG;
    vf vs = vf{}, vg = vf{};
    float rs = 0.f, rg = 0.f;
    // One column range at a time: with the column term over [0, ncol), without it after.
    for (int part = 0; part < 2; ++part) {
      const std::int64_t j0 = part == 0 ? 0 : ncol, j1 = part == 0 ? ncol : c.N;
      const bool col = part == 0;
      std::int64_t j = j0;
      for (; j + kVF <= j1; j += kVF) {
        const vf sv = vload(Sr + j), l = sv * c.scale + c.bias;
        vf g = a.w_row * vexp((l - mr) - lsr);
        if (col) g += a.w_col * vexp(l - vload(a.lse_col + j));
        g = vsel((vlanes() + static_cast<std::int32_t>(j - i)) == 0, g - wdiag, g);
        vs += g * sv;
        vg += g;
        vstore(Gr + j, g);
      }
      for (; j < j1; ++j) {
        const float sv = Sr[j], l = c.scale * sv + c.bias;
        float g = a.w_row * fast_exp((l - mr) - lsr);
        if (col) g += a.w_col * fast_exp(l - a.lse_col[j]);
        g -= j == i ? wdiag : 0.f;
        rs += g * sv;
        rg += g;
        Gr[j] = g;
      }
    }
    for (std::int64_t j = c.N; j < a.Np; ++j) Gr[j] = 0.f;
    gs += static_cast<double>(hsum(vs) + rs);
    gsum += static_cast<double>(hsum(vg) + rg);
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
    vf vs = vf{};
    std::int64_t j = 0;
    for (; j + kVF <= N; j += kVF) {
      const vi lane = vlanes();
      const vi self = (lane + static_cast<std::int32_t>(j - i)) == 0;
      const vi pos = ((lane + static_cast<std::int32_t>(j - p1)) == 0) |
                     ((lane + static_cast<std::int32_t>(j - p2)) == 0);
      const vf sv = vload(Sr + j), l = sv * c.scale + c.bias;
      const vf pw = vsel(pos, vsplat(w), vf{});
      const vf g_row = w2 * vexp((l - mr) - lsr) - pw;
      const vf g_col = w2 * vexp(l - vload(a.lse_col + j)) - pw;
      vs += vsel(self, vf{}, g_row * sv);
      vstore(Gr + j, vsel(self, vf{}, g_row + g_col));
    }
    float rs = 0.f;
    for (; j < N; ++j) {
      const float sv = Sr[j], l = c.scale * sv + c.bias;
      const float pw = (j == p1 || j == p2) ? w : 0.f;
      const float g_row = w2 * fast_exp((l - mr) - lsr) - pw;
      const float g_col = w2 * fast_exp(l - a.lse_col[j]) - pw;
      rs += j == i ? 0.f : g_row * sv;
      Gr[j] = j == i ? 0.f : g_row + g_col;
    }
    for (std::int64_t jj = N; jj < a.Np; ++jj) Gr[jj] = 0.f;
    gs += static_cast<double>(hsum(vs) + rs);
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
    vf vs = vf{};
    std::int64_t j = 0;
    for (; j + kVF <= c.N; j += kVF) {
      const vf sv = vload(Sr + j), l = sv * c.scale + c.bias;
      const vf ea = vsel(vmask_u8(vr + j), vexp((l - ma) - la), vf{});
      const vf ep = vsel(vmask_u8(pr + j), vexp((l - mp) - lp), vf{});
      const vf g = a.w_row * (ea - ep);
      vs += g * sv;
      vstore(Gr + j, g);
    }
    float rs = 0.f;
    for (; j < c.N; ++j) {
      const float sv = Sr[j], l = c.scale * sv + c.bias;
      const float ea = fast_exp((l - ma) - la), ep = fast_exp((l - mp) - lp);
      const float g = a.w_row * ((vr[j] ? ea : 0.f) - (pr[j] ? ep : 0.f));
      rs += g * sv;
      Gr[j] = g;
    }
    for (std::int64_t jj = c.N; jj < a.Np; ++jj) Gr[jj] = 0.f;
    gs += static_cast<double>(hsum(vs) + rs);
  }
  a.sums[0] = gs;
  a.sums[1] = 0.0;
}

}  // namespace SOLAR_ISA
}  // namespace cpu
}  // namespace solar
