// Pooling kernels (max, min, avg; fixed-window, adaptive and global), forward
// and backward, float and double. Semantics are the CPU module's
// (fastconv/pool_cpu.h): padding never wins, ties go to the FIRST extreme in
// row-major window order, a NaN in the window wins (the last NaN gives the
// index), indices are flat h*W + w in the input plane, torch's avg divisor
// (count_include_pad, ceil-mode windows clipped at the padded border,
// divisor_override), adaptive windows [floor(i*in/out), ceil((i+1)*in/out)).
//
// Why this shape: pooling is memory-bound and its windows are small, so the
// forward gives one output element to a thread (consecutive threads read
// neighbouring input columns), and the backward is a gather with one input
// element per thread that visits the windows containing it in (oh, q) order:
// every dx element has exactly one writer, so there are no atomics and the
// sums come out in the CPU module's order. Global windows (the end of every
// ResNet) instead get one block per plane with a fixed-order tree.
// Index arithmetic is int64_t throughout (planes*H*W passes 2^31).
#include "fastconv/cuda_compat.h"
#include "fastconv/layers_cuda.h"
#include "grid_walk.cuh"

#include <cmath>

namespace fastconv {
namespace cuda {
// Named (not anonymous): the emulator's launch lambdas capture these by value.
namespace pool_detail {

// The problem as the kernels see it: per-axis sizes in 32 bits (checked on
// the host), because the window loops divide by strides and 64-bit division
// is an emulated instruction sequence on the GPU; only the plane count
// and the offsets built from it are 64-bit.
struct Geo {
  int64_t planes;
  int H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw;
  bool count_include_pad;
  int divisor_override;
};

struct AGeo {
  int64_t planes;
  int H, W, P, Q;
};

}  // namespace pool_detail
using pool_detail::AGeo;
using pool_detail::Geo;

namespace {

// Threads per block. The kernels carry no __launch_bounds__: with
// __launch_bounds__(256) nvcc 13 capped them at 32-48 registers and spilled
// (the gathers' window loops); unbounded they take 19-62 registers, spill
// nothing, and 256-thread blocks always fit.
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;
constexpr int kMax = int(PoolKind::Max), kMin = int(PoolKind::Min), kAvg = int(PoolKind::Avg);

Geo geo_of(const PoolProblem& p) {
  const int64_t lim = int64_t(1) << 30;
  for (int64_t v : {p.H, p.W, p.P, p.Q, p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw})
    if (v < 0 || v >= lim) throw std::invalid_argument("pool: a per-axis size or window parameter is >= 2^30");
  // divisor_override may be negative (torch only refuses 0)
  if (p.divisor_override <= -lim || p.divisor_override >= lim)
    throw std::invalid_argument("pool: |divisor_override| is >= 2^30");
  if (int64_t(p.kh - 1) * p.dh + p.H + p.ph >= lim || int64_t(p.kw - 1) * p.dw + p.W + p.pw >= lim ||
      int64_t(p.P) * p.sh >= lim || int64_t(p.Q) * p.sw >= lim)
    throw std::invalid_argument("pool: window coordinates would pass 2^30");
  // in-plane offsets are 32-bit (a single plane of 2^31 elements is 8 GiB)
  if (p.H * p.W >= (int64_t(1) << 31) || p.P * p.Q >= (int64_t(1) << 31))
    throw std::invalid_argument("pool: an input or output plane has >= 2^31 elements");
  Geo g;
  g.planes = p.planes;
  g.H = int(p.H); g.W = int(p.W); g.P = int(p.P); g.Q = int(p.Q);
  g.kh = int(p.kh); g.kw = int(p.kw); g.sh = int(p.sh); g.sw = int(p.sw);
  g.ph = int(p.ph); g.pw = int(p.pw); g.dh = int(p.dh); g.dw = int(p.dw);
  g.count_include_pad = p.count_include_pad;
  g.divisor_override = int(p.divisor_override);
  return g;
}

AGeo ageo_of(const AdaptiveProblem& p) {
  const int64_t lim = int64_t(1) << 15;  // (i+1)*in stays below 2^31 in 32-bit window bounds
  if (p.H <= 0 || p.W <= 0 || p.P <= 0 || p.Q <= 0 || p.H >= lim || p.W >= lim || p.P >= lim || p.Q >= lim)
    throw std::invalid_argument("adaptive pool: input and output sizes must be < 2^15 per axis");
  return AGeo{p.planes, int(p.H), int(p.W), int(p.P), int(p.Q)};
}

int64_t blocks_for(int64_t work, int64_t threads) {
  const int64_t b = (work + threads - 1) / threads;
  return b < kMaxBlocks ? b : kMaxBlocks;
}

// The identity of max / min (padding never wins).
template <int kKind, typename T>
__device__ __forceinline__ T ident() {
  return kKind == kMin ? T(INFINITY) : T(-INFINITY);
}

// Strictly better, or NaN: keeps the first extreme, and a later NaN replaces
// an earlier one (torch's CPU rule, as fastconv's CPU module).
template <int kKind, typename T>
__device__ __forceinline__ bool better(T v, T a) {
  return (kKind == kMin ? v < a : v > a) || v != v;
}

// first coordinate start + i*dil >= 0 (the initial index of a window)
__device__ __forceinline__ int first_inside(int start, int dil) {
  return start >= 0 ? start : start + ((-start + dil - 1) / dil) * dil;
}

// Taps i in [i0, i1) of a window starting at `start` with 0 <= start + i*dil < n.
// The loops visit only those: a kernel of 2^29 taps over a few pixels is valid.
__device__ __forceinline__ void taps_inside(int start, int dil, int k, int n, int& i0, int& i1) {
  i0 = (first_inside(start, dil) - start) / dil;
  const int64_t last = start > n - 1 ? 0 : (int64_t(n) - 1 - start) / dil + 1;
  i1 = int(last < k ? last : k);
  if (i1 < i0) i1 = i0;
}

// Taps r in [lo, hi] that put input coordinate c (plus padding: t = c + pad)
// into some window o in [0, nout): t - r*dil = o*stride with 0 <= o*stride <=
// (nout-1)*stride (the divisibility is checked per tap by the caller).
__device__ __forceinline__ void taps_reaching(int t, int dil, int stride, int nout, int k, int& lo, int& hi) {
  const int64_t h = int64_t(t) / dil;  // t >= 0
  hi = int(h < k - 1 ? h : k - 1);
  const int64_t rest = int64_t(t) - int64_t(nout - 1) * stride;  // r*dil >= rest
  const int64_t l = rest <= 0 ? 0 : (rest + dil - 1) / dil;
  lo = int(l < k ? l : k);
}

// torch's avg divisor along one axis
__device__ __forceinline__ int avg_count(int o, int stride, int pad, int k, int in, bool include_pad) {
  int s = o * stride - pad;
  int e = s + k < in + pad ? s + k : in + pad;
  const int padded = e - s;
  s = s > 0 ? s : 0;
  e = e < in ? e : in;
  return include_pad ? padded : e - s;
}

// Max/min of window (oh, q) of one plane, with the flat index of the winner.
// kBroken (test hook only): the image bound is off by one, so the last input
// column is treated as padding.
template <int kKind, bool kBroken, typename T>
__device__ __forceinline__ void window_extreme(const Geo& p, const T* __restrict__ xp, int oh, int q,
                                               T& best, int64_t& bi) {
  const int h0 = oh * p.sh - p.ph, w0 = q * p.sw - p.pw;
  const int wlim = kBroken ? p.W - 1 : p.W;
  best = ident<kKind, T>();
  bi = int64_t(first_inside(h0, p.dh)) * p.W + first_inside(w0, p.dw);
  int r0, r1, s0, s1;
  taps_inside(h0, p.dh, p.kh, p.H, r0, r1);
  taps_inside(w0, p.dw, p.kw, wlim, s0, s1);
  for (int r = r0; r < r1; ++r) {
    const int h = h0 + r * p.dh;
    const T* row = xp + int64_t(h) * p.W;
    for (int s = s0; s < s1; ++s) {
      const int w = w0 + s * p.dw;
      const T v = row[w];
      if (better<kKind>(v, best)) {
        best = v;
        bi = int64_t(h) * p.W + w;
      }
    }
  }
}

// Avg of window (oh, q): column sums of the window rows, then across columns
// (the CPU module's association), divided by torch's divisor.
template <bool kBroken, typename T>
__device__ __forceinline__ T window_avg(const Geo& p, const T* __restrict__ xp, int oh, int q) {
  const int h0 = oh * p.sh - p.ph, w0 = q * p.sw - p.pw;
  const int wlim = kBroken ? p.W - 1 : p.W;
  T acc = T(0);
  int r0, r1, s0, s1;
  taps_inside(h0, 1, p.kh, p.H, r0, r1);
  taps_inside(w0, 1, p.kw, wlim, s0, s1);
  for (int s = s0; s < s1; ++s) {
    const int w = w0 + s;
    T v = T(0);
    for (int r = r0; r < r1; ++r) v += xp[int64_t(h0 + r) * p.W + w];
    acc += v;
  }
  const T rc = p.divisor_override ? T(1) : T(avg_count(oh, p.sh, p.ph, p.kh, p.H, p.count_include_pad));
  const T cc = p.divisor_override ? T(p.divisor_override)
                                  : T(avg_count(q, p.sw, p.pw, p.kw, p.W, p.count_include_pad));
  return acc / (rc * cc);
}

// Forward: one output element (plane, oh, q) per thread, grid-stride.
template <int kKind, bool kBroken, typename T>
__global__ void
    pool_fwd_kernel(Geo p, const T* __restrict__ x, T* __restrict__ y, int64_t* __restrict__ idx) {
  const int64_t PQ = int64_t(p.P) * p.Q, HW = int64_t(p.H) * p.W;
  for (PlaneWalk it(PQ); it.plane < p.planes; it.next()) {
    const int64_t plane = it.plane, i = plane * PQ + it.off;
    const int o = int(it.off);  // in-plane offset: < 2^31 (geo_of)
    const int oh = o / p.Q, q = o - oh * p.Q;
    const T* xp = x + plane * HW;
    if (kKind == kAvg) {
      y[i] = window_avg<kBroken>(p, xp, oh, q);
    } else {
      T best;
      int64_t bi;
      window_extreme<kKind, kBroken>(p, xp, oh, q, best, bi);
      y[i] = best;
      if (idx) idx[i] = bi;
    }
  }
}

// Global windows: one plane per block. Each thread scans a fixed strided
// slice (its own first extreme / last NaN), then a fixed-order tree merges
// the slices: among equal values the smallest index wins, among NaNs the
// largest, which is the row-major scan's answer. blockDim.x: a power of two.
template <int kKind, typename T>
__global__ void
    pool_global_kernel(int64_t planes, int64_t HW, const T* __restrict__ x, T* __restrict__ y,
                       int64_t* __restrict__ idx, T div) {
  FC_DYNAMIC_SMEM(unsigned char, smem);
  const int tid = int(threadIdx.x), nt = int(blockDim.x);
  T* sv = reinterpret_cast<T*>(smem);
  int64_t* si = reinterpret_cast<int64_t*>(smem + size_t(nt) * sizeof(T));  // nt*sizeof(T): a multiple of 8
  // the loop bound depends on blockIdx only: all threads reach the barriers
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    const T* xp = x + plane * HW;
    if (kKind == kAvg) {
      T acc = T(0);
      for (int64_t j = tid; j < HW; j += nt) acc += xp[j];
      sv[tid] = acc;
    } else {
      T best = ident<kKind, T>();
      int64_t bi = tid < HW ? int64_t(tid) : HW;  // HW: "no element", never wins a tie
      for (int64_t j = tid; j < HW; j += nt) {
        const T v = xp[j];
        if (better<kKind>(v, best)) {
          best = v;
          bi = j;
        }
      }
      sv[tid] = best;
      si[tid] = bi;
    }
    __syncthreads();
    for (int off = nt / 2; off > 0; off /= 2) {
      if (tid < off) {
        if (kKind == kAvg) {
          sv[tid] += sv[tid + off];
        } else {
          const T a = sv[tid], v = sv[tid + off];
          const int64_t ai = si[tid], vi = si[tid + off];
          bool take;
          if (a != a) take = (v != v) && vi > ai;
          else if (v != v) take = true;
          else take = better<kKind>(v, a) || (v == a && vi < ai);
          if (take) {
            sv[tid] = v;
            si[tid] = vi;
          }
        }
      }
      __syncthreads();
    }
    if (tid == 0) {
      y[plane] = kKind == kAvg ? sv[0] / div : sv[0];
      if (kKind != kAvg && idx) idx[plane] = si[0] < HW ? si[0] : 0;
    }
    __syncthreads();  // sv[0] is read before the next plane overwrites it
  }
}

// Backward gather: one input element (plane, ih, iw) per thread. Window oh
// has this row as tap r when ih = oh*sh - ph + r*dh; r from kh-1 down to 0
// gives increasing oh, so windows are visited in (oh, q) output order, the
// order in which the CPU module adds them.
template <int kKind, typename T>
__global__ void
    pool_bwd_kernel(Geo p, const T* __restrict__ dy, const T* __restrict__ x, const int64_t* __restrict__ idx,
                    T* __restrict__ dx) {
  const int64_t HW = int64_t(p.H) * p.W, PQ = int64_t(p.P) * p.Q;
  for (PlaneWalk it(HW); it.plane < p.planes; it.next()) {
    const int64_t plane = it.plane, i = plane * HW + it.off;
    const int self = int(it.off);  // in-plane offset ih*W + iw (< 2^31, geo_of)
    const int ih = self / p.W, iw = self - ih * p.W;
    const T* g = dy + plane * PQ;
    const int64_t* ip = idx ? idx + plane * PQ : nullptr;
    const T* xp = x ? x + plane * HW : nullptr;
    T acc = T(0);
    int rlo, rhi, slo, shi;  // only the taps that can reach a window (huge kernels on tiny images)
    taps_reaching(ih + p.ph, p.dh, p.sh, p.P, p.kh, rlo, rhi);
    taps_reaching(iw + p.pw, p.dw, p.sw, p.Q, p.kw, slo, shi);
    for (int r = rhi; r >= rlo; --r) {
      const int th = ih + p.ph - r * p.dh;
      if (th < 0) continue;
      const int oh = th / p.sh;
      if (oh * p.sh != th || oh >= p.P) continue;
      for (int s = shi; s >= slo; --s) {
        const int tw = iw + p.pw - s * p.dw;
        if (tw < 0) continue;
        const int q = tw / p.sw;
        if (q * p.sw != tw || q >= p.Q) continue;
        const int o = oh * p.Q + q;
        if (kKind == kAvg) {
          const T rc = p.divisor_override ? T(1) : T(avg_count(oh, p.sh, p.ph, p.kh, p.H, p.count_include_pad));
          const T cc = p.divisor_override ? T(p.divisor_override)
                                          : T(avg_count(q, p.sw, p.pw, p.kw, p.W, p.count_include_pad));
          acc += g[o] / (rc * cc);
        } else {
          int64_t win;
          if (ip) {
            win = ip[o];
          } else {
            T best;
            window_extreme<kKind, false>(p, xp, oh, q, best, win);
          }
          if (win == self) acc += g[o];
        }
      }
    }
    dx[i] = acc;
  }
}

// adaptive windows: start = floor(i*in/out), end = ceil((i+1)*in/out)
__device__ __forceinline__ int a_start(int i, int in, int out) { return (i * in) / out; }
__device__ __forceinline__ int a_end(int i, int in, int out) { return ((i + 1) * in + out - 1) / out; }

template <typename T>
__device__ __forceinline__ void adaptive_max(const AGeo& p, const T* __restrict__ xp, int oh, int q, T& best,
                                             int64_t& bi) {
  const int hs = a_start(oh, p.H, p.P), he = a_end(oh, p.H, p.P);
  const int ws = a_start(q, p.W, p.Q), we = a_end(q, p.W, p.Q);
  best = T(-INFINITY);
  bi = int64_t(hs) * p.W + ws;
  for (int h = hs; h < he; ++h)
    for (int w = ws; w < we; ++w) {
      const T v = xp[int64_t(h) * p.W + w];
      if (better<kMax>(v, best)) {
        best = v;
        bi = int64_t(h) * p.W + w;
      }
    }
}

template <int kKind, typename T>
__global__ void
    adaptive_fwd_kernel(AGeo p, const T* __restrict__ x, T* __restrict__ y, int64_t* __restrict__ idx) {
  const int64_t PQ = int64_t(p.P) * p.Q, HW = int64_t(p.H) * p.W;
  for (PlaneWalk it(PQ); it.plane < p.planes; it.next()) {
    const int64_t plane = it.plane, i = plane * PQ + it.off;
    const int o = int(it.off);
    const int oh = o / p.Q, q = o - oh * p.Q;
    const T* xp = x + plane * HW;
    if (kKind == kAvg) {
      const int hs = a_start(oh, p.H, p.P), he = a_end(oh, p.H, p.P);
      const int ws = a_start(q, p.W, p.Q), we = a_end(q, p.W, p.Q);
      T acc = T(0);
      for (int h = hs; h < he; ++h)
        for (int w = ws; w < we; ++w) acc += xp[int64_t(h) * p.W + w];
      y[i] = acc / T((he - hs) * (we - ws));
    } else {
      T best;
      int64_t bi;
      adaptive_max(p, xp, oh, q, best, bi);
      y[i] = best;
      if (idx) idx[i] = bi;
    }
  }
}

// Adaptive backward gather. Window oh contains row ih iff
// floor(ih*P/H) <= oh <= floor(((ih+1)*P - 1)/H); the same for columns.
template <int kKind, typename T>
__global__ void
    adaptive_bwd_kernel(AGeo p, const T* __restrict__ dy, const T* __restrict__ x, const int64_t* __restrict__ idx,
                        T* __restrict__ dx) {
  const int64_t HW = int64_t(p.H) * p.W, PQ = int64_t(p.P) * p.Q;
  for (PlaneWalk it(HW); it.plane < p.planes; it.next()) {
    const int64_t plane = it.plane, i = plane * HW + it.off;
    const int self = int(it.off);
    const int ih = self / p.W, iw = self - ih * p.W;
    const int oh_lo = ih * p.P / p.H, oh_hi0 = ((ih + 1) * p.P - 1) / p.H;
    const int oh_hi = oh_hi0 < p.P - 1 ? oh_hi0 : p.P - 1;
    const int q_lo = iw * p.Q / p.W, q_hi0 = ((iw + 1) * p.Q - 1) / p.W;
    const int q_hi = q_hi0 < p.Q - 1 ? q_hi0 : p.Q - 1;
    const T* g = dy + plane * PQ;
    T acc = T(0);
    if (kKind == kAvg) {
      // per column window: the sum over the row windows, then across columns
      for (int q = q_lo; q <= q_hi; ++q) {
        const T cc = T(a_end(q, p.W, p.Q) - a_start(q, p.W, p.Q));
        T tq = T(0);
        for (int oh = oh_lo; oh <= oh_hi; ++oh)
          tq += g[oh * p.Q + q] / (T(a_end(oh, p.H, p.P) - a_start(oh, p.H, p.P)) * cc);
        acc += tq;
      }
    } else {
      const int64_t* ip = idx ? idx + plane * PQ : nullptr;
      const T* xp = x ? x + plane * HW : nullptr;
      for (int oh = oh_lo; oh <= oh_hi; ++oh)
        for (int q = q_lo; q <= q_hi; ++q) {
          int64_t win;
          if (ip) {
            win = ip[oh * p.Q + q];
          } else {
            T best;
            adaptive_max(p, xp, oh, q, best, win);
          }
          if (win == self) acc += g[oh * p.Q + q];
        }
    }
    dx[i] = acc;
  }
}

bool is_global(const PoolProblem& p) {
  return p.P == 1 && p.Q == 1 && p.ph == 0 && p.pw == 0 && p.kh == p.H && p.kw == p.W && p.dh == 1 && p.dw == 1;
}

// Threads per plane of the global kernel: about 4 elements each, 32..256.
// Depends on the problem only, so the reduction order is device independent.
int global_threads(int64_t HW) {
  int nt = 32;
  while (nt < kThreads && int64_t(nt) * 4 < HW) nt *= 2;
  return nt;
}

template <typename T>
void launch_global(PoolKind kind, int64_t planes, int64_t HW, const T* x, T* y, int64_t* idx, T div, void* stream) {
  const int nt = global_threads(HW);
  const dim3 grid(unsigned(planes < kMaxBlocks ? planes : kMaxBlocks));
  const dim3 block = dim3(unsigned(nt));
  const size_t smem = size_t(nt) * (sizeof(T) + sizeof(int64_t));
  switch (kind) {
    case PoolKind::Max: {
      auto k = pool_global_kernel<kMax, T>;
      FC_LAUNCH(k, grid, block, smem, FC_STREAM(stream), planes, HW, x, y, idx, div);
    } break;
    case PoolKind::Min: {
      auto k = pool_global_kernel<kMin, T>;
      FC_LAUNCH(k, grid, block, smem, FC_STREAM(stream), planes, HW, x, y, idx, div);
    } break;
    case PoolKind::Avg: {
      auto k = pool_global_kernel<kAvg, T>;
      FC_LAUNCH(k, grid, block, smem, FC_STREAM(stream), planes, HW, x, y, nullptr, div);
    } break;
  }
}

template <bool kBroken, typename T>
void launch_fwd(PoolKind kind, const PoolProblem& p, const T* x, T* y, int64_t* idx, void* stream) {
  const Geo g = geo_of(p);
  const int64_t total = p.planes * p.P * p.Q;
  const dim3 grid(unsigned(blocks_for(total, kThreads))), block(kThreads);
  switch (kind) {
    case PoolKind::Max: {
      auto k = pool_fwd_kernel<kMax, kBroken, T>;
      FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), g, x, y, idx);
    } break;
    case PoolKind::Min: {
      auto k = pool_fwd_kernel<kMin, kBroken, T>;
      FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), g, x, y, idx);
    } break;
    case PoolKind::Avg: {
      auto k = pool_fwd_kernel<kAvg, kBroken, T>;
      FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), g, x, y, nullptr);
    } break;
  }
}

void require(const std::string& why) {
  if (!why.empty()) throw std::invalid_argument("pool: " + why);
}

}  // namespace

std::string pool_problem_check(PoolKind kind, const PoolProblem& p) {
  if (p.planes < 0) return "planes must be >= 0";
  if (p.H <= 0 || p.W <= 0) return "input plane must be non-empty";
  if (p.P <= 0 || p.Q <= 0) return "output size must be positive";
  if (p.kh <= 0 || p.kw <= 0) return "kernel_size must be positive";
  if (p.sh <= 0 || p.sw <= 0) return "stride must be positive";
  if (p.dh <= 0 || p.dw <= 0) return "dilation must be positive";
  if (p.ph < 0 || p.pw < 0) return "padding must be >= 0";
  if (p.ph > p.kh / 2 || p.pw > p.kw / 2) return "padding must be at most half the kernel size";
  if (kind == PoolKind::Avg && (p.dh != 1 || p.dw != 1)) return "avg pooling has no dilation";
  if ((p.P - 1) * p.sh - p.ph >= p.H || (p.Q - 1) * p.sw - p.pw >= p.W) return "output size too large for the input";
  return "";
}

std::string adaptive_problem_check(PoolKind kind, const AdaptiveProblem& p) {
  if (kind == PoolKind::Min) return "adaptive min pooling is not implemented";
  if (p.planes < 0) return "planes must be >= 0";
  if (p.H <= 0 || p.W <= 0) return "input plane must be non-empty";
  if (p.P <= 0 || p.Q <= 0) return "output size must be positive";
  return "";
}

template <typename T>
void pool2d_fwd(PoolKind kind, const PoolProblem& p, const T* x, T* y, int64_t* idx, void* stream) {
  require(pool_problem_check(kind, p));
  if (p.planes == 0) return;
  if (is_global(p)) {
    const T div = T(p.divisor_override ? p.divisor_override : p.H * p.W);
    launch_global<T>(kind, p.planes, p.H * p.W, x, y, kind == PoolKind::Avg ? nullptr : idx, div, stream);
    return;
  }
  launch_fwd<false, T>(kind, p, x, y, idx, stream);
}

template <typename T>
void pool2d_bwd(PoolKind kind, const PoolProblem& p, const T* dy, const T* x, const int64_t* idx, T* dx,
                void* stream) {
  require(pool_problem_check(kind, p));
  if (kind != PoolKind::Avg && idx == nullptr && x == nullptr)
    throw std::invalid_argument("pool backward: needs the input or the indices");
  const Geo g = geo_of(p);
  if (p.planes == 0) return;
  const int64_t total = p.planes * p.H * p.W;
  const dim3 grid(unsigned(blocks_for(total, kThreads))), block(kThreads);
  switch (kind) {
    case PoolKind::Max: {
      auto k = pool_bwd_kernel<kMax, T>;
      FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), g, dy, x, idx, dx);
    } break;
    case PoolKind::Min: {
      auto k = pool_bwd_kernel<kMin, T>;
      FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), g, dy, x, idx, dx);
    } break;
    case PoolKind::Avg: {
      auto k = pool_bwd_kernel<kAvg, T>;
      FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), g, dy, static_cast<const T*>(nullptr),
                static_cast<const int64_t*>(nullptr), dx);
    } break;
  }
}

template <typename T>
void adaptive_pool2d_fwd(PoolKind kind, const AdaptiveProblem& p, const T* x, T* y, int64_t* idx, void* stream) {
  const std::string why = adaptive_problem_check(kind, p);
  if (!why.empty()) throw std::invalid_argument("adaptive pool: " + why);
  if (p.planes == 0) return;
  if (kind == PoolKind::Avg) idx = nullptr;
  const AGeo g = ageo_of(p);
  if (p.P == 1 && p.Q == 1) {  // global pooling: one block per plane
    launch_global<T>(kind, p.planes, p.H * p.W, x, y, idx, T(p.H * p.W), stream);
    return;
  }
  const int64_t total = p.planes * p.P * p.Q;
  const dim3 grid(unsigned(blocks_for(total, kThreads))), block(kThreads);
  if (kind == PoolKind::Avg) {
    auto k = adaptive_fwd_kernel<kAvg, T>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), g, x, y, idx);
  } else {
    auto k = adaptive_fwd_kernel<kMax, T>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), g, x, y, idx);
  }
}

template <typename T>
void adaptive_pool2d_bwd(PoolKind kind, const AdaptiveProblem& p, const T* dy, const T* x, const int64_t* idx,
                         T* dx, void* stream) {
  const std::string why = adaptive_problem_check(kind, p);
  if (!why.empty()) throw std::invalid_argument("adaptive pool: " + why);
  if (kind != PoolKind::Avg && idx == nullptr && x == nullptr)
    throw std::invalid_argument("adaptive pool backward: needs the input or the indices");
  const AGeo g = ageo_of(p);
  if (p.planes == 0) return;
  const int64_t total = p.planes * p.H * p.W;
  const dim3 grid(unsigned(blocks_for(total, kThreads))), block(kThreads);
  if (kind == PoolKind::Avg) {
    auto k = adaptive_bwd_kernel<kAvg, T>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), g, dy, static_cast<const T*>(nullptr),
              static_cast<const int64_t*>(nullptr), dx);
  } else {
    auto k = adaptive_bwd_kernel<kMax, T>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), g, dy, x, idx, dx);
  }
}

#if defined(FC_EMU_TEST_HOOKS)
template <typename T>
void pool2d_fwd_off_by_one(PoolKind kind, const PoolProblem& p, const T* x, T* y, int64_t* idx) {
  require(pool_problem_check(kind, p));
  if (p.planes == 0) return;
  launch_fwd<true, T>(kind, p, x, y, idx, nullptr);
}
template void pool2d_fwd_off_by_one<float>(PoolKind, const PoolProblem&, const float*, float*, int64_t*);
template void pool2d_fwd_off_by_one<double>(PoolKind, const PoolProblem&, const double*, double*, int64_t*);
#endif

#define FC_INSTANTIATE(T)                                                                                      \
  template void pool2d_fwd<T>(PoolKind, const PoolProblem&, const T*, T*, int64_t*, void*);                    \
  template void pool2d_bwd<T>(PoolKind, const PoolProblem&, const T*, const T*, const int64_t*, T*, void*);    \
  template void adaptive_pool2d_fwd<T>(PoolKind, const AdaptiveProblem&, const T*, T*, int64_t*, void*);       \
  template void adaptive_pool2d_bwd<T>(PoolKind, const AdaptiveProblem&, const T*, const T*, const int64_t*, T*, \
                                       void*);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
#undef FC_INSTANTIATE

}  // namespace cuda
}  // namespace fastconv
