// AVX2/FMA float micro-kernel and peak-FMA loop.
// Compiled with -mavx2 -mfma; only ever called after gemm.cpp has verified
// CPU + OS support (see gemm_kernels.h).
#include <immintrin.h>

#include "gemm_kernels.h"

namespace fastconv {
namespace detail {
namespace {

// Lane mask (sign bit set = active) for the v-th 8-wide vector of n columns.
inline __m256i col_mask(int n, int v) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 8 * v), lane);
}

// MR x (8*NV) tile; 6x16 uses 12 ymm accumulators + 2 B + 1 broadcast, which
// covers FMA latency (4) x 2 pipes with room to spare and fits the 16 ymm.
template <int MR, int NV>
void sgemm_ukr(int64_t kc, const float* a, const float* b, int64_t ldb,
               float* c, int64_t ldc, int m, int n, float beta,
               const float* bias, bool relu) {
  __m256 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_setzero_ps();

  for (int i = 0; i < m; ++i)
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);

  for (int64_t p = 0; p < kc; ++p) {
    __m256 bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_loadu_ps(b + 8 * v);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_fmadd_ps(ai, bv[v], acc[i][v]);
    }
    a += MR;
    b += ldb;
  }

  const bool full = (n == 8 * NV);
  __m256i mask[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) mask[v] = col_mask(n, v);
  const __m256 vbeta = _mm256_set1_ps(beta);
  const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (i >= m) break;
    float* ci = c + i * ldc;
    const __m256 vb = bias ? _mm256_set1_ps(bias[i]) : zero;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      __m256 r = acc[i][v];
      if (beta != 0.0f) {
        const __m256 old = full ? _mm256_loadu_ps(ci + 8 * v)
                                : _mm256_maskload_ps(ci + 8 * v, mask[v]);
        r = (beta == 1.0f) ? _mm256_add_ps(old, r) : _mm256_fmadd_ps(vbeta, old, r);
      }
      if (bias) r = _mm256_add_ps(r, vb);
      if (relu) r = _mm256_max_ps(zero, r);  // operand order: a NaN r stays NaN (vmaxps returns the second operand)
      if (full)
        _mm256_storeu_ps(ci + 8 * v, r);
      else
        _mm256_maskstore_ps(ci + 8 * v, mask[v], r);
    }
  }
}

}  // namespace

GemmKernel<float> sgemm_kernel_avx2() { return {"avx2", 6, 16, &sgemm_ukr<6, 2>, nullptr, 8,
          {&sgemm_ukr<6, 1>, nullptr, nullptr, nullptr}}; }

double peak_fma_loop_avx2(int64_t iters) {
  // 12 independent chains: > latency (4) x FMA pipes (2), registers only.
  constexpr int kChains = 12;
  __m256 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(1.0f + 1e-7f * i);
  const __m256 x = _mm256_set1_ps(0.999999f);
  const __m256 y = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
  }
  __m256 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float tmp[8];
  _mm256_store_ps(tmp, s);
  volatile float sink = tmp[0] + tmp[7];
  (void)sink;
  return static_cast<double>(iters) * kChains * 8 * 2;
}

}  // namespace detail
}  // namespace fastconv
