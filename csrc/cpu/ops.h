// Op-level CPU entry points (called by the bindings in module.cpp after argument checks).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels.h"

namespace solar {
namespace cpu {

// The ISA builds this CPU runs, best first; select_isa("auto" or a name) picks the active one
// (false if that build cannot run here).
std::vector<const Kernels*> runnable_isas();
bool select_isa(const char* name);

// Number of threads every kernel uses (set from Python to torch.get_num_threads()).
int num_threads();
void set_num_threads(int n);
// Threads worth using for `work` multiply-adds: one below kMinWorkPerThread each, since
// fork/join and barriers cost more than they save on small problems (and far more when the
// machine is oversubscribed).
int threads_for(double work);

// Scratch memory the losses keep between calls made from the calling thread (loss.cpp).
std::size_t workspace_bytes();
void release_workspace();

void masked_pool_forward(PoolArgs a);
void masked_pool_backward(PoolArgs a);

struct LossOptions {
  float scale = 1.f, bias = 0.f;
  bool symmetric = true;
  std::int64_t chunk_rows = 0;  // 0: heuristic (see loss.cpp)
};

// Contrastive (CLIP-style InfoNCE, a->[b; neg] and optionally b->a).  neg.rows may be 0.
double contrastive_forward(const Mat& a, const Mat& b, const Mat& neg, const LossOptions& o,
                           float* lse_row, float* lse_col);
void contrastive_backward(const Mat& a, const Mat& b, const Mat& neg, const LossOptions& o,
                          float dloss, const float* lse_col, const Mat& da,
                          const Mat& db, const Mat& dneg, float* dscale, float* dbias);

// GCL over E = [ei; et; ef] (3B rows), self excluded, two positives per row.
double gcl_forward(const Mat& ei, const Mat& et, const Mat& ef, const LossOptions& o, float* lse);
void gcl_backward(const Mat& ei, const Mat& et, const Mat& ef, const LossOptions& o, float dloss,
                  const float* lse, const Mat& dei, const Mat& det, const Mat& def, float* dscale);

// Multi-positive InfoNCE; pos and valid are (B, N) uint8/bool, rows ldm apart.
double mpi_forward(const Mat& anchors, const Mat& cand, const std::uint8_t* pos,
                   const std::uint8_t* valid, std::int64_t ldm, const LossOptions& o,
                   float* lse_all, float* lse_pos);
void mpi_backward(const Mat& anchors, const Mat& cand, const std::uint8_t* pos,
                  const std::uint8_t* valid, std::int64_t ldm, const LossOptions& o, float dloss,
                  const Mat& danchors,
                  const Mat& dcand, float* dscale);

}  // namespace cpu
}  // namespace solar
