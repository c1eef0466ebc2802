// AVX-512 float micro-kernel and peak-FMA loop.
// Compiled with -mavx512f -mavx512vl -mavx512bw -mavx512dq -mfma; only ever
// called after gemm.cpp has verified CPU + OS support (see gemm_kernels.h).
#include <immintrin.h>

#include <algorithm>

#include "gemm_kernels.h"

namespace fastconv {
namespace detail {
namespace {

// Lane mask for the v-th 16-wide vector of an n-column tile.
inline __mmask16 col_mask(int n, int v) {
  const int rem = n - 16 * v;
  if (rem >= 16) return static_cast<__mmask16>(0xFFFF);
  if (rem <= 0) return 0;
  return static_cast<__mmask16>((1u << rem) - 1u);
}

// MR x (16*NV) register tile. MR*NV = 24 accumulators keep far more FMAs in
// flight than latency (4) x throughput needs (<= 8), and leave registers for
// NV B vectors + the broadcast (no spills; checked in the asm). A is broadcast
// from the L1-resident packed A panel, B vectors stream from the L2-resident
// packed B block (or straight from a row-major B for small M).
template <int MR, int NV>
void sgemm_ukr(int64_t kc, const float* a, const float* b, int64_t ldb,
               float* c, int64_t ldc, int m, int n, float beta,
               const float* bias, bool relu) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();

  // Warm the C tile while the K loop runs (it is touched once per K block).
  for (int i = 0; i < m; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 16 * v), _MM_HINT_T0);

  for (int64_t p = 0; p < kc; ++p) {
    __m512 bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
    }
    a += MR;
    b += ldb;
  }

  __mmask16 mask[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) mask[v] = col_mask(n, v);
  const __m512 vbeta = _mm512_set1_ps(beta);
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (i >= m) break;
    float* ci = c + i * ldc;
    const __m512 vb = bias ? _mm512_set1_ps(bias[i]) : zero;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      __m512 r = acc[i][v];
      if (beta == 1.0f) {
        r = _mm512_add_ps(_mm512_maskz_loadu_ps(mask[v], ci + 16 * v), r);
      } else if (beta != 0.0f) {
        r = _mm512_fmadd_ps(vbeta, _mm512_maskz_loadu_ps(mask[v], ci + 16 * v), r);
      }
      if (bias) r = _mm512_add_ps(r, vb);
      if (relu) r = _mm512_max_ps(zero, r);  // operand order: a NaN r stays NaN (vmaxps returns the second operand)
      _mm512_mask_storeu_ps(ci + 16 * v, mask[v], r);
    }
  }
}

// In-register 16x16 transpose: r[i] holds line i on entry, column i on exit.
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  // 2x2 interleave, then 4x4 within each 128-bit lane: u[4g+q] lane L holds
  // element 4L+q of lines 4g..4g+3.
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) {
    const __m512 t0 = t[4 * g], t1 = t[4 * g + 1], t2 = t[4 * g + 2], t3 = t[4 * g + 3];
    u[4 * g + 0] = _mm512_shuffle_ps(t0, t2, 0x44);
    u[4 * g + 1] = _mm512_shuffle_ps(t0, t2, 0xEE);
    u[4 * g + 2] = _mm512_shuffle_ps(t1, t3, 0x44);
    u[4 * g + 3] = _mm512_shuffle_ps(t1, t3, 0xEE);
  }
  // Gather 128-bit lane L of the four line groups into output 4L+q.
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0x44);
    const __m512 v1 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0xEE);
    const __m512 w0 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0x44);
    const __m512 w1 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0xEE);
    r[q] = _mm512_shuffle_f32x4(v0, w0, 0x88);
    r[4 + q] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
    r[8 + q] = _mm512_shuffle_f32x4(v1, w1, 0x88);
    r[12 + q] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
  }
}

inline __mmask16 low_mask(int n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

// k-major packer (see gemm_kernels.h): 16 lines x 16 k per block through an
// in-register transpose, so the source is read in 64-byte runs and the panel
// is written in full rows (masked to W, zero lanes for the padding lines).
void pack_kmajor_avx512(int64_t w, int W, int64_t kc, const float* src,
                        int64_t ld, float* dst) {
  for (int j0 = 0; j0 < W; j0 += 16) {
    const __mmask16 smask = low_mask(W - j0);
    const int64_t rows = std::min<int64_t>(16, std::max<int64_t>(0, w - j0));
    const float* s = src + j0 * ld;
    for (int64_t p0 = 0; p0 < kc; p0 += 16) {
      const int pk = static_cast<int>(std::min<int64_t>(16, kc - p0));
      const __mmask16 lmask = low_mask(pk);
      __m512 r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(lmask, s + i * ld + p0)
                        : _mm512_setzero_ps();
      transpose16(r);
      float* d = dst + p0 * W + j0;
      if (pk == 16) {
#pragma GCC unroll 16
        for (int pp = 0; pp < 16; ++pp) _mm512_mask_storeu_ps(d + pp * W, smask, r[pp]);
      } else {
        for (int pp = 0; pp < pk; ++pp) _mm512_mask_storeu_ps(d + pp * W, smask, r[pp]);
      }
    }
  }
}

}  // namespace

int sgemm_kernels_avx512(GemmKernel<float>* out, int max) {
  // 24 zmm accumulators each. 12x32 needs the least L2->L1 bandwidth per FMA
  // (2 B vectors per 12 broadcasts) and wins on large M; 8x48 and 6x64 waste
  // fewer rows when M is small (6x64 is ~2x faster than 12x32 at M = 6).
  const GemmKernel<float> all[] = {
      {"avx512", 12, 32, &sgemm_ukr<12, 2>, &pack_kmajor_avx512, 16,
       {&sgemm_ukr<12, 1>, nullptr, nullptr, nullptr}},
      {"avx512", 8, 48, &sgemm_ukr<8, 3>, &pack_kmajor_avx512, 16,
       {&sgemm_ukr<8, 1>, &sgemm_ukr<8, 2>, nullptr, nullptr}},
      {"avx512", 6, 64, &sgemm_ukr<6, 4>, &pack_kmajor_avx512, 16,
       {&sgemm_ukr<6, 1>, &sgemm_ukr<6, 2>, &sgemm_ukr<6, 3>, nullptr}},
  };
  int n = 0;
  for (const auto& k : all)
    if (n < max) out[n++] = k;
  return n;
}

double peak_fma_loop_avx512(int64_t iters) {
  // 16 independent chains: > latency (4) x FMA pipes (2), no memory traffic.
  constexpr int kChains = 16;
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(1.0f + 1e-7f * i);
  const __m512 x = _mm512_set1_ps(0.999999f);
  const __m512 y = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm512_add_ps(s, acc[i]);
  volatile float sink = _mm512_reduce_add_ps(s);
  (void)sink;
  return static_cast<double>(iters) * kChains * 16 * 2;
}

}  // namespace detail
}  // namespace fastconv
