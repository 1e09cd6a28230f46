// Vector helpers compiled once per ISA (namespace SOLAR_ISA): element loads and stores, a
// vectorizable exp, and the register-blocked GEMM micro-kernel.
//
// Only compiler builtins and this namespace's own templates are used here (no standard-library
// templates), so each ISA's code stays in its own symbols.
#pragma once

#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../kernels.h"

#ifndef SOLAR_ISA
#error "define SOLAR_ISA (the namespace of this ISA build) before including isa/*.h"
#endif

#define SOLAR_INLINE static inline __attribute__((always_inline))


namespace solar {
namespace cpu {
namespace SOLAR_ISA {

// One native vector of this ISA: SOLAR_VW floats (16: zmm, 8: ymm, 4: xmm).
typedef float vf __attribute__((vector_size(SOLAR_VW * 4)));
constexpr int kVF = SOLAR_VW;

SOLAR_INLINE vf vload(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof(vf));
  return v;
}
SOLAR_INLINE void vstore(float* p, vf v) { __builtin_memcpy(p, &v, sizeof(vf)); }

SOLAR_INLINE float bf16_to_f32(std::uint16_t h) {
  std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
SOLAR_INLINE std::uint16_t f32_to_bf16(float f) {
  std::uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

// Element access by storage type: Elem<kF32> works on float, Elem<kBF16> on uint16 bits.
template <int T> struct Elem;
template <> struct Elem<kF32> {
  typedef float type;
  SOLAR_INLINE float load(const float* p) { return *p; }
  SOLAR_INLINE void store(float* p, float v) { *p = v; }
};
template <> struct Elem<kBF16> {
  typedef std::uint16_t type;
  SOLAR_INLINE float load(const std::uint16_t* p) { return bf16_to_f32(*p); }
  SOLAR_INLINE void store(std::uint16_t* p, float v) { *p = f32_to_bf16(v); }
};

// exp(x) = 2^n * p(r) with |r| <= ln2/2: r from x and n (the ln2 split in a high part, exact
// in fp32, and a low part), p the degree-7 Taylor polynomial (relative error below 1e-7 over
// the normal range).  T is float or a vector of floats: the scalar and the vector exp run the
// same operations, so their results agree lane by lane.
template <class T>
SOLAR_INLINE T exp_poly(T xc, T n) {
  T r = xc - n * 0.693145751953125f;
  r = r - n * 1.42860682030941723e-6f;
  T p = T{} + 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  return p;
}

// exp(x) for float, branch-free so loops over it vectorize; x below -87.3 (including -inf)
// gives 0, x above 88.3 saturates at exp(88.3).
SOLAR_INLINE float fast_exp(float x) {
  const float lo = -87.3f, hi = 88.3f;
  float xc = x < lo ? lo : (x > hi ? hi : x);
  int ni = static_cast<int>(xc * 1.44269504088896341f + 127.5f);  // n + 127, in [1, 254]
  const float p = exp_poly(xc, static_cast<float>(ni - 127));
  std::uint32_t bits = static_cast<std::uint32_t>(ni) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, 4);
  return x < lo ? 0.f : p * scale;
}

// Whole-vector forms, for loops the auto-vectorizer leaves scalar (masked reductions with an
// exp inside): lanes of vi are the comparison masks of vf (-1 true, 0 false).
typedef std::int32_t vi __attribute__((vector_size(SOLAR_VW * 4)));
typedef std::uint8_t vb __attribute__((vector_size(SOLAR_VW)));

SOLAR_INLINE vf vsplat(float c) { return vf{} + c; }

// 0, 1, ..., kVF - 1.
SOLAR_INLINE vi vlanes() {
  vi r;
#pragma GCC unroll 16
  for (int i = 0; i < kVF; ++i) r[i] = i;
  return r;
}

// kVF bytes of a 0/1 mask as lane masks (-1 where the byte is nonzero).
SOLAR_INLINE vi vmask_u8(const std::uint8_t* p) {
  vb b;
  __builtin_memcpy(&b, p, sizeof(vb));
  return __builtin_convertvector(b, vi) != 0;
}

SOLAR_INLINE vf vsel(vi m, vf a, vf b) { return m ? a : b; }
SOLAR_INLINE vf vmax(vf a, vf b) { return a > b ? a : b; }

SOLAR_INLINE float hmax(vf v) {
  float m = v[0];
#pragma GCC unroll 16
  for (int i = 1; i < kVF; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

SOLAR_INLINE float hsum(vf v) {
  float s = 0.f;
#pragma GCC unroll 16
  for (int i = 0; i < kVF; ++i) s += v[i];
  return s;
}

// fast_exp on every lane (the same operations, so the same results lane by lane).
SOLAR_INLINE vf vexp(vf x) {
  const vf lo = vsplat(-87.3f), hi = vsplat(88.3f);
  vf xc = vsel(x < lo, lo, vsel(x > hi, hi, x));
  const vi ni = __builtin_convertvector(xc * 1.44269504088896341f + 127.5f, vi);
  const vf p = exp_poly(xc, __builtin_convertvector(ni - 127, vf));
  const vi bits = ni << 23;
  vf scale;
  __builtin_memcpy(&scale, &bits, sizeof(vf));
  return vsel(x < lo, vf{}, p * scale);
}

#ifdef _OPENMP
SOLAR_INLINE int thread_id() { return omp_get_thread_num(); }
#else
SOLAR_INLINE int thread_id() { return 0; }
#endif

SOLAR_INLINE float fmax_(float a, float b) { return a > b ? a : b; }
SOLAR_INLINE std::int64_t imin_(std::int64_t a, std::int64_t b) { return a < b ? a : b; }

// out[p, x0:x0+kVF*NV] (+)= alpha * sum_{q0<=q<q1} coef[p*cp + q*cq] * src[q*ls + x0 : ...]
// for p < MR: MR x NV vector accumulators stay in registers.
template <int MR, int NV>
SOLAR_INLINE void micro_tile(std::int64_t q0, std::int64_t q1, const float* coef, std::int64_t cp,
                             std::int64_t cq, const float* src, std::int64_t ls, float* out,
                             std::int64_t lo, float alpha, bool accumulate) {
  vf acc[MR][NV];
#pragma GCC unroll 16
  for (int p = 0; p < MR; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[p][v] = vf{};
  for (std::int64_t q = q0; q < q1; ++q) {
    vf s[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) s[v] = vload(src + q * ls + kVF * v);
#pragma GCC unroll 16
    for (int p = 0; p < MR; ++p) {
      const float c = coef[p * cp + q * cq];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[p][v] += s[v] * c;
    }
  }
#pragma GCC unroll 16
  for (int p = 0; p < MR; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* o = out + p * lo + kVF * v;
      vf r = acc[p][v] * alpha;
      if (accumulate) r += vload(o);
      vstore(o, r);
    }
}

// Rows p0..p0+rows (rows <= MR) of one x tile; the remainder rows pick a smaller tile.
template <int MR, int NV>
SOLAR_INLINE void row_block(int rows, std::int64_t q0, std::int64_t q1, const float* coef,
                            std::int64_t cp, std::int64_t cq, const float* src, std::int64_t ls,
                            float* out, std::int64_t lo, float alpha, bool accumulate) {
  switch (rows) {
#define SOLAR_ROWS_CASE(k) \
  case k:                  \
    if (k <= MR) micro_tile<(k <= MR ? k : 1), NV>(q0, q1, coef, cp, cq, src, ls, out, lo, alpha, accumulate); \
    break;
    SOLAR_ROWS_CASE(1) SOLAR_ROWS_CASE(2) SOLAR_ROWS_CASE(3) SOLAR_ROWS_CASE(4)
    SOLAR_ROWS_CASE(5) SOLAR_ROWS_CASE(6) SOLAR_ROWS_CASE(7) SOLAR_ROWS_CASE(8)
    SOLAR_ROWS_CASE(9) SOLAR_ROWS_CASE(10) SOLAR_ROWS_CASE(11) SOLAR_ROWS_CASE(12)
#undef SOLAR_ROWS_CASE
    default: break;
  }
}

}  // namespace SOLAR_ISA
}  // namespace cpu
}  // namespace solar
