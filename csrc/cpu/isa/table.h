// The kernel table of one ISA build: include after defining SOLAR_ISA, SOLAR_ISA_NAME,
// SOLAR_VW (floats per native vector), SOLAR_MR (rows per micro-tile) and SOLAR_NV (vectors per
// micro-tile row); MR x NV accumulators plus NV loads and a broadcast fit the register file.
#pragma once

#include "gemm.h"
#include "loss.h"
#include "pool.h"

namespace solar {
namespace cpu {
namespace SOLAR_ISA {

const Kernels& table() {
  static const Kernels k = {SOLAR_ISA_NAME, pool_fwd, pool_bwd, gemm, row_lse, col_lse,
                            grad_contrastive, grad_gcl, grad_mpi};
  return k;
}

}  // namespace SOLAR_ISA
}  // namespace cpu
}  // namespace solar
