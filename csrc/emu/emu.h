// fastconv CUDA grid emulator: runs csrc/cuda/*.cu on the CPU, compiled by g++.
//
// The .cu files are compiled as C++ with this header force-included
// (`-include csrc/emu/emu.h`); csrc/include/fastconv/cuda_compat.h then routes
// FC_LAUNCH and FC_DYNAMIC_SMEM here instead of to the CUDA runtime.
//
// Execution model (what a test run through the emulator checks):
// * threadIdx / blockIdx / blockDim / gridDim are thread_local variables.
// * Every thread of a block is its own std::thread. Blocks run one after
//   another, so `__shared__` maps to `static` (one copy per kernel
//   instantiation, alive across blocks: a block that reads shared memory
//   it did not fill sees the previous block's data, or zeros).
// * __syncthreads() is a real reusable barrier. Threads that have returned
//   from the kernel count as arrived (as on sm_70+ hardware).
// * Schedule::Random (the default): between two barriers, the threads of a
//   block run ONE AT A TIME, each until its next barrier (or its return), in
//   a freshly shuffled order per phase (seeded, so a failure reproduces).
//   Reading shared memory that another thread fills before the barrier that
//   publishes it therefore sees stale data whenever that thread comes later
//   in the order, which it does for almost every order: a missing
//   __syncthreads() fails a comparison test instead of passing by luck.
// * Schedule::Concurrent: all threads of the block run at once under the OS
//   scheduler with the same barrier (exercises real atomics and data races).
// * Atomics are real atomics (std::atomic_ref), correct under Concurrent.
// * Dynamic shared memory is filled with 0xFF bytes (a NaN for float/double)
//   at the start of every block, so reading an unwritten element poisons the
//   result.
// * Launch configurations CUDA rejects are rejected here too (more than 1024
//   threads per block, block.z > 64, grid.y/z > 65535, an empty grid, more
//   than 48 KiB of dynamic shared memory without opt-in) with CUDA's error
//   string, thrown as std::runtime_error like a failed checked launch.
// * Launches are serialized process-wide (the block-static shared memory of
//   two concurrent launches of one kernel would alias).
//
// What the emulator CANNOT show:
// * timing, occupancy, register pressure or spills (see nvcc -Xptxas -v);
// * memory coalescing, shared-memory bank conflicts, cache behaviour;
// * warp-synchronous behaviour: there are no warps here. Kernels must not rely
//   on implicit lock-step execution of a warp; warp intrinsics (__shfl_*,
//   __ballot_sync, ...) are deliberately not provided, so a kernel using them
//   does not compile under the emulator instead of being emulated wrongly;
// * the CUDA memory model's weaker orderings (every access here is to
//   ordinary host memory; the barrier is a full fence);
// * out-of-bounds accesses are not trapped (run compute-sanitizer on a GPU);
// * float results can differ from a GPU in the last bits (g++ may contract
//   a*b+c differently from nvcc's FMA contraction).
#pragma once
#define FC_EMU 1

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

// ------------------------------------------------------- CUDA vocabulary
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned int x, y, z;
};
typedef void* cudaStream_t;

inline thread_local uint3 threadIdx = {0, 0, 0};
inline thread_local uint3 blockIdx = {0, 0, 0};
inline thread_local dim3 blockDim = {1, 1, 1};
inline thread_local dim3 gridDim = {1, 1, 1};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __shared__ static
#define __constant__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// __restrict__ is a g++ keyword already.

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

namespace fastconv {
namespace emu {

enum class Schedule { Random, Concurrent };

struct Config {
  Schedule schedule = Schedule::Random;
  uint64_t seed = 0x5eedf00dULL;
  uint64_t launches = 0;  // mixed into the seed so every launch gets new orders
};

inline Config& config() {
  static Config c;
  return c;
}

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

// Dynamic shared memory is limited like an un-opted-in CUDA launch.
constexpr size_t kMaxDynamicSmem = 48 * 1024;

class Launch {
 public:
  Launch(dim3 grid, dim3 block, size_t smem, Schedule sched, uint64_t seed)
      : grid_(grid), block_(block), n_(int(block.x * block.y * block.z)),
        nblocks_(int64_t(grid.x) * grid.y * grid.z), random_(sched == Schedule::Random),
        cv_(size_t(n_)), go_(size_t(n_), 0), state_(size_t(n_), kRun), rng_(seed) {
    smem_bytes_ = smem;
    if (smem) smem_.reset(static_cast<unsigned char*>(std::aligned_alloc(64, (smem + 63) / 64 * 64)));
    fill_smem();
  }

  template <typename F>
  void run(F& fn) {
    std::vector<std::thread> threads;
    threads.reserve(size_t(n_));
    {
      std::unique_lock<std::mutex> lk(m_);
      if (random_) {
        std::vector<int> all(static_cast<size_t>(n_));
        std::iota(all.begin(), all.end(), 0);
        start_phase(std::move(all));
      }
    }
    try {
      for (int t = 0; t < n_; ++t) threads.emplace_back([this, t, &fn] { worker(t, fn); });
    } catch (...) {
      // could not create every OS thread: nothing ran past the first barrier,
      // but the threads that exist wait for their turn; this is fatal
      std::fprintf(stderr, "fastconv emulator: cannot create %d threads\n", n_);
      std::abort();
    }
    for (auto& th : threads) th.join();
    if (error_) std::rethrow_exception(error_);
  }

  void syncthreads(int t) {
    std::unique_lock<std::mutex> lk(m_);
    if (random_) {
      state_[size_t(t)] = kBarrier;
      advance();
      wait_turn(lk, t);
    } else {
      const uint64_t my_gen = gen_;
      if (++arrived_ + exited_ == n_) {
        release_barrier();
      } else {
        all_cv_.wait(lk, [&] { return gen_ != my_gen; });
      }
    }
  }

  unsigned char* dynamic_smem() { return smem_.get(); }

 private:
  enum : char { kRun = 0, kBarrier = 1, kExited = 2 };

  struct FreeDeleter {
    void operator()(unsigned char* p) const { std::free(p); }
  };

  template <typename F>
  void worker(int t, F& fn) {
    tl_launch() = this;
    threadIdx = {unsigned(t) % block_.x, (unsigned(t) / block_.x) % block_.y, unsigned(t) / (block_.x * block_.y)};
    blockDim = block_;
    gridDim = grid_;
    for (int64_t b = 0; b < nblocks_; ++b) {
      {
        std::unique_lock<std::mutex> lk(m_);
        if (random_) wait_turn(lk, t);
        else all_cv_.wait(lk, [&] { return block_no_ == b; });
      }
      const uint64_t ub = uint64_t(b);
      blockIdx = {unsigned(ub % grid_.x), unsigned((ub / grid_.x) % grid_.y), unsigned(ub / (uint64_t(grid_.x) * grid_.y))};
      try {
        fn();
      } catch (...) {
        std::lock_guard<std::mutex> g(err_m_);
        if (!error_) error_ = std::current_exception();
      }
      exit_block(t);
    }
    tl_launch() = nullptr;
  }

  void exit_block(int t) {
    std::unique_lock<std::mutex> lk(m_);
    if (random_) {
      state_[size_t(t)] = kExited;
      advance();
      return;
    }
    ++exited_;
    if (exited_ == n_) {
      exited_ = 0;
      arrived_ = 0;
      ++block_no_;
      fill_smem();
      all_cv_.notify_all();
    } else if (arrived_ > 0 && arrived_ + exited_ == n_) {
      release_barrier();
    }
  }

  void release_barrier() {
    arrived_ = 0;
    ++gen_;
    all_cv_.notify_all();
  }

  // Random schedule: exactly one thread holds the turn. Called (lock held) by
  // the thread that just stopped at a barrier or returned.
  void advance() {
    if (++pos_ < order_.size()) {
      wake(order_[pos_]);
      return;
    }
    std::vector<int> waiting;
    for (int i = 0; i < n_; ++i)
      if (state_[size_t(i)] == kBarrier) waiting.push_back(i);
    if (!waiting.empty()) {
      for (int i : waiting) state_[size_t(i)] = kRun;
      start_phase(std::move(waiting));
      return;
    }
    if (++block_no_ < nblocks_) {  // every thread returned: next block
      std::fill(state_.begin(), state_.end(), char(kRun));
      fill_smem();
      std::vector<int> all(static_cast<size_t>(n_));
      std::iota(all.begin(), all.end(), 0);
      start_phase(std::move(all));
    }
  }

  void start_phase(std::vector<int> who) {
    std::shuffle(who.begin(), who.end(), rng_);
    order_ = std::move(who);
    pos_ = 0;
    wake(order_[0]);
  }

  void wake(int t) {
    go_[size_t(t)] = 1;
    cv_[size_t(t)].notify_one();
  }

  void wait_turn(std::unique_lock<std::mutex>& lk, int t) {
    cv_[size_t(t)].wait(lk, [&] { return go_[size_t(t)] != 0; });
    go_[size_t(t)] = 0;
  }

  void fill_smem() {
    if (smem_) std::memset(smem_.get(), 0xFF, smem_bytes_);
  }

 public:
  static Launch*& tl_launch() {
    static thread_local Launch* p = nullptr;
    return p;
  }

 private:
  dim3 grid_, block_;
  int n_;
  int64_t nblocks_;
  bool random_;
  std::mutex m_;
  std::vector<std::condition_variable> cv_;  // one per thread: wake exactly the next one
  std::vector<char> go_, state_;
  std::vector<int> order_;
  size_t pos_ = 0;
  int64_t block_no_ = 0;
  std::mt19937_64 rng_;
  // Concurrent schedule
  std::condition_variable all_cv_;
  int arrived_ = 0, exited_ = 0;
  uint64_t gen_ = 0;
  // dynamic shared memory
  std::unique_ptr<unsigned char, FreeDeleter> smem_;
  size_t smem_bytes_ = 0;
  std::mutex err_m_;
  std::exception_ptr error_;
};

inline Launch& current(const char* what) {
  Launch* l = Launch::tl_launch();
  if (!l) {
    std::fprintf(stderr, "fastconv emulator: %s called outside a kernel launch\n", what);
    std::abort();
  }
  return *l;
}

// One checked launch. `fn` runs the kernel body of one thread (threadIdx etc.
// already set). Throws std::runtime_error with CUDA's wording for
// configurations a GPU would reject.
template <typename F>
void launch(const char* name, dim3 grid, dim3 block, size_t smem, F fn) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  const char* bad = nullptr;
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x == 0 ||
      grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    bad = "invalid configuration argument";
  else if (smem > kMaxDynamicSmem)
    bad = "too many resources requested for launch";
  if (bad) throw std::runtime_error(std::string("CUDA launch of ") + name + " failed: " + bad);
  std::lock_guard<std::mutex> guard(launch_mutex());
  Config& cfg = config();
  const uint64_t seed = cfg.seed ^ (0x9E3779B97F4A7C15ULL * ++cfg.launches);
  Launch l(grid, block, smem, cfg.schedule, seed);
  l.run(fn);
}

inline void set_schedule(Schedule s, uint64_t seed) {
  std::lock_guard<std::mutex> guard(launch_mutex());
  config().schedule = s;
  config().seed = seed;
  config().launches = 0;
}

inline unsigned char* dynamic_smem() { return current("dynamic shared memory").dynamic_smem(); }

}  // namespace emu
}  // namespace fastconv

inline void __syncthreads() { fastconv::emu::current("__syncthreads").syncthreads(int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z))); }

// ------------------------------------------------------------- atomics
template <typename T>
inline T atomicAdd(T* addr, T v) {
  return std::atomic_ref<T>(*addr).fetch_add(v);
}
template <typename T>
inline T atomicSub(T* addr, T v) {
  return std::atomic_ref<T>(*addr).fetch_sub(v);
}
template <typename T>
inline T atomicExch(T* addr, T v) {
  return std::atomic_ref<T>(*addr).exchange(v);
}
template <typename T>
inline T atomicCAS(T* addr, T compare, T v) {
  std::atomic_ref<T>(*addr).compare_exchange_strong(compare, v);
  return compare;  // the old value either way
}
template <typename T>
inline T atomicMax(T* addr, T v) {
  std::atomic_ref<T> a(*addr);
  T old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <typename T>
inline T atomicMin(T* addr, T v) {
  std::atomic_ref<T> a(*addr);
  T old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
