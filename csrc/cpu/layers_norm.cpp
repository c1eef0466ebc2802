// Batch normalization and local response normalization (NCHW, forward and
// backward). Per-channel statistics are accumulated in double as per-plane
// partial sums (one plane = one (n, c) pair, lanes in a fixed order) that are
// then added over n in index order: the result does not depend on how the
// planes were spread over threads.
#include <algorithm>
#include <cmath>
#include <vector>

#include "fastconv/layers_cpu.h"
#include "layers_common.h"

namespace fastconv {
namespace layers_detail {

// s1 = sum (x - shift), s2 = sum (x - shift)^2 over one contiguous plane.
template <typename T>
FC_CLONES void plane_moments(const T* x, int64_t L, double shift, double* s1, double* s2) {
  double a[kLanes] = {0}, b[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= L; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double v = double(x[i + l]) - shift;
      a[l] += v;
      b[l] += v * v;
    }
  for (int l = 0; i < L; ++i, ++l) {
    const double v = double(x[i]) - shift;
    a[l] += v;
    b[l] += v * v;
  }
  double ra = 0, rb = 0;
  for (int l = 0; l < kLanes; ++l) {
    ra += a[l];
    rb += b[l];
  }
  *s1 = ra;
  *s2 = rb;
}

// s1 = sum dy, s2 = sum dy * (x - mean) over one plane.
template <typename T>
FC_CLONES void plane_grad_sums(const T* dy, const T* x, int64_t L, double mean, double* s1,
                               double* s2) {
  double a[kLanes] = {0}, b[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= L; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double g = double(dy[i + l]);
      a[l] += g;
      b[l] += g * (double(x[i + l]) - mean);
    }
  for (int l = 0; i < L; ++i, ++l) {
    const double g = double(dy[i]);
    a[l] += g;
    b[l] += g * (double(x[i]) - mean);
  }
  double ra = 0, rb = 0;
  for (int l = 0; l < kLanes; ++l) {
    ra += a[l];
    rb += b[l];
  }
  *s1 = ra;
  *s2 = rb;
}

// y = (x - m) * a + b: subtracting the mean first keeps the cancellation out
// of the scaled values when |mean| >> std.
template <typename T>
FC_CLONES void plane_affine(const T* x, int64_t L, T m, T a, T b, T* y) {
  for (int64_t i = 0; i < L; ++i) y[i] = (x[i] - m) * a + b;
}

// dx = k1 * dy + k2 * (x - m) + k3
template <typename T>
FC_CLONES void plane_bn_dx(const T* dy, const T* x, int64_t L, T k1, T k2, T m, T k3, T* dx) {
  for (int64_t i = 0; i < L; ++i) dx[i] = k1 * dy[i] + k2 * (x[i] - m) + k3;
}

template <typename T>
FC_CLONES void scale_copy(const T* x, int64_t L, T a, T* y) {
  for (int64_t i = 0; i < L; ++i) y[i] = x[i] * a;
}

// Per-channel sums over all planes of channel c, in n order. `fn(plane
// pointer offset, &s1, &s2)` computes one plane. For tiny planes (2-D input:
// L == 1) the per-plane calls would dominate, so a channel is then summed as
// one strided loop on one thread.
template <typename PlaneFn, typename StridedFn>
void channel_sums(int64_t N, int64_t C, int64_t L, double* out1, double* out2, PlaneFn plane,
                  StridedFn strided) {
  const int64_t total = N * C * L;
  if (L < 64) {
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (total > kParallelMin)
    for (int64_t c = 0; c < C; ++c) strided(c, &out1[c], &out2[c]);
    return;
  }
  std::vector<double> p1(N * C), p2(N * C);
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (total > kParallelMin)
  for (int64_t nc = 0; nc < N * C; ++nc) plane(nc, &p1[nc], &p2[nc]);
  for (int64_t c = 0; c < C; ++c) {
    double s1 = 0, s2 = 0;
    for (int64_t n = 0; n < N; ++n) {
      s1 += p1[n * C + c];
      s2 += p2[n * C + c];
    }
    out1[c] = s1;
    out2[c] = s2;
  }
}

}  // namespace layers_detail

using namespace layers_detail;

// E[v^2] - E[v]^2 of the shifted values: rounding below 0 gives 0; NaN stays
// NaN (NaN or inf in the data: the mean d is then not finite) unless d is
// finite, when finite data's squares overflowed: +inf, as torch's Welford sums
// give (invstd 0: the outputs are 0 + bias, not garbage).
inline double biased_variance(double s2_over_m, double d) {
  const double v = s2_over_m - d * d;
  if (v >= 0) return v;
  if (v < 0) return 0.0;
  return std::isfinite(d) ? HUGE_VAL : v;
}

template <typename T>
void bn_stats(int64_t N, int64_t C, int64_t L, const T* x, double* mean, double* var_biased) {
  const double M = double(N * L);
  // Shifted moments (shift = the channel's first element): one pass over the
  // data, without the E[x^2] - E[x]^2 cancellation when |mean| >> std.
  std::vector<double> shift(C), s1(C), s2(C);
  for (int64_t c = 0; c < C; ++c) shift[c] = double(x[c * L]);
  channel_sums(
      N, C, L, s1.data(), s2.data(),
      [&](int64_t nc, double* a, double* b) {
        plane_moments<T>(x + nc * L, L, shift[nc % C], a, b);
      },
      [&](int64_t c, double* a, double* b) {
        double ra = 0, rb = 0;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t l = 0; l < L; ++l) {
            const double v = double(x[(n * C + c) * L + l]) - shift[c];
            ra += v;
            rb += v * v;
          }
        *a = ra;
        *b = rb;
      });
  for (int64_t c = 0; c < C; ++c) {
    const double d = s1[c] / M;
    mean[c] = shift[c] + d;
    var_biased[c] = biased_variance(s2[c] / M, d);
  }
}

template <typename T>
void bn_apply(int64_t N, int64_t C, int64_t L, const T* x, const double* mean, const double* invstd,
              const T* w, const T* b, T* y) {
  std::vector<T> a(C), m(C), bb(C);
  for (int64_t c = 0; c < C; ++c) {
    a[c] = T(invstd[c] * (w ? double(w[c]) : 1.0));
    m[c] = T(mean[c]);
    bb[c] = b ? b[c] : T(0);
  }
  const int64_t total = N * C * L;
  if (L == 1) {
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (total > kParallelMin)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) y[n * C + c] = (x[n * C + c] - m[c]) * a[c] + bb[c];
    return;
  }
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (total > kParallelMin)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t c = nc % C;
    plane_affine<T>(x + nc * L, L, m[c], a[c], bb[c], y + nc * L);
  }
}

template <typename T>
void bn_backward(int64_t N, int64_t C, int64_t L, const T* dy, const T* x, const double* mean,
                 const double* invstd, const T* w, bool training, T* dx, T* dw, T* db) {
  const double M = double(N * L);
  const int64_t total = N * C * L;
  std::vector<double> sdy(C, 0.0), sdyx(C, 0.0);
  if (training || dw || db) {
    channel_sums(
        N, C, L, sdy.data(), sdyx.data(),
        [&](int64_t nc, double* a, double* b) {
          plane_grad_sums<T>(dy + nc * L, x + nc * L, L, mean[nc % C], a, b);
        },
        [&](int64_t c, double* a, double* b) {
          double ra = 0, rb = 0;
          for (int64_t n = 0; n < N; ++n)
            for (int64_t l = 0; l < L; ++l) {
              const int64_t i = (n * C + c) * L + l;
              ra += double(dy[i]);
              rb += double(dy[i]) * (double(x[i]) - mean[c]);
            }
          *a = ra;
          *b = rb;
        });
  }
  for (int64_t c = 0; c < C; ++c) {
    if (dw) dw[c] = T(sdyx[c] * invstd[c]);
    if (db) db[c] = T(sdy[c]);
  }
  if (!dx) return;
  std::vector<T> k1(C), k2(C), k3(C), m(C);
  for (int64_t c = 0; c < C; ++c) {
    const double g = w ? double(w[c]) : 1.0;
    const double a = g * invstd[c];
    k1[c] = T(a);
    m[c] = T(mean[c]);
    if (training) {
      // d/dx of the batch statistics: dx = a (dy - mean(dy) - xhat mean(dy xhat))
      k2[c] = T(-a * invstd[c] * invstd[c] * sdyx[c] / M);
      k3[c] = T(-a * sdy[c] / M);
    } else {
      k2[c] = T(0);
      k3[c] = T(0);
    }
  }
  if (L == 1) {
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (total > kParallelMin)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t i = n * C + c;
        dx[i] = k1[c] * dy[i] + k2[c] * (x[i] - m[c]) + k3[c];
      }
    return;
  }
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (total > kParallelMin)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t c = nc % C;
    if (training)
      plane_bn_dx<T>(dy + nc * L, x + nc * L, L, k1[c], k2[c], m[c], k3[c], dx + nc * L);
    else
      scale_copy<T>(dy + nc * L, L, k1[c], dx + nc * L);
  }
}

// ------------------------------------------------------------------- LRN
namespace layers_detail {

// s = b^-beta over an array, with closed forms for the common exponents
// (AlexNet's 0.75) so that the loop vectorizes; std::pow otherwise.
template <typename T>
FC_CLONES void pow_neg(const T* b, int64_t n, double beta, T* s) {
  if (beta == 0.75) {
    for (int64_t i = 0; i < n; ++i) {
      const T r = std::sqrt(b[i]);
      s[i] = T(1) / (r * std::sqrt(r));
    }
  } else if (beta == 0.5) {
    for (int64_t i = 0; i < n; ++i) s[i] = T(1) / std::sqrt(b[i]);
  } else if (beta == 1.0) {
    for (int64_t i = 0; i < n; ++i) s[i] = T(1) / b[i];
  } else {
    for (int64_t i = 0; i < n; ++i) s[i] = T(std::pow(double(b[i]), -beta));
  }
}

// Window sums over channels without a running sum. A running sum (add the
// channel that enters, subtract the one that leaves) loses the small channels'
// digits to cancellation once a large one has passed through the window
// ([1e8, 1, 1, 1] with size 1 gave 177.8 for 1). Instead the channels are cut
// into blocks of `size` (= the window length), each with its prefix sums P
// (from the block's start) and suffix sums S (to its end, or to channel C-1):
// a window [a, e] lies in one block, starting at its start (P[e]) or ending at
// its end (S[a]), or spans two (S[a] + P[e]). Only the window's own terms are
// ever added, so each sum is as accurate as a direct one, at O(1) per element
// for any size (van Herk / Gil-Werman).
template <typename T, bool kSquare>
FC_CLONES void block_scans(const T* src, int64_t ld, int64_t C, int64_t len, int64_t w, double* P, double* S,
                           int64_t TL) {
  for (int64_t b0 = 0; b0 < C; b0 += w) {
    const int64_t b1 = std::min(C, b0 + w);
    for (int64_t c = b0; c < b1; ++c) {
      const T* xc = src + c * ld;
      double* pc = P + c * TL;
      const double* pp = c == b0 ? nullptr : P + (c - 1) * TL;
      for (int64_t i = 0; i < len; ++i) {
        const double v = kSquare ? double(xc[i]) * double(xc[i]) : double(xc[i]);
        pc[i] = pp ? pp[i] + v : v;
      }
    }
    for (int64_t c = b1 - 1; c >= b0; --c) {
      const T* xc = src + c * ld;
      double* sc = S + c * TL;
      const double* sn = c == b1 - 1 ? nullptr : S + (c + 1) * TL;
      for (int64_t i = 0; i < len; ++i) {
        const double v = kSquare ? double(xc[i]) * double(xc[i]) : double(xc[i]);
        sc[i] = sn ? sn[i] + v : v;
      }
    }
  }
}

// The sums over channels [c - lo, c + hi] (clipped to [0, C)) from block_scans:
// a row of P or S, or their sum in acc.
inline const double* window_sum(int64_t c, int64_t lo, int64_t hi, int64_t C, int64_t len, int64_t w,
                                const double* P, const double* S, int64_t TL, double* acc) {
  const int64_t a = std::max<int64_t>(0, c - lo), e = std::min(C - 1, c + hi);
  if (a / w == e / w) return a % w == 0 ? P + e * TL : S + a * TL;
  const double* sa = S + a * TL;
  const double* pe = P + e * TL;
  for (int64_t i = 0; i < len; ++i) acc[i] = sa[i] + pe[i];
  return acc;
}

template <typename T>
FC_CLONES void lrn_base(const double* acc, int64_t n, double k, double coef, T* b) {
  for (int64_t i = 0; i < n; ++i) b[i] = T(k + coef * acc[i]);
}

template <typename T>
FC_CLONES void mul_arrays(const T* x, const T* s, int64_t n, T* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * s[i];
}

// t = dy * x * s / b  (= dy * y / b: the factor of the window terms)
template <typename T>
FC_CLONES void lrn_t(const T* dy, const T* x, const T* s, const T* b, int64_t n, T* t) {
  for (int64_t i = 0; i < n; ++i) t[i] = dy[i] * x[i] * s[i] / b[i];
}

// dx = dy * s - c * x * u
template <typename T>
FC_CLONES void lrn_dx(const T* dy, const T* s, const T* x, const double* u, double c, int64_t n,
                      T* dx) {
  for (int64_t i = 0; i < n; ++i) dx[i] = T(double(dy[i] * s[i]) - c * double(x[i]) * u[i]);
}

// Tile length over the spatial axis: the per-thread scratch (C rows of the
// tile) stays in L2.
inline int64_t lrn_tile(int64_t C, int64_t L, int64_t bytes_per_elem) {
  int64_t t = (256 * 1024) / std::max<int64_t>(1, C * bytes_per_elem);
  t = std::max<int64_t>(64, std::min<int64_t>(2048, t)) / 16 * 16;
  return std::min(t, L);
}

}  // namespace layers_detail

template <typename T>
void lrn_forward(int64_t N, int64_t C, int64_t L, const T* x, int64_t size, double alpha,
                 double beta, double k, T* y) {
  const int64_t lo = size / 2, hi = (size - 1) / 2, w = std::min(size, C);
  const double coef = alpha / double(size);
  const int64_t TL = lrn_tile(C, L, 2 * sizeof(double));
  const int64_t ntiles = ceil_div(L, TL);
  const int64_t total = N * C * L;
#pragma omp parallel num_threads(::fastconv::max_threads()) if (total > kParallelMin)
  {
    AlignedBuffer<double> P(C * TL), S(C * TL), acc(TL);
    AlignedBuffer<T> b(TL), s(TL);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < N * ntiles; ++it) {
      const int64_t n = it / ntiles, l0 = (it % ntiles) * TL, len = std::min(TL, L - l0);
      const T* xn = x + n * C * L + l0;
      T* yn = y + n * C * L + l0;
      // sums of squares over the windows: channels [c - lo, c + hi]
      block_scans<T, true>(xn, L, C, len, w, P.data(), S.data(), TL);
      for (int64_t c = 0; c < C; ++c) {
        const double* sq = window_sum(c, lo, hi, C, len, w, P.data(), S.data(), TL, acc.data());
        lrn_base<T>(sq, len, k, coef, b.data());
        pow_neg<T>(b.data(), len, beta, s.data());
        mul_arrays<T>(xn + c * L, s.data(), len, yn + c * L);
      }
    }
  }
}

template <typename T>
void lrn_backward(int64_t N, int64_t C, int64_t L, const T* dy, const T* x, int64_t size,
                  double alpha, double beta, double k, T* dx) {
  // y_i = x_i b_i^-beta, b_i = k + alpha/size sum_{j in W(i)} x_j^2, so
  // dx_j = dy_j b_j^-beta - 2 alpha beta / size * x_j * sum_{i : j in W(i)} dy_i x_i b_i^(-beta-1).
  // j in W(i) = [i - lo, i + hi]  <=>  i in [j - hi, j + lo]: the mirrored window.
  const int64_t lo = size / 2, hi = (size - 1) / 2, w = std::min(size, C);
  const double coef = alpha / double(size);
  const double cgrad = 2.0 * alpha * beta / double(size);
  const int64_t TL = lrn_tile(C, L, 2 * sizeof(T) + 2 * sizeof(double));
  const int64_t ntiles = ceil_div(L, TL);
  const int64_t total = N * C * L;
#pragma omp parallel num_threads(::fastconv::max_threads()) if (total > kParallelMin)
  {
    AlignedBuffer<double> P(C * TL), S(C * TL), acc(TL);
    AlignedBuffer<T> b(TL), s(C * TL), t(C * TL);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < N * ntiles; ++it) {
      const int64_t n = it / ntiles, l0 = (it % ntiles) * TL, len = std::min(TL, L - l0);
      const T* xn = x + n * C * L + l0;
      const T* dyn = dy + n * C * L + l0;
      T* dxn = dx + n * C * L + l0;
      block_scans<T, true>(xn, L, C, len, w, P.data(), S.data(), TL);
      for (int64_t c = 0; c < C; ++c) {
        const double* sq = window_sum(c, lo, hi, C, len, w, P.data(), S.data(), TL, acc.data());
        lrn_base<T>(sq, len, k, coef, b.data());
        pow_neg<T>(b.data(), len, beta, s.data() + c * TL);
        lrn_t<T>(dyn + c * L, xn + c * L, s.data() + c * TL, b.data(), len, t.data() + c * TL);
      }
      // u_j = sum_{i in [j - hi, j + lo]} t_i: the same block sums over the mirrored window
      block_scans<T, false>(t.data(), TL, C, len, w, P.data(), S.data(), TL);
      for (int64_t j = 0; j < C; ++j) {
        const double* u = window_sum(j, hi, lo, C, len, w, P.data(), S.data(), TL, acc.data());
        lrn_dx<T>(dyn + j * L, s.data() + j * TL, xn + j * L, u, cgrad, len, dxn + j * L);
      }
    }
  }
}

#define FC_INST(T)                                                                                \
  template void bn_stats<T>(int64_t, int64_t, int64_t, const T*, double*, double*);              \
  template void bn_apply<T>(int64_t, int64_t, int64_t, const T*, const double*, const double*,   \
                            const T*, const T*, T*);                                             \
  template void bn_backward<T>(int64_t, int64_t, int64_t, const T*, const T*, const double*,     \
                               const double*, const T*, bool, T*, T*, T*);                       \
  template void lrn_forward<T>(int64_t, int64_t, int64_t, const T*, int64_t, double, double,     \
                               double, T*);                                                      \
  template void lrn_backward<T>(int64_t, int64_t, int64_t, const T*, const T*, int64_t, double,  \
                                double, double, T*);
FC_INST(float)
FC_INST(double)
#undef FC_INST

}  // namespace fastconv
