// Host launchers of the CUDA convolution kernels (csrc/cuda/conv_*.cu).
// Plain C++ types only (no CUDA or pybind11 headers): the bindings compile
// with g++, the launchers with nvcc (module _cuda) or with g++ under the grid
// emulator (module _emu). Pointers are device pointers (host pointers under the
// emulator); `stream` is a cudaStream_t passed as void* (ignored by the
// emulator). Every launcher validates the problem first (check_problem) and
// throws std::invalid_argument for what its kernel cannot take, and
// std::runtime_error (with CUDA's error string) when a launch fails.
#pragma once
#include <cstdint>
#include <string>

#include "fastconv/problem.h"

namespace fastconv {
namespace cuda {

// direct: one output (Fprop) / input (Dgrad, a gather, no atomics) element per
// thread; Wgrad: one weight element per block, fixed-order tree reduction.
// direct_fprop runs the register-tiled variant (each thread 4 output channels
// x 4 output columns of one row, inputs and weights reused from registers)
// when direct_fprop_tiled(p) (at least 2 output channels per group and 2
// output columns), else the one-element-per-thread kernel.
bool direct_fprop_tiled(const ConvProblem& p);
// direct_dgrad likewise runs a register-tiled gather (4 input channels x 4
// input columns one stride phase apart per thread, each dx element written
// once) when direct_dgrad_tiled(p) (>= 2 input channels per group and >= 2
// columns per phase), else one input element per thread.
bool direct_dgrad_tiled(const ConvProblem& p);
template <typename T>
void direct_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu, void* stream);
template <typename T>
void direct_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx, void* stream);
template <typename T>
void direct_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw, void* stream);

// implicit GEMM (csrc/cuda/conv_igemm.cu): 64x64 tiles of the per-group GEMM,
// 8x8 register blocking per thread, double-buffered shared-memory tiles.
// float32 only (float64 callers use the direct kernels). igemm_supports: ""
// when all three operators can take the problem, else the reason.
std::string igemm_supports(const ConvProblem& p);
template <typename T>
void igemm_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu, void* stream);
// Dgrad as a gather: dx = W^T (C/g x K/g*R*S) times dy gathered per input
// pixel, the stride phase checked per tap; no atomics, deterministic.
void igemm_dgrad(const ConvProblem& p, const float* dy, const float* w, float* dx, void* stream);
// Wgrad: dw = dy (K/g x N*P*Q) times the gathered input, N*P*Q split into
// igemm_wgrad_chunks(p) chunks (a function of the problem only); with more
// than one chunk the partials go to `workspace` (igemm_wgrad_workspace_elems(p)
// floats, device memory owned by the caller) and are summed in chunk order.
// workspace may be null when igemm_wgrad_workspace_elems(p) == 0. N must be > 0.
int64_t igemm_wgrad_chunks(const ConvProblem& p);
int64_t igemm_wgrad_workspace_elems(const ConvProblem& p);
void igemm_wgrad(const ConvProblem& p, const float* x, const float* dy, float* dw, float* workspace, void* stream);

// 1x1 (csrc/cuda/conv_igemm.cu): R = S = 1, zero padding, any stride, groups.
// A plain GEMM per group on the implicit GEMM's tiled core with 1x1 loaders
// (no tap decoding): float 64x64 tiles (8x8 per thread), double 32x32 tiles
// (8x4 per thread). Dgrad is a gather writing every dx element once: the GEMM
// over the N*P*Q pixels on the stride grid, a zero-fill kernel for the pixels
// the stride skips. Wgrad splits N*P*Q into
// conv1x1_wgrad_chunks(p) chunks (a function of the problem only); with more
// than one chunk the partials go to `workspace` (conv1x1_wgrad_workspace_elems(p)
// elements of T, owned by the caller) and are summed in chunk order.
std::string conv1x1_supports(const ConvProblem& p);
int64_t conv1x1_wgrad_chunks(const ConvProblem& p);
int64_t conv1x1_wgrad_workspace_elems(const ConvProblem& p);
template <typename T>
void conv1x1_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu, void* stream);
template <typename T>
void conv1x1_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx, void* stream);
template <typename T>
void conv1x1_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw, T* workspace, void* stream);

// separable 1 x n / n x 1 (csrc/cuda/conv_separable.cu): groups == 1, any
// stride / padding / dilation whose staged segment fits 48 KiB of shared
// memory. Fprop and Dgrad (a gather, no atomics): 128-thread blocks of 32
// line positions x 16 channels, 4 channels per thread in registers, the
// reduction channels staged in shared memory. Wgrad: one block per 16 x 8 x 8
// (k, c, tap) tile walking N x lines x segments in a fixed order
// (deterministic, no workspace).
std::string separable_supports(const ConvProblem& p);
template <typename T>
void separable_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu, void* stream);
template <typename T>
void separable_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx, void* stream);
template <typename T>
void separable_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw, void* stream);

#if defined(FC_EMU_TEST_HOOKS)
// Test-only: the direct Fprop with its variant forced (tiled == false: one
// output element per thread; true: the register-tiled kernel, 4 output
// channels x 4 output columns per thread), whatever direct_fprop would pick.
template <typename T>
void direct_fprop_variant(bool tiled, const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu);
// ... and the direct Dgrad with its variant forced (false: one input element
// per thread; true: the register-tiled gather).
template <typename T>
void direct_dgrad_variant(bool tiled, const ConvProblem& p, const T* dy, const T* w, T* dx);
#endif

#if defined(FC_EMU_TEST_HOOKS)
// Test-only (emulator build), to show that the emulator catches broken kernels:
// igemm_fprop with its __syncthreads() removed ...
void igemm_fprop_without_barrier(const ConvProblem& p, const float* x, const float* w, float* y);
// ... and the implicit GEMM of `op` ("fprop": a=x, b=w; "dgrad": a=dy, b=w;
// "wgrad": a=x, b=dy) with an off-by-one K loop that never multiplies the last
// 8-deep slice.
void igemm_defective(const std::string& op, const ConvProblem& p, const float* a, const float* b, float* out,
                     float* workspace);
#endif

}  // namespace cuda
}  // namespace fastconv
