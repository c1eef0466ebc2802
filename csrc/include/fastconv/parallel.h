// Small OpenMP helpers shared by the CPU kernels.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastconv {

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline bool in_parallel() {
#ifdef _OPENMP
  return omp_in_parallel();
#else
  return false;
#endif
}

// 64-byte aligned scratch buffer (unique ownership, no value-initialization).
template <typename T>
struct AlignedBuffer {
  T* ptr = nullptr;
  int64_t n = 0;
  AlignedBuffer() = default;
  explicit AlignedBuffer(int64_t count) { resize(count); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(ptr); }
  void resize(int64_t count) {
    if (count <= n) return;
    std::free(ptr);
    size_t bytes = (size_t(count) * sizeof(T) + 63) / 64 * 64;
    ptr = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!ptr) throw std::bad_alloc();
    n = count;
  }
  T* data() { return ptr; }
};

// first index i >= 0 such that i*stride + offset >= 0 (offset may be negative)
inline int64_t first_valid(int64_t offset, int64_t stride) {
  if (offset >= 0) return 0;
  return (-offset + stride - 1) / stride;
}
// one past the last index i such that i*stride + offset < limit, clamped to [lo, n]
inline int64_t end_valid(int64_t offset, int64_t stride, int64_t limit, int64_t n) {
  if (limit - offset <= 0) return 0;
  int64_t e = (limit - offset + stride - 1) / stride;
  return e < n ? e : n;
}

}  // namespace fastconv
