// GEMM driver over the micro-kernel (one ISA build; see vec.h).
//
// On one thread (how the losses call it: each thread runs its own chunks) the loops are x tile,
// q block, row block.  On several, the work items are (x tile, row block) pairs in x-major order,
// handed out dynamically so a descheduled thread does not stall the others at a barrier; each
// item runs the whole q range with its accumulators in registers.
#pragma once

#include "vec.h"

namespace solar {
namespace cpu {
namespace SOLAR_ISA {

#ifndef SOLAR_GEMM_QB
#define SOLAR_GEMM_QB 1024
#endif

static void gemm(const GemmArgs& g) {
  constexpr std::int64_t XT = kVF * SOLAR_NV;
  static_assert(kGemmX % XT == 0, "padding must hold whole x tiles");
  const std::int64_t nx = g.X / XT;
  const std::int64_t np = (g.P + SOLAR_MR - 1) / SOLAR_MR;
  if (g.P <= 0 || nx <= 0) return;
  // The q range is cut in blocks of QB so the src panel of one block (QB x XT floats, 128 KiB
  // for zmm) stays in L2 while every row block of the x tile passes over it; later blocks add
  // into out.
  constexpr std::int64_t QB = SOLAR_GEMM_QB;
  const std::int64_t nq = g.Q > 0 ? (g.Q + QB - 1) / QB : 1;
  if (g.nthreads <= 1) {
    for (std::int64_t xt = 0; xt < nx; ++xt)
      for (std::int64_t qb = 0; qb < nq; ++qb) {
        const std::int64_t q0 = qb * QB, q1 = imin_(q0 + QB, g.Q);
        for (std::int64_t p0 = 0; p0 < g.P; p0 += SOLAR_MR)
          row_block<SOLAR_MR, SOLAR_NV>(static_cast<int>(imin_(SOLAR_MR, g.P - p0)), q0, q1,
                                        g.coef + p0 * g.cp, g.cp, g.cq, g.src + xt * XT, g.ls,
                                        g.out + p0 * g.lo + xt * XT, g.lo, g.alpha,
                                        g.accumulate || qb > 0);
      }
    return;
  }
  // Several threads: items of whole q range, handed out dynamically.
#pragma omp parallel for schedule(dynamic, 1) num_threads(g.nthreads)
  for (std::int64_t item = 0; item < nx * np; ++item) {
    const std::int64_t xt = item / np, p0 = (item % np) * SOLAR_MR;
    const int rows = static_cast<int>(imin_(SOLAR_MR, g.P - p0));
    row_block<SOLAR_MR, SOLAR_NV>(rows, 0, g.Q, g.coef + p0 * g.cp, g.cp, g.cq, g.src + xt * XT,
                                  g.ls, g.out + p0 * g.lo + xt * XT, g.lo, g.alpha,
                                  g.accumulate);
  }
}

}  // namespace SOLAR_ISA
}  // namespace cpu
}  // namespace solar
