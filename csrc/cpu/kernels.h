// CPU kernel interface: plain argument structs and the per-ISA kernel table.
//
// The hot loops (csrc/cpu/isa/*.h) are compiled three times, for x86-64-v4 (AVX-512),
// x86-64-v3 (AVX2 + FMA) and the baseline ISA, and `kernels()` picks the best one the running CPU
// supports.  Those translation units use no standard-library templates, so no instruction from a
// wider ISA can leak into the baseline build through a shared inline symbol.
#pragma once

#include <cstdint>

#include "../common/pool_args.h"

namespace solar {
namespace cpu {

using ::solar::ElemType;
using ::solar::kBF16;
using ::solar::kF32;

// A strided 2-D view of fp32 or bf16 values (strides in elements).
struct Mat {
  void* p = nullptr;
  int type = kF32;
  std::int64_t rows = 0, cols = 0, rs = 0, cs = 1;
};

// Masked pooling (fields in common/pool_args.h) plus the CPU's per-thread scratch.
struct PoolArgs : PoolArgsBase {
  float* scratch = nullptr;  // nthreads * D floats
  int nthreads = 1;
};

// out[p, x] = alpha * sum_q coef[p*cp + q*cq] * src[q*ls + x]  (+ out[p, x] if accumulate)
// for p < P, x < X; X must be a multiple of kGemmX, src/out rows padded accordingly.
struct GemmArgs {
  std::int64_t P = 0, Q = 0, X = 0;
  const float* coef = nullptr;
  std::int64_t cp = 0, cq = 0;
  const float* src = nullptr;
  std::int64_t ls = 0;
  float* out = nullptr;
  std::int64_t lo = 0;
  float alpha = 1.f;
  bool accumulate = false;
  int nthreads = 1;
};
constexpr std::int64_t kGemmX = 32;

// A chunk of logits: S[r, j] = <row r0 + r, column j> (raw dot products), R rows, row stride ldS.
struct Chunk {
  const float* S = nullptr;
  std::int64_t ldS = 0, R = 0, r0 = 0, N = 0;
  float scale = 1.f, bias = 0.f;
  int nthreads = 1;
};

// Row log-sum-exp of scale*S + bias over columns j < N, skipping j == r0 + r when skip_diag, and
// keeping only mask[r*ldm + j] != 0 when mask is given.  out: R values.  When out_max is given
// the two parts are returned apart: out_max[r] = the row max m, out[r] = log(sum exp(l - m)),
// which keeps the small part exact for the gradient (an fp32 lse near 100 rounds by ~4e-6).
struct RowLseArgs {
  Chunk c;
  bool skip_diag = false;
  const std::uint8_t* mask = nullptr;
  std::int64_t ldm = 0;
  float* out = nullptr;
  float* out_max = nullptr;
};

// Online column statistics over the chunk's rows for columns j < ncols (running max and sum).
struct ColLseArgs {
  Chunk c;
  std::int64_t ncols = 0;
  float* col_max = nullptr;
  float* col_sum = nullptr;
};

// Writes G (the logit gradient) over S in place; returns sums of G*S and of G in sums[0..1].
struct GradArgs {
  Chunk c;
  float* G = nullptr;                 // == S buffer (overwritten)
  std::int64_t ldG = 0, Np = 0;       // padded width, columns N..Np are zeroed
  const float* row_max = nullptr;     // the chunk's rows: max and log-sum (see RowLseArgs)
  const float* row_ls = nullptr;
  const float* lse_col = nullptr;     // by column: contrastive (< B, null if not symmetric); gcl
  const float* pos_max = nullptr;     // multi-positive: the same over the positive columns
  const float* pos_ls = nullptr;
  std::int64_t B = 0;                 // contrastive: positives/columns of a; gcl: block size
  float w_row = 0.f, w_col = 0.f;     // weights of the two directions (contrastive) / w (others)
  const std::uint8_t* pos = nullptr;  // multi-positive masks, row stride ldm
  const std::uint8_t* valid = nullptr;
  std::int64_t ldm = 0;
  double sums[2] = {0.0, 0.0};
};

struct Kernels {
  const char* isa;
  void (*pool_fwd)(const PoolArgs&);
  void (*pool_bwd)(const PoolArgs&);
  void (*gemm)(const GemmArgs&);
  void (*row_lse)(const RowLseArgs&);
  void (*col_lse)(const ColLseArgs&);
  void (*grad_contrastive)(GradArgs&);
  void (*grad_gcl)(GradArgs&);
  void (*grad_mpi)(GradArgs&);
};

// The kernel table for the best ISA of this CPU (chosen once).
const Kernels& kernels();

}  // namespace cpu
}  // namespace solar
