// Chunked contrastive, GCL and multi-positive InfoNCE losses on the CPU.
//
// Rows are processed in chunks of R rows: a logits chunk S (R x N, fp32) per thread is the only
// quadratic buffer, so memory is O(threads*R*N + threads*(M+N)*D), never the full M x N matrix.
// The forward keeps row log-sum-exps (and online column statistics for the symmetric direction);
// the backward recomputes each chunk, turns it into the logit gradient G in place, and applies it
// with two GEMMs: dA[chunk] = scale * G C and dC += scale * G^T A[chunk] (G^T read in place).
// Inputs are packed once into fp32 row-major buffers padded to kGemmX columns (which also
// handles bf16 and any strides).
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
#include <memory>
#include <vector>

#include "ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace solar {
namespace cpu {
namespace {

// Target size of one thread's logits chunk: small enough for L3, large enough to amortize the
// GEMMs (4 MiB measured best on a 2-core Zen 4 with B = 4096, 1-4 MiB within noise).
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

// Buffers reused across the calls made from one thread.  Fresh multi-MiB allocations come from
// mmap on every call, and their page faults and zeroing cost as much as the GEMMs at mid sizes
// (B ~ 512: 1.6x the kernel time); reuse keeps them faulted in.  At most kKeepBytes stay held
// between calls (larger sets are freed when the call ends; release_workspace frees them now).
constexpr std::size_t kKeepBytes = std::size_t(256) << 20;

struct Workspace {
  std::vector<std::unique_ptr<float[]>> bufs;
  std::vector<std::size_t> sizes;

  // Slot `slot` with room for n floats (contents undefined).
  float* get(std::size_t slot, std::int64_t n) {
    if (slot >= bufs.size()) {
      bufs.resize(slot + 1);
      sizes.resize(slot + 1, 0);
    }
    const auto need = static_cast<std::size_t>(n > 0 ? n : 1);
    if (sizes[slot] < need) {
      bufs[slot].reset();
      bufs[slot].reset(new float[need]);
      sizes[slot] = need;
    }
    return bufs[slot].get();
  }

  float* zeros(std::size_t slot, std::int64_t n) {
    float* p = get(slot, n);
    std::memset(p, 0, static_cast<std::size_t>(n) * sizeof(float));
    return p;
  }

  std::size_t bytes() const {
    std::size_t b = 0;
    for (std::size_t n : sizes) b += n * sizeof(float);
    return b;
  }

  void release() {
    bufs.clear();
    sizes.clear();
  }
};

thread_local Workspace tls_workspace;

// Declared first in every entry point: trims the thread's workspace when the call ends.
struct WorkspaceScope {
  WorkspaceScope() = default;
  WorkspaceScope(const WorkspaceScope&) = delete;
  WorkspaceScope& operator=(const WorkspaceScope&) = delete;
  ~WorkspaceScope() {
    if (tls_workspace.bytes() > kKeepBytes) tls_workspace.release();
  }
};

// Workspace slots of one evaluation; per-thread slots follow kPerThread, two per thread.
enum Slot : std::size_t { kSlotA, kSlotC, kSlotCT, kSlotDA, kSlotDC, kPerThread };
std::size_t slot_logits(int t) { return kPerThread + 2 * static_cast<std::size_t>(t); }
std::size_t slot_dc(int t) { return kPerThread + 2 * static_cast<std::size_t>(t) + 1; }

// The parts stacked by rows into out, as fp32 with rows `ld` apart (padding zeroed).
void pack_rows(Parts parts, std::int64_t ld, int nt, float* out) {
  std::int64_t r0 = 0;
  for (const Mat* m : parts) {
    float* dst = out + r0 * ld;
    const std::int64_t cols = m->cols;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (std::int64_t r = 0; r < m->rows; ++r) {
      read_row(*m, r, dst + r * ld);
      for (std::int64_t c = cols; c < ld; ++c) dst[r * ld + c] = 0.f;
    }
    r0 += m->rows;
  }
}

// Transpose of n packed rows into out: out[d * ldt + row] for d < D (zero for rows n .. ldt).
void transpose(const float* rows, std::int64_t n, std::int64_t ld, std::int64_t D,
               std::int64_t ldt, int nt, float* out) {
  constexpr std::int64_t TB = 64;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (std::int64_t r0 = 0; r0 < n; r0 += TB) {
    const std::int64_t r1 = r0 + TB < n ? r0 + TB : n;
    for (std::int64_t d = 0; d < D; ++d)
      for (std::int64_t r = r0; r < r1; ++r) out[d * ldt + r] = rows[r * ld + d];
  }
  for (std::int64_t d = 0; d < D; ++d)
    for (std::int64_t r = n; r < ldt; ++r) out[d * ldt + r] = 0.f;
}

// Rows [row0, row0 + dst.rows) of a packed fp32 buffer into dst (converting the dtype).
void unpack_rows(const float* src, std::int64_t ld, std::int64_t row0, const Mat& dst, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
  for (std::int64_t r = 0; r < dst.rows; ++r) write_row(dst, r, src + (row0 + r) * ld);
}

int thread_num() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Packed operands of one loss evaluation, shared read-only by the worker threads.
//
// Parallel layout: one parallel region per forward or backward.  Each thread takes a contiguous
// range of row chunks and runs every step of a chunk (GEMMs, statistics, gradient) on its own,
// with its own logits buffer and its own accumulators for the quantities that chunks share
// (column statistics, dC, loss sums); these are merged in thread order after the region.  The
// only barrier is the region's end: with one region per step (six per chunk) a thread that the OS
// deschedules on an oversubscribed machine stalls every other one at each barrier while they spin,
// which made the op several times slower under load.  Per-thread accumulators and the fixed
// chunk-to-thread split keep the result deterministic for a given thread count.
struct Engine {
  const Kernels& k = kernels();
  int nt = 1;
  std::int64_t M = 0, N = 0, D = 0, Dp = 0, Np = 0, R = 0, chunks = 0;
  float* A = nullptr;          // packed rows (M x Dp)
  float* C = nullptr;          // packed columns (N x Dp); == A when they are the same matrix
  float* CT = nullptr;         // C transposed (D x Np)

  Engine(Parts rows, Parts cols, bool same, std::int64_t chunk_rows) {
    M = total_rows(rows);
    N = same ? M : total_rows(cols);
    D = (*rows.begin())->cols;
    Dp = round_up(D, kGemmX);
    Np = round_up(N, kGemmX);
    nt = threads_for(static_cast<double>(M) * N * D);
    Workspace& ws = tls_workspace;
    A = ws.get(kSlotA, M * Dp);
    pack_rows(rows, Dp, nt, A);
    if (same) {
      C = A;
    } else {
      C = ws.get(kSlotC, N * Dp);
      pack_rows(cols, Dp, nt, C);
    }
    CT = ws.get(kSlotCT, D * Np);
    transpose(C, N, Dp, D, Np, nt, CT);
    if (chunk_rows > 0) {
      R = chunk_rows;
    } else {
      R = kChunkBytes / (4 * Np);
      R = std::min(R, (M + nt - 1) / nt);  // every thread gets rows
      R = std::max<std::int64_t>(R, 8);
    }
    R = std::min(R, M);
    chunks = (M + R - 1) / R;
    nt = static_cast<int>(std::min<std::int64_t>(nt, chunks));
  }

  // Runs f(t, r0, rows) for every chunk, each thread t < nt over its own contiguous range of
  // chunks (split by the team the runtime actually gives, which may be smaller than nt).
  template <class F>
  void for_chunks(F&& f) const {
#pragma omp parallel num_threads(nt)
    {
      const std::int64_t t = thread_num(), n = team_size();
      for (std::int64_t ch = chunks * t / n; ch < chunks * (t + 1) / n; ++ch)
        f(static_cast<int>(t), ch * R, std::min(R, M - ch * R));
    }
  }
};

// One thread's logits chunk and scratch (kernels called with one thread).
struct Worker {
  const Engine* e = nullptr;
  float* S = nullptr;  // R x Np logits chunk, then the logit gradient G in place
  std::vector<float> st, st2;

  void init(const Engine& eng, int t) {
    e = &eng;
    S = tls_workspace.get(slot_logits(t), eng.R * eng.Np);
    st.resize(static_cast<std::size_t>(2 * eng.R));
    st2.resize(static_cast<std::size_t>(2 * eng.R));
  }

  // S[r, j] = <A[r0 + r], C[j]> for r < rows.
  Chunk logits(std::int64_t r0, std::int64_t rows, const LossOptions& o) {
    GemmArgs g;
    g.P = rows; g.Q = e->D; g.X = e->Np;
    g.coef = e->A + r0 * e->Dp; g.cp = e->Dp; g.cq = 1;
    g.src = e->CT; g.ls = e->Np;
    g.out = S; g.lo = e->Np;
    e->k.gemm(g);
    Chunk c;
    c.S = S; c.ldS = e->Np; c.R = rows; c.r0 = r0; c.N = e->N;
    c.scale = o.scale; c.bias = o.bias;
    return c;
  }

  float logit(std::int64_t r, std::int64_t j, const LossOptions& o) const {
    return o.scale * S[r * e->Np + j] + o.bias;
  }

  // dA[r0 : r0+rows] = alpha * G C.
  void apply_rows(std::int64_t r0, std::int64_t rows, float alpha, float* dA) {
    GemmArgs g;
    g.P = rows; g.Q = e->N; g.X = e->Dp;
    g.coef = S; g.cp = e->Np; g.cq = 1;
    g.src = e->C; g.ls = e->Dp;
    g.out = dA + r0 * e->Dp; g.lo = e->Dp;
    g.alpha = alpha;
    e->k.gemm(g);
  }

  // dA[r0 : r0+rows] = alpha * G C   and   dC += alpha * G^T A[r0 : r0+rows].
  void apply_grad(std::int64_t r0, std::int64_t rows, float alpha, float* dA, float* dC) {
    apply_rows(r0, rows, alpha, dA);
    // G^T read in place: coefficient (p, q) = G[q, p], MR consecutive p of a row per step.
    GemmArgs h;
    h.P = e->N; h.Q = rows; h.X = e->Dp;
    h.coef = S; h.cp = 1; h.cq = e->Np;
    h.src = e->A + r0 * e->Dp; h.ls = e->Dp;
    h.out = dC; h.lo = e->Dp;
    h.alpha = alpha; h.accumulate = true;
    e->k.gemm(h);
  }

  // Row log-sum-exp of the chunk into out[0 .. c.R) (split in max and log-sum when out_max is
  // given; see RowLseArgs).
  void row_lse(const Chunk& c, float* out, bool skip_diag = false,
               const std::uint8_t* mask = nullptr, std::int64_t ldm = 0,
               float* out_max = nullptr) const {
    RowLseArgs rl;
    rl.c = c; rl.skip_diag = skip_diag; rl.mask = mask; rl.ldm = ldm;
    rl.out = out; rl.out_max = out_max;
    e->k.row_lse(rl);
  }

  // Gradient arguments for the chunk with its row statistics recomputed into st.
  GradArgs grad_args(const Chunk& c, bool skip_diag = false, const std::uint8_t* mask = nullptr,
                     std::int64_t ldm = 0) {
    row_lse(c, st.data() + e->R, skip_diag, mask, ldm, st.data());
    GradArgs ga;
    ga.c = c; ga.G = S; ga.ldG = e->Np; ga.Np = e->Np;
    ga.row_max = st.data(); ga.row_ls = st.data() + e->R;
    return ga;
  }
};

std::vector<Worker> workers(const Engine& e) {
  std::vector<Worker> w(static_cast<std::size_t>(e.nt));
  for (int t = 0; t < e.nt; ++t) w[t].init(e, t);
  return w;
}

// Per-thread (N x Dp) accumulators for dC, zeroed; thread 0's is `all`, which reduce() turns
// into the sum over threads (added in thread order).
struct ColGrads {
  std::vector<float*> per;
  float* all;
  std::int64_t n;
  explicit ColGrads(const Engine& e) : n(e.N * e.Dp) {
    for (int t = 0; t < e.nt; ++t)
      per.push_back(tls_workspace.zeros(t == 0 ? kSlotDC : slot_dc(t), n));
    all = per[0];
  }
  float* of(int t) { return per[t]; }
  void reduce(int nt) {
    if (per.size() < 2) return;
    constexpr std::int64_t blk = 4096;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (std::int64_t i0 = 0; i0 < n; i0 += blk) {
      const std::int64_t i1 = std::min(i0 + blk, n);
      for (std::size_t t = 1; t < per.size(); ++t)
        for (std::int64_t i = i0; i < i1; ++i) all[i] += per[t][i];
    }
  }
};

double sum_in_order(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x;
  return s;
}

}  // namespace

double contrastive_forward(const Mat& a, const Mat& b, const Mat& neg, const LossOptions& o,
                           float* lse_row, float* lse_col) {
  WorkspaceScope scope;
  Engine e({&a}, {&b, &neg}, false, o.chunk_rows);
  const std::int64_t B = a.rows;
  const int nt = e.nt;
  std::vector<Worker> w = workers(e);
  std::vector<float> diag(B);
  // Column statistics of the b->a direction, one (max, sum) pair of rows per thread.
  const std::size_t ncs = o.symmetric ? static_cast<std::size_t>(B) : 0;
  std::vector<float> cmax(nt * ncs, -std::numeric_limits<float>::infinity()), csum(nt * ncs, 0.f);
  std::vector<double> loss_row(nt, 0.0);
  e.for_chunks([&](int t, std::int64_t r0, std::int64_t rows) {
    Worker& wk = w[t];
    Chunk c = wk.logits(r0, rows, o);
    wk.row_lse(c, lse_row + r0);
    for (std::int64_t r = 0; r < rows; ++r) {
      diag[r0 + r] = wk.logit(r, r0 + r, o);
      loss_row[t] += static_cast<double>(lse_row[r0 + r]) - diag[r0 + r];
    }
    if (o.symmetric) {
      ColLseArgs cl;
      cl.c = c; cl.ncols = B; cl.col_max = cmax.data() + t * ncs;
      cl.col_sum = csum.data() + t * ncs;
      e.k.col_lse(cl);
    }
  });
  const double lr = sum_in_order(loss_row);
  if (!o.symmetric) return lr / B;
  double loss_col = 0.0;
  for (std::int64_t j = 0; j < B; ++j) {
    float m = -std::numeric_limits<float>::infinity();
    for (int t = 0; t < nt; ++t) m = std::max(m, cmax[t * ncs + j]);
    float s = 0.f;
    for (int t = 0; t < nt; ++t)
      if (csum[t * ncs + j] > 0.f) s += csum[t * ncs + j] * std::exp(cmax[t * ncs + j] - m);
    lse_col[j] = m + std::log(s);
    loss_col += static_cast<double>(lse_col[j]) - diag[j];
  }
  return 0.5 * (lr + loss_col) / B;
}

void contrastive_backward(const Mat& a, const Mat& b, const Mat& neg, const LossOptions& o,
                          float dloss, const float* lse_col, const Mat& da,
                          const Mat& db, const Mat& dneg, float* dscale, float* dbias) {
  WorkspaceScope scope;
  Engine e({&a}, {&b, &neg}, false, o.chunk_rows);
  const std::int64_t B = a.rows;
  const float w_ = dloss / static_cast<float>(B) * (o.symmetric ? 0.5f : 1.f);
  std::vector<Worker> w = workers(e);
  float* dA = tls_workspace.get(kSlotDA, B * e.Dp);  // every row written by its chunk
  ColGrads dCs(e);
  std::vector<double> gs(e.nt, 0.0), gsum(e.nt, 0.0);
  e.for_chunks([&](int t, std::int64_t r0, std::int64_t rows) {
    Worker& wk = w[t];
    GradArgs g = wk.grad_args(wk.logits(r0, rows, o));
    g.lse_col = o.symmetric ? lse_col : nullptr;
    g.B = B; g.w_row = w_; g.w_col = o.symmetric ? w_ : 0.f;
    e.k.grad_contrastive(g);
    gs[t] += g.sums[0];
    gsum[t] += g.sums[1];
    wk.apply_grad(r0, rows, o.scale, dA, dCs.of(t));
  });
  dCs.reduce(e.nt);
  unpack_rows(dA, e.Dp, 0, da, e.nt);
  unpack_rows(dCs.all, e.Dp, 0, db, e.nt);
  if (dneg.rows) unpack_rows(dCs.all, e.Dp, B, dneg, e.nt);
  *dscale = static_cast<float>(sum_in_order(gs));
  *dbias = static_cast<float>(sum_in_order(gsum));
}

double gcl_forward(const Mat& ei, const Mat& et, const Mat& ef, const LossOptions& o, float* lse) {
  WorkspaceScope scope;
  Engine e({&ei, &et, &ef}, {}, true, o.chunk_rows);
  const std::int64_t B = ei.rows, N = e.N;
  std::vector<Worker> w = workers(e);
  std::vector<double> loss(e.nt, 0.0);
  e.for_chunks([&](int t, std::int64_t r0, std::int64_t rows) {
    Worker& wk = w[t];
    wk.row_lse(wk.logits(r0, rows, o), lse + r0, true);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t i = r0 + r;
      loss[t] += 2.0 * lse[i] - wk.logit(r, (i + B) % N, o) - wk.logit(r, (i + 2 * B) % N, o);
    }
  });
  return sum_in_order(loss) / (6.0 * B);
}

void gcl_backward(const Mat& ei, const Mat& et, const Mat& ef, const LossOptions& o, float dloss,
                  const float* lse, const Mat& dei, const Mat& det, const Mat& def, float* dscale) {
  WorkspaceScope scope;
  Engine e({&ei, &et, &ef}, {}, true, o.chunk_rows);
  const std::int64_t B = ei.rows, N = e.N;
  std::vector<Worker> w = workers(e);
  float* dE = tls_workspace.get(kSlotDA, N * e.Dp);  // every row written by its chunk
  std::vector<double> gs(e.nt, 0.0);
  e.for_chunks([&](int t, std::int64_t r0, std::int64_t rows) {
    Worker& wk = w[t];
    GradArgs g = wk.grad_args(wk.logits(r0, rows, o), true);
    g.lse_col = lse; g.B = B; g.w_row = dloss / (6.f * B);
    e.k.grad_gcl(g);  // the chunk now holds G + G^T
    gs[t] += g.sums[0];
    wk.apply_rows(r0, rows, o.scale, dE);
  });
  unpack_rows(dE, e.Dp, 0, dei, e.nt);
  unpack_rows(dE, e.Dp, B, det, e.nt);
  unpack_rows(dE, e.Dp, 2 * B, def, e.nt);
  *dscale = static_cast<float>(sum_in_order(gs));
}

double mpi_forward(const Mat& anchors, const Mat& cand, const std::uint8_t* pos,
                   const std::uint8_t* valid, std::int64_t ldm, const LossOptions& o,
                   float* lse_all, float* lse_pos) {
  WorkspaceScope scope;
  Engine e({&anchors}, {&cand}, false, o.chunk_rows);
  const std::int64_t B = anchors.rows;
  std::vector<Worker> w = workers(e);
  std::vector<double> loss(e.nt, 0.0);
  e.for_chunks([&](int t, std::int64_t r0, std::int64_t rows) {
    Worker& wk = w[t];
    Chunk c = wk.logits(r0, rows, o);
    wk.row_lse(c, lse_all + r0, false, valid + r0 * ldm, ldm);
    wk.row_lse(c, lse_pos + r0, false, pos + r0 * ldm, ldm);
    for (std::int64_t i = r0; i < r0 + rows; ++i)
      loss[t] += static_cast<double>(lse_all[i]) - lse_pos[i];
  });
  return sum_in_order(loss) / B;
}

void mpi_backward(const Mat& anchors, const Mat& cand, const std::uint8_t* pos,
                  const std::uint8_t* valid, std::int64_t ldm, const LossOptions& o, float dloss,
                  const Mat& danchors,
                  const Mat& dcand, float* dscale) {
  WorkspaceScope scope;
  Engine e({&anchors}, {&cand}, false, o.chunk_rows);
  const std::int64_t B = anchors.rows;
  std::vector<Worker> w = workers(e);
  float* dA = tls_workspace.get(kSlotDA, B * e.Dp);  // every row written by its chunk
  ColGrads dCs(e);
  std::vector<double> gs(e.nt, 0.0);
  e.for_chunks([&](int t, std::int64_t r0, std::int64_t rows) {
    Worker& wk = w[t];
    Chunk c = wk.logits(r0, rows, o);
    GradArgs g = wk.grad_args(c, false, valid + r0 * ldm, ldm);
    wk.row_lse(c, wk.st2.data() + e.R, false, pos + r0 * ldm, ldm, wk.st2.data());
    g.pos_max = wk.st2.data(); g.pos_ls = wk.st2.data() + e.R;
    g.w_row = dloss / static_cast<float>(B);
    g.pos = pos + r0 * ldm; g.valid = valid + r0 * ldm; g.ldm = ldm;
    e.k.grad_mpi(g);
    gs[t] += g.sums[0];
    wk.apply_grad(r0, rows, o.scale, dA, dCs.of(t));
  });
  dCs.reduce(e.nt);
  unpack_rows(dA, e.Dp, 0, danchors, e.nt);
  unpack_rows(dCs.all, e.Dp, 0, dcand, e.nt);
  *dscale = static_cast<float>(sum_in_order(gs));
}

std::size_t workspace_bytes() { return tls_workspace.bytes(); }
void release_workspace() { tls_workspace.release(); }

}  // namespace cpu
}  // namespace solar
