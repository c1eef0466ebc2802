// CUDA runtime queries of the CUDA module. The convolution, pooling and layer
// kernels arrive with the CUDA issue; this file makes sure the module builds
// with nvcc for sm_70/80/90 and reports honestly whether a GPU is usable.
#include <cuda_runtime.h>

#include "fastconv/cuda_api.h"

namespace fastconv {
namespace cuda {

RuntimeInfo runtime_info() {
  RuntimeInfo info;
  cudaRuntimeGetVersion(&info.runtime_version);
  if (cudaDriverGetVersion(&info.driver_version) != cudaSuccess) info.driver_version = 0;
  const cudaError_t err = cudaGetDeviceCount(&info.device_count);
  if (err != cudaSuccess) {
    info.device_count = 0;
    info.error = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error so later calls start clean
  }
  return info;
}

}  // namespace cuda
}  // namespace fastconv
