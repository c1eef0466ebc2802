// Output buffers of the host ops: a cache of large blocks that were already
// written once.
//
// Why: a fresh NumPy array of tens of MiB is a fresh anonymous mapping (glibc
// mmaps every block above its 32 MiB ceiling, and trims smaller ones), so the
// kernel that fills it first takes a page fault per page while the OS zeroes
// it. On this machine kind that costs ~5 ms for a 51 MiB gradient, more than
// the pooling backward that writes it (3.8 ms). A training loop allocates the
// same shapes every step, so blocks that come back from dead arrays are kept
// (up to a byte limit) and handed to the next request of about their size.
//
// What the caller gets is an ordinary writable NumPy array whose base is a
// capsule; when the last reference dies the capsule gives the block back.
// Contents are uninitialized (np.empty semantics). Requests under kMinBytes
// are plain NumPy arrays: glibc's heap already reuses small blocks.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace py = pybind11;

namespace fastconv {
namespace bindings {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;    // below this: np.empty
constexpr size_t kGranule = size_t(64) << 10;    // block sizes are multiples of 64 KiB
constexpr size_t kHugeFrom = size_t(4) << 20;    // advise transparent huge pages from here
constexpr size_t kMissSlack = size_t(64) << 20;  // idle bytes a miss may keep (see take)

size_t default_limit() {
  if (const char* env = std::getenv("FASTCONV_BUFFER_CACHE_MB")) {
    char* end = nullptr;
    const long long mb = std::strtoll(env, &end, 10);
    if (end != env && *end == '\0' && mb >= 0) return size_t(mb) << 20;
  }
  return size_t(512) << 20;
}

struct Block {
  void* ptr;
  size_t size;
  uint64_t stamp;  // when it was given back (eviction takes the oldest first)
};

class BufferCache {
 public:
  // A block of at least `bytes`: the smallest idle one that is large enough,
  // its tail unmapped where it would waste more than 1/8, else a new mapping.
  // A miss first unmaps idle blocks (oldest first) down to the larger of what
  // is left after releasing `need` bytes and the miss slack (64 MiB, at most
  // half the limit), so mapped memory (live + idle) grows past what plain
  // allocation would map by at most that slack (plus the 64 KiB rounding and
  // the 1/8 fit slack).
  // Why the slack and the cutting: with neither (every miss released `need`
  // idle bytes, and only blocks within 1/8 of the request served it), a
  // training loop's steps cycled: a request found only blocks of another
  // size, released them, and the requests of that size then missed in turn.
  // benchmarks/bench_train.py counted 6-8 misses a step (simple_cnn, lenet5
  // b256, resnet20), each a fresh mapping the kernel then page-faults; with
  // both, none (simple_cnn 0.73x -> 0.97x torch, lenet5 b256 0.90x -> 1.63x).
  // Never null (throws std::bad_alloc).
  Block take(size_t bytes) {
    const size_t need = (bytes + kGranule - 1) / kGranule * kGranule;
    std::vector<Block> drop;
    Block got{nullptr, 0, 0};
    {
      std::lock_guard<std::mutex> lock(mu_);
      size_t best = idle_.size();
      for (size_t i = 0; i < idle_.size(); ++i) {
        const size_t s = idle_[i].size;
        if (s < need) continue;
        // the smallest fit; among equal sizes the latest given back (its lines may still be cached)
        if (best == idle_.size() || s < idle_[best].size ||
            (s == idle_[best].size && idle_[i].stamp > idle_[best].stamp))
          best = i;
      }
      if (best != idle_.size()) {
        got = idle_[best];
        idle_[best] = idle_.back();
        idle_.pop_back();
        idle_bytes_ -= got.size;
        ++hits_;
        if (got.size > need + need / 8) {  // keep what the request needs, unmap the rest
          drop.push_back(Block{static_cast<char*>(got.ptr) + need, got.size - need, 0});
          got.size = need;
          ++cuts_;
        }
      } else {
        ++misses_;
        evict_locked(std::max(idle_bytes_ > need ? idle_bytes_ - need : 0, miss_slack_locked()), drop);
      }
    }
    for (const Block& d : drop) munmap(d.ptr, d.size);
    if (got.ptr) return got;
    void* p = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (need >= kHugeFrom) madvise(p, need, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
    return Block{p, need, 0};
  }

  // Keep `b` for later requests, evicting the oldest idle blocks over the limit.
  void give_back(Block b) {
    std::vector<Block> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      b.stamp = ++clock_;
      idle_.push_back(b);
      idle_bytes_ += b.size;
      evict_locked(limit_, drop);
    }
    for (const Block& d : drop) munmap(d.ptr, d.size);
  }

  void set_limit(size_t limit) {
    std::vector<Block> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      limit_ = limit;
      evict_locked(limit_, drop);
    }
    for (const Block& d : drop) munmap(d.ptr, d.size);
  }

  py::dict info() {
    std::lock_guard<std::mutex> lock(mu_);
    py::dict d;
    d["limit_bytes"] = limit_;
    d["idle_bytes"] = idle_bytes_;
    d["idle_blocks"] = idle_.size();
    d["hits"] = hits_;
    d["misses"] = misses_;
    d["cuts"] = cuts_;
    d["miss_slack_bytes"] = miss_slack_locked();
    d["min_request_bytes"] = kMinBytes;
    return d;
  }

 private:
  size_t miss_slack_locked() const { return std::min(kMissSlack, limit_ / 2); }

  void evict_locked(size_t limit, std::vector<Block>& drop) {
    while (idle_bytes_ > limit && !idle_.empty()) {
      auto oldest = std::min_element(idle_.begin(), idle_.end(),
                                     [](const Block& a, const Block& c) { return a.stamp < c.stamp; });
      drop.push_back(*oldest);
      idle_bytes_ -= oldest->size;
      *oldest = idle_.back();
      idle_.pop_back();
    }
  }

  std::mutex mu_;
  std::vector<Block> idle_;
  size_t idle_bytes_ = 0;
  size_t limit_ = default_limit();
  uint64_t clock_ = 0, hits_ = 0, misses_ = 0, cuts_ = 0;
};

// Never destroyed: arrays may outlive the module's static destructors at exit.
BufferCache& cache() {
  static BufferCache* c = new BufferCache();
  return *c;
}

py::array cached_empty(py::object shape_obj, py::object dtype_obj) {
  const py::dtype dt = py::dtype::from_args(dtype_obj);
  std::vector<py::ssize_t> shape;
  if (py::isinstance<py::iterable>(shape_obj)) {
    for (py::handle h : shape_obj) shape.push_back(h.cast<py::ssize_t>());
  } else {
    shape.push_back(shape_obj.cast<py::ssize_t>());
  }
  size_t bytes = size_t(dt.itemsize());
  for (py::ssize_t s : shape) {
    if (s < 0) throw py::value_error("empty: negative dimension in shape " + std::string(py::str(shape_obj)));
    if (__builtin_mul_overflow(bytes, size_t(s), &bytes))
      throw py::value_error("empty: shape " + std::string(py::str(shape_obj)) + " is too big to allocate");
  }
  if (bytes < kMinBytes) return py::array(dt, shape);
  Block* b = new Block(cache().take(bytes));
  py::capsule owner(b, [](void* v) {
    Block* blk = static_cast<Block*>(v);
    cache().give_back(*blk);
    delete blk;
  });
  return py::array(dt, shape, b->ptr, owner);
}

}  // namespace
}  // namespace bindings
}  // namespace fastconv

void register_buffers(py::module_& m) {
  using fastconv::bindings::cache;
  using fastconv::bindings::cached_empty;
  m.def("empty", &cached_empty, py::arg("shape"), py::arg("dtype"),
        "An uninitialized C-contiguous array; blocks of 1 MiB and more come from the output-buffer cache "
        "(written pages reused, no page faults) and return to it when the array dies.");
  m.def("buffer_cache_info", []() { return cache().info(); },
        "limit_bytes, idle_bytes, idle_blocks, hits, misses, min_request_bytes of the output-buffer cache.");
  m.def("set_buffer_cache_limit", [](long long limit) {
    if (limit < 0) throw py::value_error("set_buffer_cache_limit: limit must be >= 0 bytes, got " +
                                         std::to_string(limit));
    cache().set_limit(size_t(limit));
  }, py::arg("limit_bytes"), "Idle bytes the cache may keep (0: keep none; blocks then unmap when freed).");
}
