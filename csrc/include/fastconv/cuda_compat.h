// The one header every csrc/cuda/*.cu file includes first. The same sources
// compile two ways:
// * nvcc: the real GPU module (_cuda). FC_LAUNCH is a <<<>>> launch checked
//   with cudaGetLastError; a failure throws std::runtime_error carrying
//   cudaGetErrorString, which pybind11 turns into a Python RuntimeError.
// * g++ with csrc/emu/emu.h force-included (FC_EMU): the CPU grid emulator
//   module (_emu, backend "cuda-emu"), where FC_LAUNCH runs the grid on CPU
//   threads (see emu.h for what that can and cannot show).
//
// FC_LAUNCH(kernel, grid, block, smem_bytes, stream, args...): `kernel` must be
//   a single token (take a pointer first for templates:
//   `auto k = my_kernel<float, true>; FC_LAUNCH(k, ...)`).
// FC_DYNAMIC_SMEM(type, name): declares `type* name` pointing at the block's
//   dynamic shared memory (16-byte aligned).
// FC_STREAM(s): the void* stream handle of the host API as a cudaStream_t.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#include <cuda_runtime.h>

namespace fastconv {
namespace cuda {
inline void check_launch(cudaError_t err, const char* kernel) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA launch of ") + kernel + " failed: " + cudaGetErrorString(err));
}
}  // namespace cuda
}  // namespace fastconv

#define FC_LAUNCH(kernel, grid, block, smem_bytes, stream, ...)                  \
  do {                                                                           \
    kernel<<<(grid), (block), (smem_bytes), (stream)>>>(__VA_ARGS__);            \
    ::fastconv::cuda::check_launch(cudaGetLastError(), #kernel);                 \
  } while (0)

#define FC_DYNAMIC_SMEM(type, name)                                              \
  extern __shared__ __align__(16) unsigned char fc_dynamic_smem_[];              \
  type* name = reinterpret_cast<type*>(fc_dynamic_smem_)

#elif defined(FC_EMU)

#define FC_LAUNCH(kernel, grid, block, smem_bytes, stream, ...)                  \
  do {                                                                           \
    (void)(stream);                                                              \
    ::fastconv::emu::launch(#kernel, dim3(grid), dim3(block), size_t(smem_bytes), \
                            [=] { kernel(__VA_ARGS__); });                       \
  } while (0)

#define FC_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(::fastconv::emu::dynamic_smem())

#else
#error "cuda_compat.h: compile with nvcc, or with g++ and -include csrc/emu/emu.h"
#endif

#define FC_STREAM(s) static_cast<cudaStream_t>(s)
