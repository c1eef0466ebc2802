// Direct convolution kernels, compiled once per ISA (see conv_direct.cpp):
// this header is included by conv_direct_{base,avx2,avx512}.cpp, each built
// with its own -m flags and FC_ISA_NS, so the same simple loops vectorize to
// SSE2, AVX2 or AVX-512 and the dispatcher picks the widest the CPU runs.
//
// The direct kernels are the always-correct fallback, and the fast choice when
// channels are few or the convolution is depthwise.
//
// All three operators work row by row so that the row being accumulated stays
// in L1 and the innermost loop runs over contiguous output (or input) columns
// when the stride is 1. Every output element is owned by exactly one thread and
// accumulated in a fixed order: deterministic.
#ifndef FC_ISA_NS
#error "define FC_ISA_NS before including conv_direct_impl.h"
#endif
#include <cstdlib>
#include <new>

#include "fastconv/conv_cpu.h"
#include "fastconv/parallel.h"
#ifdef _OPENMP
#include <omp.h>
#endif

// Nothing here may instantiate an inline/template function shared with other
// translation units (std::vector, helpers from parallel.h, ...): the linker
// keeps ONE copy of such weak symbols, possibly the AVX-512 one, which would
// then run on CPUs without AVX-512. Everything this file needs is defined
// inside the per-ISA namespace below.

namespace fastconv {
namespace FC_ISA_NS {

static inline int64_t first_valid(int64_t offset, int64_t stride) {
  return offset >= 0 ? 0 : (-offset + stride - 1) / stride;
}
static inline int64_t end_valid(int64_t offset, int64_t stride, int64_t limit, int64_t n) {
  if (limit - offset <= 0) return 0;
  const int64_t e = (limit - offset + stride - 1) / stride;
  return e < n ? e : n;
}

// Column ranges depend only on the tap column s: computed once per call
// (integer divisions per tap and row would otherwise dominate small layers).
struct TapCols {
  int64_t* woff;  // s*dil_w - pad_w
  int64_t* q0;    // first output column whose tap s lands inside the input
  int64_t* q1;    // one past the last such column
  explicit TapCols(const ConvProblem& p) {
    woff = static_cast<int64_t*>(std::malloc(sizeof(int64_t) * 3 * p.S));
    if (!woff) throw std::bad_alloc();
    q0 = woff + p.S;
    q1 = q0 + p.S;
    for (int64_t s = 0; s < p.S; ++s) {
      woff[s] = s * p.dil_w - p.pad_w;
      q0[s] = first_valid(woff[s], p.stride_w);
      q1[s] = end_valid(woff[s], p.stride_w, p.W, p.Q);
      if (q1[s] < q0[s]) q1[s] = q0[s];
    }
  }
  ~TapCols() { std::free(woff); }
  TapCols(const TapCols&) = delete;
  TapCols& operator=(const TapCols&) = delete;
};

// row[q] += wv * src[q*stride + off] for q in [q0, q1)
template <typename T>
static inline void axpy_row(T* row, const T* src, T wv, int64_t q0, int64_t q1, int64_t stride,
                            int64_t off) {
  if (stride == 1) {
    const T* s = src + off;
#pragma omp simd
    for (int64_t q = q0; q < q1; ++q) row[q] += wv * s[q];
  } else {
    for (int64_t q = q0; q < q1; ++q) row[q] += wv * src[q * stride + off];
  }
}

template <typename T>
void direct_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, HW = p.H * p.W;
  const int64_t RS = p.R * p.S;
  const int64_t rows = p.N * p.K * p.P;  // one work item = one output row
  const TapCols tc(p);
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static)
  for (int64_t item = 0; item < rows; ++item) {
    const int64_t pp = item % p.P;
    const int64_t nk = item / p.P;
    const int64_t k = nk % p.K, n = nk / p.K, g = k / Kg;
    T* orow = y + nk * PQ + pp * p.Q;
    const T b = bias ? bias[k] : T(0);
    for (int64_t q = 0; q < p.Q; ++q) orow[q] = b;
    // input rows this output row reads, the same for every channel
    const int64_t ih0 = pp * p.stride_h - p.pad_h;
    for (int64_t c = 0; c < Cg; ++c) {
      const T* xin = x + (n * p.C + g * Cg + c) * HW;
      const T* wk = w + (k * Cg + c) * RS;
      for (int64_t r = 0; r < p.R; ++r) {
        const int64_t ih = ih0 + r * p.dil_h;
        if (ih < 0 || ih >= p.H) continue;
        const T* xr = xin + ih * p.W;
        const T* wr = wk + r * p.S;
        for (int64_t s = 0; s < p.S; ++s)
          axpy_row(orow, xr, wr[s], tc.q0[s], tc.q1[s], p.stride_w, tc.woff[s]);
      }
    }
    if (relu)
      for (int64_t q = 0; q < p.Q; ++q) orow[q] = relu_value(orow[q]);
  }
}

// Dgrad as a gather: one work item is one row of grad_input; it pulls from
// every (k, r, s) tap whose output row exists. No atomics, fixed order.
template <typename T>
void direct_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, HW = p.H * p.W;
  const int64_t RS = p.R * p.S;
  const int64_t rows = p.N * p.C * p.H;
  const TapCols tc(p);
#pragma omp parallel num_threads(::fastconv::max_threads())
  {
    // (r, output row) pairs that reach the current input row
    int64_t* taps = static_cast<int64_t*>(std::malloc(sizeof(int64_t) * 2 * p.R));
#pragma omp for schedule(static)
    for (int64_t item = 0; item < rows; ++item) {
      const int64_t h = item % p.H;
      const int64_t nc = item / p.H;
      const int64_t ct = nc % p.C, n = nc / p.C;
      const int64_t g = ct / Cg, c = ct % Cg;
      T* dxr = dx + nc * HW + h * p.W;
      for (int64_t i = 0; i < p.W; ++i) dxr[i] = T(0);
      int64_t ntaps = 0;
      for (int64_t r = 0; r < p.R; ++r) {
        const int64_t num = h + p.pad_h - r * p.dil_h;
        if (num < 0 || num % p.stride_h) continue;
        const int64_t pp = num / p.stride_h;
        if (pp >= p.P) continue;
        taps[2 * ntaps] = r;
        taps[2 * ntaps + 1] = pp;
        ++ntaps;
      }
      if (ntaps == 0) continue;
      for (int64_t kk = 0; kk < Kg; ++kk) {
        const int64_t k = g * Kg + kk;
        const T* dyk = dy + (n * p.K + k) * PQ;
        const T* wk = w + (k * Cg + c) * RS;
        for (int64_t t = 0; t < ntaps; ++t) {
          const T* dyr = dyk + taps[2 * t + 1] * p.Q;
          const T* wr = wk + taps[2 * t] * p.S;
          for (int64_t s = 0; s < p.S; ++s) {
            const T wv = wr[s];
            const int64_t woff = tc.woff[s];
            if (p.stride_w == 1) {
              T* d = dxr + woff;
#pragma omp simd
              for (int64_t q = tc.q0[s]; q < tc.q1[s]; ++q) d[q] += wv * dyr[q];
            } else {
              for (int64_t q = tc.q0[s]; q < tc.q1[s]; ++q) dxr[q * p.stride_w + woff] += wv * dyr[q];
            }
          }
        }
      }
    }
    std::free(taps);
  }
}

// Wgrad: one work item is one (k, c) filter slice; it reduces over N, P, Q.
// Row dot products run in T (vectorized), the running sum per tap in double.
template <typename T>
void direct_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, HW = p.H * p.W;
  const int64_t RS = p.R * p.S;
  const int64_t slices = p.K * Cg;
  const TapCols tc(p);
#pragma omp parallel num_threads(::fastconv::max_threads())
  {
    double* acc = static_cast<double*>(std::malloc(sizeof(double) * RS));
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < slices; ++item) {
      const int64_t k = item / Cg, c = item % Cg, g = k / Kg;
      for (int64_t i = 0; i < RS; ++i) acc[i] = 0.0;
      for (int64_t n = 0; n < p.N; ++n) {
        const T* xin = x + (n * p.C + g * Cg + c) * HW;
        const T* dyk = dy + (n * p.K + k) * PQ;
        for (int64_t pp = 0; pp < p.P; ++pp) {
          const T* dyr = dyk + pp * p.Q;
          for (int64_t r = 0; r < p.R; ++r) {
            const int64_t ih = pp * p.stride_h - p.pad_h + r * p.dil_h;
            if (ih < 0 || ih >= p.H) continue;
            const T* xr = xin + ih * p.W;
            for (int64_t s = 0; s < p.S; ++s) {
              const int64_t woff = tc.woff[s], q0 = tc.q0[s], q1 = tc.q1[s];
              T sum = T(0);
              if (p.stride_w == 1) {
                const T* xs = xr + woff;
#pragma omp simd reduction(+ : sum)
                for (int64_t q = q0; q < q1; ++q) sum += dyr[q] * xs[q];
              } else {
                for (int64_t q = q0; q < q1; ++q) sum += dyr[q] * xr[q * p.stride_w + woff];
              }
              acc[r * p.S + s] += double(sum);
            }
          }
        }
      }
      T* dws = dw + item * RS;
      for (int64_t i = 0; i < RS; ++i) dws[i] = T(acc[i]);
    }
    std::free(acc);
  }
}

#define FC_INSTANTIATE(T)                                                                    \
  template void direct_fprop<T>(const ConvProblem&, const T*, const T*, const T*, T*, bool); \
  template void direct_dgrad<T>(const ConvProblem&, const T*, const T*, T*);                 \
  template void direct_wgrad<T>(const ConvProblem&, const T*, const T*, T*);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
#undef FC_INSTANTIATE

}  // namespace FC_ISA_NS
}  // namespace fastconv
