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
