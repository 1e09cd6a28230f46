// Masked pooling + L2 normalize, forward and backward (one ISA build; see vec.h).
// One sample per iteration of the parallel loop; fp32 accumulation in a per-thread row buffer.
#pragma once

#include "vec.h"

namespace solar {
namespace cpu {
namespace SOLAR_ISA {

template <int T>
static void pool_fwd_t(const PoolArgs& a) {
  typedef typename Elem<T>::type In;
  const In* x = static_cast<const In*>(a.x);
  In* y = static_cast<In*>(a.y);
  const std::int64_t D = a.D;
#pragma omp parallel for schedule(dynamic, 1) num_threads(a.nthreads)
  for (std::int64_t b = 0; b < a.B; ++b) {
    float* acc = a.scratch + static_cast<std::int64_t>(thread_id()) * D;
    for (std::int64_t d = 0; d < D; ++d) acc[d] = 0.f;
    float s = 0.f;
    for (std::int64_t l = 0; l < a.L; ++l) {
      const float wl = a.w[b * a.swb + l * a.swl];
      s += wl;
      if (wl == 0.f) continue;  // padding tokens are never read
      const In* xr = x + b * a.sxb + l * a.sxl;
#pragma omp simd
      for (std::int64_t d = 0; d < D; ++d) acc[d] += wl * Elem<T>::load(xr + d);
    }
    const float inv_s = s > 0.f ? 1.f / s : 0.f;
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (std::int64_t d = 0; d < D; ++d) sq += acc[d] * acc[d];
    const float norm = __builtin_sqrtf(sq) * inv_s;           // ||mean||
    const float out_scale = a.normalize ? inv_s / fmax_(norm, a.eps) : inv_s;
    In* yr = y + b * D;
#pragma omp simd
    for (std::int64_t d = 0; d < D; ++d) Elem<T>::store(yr + d, acc[d] * out_scale);
    a.stats[2 * b] = s;
    a.stats[2 * b + 1] = a.normalize ? norm : 0.f;
  }
}

template <int T>
static void pool_bwd_t(const PoolArgs& a) {
  typedef typename Elem<T>::type In;
  const In* x = static_cast<const In*>(a.x);
  const In* y = static_cast<const In*>(a.y);
  const In* dy = static_cast<const In*>(a.dy);
  In* dx = static_cast<In*>(a.dx);
  const std::int64_t D = a.D;
#pragma omp parallel for schedule(dynamic, 1) num_threads(a.nthreads)
  for (std::int64_t b = 0; b < a.B; ++b) {
    float* dv = a.scratch + static_cast<std::int64_t>(thread_id()) * D;
    const float s = a.stats[2 * b], n = a.stats[2 * b + 1];
    const In* yr = y + b * D;
    const In* dyr = dy + b * D;
    float ds = 0.f;
    if (s > 0.f) {
      // y = m / max(n, eps) with m = v / s; dm from the normalization, then dv = dm / s.
      float yd = 0.f;
#pragma omp simd reduction(+ : yd)
      for (std::int64_t d = 0; d < D; ++d) yd += Elem<T>::load(yr + d) * Elem<T>::load(dyr + d);
      const bool full = a.normalize && n >= a.eps;         // clamp inactive: project out y
      const float inv_n = a.normalize ? 1.f / fmax_(n, a.eps) : 1.f;
      const float proj = full ? yd : 0.f;
      const float m_scale = a.normalize ? fmax_(n, a.eps) : 1.f;
      float dmm = 0.f;
#pragma omp simd reduction(+ : dmm)
      for (std::int64_t d = 0; d < D; ++d) {
        const float yv = Elem<T>::load(yr + d);
        const float dm = (Elem<T>::load(dyr + d) - yv * proj) * inv_n;
        dmm += dm * yv * m_scale;
        dv[d] = dm / s;
      }
      ds = -dmm / s;
    } else {
      for (std::int64_t d = 0; d < D; ++d) dv[d] = 0.f;
    }
    for (std::int64_t l = 0; l < a.L; ++l) {
      const float wl = s > 0.f ? a.w[b * a.swb + l * a.swl] : 0.f;
      In* dxr = dx + b * a.sdxb + l * a.sdxl;
#pragma omp simd
      for (std::int64_t d = 0; d < D; ++d) Elem<T>::store(dxr + d, wl * dv[d]);
      if (a.dw) {
        float dot = 0.f;
        if (s > 0.f) {
          const In* xr = x + b * a.sxb + l * a.sxl;
#pragma omp simd reduction(+ : dot)
          for (std::int64_t d = 0; d < D; ++d) dot += Elem<T>::load(xr + d) * dv[d];
        }
        a.dw[b * a.L + l] = s > 0.f ? dot + ds : 0.f;
      }
    }
  }
}

static void pool_fwd(const PoolArgs& a) {
  if (a.type == kBF16) pool_fwd_t<kBF16>(a); else pool_fwd_t<kF32>(a);
}
static void pool_bwd(const PoolArgs& a) {
  if (a.type == kBF16) pool_bwd_t<kBF16>(a); else pool_bwd_t<kF32>(a);
}

}  // namespace SOLAR_ISA
}  // namespace cpu
}  // namespace solar
