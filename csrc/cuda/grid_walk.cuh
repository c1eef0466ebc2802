// Grid-stride helpers shared by csrc/cuda/pool.cu and layers.cu (device code;
// included after fastconv/cuda_compat.h).
#pragma once
#include <cstdint>

namespace fastconv {
namespace cuda {
namespace {

// Grid-stride walk over `planes` x `per` elements as (plane, in-plane offset)
// pairs without any 64-bit division (an emulated, slow instruction sequence on
// the GPU): the first index and the stride are below 2^28 (grids are capped at
// 2^20 blocks of <= 256 threads) and `per` is below 2^31 (the launchers check
// it), so two 32-bit divisions before the loop do; inside it, only adds.
// The plane index itself stays 64-bit (planes * per passes 2^31).
struct PlaneWalk {
  int64_t plane, off, step_planes, step_off, per;
  __device__ __forceinline__ explicit PlaneWalk(int64_t per_) : per(per_) {
    const uint32_t first = blockIdx.x * blockDim.x + threadIdx.x;
    const uint32_t step = gridDim.x * blockDim.x;
    const uint32_t up = uint32_t(per_);
    plane = first / up;
    off = first - uint32_t(plane) * up;
    step_planes = step / up;
    step_off = step - uint32_t(step_planes) * up;
  }
  __device__ __forceinline__ void next() {
    plane += step_planes;
    off += step_off;
    if (off >= per) {
      off -= per;
      ++plane;
    }
  }
};

// PlaneWalk over the planes of an (N, C, per) tensor that also tracks the
// channel c = plane % C incrementally (C < 2^31, checked by the launchers).
struct ChannelPlaneWalk : PlaneWalk {
  int64_t c, C, step_c;
  __device__ __forceinline__ ChannelPlaneWalk(int64_t per_, int64_t C_) : PlaneWalk(per_), C(C_) {
    // plane and step_planes are < 2^28 here: 32-bit remainders
    c = uint32_t(plane) % uint32_t(C_);
    step_c = uint32_t(step_planes) % uint32_t(C_);
  }
  __device__ __forceinline__ void next() {
    plane += step_planes;
    c += step_c;
    off += step_off;
    if (off >= per) {
      off -= per;
      ++plane;
      ++c;
    }
    if (c >= C) c -= C;  // c <= 2C - 1 before this
  }
};

}  // namespace
}  // namespace cuda
}  // namespace fastconv
