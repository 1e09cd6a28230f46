// GEMM driver over the micro-kernel (one ISA build; see vec.h).
//
// One parallel region per call; the work items are (x tile, row block) pairs in x-major order,
// handed out dynamically so a descheduled thread does not stall the others at a barrier (the
// 2-core CI machine is often oversubscribed).  Each item runs the whole q range with its
// accumulators in registers; consecutive items share the src panel (Q x kVF*NV floats), which
// stays in L2.
#pragma once

#include "vec.h"

namespace solar {
namespace cpu {
namespace SOLAR_ISA {

static void gemm(const GemmArgs& g) {
  constexpr std::int64_t XT = kVF * SOLAR_NV;
  static_assert(kGemmX % XT == 0, "padding must hold whole x tiles");
  const std::int64_t nx = g.X / XT;
  const std::int64_t np = (g.P + SOLAR_MR - 1) / SOLAR_MR;
  if (g.P <= 0 || nx <= 0) return;
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
