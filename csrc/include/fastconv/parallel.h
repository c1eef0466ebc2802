// Small OpenMP helpers shared by the CPU kernels.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <strings.h>  // strcasecmp
#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastconv {

// The thread count of every parallel region of the CPU kernels (each names it with
// num_threads(max_threads())). Kept here and not only in OpenMP's nthreads ICV: Numba's OpenMP
// threading layer shares libgomp with this module and calls omp_set_num_threads() on each of its
// parallel launches, which would otherwise change the count of the compiled kernels behind the
// user's back. 0 until the first use, which takes OpenMP's default (OMP_NUM_THREADS or the cores).
inline std::atomic<int>& thread_setting() {
  static std::atomic<int> n{0};
  return n;
}

inline int max_threads() {
#ifdef _OPENMP
  int n = thread_setting().load(std::memory_order_relaxed);
  if (n <= 0) {
    n = omp_get_max_threads();
    thread_setting().store(n, std::memory_order_relaxed);
  }
  return n;
#else
  return 1;
#endif
}

inline void set_max_threads(int n) {
  thread_setting().store(n, std::memory_order_relaxed);
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

// Work size (elements touched) below which the pooling and layer kernels run on the calling
// thread: a parallel region costs more than it gives there. With OpenMP's default wait policy
// the team spins between regions and a fork costs ~4 us on the project machine (2 vCPUs); with
// OMP_WAIT_POLICY=passive the threads sleep and each fork is a futex wake-up, ~55 us measured
// there (a 33K-element relu: 6 us on one thread, 62 us on two), about what one thread needs to
// stream 2^19 floats through the cache, so the threshold rises to that. Read once.
inline int64_t parallel_min_work() {
  static const int64_t v = [] {
    const char* p = std::getenv("OMP_WAIT_POLICY");  // OpenMP reads it case-insensitively too
    return p != nullptr && strcasecmp(p, "passive") == 0 ? int64_t(1) << 19 : int64_t(1) << 15;
  }();
  return v;
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
