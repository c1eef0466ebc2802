// Host-side API of the CUDA module (implemented in csrc/cuda/*.cu, called by
// csrc/bindings/cuda_module.cpp). Plain C++ types only: no CUDA headers and no
// pybind11 here, so each side compiles with its own compiler.
#pragma once
#include <string>

namespace fastconv {
namespace cuda {

struct RuntimeInfo {
  int runtime_version = 0;  // CUDA runtime the module was built against
  int driver_version = 0;   // 0 when no driver is installed
  int device_count = 0;     // 0 when no usable GPU
  std::string error;        // why no device is usable ("" when device_count > 0)
};

RuntimeInfo runtime_info();

}  // namespace cuda
}  // namespace fastconv
