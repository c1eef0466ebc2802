// fastconv: the one vocabulary every kernel speaks (CUTLASS names).
//
// A 2-D convolution is a ConvProblem and an operator (Fprop | Dgrad | Wgrad).
// Activations are `input` (N,C,H,W) and `output` (N,K,P,Q), the filter is
// `weight` (K, C/groups, R, S). All layouts are dense NCHW / KCRS.
// Padding may be asymmetric ('same' with even kernels or strides puts the extra
// row/column at the bottom/right): kernels only need the top/left pads, since
// every tap that falls outside the image reads zero; P and Q carry the rest.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define FC_HOST_DEVICE __host__ __device__
#else
#define FC_HOST_DEVICE
#endif

namespace fastconv {

enum class ConvOp { Fprop, Dgrad, Wgrad };

// ReLU as every fused conv epilogue (CPU and CUDA) and the relu op compute it:
// a NaN stays NaN, as torch.relu (the form `v > 0 ? v : 0` turned it into 0).
template <typename T>
FC_HOST_DEVICE inline T relu_value(T v) {
  return v < T(0) ? T(0) : v;
}
// Its backward, from the output (or the input): zero only where v <= 0, so a
// NaN passes the gradient, as torch's threshold_backward.
template <typename T>
FC_HOST_DEVICE inline T relu_grad(T v, T g) {
  return v <= T(0) ? T(0) : g;
}

// The one output-size formula:
//   P = (H + pad_lo + pad_hi - dil*(R-1) - 1) / stride + 1
// (symmetric padding: pad_lo == pad_hi == pad). Returns <= 0 when the kernel
// does not fit; callers turn that into an error.
FC_HOST_DEVICE inline int64_t out_size(int64_t in, int64_t pad_lo, int64_t pad_hi,
                                       int64_t kernel, int64_t stride, int64_t dil) {
  const int64_t span = in + pad_lo + pad_hi - dil * (kernel - 1) - 1;
  if (span < 0) return 0;
  return span / stride + 1;
}

struct ConvProblem {
  int64_t N = 1, C = 1, H = 1, W = 1;  // input
  int64_t K = 1, R = 1, S = 1;         // weight: K x (C/groups) x R x S
  int64_t P = 1, Q = 1;                // output
  int64_t pad_h = 0, pad_w = 0;        // top / left padding
  int64_t stride_h = 1, stride_w = 1;
  int64_t dil_h = 1, dil_w = 1;
  int64_t groups = 1;

  FC_HOST_DEVICE int64_t Cg() const { return C / groups; }  // input channels per group
  FC_HOST_DEVICE int64_t Kg() const { return K / groups; }  // output channels per group
  FC_HOST_DEVICE int64_t input_elems() const { return N * C * H * W; }
  FC_HOST_DEVICE int64_t output_elems() const { return N * K * P * Q; }
  FC_HOST_DEVICE int64_t weight_elems() const { return K * Cg() * R * S; }
  // multiply-adds x 2 of one pass (Fprop, Dgrad and Wgrad all cost the same)
  double flops() const {
    return 2.0 * double(N) * double(K) * double(P) * double(Q) * double(Cg()) * double(R) * double(S);
  }
};

// Throws std::invalid_argument when the problem is not self-consistent.
// The Python layer validates first with friendlier messages; this is the
// last line of defence so a kernel never runs on a bad problem.
inline void check_problem(const ConvProblem& p) {
  auto fail = [](const std::string& m) { throw std::invalid_argument("ConvProblem: " + m); };
  if (p.N < 0 || p.C <= 0 || p.H <= 0 || p.W <= 0 || p.K <= 0 || p.R <= 0 || p.S <= 0)
    fail("sizes must be positive (N may be 0)");
  if (p.P <= 0 || p.Q <= 0) fail("output size must be positive");
  if (p.pad_h < 0 || p.pad_w < 0) fail("padding must be >= 0");
  if (p.stride_h <= 0 || p.stride_w <= 0) fail("stride must be > 0");
  if (p.dil_h <= 0 || p.dil_w <= 0) fail("dilation must be > 0");
  if (p.groups <= 0 || p.C % p.groups || p.K % p.groups) fail("groups must divide C and K");
  // every output position must have been reachable with some bottom/right pad >= 0
  if ((p.P - 1) * p.stride_h - p.pad_h + p.dil_h * (p.R - 1) >= p.H + p.pad_h + p.R * p.dil_h + p.stride_h)
    fail("P too large for H");
  if ((p.Q - 1) * p.stride_w - p.pad_w + p.dil_w * (p.S - 1) >= p.W + p.pad_w + p.S * p.dil_w + p.stride_w)
    fail("Q too large for W");
}

}  // namespace fastconv
