// Separable 1xn / nx1 convolution (the Inception-v3 factorization) as shifted
// GEMMs with no im2col.
//
// For an nx1 kernel (S == 1) with stride 1 along H, output row p reads input
// row p - pad_h + r*dil_h for tap r, so for each tap the whole band of valid
// output rows is ONE GEMM over contiguous memory (with stride_h > 1 the tap's
// rows are first gathered into a band buffer):
//   output[:, p_lo:p_hi, :] += weight[:, :, r] (K x C) . input[:, p_lo+off_r : p_hi+off_r, :]
// The W axis (kernel width 1) may have any stride/padding: the input is first
// resampled to width Q (a copy only when stride_w != 1 or pad_w != 0).
// A 1xn kernel (R == 1) is the transpose of that: images are transposed H<->W
// into scratch, run through the nx1 path and transposed back (a memory-bound
// copy, small next to the 2*K*n flops per element of the GEMMs).
#include "conv_common.h"

namespace fastconv {

std::string separable_supports(const ConvProblem& p) {
  if (p.groups != 1) return "the separable algorithm needs groups == 1";
  if (p.R != 1 && p.S != 1) return "the separable algorithm needs a 1xn or nx1 kernel";
  return "";
}

namespace {

// The problem seen by the nx1 path: transposed (H<->W) for a 1xn kernel.
ConvProblem vertical_view(const ConvProblem& p, bool transpose) {
  if (!transpose) return p;
  ConvProblem v = p;
  std::swap(v.H, v.W);
  std::swap(v.R, v.S);
  std::swap(v.P, v.Q);
  std::swap(v.pad_h, v.pad_w);
  std::swap(v.stride_h, v.stride_w);
  std::swap(v.dil_h, v.dil_w);
  return v;
}

bool use_transpose(const ConvProblem& p) { return p.S != 1; }

// (C x A x B) -> (C x B x A)
template <typename T>
void transpose_planes(const T* src, int64_t C, int64_t A, int64_t B, T* dst, bool par) {
  constexpr int64_t kBlk = 32;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
  for (int64_t c = 0; c < C; ++c) {
    const T* s = src + c * A * B;
    T* d = dst + c * A * B;
    for (int64_t a0 = 0; a0 < A; a0 += kBlk)
      for (int64_t b0 = 0; b0 < B; b0 += kBlk)
        for (int64_t a = a0; a < std::min(A, a0 + kBlk); ++a)
          for (int64_t b = b0; b < std::min(B, b0 + kBlk); ++b) d[b * A + a] = s[a * B + b];
  }
}

// Is the (vertical-view) input already of width Q with no W padding/stride?
inline bool width_identity(const ConvProblem& v) {
  return v.stride_w == 1 && v.pad_w == 0 && v.Q == v.W;
}

// (C x H x W) -> (C x H x Q): column q holds input column q*stride_w - pad_w or 0
template <typename T>
void resample_width(const ConvProblem& v, const T* src, int64_t C, T* dst, bool par) {
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
  for (int64_t ch = 0; ch < C * v.H; ++ch) {
    const T* s = src + ch * v.W;
    T* d = dst + ch * v.Q;
    for (int64_t q = 0; q < v.Q; ++q) {
      const int64_t iw = q * v.stride_w - v.pad_w;
      d[q] = (iw >= 0 && iw < v.W) ? s[iw] : T(0);
    }
  }
}

// inverse of resample_width for gradients: dst (C x H x W) = 0 except sampled columns
template <typename T>
void scatter_width(const ConvProblem& v, const T* src, int64_t C, T* dst, bool par) {
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
  for (int64_t ch = 0; ch < C * v.H; ++ch) {
    const T* s = src + ch * v.Q;
    T* d = dst + ch * v.W;
    std::memset(d, 0, sizeof(T) * v.W);
    for (int64_t q = 0; q < v.Q; ++q) {
      const int64_t iw = q * v.stride_w - v.pad_w;
      if (iw >= 0 && iw < v.W) d[iw] += s[q];
    }
  }
}

// valid output rows for tap r: input row p*stride_h + off stays inside [0, H)
inline void tap_rows(const ConvProblem& v, int64_t r, int64_t* off, int64_t* p_lo, int64_t* p_hi) {
  *off = r * v.dil_h - v.pad_h;
  *p_lo = first_valid(*off, v.stride_h);
  *p_hi = end_valid(*off, v.stride_h, v.H, v.P);
}

// The (C x band x Q) input rows tap r reads for output rows [p_lo, p_hi):
// with stride_h == 1 a view into the width-Q input (channel stride H*Q),
// otherwise the rows p*stride_h + off gathered into `band` (channel stride
// band*Q). *ld receives the channel stride.
template <typename T>
const T* tap_input(const ConvProblem& v, const T* xv, int64_t C, int64_t off, int64_t p_lo,
                   int64_t p_hi, T* band, int64_t* ld) {
  if (v.stride_h == 1) {
    *ld = v.H * v.Q;
    return xv + (p_lo + off) * v.Q;
  }
  const int64_t rows = p_hi - p_lo;
  *ld = rows * v.Q;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(band + (c * rows + i) * v.Q, xv + (c * v.H + (p_lo + i) * v.stride_h + off) * v.Q,
                  sizeof(T) * v.Q);
  return band;
}

// weight (K x C x R x S) with one long axis -> taps-major (taps x K x C)
template <typename T>
void taps_major(const ConvProblem& p, const T* w, T* wt) {
  const int64_t taps = p.R * p.S, KC = p.K * p.C;
  for (int64_t kc = 0; kc < KC; ++kc)
    for (int64_t t = 0; t < taps; ++t) wt[t * KC + kc] = w[kc * taps + t];
}

// Per-image scratch, carved in this order; a part is empty when its path is
// not taken (so a plain stride-1 nx1 convolution needs no scratch at all):
//   tin   transposed input (C*H*W)            only for 1xn kernels
//   view  width-Q resampled input / its grad  only when stride_w/pad_w != identity
//   tout  transposed output or grad_output    only for 1xn kernels
//   band  one tap's rows (C*P*Q)              only when stride_h > 1
//   tdx   transposed grad_input (C*H*W)       only for 1xn kernels (Dgrad)
struct Scratch {
  int64_t tin = 0, view = 0, tout = 0, band = 0, tdx = 0;
  int64_t total() const { return tin + view + tout + band + tdx + 16; }
};

Scratch scratch_layout(const ConvProblem& p, const ConvProblem& v, bool tr) {
  Scratch s;
  if (tr) {
    s.tin = p.C * p.H * p.W;
    s.tout = p.K * p.P * p.Q;
    s.tdx = p.C * p.H * p.W;
  }
  if (!width_identity(v)) s.view = p.C * v.H * v.Q;
  if (v.stride_h != 1) s.band = p.C * v.P * v.Q;
  return s;
}

// Bring one image into the vertical view of width Q. Returns a pointer to
// (C x Hv x Qv) data: either the input itself or `scratch`.
template <typename T>
const T* input_view(const ConvProblem& p, const ConvProblem& v, bool tr, const T* xn, int64_t C,
                    T* scratch_t, T* scratch_r, bool par) {
  const T* src = xn;
  if (tr) {
    transpose_planes(xn, C, p.H, p.W, scratch_t, par);
    src = scratch_t;
  }
  if (width_identity(v)) return src;
  resample_width(v, src, C, scratch_r, par);
  return scratch_r;
}

}  // namespace

template <typename T>
void separable_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu) {
  const bool tr = use_transpose(p);
  const ConvProblem v = vertical_view(p, tr);
  const int64_t PQ = p.P * p.Q, HW = p.H * p.W, KC = p.K * p.C;
  AlignedBuffer<T> wt(p.R * p.S * KC);
  taps_major(p, w, wt.data());
  const Scratch L = scratch_layout(p, v, tr);
  detail::for_items<T>(p.N, L.total(), 1, [&](int64_t n, T* scratch, bool par) {
    T* s_t = scratch;         // transposed input
    T* s_r = s_t + L.tin;     // resampled input
    T* s_y = s_r + L.view;    // vertical output
    T* s_band = s_y + L.tout; // rows of one tap (strided H)
    const T* xv = input_view(p, v, tr, x + n * p.C * HW, p.C, s_t, s_r, par);
    T* yn = y + n * p.K * PQ;
    T* yv = tr ? s_y : yn;
    for (int64_t k = 0; k < p.K; ++k) {
      const T b = bias ? bias[k] : T(0);
      for (int64_t i = 0; i < PQ; ++i) yv[k * PQ + i] = b;
    }
    for (int64_t r = 0; r < v.R; ++r) {
      int64_t off, p_lo, p_hi;
      tap_rows(v, r, &off, &p_lo, &p_hi);
      if (p_lo >= p_hi) continue;
      int64_t ld;
      const T* xb = tap_input(v, xv, p.C, off, p_lo, p_hi, s_band, &ld);
      gemm<T>(p.K, (p_hi - p_lo) * v.Q, p.C, wt.data() + r * KC, p.C, 1, xb, ld, 1, T(1),
              yv + p_lo * v.Q, PQ, par);
    }
    if (tr) transpose_planes(yv, p.K, v.P, v.Q, yn, par);
    if (relu)
      for (int64_t i = 0; i < p.K * PQ; ++i) yn[i] = relu_value(yn[i]);
  });
}

template <typename T>
void separable_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx) {
  const bool tr = use_transpose(p);
  const ConvProblem v = vertical_view(p, tr);
  const int64_t PQ = p.P * p.Q, HW = p.H * p.W, KC = p.K * p.C;
  AlignedBuffer<T> wt(p.R * p.S * KC);
  taps_major(p, w, wt.data());
  const Scratch L = scratch_layout(p, v, tr);
  detail::for_items<T>(p.N, L.total(), 1, [&](int64_t n, T* scratch, bool par) {
    T* s_dy = scratch + L.tin;     // transposed grad_output
    T* s_dxv = s_dy + L.tout;      // grad of the width-Q view
    T* s_band = s_dxv + L.view;    // one tap's rows (strided H)
    T* s_dxt = s_band + L.band;    // transposed grad_input
    const T* dyv = dy + n * p.K * PQ;
    if (tr) {
      transpose_planes(dyv, p.K, p.P, p.Q, s_dy, par);
      dyv = s_dy;
    }
    T* dxn = dx + n * p.C * HW;
    const bool ident = width_identity(v);
    T* dxv = ident ? (tr ? s_dxt : dxn) : s_dxv;  // (C x Hv x Qv)
    std::memset(dxv, 0, sizeof(T) * p.C * v.H * v.Q);
    for (int64_t r = 0; r < v.R; ++r) {
      int64_t off, p_lo, p_hi;
      tap_rows(v, r, &off, &p_lo, &p_hi);
      if (p_lo >= p_hi) continue;
      // grad view rows (C x band) += weight_r^T (C x K) . grad_output band (K x band)
      const int64_t rows = p_hi - p_lo;
      if (v.stride_h == 1) {
        gemm<T>(p.C, rows * v.Q, p.K, wt.data() + r * KC, 1, p.C, dyv + p_lo * v.Q, PQ, 1, T(1),
                dxv + (p_lo + off) * v.Q, v.H * v.Q, par);
      } else {  // into a band, then add its rows back at stride_h (distinct rows: no races)
        gemm<T>(p.C, rows * v.Q, p.K, wt.data() + r * KC, 1, p.C, dyv + p_lo * v.Q, PQ, 1, T(0),
                s_band, rows * v.Q, par);
        for (int64_t c = 0; c < p.C; ++c)
          for (int64_t i = 0; i < rows; ++i) {
            T* d = dxv + (c * v.H + (p_lo + i) * v.stride_h + off) * v.Q;
            const T* b = s_band + (c * rows + i) * v.Q;
            for (int64_t q = 0; q < v.Q; ++q) d[q] += b[q];
          }
      }
    }
    T* dx_vertical = tr ? s_dxt : dxn;  // (C x Hv x Wv)
    if (!ident) scatter_width(v, dxv, p.C, dx_vertical, par);
    if (tr) transpose_planes(dx_vertical, p.C, v.H, v.W, dxn, par);
  });
}

template <typename T>
void separable_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw) {
  const bool tr = use_transpose(p);
  const ConvProblem v = vertical_view(p, tr);
  const int64_t PQ = p.P * p.Q, HW = p.H * p.W, KC = p.K * p.C, taps = v.R;
  AlignedBuffer<T> wt(taps * KC);  // taps-major gradient, permuted at the end
  const Scratch L = scratch_layout(p, v, tr);
  detail::reduce_weight_grad<T>(p.N, taps * KC, wt.data(), [&](int64_t n, T* acc, bool par) {
    thread_local AlignedBuffer<T> buf;
    buf.resize(L.total());
    T* s_t = buf.data();
    T* s_r = s_t + L.tin;
    T* s_dy = s_r + L.view;
    T* s_band = s_dy + L.tout;
    const T* xv = input_view(p, v, tr, x + n * p.C * HW, p.C, s_t, s_r, par);
    const T* dyv = dy + n * p.K * PQ;
    if (tr) {
      transpose_planes(dyv, p.K, p.P, p.Q, s_dy, par);
      dyv = s_dy;
    }
    for (int64_t r = 0; r < taps; ++r) {
      int64_t off, p_lo, p_hi;
      tap_rows(v, r, &off, &p_lo, &p_hi);
      if (p_lo >= p_hi) continue;
      // acc_r (K x C) += grad_output band (K x band) . input band^T (band x C)
      int64_t ld;
      const T* xb = tap_input(v, xv, p.C, off, p_lo, p_hi, s_band, &ld);
      gemm<T>(p.K, p.C, (p_hi - p_lo) * v.Q, dyv + p_lo * v.Q, PQ, 1, xb, 1, ld, T(1),
              acc + r * KC, p.C, par);
    }
  });
  for (int64_t kc = 0; kc < KC; ++kc)
    for (int64_t t = 0; t < taps; ++t) dw[kc * taps + t] = wt.data()[t * KC + kc];
}

#define FC_INSTANTIATE(T)                                                                       \
  template void separable_fprop<T>(const ConvProblem&, const T*, const T*, const T*, T*, bool); \
  template void separable_dgrad<T>(const ConvProblem&, const T*, const T*, T*);                 \
  template void separable_wgrad<T>(const ConvProblem&, const T*, const T*, T*);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
#undef FC_INSTANTIATE

}  // namespace fastconv
