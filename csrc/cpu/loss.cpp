// Chunked contrastive, GCL and multi-positive InfoNCE losses on the CPU.
//
// Rows are processed in chunks of R rows: the logits chunk S (R x N, fp32) is the only
// quadratic buffer, so memory is O(R*N + (M+N)*D), never the full M x N matrix.  The forward
// keeps row log-sum-exps (and online column statistics for the symmetric direction); the backward
// recomputes each chunk, turns it into the logit gradient G in place, and applies it with two
// GEMMs: dA[chunk] = scale * G C and dC += scale * G^T A[chunk].  Inputs are packed once into
// fp32 row-major buffers padded to kGemmX columns (which also handles bf16 and any strides).
//
// The backward recomputes the row statistics from the chunk it holds anyway (one exp per logit),
// as the row max and the log-sum apart: a single fp32 lse near |logit| ~ 100 carries ~4e-6 of
// rounding that scales a whole row of probabilities, which the gradient multiplies by the logit
// scale.  Column statistics (symmetric direction) come from the forward's fp32 lse_col.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <vector>

#include "ops.h"

namespace solar {
namespace cpu {
namespace {

// Target size of the logits chunk: small enough for L3, large enough to amortize the GEMMs.
constexpr std::int64_t kChunkBytes = std::int64_t(4) << 20;

std::int64_t round_up(std::int64_t v, std::int64_t m) { return (v + m - 1) / m * m; }

std::uint16_t to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

// Row r of m as fp32 into out[0 .. m.cols).
void read_row(const Mat& m, std::int64_t r, float* out) {
  if (m.type == kBF16) {
    const auto* p = static_cast<const std::uint16_t*>(m.p) + r * m.rs;
    for (std::int64_t c = 0; c < m.cols; ++c) {
      std::uint32_t u = static_cast<std::uint32_t>(p[c * m.cs]) << 16;
      std::memcpy(out + c, &u, 4);
    }
  } else {
    const auto* p = static_cast<const float*>(m.p) + r * m.rs;
    for (std::int64_t c = 0; c < m.cols; ++c) out[c] = p[c * m.cs];
  }
}

void write_row(const Mat& m, std::int64_t r, const float* in) {
  if (m.type == kBF16) {
    auto* p = static_cast<std::uint16_t*>(m.p) + r * m.rs;
    for (std::int64_t c = 0; c < m.cols; ++c) p[c * m.cs] = to_bf16(in[c]);
  } else {
    auto* p = static_cast<float*>(m.p) + r * m.rs;
    for (std::int64_t c = 0; c < m.cols; ++c) p[c * m.cs] = in[c];
  }
}

using Parts = std::initializer_list<const Mat*>;

std::int64_t total_rows(Parts parts) {
  std::int64_t n = 0;
  for (const Mat* m : parts) n += m->rows;
  return n;
}

// The parts stacked by rows, as fp32 with rows `ld` apart (zero padding).
std::vector<float> pack_rows(Parts parts, std::int64_t ld, int nt) {
  std::vector<float> out(static_cast<std::size_t>(total_rows(parts) * ld), 0.f);
  std::int64_t r0 = 0;
  for (const Mat* m : parts) {
    float* dst = out.data() + r0 * ld;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (std::int64_t r = 0; r < m->rows; ++r) read_row(*m, r, dst + r * ld);
    r0 += m->rows;
  }
  return out;
}

// Transpose of packed rows: out[d * ldt + row] for d < D (zero for the padded columns).
std::vector<float> transpose(const std::vector<float>& rows, std::int64_t n, std::int64_t ld,
                             std::int64_t D, std::int64_t ldt, int nt) {
  std::vector<float> out(static_cast<std::size_t>(D * ldt), 0.f);
  constexpr std::int64_t TB = 64;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (std::int64_t r0 = 0; r0 < n; r0 += TB) {
    const std::int64_t r1 = r0 + TB < n ? r0 + TB : n;
    for (std::int64_t d = 0; d < D; ++d)
      for (std::int64_t r = r0; r < r1; ++r) out[d * ldt + r] = rows[r * ld + d];
  }
  return out;
}

// Rows [row0, row0 + dst.rows) of a packed fp32 buffer into dst (converting the dtype).
void unpack_rows(const float* src, std::int64_t ld, std::int64_t row0, const Mat& dst, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
  for (std::int64_t r = 0; r < dst.rows; ++r) write_row(dst, r, src + (row0 + r) * ld);
}

// Packed operands and the logits chunk of one loss evaluation.
struct Engine {
  const Kernels& k = kernels();
  int nt = 1;
  std::int64_t M = 0, N = 0, D = 0, Dp = 0, Np = 0, R = 0;
  std::vector<float> A, C, CT, S, GT;
  const float* Cp = nullptr;  // == A.data() when rows and columns are the same matrix

  Engine(Parts rows, Parts cols, bool same, std::int64_t chunk_rows) {
    M = total_rows(rows);
    N = same ? M : total_rows(cols);
    D = (*rows.begin())->cols;
    Dp = round_up(D, kGemmX);
    Np = round_up(N, kGemmX);
    nt = threads_for(static_cast<double>(M) * N * D);
    A = pack_rows(rows, Dp, nt);
    if (!same) C = pack_rows(cols, Dp, nt);
    Cp = same ? A.data() : C.data();
    CT = transpose(same ? A : C, N, Dp, D, Np, nt);
    R = chunk_rows > 0 ? chunk_rows : kChunkBytes / (4 * Np);
    R = R < 8 ? 8 : R;
    R = R > M ? M : R;
    S.assign(static_cast<std::size_t>(R * Np), 0.f);
  }

  // S[r, j] = <A[r0 + r], C[j]> for r < rows.
  Chunk logits(std::int64_t r0, std::int64_t rows, const LossOptions& o) {
    GemmArgs g;
    g.P = rows; g.Q = D; g.X = Np;
    g.coef = A.data() + r0 * Dp; g.cp = Dp; g.cq = 1;
    g.src = CT.data(); g.ls = Np;
    g.out = S.data(); g.lo = Np;
    g.nthreads = nt;
    k.gemm(g);
    Chunk c;
    c.S = S.data(); c.ldS = Np; c.R = rows; c.r0 = r0; c.N = N;
    c.scale = o.scale; c.bias = o.bias; c.nthreads = nt;
    return c;
  }

  float logit(std::int64_t r, std::int64_t j, const LossOptions& o) const {
    return o.scale * S[r * Np + j] + o.bias;
  }

  // GT[j, r] = S[r, j] for j < N: the G^T operand with unit stride along the reduction.
  void transpose_chunk(std::int64_t rows) {
    constexpr std::int64_t TB = 64;
    if (GT.empty()) GT.assign(static_cast<std::size_t>(R * Np), 0.f);
    const float* src = S.data();
    float* dst = GT.data();
    const std::int64_t n = N, ld = Np;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (std::int64_t j0 = 0; j0 < n; j0 += TB) {
      const std::int64_t j1 = j0 + TB < n ? j0 + TB : n;
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t j = j0; j < j1; ++j) dst[j * rows + r] = src[r * ld + j];
    }
  }

  // dA[r0 : r0+rows] = alpha * G C.
  void apply_rows(std::int64_t r0, std::int64_t rows, float alpha, float* dA) {
    GemmArgs g;
    g.P = rows; g.Q = N; g.X = Dp;
    g.coef = S.data(); g.cp = Np; g.cq = 1;
    g.src = Cp; g.ls = Dp;
    g.out = dA + r0 * Dp; g.lo = Dp;
    g.alpha = alpha; g.nthreads = nt;
    k.gemm(g);
  }

  // dA[r0 : r0+rows] = alpha * G C   and   dC += alpha * G^T A[r0 : r0+rows].
  void apply_grad(std::int64_t r0, std::int64_t rows, float alpha, float* dA, float* dC) {
    apply_rows(r0, rows, alpha, dA);
    transpose_chunk(rows);
    GemmArgs h;
    h.P = N; h.Q = rows; h.X = Dp;
    h.coef = GT.data(); h.cp = rows; h.cq = 1;
    h.src = A.data() + r0 * Dp; h.ls = Dp;
    h.out = dC; h.lo = Dp;
    h.alpha = alpha; h.accumulate = true; h.nthreads = nt;
    k.gemm(h);
  }

  // Row log-sum-exp of the current chunk into out[0 .. c.R) (split in max and log-sum when
  // out_max is given; see RowLseArgs).
  void row_lse(const Chunk& c, float* out, bool skip_diag = false,
               const std::uint8_t* mask = nullptr, std::int64_t ldm = 0,
               float* out_max = nullptr) {
    RowLseArgs rl;
    rl.c = c; rl.skip_diag = skip_diag; rl.mask = mask; rl.ldm = ldm;
    rl.out = out; rl.out_max = out_max;
    k.row_lse(rl);
  }

  // Gradient arguments for the current chunk with its row statistics recomputed into st.
  GradArgs grad_args(const Chunk& c, std::vector<float>& st, bool skip_diag = false,
                     const std::uint8_t* mask = nullptr, std::int64_t ldm = 0) {
    st.resize(static_cast<std::size_t>(2 * R));
    row_lse(c, st.data() + R, skip_diag, mask, ldm, st.data());
    GradArgs ga;
    ga.c = c; ga.G = S.data(); ga.ldG = Np; ga.Np = Np;
    ga.row_max = st.data(); ga.row_ls = st.data() + R;
    return ga;
  }
};

}  // namespace

double contrastive_forward(const Mat& a, const Mat& b, const Mat& neg, const LossOptions& o,
                           float* lse_row, float* lse_col) {
  Engine e({&a}, {&b, &neg}, false, o.chunk_rows);
  const std::int64_t B = a.rows;
  std::vector<float> diag(B), cmax(B, -std::numeric_limits<float>::infinity()), csum(B, 0.f);
  double loss_row = 0.0, loss_col = 0.0;
  for (std::int64_t r0 = 0; r0 < B; r0 += e.R) {
    const std::int64_t rows = std::min(e.R, B - r0);
    Chunk c = e.logits(r0, rows, o);
    e.row_lse(c, lse_row + r0);
    for (std::int64_t r = 0; r < rows; ++r) {
      diag[r0 + r] = e.logit(r, r0 + r, o);
      loss_row += static_cast<double>(lse_row[r0 + r]) - diag[r0 + r];
    }
    if (o.symmetric) {
      ColLseArgs cl;
      cl.c = c; cl.ncols = B; cl.col_max = cmax.data(); cl.col_sum = csum.data();
      e.k.col_lse(cl);
    }
  }
  if (!o.symmetric) return loss_row / B;
  for (std::int64_t j = 0; j < B; ++j) {
    lse_col[j] = cmax[j] + std::log(csum[j]);
    loss_col += static_cast<double>(lse_col[j]) - diag[j];
  }
  return 0.5 * (loss_row + loss_col) / B;
}

void contrastive_backward(const Mat& a, const Mat& b, const Mat& neg, const LossOptions& o,
                          float dloss, const float* lse_col, const Mat& da,
                          const Mat& db, const Mat& dneg, float* dscale, float* dbias) {
  Engine e({&a}, {&b, &neg}, false, o.chunk_rows);
  const std::int64_t B = a.rows;
  const float w = dloss / static_cast<float>(B) * (o.symmetric ? 0.5f : 1.f);
  std::vector<float> dA(static_cast<std::size_t>(B * e.Dp), 0.f);
  std::vector<float> dC(static_cast<std::size_t>(e.N * e.Dp), 0.f);
  double gs = 0.0, gsum = 0.0;
  std::vector<float> lse;
  for (std::int64_t r0 = 0; r0 < B; r0 += e.R) {
    const std::int64_t rows = std::min(e.R, B - r0);
    GradArgs g = e.grad_args(e.logits(r0, rows, o), lse);
    g.lse_col = o.symmetric ? lse_col : nullptr;
    g.B = B; g.w_row = w; g.w_col = o.symmetric ? w : 0.f;
    e.k.grad_contrastive(g);
    gs += g.sums[0];
    gsum += g.sums[1];
    e.apply_grad(r0, rows, o.scale, dA.data(), dC.data());
  }
  unpack_rows(dA.data(), e.Dp, 0, da, e.nt);
  unpack_rows(dC.data(), e.Dp, 0, db, e.nt);
  if (dneg.rows) unpack_rows(dC.data(), e.Dp, B, dneg, e.nt);
  *dscale = static_cast<float>(gs);
  *dbias = static_cast<float>(gsum);
}

double gcl_forward(const Mat& ei, const Mat& et, const Mat& ef, const LossOptions& o, float* lse) {
  Engine e({&ei, &et, &ef}, {}, true, o.chunk_rows);
  const std::int64_t B = ei.rows, N = e.N;
  double loss = 0.0;
  for (std::int64_t r0 = 0; r0 < N; r0 += e.R) {
    const std::int64_t rows = std::min(e.R, N - r0);
    e.row_lse(e.logits(r0, rows, o), lse + r0, true);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t i = r0 + r;
      loss += 2.0 * lse[i] - e.logit(r, (i + B) % N, o) - e.logit(r, (i + 2 * B) % N, o);
    }
  }
  return loss / (6.0 * B);
}

void gcl_backward(const Mat& ei, const Mat& et, const Mat& ef, const LossOptions& o, float dloss,
                  const float* lse, const Mat& dei, const Mat& det, const Mat& def, float* dscale) {
  Engine e({&ei, &et, &ef}, {}, true, o.chunk_rows);
  const std::int64_t B = ei.rows, N = e.N;
  std::vector<float> dE(static_cast<std::size_t>(N * e.Dp), 0.f);
  std::vector<float> stats;
  double gs = 0.0;
  for (std::int64_t r0 = 0; r0 < N; r0 += e.R) {
    const std::int64_t rows = std::min(e.R, N - r0);
    GradArgs g = e.grad_args(e.logits(r0, rows, o), stats, true);
    g.lse_col = lse; g.B = B; g.w_row = dloss / (6.f * B);
    e.k.grad_gcl(g);  // the chunk now holds G + G^T
    gs += g.sums[0];
    e.apply_rows(r0, rows, o.scale, dE.data());
  }
  unpack_rows(dE.data(), e.Dp, 0, dei, e.nt);
  unpack_rows(dE.data(), e.Dp, B, det, e.nt);
  unpack_rows(dE.data(), e.Dp, 2 * B, def, e.nt);
  *dscale = static_cast<float>(gs);
}

double mpi_forward(const Mat& anchors, const Mat& cand, const std::uint8_t* pos,
                   const std::uint8_t* valid, std::int64_t ldm, const LossOptions& o,
                   float* lse_all, float* lse_pos) {
  Engine e({&anchors}, {&cand}, false, o.chunk_rows);
  const std::int64_t B = anchors.rows;
  double loss = 0.0;
  for (std::int64_t r0 = 0; r0 < B; r0 += e.R) {
    const std::int64_t rows = std::min(e.R, B - r0);
    Chunk c = e.logits(r0, rows, o);
    e.row_lse(c, lse_all + r0, false, valid + r0 * ldm, ldm);
    e.row_lse(c, lse_pos + r0, false, pos + r0 * ldm, ldm);
    for (std::int64_t i = r0; i < r0 + rows; ++i)
      loss += static_cast<double>(lse_all[i]) - lse_pos[i];
  }
  return loss / B;
}

void mpi_backward(const Mat& anchors, const Mat& cand, const std::uint8_t* pos,
                  const std::uint8_t* valid, std::int64_t ldm, const LossOptions& o, float dloss,
                  const Mat& danchors,
                  const Mat& dcand, float* dscale) {
  Engine e({&anchors}, {&cand}, false, o.chunk_rows);
  const std::int64_t B = anchors.rows;
  std::vector<float> dA(static_cast<std::size_t>(B * e.Dp), 0.f);
  std::vector<float> dC(static_cast<std::size_t>(e.N * e.Dp), 0.f);
  std::vector<float> la, lp;
  double gs = 0.0;
  for (std::int64_t r0 = 0; r0 < B; r0 += e.R) {
    const std::int64_t rows = std::min(e.R, B - r0);
    Chunk c = e.logits(r0, rows, o);
    GradArgs g = e.grad_args(c, la, false, valid + r0 * ldm, ldm);
    lp.resize(static_cast<std::size_t>(2 * e.R));
    e.row_lse(c, lp.data() + e.R, false, pos + r0 * ldm, ldm, lp.data());
    g.pos_max = lp.data(); g.pos_ls = lp.data() + e.R; g.w_row = dloss / static_cast<float>(B);
    g.pos = pos + r0 * ldm; g.valid = valid + r0 * ldm; g.ldm = ldm;
    e.k.grad_mpi(g);
    gs += g.sums[0];
    e.apply_grad(r0, rows, o.scale, dA.data(), dC.data());
  }
  unpack_rows(dA.data(), e.Dp, 0, danchors, e.nt);
  unpack_rows(dC.data(), e.Dp, 0, dcand, e.nt);
  *dscale = static_cast<float>(gs);
}

}  // namespace cpu
}  // namespace solar
