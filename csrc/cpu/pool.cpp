// Pooling kernels (see fastconv/pool_cpu.h for the semantics).
//
// Why this shape: pooling is memory-bound, so the goal is to read every input
// byte once from DRAM and keep all other work in L1 with contiguous,
// vectorizable loops. Windows are separable, so one output row is built as
//   1. a vertical reduction of the window's input rows into a row buffer that
//      carries the horizontal padding (identity values) on both sides, so the
//      interior has no per-element padding branches;
//   2. a split of that buffer into `stride_w` phases (for stride 2: even and
//      odd columns), after which every horizontal tap s is a contiguous slice
//      of one phase: out[q] = reduce_s phase[(s*dil) % stride][q + (s*dil) / stride].
// With indices (return_indices, or backward without saved indices) the order
// is horizontal first, then vertical: that is what makes "first maximum in
// row-major window order" come out of two one-dimensional passes.
//
// The row kernels are compiled three times (AVX-512, AVX2, baseline x86-64)
// by including this file into itself under different target attributes; the
// package build has no -march flags, and the choice is made at run time from
// CPUID, like the GEMM micro-kernels.
#ifndef FC_POOL_ISA_PASS

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && !defined(FASTCONV_NO_X86_KERNELS)
#include <immintrin.h>
#endif

#include "fastconv/gemm.h"
#include "fastconv/parallel.h"
#include "fastconv/pool_cpu.h"

#define FC_AI __attribute__((always_inline)) inline

namespace fastconv {
namespace pool_detail {

// 2x2 windows, stride 2, no padding or dilation, every window inside the
// image: the pooling of LeNet, VGG and the seed network, with kernels of its own.
inline bool is_2x2s2_inside(const PoolProblem& p) {
  return p.kh == 2 && p.kw == 2 && p.sh == 2 && p.sw == 2 && p.ph == 0 && p.pw == 0 && p.dh == 1 &&
         p.dw == 1 && 2 * p.P <= p.H && 2 * p.Q <= p.W;
}

// 3x3 windows, stride 2, padding 1 (the ResNet stem's and the seed network's
// pooling), floor-mode sizes, output planes small enough for a divided copy in
// scratch: avg backward has a kernel of its own.
constexpr int64_t kAvg3x3Plane = 1 << 14;
inline bool is_3x3s2p1(const PoolProblem& p) {
  return p.kh == 3 && p.kw == 3 && p.sh == 2 && p.sw == 2 && p.ph == 1 && p.pw == 1 && p.dh == 1 &&
         p.dw == 1 && p.P == (p.H + 1) / 2 && p.Q == (p.W + 1) / 2 && (p.P + 1) * (p.Q + 1) <= kAvg3x3Plane;
}
// 3x3 windows, stride 2, padding 0 or 1, either ceil mode (ResNet, AlexNet,
// ZFNet, GoogLeNet, Inception, the seed network): the float forward has
// AVX-512 kernels of its own, values only and with indices.
inline bool is_3x3s2_small_pad(const PoolProblem& p) {
  return p.kh == 3 && p.kw == 3 && p.sh == 2 && p.sw == 2 && p.ph <= 1 && p.pw <= 1 && p.dh == 1 && p.dw == 1;
}

// Phase-buffer length (per phase) of the forward row kernels: long enough for
// the padded input row and for the right-most tap of the last window.
inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }
inline int64_t fwd_nj(const PoolProblem& p) {
  // the forward loops run over whole 16-wide chunks of the row and of the
  // output (see fwd_rows): room for both past their ends
  const int64_t need_taps = round16(p.Q) + ((p.kw - 1) * p.dw) / p.sw + 1;
  const int64_t need_row = (round16(p.pw + p.W) + p.sw - 1) / p.sw;
  // whole vectors: the phase loops then need no scalar tail
  return round16(std::max(need_taps, need_row));
}
inline int64_t fwd_scratch(const PoolProblem& p) {
  const int64_t nj = fwd_nj(p);
  return nj * p.sw /*row*/ + nj * p.sw /*phases*/ + nj * p.sw /*keep*/ + 2 * round16(p.Q) /*hv, colcnt or acc*/ +
         64;
}
// Avg backward: padded gradient row + phases.
inline int64_t bwd_nJ(const PoolProblem& p) { return (p.W - 1 + p.pw) / p.sw + 1; }
inline int64_t bwd_off(const PoolProblem& p) { return (p.kw - 1) / p.sw; }
inline int64_t bwd_tlen(const PoolProblem& p) {
  return bwd_off(p) + std::max(p.Q, bwd_nJ(p)) + 1;
}
// Output planes up to this many elements are divided by their window sizes once per plane (a
// contiguous, vectorizable pass) instead of once per input row that reads them: the per-row
// divisions over short rows (Q = 14 on Fashion-MNIST sizes) ran in scalar loop tails.
constexpr int64_t kAvgBwdPlane = 1 << 14;
inline bool bwd_plane_mode(const PoolProblem& p) { return p.P * p.Q <= kAvgBwdPlane; }
inline int64_t bwd_scratch_rows(const PoolProblem& p) {
  return bwd_tlen(p) + p.sw * bwd_nJ(p) + p.Q + 64;
}
inline int64_t bwd_scratch(const PoolProblem& p) {
  if (is_3x3s2p1(p)) return 2 * (p.P + 1) * (p.Q + 1) + 2 * (p.Q + 1) + 64;  // avg_bwd_3x3s2p1
  return bwd_scratch_rows(p) + (bwd_plane_mode(p) ? 2 * p.P * p.Q : 0);
}
// first i >= 0 with start + i*dil >= 0, as the coordinate start + i*dil
inline int64_t first_inside(int64_t start, int64_t dil) {
  if (start >= 0) return start;
  return start + ((-start + dil - 1) / dil) * dil;
}
// torch's avg divisor along one axis (before the product)
inline int64_t avg_count(int64_t o, int64_t stride, int64_t pad, int64_t k, int64_t in, bool include_pad) {
  int64_t s = o * stride - pad;
  int64_t e = std::min(s + k, in + pad);
  const int64_t padded = e - s;
  s = std::max<int64_t>(s, 0);
  e = std::min(e, in);
  return include_pad ? padded : e - s;
}

}  // namespace pool_detail
}  // namespace fastconv

// ------------------------------------------------------------ ISA passes
#define FC_POOL_ISA_PASS
#if defined(__x86_64__) && !defined(FASTCONV_NO_X86_KERNELS)
#define FC_POOL_HAVE_X86 1
#define FC_TGT __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")))
#define FC_POOL_AVX512_PASS 1
namespace fastconv { namespace pool_avx512 {
#include __FILE__
}}  // namespace fastconv::pool_avx512
#undef FC_POOL_AVX512_PASS
#undef FC_TGT
#define FC_TGT __attribute__((target("avx2,fma")))
#define FC_POOL_AVX2_PASS 1
namespace fastconv { namespace pool_avx2 {
#include __FILE__
}}  // namespace fastconv::pool_avx2
#undef FC_POOL_AVX2_PASS
#undef FC_TGT
#endif
#define FC_TGT
namespace fastconv { namespace pool_base {
#include __FILE__
}}  // namespace fastconv::pool_base
#undef FC_TGT
#undef FC_POOL_ISA_PASS

// ---------------------------------------------------------------- drivers
namespace fastconv {

using namespace pool_detail;

namespace {

enum class Isa { Base, Avx2, Avx512 };

// The GEMM's choice (CPUID, or fastconv.backends.cpu.set_isa()), as the convolution paths:
// one switch selects every vectorized path, and the tests run each build on one machine.
Isa pick_isa() {
#ifdef FC_POOL_HAVE_X86
  const std::string g = gemm_isa();
  return g == "avx512" ? Isa::Avx512 : (g == "avx2" ? Isa::Avx2 : Isa::Base);
#else
  return Isa::Base;
#endif
}

#ifdef FC_POOL_HAVE_X86
#define FC_POOL_DISPATCH(fn, ...)                                          \
  do {                                                                     \
    switch (pick_isa()) {                                                  \
      case Isa::Avx512: pool_avx512::fn(__VA_ARGS__); break;               \
      case Isa::Avx2: pool_avx2::fn(__VA_ARGS__); break;                   \
      default: pool_base::fn(__VA_ARGS__); break;                          \
    }                                                                      \
  } while (0)
#else
#define FC_POOL_DISPATCH(fn, ...) pool_base::fn(__VA_ARGS__)
#endif

// Static contiguous split of [0, n) over the team: fixed, so work placement
// (never results: every output is computed by exactly one thread with a fixed
// order) depends on the thread count.
inline void split(int64_t n, int64_t& b, int64_t& e) {
#ifdef _OPENMP
  const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
  const int64_t t = 0, nt = 1;
#endif
  b = n * t / nt;
  e = n * (t + 1) / nt;
}

// elements touched below which threads cost more than they give (higher under a passive wait policy)
const int64_t kParallelMin = parallel_min_work();

bool is_global(const PoolProblem& p) {
  return p.P == 1 && p.Q == 1 && p.ph == 0 && p.pw == 0 && p.kh == p.H && p.kw == p.W &&
         p.dh == 1 && p.dw == 1;
}

template <typename T>
void global_fwd(PoolKind kind, int64_t planes, int64_t HW, const T* x, T* y, int64_t* idx, T div) {
#pragma omp parallel num_threads(::fastconv::max_threads()) if (planes * HW > kParallelMin)
  {
    int64_t b, e;
    split(planes, b, e);
    if (b < e) FC_POOL_DISPATCH(global_range<T>, kind, x, HW, y, idx, div, b, e);
  }
}

// Max/min backward of one plane from indices: zeroed, then every output adds
// its gradient at its index in row-major output order (a fixed order, so
// overlapping windows accumulate deterministically). Indices outside the
// plane are skipped and counted.
template <typename T>
int64_t scatter_plane(const T* g, const int64_t* ix, int64_t PQ, T* d, int64_t HW) {
  for (int64_t i = 0; i < HW; ++i) d[i] = T(0);
  int64_t nbad = 0;
  for (int64_t o = 0; o < PQ; ++o) {
    const int64_t i = ix[o];
    if (static_cast<uint64_t>(i) < static_cast<uint64_t>(HW)) d[i] += g[o];
    else ++nbad;
  }
  return nbad;
}

// Oversized geometries: a stride, window or padding far larger than the
// image (stride 2^30 on a 6x6 input is valid, and torch runs it). The row
// kernels' scratch holds the padded row split into stride phases and spans
// the widest window, and their loops visit every tap, so both grow with those
// sizes (gigabytes, a bad_alloc abort); here each output visits only its taps
// inside the image, with no scratch. Same rules as the row kernels: the first
// better value in row-major window order (a NaN always replaces: the last NaN
// wins), torch's initial index (the first tap at or after the image's top and
// left edges) for a window with no tap in the image, torch's avg divisors.
bool oversized(const PoolProblem& p) {
  const auto big = [](int64_t k, int64_t s, int64_t d, int64_t pad, int64_t n) {
    const int64_t lim = 2 * n + 64;  // parameters are < 2^31 (pool_check): no overflow
    return s > lim || pad > lim || (k - 1) * d + 1 > lim;
  };
  return big(p.kh, p.sh, p.dh, p.ph, p.H) || big(p.kw, p.sw, p.dw, p.pw, p.W);
}

// Taps i in [0, k) of a window starting at s with 0 <= s + i*d < n: [i0, i1).
inline void taps_inside(int64_t s, int64_t d, int64_t k, int64_t n, int64_t& i0, int64_t& i1) {
  i0 = (first_inside(s, d) - s) / d;
  i1 = s > n - 1 ? 0 : std::min(k, (n - 1 - s) / d + 1);
  if (i1 < i0) i1 = i0;
}

template <typename T>
T direct_divisor(const PoolProblem& p, int64_t oh, int64_t ow) {
  if (p.divisor_override) return T(p.divisor_override);
  return T(avg_count(oh, p.sh, p.ph, p.kh, p.H, p.count_include_pad)) *
         T(avg_count(ow, p.sw, p.pw, p.kw, p.W, p.count_include_pad));
}

template <typename T>
void direct_fwd(PoolKind kind, const PoolProblem& p, const T* x, T* y, int64_t* idx) {
  const int64_t H = p.H, W = p.W, P = p.P, Q = p.Q;
  const bool mx = kind == PoolKind::Max;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (p.planes * P * Q > kParallelMin)
  for (int64_t it = 0; it < p.planes * P; ++it) {
    const int64_t oh = it % P, hs = oh * p.sh - p.ph;
    const T* xp = x + (it / P) * H * W;
    int64_t i0, i1;
    taps_inside(hs, p.dh, p.kh, H, i0, i1);
    for (int64_t ow = 0; ow < Q; ++ow) {
      const int64_t ws = ow * p.sw - p.pw;
      int64_t j0, j1;
      taps_inside(ws, p.dw, p.kw, W, j0, j1);
      if (kind == PoolKind::Avg) {
        T acc = T(0);
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = j0; j < j1; ++j) acc += xp[(hs + i * p.dh) * W + ws + j * p.dw];
        y[it * Q + ow] = acc / direct_divisor<T>(p, oh, ow);
        continue;
      }
      T best = mx ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity();
      int64_t bi = first_inside(hs, p.dh) * W + first_inside(ws, p.dw);  // torch's initial index
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t at = (hs + i * p.dh) * W + ws + j * p.dw;
          const T v = xp[at];
          if ((mx ? v > best : v < best) || v != v) {
            best = v;
            bi = at;
          }
        }
      y[it * Q + ow] = best;
      if (idx) idx[it * Q + ow] = bi;
    }
  }
}

// Avg backward of an oversized geometry: each plane zeroed, then every output
// adds its share to its taps inside the image, in row-major output order.
template <typename T>
void direct_avg_bwd(const PoolProblem& p, const T* dy, T* dx) {
  const int64_t H = p.H, W = p.W, P = p.P, Q = p.Q;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (p.planes * (H * W + P * Q) > kParallelMin)
  for (int64_t plane = 0; plane < p.planes; ++plane) {
    T* d = dx + plane * H * W;
    for (int64_t i = 0; i < H * W; ++i) d[i] = T(0);
    for (int64_t oh = 0; oh < P; ++oh) {
      const int64_t hs = oh * p.sh - p.ph;
      int64_t i0, i1;
      taps_inside(hs, 1, p.kh, H, i0, i1);
      for (int64_t ow = 0; ow < Q; ++ow) {
        const int64_t ws = ow * p.sw - p.pw;
        int64_t j0, j1;
        taps_inside(ws, 1, p.kw, W, j0, j1);
        const T v = dy[(plane * P + oh) * Q + ow] / direct_divisor<T>(p, oh, ow);
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = j0; j < j1; ++j) d[(hs + i) * W + ws + j] += v;
      }
    }
  }
}

// adaptive windows: start = floor(i*in/out), end = ceil((i+1)*in/out)
inline int64_t a_start(int64_t i, int64_t in, int64_t out) { return (i * in) / out; }
inline int64_t a_end(int64_t i, int64_t in, int64_t out) { return ((i + 1) * in + out - 1) / out; }

// For each input coordinate, the [lo, hi] range of adaptive windows containing it.
void adaptive_ranges(int64_t in, int64_t out, std::vector<int64_t>& lo, std::vector<int64_t>& hi) {
  lo.assign(in, out);
  hi.assign(in, -1);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = a_start(o, in, out); i < a_end(o, in, out); ++i) {
      lo[i] = std::min(lo[i], o);
      hi[i] = std::max(hi[i], o);
    }
}

}  // namespace

const char* pool_isa() {
  switch (pick_isa()) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "baseline";
  }
}

std::string pool_check(PoolKind kind, const PoolProblem& p) {
  if (p.planes < 0) return "planes must be >= 0";
  if (p.H <= 0 || p.W <= 0) return "input plane must be non-empty";
  if (p.P <= 0 || p.Q <= 0) return "output size must be positive";
  if (p.kh <= 0 || p.kw <= 0) return "kernel_size must be positive";
  if (p.sh <= 0 || p.sw <= 0) return "stride must be positive";
  if (p.dh <= 0 || p.dw <= 0) return "dilation must be positive";
  if (p.ph < 0 || p.pw < 0) return "padding must be >= 0";
  if (std::max({p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw}) > std::numeric_limits<int32_t>::max())
    return "kernel_size, stride, padding and dilation must be < 2^31";
  if (p.ph > p.kh / 2 || p.pw > p.kw / 2) return "padding must be at most half the kernel size";
  if (kind == PoolKind::Avg && (p.dh != 1 || p.dw != 1)) return "avg pooling has no dilation";
  // every window must start inside the (top/left padded) input
  if ((p.P - 1) * p.sh - p.ph >= p.H || (p.Q - 1) * p.sw - p.pw >= p.W)
    return "output size too large for the input";
  return "";
}

std::string adaptive_check(PoolKind kind, const AdaptiveProblem& p) {
  if (kind == PoolKind::Min) return "adaptive min pooling is not implemented";
  if (p.planes < 0) return "planes must be >= 0";
  if (p.H <= 0 || p.W <= 0) return "input plane must be non-empty";
  if (p.P <= 0 || p.Q <= 0) return "output size must be positive";
  return "";
}

template <typename T>
void pool2d_fwd(PoolKind kind, const PoolProblem& p, const T* x, T* y, int64_t* idx) {
  if (kind == PoolKind::Avg) idx = nullptr;
  if (p.planes == 0) return;
  if (is_global(p)) {
    const T div = T(p.divisor_override ? p.divisor_override : p.H * p.W);
    global_fwd<T>(kind, p.planes, p.H * p.W, x, y, idx, div);
    return;
  }
  if (oversized(p)) return direct_fwd<T>(kind, p, x, y, idx);
  const int64_t items = p.planes * p.P;
  const int64_t scr = fwd_scratch(p);
#pragma omp parallel num_threads(::fastconv::max_threads()) if (p.planes * (p.H * p.W + p.P * p.Q) > kParallelMin)
  {
    int64_t b, e;
    split(items, b, e);
    if (b < e) {
      AlignedBuffer<T> s(scr);
      AlignedBuffer<int64_t> is(3 * round16(p.Q) + 16);  // hc, fc, oi of fwd_rows_idx
      FC_POOL_DISPATCH(fwd_range<T>, kind, p, x, y, idx, b, e, s.data(), is.data());
    }
  }
}

template <typename T>
int64_t pool2d_bwd(PoolKind kind, const PoolProblem& p, const T* dy, const T* x, const int64_t* idx,
                   T* dx) {
  if (p.planes == 0) return 0;
  std::vector<int64_t> own;
  if (kind != PoolKind::Avg && idx == nullptr) {
    // recompute the argmax with the forward's tie rule
    own.resize(static_cast<size_t>(p.planes * p.P * p.Q));
    std::vector<T> ytmp(static_cast<size_t>(p.planes * p.P * p.Q));
    pool2d_fwd<T>(kind, p, x, ytmp.data(), own.data());
    idx = own.data();
  }
  if (kind != PoolKind::Avg) {
    // max/min: each plane is owned by one thread, zeroed (it then sits in
    // L2), then every output adds its gradient at its argmax in row-major
    // output order: a fixed order, so overlapping windows accumulate
    // deterministically and bit-identically to the CUDA kernels (a gather in
    // the same order). Out-of-range indices are counted and skipped: the
    // range check rides along instead of costing a pass over the indices.
    const int64_t HW = p.H * p.W, PQ = p.P * p.Q;
    const bool avx512 = pick_isa() == Isa::Avx512;
    (void)avx512;
    int64_t bad = 0;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) reduction(+ : bad) if (p.planes * (HW + PQ) > kParallelMin)
    for (int64_t plane = 0; plane < p.planes; ++plane) {
      T* d = dx + plane * HW;
      const T* g = dy + plane * PQ;
      const int64_t* ix = idx + plane * PQ;
      bool done = false;
#ifdef FC_POOL_HAVE_X86
      if (avx512) done = pool_avx512::maxmin_bwd_plane<T>(p, g, ix, d);
#endif
      if (!done) bad += scatter_plane(g, ix, PQ, d, HW);
    }
    return bad;
  }
  if (oversized(p)) {
    direct_avg_bwd<T>(p, dy, dx);
    return 0;
  }
  const int64_t items = p.planes * p.H;
  const int64_t scr = bwd_scratch(p);
#pragma omp parallel num_threads(::fastconv::max_threads()) if (p.planes * (p.H * p.W + p.P * p.Q) > kParallelMin)
  {
    int64_t b, e;
    split(items, b, e);
    if (b < e) {
      AlignedBuffer<T> s(scr);
      FC_POOL_DISPATCH(avg_bwd_range<T>, p, dy, dx, b, e, s.data());
    }
  }
  return 0;
}

template <typename T>
void adaptive_pool2d_fwd(PoolKind kind, const AdaptiveProblem& p, const T* x, T* y, int64_t* idx) {
  if (kind == PoolKind::Avg) idx = nullptr;
  if (p.planes == 0) return;
  const int64_t H = p.H, W = p.W, P = p.P, Q = p.Q;
  if (P == 1 && Q == 1) {
    global_fwd<T>(kind, p.planes, H * W, x, y, idx, T(H * W));
    return;
  }
  const int64_t items = p.planes * P;
#pragma omp parallel num_threads(::fastconv::max_threads()) if (p.planes * (H * W + P * Q) > kParallelMin)
  {
    int64_t b, e;
    split(items, b, e);
    for (int64_t it = b; it < e; ++it) {
      const int64_t plane = it / P, oh = it % P;
      const T* xp = x + plane * H * W;
      const int64_t hs = a_start(oh, H, P), he = a_end(oh, H, P);
      T* out = y + it * Q;
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t ws = a_start(q, W, Q), we = a_end(q, W, Q);
        if (kind == PoolKind::Avg) {
          T acc = T(0);
          for (int64_t h = hs; h < he; ++h)
            for (int64_t w = ws; w < we; ++w) acc += xp[h * W + w];
          out[q] = acc / T((he - hs) * (we - ws));
        } else {
          T best = -std::numeric_limits<T>::infinity();
          int64_t bi = hs * W + ws;
          for (int64_t h = hs; h < he; ++h)
            for (int64_t w = ws; w < we; ++w) {
              const T v = xp[h * W + w];
              if (v > best || v != v) {
                best = v;
                bi = h * W + w;
              }
            }
          out[q] = best;
          if (idx) idx[it * Q + q] = bi;
        }
      }
    }
  }
}

template <typename T>
void adaptive_pool2d_bwd(PoolKind kind, const AdaptiveProblem& p, const T* dy, const T* x,
                         const int64_t* idx, T* dx) {
  if (p.planes == 0) return;
  const int64_t H = p.H, W = p.W, P = p.P, Q = p.Q;
  if (P == 1 && Q == 1 && kind == PoolKind::Avg) {
    // Global average pooling (the end of every ResNet/GoogLeNet): a broadcast
    // per plane (max/min: the scatter below, one store per plane).
    const int64_t HW = H * W;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (p.planes * HW > kParallelMin)
    for (int64_t plane = 0; plane < p.planes; ++plane) {
      T* d = dx + plane * HW;
      const T v = dy[plane] / T(HW);
      for (int64_t i = 0; i < HW; ++i) d[i] = v;
    }
    return;
  }
  std::vector<int64_t> own;
  if (kind != PoolKind::Avg && idx == nullptr) {
    own.resize(static_cast<size_t>(p.planes * P * Q));
    std::vector<T> ytmp(static_cast<size_t>(p.planes * P * Q));
    adaptive_pool2d_fwd<T>(kind, p, x, ytmp.data(), own.data());
    idx = own.data();
  }
  if (kind != PoolKind::Avg) {
    // max: every output adds its gradient at its index, in row-major output
    // order within a plane owned by one thread (deterministic; where windows
    // overlap, the order a gather over each input row's windows would take).
    // A scatter, not a gather over the windows that contain an element, so
    // indices passed in by hand land where they point, as in torch.
    const int64_t HW = H * W, PQ = P * Q;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (p.planes * (HW + PQ) > kParallelMin)
    for (int64_t plane = 0; plane < p.planes; ++plane)
      scatter_plane(dy + plane * PQ, idx + plane * PQ, PQ, dx + plane * HW, HW);
    return;
  }
  std::vector<int64_t> hlo, hhi, wlo, whi;
  adaptive_ranges(H, P, hlo, hhi);
  adaptive_ranges(W, Q, wlo, whi);
  std::vector<T> colcnt(static_cast<size_t>(Q));
  for (int64_t q = 0; q < Q; ++q) colcnt[q] = T(a_end(q, W, Q) - a_start(q, W, Q));
  const int64_t items = p.planes * H;
#pragma omp parallel num_threads(::fastconv::max_threads()) if (p.planes * (H * W + P * Q) > kParallelMin)
  {
    int64_t b, e;
    split(items, b, e);
    std::vector<T> t(static_cast<size_t>(Q));
    for (int64_t it = b; it < e; ++it) {
      const int64_t plane = it / H, ih = it % H;
      const T* dyp = dy + plane * P * Q;
      T* dxr = dx + it * W;
      for (int64_t q = 0; q < Q; ++q) t[q] = T(0);
      for (int64_t oh = hlo[ih]; oh <= hhi[ih]; ++oh) {
        const T rc = T(a_end(oh, H, P) - a_start(oh, H, P));
        for (int64_t q = 0; q < Q; ++q) t[q] += dyp[oh * Q + q] / (rc * colcnt[q]);
      }
      for (int64_t w = 0; w < W; ++w) {
        T acc = T(0);
        for (int64_t q = wlo[w]; q <= whi[w]; ++q) acc += t[q];
        dxr[w] = acc;
      }
    }
  }
}

#define FC_INST(T)                                                                              \
  template void pool2d_fwd<T>(PoolKind, const PoolProblem&, const T*, T*, int64_t*);            \
  template int64_t pool2d_bwd<T>(PoolKind, const PoolProblem&, const T*, const T*, const int64_t*, \
                              T*);                                                              \
  template void adaptive_pool2d_fwd<T>(PoolKind, const AdaptiveProblem&, const T*, T*,          \
                                       int64_t*);                                               \
  template void adaptive_pool2d_bwd<T>(PoolKind, const AdaptiveProblem&, const T*, const T*,    \
                                       const int64_t*, T*);
FC_INST(float)
FC_INST(double)
#undef FC_INST

}  // namespace fastconv

#else  // ======================= FC_POOL_ISA_PASS: row kernels for one ISA

using ::fastconv::PoolKind;
using ::fastconv::PoolProblem;
using namespace ::fastconv::pool_detail;

// (plane, row) of consecutive items b, b + 1, ... of a range over planes x rows: one
// division for the first, then counting (per-row 64-bit divisions cost as much as the
// row's vector work on small planes).
struct RowCursor {
  int64_t plane, row, rows;
  RowCursor(int64_t b, int64_t rows_) : plane(b / rows_), row(b % rows_ - 1), rows(rows_) {}
  FC_AI void next() {
    if (++row == rows) {
      row = 0;
      ++plane;
    }
  }
};

// max / min: NaN wins (and a later NaN replaces an earlier one, like torch);
// otherwise strictly better only, so the first extreme value is kept.
template <typename T>
struct MaxOp {
  static constexpr bool avg = false;
  FC_AI static T id() { return -std::numeric_limits<T>::infinity(); }
  FC_AI static bool better(T v, T a) { return (v > a) | (v != v); }  // | not ||: no branch
  // a NaN accumulator stays; otherwise maxps semantics (a NaN v is taken)
  // (two flat selects: GCC left the nested conditional as scalar branches)
  FC_AI static T comb(T a, T v) {
    const T m = a > v ? a : v;
    return a != a ? a : m;
  }
};
template <typename T>
struct MinOp {
  static constexpr bool avg = false;
  FC_AI static T id() { return std::numeric_limits<T>::infinity(); }
  FC_AI static bool better(T v, T a) { return (v < a) | (v != v); }
  FC_AI static T comb(T a, T v) {
    const T m = a < v ? a : v;
    return a != a ? a : m;
  }
};
template <typename T>
struct AvgOp {
  static constexpr bool avg = true;
  FC_AI static T id() { return T(0); }
  FC_AI static T comb(T a, T v) { return a + v; }
};

// Split the padded row vb (nj*sw long) into sw phases: ph[k*nj + j] = vb[j*sw + k].
template <typename T>
FC_TGT FC_AI void deinterleave(const T* __restrict vb, T* __restrict ph, int64_t nj, int64_t sw) {
  if (sw == 2) {
    T* __restrict e = ph;
    T* __restrict o = ph + nj;
    for (int64_t j = 0; j < nj; ++j) {
      e[j] = vb[2 * j];
      o[j] = vb[2 * j + 1];
    }
  } else {
    for (int64_t k = 0; k < sw; ++k) {
      T* __restrict d = ph + k * nj;
      const T* __restrict s = vb + k;
      for (int64_t j = 0; j < nj; ++j) d[j] = s[j * sw];
    }
  }
}

// Fixed-length partial copies for the chunked kernels below: a variable-length
// memcpy (or a loop GCC turns into one) compiles to `rep movs`, whose start-up
// costs more than a 16-wide chunk's work; these become masked vector moves.
// With AVX-512, float rows are masked moves written out: GCC still compiled
// the loops' partial case to a chain of scalar extracts and branches.
#ifdef FC_POOL_AVX512_PASS
FC_AI __mmask16 lanes16(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}
#endif
template <int64_t K, typename T>
FC_TGT FC_AI void load_n(T* __restrict dst, const T* __restrict src, int64_t n, T fill) {
#ifdef FC_POOL_AVX512_PASS
  if constexpr (std::is_same<T, float>::value && K % 16 == 0) {
    const __m512 f = _mm512_set1_ps(fill);
    for (int64_t l = 0; l < K; l += 16)
      _mm512_storeu_ps(dst + l, _mm512_mask_loadu_ps(f, lanes16(n - l), src + l));
    return;
  }
#endif
  if (n >= K) {
    for (int64_t l = 0; l < K; ++l) dst[l] = src[l];
  } else {
    for (int64_t l = 0; l < K; ++l) dst[l] = l < n ? src[l] : fill;
  }
}
template <int64_t K, typename T>
FC_TGT FC_AI void store_n(T* __restrict dst, const T* __restrict src, int64_t n) {
#ifdef FC_POOL_AVX512_PASS
  if constexpr (std::is_same<T, float>::value && K % 16 == 0) {
    for (int64_t l = 0; l < K; l += 16) _mm512_mask_storeu_ps(dst + l, lanes16(n - l), _mm512_loadu_ps(src + l));
    return;
  } else if constexpr (std::is_same<T, int64_t>::value && K % 8 == 0) {
    for (int64_t l = 0; l < K; l += 8) {
      const __mmask8 m = __mmask8(lanes16(n - l) & 0xFF);
      _mm512_mask_storeu_epi64(dst + l, m, _mm512_loadu_si512(src + l));
    }
    return;
  }
#endif
  if (n >= K) {
    for (int64_t l = 0; l < K; ++l) dst[l] = src[l];
  } else {
    for (int64_t l = 0; l < K; ++l)
      if (l < n) dst[l] = src[l];
  }
}

// The padded row buffer vb (Wb long, 64-byte aligned) holds vb[w] = row[w - pw]
// inside the image and the padding value elsewhere. It is built in whole
// aligned chunks straight from the input, with the padding lanes blended in
// from `keep` (1 inside, 0 outside): writing the row at vb + pw instead made
// every later aligned load of vb straddle two misaligned stores, a failed
// store-to-load forward each time (3x slower on 28-wide rows).
// `first`: vb = row, else vb = comb(vb, row). Returns false (nothing done)
// when the chunks would read outside [x, x_end): the caller uses row_masked.
template <class Op, typename T>
FC_TGT FC_AI bool row_chunks(T* __restrict vb, const T* __restrict keep, const T* row, int64_t pw, int64_t Wbr,
                             const T* x, const T* x_end, bool first) {
  const T* __restrict src = row - pw;
  if (src < x || src + Wbr > x_end) return false;
  if (first) {
    for (int64_t w = 0; w < Wbr; ++w) {
      const T v = src[w];
      vb[w] = keep[w] != T(0) ? v : Op::id();
    }
  } else {
    for (int64_t w = 0; w < Wbr; ++w) {
      const T v = src[w];
      vb[w] = Op::comb(vb[w], keep[w] != T(0) ? v : Op::id());
    }
  }
  return true;
}
// The same near the array's ends, element by element.
template <class Op, typename T>
FC_TGT void row_masked(T* __restrict vb, const T* __restrict row, int64_t pw, int64_t W, bool first) {
  for (int64_t w = 0; w < W; ++w) vb[pw + w] = first ? row[w] : Op::comb(vb[pw + w], row[w]);
}
template <class Op, typename T>
FC_TGT FC_AI void init_keep(T* __restrict keep, int64_t Wb, int64_t pw, int64_t W) {
  for (int64_t w = 0; w < Wb; ++w) keep[w] = (w >= pw && w < pw + W) ? T(1) : T(0);
}

// Forward, values only: vertical reduction first, then horizontal taps.
template <class Op, typename T>
FC_TGT void fwd_rows(const PoolProblem& p, const T* __restrict x, T* __restrict y, int64_t b,
                     int64_t e, T* __restrict scr) {
  // Every loop runs over whole 16-wide chunks (masked at the ends): on the
  // 14-28 wide rows of small images a scalar remainder would be the whole
  // loop, and its max/min selects compile to mispredicted branches.
  constexpr int64_t kC = 16;
  const int64_t H = p.H, W = p.W, P = p.P, Q = p.Q, sw = p.sw, pw = p.pw;
  const int64_t nj = fwd_nj(p), Wb = nj * sw, Qr = round16(Q);
  T* __restrict vb = scr;
  T* __restrict ph = vb + Wb;
  T* __restrict acc = ph + Wb;
  T* __restrict colcnt = acc + Qr;
  T* __restrict keep = colcnt + Qr;
  const T* const x_end = x + p.planes * H * W;
  const int64_t Wbr = round16(pw + W);
  for (int64_t i = 0; i < Wb; ++i) vb[i] = Op::id();
  init_keep<Op, T>(keep, Wb, pw, W);
  if (Op::avg)
    for (int64_t q = 0; q < Qr; ++q)
      colcnt[q] = q >= Q ? T(1)
                         : p.divisor_override ? T(p.divisor_override)
                                              : T(avg_count(q, sw, pw, p.kw, W, p.count_include_pad));
  // per-row 64-bit divisions cost as much as the row's vector work: count instead
  RowCursor cur(b, P);
  for (int64_t it = b; it < e; ++it) {
    cur.next();
    const int64_t plane = cur.plane, oh = cur.row;
    const T* __restrict xp = x + plane * H * W;
    const int64_t h0 = oh * p.sh - p.ph;
    int64_t nvalid = 0;
    for (int64_t r = 0; r < p.kh; ++r) {
      const int64_t ih = h0 + r * p.dh;
      if (ih < 0 || ih >= H) continue;
      const T* row = xp + ih * W;
      if (!row_chunks<Op, T>(vb, keep, row, pw, Wbr, x, x_end, nvalid == 0)) {
        if (nvalid == 0)
          for (int64_t w = 0; w < Wbr; ++w) vb[w] = Op::id();
        row_masked<Op, T>(vb, row, pw, W, nvalid == 0);
      }
      ++nvalid;
    }
    if (nvalid == 0)
      for (int64_t w = 0; w < Wbr; ++w) vb[w] = Op::id();
    const T* phases = vb;
    if (sw > 1) {
      deinterleave(vb, ph, nj, sw);
      phases = ph;
    }
    for (int64_t s = 0; s < p.kw; ++s) {
      const int64_t off = s * p.dw;
      const T* __restrict src = phases + (off % sw) * nj + off / sw;
      if (s == 0)
        for (int64_t q = 0; q < Qr; ++q) acc[q] = src[q];
      else
        for (int64_t q = 0; q < Qr; ++q) acc[q] = Op::comb(acc[q], src[q]);
    }
    if (Op::avg) {
      const T rc = p.divisor_override ? T(1) : T(avg_count(oh, p.sh, p.ph, p.kh, H, p.count_include_pad));
      for (int64_t q = 0; q < Qr; ++q) acc[q] = acc[q] / (rc * colcnt[q]);
    }
    T* __restrict out = y + it * Q;
    if ((e - it) * Q >= Qr) {  // whole chunks: past Q they write later rows of this range, written later
      for (int64_t q = 0; q < Qr; ++q) out[q] = acc[q];
    } else {
      for (int64_t q0 = 0; q0 < Qr; q0 += kC) store_n<kC>(out + q0, acc + q0, Q - q0);
    }
  }
}

// Forward with indices: horizontal (with column) per input row, then vertical
// in increasing row order, both keeping only strictly better values. The
// indices are computed in I (int32_t when the plane has < 2^31 elements, so
// the selects run at the values' lane width and vectorize; int64_t otherwise)
// and widened into the int64 output once per output row.
template <class Op, typename T, typename I>
FC_TGT void fwd_rows_idx(const PoolProblem& p, const T* __restrict x, T* __restrict y,
                         int64_t* __restrict idx, int64_t b, int64_t e, T* __restrict scr,
                         I* __restrict iscr) {
  // whole 16-wide chunks, as fwd_rows: on short rows a scalar remainder loop
  // of selects compiles to branches that mispredict on random data (3x3/s2/p1
  // on 28x28 planes ran 15x slower than without indices)
  constexpr int64_t kC = 16;
  const int64_t H = p.H, W = p.W, P = p.P, Q = p.Q, sw = p.sw, pw = p.pw;
  const int64_t nj = fwd_nj(p), Wb = nj * sw, Qr = round16(Q);
  T* __restrict vb = scr;
  T* __restrict ph = vb + Wb;
  T* __restrict hv = ph + Wb;
  T* __restrict acc = hv + Qr;
  I* __restrict hc = iscr;
  I* __restrict fc = iscr + Qr;  // first in-image column of each window (torch's initial index)
  I* __restrict oi = iscr + 2 * Qr;
  T* __restrict keep = acc + Qr;
  const T* const x_end = x + p.planes * H * W;
  const int64_t Wbr = round16(pw + W);
  for (int64_t i = 0; i < Wb; ++i) vb[i] = Op::id();
  init_keep<Op, T>(keep, Wb, pw, W);
  for (int64_t q = 0; q < Qr; ++q) fc[q] = I(q < Q ? first_inside(q * sw - pw, p.dw) : 0);
  // per-row 64-bit divisions cost as much as the row's vector work: count instead
  RowCursor cur(b, P);
  for (int64_t it = b; it < e; ++it) {
    cur.next();
    const int64_t plane = cur.plane, oh = cur.row;
    const T* __restrict xp = x + plane * H * W;
    const int64_t h0 = oh * p.sh - p.ph;
    const I first = I(first_inside(h0, p.dh) * W);
    for (int64_t q = 0; q < Qr; ++q) {
      acc[q] = Op::id();
      oi[q] = first + fc[q];
    }
    for (int64_t r = 0; r < p.kh; ++r) {
      const int64_t ih = h0 + r * p.dh;
      if (ih < 0 || ih >= H) continue;
      const T* row = xp + ih * W;
      if (!row_chunks<Op, T>(vb, keep, row, pw, Wbr, x, x_end, true)) {
        for (int64_t w = 0; w < Wbr; ++w) vb[w] = Op::id();
        row_masked<Op, T>(vb, row, pw, W, true);
      }
      const T* phases = vb;
      if (sw > 1) {
        deinterleave(vb, ph, nj, sw);
        phases = ph;
      }
      for (int64_t q = 0; q < Qr; ++q) {
        hv[q] = Op::id();
        hc[q] = fc[q];
      }
      for (int64_t s = 0; s < p.kw; ++s) {
        const int64_t off = s * p.dw;
        const T* __restrict src = phases + (off % sw) * nj + off / sw;
        const I c0 = I(off - pw), step = I(sw);
        for (int64_t q = 0; q < Qr; ++q) {
          const T v = src[q];
          const bool m = Op::better(v, hv[q]);
          hv[q] = m ? v : hv[q];
          hc[q] = m ? I(q) * step + c0 : hc[q];
        }
      }
      const I base = I(ih * W);
      for (int64_t q = 0; q < Qr; ++q) {
        const bool m = Op::better(hv[q], acc[q]);
        acc[q] = m ? hv[q] : acc[q];
        oi[q] = m ? base + hc[q] : oi[q];
      }
    }
    T* __restrict out = y + it * Q;
    int64_t* __restrict dst = idx + it * Q;
    if ((e - it) * Q >= Qr) {  // whole chunks: past Q they write later rows of this range, written later
      for (int64_t q = 0; q < Qr; ++q) {
        out[q] = acc[q];
        dst[q] = int64_t(oi[q]);
      }
    } else {
      for (int64_t q0 = 0; q0 < Qr; q0 += kC) {
        int64_t wide[kC];
        for (int64_t l = 0; l < kC; ++l) wide[l] = int64_t(oi[q0 + l]);
        store_n<kC>(out + q0, acc + q0, Q - q0);
        store_n<kC>(dst + q0, wide, Q - q0);
      }
    }
  }
}

// The most common pooling (LeNet, VGG, the seed network: 2x2, stride 2, no
// padding, every window inside the image) as one pass per output row in
// fixed 16-wide chunks. The generic path runs ~8 loops of Q iterations per
// row, whose overhead dominates on 14-28 wide planes, and its scalar
// remainder loops compile to branches that mispredict half the time on random
// data (4-5x the values-only time with indices); fixed-width chunks are
// straight vector code. Same rule: the first better value in row-major
// window order wins; avg divides by 4 (or divisor_override).
template <class Op, typename T, bool kIdx>
FC_TGT void fwd_2x2s2(const PoolProblem& p, const T* __restrict x, T* __restrict y,
                      int64_t* __restrict idx, int64_t b, int64_t e) {
  constexpr int64_t kChunk = 16;
  const int64_t H = p.H, W = p.W, P = p.P, Q = p.Q;
  const T inv = T(1) / T(p.divisor_override ? p.divisor_override : 4);
  RowCursor cur(b, P);
  for (int64_t it = b; it < e; ++it) {
    cur.next();
    const int64_t plane = cur.plane, oh = cur.row;
    const T* __restrict r0 = x + plane * H * W + 2 * oh * W;
    const T* __restrict r1 = r0 + W;
    T* __restrict out = y + it * Q;
    const int64_t base = 2 * oh * W;
    for (int64_t q0 = 0; q0 < Q; q0 += kChunk) {
      const int64_t n = std::min<int64_t>(kChunk, Q - q0);
      T a[2 * kChunk], c[2 * kChunk], v[kChunk];
      int64_t at[kChunk];
      // lanes past the row end compute on zeros and are not stored
      load_n<2 * kChunk>(a, r0 + 2 * q0, 2 * n, T(0));
      load_n<2 * kChunk>(c, r1 + 2 * q0, 2 * n, T(0));
      for (int64_t l = 0; l < kChunk; ++l) {
        if constexpr (Op::avg) {
          v[l] = ((a[2 * l] + a[2 * l + 1]) + (c[2 * l] + c[2 * l + 1])) * inv;
        } else {
          T best = a[2 * l];
          int64_t k = 0;
          const T t1 = a[2 * l + 1], t2 = c[2 * l], t3 = c[2 * l + 1];
          bool m = Op::better(t1, best);
          best = m ? t1 : best;
          k = m ? 1 : k;
          m = Op::better(t2, best);
          best = m ? t2 : best;
          k = m ? W : k;
          m = Op::better(t3, best);
          best = m ? t3 : best;
          k = m ? W + 1 : k;
          v[l] = best;
          if constexpr (kIdx) at[l] = base + 2 * (q0 + l) + k;
        }
      }
      store_n<kChunk>(out + q0, v, n);
      if constexpr (kIdx) store_n<kChunk>(idx + it * Q + q0, at, n);
    }
  }
}

// Shared by the 3x3/s2 values kernels of every vector width (fwd_3x3s2_f32*): the avg divisor
// of each output column (1 past Q, so whole vectors can be read), and the order of the 16- or
// 8-wide chunks that the carried column needs: left to right with padding 1, right to left
// without. (The window's row pointers stay inline in each kernel: a shared struct for them
// measured 5-7 % slower on 64x16x28x28.)
inline void fill_colcnt3(const PoolProblem& p, float* colcnt) {
  for (int64_t q = 0; q < round16(p.Q); ++q)
    colcnt[q] = q >= p.Q ? 1.0f
                         : p.divisor_override ? float(p.divisor_override)
                                              : float(avg_count(q, 2, p.pw, 3, p.W, p.count_include_pad));
}
inline int64_t chunk_q0(int64_t pw, int64_t k, int64_t q_last) { return pw == 1 ? k : q_last - k; }

#ifdef FC_POOL_AVX512_PASS
// 3x3 windows, stride 2, padding 0 or 1, either ceil mode (is_3x3s2_small_pad),
// values only, float: one pass per output row in 16-output chunks. The
// window's rows are reduced vertically over 32 columns from 2*q0 (masked
// loads: the identity outside the image), split into even and odd columns by
// two vpermt2ps, and the three taps are those and one of them shifted by a
// lane (EvenOdd, shift_in_*): out = comb(comb(t0, t1), t2). The generic row
// kernels spend ~8 short loops per row on the 14-wide rows of 28x28 planes (3x
// slower there). Written with intrinsics: GCC compiled the same loops in plain
// C++ to scalar inserts and extracts (the shifted taps and the partial store),
// no faster than the generic path; other ISAs and double keep the generic
// one. comb(a, v) as the Op's: vmaxps(a, v) returns v when either is NaN, then
// a NaN accumulator a is put back.
template <class Op>
FC_TGT FC_AI __m512 comb16(__m512 a, __m512 v) {
  if constexpr (Op::avg) {
    return _mm512_add_ps(a, v);
  } else {
    const __m512 m = std::is_same<Op, MaxOp<float>>::value ? _mm512_max_ps(a, v) : _mm512_min_ps(a, v);
    return _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), a);
  }
}
// Even and odd columns of 32 from 2*q0 of one row: e[l] = column 2(q0+l), o[l] = column
// 2(q0+l)+1, identity outside the image (masked loads; m0, m1 from the row end).
struct EvenOdd {
  __m512i iev, iod;
  FC_TGT EvenOdd()
      : iev(_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)),
        iod(_mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31)) {}
  FC_TGT FC_AI void split(__m512 v0, __m512 v1, __m512& ev, __m512& od) const {
    ev = _mm512_permutex2var_ps(v0, iev, v1);
    od = _mm512_permutex2var_ps(v0, iod, v1);
  }
};
// The inverse: 32 floats a[0], b[0], a[1], b[1], ... as two vectors (lo: l < 8, hi: l >= 8).
struct Interleave {
  __m512i ilo, ihi;
  FC_TGT Interleave()
      : ilo(_mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23)),
        ihi(_mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31)) {}
  FC_TGT FC_AI __m512 lo(__m512 a, __m512 b) const { return _mm512_permutex2var_ps(a, ilo, b); }
  FC_TGT FC_AI __m512 hi(__m512 a, __m512 b) const { return _mm512_permutex2var_ps(a, ihi, b); }
};
// Window q covers columns 2q - pw + {0, 1, 2}: with padding 1 those are o[l-1], e[l], o[l]
// (the chunks run left to right and o[-1] is carried from the previous chunk: the
// left padding for the first); without padding e[l], o[l], e[l+1] (the chunks run right to
// left and e[16] is carried from the next chunk; for the right-most one it is column
// 2*(q0 + 16), loaded alone). One valignd each way.
FC_TGT FC_AI __m512 shift_in_left(__m512 od, __m512 carry) {  // [carry[15], od[0..14]]
  return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(od), _mm512_castps_si512(carry), 15));
}
FC_TGT FC_AI __m512 shift_in_right(__m512 ev, __m512 carry) {  // [ev[1..15], carry[0]]
  return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(carry), _mm512_castps_si512(ev), 1));
}
// The three taps t[0..2] of 16 windows (columns 2q - pw + {0, 1, 2}) from one row's even and
// odd columns, passing the carried column on.
FC_TGT FC_AI void taps3(int64_t pw, __m512 ev, __m512 od, __m512& carry, __m512* t) {
  if (pw == 1) {
    t[0] = shift_in_left(od, carry);
    t[1] = ev;
    t[2] = od;
    carry = od;
  } else {
    t[0] = ev;
    t[1] = od;
    t[2] = shift_in_right(ev, carry);
    carry = ev;
  }
}

template <class Op>
FC_TGT void fwd_3x3s2_f32(const PoolProblem& p, const float* __restrict x, float* __restrict y, int64_t b,
                          int64_t e, float* __restrict colcnt) {
  const int64_t P = p.P, Q = p.Q, W = p.W, pw = p.pw;
  const __m512 id = _mm512_set1_ps(Op::id());
  const EvenOdd eo;
  if (Op::avg) fill_colcnt3(p, colcnt);
  const int64_t q_last = (Q - 1) / 16 * 16;
  RowCursor cur(b, P);
  for (int64_t it = b; it < e; ++it) {
    cur.next();
    // window rows h0 + {0, 1, 2}; h0 >= -1 and h0 < H (torch drops windows that start in the
    // bottom padding): row h0 or h0 + 1 is inside, the others may be padding (null)
    const float* __restrict xp = x + cur.plane * p.H * W;
    const int64_t h0 = 2 * cur.row - p.ph;
    const float* __restrict r0 = h0 >= 0 ? xp + h0 * W : nullptr;
    const float* __restrict r1 = h0 + 1 < p.H ? xp + (h0 + 1) * W : nullptr;
    const float* __restrict r2 = h0 + 2 < p.H ? xp + (h0 + 2) * W : nullptr;
    const float rdiv = p.divisor_override ? 1.0f : float(avg_count(cur.row, 2, p.ph, 3, p.H, p.count_include_pad));
    // the vertical reduction of 32 columns from c (masks m0, m1)
    auto vert = [&](int64_t c, __mmask16 m0, __mmask16 m1, __m512& v0, __m512& v1) FC_TGT {
      bool first = true;
      for (const float* __restrict row : {r0, r1, r2}) {
        if (row == nullptr) continue;
        const __m512 a0 = _mm512_mask_loadu_ps(id, m0, row + c), a1 = _mm512_mask_loadu_ps(id, m1, row + c + 16);
        v0 = first ? a0 : comb16<Op>(v0, a0);
        v1 = first ? a1 : comb16<Op>(v1, a1);
        first = false;
      }
    };
    float* __restrict out = y + it * Q;
    __m512 carry = id;
    if (pw == 0) {
      __m512 unused = id;
      const int64_t c = 2 * (q_last + 16);
      vert(c, __mmask16(lanes16(W - c) & 1), 0, carry, unused);
    }
    for (int64_t k = 0; k <= q_last; k += 16) {
      const int64_t q0 = chunk_q0(pw, k, q_last), c = 2 * q0;
      __m512 v0 = id, v1 = id, ev, od, t[3];
      vert(c, lanes16(W - c), lanes16(W - c - 16), v0, v1);
      eo.split(v0, v1, ev, od);
      taps3(pw, ev, od, carry, t);
      __m512 o = comb16<Op>(comb16<Op>(t[0], t[1]), t[2]);
      if constexpr (Op::avg) o = _mm512_div_ps(o, _mm512_mul_ps(_mm512_set1_ps(rdiv), _mm512_loadu_ps(colcnt + q0)));
      _mm512_mask_storeu_ps(out + q0, lanes16(Q - q0), o);
    }
  }
}
#endif

#ifdef FC_POOL_AVX512_PASS
// fwd_2x2s2's average for float with AVX-512: the same sums in the same order,
// ((a[2l] + a[2l+1]) + (c[2l] + c[2l+1])) * inv, with the even/odd columns split
// by vpermt2ps (GCC's version of that split in fwd_2x2s2 took 1.8x the max's time).
FC_TGT void avg_fwd_2x2s2_f32(const PoolProblem& p, const float* __restrict x, float* __restrict y, int64_t b,
                              int64_t e) {
  const int64_t H = p.H, W = p.W, P = p.P, Q = p.Q;
  const __m512 inv = _mm512_set1_ps(1.0f / float(p.divisor_override ? p.divisor_override : 4));
  const EvenOdd eo;
  RowCursor cur(b, P);
  for (int64_t it = b; it < e; ++it) {
    cur.next();
    const int64_t plane = cur.plane, oh = cur.row;
    const float* __restrict r0 = x + plane * H * W + 2 * oh * W;
    const float* __restrict r1 = r0 + W;
    float* __restrict out = y + it * Q;
    for (int64_t q0 = 0; q0 < Q; q0 += 16) {
      const int64_t n = 2 * (Q - q0);  // the windows' columns (an odd W's last one is unused)
      const __mmask16 m0 = lanes16(n), m1 = lanes16(n - 16);
      const __m512 a0 = _mm512_maskz_loadu_ps(m0, r0 + 2 * q0), a1 = _mm512_maskz_loadu_ps(m1, r0 + 2 * q0 + 16);
      const __m512 c0 = _mm512_maskz_loadu_ps(m0, r1 + 2 * q0), c1 = _mm512_maskz_loadu_ps(m1, r1 + 2 * q0 + 16);
      __m512 ae, ao, ce, co;
      eo.split(a0, a1, ae, ao);
      eo.split(c0, c1, ce, co);
      const __m512 ta = _mm512_add_ps(ae, ao), tc = _mm512_add_ps(ce, co);
      _mm512_mask_storeu_ps(out + q0, lanes16(Q - q0), _mm512_mul_ps(_mm512_add_ps(ta, tc), inv));
    }
  }
}

// better(v, a) of the Op for 16 floats: strictly better, or v NaN (a later NaN replaces an earlier one)
template <class Op>
FC_TGT FC_AI __mmask16 better16(__m512 v, __m512 a) {
  const int cmp = std::is_same<Op, MaxOp<float>>::value ? _CMP_GT_OQ : _CMP_LT_OQ;
  return __mmask16(_mm512_cmp_ps_mask(v, a, cmp) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
}

// 3x3/s2 (padding 0 or 1, any ceil mode) max/min with indices, float, planes
// under 2^31 elements (int32 positions): fwd_3x3s2_f32's chunking with
// fwd_rows_idx's rule. Per window row (top to bottom): the best of its three
// columns in order, kept only when strictly better (or NaN), starting from the
// identity at the first in-image column; then the rows in order under the same
// rule, starting from the first in-image row. So the first extreme in
// row-major window order wins, a window of identities (-inf for max) points at
// its first in-image element, and a NaN's position (the last NaN) is
// reported, as the generic kernel and torch.
template <class Op>
FC_TGT void fwd_3x3s2_idx_f32(const PoolProblem& p, const float* __restrict x, float* __restrict y,
                              int64_t* __restrict idx, int64_t b, int64_t e) {
  const int64_t H = p.H, W = p.W, P = p.P, Q = p.Q, ph = p.ph, pw = p.pw;
  const __m512 id = _mm512_set1_ps(Op::id());
  const EvenOdd eo;
  const __m512i one = _mm512_set1_epi32(1), zero = _mm512_setzero_si512();
  const int64_t q_last = (Q - 1) / 16 * 16;
  RowCursor cur(b, P);
  for (int64_t it = b; it < e; ++it) {
    cur.next();
    const int64_t plane = cur.plane, oh = cur.row;
    const float* __restrict xp = x + plane * H * W;
    const int64_t h0 = 2 * oh - ph, r_lo = std::max<int64_t>(h0, 0), r_hi = std::min<int64_t>(h0 + 2, H - 1);
    float* __restrict out = y + it * Q;
    int64_t* __restrict dst = idx + it * Q;
    __m512 carry[3] = {id, id, id};  // per window row (see fwd_3x3s2_f32)
    if (pw == 0) {
      const int64_t c = 2 * (q_last + 16);
      for (int64_t r = r_lo; r <= r_hi; ++r)
        carry[r - h0] = _mm512_mask_loadu_ps(id, __mmask16(lanes16(W - c) & 1), xp + r * W + c);
    }
    for (int64_t k = 0; k <= q_last; k += 16) {
      const int64_t q0 = chunk_q0(pw, k, q_last), c = 2 * q0;
      const __mmask16 m0 = lanes16(W - c), m1 = lanes16(W - c - 16);
      // the three tap columns per lane, and the window's first in-image column
      const __m512i col0 = _mm512_add_epi32(_mm512_set1_epi32(int32_t(c - pw)), eo.iev);
      const __m512i col1 = _mm512_add_epi32(col0, one), col2 = _mm512_add_epi32(col1, one);
      const __m512i first_col = _mm512_max_epi32(col0, zero);
      __m512 acc = id;
      __m512i oi = _mm512_add_epi32(_mm512_set1_epi32(int32_t(r_lo * W)), first_col);
      for (int64_t r = r_lo; r <= r_hi; ++r) {
        const float* __restrict row = xp + r * W;
        __m512 ev, od, t[3];
        eo.split(_mm512_mask_loadu_ps(id, m0, row + c), _mm512_mask_loadu_ps(id, m1, row + c + 16), ev, od);
        taps3(pw, ev, od, carry[r - h0], t);
        // the taps in order against the identity at the first in-image column: taken when
        // strictly better (never for a padding column)
        const __m512i cols[3] = {col0, col1, col2};
        __m512 hv = id;
        __m512i hc = first_col;
        for (int j = 0; j < 3; ++j) {
          const __mmask16 mk = better16<Op>(t[j], hv);
          hv = _mm512_mask_mov_ps(hv, mk, t[j]);
          hc = _mm512_mask_mov_epi32(hc, mk, cols[j]);
        }
        const __mmask16 mk = better16<Op>(hv, acc);
        acc = _mm512_mask_mov_ps(acc, mk, hv);
        oi = _mm512_mask_mov_epi32(oi, mk, _mm512_add_epi32(_mm512_set1_epi32(int32_t(r * W)), hc));
      }
      const __mmask16 sm = lanes16(Q - q0);
      _mm512_mask_storeu_ps(out + q0, sm, acc);
      _mm512_mask_storeu_epi64(dst + q0, __mmask8(sm & 0xFF), _mm512_cvtepi32_epi64(_mm512_castsi512_si256(oi)));
      _mm512_mask_storeu_epi64(dst + q0 + 8, __mmask8(sm >> 8),
                               _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(oi, 1)));
    }
  }
}
#endif

#ifdef FC_POOL_AVX2_PASS
// fwd_3x3s2_f32 for AVX2 (8 outputs per chunk): the same vertical reduction,
// even/odd split (vshufps + vpermpd), taps shifted in by a lane with the same
// carry, so the same values; masked loads fill the identity by a blend.
struct Avx2Lanes {
  __m256i lane, rot_r, rot_l;  // 0..7; lane l <- l - 1 (lane 0 <- 7); lane l <- l + 1 (lane 7 <- 0)
  FC_TGT Avx2Lanes()
      : lane(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
        rot_r(_mm256_setr_epi32(7, 0, 1, 2, 3, 4, 5, 6)),
        rot_l(_mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 0)) {}
  FC_TGT FC_AI __m256i mask(int64_t n) const {  // lanes < n
    const int32_t c = int32_t(std::max<int64_t>(0, std::min<int64_t>(8, n)));
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), lane);
  }
};
template <class Op>
FC_TGT FC_AI __m256 comb8(__m256 a, __m256 v) {
  if constexpr (Op::avg) {
    return _mm256_add_ps(a, v);
  } else {
    const __m256 m = std::is_same<Op, MaxOp<float>>::value ? _mm256_max_ps(a, v) : _mm256_min_ps(a, v);
    return _mm256_blendv_ps(m, a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
}
// (vmaskmovps only at row ends: AMD runs its store form microcoded, ~20x a plain store)
FC_TGT FC_AI __m256 load8(const float* p, int64_t n, const Avx2Lanes& L, __m256 id) {
  if (n >= 8) return _mm256_loadu_ps(p);
  const __m256i m = L.mask(n);
  return _mm256_blendv_ps(id, _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}
FC_TGT FC_AI void store8(float* p, int64_t n, const Avx2Lanes& L, __m256 v) {
  if (n >= 8) _mm256_storeu_ps(p, v);
  else _mm256_maskstore_ps(p, L.mask(n), v);
}
template <class Op>
FC_TGT void fwd_3x3s2_f32_avx2(const PoolProblem& p, const float* __restrict x, float* __restrict y, int64_t b,
                               int64_t e, float* __restrict colcnt) {
  const int64_t P = p.P, Q = p.Q, W = p.W, pw = p.pw;
  const __m256 id = _mm256_set1_ps(Op::id());
  const Avx2Lanes L;
  if (Op::avg) fill_colcnt3(p, colcnt);
  const int64_t q_last = (Q - 1) / 8 * 8;
  RowCursor cur(b, P);
  for (int64_t it = b; it < e; ++it) {
    cur.next();
    // window rows h0 + {0, 1, 2}; h0 >= -1 and h0 < H (torch drops windows that start in the
    // bottom padding): row h0 or h0 + 1 is inside, the others may be padding (null)
    const float* __restrict xp = x + cur.plane * p.H * W;
    const int64_t h0 = 2 * cur.row - p.ph;
    const float* __restrict r0 = h0 >= 0 ? xp + h0 * W : nullptr;
    const float* __restrict r1 = h0 + 1 < p.H ? xp + (h0 + 1) * W : nullptr;
    const float* __restrict r2 = h0 + 2 < p.H ? xp + (h0 + 2) * W : nullptr;
    const float rdiv = p.divisor_override ? 1.0f : float(avg_count(cur.row, 2, p.ph, 3, p.H, p.count_include_pad));
    auto vert = [&](int64_t c, int64_t n0, int64_t n1, __m256& v0, __m256& v1) FC_TGT {
      bool first = true;
      for (const float* __restrict row : {r0, r1, r2}) {
        if (row == nullptr) continue;
        const __m256 a0 = load8(row + c, n0, L, id), a1 = load8(row + c + 8, n1, L, id);
        v0 = first ? a0 : comb8<Op>(v0, a0);
        v1 = first ? a1 : comb8<Op>(v1, a1);
        first = false;
      }
    };
    float* __restrict out = y + it * Q;
    __m256 carry = id;
    if (pw == 0) {
      __m256 unused = id;
      const int64_t c = 2 * (q_last + 8);
      vert(c, std::min<int64_t>(W - c, 1), 0, carry, unused);
    }
    for (int64_t k = 0; k <= q_last; k += 8) {
      const int64_t q0 = chunk_q0(pw, k, q_last), c = 2 * q0;
      __m256 v0 = id, v1 = id;
      vert(c, W - c, W - c - 8, v0, v1);
      // even / odd columns: within 128-bit halves, then the 64-bit pairs in order
      const __m256 ev = _mm256_castpd_ps(_mm256_permute4x64_pd(
          _mm256_castps_pd(_mm256_shuffle_ps(v0, v1, _MM_SHUFFLE(2, 0, 2, 0))), _MM_SHUFFLE(3, 1, 2, 0)));
      const __m256 od = _mm256_castpd_ps(_mm256_permute4x64_pd(
          _mm256_castps_pd(_mm256_shuffle_ps(v0, v1, _MM_SHUFFLE(3, 1, 3, 1))), _MM_SHUFFLE(3, 1, 2, 0)));
      __m256 o;
      if (pw == 1) {  // [carry[7], od[0..6]]
        const __m256 t0 = _mm256_blend_ps(_mm256_permutevar8x32_ps(od, L.rot_r),
                                          _mm256_permutevar8x32_ps(carry, L.rot_r), 0x01);
        o = comb8<Op>(comb8<Op>(t0, ev), od);
        carry = od;
      } else {  // [ev[1..7], carry[0]]
        const __m256 t2 = _mm256_blend_ps(_mm256_permutevar8x32_ps(ev, L.rot_l),
                                          _mm256_permutevar8x32_ps(carry, L.rot_l), 0x80);
        o = comb8<Op>(comb8<Op>(ev, od), t2);
        carry = ev;
      }
      if constexpr (Op::avg) o = _mm256_div_ps(o, _mm256_mul_ps(_mm256_set1_ps(rdiv), _mm256_loadu_ps(colcnt + q0)));
      store8(out + q0, Q - q0, L, o);
    }
  }
}
#endif

template <typename T>
FC_TGT void fwd_range(PoolKind kind, const PoolProblem& p, const T* x, T* y, int64_t* idx, int64_t b,
                      int64_t e, T* scr, int64_t* iscr) {
  // int32 index arithmetic when every flat position (and q*sw + tap) fits
  const bool narrow = p.H * p.W + p.Q * p.sw + p.kw * p.dw < (int64_t(1) << 31);
  auto* i32 = reinterpret_cast<int32_t*>(iscr);
  if (is_2x2s2_inside(p)) {
    switch (kind) {
      case PoolKind::Max:
        return idx ? fwd_2x2s2<MaxOp<T>, T, true>(p, x, y, idx, b, e) : fwd_2x2s2<MaxOp<T>, T, false>(p, x, y, idx, b, e);
      case PoolKind::Min:
        return idx ? fwd_2x2s2<MinOp<T>, T, true>(p, x, y, idx, b, e) : fwd_2x2s2<MinOp<T>, T, false>(p, x, y, idx, b, e);
      case PoolKind::Avg:
#ifdef FC_POOL_AVX512_PASS
        if constexpr (std::is_same<T, float>::value) return avg_fwd_2x2s2_f32(p, x, y, b, e);
#endif
        return fwd_2x2s2<AvgOp<T>, T, false>(p, x, y, idx, b, e);
    }
  }
#ifdef FC_POOL_AVX2_PASS
  if constexpr (std::is_same<T, float>::value) {
    if (!idx && is_3x3s2_small_pad(p)) {
      switch (kind) {
        case PoolKind::Max: return fwd_3x3s2_f32_avx2<MaxOp<float>>(p, x, y, b, e, scr);
        case PoolKind::Min: return fwd_3x3s2_f32_avx2<MinOp<float>>(p, x, y, b, e, scr);
        case PoolKind::Avg: return fwd_3x3s2_f32_avx2<AvgOp<float>>(p, x, y, b, e, scr);
      }
    }
  }
#endif
#ifdef FC_POOL_AVX512_PASS
  if constexpr (std::is_same<T, float>::value) {
    if (is_3x3s2_small_pad(p)) {
      if (!idx) {
        switch (kind) {
          case PoolKind::Max: return fwd_3x3s2_f32<MaxOp<float>>(p, x, y, b, e, scr);
          case PoolKind::Min: return fwd_3x3s2_f32<MinOp<float>>(p, x, y, b, e, scr);
          case PoolKind::Avg: return fwd_3x3s2_f32<AvgOp<float>>(p, x, y, b, e, scr);
        }
      } else if (narrow && kind == PoolKind::Max) {
        return fwd_3x3s2_idx_f32<MaxOp<float>>(p, x, y, idx, b, e);
      } else if (narrow && kind == PoolKind::Min) {
        return fwd_3x3s2_idx_f32<MinOp<float>>(p, x, y, idx, b, e);
      }
    }
  }
#endif
  switch (kind) {
    case PoolKind::Max:
      if (idx && narrow) fwd_rows_idx<MaxOp<T>, T, int32_t>(p, x, y, idx, b, e, scr, i32);
      else if (idx) fwd_rows_idx<MaxOp<T>, T, int64_t>(p, x, y, idx, b, e, scr, iscr);
      else fwd_rows<MaxOp<T>, T>(p, x, y, b, e, scr);
      break;
    case PoolKind::Min:
      if (idx && narrow) fwd_rows_idx<MinOp<T>, T, int32_t>(p, x, y, idx, b, e, scr, i32);
      else if (idx) fwd_rows_idx<MinOp<T>, T, int64_t>(p, x, y, idx, b, e, scr, iscr);
      else fwd_rows<MinOp<T>, T>(p, x, y, b, e, scr);
      break;
    case PoolKind::Avg: fwd_rows<AvgOp<T>, T>(p, x, y, b, e, scr); break;
  }
}

// Avg backward for input rows [b, e) (item = plane*H + ih): the vertical
// gather of the windows containing row ih (increasing oh), then a horizontal
// gather done per phase of the output stride with contiguous slices.
// 2x2/s2 windows all inside the image (is_2x2s2_inside: LeNet, VGG, the seed
// network): every window divides by the same count (4, or divisor_override),
// input row ih takes output row ih/2 with each quotient written to two
// columns, and rows/columns past the last window get 0. One pass per row.
template <typename T>
FC_TGT void avg_bwd_2x2s2(const PoolProblem& p, const T* __restrict dy, T* __restrict dx, int64_t b,
                          int64_t e) {
  const int64_t H = p.H, W = p.W, P = p.P, Q = p.Q;
  const int64_t div = p.divisor_override ? p.divisor_override : 4;
  // x / d == x * (1/d) exactly when d is a power of two: the same bits as the division
  const bool pow2 = (div & (div - 1)) == 0;
  const T dv = T(div), inv = T(1) / T(div);
  RowCursor cur(b, H);
  for (int64_t it = b; it < e; ++it) {
    cur.next();
    const int64_t plane = cur.plane, ih = cur.row;
    T* __restrict dxr = dx + it * W;
    int64_t w = 0;
    if (ih < 2 * P) {
      const T* __restrict g = dy + (plane * P + ih / 2) * Q;
      for (int64_t q = 0; q < Q; ++q) {  // the compiler unswitches the loop-invariant pow2
        const T v = pow2 ? g[q] * inv : g[q] / dv;
        dxr[2 * q] = v;
        dxr[2 * q + 1] = v;
      }
      w = 2 * Q;
    }
    for (; w < W; ++w) dxr[w] = T(0);
  }
}

// 3x3/s2/p1 (is_3x3s2p1). With r = the current output plane divided by its
// window sizes (rows Q+1 apart, a zero column Q and a zero row P): input row
// 2m lies under output row m only, row 2m+1 under rows m and m+1, and in the
// same way column 2n under window n, column 2n+1 under n and n+1. So
//   dx[2m]   = expand(r[m]),  dx[2m+1] = expand(r[m] + r[m+1]),
//   expand(c)[2n] = c[n],  expand(c)[2n+1] = c[n] + c[n+1].
// One pass per input row; the divisors are the generic path's (avg_count).
template <typename T>
FC_TGT void avg_bwd_3x3s2p1(const PoolProblem& p, const T* __restrict dy, T* __restrict dx, int64_t b,
                            int64_t e, T* __restrict scr) {
  const int64_t H = p.H, W = p.W, P = p.P, Q = p.Q, Qp = Q + 1;
  T* __restrict divtab = scr;               // (P + 1) x Qp
  T* __restrict r = divtab + (P + 1) * Qp;  // (P + 1) x Qp
  T* __restrict c = r + (P + 1) * Qp;       // Qp
  for (int64_t oh = 0; oh <= P; ++oh)
    for (int64_t q = 0; q < Qp; ++q) {
      T d = T(1);
      if (oh < P && q < Q)
        d = p.divisor_override ? T(p.divisor_override)
                               : T(avg_count(oh, 2, 1, 3, H, p.count_include_pad)) *
                                     T(avg_count(q, 2, 1, 3, W, p.count_include_pad));
      divtab[oh * Qp + q] = d;
      r[oh * Qp + q] = T(0);  // the zero row P and column Q stay zero
    }
  c[Q] = T(0);
  const int64_t half = W / 2;  // columns 2n, 2n+1 for n < half; an odd W adds column 2*half
  RowCursor cur(b, H);
  int64_t r_plane = -1;
  for (int64_t it = b; it < e; ++it) {
    cur.next();
    const int64_t plane = cur.plane, ih = cur.row;
    if (r_plane != plane) {
      const T* __restrict g = dy + plane * P * Q;
      for (int64_t oh = 0; oh < P; ++oh)
        for (int64_t q = 0; q < Q; ++q) r[oh * Qp + q] = g[oh * Q + q] / divtab[oh * Qp + q];
      r_plane = plane;
    }
    const int64_t m = ih >> 1;
    const T* __restrict a = r + m * Qp;
    const T* __restrict src = a;
    if (ih & 1) {
      const T* __restrict a1 = a + Qp;  // row m + 1, or the zero row
      for (int64_t q = 0; q < Q; ++q) c[q] = a[q] + a1[q];
      src = c;
    }
    T* __restrict dxr = dx + it * W;
    for (int64_t n = 0; n < half; ++n) {
      dxr[2 * n] = src[n];
      dxr[2 * n + 1] = src[n] + src[n + 1];
    }
    if (W & 1) dxr[W - 1] = src[half];
  }
}

#ifdef FC_POOL_AVX512_PASS
// The same for float with AVX-512 intrinsics (same quotients and sums, so the
// same bits): the divided plane row by row with masked vectors, then per input
// row and 16 columns n: even = src[n], odd = src[n] + src[n+1] (an unaligned
// load one further), interleaved by two vpermt2ps and stored masked. GCC left
// the plain loops above, 14-28 wide on Fashion-size planes, mostly in scalar
// remainders (0.18 ms for 64x16x28x28, 4.5x a same-size copy).
FC_TGT void avg_bwd_3x3s2p1_f32(const PoolProblem& p, const float* __restrict dy, float* __restrict dx, int64_t b,
                                int64_t e, float* __restrict scr) {
  const int64_t H = p.H, W = p.W, P = p.P, Q = p.Q, Qp = Q + 1;
  float* __restrict divtab = scr;               // (P + 1) x Qp
  float* __restrict r = divtab + (P + 1) * Qp;  // (P + 1) x Qp
  for (int64_t oh = 0; oh <= P; ++oh)
    for (int64_t q = 0; q < Qp; ++q) {
      float d = 1.0f;
      if (oh < P && q < Q)
        d = p.divisor_override ? float(p.divisor_override)
                               : float(avg_count(oh, 2, 1, 3, H, p.count_include_pad)) *
                                     float(avg_count(q, 2, 1, 3, W, p.count_include_pad));
      divtab[oh * Qp + q] = d;
      r[oh * Qp + q] = 0.0f;  // the zero row P and column Q stay zero
    }
  const Interleave il;
  RowCursor cur(b, H);
  int64_t r_plane = -1;
  for (int64_t it = b; it < e; ++it) {
    cur.next();
    const int64_t plane = cur.plane, ih = cur.row;
    if (r_plane != plane) {
      const float* __restrict g = dy + plane * P * Q;
      for (int64_t oh = 0; oh < P; ++oh)
        for (int64_t q0 = 0; q0 < Q; q0 += 16) {
          const __mmask16 m = lanes16(Q - q0);
          _mm512_mask_storeu_ps(r + oh * Qp + q0, m,
                                _mm512_div_ps(_mm512_maskz_loadu_ps(m, g + oh * Q + q0),
                                              _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), m, divtab + oh * Qp + q0)));
        }
      r_plane = plane;
    }
    const float* __restrict a = r + (ih >> 1) * Qp;
    const bool odd = ih & 1;  // row m + 1 (or the zero row P) adds in
    float* __restrict dxr = dx + it * W;
    for (int64_t n0 = 0; n0 < Q; n0 += 16) {
      const __mmask16 m = lanes16(Q - n0);  // src[n0 + l + 1] <= src[Q]: the zero column
      __m512 s0 = _mm512_maskz_loadu_ps(m, a + n0), s1 = _mm512_maskz_loadu_ps(m, a + n0 + 1);
      if (odd) {
        s0 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(m, a + Qp + n0));
        s1 = _mm512_add_ps(s1, _mm512_maskz_loadu_ps(m, a + Qp + n0 + 1));
      }
      const __m512 ov = _mm512_add_ps(s0, s1);
      const int64_t nw = W - 2 * n0;  // an odd W ends on an even column: src[W / 2]
      _mm512_mask_storeu_ps(dxr + 2 * n0, lanes16(nw), il.lo(s0, ov));
      _mm512_mask_storeu_ps(dxr + 2 * n0 + 16, lanes16(nw - 16), il.hi(s0, ov));
    }
  }
}
#endif

template <typename T>
FC_TGT void avg_bwd_range(const PoolProblem& p, const T* __restrict dy, T* __restrict dx, int64_t b,
                          int64_t e, T* __restrict scr) {
  if (is_2x2s2_inside(p)) {
    avg_bwd_2x2s2<T>(p, dy, dx, b, e);
    return;
  }
  if (is_3x3s2p1(p)) {
#ifdef FC_POOL_AVX512_PASS
    if constexpr (std::is_same<T, float>::value) {
      avg_bwd_3x3s2p1_f32(p, dy, dx, b, e, scr);
      return;
    }
#endif
    avg_bwd_3x3s2p1<T>(p, dy, dx, b, e, scr);
    return;
  }
  const int64_t H = p.H, W = p.W, P = p.P, Q = p.Q, sw = p.sw, pw = p.pw, kh = p.kh, kw = p.kw;
  const int64_t nJ = bwd_nJ(p), OFF = bwd_off(p), Tlen = bwd_tlen(p);
  T* __restrict tpad = scr;
  T* __restrict D = scr + Tlen;
  T* __restrict colcnt = D + sw * nJ;
  for (int64_t i = 0; i < Tlen; ++i) tpad[i] = T(0);
  T* __restrict t = tpad + OFF;
  for (int64_t q = 0; q < Q; ++q)
    colcnt[q] = p.divisor_override ? T(p.divisor_override)
                                   : T(avg_count(q, sw, pw, kw, W, p.count_include_pad));
  // plane mode: divtab[oh*Q + q] = the window size of output (oh, q), and gs = the current
  // plane of dy divided by it (the same products and quotients as the row path: same bits)
  const bool plane_mode = bwd_plane_mode(p);
  T* __restrict divtab = scr + bwd_scratch_rows(p);
  T* __restrict gs = divtab + P * Q;
  if (plane_mode)
    for (int64_t oh = 0; oh < P; ++oh) {
      const T rc = p.divisor_override ? T(1) : T(avg_count(oh, p.sh, p.ph, kh, H, p.count_include_pad));
      for (int64_t q = 0; q < Q; ++q) divtab[oh * Q + q] = rc * colcnt[q];
    }
  // per-row 64-bit divisions cost as much as the row's vector work: count instead
  RowCursor cur(b, H);
  int64_t gs_plane = -1;  // the plane gs holds
  for (int64_t it = b; it < e; ++it) {
    cur.next();
    const int64_t plane = cur.plane, ih = cur.row;
    const T* __restrict dyp = dy + plane * P * Q;
    T* __restrict dxr = dx + it * W;
    // windows oh with oh*sh - ph <= ih <= oh*sh - ph + kh - 1
    const int64_t num = ih + p.ph - kh + 1;
    const int64_t lo = num <= 0 ? 0 : (num + p.sh - 1) / p.sh;
    const int64_t hi = std::min((ih + p.ph) / p.sh, P - 1);
    if (lo > hi) {
      for (int64_t w = 0; w < W; ++w) dxr[w] = T(0);
      continue;
    }
    if (plane_mode) {
      if (gs_plane != plane) {
        for (int64_t i = 0; i < P * Q; ++i) gs[i] = dyp[i] / divtab[i];
        gs_plane = plane;
      }
      for (int64_t q = 0; q < Q; ++q) t[q] = gs[lo * Q + q];
      for (int64_t oh = lo + 1; oh <= hi; ++oh)
        for (int64_t q = 0; q < Q; ++q) t[q] += gs[oh * Q + q];
    } else {
      for (int64_t oh = lo; oh <= hi; ++oh) {
        const T rc = p.divisor_override ? T(1) : T(avg_count(oh, p.sh, p.ph, kh, H, p.count_include_pad));
        const T* __restrict g = dyp + oh * Q;
        if (oh == lo)
          for (int64_t q = 0; q < Q; ++q) t[q] = g[q] / (rc * colcnt[q]);
        else
          for (int64_t q = 0; q < Q; ++q) t[q] += g[q] / (rc * colcnt[q]);
      }
    }
    // column w + pw = j*sw + k receives taps s = k + u*sw from window q = j - u
    for (int64_t k = 0; k < sw; ++k) {
      T* __restrict d = D + k * nJ;
      if (k >= kw) {
        for (int64_t j = 0; j < nJ; ++j) d[j] = T(0);
        continue;
      }
      const int64_t umax = (kw - 1 - k) / sw;
      for (int64_t j = 0; j < nJ; ++j) d[j] = t[j];
      for (int64_t u = 1; u <= umax; ++u)
        for (int64_t j = 0; j < nJ; ++j) d[j] += t[j - u];
    }
    if (sw == 1) {
      for (int64_t w = 0; w < W; ++w) dxr[w] = D[w + pw];
    } else if (sw == 2) {
      // even w = 2m reads phase pw%2 at m + pw/2; odd w = 2m+1 reads phase (pw+1)%2 at m + (pw+1)/2
      const T* __restrict de = D + (pw & 1) * nJ + pw / 2;
      const T* __restrict dd = D + ((pw + 1) & 1) * nJ + (pw + 1) / 2;
      int64_t m = 0;
      for (; 2 * m + 1 < W; ++m) {
        dxr[2 * m] = de[m];
        dxr[2 * m + 1] = dd[m];
      }
      if (2 * m < W) dxr[2 * m] = de[m];
    } else {
      for (int64_t k = 0; k < sw; ++k) {
        const int64_t w0 = ((k - pw) % sw + sw) % sw;
        const T* __restrict dk = D + k * nJ + (w0 + pw) / sw;
        for (int64_t w = w0, j = 0; w < W; w += sw, ++j) dxr[w] = dk[j];
      }
    }
  }
  (void)tpad;
}


// Whole-plane reductions (global pooling): independent lanes, a scalar tail,
// then a fixed combination, so the order never depends on threads. 8 lanes,
// not 16: ResNet/GoogLeNet planes are 7x7 = 49 elements, where a 16-lane
// tree and masked tail cost more than the data (16x2048x7x7: 0.72 -> 0.22 ms
// on one thread).
template <class Op, typename T>
FC_TGT void global_rows(const T* __restrict x, int64_t HW, T* __restrict y, T div, int64_t b, int64_t e) {
  // 16 lanes: one AVX-512 vector of floats (7x7 planes: 3 vector steps + 1)
  constexpr int L = 16;
  for (int64_t pl = b; pl < e; ++pl) {
    const T* __restrict xp = x + pl * HW;
    T acc[L];
    for (int j = 0; j < L; ++j) acc[j] = Op::id();
    int64_t i = 0;
    for (; i + L <= HW; i += L)
      for (int j = 0; j < L; ++j) acc[j] = Op::comb(acc[j], xp[i + j]);
    T tail = Op::id();
    for (; i < HW; ++i) tail = Op::comb(tail, xp[i]);
    for (int j = 0; j < L / 2; ++j) acc[j] = Op::comb(acc[j], acc[j + L / 2]);
    for (int j = 0; j < L / 4; ++j) acc[j] = Op::comb(acc[j], acc[j + L / 4]);
    const T t = Op::comb(Op::comb(acc[0], acc[2]), Op::comb(acc[1], acc[3]));
    const T r = Op::comb(t, tail);
    y[pl] = Op::avg ? r / div : r;
  }
}

template <class Op, typename T>
FC_TGT void global_rows_idx(const T* __restrict x, int64_t HW, T* __restrict y, int64_t* __restrict idx,
                            int64_t b, int64_t e) {
  constexpr int L = 16;
  for (int64_t pl = b; pl < e; ++pl) {
    const T* __restrict xp = x + pl * HW;
    T bv[L];
    int64_t bi[L];
    for (int j = 0; j < L; ++j) {
      bv[j] = Op::id();
      bi[j] = j;
    }
    int64_t i = 0;
    for (; i + L <= HW; i += L)
      for (int j = 0; j < L; ++j) {
        const T v = xp[i + j];
        const bool m = Op::better(v, bv[j]);
        bv[j] = m ? v : bv[j];
        bi[j] = m ? i + j : bi[j];
      }
    for (int j = 0; i + j < HW; ++j) {
      const T v = xp[i + j];
      if (Op::better(v, bv[j])) {
        bv[j] = v;
        bi[j] = i + j;
      }
    }
    // Each lane holds its first extreme (or its last NaN); across lanes the
    // smallest index wins among equal values and the largest among NaNs.
    T best = bv[0];
    int64_t besti = bi[0];
    for (int j = 1; j < L; ++j) {
      const T v = bv[j];
      const int64_t vi = bi[j];
      bool take;
      if (best != best) take = (v != v) && vi > besti;
      else if (v != v) take = true;
      else take = Op::better(v, best) || (v == best && vi < besti);
      if (take) {
        best = v;
        besti = vi;
      }
    }
    y[pl] = best;
    idx[pl] = besti < HW ? besti : 0;
  }
}

#ifdef FC_POOL_AVX512_PASS
// Global average pooling, float: 16 planes at a time. Each plane is summed
// into a vector of 16 lane sums (whole vectors, then a masked tail), and the
// 16 vectors are folded together in 4 levels (16 -> 8 -> 4 -> 2 -> 1 lanes a
// plane), each level adding the two halves of a pair of vectors so that one
// vector carries twice as many planes: 15 shuffle pairs and adds for 16
// horizontal sums instead of a tree per plane (one thread, ad hoc:
// 16x2048x7x7 0.17 -> 0.12 ms, about L3 read bandwidth; 16x128x7x7 11 -> 8
// us). A plane's order of additions is the same in every group and thread
// split: lane l sums x[l], x[l+16], ..., then lanes l and l+8, l+4, l+2, l+1
// combine as in a tree.
FC_TGT void global_avg_f32(const float* __restrict x, int64_t HW, float* __restrict y, float div, int64_t b,
                           int64_t e) {
  const int64_t nv = HW / 16;
  const __mmask16 tail = lanes16(HW - 16 * nv);
  // after the folds, lane 4k + j holds plane k + 4j of the group
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m512 vdiv = _mm512_set1_ps(div);
  for (int64_t g0 = b; g0 < e; g0 += 16) {
    const int64_t n = e - g0 < 16 ? e - g0 : 16;
    __m512 v[16];
    for (int j = 0; j < 16; ++j) {
      __m512 acc = _mm512_setzero_ps();
      if (j < n) {
        const float* __restrict xp = x + (g0 + j) * HW;
        for (int64_t i = 0; i < nv; ++i) acc = _mm512_add_ps(acc, _mm512_loadu_ps(xp + 16 * i));
        if (tail) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(tail, xp + 16 * nv));
      }
      v[j] = acc;
    }
    // 16 lanes -> 8: vector k holds plane 2k (blocks 0-1) and 2k+1 (blocks 2-3)
    for (int k = 0; k < 8; ++k)
      v[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0x44),
                           _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0xEE));
    // 8 -> 4: vector m holds planes 4m..4m+3, one 128-bit block each
    for (int m = 0; m < 4; ++m)
      v[m] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0x88),
                           _mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0xDD));
    // 4 -> 2: block k of vector r holds plane 8r+k (lanes 0-1) and 8r+4+k (lanes 2-3)
    for (int r = 0; r < 2; ++r)
      v[r] = _mm512_add_ps(_mm512_shuffle_ps(v[2 * r], v[2 * r + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_ps(v[2 * r], v[2 * r + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    // 2 -> 1: lane 4k + j of the sum holds plane k + 4j
    const __m512 s = _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1)));
    _mm512_mask_storeu_ps(y + g0, lanes16(n), _mm512_div_ps(_mm512_permutexvar_ps(order, s), vdiv));
  }
}
#endif

template <typename T>
FC_TGT void global_range(PoolKind kind, const T* x, int64_t HW, T* y, int64_t* idx, T div, int64_t b,
                         int64_t e) {
#ifdef FC_POOL_AVX512_PASS
  if constexpr (std::is_same<T, float>::value)
    if (kind == PoolKind::Avg) return global_avg_f32(x, HW, y, div, b, e);
#endif
  switch (kind) {
    case PoolKind::Max:
      if (idx) global_rows_idx<MaxOp<T>, T>(x, HW, y, idx, b, e);
      else global_rows<MaxOp<T>, T>(x, HW, y, div, b, e);
      break;
    case PoolKind::Min:
      if (idx) global_rows_idx<MinOp<T>, T>(x, HW, y, idx, b, e);
      else global_rows<MinOp<T>, T>(x, HW, y, div, b, e);
      break;
    case PoolKind::Avg: global_rows<AvgOp<T>, T>(x, HW, y, div, b, e); break;
  }
}

#ifdef FC_POOL_AVX512_PASS
// Max/min backward, 2x2/s2 windows inside the image (is_2x2s2_inside), one
// plane, float: the windows do not overlap, so every input element gets the
// gradient of at most one output and the plane is written once, without the
// zero pass and the scalar scatter. Per 16 outputs: the index relative to the
// window's top-left corner (narrowed to int32 with saturation, so no index
// far outside the window can alias into it), spread two lanes per output in
// the layout of the input rows (lane 2j and 2j+1 both hold output j), is
// compared with (0, 1, 0, 1, ...) for the upper input row and (W, W+1, ...)
// for the lower one; the gradient, spread the same way, is kept where the
// compare holds and zeroed elsewhere. 16 compares and permutes a chunk where
// the per-output form (4 masks of 16, then interleaving 4 vectors) took 30.
// +0 is added to each gradient, as the scatter's 0 + g does (-0 comes out
// +0, bit for bit the same). Returns false where some index is not inside
// its own window (indices passed in by hand): the caller then scatters.
FC_TGT bool maxmin_bwd_2x2s2_f32(const PoolProblem& p, const float* __restrict g, const int64_t* __restrict ix,
                                 float* __restrict d) {
  const int64_t H = p.H, W = p.W, P = p.P, Q = p.Q;
  const __m512i lane2 = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  const __m512i dlo = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m512i dhi = _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
  const __m512i up = _mm512_setr_epi32(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1);
  const __m512i dn = _mm512_add_epi32(up, _mm512_set1_epi32(int32_t(W)));  // W < 2^31: checked by the caller
  const __m512 zero = _mm512_setzero_ps();
  int64_t matched = 0;
  for (int64_t oh = 0; oh < P; ++oh) {
    float* __restrict r0 = d + 2 * oh * W;
    float* __restrict r1 = r0 + W;
    const int64_t* __restrict io = ix + oh * Q;
    const float* __restrict go = g + oh * Q;
    for (int64_t q0 = 0; q0 < Q; q0 += 16) {
      const __mmask16 mk = lanes16(Q - q0);
      const int64_t base = 2 * oh * W + 2 * q0;
      // lanes past Q load 0: relative index -(base + 2j) < 0 matches nothing
      const __m512i tl = _mm512_sub_epi64(_mm512_maskz_loadu_epi64(__mmask8(mk & 0xFF), io + q0),
                                          _mm512_add_epi64(_mm512_set1_epi64(base), lane2));
      const __m512i th = _mm512_sub_epi64(_mm512_maskz_loadu_epi64(__mmask8(mk >> 8), io + q0 + 8),
                                          _mm512_add_epi64(_mm512_set1_epi64(base + 16), lane2));
      const __m512i rel = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtsepi64_epi32(tl)),
                                             _mm512_cvtsepi64_epi32(th), 1);
      const __m512 gv = _mm512_add_ps(zero, _mm512_maskz_loadu_ps(mk, go + q0));
      const __m512i rlo = _mm512_permutexvar_epi32(dlo, rel), rhi = _mm512_permutexvar_epi32(dhi, rel);
      const __m512 glo = _mm512_permutexvar_ps(dlo, gv), ghi = _mm512_permutexvar_ps(dhi, gv);
      const __mmask16 k0 = _mm512_cmpeq_epi32_mask(rlo, up), k1 = _mm512_cmpeq_epi32_mask(rhi, up);
      const __mmask16 k2 = _mm512_cmpeq_epi32_mask(rlo, dn), k3 = _mm512_cmpeq_epi32_mask(rhi, dn);
      matched += __builtin_popcount(unsigned(k0) | (unsigned(k1) << 16)) +
                 __builtin_popcount(unsigned(k2) | (unsigned(k3) << 16));
      const int64_t nw = 2 * (Q - q0);  // input columns of these windows (up to 32 stored)
      const __mmask16 s0 = lanes16(nw), s1 = lanes16(nw - 16);
      _mm512_mask_storeu_ps(r0 + 2 * q0, s0, _mm512_maskz_mov_ps(k0, glo));
      _mm512_mask_storeu_ps(r0 + 2 * q0 + 16, s1, _mm512_maskz_mov_ps(k1, ghi));
      _mm512_mask_storeu_ps(r1 + 2 * q0, s0, _mm512_maskz_mov_ps(k2, glo));
      _mm512_mask_storeu_ps(r1 + 2 * q0 + 16, s1, _mm512_maskz_mov_ps(k3, ghi));
    }
    for (int64_t c = 2 * Q; c < W; ++c) r0[c] = r1[c] = 0.0f;  // the column no window covers
  }
  for (int64_t i = 2 * P * W; i < H * W; ++i) d[i] = 0.0f;  // the rows no window covers
  return matched == P * Q;
}
#endif

// One plane of max/min backward with saved indices by a kernel of its own,
// where there is one; false: the caller scatters.
template <typename T>
FC_TGT bool maxmin_bwd_plane(const PoolProblem& p, const T* g, const int64_t* ix, T* d) {
#ifdef FC_POOL_AVX512_PASS
  if constexpr (std::is_same<T, float>::value)
    if (is_2x2s2_inside(p) && p.W < (int64_t(1) << 30)) return maxmin_bwd_2x2s2_f32(p, g, ix, d);
#endif
  (void)p, (void)g, (void)ix, (void)d;
  return false;
}

template bool maxmin_bwd_plane<float>(const PoolProblem&, const float*, const int64_t*, float*);
template bool maxmin_bwd_plane<double>(const PoolProblem&, const double*, const int64_t*, double*);
template void fwd_range<float>(PoolKind, const PoolProblem&, const float*, float*, int64_t*, int64_t,
                               int64_t, float*, int64_t*);
template void fwd_range<double>(PoolKind, const PoolProblem&, const double*, double*, int64_t*,
                                int64_t, int64_t, double*, int64_t*);
template void avg_bwd_range<float>(const PoolProblem&, const float*, float*, int64_t, int64_t, float*);
template void avg_bwd_range<double>(const PoolProblem&, const double*, double*, int64_t, int64_t,
                                    double*);
template void global_range<float>(PoolKind, const float*, int64_t, float*, int64_t*, float, int64_t,
                                  int64_t);
template void global_range<double>(PoolKind, const double*, int64_t, double*, int64_t*, double, int64_t,
                                   int64_t);

#endif  // FC_POOL_ISA_PASS
