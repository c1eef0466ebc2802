// The CUDA convolution kernel families by name, shared by the GPU module
// (cuda_module.cpp, backend "cuda") and the grid-emulator module
// (emu_module.cpp, backend "cuda-emu"): both run the same csrc/cuda kernels, so
// they take the same names and refuse the same problems with the same reasons.
#pragma once
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "fastconv/conv_cuda.h"
#include "fastconv/problem.h"

namespace fastconv {
namespace bindings {

// "direct", "im2col" (implicit GEMM), "1x1" (plain GEMM), "separable" (1xn / nx1).
enum class CudaAlgo { Direct, Im2col, OneByOne, Separable };

// `backend` names the module in the error ("cuda" or "cuda-emu").
inline CudaAlgo parse_cuda_algo(const std::string& name, const char* backend) {
  if (name == "direct") return CudaAlgo::Direct;
  if (name == "im2col") return CudaAlgo::Im2col;
  if (name == "1x1") return CudaAlgo::OneByOne;
  if (name == "separable") return CudaAlgo::Separable;
  throw pybind11::value_error(std::string(backend) + ": unknown algorithm '" + name +
                              "' (this backend has 'direct', 'im2col', '1x1' and 'separable')");
}

// "" when the family can take the problem, else the reason.
inline std::string cuda_supports(CudaAlgo a, const ConvProblem& p) {
  switch (a) {
    case CudaAlgo::Im2col: return cuda::igemm_supports(p);
    case CudaAlgo::OneByOne: return cuda::conv1x1_supports(p);
    case CudaAlgo::Separable: return cuda::separable_supports(p);
    default: return std::string();
  }
}

// A valid problem the family supports, else ValueError.
inline void check_cuda_problem(CudaAlgo a, const ConvProblem& p) {
  try {
    check_problem(p);
  } catch (const std::invalid_argument& e) {
    throw pybind11::value_error(e.what());
  }
  const std::string why = cuda_supports(a, p);
  if (!why.empty()) throw pybind11::value_error(why);
}

}  // namespace bindings
}  // namespace fastconv
