// Masked pooling + L2 normalize on CUDA, forward and backward.
//
// One CTA of 256 threads (8 warps) per sample.  Each warp streams tokens l = warp, warp+8, ...;
// each lane owns VEC consecutive features (one 16-byte load: 8 bf16/fp16 or 4 fp32), so a warp
// reads 512 contiguous bytes per token; accumulation is fp32.  Tokens with weight 0 are never
// read (hard masks skip padding).  The pooled row is staged in shared memory (D floats) for the
// norm.  Bandwidth-bound (2 B L D FLOPs against B L D elements of X): fwd reads X once, bwd writes
// dX and re-reads X only when dw is needed.
#include "common.cuh"
#include "launch.h"

namespace solar {
namespace cuda {
namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32;

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) pool_fwd_kernel(PoolParams p) {
  extern __shared__ float yrow[];                 // D floats
  __shared__ float red[kWarps][32 * VEC];
  __shared__ float scratch[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const std::int64_t b = blockIdx.x, D = p.D;
  const float* w = p.w + b * p.swb;
  float s = 0.f;
  for (std::int64_t l = tid; l < p.L; l += kThreads) s += w[l * p.swl];
  s = block_sum(s, scratch);
  const T* xb = static_cast<const T*>(p.x) + b * p.sxb;
  for (std::int64_t dc = 0; dc < D; dc += 32 * VEC) {
    const std::int64_t d = dc + lane * VEC;
    float acc[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] = 0.f;
    if (d < D) {
      for (std::int64_t l = warp; l < p.L; l += kWarps) {
        const float wl = w[l * p.swl];
        if (wl == 0.f) continue;                   // warp-uniform
        float xv[VEC];
        load_vec<T, VEC>(xb + l * p.sxl + d, xv);
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[v] += wl * xv[v];
      }
    }
#pragma unroll
    for (int v = 0; v < VEC; ++v) red[warp][lane * VEC + v] = acc[v];
    __syncthreads();
    for (int e = tid; e < 32 * VEC; e += kThreads) {
      float t = 0.f;
#pragma unroll
      for (int k = 0; k < kWarps; ++k) t += red[k][e];
      if (dc + e < D) yrow[dc + e] = t;
    }
    __syncthreads();
  }
  float sq = 0.f;
  for (std::int64_t d = tid; d < D; d += kThreads) sq += yrow[d] * yrow[d];
  sq = block_sum(sq, scratch);
  const float inv_s = s > 0.f ? 1.f / s : 0.f;
  const float norm = sqrtf(sq) * inv_s;
  const float out = p.normalize ? inv_s / fmaxf(norm, p.eps) : inv_s;
  T* y = static_cast<T*>(p.y) + b * D;
  for (std::int64_t d = tid; d < D; d += kThreads) y[d] = from_f<T>(yrow[d] * out);
  if (tid == 0) {
    p.stats[2 * b] = s;
    p.stats[2 * b + 1] = p.normalize ? norm : 0.f;
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) pool_bwd_kernel(PoolParams p) {
  extern __shared__ float dv[];                   // D floats: dL/dv with v = sum_l w_l x_l
  __shared__ float scratch[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const std::int64_t b = blockIdx.x, D = p.D;
  const float s = p.stats[2 * b], n = p.stats[2 * b + 1];
  const T* y = static_cast<const T*>(p.y) + b * D;
  const T* dy = static_cast<const T*>(p.dy) + b * D;
  float ds = 0.f;
  if (s > 0.f) {
    float yd = 0.f;
    for (std::int64_t d = tid; d < D; d += kThreads) yd += to_f(y[d]) * to_f(dy[d]);
    yd = block_sum(yd, scratch);
    const bool full = p.normalize && n >= p.eps;  // clamp inactive: project out y
    const float inv_n = p.normalize ? 1.f / fmaxf(n, p.eps) : 1.f;
    const float proj = full ? yd : 0.f, m_scale = p.normalize ? fmaxf(n, p.eps) : 1.f;
    float dmm = 0.f;
    for (std::int64_t d = tid; d < D; d += kThreads) {
      const float yv = to_f(y[d]);
      const float dm = (to_f(dy[d]) - yv * proj) * inv_n;
      dmm += dm * yv * m_scale;
      dv[d] = dm / s;
    }
    ds = -block_sum(dmm, scratch) / s;            // synchronizes: dv is complete
  } else {
    for (std::int64_t d = tid; d < D; d += kThreads) dv[d] = 0.f;
    __syncthreads();
  }
  const T* xb = static_cast<const T*>(p.x) + b * p.sxb;
  T* dxb = static_cast<T*>(p.dx) + b * p.sdxb;
  const float* w = p.w + b * p.swb;
  for (std::int64_t l = warp; l < p.L; l += kWarps) {
    const float wl = s > 0.f ? w[l * p.swl] : 0.f;
    float dot = 0.f;
    for (std::int64_t d = lane * VEC; d < D; d += 32 * VEC) {
      float g[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) g[v] = wl * dv[d + v];
      store_vec<T, VEC>(dxb + l * p.sdxl + d, g);
      if (p.dw != nullptr && s > 0.f) {
        float xv[VEC];
        load_vec<T, VEC>(xb + l * p.sxl + d, xv);
#pragma unroll
        for (int v = 0; v < VEC; ++v) dot += xv[v] * dv[d + v];
      }
    }
    if (p.dw != nullptr) {
      dot = warp_sum(dot);
      if (lane == 0) p.dw[b * p.L + l] = s > 0.f ? dot + ds : 0.f;
    }
  }
}

template <typename T, int VEC>
cudaError_t launch(const PoolParams& p, cudaStream_t stream, bool forward) {
  const std::size_t smem = static_cast<std::size_t>(p.D) * sizeof(float);
  auto kernel = forward ? pool_fwd_kernel<T, VEC> : pool_bwd_kernel<T, VEC>;
  if (smem > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<static_cast<unsigned>(p.B), kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_vec(const PoolParams& p, cudaStream_t stream, bool forward) {
  constexpr int V = 16 / sizeof(T);
  return p.vec ? launch<T, V>(p, stream, forward) : launch<T, 1>(p, stream, forward);
}

cudaError_t dispatch(const PoolParams& p, cudaStream_t stream, bool forward) {
  if (p.B == 0) return cudaSuccess;
  switch (p.type) {
    case kBF16: return dispatch_vec<__nv_bfloat16>(p, stream, forward);
    case kF16: return dispatch_vec<__half>(p, stream, forward);
    default: return dispatch_vec<float>(p, stream, forward);
  }
}

}  // namespace

cudaError_t pool_forward(const PoolParams& p, cudaStream_t stream) {
  return dispatch(p, stream, true);
}
cudaError_t pool_backward(const PoolParams& p, cudaStream_t stream) {
  return dispatch(p, stream, false);
}

}  // namespace cuda
}  // namespace solar
