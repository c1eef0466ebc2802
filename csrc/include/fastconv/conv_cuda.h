// Host launchers of the CUDA convolution kernels (csrc/cuda/conv_*.cu).
// Plain C++ types only (no CUDA or pybind11 headers): the bindings compile
// with g++, the launchers with nvcc (module _cuda) or with g++ under the grid
// emulator (module _emu). Pointers are device pointers (host pointers under the
// emulator); `stream` is a cudaStream_t passed as void* (ignored by the
// emulator). Every launcher validates the problem first (check_problem) and
// throws std::invalid_argument for what its kernel cannot take, and
// std::runtime_error (with CUDA's error string) when a launch fails.
#pragma once
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

// implicit GEMM Fprop: 64x64 output tiles, 8x8 register blocking per thread,
// double-buffered shared-memory tiles. float only (float64 callers use the
// direct kernel). "" when it can take the problem.
std::string igemm_supports(const ConvProblem& p);
template <typename T>
void igemm_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu, void* stream);

#if defined(FC_EMU_TEST_HOOKS)
// Test-only (emulator build): igemm_fprop with its __syncthreads() removed, to
// show that the emulator's schedule exposes a missing barrier.
void igemm_fprop_without_barrier(const ConvProblem& p, const float* x, const float* w, float* y);
#endif

}  // namespace cuda
}  // namespace fastconv
