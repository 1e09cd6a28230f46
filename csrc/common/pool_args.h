// Masked-pooling arguments and element types shared by the CPU and CUDA modules.
//
// Plain data and <cstdint> only: the CPU ISA builds (which use no standard-library templates)
// and nvcc both include it.
#pragma once

#include <cstdint>

namespace solar {

// Storage type of a tensor's elements (the CPU kernels take kF32 and kBF16).
enum ElemType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// Masked pooling.  x: (B, L, D) with strides (sxb, sxl, 1); w: fp32 (B, L) with strides
// (swb, swl); y: (B, D) contiguous in x's type; stats: fp32 (B, 2); dy: (B, D) contiguous in x's
// type; dx: (B, L, D) with strides (sdxb, sdxl, 1); dw: fp32 (B, L) contiguous or null.
struct PoolArgsBase {
  const void* x = nullptr;
  int type = kF32;
  std::int64_t B = 0, L = 0, D = 0, sxb = 0, sxl = 0;
  const float* w = nullptr;
  std::int64_t swb = 0, swl = 0;
  void* y = nullptr;
  float* stats = nullptr;
  const void* dy = nullptr;
  void* dx = nullptr;
  std::int64_t sdxb = 0, sdxl = 0;
  float* dw = nullptr;
  bool normalize = true;
  float eps = 1e-12f;
};

}  // namespace solar
