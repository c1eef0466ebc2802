// Direct convolution: the always-correct fallback, and the fast choice when
// channels are few (LeNet, first layers) or the convolution is depthwise.
//
// All three operators work row by row so that the row being accumulated stays
// in L1 and the innermost loop runs over contiguous output (or input) columns
// when the stride is 1, which g++ vectorizes. Every output element is owned by
// exactly one thread and accumulated in a fixed order: deterministic.
#include <algorithm>
#include <cstring>
#include <vector>

#include "fastconv/conv_cpu.h"
#include "fastconv/parallel.h"

namespace fastconv {

std::string direct_supports(const ConvProblem&) { return ""; }

template <typename T>
void direct_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, HW = p.H * p.W;
  const int64_t RS = p.R * p.S;
  const int64_t rows = p.N * p.K * p.P;  // one work item = one output row
#pragma omp parallel for schedule(static)
  for (int64_t item = 0; item < rows; ++item) {
    const int64_t pp = item % p.P;
    const int64_t nk = item / p.P;
    const int64_t k = nk % p.K, n = nk / p.K, g = k / Kg;
    T* orow = y + nk * PQ + pp * p.Q;
    const T b = bias ? bias[k] : T(0);
    for (int64_t q = 0; q < p.Q; ++q) orow[q] = b;
    for (int64_t c = 0; c < Cg; ++c) {
      const T* xin = x + (n * p.C + g * Cg + c) * HW;
      const T* wk = w + (k * Cg + c) * RS;
      for (int64_t r = 0; r < p.R; ++r) {
        const int64_t ih = pp * p.stride_h - p.pad_h + r * p.dil_h;
        if (ih < 0 || ih >= p.H) continue;
        const T* xr = xin + ih * p.W;
        for (int64_t s = 0; s < p.S; ++s) {
          const T wv = wk[r * p.S + s];
          const int64_t woff = s * p.dil_w - p.pad_w;
          const int64_t q0 = first_valid(woff, p.stride_w);
          const int64_t q1 = end_valid(woff, p.stride_w, p.W, p.Q);
          if (p.stride_w == 1) {
            const T* xs = xr + woff;
#pragma omp simd
            for (int64_t q = q0; q < q1; ++q) orow[q] += wv * xs[q];
          } else {
            for (int64_t q = q0; q < q1; ++q) orow[q] += wv * xr[q * p.stride_w + woff];
          }
        }
      }
    }
    if (relu)
      for (int64_t q = 0; q < p.Q; ++q) orow[q] = orow[q] > T(0) ? orow[q] : T(0);
  }
}

// Dgrad as a gather: one work item is one row of grad_input; it pulls from
// every (k, r, s) tap whose output row exists. No atomics, fixed order.
template <typename T>
void direct_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, HW = p.H * p.W;
  const int64_t RS = p.R * p.S;
  const int64_t rows = p.N * p.C * p.H;
#pragma omp parallel for schedule(static)
  for (int64_t item = 0; item < rows; ++item) {
    const int64_t h = item % p.H;
    const int64_t nc = item / p.H;
    const int64_t ct = nc % p.C, n = nc / p.C;
    const int64_t g = ct / Cg, c = ct % Cg;
    T* dxr = dx + nc * HW + h * p.W;
    for (int64_t i = 0; i < p.W; ++i) dxr[i] = T(0);
    for (int64_t kk = 0; kk < Kg; ++kk) {
      const int64_t k = g * Kg + kk;
      const T* dyk = dy + (n * p.K + k) * PQ;
      const T* wk = w + (k * Cg + c) * RS;
      for (int64_t r = 0; r < p.R; ++r) {
        const int64_t num = h + p.pad_h - r * p.dil_h;
        if (num < 0 || num % p.stride_h) continue;
        const int64_t pp = num / p.stride_h;
        if (pp >= p.P) continue;
        const T* dyr = dyk + pp * p.Q;
        for (int64_t s = 0; s < p.S; ++s) {
          const T wv = wk[r * p.S + s];
          const int64_t woff = s * p.dil_w - p.pad_w;
          const int64_t q0 = first_valid(woff, p.stride_w);
          const int64_t q1 = end_valid(woff, p.stride_w, p.W, p.Q);
          if (p.stride_w == 1) {
            T* d = dxr + woff;
#pragma omp simd
            for (int64_t q = q0; q < q1; ++q) d[q] += wv * dyr[q];
          } else {
            for (int64_t q = q0; q < q1; ++q) dxr[q * p.stride_w + woff] += wv * dyr[q];
          }
        }
      }
    }
  }
}

// Wgrad: one work item is one (k, c) filter slice; it reduces over N, P, Q.
// Row dot products run in T (vectorized), the running sum per tap in double.
template <typename T>
void direct_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, HW = p.H * p.W;
  const int64_t RS = p.R * p.S;
  const int64_t slices = p.K * Cg;
#pragma omp parallel
  {
    std::vector<double> acc(RS);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < slices; ++item) {
      const int64_t k = item / Cg, c = item % Cg, g = k / Kg;
      std::fill(acc.begin(), acc.end(), 0.0);
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
              const int64_t woff = s * p.dil_w - p.pad_w;
              const int64_t q0 = first_valid(woff, p.stride_w);
              const int64_t q1 = end_valid(woff, p.stride_w, p.W, p.Q);
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
  }
}

#define FC_INSTANTIATE(T)                                                                    \
  template void direct_fprop<T>(const ConvProblem&, const T*, const T*, const T*, T*, bool); \
  template void direct_dgrad<T>(const ConvProblem&, const T*, const T*, T*);                 \
  template void direct_wgrad<T>(const ConvProblem&, const T*, const T*, T*);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
#undef FC_INSTANTIATE

}  // namespace fastconv
