// Internal helpers of the layer kernels (layers_*.cpp).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "fastconv/parallel.h"

// The package is built for baseline x86-64 (SSE2). The memory- and exp-bound
// leaf loops are cloned for x86-64-v4 (AVX-512) and v3 (AVX2+FMA) and picked
// at load time by the dynamic loader (GCC function multiversioning); the
// OpenMP parallel loops call these leaves, never the other way round, because
// outlined parallel bodies would not inherit the clone's target.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FASTCONV_NO_X86_KERNELS)
#define FC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FC_CLONES
#endif

// Helpers called from the cloned leaves must be inlined into them: an
// out-of-line copy is compiled for the baseline ISA only.
#if defined(__GNUC__)
#define FC_INLINE inline __attribute__((always_inline))
#else
#define FC_INLINE inline
#endif

namespace fastconv {
namespace layers_detail {

// Lanes of the explicit partial sums: a fixed association order that the
// compiler can still map onto vector registers (no -ffast-math needed), and
// the same order whatever the thread count.
constexpr int kLanes = 16;

// Work-size threshold below which a parallel region costs more than it saves
// (fastconv/parallel.h: higher under OMP_WAIT_POLICY=passive).
static const int64_t kParallelMin = ::fastconv::parallel_min_work();

FC_INLINE float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// exp for float, vectorizable (no libm call): Cody-Waite range reduction
// x = n ln2 + r, |r| <= ln2/2, then a degree-6 polynomial (Cephes expf
// coefficients, ~1 ulp). Inputs below ln(FLT_MIN) give 0, above 88 saturate to
// exp(88) (callers only pass x <= 0 where it matters); NaN stays NaN.
FC_INLINE float exp_poly(float x0) {
  const float x = x0 < -87.33654f ? -87.33654f : (x0 > 88.0f ? 88.0f : x0);
  const float fx = x * 1.44269504088896341f;
  // round to nearest without SSE4.1 roundps: add/subtract 1.5*2^23
  const float n = (fx + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = static_cast<int32_t>(n) + 127;
  const float r2 = p * bits_to_float(static_cast<uint32_t>(e) << 23);
  return x0 < -87.33654f ? 0.0f : r2;  // below FLT_MIN: 0, so exp(-inf) == 0
}

template <typename T>
inline T vexp(T x);
template <>
FC_INLINE float vexp<float>(float x) { return exp_poly(x); }
template <>
FC_INLINE double vexp<double>(double x) { return std::exp(x); }

// tanh(x): odd Taylor polynomial near 0 (where 1 - e^{-2|x|} would cancel),
// (1 - e)/(1 + e) with e = exp(-2|x|) elsewhere.
template <typename T>
inline T vtanh(T x);
template <>
FC_INLINE float vtanh<float>(float x) {
  const float a = x < 0 ? -x : x;
  const float x2 = x * x;
  const float small = x * (1.0f + x2 * (-1.0f / 3 + x2 * (2.0f / 15 + x2 * (-17.0f / 315 + x2 * (62.0f / 2835)))));
  const float e = exp_poly(-2.0f * a);
  const float big = (1.0f - e) / (1.0f + e);
  const float sb = x < 0 ? -big : big;
  return a < 0.3f ? small : sb;
}
template <>
FC_INLINE double vtanh<double>(double x) { return std::tanh(x); }

// sigmoid(x) through exp(-|x|) (never overflows).
template <typename T>
FC_INLINE T vsigmoid(T x) {
  const T a = x < 0 ? -x : x;
  const T e = vexp<T>(-a);
  const T inv = T(1) / (T(1) + e);
  return x >= 0 ? inv : e * inv;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace layers_detail
}  // namespace fastconv
