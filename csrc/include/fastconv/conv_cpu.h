// CPU convolution kernels: each algorithm implements Fprop, Dgrad and Wgrad
// on dense NCHW input/output and KCRS weight. All pointers are to contiguous
// buffers of the sizes implied by the ConvProblem. Kernels parallelize with
// OpenMP internally and are deterministic: for a given problem the result is
// bit-identical for any thread count.
#pragma once
#include <cstdint>
#include <string>

#include "fastconv/problem.h"

namespace fastconv {

// Fprop: output = conv(input, weight) (+ bias[k]) (then ReLU when relu).
// Dgrad: grad_input = conv_transpose(grad_output, weight)    (overwrites)
// Wgrad: grad_weight = corr(input, grad_output) over N,P,Q   (overwrites)
#define FC_DECLARE_ALGO(name)                                                              \
  template <typename T>                                                                    \
  void name##_fprop(const ConvProblem& p, const T* input, const T* weight, const T* bias,  \
                    T* output, bool relu);                                                 \
  template <typename T>                                                                    \
  void name##_dgrad(const ConvProblem& p, const T* grad_output, const T* weight,           \
                    T* grad_input);                                                        \
  template <typename T>                                                                    \
  void name##_wgrad(const ConvProblem& p, const T* input, const T* grad_output,            \
                    T* grad_weight);

FC_DECLARE_ALGO(direct)
FC_DECLARE_ALGO(im2col)
FC_DECLARE_ALGO(conv1x1)
FC_DECLARE_ALGO(separable)
FC_DECLARE_ALGO(winograd)
#undef FC_DECLARE_ALGO

// can_implement: empty string when the algorithm takes the problem, else why not.
std::string direct_supports(const ConvProblem& p);
std::string im2col_supports(const ConvProblem& p);
std::string conv1x1_supports(const ConvProblem& p);
std::string separable_supports(const ConvProblem& p);
std::string winograd_supports(const ConvProblem& p);

// Whether direct_<op><float> ("fprop", "dgrad", "wgrad") runs the
// register-blocked AVX-512 kernel (csrc/cpu/conv_kvec.h) for p on this CPU;
// otherwise (and always for double) the row-axpy kernels of conv_direct_impl.h.
bool direct_vectorized(const std::string& op, const ConvProblem& p);

// Upper bound of the per-thread im2col workspace, in bytes (column tile).
constexpr int64_t kIm2colTileBytes = int64_t(16) << 20;

}  // namespace fastconv
