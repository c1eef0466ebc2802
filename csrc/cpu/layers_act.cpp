// Activations, softmax / log_softmax, fused cross entropy and dropout.
// Elementwise kernels split the array into fixed chunks (results do not
// depend on the split); row reductions run one row per task with lanes in a
// fixed order.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "fastconv/gemm.h"  // gemm_isa
#include "fastconv/layers_cpu.h"
#include "fastconv/problem.h"  // relu_value, relu_grad
#include "layers_common.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(FASTCONV_NO_X86_KERNELS)
#include <immintrin.h>
#define FC_SOFTMAX_AVX512 1
#endif

namespace fastconv {
namespace layers_detail {

constexpr int64_t kChunk = 1 << 14;

template <typename T>
FC_CLONES void act_fwd_leaf(int kind, int64_t n, const T* x, T* y) {
  if (kind == 0) {
    for (int64_t i = 0; i < n; ++i) y[i] = relu_value(x[i]);
  } else if (kind == 1) {
    for (int64_t i = 0; i < n; ++i) y[i] = vsigmoid<T>(x[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = vtanh<T>(x[i]);
  }
}

template <typename T>
FC_CLONES void act_bwd_leaf(int kind, int64_t n, const T* dy, const T* y, T* dx) {
  if (kind == 0) {
    for (int64_t i = 0; i < n; ++i) dx[i] = relu_grad(y[i], dy[i]);
  } else if (kind == 1) {
    for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * y[i] * (T(1) - y[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * (T(1) - y[i] * y[i]);
  }
}

template <typename F>
void for_chunks(int64_t n, F&& f) {
  const int64_t nch = ceil_div(n, kChunk);
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (n > kParallelMin)
  for (int64_t ch = 0; ch < nch; ++ch) {
    const int64_t i0 = ch * kChunk;
    f(i0, std::min(kChunk, n - i0));
  }
}

// Row maximum as an OpenMP simd max reduction: the 16 explicit lanes this was
// before compiled to scalar maxss (a fifth of softmax's time at 256x1000).
// A NaN may or may not reach the result; either way the row comes out NaN
// (exp(NaN - m) or exp(x - NaN) enters the sum), as in torch.
template <typename T>
FC_INLINE T row_max(const T* x, int64_t D) {
  T r = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : r)
  for (int64_t i = 0; i < D; ++i) r = x[i] > r ? x[i] : r;
  return r;
}

// y = exp(x - m), returns sum y (lanes in fixed order). y may be nullptr.
// Written as two plain loops (exp into y, then the lane sum) where y exists:
// the fused store-and-sum form defeats GCC's vectorizer.
template <typename T>
FC_INLINE double row_exp_sum(const T* x, int64_t D, T m, T* y) {
  T s[kLanes] = {0};
  int64_t i = 0;
  if (y) {
    for (int64_t j = 0; j < D; ++j) y[j] = vexp<T>(x[j] - m);
    for (; i + kLanes <= D; i += kLanes)
      for (int l = 0; l < kLanes; ++l) s[l] += y[i + l];
    for (int l = 0; i < D; ++i, ++l) s[l] += y[i];
  } else {
    for (; i + kLanes <= D; i += kLanes)
      for (int l = 0; l < kLanes; ++l) s[l] += vexp<T>(x[i + l] - m);
    for (int l = 0; i < D; ++i, ++l) s[l] += vexp<T>(x[i] - m);
  }
  double r = 0;
  for (int l = 0; l < kLanes; ++l) r += double(s[l]);
  return r;
}

// Row dot products and sums: kSumLanes = 64 lanes of T (four independent vector accumulators:
// one accumulator made each row a chain of dependent FMAs, latency-bound) over blocks of
// kSumBlock elements; each block's lanes are folded to kLanes in a fixed tree and added to
// kLanes double accumulators, summed in lane order at the end. A float lane sums at most
// kSumBlock / kSumLanes = 16 terms, so the result keeps float accuracy for any row length (the
// former all-double lanes took two instructions and a conversion per vector); the order is fixed.
constexpr int64_t kSumBlock = 1024;
constexpr int kSumLanes = 64;

template <typename T, bool kDot>
FC_INLINE double row_reduce(const T* a, const T* b, int64_t D) {
  static_assert(kSumLanes == 4 * kLanes, "the fold below adds four groups of kLanes");
  double acc[kLanes] = {0};
  for (int64_t i0 = 0; i0 < D; i0 += kSumBlock) {
    const int64_t e = std::min(D, i0 + kSumBlock);
    T s[kSumLanes] = {0};
    int64_t i = i0;
    for (; i + kSumLanes <= e; i += kSumLanes)
      for (int l = 0; l < kSumLanes; ++l) s[l] += kDot ? a[i + l] * b[i + l] : a[i + l];
    for (int l = 0; i < e; ++i, ++l) s[l] += kDot ? a[i] * b[i] : a[i];
    for (int l = 0; l < kLanes; ++l)
      acc[l] += double((s[l] + s[l + kLanes]) + (s[l + 2 * kLanes] + s[l + 3 * kLanes]));
  }
  double r = 0;
  for (int l = 0; l < kLanes; ++l) r += acc[l];
  return r;
}

template <typename T>
FC_INLINE double row_dot(const T* a, const T* b, int64_t D) {
  return row_reduce<T, true>(a, b, D);
}

template <typename T>
FC_INLINE double row_sum(const T* a, int64_t D) {
  return row_reduce<T, false>(a, a, D);
}

// One contiguous row (inner == 1).
template <typename T>
FC_CLONES void softmax_row(bool log, const T* x, int64_t D, T* y) {
  const T m = row_max(x, D);
  if (log) {
    const double s = row_exp_sum<T>(x, D, m, nullptr);
    // (x - m) - log(s), as torch: m + log(s) first would absorb log(s) into a large m
    const T ls = T(std::log(s));
    for (int64_t i = 0; i < D; ++i) y[i] = (x[i] - m) - ls;
  } else {
    const double s = row_exp_sum<T>(x, D, m, y);
    const T inv = T(1.0 / s);
    for (int64_t i = 0; i < D; ++i) y[i] *= inv;
  }
}

template <typename T>
FC_CLONES void softmax_row_bwd(bool log, const T* dy, const T* y, int64_t D, T* dx) {
  if (log) {
    const T s = T(row_sum(dy, D));
    for (int64_t i = 0; i < D; ++i) dx[i] = dy[i] - vexp<T>(y[i]) * s;
  } else {
    const T s = T(row_dot(dy, y, D));
    for (int64_t i = 0; i < D; ++i) dx[i] = y[i] * (dy[i] - s);
  }
}

#ifdef FC_SOFTMAX_AVX512
#define FC_AVX512_TGT __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma")))
FC_AVX512_TGT inline __mmask16 tail16(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }
// 16 float lanes added into 16 double lanes (d0: lanes 0-7, d1: lanes 8-15)
FC_AVX512_TGT inline void add_to_pd(__m512 f, __m512d& d0, __m512d& d1) {
  d0 = _mm512_add_pd(d0, _mm512_cvtps_pd(_mm512_castps512_ps256(f)));
  d1 = _mm512_add_pd(d1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1))));
}

// softmax backward of one float row with AVX-512, dx = y * (dy - dot(dy, y)).
// The cloned C++ above leaves, per row, a scalar remainder of up to 63 products,
// a scalar fold of the 16 lanes into doubles and scalar tails in the output
// loop: on 1000-wide rows (256x1000) that was as much as the vector work.
// Here every step is whole or masked vectors. Same summation design as
// row_reduce: 4 x 16 float lanes per 1024-element block (element i of a block in
// lane i % 64), folded (a0 + a1) + (a2 + a3) and added to 16 double lanes, which
// are summed as a tree at the end (the cloned path sums them in lane order).
FC_AVX512_TGT void softmax_row_bwd_f32_avx512(
    const float* dy, const float* y, int64_t D, float* dx) {
  __m512d d0 = _mm512_setzero_pd(), d1 = _mm512_setzero_pd();
  for (int64_t i0 = 0; i0 < D; i0 += kSumBlock) {
    const int64_t e = std::min(D, i0 + kSumBlock);
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t i = i0;
    for (; i + 64 <= e; i += 64)
      for (int k = 0; k < 4; ++k)
        a[k] = _mm512_fmadd_ps(_mm512_loadu_ps(dy + i + 16 * k), _mm512_loadu_ps(y + i + 16 * k), a[k]);
    for (int k = 0; i < e; i += 16, ++k) {
      const __mmask16 m = tail16(e - i);
      a[k] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, dy + i), _mm512_maskz_loadu_ps(m, y + i), a[k]);
    }
    add_to_pd(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])), d0, d1);
  }
  const __m512 s = _mm512_set1_ps(float(_mm512_reduce_add_pd(_mm512_add_pd(d0, d1))));
  int64_t i = 0;
  for (; i + 16 <= D; i += 16)
    _mm512_storeu_ps(dx + i, _mm512_mul_ps(_mm512_loadu_ps(y + i), _mm512_sub_ps(_mm512_loadu_ps(dy + i), s)));
  if (i < D) {
    const __mmask16 m = tail16(D - i);
    _mm512_mask_storeu_ps(dx + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, y + i),
                                                   _mm512_sub_ps(_mm512_maskz_loadu_ps(m, dy + i), s)));
  }
}

// exp(x) for x <= 0 or NaN (softmax's x - max): exp_poly's range reduction and
// degree-6 polynomial (Cephes coefficients), but 2^n applied by vscalefps and
// no upper clamp, ~15 instructions a vector where the cloned exp_poly compiled
// to ~22 with mask juggling (the softmax forward is exp-bound). x is clamped
// at -120 first (vmaxps with x second keeps a NaN): exp(-120) rounds to 0, so
// exp(-inf) == 0 exactly.
FC_AVX512_TGT inline __m512 exp_nonpos16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-120.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// softmax / log_softmax of one float row with AVX-512 (masked tails): the
// maximum, then exp(x - max) (stored for softmax) summed in 16 float lanes
// (element i in lane i % 16, as row_exp_sum) and the lanes summed in double,
// then the scaling pass.
FC_AVX512_TGT void softmax_row_f32_avx512(bool log, const float* x, int64_t D, float* y) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 mv = ninf;
  int64_t i = 0;
  for (; i + 16 <= D; i += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(x + i));
  if (i < D) mv = _mm512_max_ps(mv, _mm512_mask_loadu_ps(ninf, tail16(D - i), x + i));
  const float mf = _mm512_reduce_max_ps(mv);
  const __m512 m = _mm512_set1_ps(mf);
  __m512 s = _mm512_setzero_ps();
  for (i = 0; i + 16 <= D; i += 16) {
    const __m512 e = exp_nonpos16(_mm512_sub_ps(_mm512_loadu_ps(x + i), m));
    if (!log) _mm512_storeu_ps(y + i, e);
    s = _mm512_add_ps(s, e);
  }
  if (i < D) {
    const __mmask16 t = tail16(D - i);
    const __m512 e = _mm512_maskz_mov_ps(t, exp_nonpos16(_mm512_sub_ps(_mm512_maskz_loadu_ps(t, x + i), m)));
    if (!log) _mm512_mask_storeu_ps(y + i, t, e);
    s = _mm512_add_ps(s, e);
  }
  __m512d d0 = _mm512_setzero_pd(), d1 = _mm512_setzero_pd();
  add_to_pd(s, d0, d1);
  const double sum = _mm512_reduce_add_pd(_mm512_add_pd(d0, d1));
  if (log) {
    const __m512 ls = _mm512_set1_ps(float(std::log(sum)));  // (x - m) - log(sum), as softmax_row
    for (i = 0; i + 16 <= D; i += 16)
      _mm512_storeu_ps(y + i, _mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), m), ls));
    if (i < D)
      _mm512_mask_storeu_ps(y + i, tail16(D - i),
                            _mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail16(D - i), x + i), m), ls));
  } else {
    const __m512 inv = _mm512_set1_ps(float(1.0 / sum));
    for (i = 0; i + 16 <= D; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(y + i), inv));
    if (i < D) _mm512_mask_storeu_ps(y + i, tail16(D - i), _mm512_mul_ps(_mm512_maskz_loadu_ps(tail16(D - i), y + i), inv));
  }
}
#endif

// A (D x len) block with row stride `inner`: softmax down each column.
// acc/mx are len-long scratch.
template <typename T>
FC_CLONES void softmax_cols(bool log, const T* x, int64_t D, int64_t inner, int64_t len, T* y,
                            T* mx, double* acc) {
  for (int64_t j = 0; j < len; ++j) {
    mx[j] = -std::numeric_limits<T>::infinity();
    acc[j] = 0;
  }
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = 0; j < len; ++j) mx[j] = x[d * inner + j] > mx[j] ? x[d * inner + j] : mx[j];
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = 0; j < len; ++j) {
      const T e = vexp<T>(x[d * inner + j] - mx[j]);
      if (!log) y[d * inner + j] = e;
      acc[j] += double(e);
    }
  if (log) {
    for (int64_t j = 0; j < len; ++j) acc[j] = std::log(acc[j]);  // (x - m) - log(s), as softmax_row
    for (int64_t d = 0; d < D; ++d)
      for (int64_t j = 0; j < len; ++j) y[d * inner + j] = T((x[d * inner + j] - mx[j]) - T(acc[j]));
  } else {
    for (int64_t j = 0; j < len; ++j) mx[j] = T(1.0 / acc[j]);
    for (int64_t d = 0; d < D; ++d)
      for (int64_t j = 0; j < len; ++j) y[d * inner + j] *= mx[j];
  }
}

template <typename T>
FC_CLONES void softmax_cols_bwd(bool log, const T* dy, const T* y, int64_t D, int64_t inner,
                                int64_t len, T* dx, double* acc) {
  for (int64_t j = 0; j < len; ++j) acc[j] = 0;
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = 0; j < len; ++j)
      acc[j] += log ? double(dy[d * inner + j]) : double(dy[d * inner + j]) * double(y[d * inner + j]);
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = 0; j < len; ++j) {
      const int64_t i = d * inner + j;
      dx[i] = log ? T(dy[i] - vexp<T>(y[i]) * T(acc[j])) : T(y[i] * (dy[i] - T(acc[j])));
    }
}

// One row of the fused cross entropy; returns the row loss (0 if ignored).
template <typename T>
FC_CLONES double ce_row(const T* z, int64_t C, int64_t t, bool ignored, double eps, double scale,
                        T* g) {
  if (ignored) {
    for (int64_t c = 0; c < C; ++c) g[c] = T(0);
    return 0.0;
  }
  const T m = row_max(z, C);
  const double s = row_exp_sum<T>(z, C, m, g);  // g = exp(z - m) for now
  // log p_c = (z_c - m) - log(s): with m + log(s) formed first, log(s) was lost next to a
  // large m (logits of 1e30 gave a loss of -0 for log 3)
  const double ls = std::log(s);
  const double logp_t = (double(z[t]) - double(m)) - ls;
  double loss = -(1.0 - eps) * logp_t;
  if (eps != 0.0) {  // sum_c log p_c = sum_c (z_c - m) - C log(s)
    double zm = 0.0;
    for (int64_t c = 0; c < C; ++c) zm += double(z[c]) - double(m);
    loss -= eps / double(C) * (zm - double(C) * ls);
  }
  const T a = T(scale / s), b = T(scale * eps / double(C));
  for (int64_t c = 0; c < C; ++c) g[c] = g[c] * a - b;
  g[t] -= T(scale * (1.0 - eps));
  return loss;
}

// Counter-based hash: two rounds of a 32-bit integer mixer (multiply /
// xor-shift; vectorizes with 32-bit lane multiplies) over the element index,
// keyed by the seed. The draw of element i depends only on (seed, index).
FC_INLINE uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x7feb352du;
  h ^= h >> 15;
  h *= 0x846ca68bu;
  h ^= h >> 16;
  return h;
}

inline uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <typename T>
FC_CLONES void dropout_leaf(int64_t n, const T* x, uint32_t k0, uint32_t k1, uint64_t start,
                            uint32_t thr, T scale, T* y, uint8_t* mask) {
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t g = start + uint64_t(i);
    uint32_t h = mix32(uint32_t(g) ^ k0);
    h = mix32(h ^ (uint32_t(g >> 32) * 0x9E3779B1u) ^ k1);
    const bool keep = h >= thr;
    mask[i] = keep ? 1 : 0;
    // multiply rather than select, so a dropped NaN/inf stays NaN (as torch)
    y[i] = x[i] * (keep ? scale : T(0));
  }
}

template <typename T>
FC_CLONES void dropout_bwd_leaf(int64_t n, const T* dy, const uint8_t* mask, T scale, T* dx) {
  for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * (mask[i] ? scale : T(0));
}

}  // namespace layers_detail

using namespace layers_detail;

template <typename T>
void activation_forward(int kind, int64_t n, const T* x, T* y) {
  for_chunks(n, [&](int64_t i0, int64_t len) { act_fwd_leaf<T>(kind, len, x + i0, y + i0); });
}

template <typename T>
void activation_backward(int kind, int64_t n, const T* dy, const T* y, T* dx) {
  for_chunks(n, [&](int64_t i0, int64_t len) {
    act_bwd_leaf<T>(kind, len, dy + i0, y + i0, dx + i0);
  });
}

namespace {
// Column tile for inner > 1: enough columns to vectorize, few enough that
// the D x tile block stays cached between the passes.
inline int64_t col_tile(int64_t D, int64_t inner) {
  int64_t t = (64 * 1024) / std::max<int64_t>(1, D * 8);
  t = std::max<int64_t>(16, std::min<int64_t>(1024, t));
  return std::min(t, inner);
}
}  // namespace

template <typename T>
void softmax_forward(bool log, int64_t outer, int64_t D, int64_t inner, const T* x, T* y) {
  const int64_t total = outer * D * inner;
  if (inner == 1) {
#ifdef FC_SOFTMAX_AVX512
    if constexpr (std::is_same<T, float>::value) {
      const bool avx512 = std::string(gemm_isa()) == "avx512";  // CPUID or set_isa(), as every path
      if (avx512) {
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (total > kParallelMin)
        for (int64_t o = 0; o < outer; ++o) softmax_row_f32_avx512(log, x + o * D, D, y + o * D);
        return;
      }
    }
#endif
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (total > kParallelMin)
    for (int64_t o = 0; o < outer; ++o) softmax_row<T>(log, x + o * D, D, y + o * D);
    return;
  }
  const int64_t TL = col_tile(D, inner), nt = ceil_div(inner, TL);
#pragma omp parallel num_threads(::fastconv::max_threads()) if (total > kParallelMin)
  {
    AlignedBuffer<T> mx(TL);
    AlignedBuffer<double> acc(TL);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < outer * nt; ++it) {
      const int64_t o = it / nt, j0 = (it % nt) * TL, len = std::min(TL, inner - j0);
      const int64_t base = o * D * inner + j0;
      softmax_cols<T>(log, x + base, D, inner, len, y + base, mx.data(), acc.data());
    }
  }
}

template <typename T>
void softmax_backward(bool log, int64_t outer, int64_t D, int64_t inner, const T* dy, const T* y,
                      T* dx) {
  const int64_t total = outer * D * inner;
  if (inner == 1) {
#ifdef FC_SOFTMAX_AVX512
    if constexpr (std::is_same<T, float>::value) {
      const bool avx512 = std::string(gemm_isa()) == "avx512";  // CPUID or set_isa(), as every path
      if (!log && avx512) {
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (total > kParallelMin)
        for (int64_t o = 0; o < outer; ++o) softmax_row_bwd_f32_avx512(dy + o * D, y + o * D, D, dx + o * D);
        return;
      }
    }
#endif
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (total > kParallelMin)
    for (int64_t o = 0; o < outer; ++o) softmax_row_bwd<T>(log, dy + o * D, y + o * D, D, dx + o * D);
    return;
  }
  const int64_t TL = col_tile(D, inner), nt = ceil_div(inner, TL);
#pragma omp parallel num_threads(::fastconv::max_threads()) if (total > kParallelMin)
  {
    AlignedBuffer<double> acc(TL);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < outer * nt; ++it) {
      const int64_t o = it / nt, j0 = (it % nt) * TL, len = std::min(TL, inner - j0);
      const int64_t base = o * D * inner + j0;
      softmax_cols_bwd<T>(log, dy + base, y + base, D, inner, len, dx + base, acc.data());
    }
  }
}

template <typename T>
void cross_entropy_fused(int64_t N, int64_t C, const T* logits, const int64_t* target,
                         int64_t ignore_index, double label_smoothing, double grad_scale,
                         double* row_loss, T* grad) {
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (N * C > kParallelMin)
  for (int64_t i = 0; i < N; ++i) {
    const bool ign = target[i] == ignore_index;
    row_loss[i] = ce_row<T>(logits + i * C, C, ign ? 0 : target[i], ign, label_smoothing,
                            grad_scale, grad + i * C);
  }
}

template <typename T>
void dropout_forward(int64_t n, const T* x, uint64_t seed, uint64_t offset, uint64_t threshold,
                     T scale, T* y, uint8_t* mask) {
  const uint64_t key = splitmix64(seed);
  const uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  const uint32_t thr = uint32_t(std::min<uint64_t>(threshold, 0xFFFFFFFFull));
  for_chunks(n, [&](int64_t i0, int64_t len) {
    dropout_leaf<T>(len, x + i0, k0, k1, offset + uint64_t(i0), thr, scale, y + i0, mask + i0);
  });
}

template <typename T>
void dropout_backward(int64_t n, const T* dy, const uint8_t* mask, T scale, T* dx) {
  for_chunks(n, [&](int64_t i0, int64_t len) {
    dropout_bwd_leaf<T>(len, dy + i0, mask + i0, scale, dx + i0);
  });
}

#define FC_INST(T)                                                                                 \
  template void activation_forward<T>(int, int64_t, const T*, T*);                                \
  template void activation_backward<T>(int, int64_t, const T*, const T*, T*);                     \
  template void softmax_forward<T>(bool, int64_t, int64_t, int64_t, const T*, T*);                \
  template void softmax_backward<T>(bool, int64_t, int64_t, int64_t, const T*, const T*, T*);     \
  template void cross_entropy_fused<T>(int64_t, int64_t, const T*, const int64_t*, int64_t,       \
                                       double, double, double*, T*);                              \
  template void dropout_forward<T>(int64_t, const T*, uint64_t, uint64_t, uint64_t, T, T*,        \
                                   uint8_t*);                                                     \
  template void dropout_backward<T>(int64_t, const T*, const uint8_t*, T, T*);
FC_INST(float)
FC_INST(double)
#undef FC_INST

}  // namespace fastconv
