// CPU layer kernels: batch norm, local response norm, activations, softmax,
// fused cross entropy, dropout and linear. NCHW; every reduction runs in a
// fixed order (per-plane partial sums, then a sequential sum over planes) so
// results are bit-identical for any thread count; no atomics.
//
// All pointers are C-contiguous buffers of the stated sizes; the bindings
// check them. T is float or double.
#pragma once
#include <cstdint>

namespace fastconv {

// ---------------------------------------------------------------- batch norm
// x viewed as (N, C, L) (L = H*W, 1 for 2-D input).
// Per-channel batch mean and biased variance, accumulated in double.
template <typename T>
void bn_stats(int64_t N, int64_t C, int64_t L, const T* x, double* mean, double* var_biased);

// y = (x - mean[c]) * invstd[c] * w[c] + b[c]; w/b may be nullptr (1 / 0).
template <typename T>
void bn_apply(int64_t N, int64_t C, int64_t L, const T* x, const double* mean,
              const double* invstd, const T* w, const T* b, T* y);

// Backward. training: mean/invstd are the batch statistics saved by the
// forward, and grad_input includes the terms through them; otherwise they are
// the running statistics (constants). w may be nullptr (1). Any output
// pointer may be nullptr to skip it.
template <typename T>
void bn_backward(int64_t N, int64_t C, int64_t L, const T* dy, const T* x, const double* mean,
                 const double* invstd, const T* w, bool training, T* dx, T* dw, T* db);

// ----------------------------------------------------- local response norm
// x viewed as (N, C, L). Window for channel c: [c - size/2, c + (size-1)/2],
// zero padded; base = k + alpha/size * sum x^2; y = x * base^-beta.
template <typename T>
void lrn_forward(int64_t N, int64_t C, int64_t L, const T* x, int64_t size, double alpha,
                 double beta, double k, T* y);
template <typename T>
void lrn_backward(int64_t N, int64_t C, int64_t L, const T* dy, const T* x, int64_t size,
                  double alpha, double beta, double k, T* dx);

// -------------------------------------------------------------- activations
// kind: 0 relu, 1 sigmoid, 2 tanh. Elementwise over n elements.
template <typename T>
void activation_forward(int kind, int64_t n, const T* x, T* y);
// relu: dx = dy * (y > 0) (y may be the input or the output);
// sigmoid: dy * y * (1 - y); tanh: dy * (1 - y^2), y the forward output.
template <typename T>
void activation_backward(int kind, int64_t n, const T* dy, const T* y, T* dx);

// softmax / log_softmax over the middle axis of (outer, D, inner).
template <typename T>
void softmax_forward(bool log, int64_t outer, int64_t D, int64_t inner, const T* x, T* y);
// dx from dy and the forward output y.
template <typename T>
void softmax_backward(bool log, int64_t outer, int64_t D, int64_t inner, const T* dy, const T* y,
                      T* dx);

// ------------------------------------------------------------ cross entropy
// logits (N, C), target (N,). Rows whose target == ignore_index contribute
// nothing. row_loss[i] = -(1-eps) logp[t] - eps/C sum_c logp[c] (0 when
// ignored); grad row i = (softmax - (1-eps) onehot - eps/C) * grad_scale[i?]:
// grad = scale * d row_loss[i] / d logits[i] (0 for ignored rows).
template <typename T>
void cross_entropy_fused(int64_t N, int64_t C, const T* logits, const int64_t* target,
                         int64_t ignore_index, double label_smoothing, double grad_scale,
                         double* row_loss, T* grad);

// ------------------------------------------------------------------ dropout
// Counter-based: element i is kept iff hash(key, offset + i) >= threshold
// (a 32-bit draw; threshold = round(p * 2^32)). Independent of thread count.
// y = keep ? x * scale : 0; mask[i] = keep.
template <typename T>
void dropout_forward(int64_t n, const T* x, uint64_t seed, uint64_t offset, uint64_t threshold,
                     T scale, T* y, uint8_t* mask);
template <typename T>
void dropout_backward(int64_t n, const T* dy, const uint8_t* mask, T scale, T* dx);

// ------------------------------------------------------------------- linear
// x (M, I), w (O, I), b (O) or nullptr -> y (M, O) = x w^T + b.
template <typename T>
void linear_forward(int64_t M, int64_t I, int64_t O, const T* x, const T* w, const T* b, T* y);
// Any output pointer may be nullptr to skip that gradient.
template <typename T>
void linear_backward(int64_t M, int64_t I, int64_t O, const T* dy, const T* x, const T* w, T* dx,
                     T* dw, T* db);

}  // namespace fastconv
