// Host launchers of the CUDA pooling and layer kernels (csrc/cuda/pool.cu,
// csrc/cuda/layers.cu): everything a training step needs besides convolution.
//
// Same semantics and argument meaning as the CPU kernels (fastconv/pool_cpu.h,
// fastconv/layers_cpu.h); plain C++ types only, so the bindings compile with
// g++. Pointers are device pointers (host pointers under the grid emulator);
// `stream` is a cudaStream_t passed as void* (ignored by the emulator).
// Launchers throw std::invalid_argument for a problem their kernels cannot
// take and std::runtime_error (CUDA's error string) when a launch fails.
//
// Determinism: every output element is written by exactly one thread, and
// every reduction (batch-norm statistics, softmax rows, column sums, global
// pooling) is a fixed-order shared-memory tree whose block size depends on
// the problem only. No atomics: results do not depend on timing or device.
#pragma once
#include <cstdint>
#include <string>

#include "fastconv/pool_cpu.h"  // PoolKind, PoolProblem, AdaptiveProblem (plain structs)

namespace fastconv {
namespace cuda {

// ------------------------------------------------------------------ pooling
// Empty when the problem is valid (the same rules as fastconv::pool_check /
// adaptive_check of the CPU module), else why not.
std::string pool_problem_check(PoolKind kind, const PoolProblem& p);
std::string adaptive_problem_check(PoolKind kind, const AdaptiveProblem& p);

// Forward: one output element per thread (global windows: one block per
// plane, tree reduction). idx may be null; ignored for avg.
template <typename T>
void pool2d_fwd(PoolKind kind, const PoolProblem& p, const T* x, T* y, int64_t* idx, void* stream);
// Backward as a gather: one input element per thread sums, in (oh, q) order,
// the windows whose tap it is. Max/min: with idx, the windows whose saved
// index is this element (indices must be taps of their own window, as the
// forward produces them); without idx, each candidate window's argmax is
// recomputed with the forward's rule. No scratch memory, no atomics.
template <typename T>
void pool2d_bwd(PoolKind kind, const PoolProblem& p, const T* dy, const T* x, const int64_t* idx, T* dx,
                void* stream);
template <typename T>
void adaptive_pool2d_fwd(PoolKind kind, const AdaptiveProblem& p, const T* x, T* y, int64_t* idx, void* stream);
template <typename T>
void adaptive_pool2d_bwd(PoolKind kind, const AdaptiveProblem& p, const T* dy, const T* x, const int64_t* idx,
                         T* dx, void* stream);

// ---------------------------------------------------------------- batch norm
// x viewed as (N, C, L). One block per channel; float64 accumulation of the
// moments shifted by the channel's first element (as the CPU code).
template <typename T>
void bn_stats(int64_t N, int64_t C, int64_t L, const T* x, double* mean, double* var_biased, void* stream);
template <typename T>
void bn_apply(int64_t N, int64_t C, int64_t L, const T* x, const double* mean, const double* invstd, const T* w,
              const T* b, T* y, void* stream);
// One block per channel: the float64 sums, then grad_input for the channel.
template <typename T>
void bn_backward(int64_t N, int64_t C, int64_t L, const T* dy, const T* x, const double* mean, const double* invstd,
                 const T* w, bool training, T* dx, T* dw, T* db, void* stream);

// --------------------------------------------------------------------- LRN
template <typename T>
void lrn_forward(int64_t N, int64_t C, int64_t L, const T* x, int64_t size, double alpha, double beta, double k,
                 T* y, void* stream);
template <typename T>
void lrn_backward(int64_t N, int64_t C, int64_t L, const T* dy, const T* x, int64_t size, double alpha,
                  double beta, double k, T* dx, void* stream);

// ------------------------------------------------- activations and softmax
// kind: 0 relu, 1 sigmoid, 2 tanh.
template <typename T>
void activation_forward(int kind, int64_t n, const T* x, T* y, void* stream);
template <typename T>
void activation_backward(int kind, int64_t n, const T* dy, const T* y, T* dx, void* stream);
template <typename T>
void softmax_forward(bool log, int64_t outer, int64_t D, int64_t inner, const T* x, T* y, void* stream);
template <typename T>
void softmax_backward(bool log, int64_t outer, int64_t D, int64_t inner, const T* dy, const T* y, T* dx,
                      void* stream);

// ------------------------------------------------------------ cross entropy
// One block per row. A target outside [0, C) (other than ignore_index) gives
// that row a NaN loss and NaN gradients (the host bindings reject it first).
template <typename T>
void cross_entropy_fused(int64_t N, int64_t C, const T* logits, const int64_t* target, int64_t ignore_index,
                         double label_smoothing, double grad_scale, double* row_loss, T* grad, void* stream);

// ------------------------------------------------------------------ dropout
// The CPU module's counter-based generator: the mask is bit-identical to
// fastconv::dropout_forward's for the same (seed, offset, threshold).
template <typename T>
void dropout_forward(int64_t n, const T* x, uint64_t seed, uint64_t offset, uint64_t threshold, T scale, T* y,
                     uint8_t* mask, void* stream);
template <typename T>
void dropout_backward(int64_t n, const T* dy, const uint8_t* mask, T scale, T* dx, void* stream);

// ------------------------------------------------------------------- linear
// Tiled GEMM: 64x64 block tiles, 16-deep k slices staged in shared memory,
// 4x4 outputs per thread in registers.
template <typename T>
void linear_forward(int64_t M, int64_t I, int64_t O, const T* x, const T* w, const T* b, T* y, void* stream);
// Any output may be null to skip it.
template <typename T>
void linear_backward(int64_t M, int64_t I, int64_t O, const T* dy, const T* x, const T* w, T* dx, T* dw, T* db,
                     void* stream);

#if defined(FC_EMU_TEST_HOOKS)
// Test-only (emulator build): the fixed-window forward with an off-by-one
// image bound (the last input column is treated as padding). A test shows it
// comes out wrong where the real kernel is right.
template <typename T>
void pool2d_fwd_off_by_one(PoolKind kind, const PoolProblem& p, const T* x, T* y, int64_t* idx);
#endif

}  // namespace cuda
}  // namespace fastconv
