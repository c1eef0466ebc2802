// 1x1 convolution as a plain GEMM, no im2col. A 1x1 convolution with stride 1
// is exactly weight (Kg x Cg) . input (Cg x HW). With stride > 1 the input is
// first subsampled into a (Cg x PQ) buffer (grad_input is scattered back).
// Dilation does not matter for a 1x1 kernel; padding must be zero.
#include "conv_common.h"

namespace fastconv {

std::string conv1x1_supports(const ConvProblem& p) {
  if (p.R != 1 || p.S != 1) return "the 1x1 algorithm needs a 1x1 kernel";
  if (p.pad_h != 0 || p.pad_w != 0) return "the 1x1 algorithm needs zero padding";
  if ((p.P - 1) * p.stride_h >= p.H || (p.Q - 1) * p.stride_w >= p.W)
    return "the 1x1 algorithm needs every output pixel inside the input (no bottom/right padding)";
  return "";
}

namespace {
inline bool unit_stride(const ConvProblem& p) {
  return p.stride_h == 1 && p.stride_w == 1 && p.P == p.H && p.Q == p.W;
}

// (Cg x H x W) -> (Cg x P x Q): pick every stride-th pixel; ld: distance
// between the destination's channel rows (PQ, or wider inside an image block)
template <typename T>
void subsample(const ConvProblem& p, const T* src, int64_t channels, T* dst, bool par, int64_t ld = -1) {
  const int64_t HW = p.H * p.W, PQ = ld < 0 ? p.P * p.Q : ld;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
  for (int64_t cp = 0; cp < channels * p.P; ++cp) {
    const int64_t c = cp / p.P, pp = cp % p.P;
    const T* s = src + c * HW + pp * p.stride_h * p.W;
    T* d = dst + c * PQ + pp * p.Q;
    for (int64_t q = 0; q < p.Q; ++q) d[q] = s[q * p.stride_w];
  }
}

// (Cg x P x Q) -> zeroed (Cg x H x W) at the strided positions; ld as in subsample, for src
template <typename T>
void scatter_strided(const ConvProblem& p, const T* src, int64_t channels, T* dst, bool par, int64_t ld = -1) {
  const int64_t HW = p.H * p.W, PQ = ld < 0 ? p.P * p.Q : ld;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
  for (int64_t c = 0; c < channels; ++c) {
    T* d = dst + c * HW;
    std::memset(d, 0, sizeof(T) * HW);
    for (int64_t pp = 0; pp < p.P; ++pp)
      for (int64_t q = 0; q < p.Q; ++q)
        d[pp * p.stride_h * p.W + q * p.stride_w] = src[c * PQ + pp * p.Q + q];
  }
}

// Images per GEMM: small outputs (PQ < 256: late ResNet stages, 1x1 maps)
// would make one skinny GEMM per image, re-reading the whole weight each
// time; several images side by side (Cg x nb*PQ) keep the GEMM wide. The
// count depends on the problem only, so results do not depend on threads.
int64_t images_per_block(const ConvProblem& p) {
  const int64_t PQ = p.P * p.Q;
  if (PQ >= 256 || p.N <= 1) return 1;
  const int64_t nb = std::min<int64_t>(p.N, std::max<int64_t>(1, 512 / PQ));
  const int64_t blocks = (p.N + nb - 1) / nb;
  return (p.N + blocks - 1) / blocks;
}

// (Cg x nimg*PQ) block of input channels of group g, images [n0, n0+nimg), subsampled
template <typename T>
void gather_input(const ConvProblem& p, const T* x, int64_t g, int64_t n0, int64_t nimg, T* dst) {
  const int64_t Cg = p.Cg(), PQ = p.P * p.Q;
  for (int64_t i = 0; i < nimg; ++i)
    subsample(p, x + ((n0 + i) * p.C + g * Cg) * p.H * p.W, Cg, dst + i * PQ, false, nimg * PQ);
}

// (rows x nimg*PQ) block <-> rows [r0, r0+rows) of an NxRowsxPQ tensor, images [n0, n0+nimg)
template <typename T>
void gather_rows(const T* t, int64_t total_rows, int64_t r0, int64_t rows, int64_t PQ, int64_t n0,
                 int64_t nimg, T* dst) {
  const int64_t width = nimg * PQ;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < nimg; ++i)
      std::memcpy(dst + r * width + i * PQ, t + ((n0 + i) * total_rows + r0 + r) * PQ, sizeof(T) * PQ);
}
template <typename T>
void scatter_rows(const T* src, int64_t total_rows, int64_t r0, int64_t rows, int64_t PQ, int64_t n0,
                  int64_t nimg, T* t) {
  const int64_t width = nimg * PQ;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < nimg; ++i)
      std::memcpy(t + ((n0 + i) * total_rows + r0 + r) * PQ, src + r * width + i * PQ, sizeof(T) * PQ);
}
}  // namespace

template <typename T>
void conv1x1_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, HW = p.H * p.W;
  const bool direct_view = unit_stride(p);
  const int64_t nb = images_per_block(p);
  if (nb > 1) {
    const int64_t blocks = (p.N + nb - 1) / nb, wmax = nb * PQ;
    detail::for_items<T>(blocks * p.groups, (Cg + Kg) * wmax, 1, [&](int64_t item, T* scratch,
                                                                     bool par) {
      const int64_t g = item % p.groups, n0 = (item / p.groups) * nb, nimg = std::min(nb, p.N - n0);
      const int64_t width = nimg * PQ;
      T* xb = scratch;
      T* yb = scratch + Cg * wmax;
      gather_input(p, x, g, n0, nimg, xb);
      GemmEpilogue<T> ep;
      ep.row_bias = bias ? bias + g * Kg : nullptr;
      ep.relu = relu;
      gemm<T>(Kg, width, Cg, w + g * Kg * Cg, Cg, 1, xb, width, 1, T(0), yb, width, par, ep);
      scatter_rows(yb, p.K, g * Kg, Kg, PQ, n0, nimg, y);
    });
    return;
  }
  detail::for_items<T>(p.N * p.groups, direct_view ? 1 : Cg * PQ, 1, [&](int64_t item, T* scratch,
                                                                          bool par) {
    const int64_t g = item % p.groups, n = item / p.groups;
    const T* xg = x + (n * p.C + g * Cg) * HW;
    if (!direct_view) {
      subsample(p, xg, Cg, scratch, par);
      xg = scratch;
    }
    GemmEpilogue<T> ep;
    ep.row_bias = bias ? bias + g * Kg : nullptr;
    ep.relu = relu;
    gemm<T>(Kg, PQ, Cg, w + g * Kg * Cg, Cg, 1, xg, PQ, 1, T(0), y + (n * p.K + g * Kg) * PQ, PQ,
            par, ep);
  });
}

template <typename T>
void conv1x1_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, HW = p.H * p.W;
  const bool direct_view = unit_stride(p);
  const int64_t nb = images_per_block(p);
  if (nb > 1) {
    const int64_t blocks = (p.N + nb - 1) / nb, wmax = nb * PQ;
    detail::for_items<T>(blocks * p.groups, (Cg + Kg) * wmax, 1, [&](int64_t item, T* scratch,
                                                                     bool par) {
      const int64_t g = item % p.groups, n0 = (item / p.groups) * nb, nimg = std::min(nb, p.N - n0);
      const int64_t width = nimg * PQ;
      T* dyb = scratch;
      T* dxb = scratch + Kg * wmax;
      gather_rows(dy, p.K, g * Kg, Kg, PQ, n0, nimg, dyb);
      gemm<T>(Cg, width, Kg, w + g * Kg * Cg, 1, Cg, dyb, width, 1, T(0), dxb, width, par);
      // back to NCHW (scattered to the strided positions, zeros between)
      for (int64_t i = 0; i < nimg; ++i)
        scatter_strided(p, dxb + i * PQ, Cg, dx + ((n0 + i) * p.C + g * Cg) * HW, false, width);
    });
    return;
  }
  detail::for_items<T>(p.N * p.groups, direct_view ? 1 : Cg * PQ, 1, [&](int64_t item, T* scratch,
                                                                          bool par) {
    const int64_t g = item % p.groups, n = item / p.groups;
    T* dxg = dx + (n * p.C + g * Cg) * HW;
    T* dst = direct_view ? dxg : scratch;
    // grad_input[g] (Cg x PQ) = weight[g]^T (Cg x Kg) . grad_output[n, g] (Kg x PQ)
    gemm<T>(Cg, PQ, Kg, w + g * Kg * Cg, 1, Cg, dy + (n * p.K + g * Kg) * PQ, PQ, 1, T(0), dst, PQ,
            par);
    if (!direct_view) scatter_strided(p, scratch, Cg, dxg, par);
  });
}

template <typename T>
void conv1x1_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, HW = p.H * p.W;
  const bool direct_view = unit_stride(p);
  const int64_t nb = images_per_block(p);
  if (nb > 1) {
    const int64_t blocks = (p.N + nb - 1) / nb, wmax = nb * PQ;
    detail::reduce_weight_grad<T>(blocks * p.groups, p.K * Cg, dw, [&](int64_t item, T* acc, bool par) {
      thread_local AlignedBuffer<T> buf;
      buf.resize((Cg + Kg) * wmax);
      const int64_t g = item % p.groups, n0 = (item / p.groups) * nb, nimg = std::min(nb, p.N - n0);
      const int64_t width = nimg * PQ;
      T* xb = buf.data();
      T* dyb = xb + Cg * wmax;
      gather_input(p, x, g, n0, nimg, xb);
      gather_rows(dy, p.K, g * Kg, Kg, PQ, n0, nimg, dyb);
      // acc[g] (Kg x Cg) += grad_output block (Kg x width) . input block^T (width x Cg)
      gemm<T>(Kg, Cg, width, dyb, width, 1, xb, 1, width, T(1), acc + g * Kg * Cg, Cg, par);
    });
    return;
  }
  detail::reduce_weight_grad<T>(p.N * p.groups, p.K * Cg, dw, [&](int64_t item, T* acc, bool par) {
    thread_local AlignedBuffer<T> sub;
    const int64_t g = item % p.groups, n = item / p.groups;
    const T* xg = x + (n * p.C + g * Cg) * HW;
    if (!direct_view) {
      sub.resize(Cg * PQ);
      subsample(p, xg, Cg, sub.data(), par);
      xg = sub.data();
    }
    // acc[g] (Kg x Cg) += grad_output[n, g] (Kg x PQ) . input^T (PQ x Cg)
    gemm<T>(Kg, Cg, PQ, dy + (n * p.K + g * Kg) * PQ, PQ, 1, xg, 1, PQ, T(1), acc + g * Kg * Cg, Cg,
            par);
  });
}

#define FC_INSTANTIATE(T)                                                                     \
  template void conv1x1_fprop<T>(const ConvProblem&, const T*, const T*, const T*, T*, bool); \
  template void conv1x1_dgrad<T>(const ConvProblem&, const T*, const T*, T*);                 \
  template void conv1x1_wgrad<T>(const ConvProblem&, const T*, const T*, T*);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
#undef FC_INSTANTIATE

}  // namespace fastconv
