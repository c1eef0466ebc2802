// Layer kernels besides convolution and pooling: batch norm, local response
// norm, relu/sigmoid/tanh, softmax/log_softmax, fused cross entropy, dropout
// and linear (a tiled SGEMM of our own), forward and backward, float and
// double. Semantics follow the CPU module (fastconv/layers_cpu.h) operation
// for operation; where the CPU code accumulates in double, so do these.
//
// Determinism: every output element has exactly one writer; the reductions
// (batch-norm sums, softmax / cross-entropy rows) are one block per channel or
// row, each thread summing a fixed strided slice, then a fixed-order tree in
// shared memory whose size depends on the problem only. No atomics.
//
// The kernels carry no __launch_bounds__ (nvcc 13 then capped registers low
// enough to spill in pool.cu); every block here has <= 256 threads, which any
// register count the kernels use (see the ptxas report) allows.
#include "fastconv/cuda_compat.h"
#include "fastconv/layers_cuda.h"
#include "fastconv/problem.h"  // relu_value, relu_grad
#include "grid_walk.cuh"

#include <cmath>

namespace fastconv {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

int64_t blocks_for(int64_t work, int64_t threads) {
  const int64_t b = (work + threads - 1) / threads;
  return b < 1 ? 1 : (b < kMaxBlocks ? b : kMaxBlocks);
}

// Threads of a one-block-per-row/channel reduction: about 4 elements each,
// 32..256, a power of two. Depends on the problem only (device independent order).
int reduce_threads(int64_t n) {
  int nt = 32;
  while (nt < kThreads && int64_t(nt) * 4 < n) nt *= 2;
  return nt;
}

unsigned grid_rows(int64_t rows) { return unsigned(rows < kMaxBlocks ? (rows < 1 ? 1 : rows) : kMaxBlocks); }

void need_32bit(int64_t v, const char* what) {
  if (v < 0 || v >= (int64_t(1) << 31)) throw std::invalid_argument(std::string(what) + " must be < 2^31");
}

// ----------------------------------------------------------- device math
__device__ __forceinline__ float d_exp(float x) { return expf(x); }
__device__ __forceinline__ double d_exp(double x) { return exp(x); }
__device__ __forceinline__ float d_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double d_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float d_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double d_sqrt(double x) { return sqrt(x); }

// sigmoid through exp(-|x|) (never overflows), as the CPU module
template <typename T>
__device__ __forceinline__ T d_sigmoid(T x) {
  const T a = x < T(0) ? -x : x;
  const T e = d_exp(-a);
  const T inv = T(1) / (T(1) + e);
  return x >= T(0) ? inv : e * inv;
}

// b^-beta with the CPU module's closed forms for AlexNet's exponents
template <typename T>
__device__ __forceinline__ T pow_neg(T b, double beta) {
  if (beta == 0.75) {
    const T r = d_sqrt(b);
    return T(1) / (r * d_sqrt(r));
  }
  if (beta == 0.5) return T(1) / d_sqrt(b);
  if (beta == 1.0) return T(1) / b;
  return T(pow(double(b), -beta));
}

// Fixed-order tree sum of red[0..nt) into red[0] (nt a power of two). All
// threads must call it; red[0] is valid for everyone afterwards.
__device__ __forceinline__ void tree_sum(double* red, int tid, int nt) {
  __syncthreads();
  for (int off = nt / 2; off > 0; off /= 2) {
    if (tid < off) red[tid] += red[tid + off];
    __syncthreads();
  }
}

// The same with max (NaN never taken, as the CPU's row_max).
__device__ __forceinline__ void tree_max(double* red, int tid, int nt) {
  __syncthreads();
  for (int off = nt / 2; off > 0; off /= 2) {
    if (tid < off && red[tid + off] > red[tid]) red[tid] = red[tid + off];
    __syncthreads();
  }
}

// ------------------------------------------------------------ activations
template <int kKind, typename T>
__global__ void act_fwd_kernel(int64_t n, const T* __restrict__ x, T* __restrict__ y) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const T v = x[i];
    if (kKind == 0) y[i] = relu_value(v);
    else if (kKind == 1) y[i] = d_sigmoid(v);
    else y[i] = d_tanh(v);
  }
}

template <int kKind, typename T>
__global__ void act_bwd_kernel(int64_t n, const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const T v = y[i];
    if (kKind == 0) dx[i] = relu_grad(v, dy[i]);
    else if (kKind == 1) dx[i] = dy[i] * v * (T(1) - v);
    else dx[i] = dy[i] * (T(1) - v * v);
  }
}

// ---------------------------------------------------------------- softmax
// Contiguous rows (inner == 1): one block per row. Row maximum, the float64
// sum of exp(x - max), then the outputs.
template <bool kLog, typename T>
__global__ void softmax_rows_kernel(int64_t rows, int64_t D, const T* __restrict__ x, T* __restrict__ y) {
  FC_DYNAMIC_SMEM(double, red);
  const int tid = int(threadIdx.x), nt = int(blockDim.x);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // bound uniform per block
    const T* xr = x + row * D;
    T* yr = y + row * D;
    T m = T(-INFINITY);
    for (int64_t j = tid; j < D; j += nt) m = xr[j] > m ? xr[j] : m;
    red[tid] = double(m);
    tree_max(red, tid, nt);
    m = T(red[0]);
    __syncthreads();  // red[0] read by all before it is reused
    double s = 0;
    for (int64_t j = tid; j < D; j += nt) s += double(d_exp(xr[j] - m));
    red[tid] = s;
    tree_sum(red, tid, nt);
    s = red[0];
    if (kLog) {
      const T ls = T(log(s));  // (x - m) - log(s): m + log(s) would absorb log(s) into a large m
      for (int64_t j = tid; j < D; j += nt) yr[j] = (xr[j] - m) - ls;
    } else {
      const T inv = T(1.0 / s);
      for (int64_t j = tid; j < D; j += nt) yr[j] = d_exp(xr[j] - m) * inv;
    }
    __syncthreads();
  }
}

template <bool kLog, typename T>
__global__ void softmax_rows_bwd_kernel(int64_t rows, int64_t D, const T* __restrict__ dy, const T* __restrict__ y,
                                        T* __restrict__ dx) {
  FC_DYNAMIC_SMEM(double, red);
  const int tid = int(threadIdx.x), nt = int(blockDim.x);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* g = dy + row * D;
    const T* yr = y + row * D;
    T* d = dx + row * D;
    double s = 0;
    for (int64_t j = tid; j < D; j += nt) s += kLog ? double(g[j]) : double(g[j]) * double(yr[j]);
    red[tid] = s;
    tree_sum(red, tid, nt);
    const T st = T(red[0]);
    if (kLog)
      for (int64_t j = tid; j < D; j += nt) d[j] = g[j] - d_exp(yr[j]) * st;
    else
      for (int64_t j = tid; j < D; j += nt) d[j] = yr[j] * (g[j] - st);
    __syncthreads();
  }
}

// Strided softmax (inner > 1): one thread per (outer, j) column walks D with
// stride `inner`; neighbouring threads read neighbouring columns (coalesced).
template <bool kLog, typename T>
__global__ void softmax_cols_kernel(int64_t outer, int64_t D, int64_t inner, const T* __restrict__ x,
                                    T* __restrict__ y) {
  for (PlaneWalk it(inner); it.plane < outer; it.next()) {
    const int64_t base = it.plane * D * inner + it.off;
    const T* xc = x + base;
    T* yc = y + base;
    T m = T(-INFINITY);
    for (int64_t d = 0; d < D; ++d) m = xc[d * inner] > m ? xc[d * inner] : m;
    double s = 0;
    for (int64_t d = 0; d < D; ++d) s += double(d_exp(xc[d * inner] - m));
    if (kLog) {
      const T ls = T(log(s));  // (x - m) - log(s), as above
      for (int64_t d = 0; d < D; ++d) yc[d * inner] = (xc[d * inner] - m) - ls;
    } else {
      const T inv = T(1.0 / s);
      for (int64_t d = 0; d < D; ++d) yc[d * inner] = d_exp(xc[d * inner] - m) * inv;
    }
  }
}

template <bool kLog, typename T>
__global__ void softmax_cols_bwd_kernel(int64_t outer, int64_t D, int64_t inner, const T* __restrict__ dy,
                                        const T* __restrict__ y, T* __restrict__ dx) {
  for (PlaneWalk it(inner); it.plane < outer; it.next()) {
    const int64_t base = it.plane * D * inner + it.off;
    double s = 0;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = base + d * inner;
      s += kLog ? double(dy[i]) : double(dy[i]) * double(y[i]);
    }
    const T st = T(s);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = base + d * inner;
      dx[i] = kLog ? T(dy[i] - d_exp(y[i]) * st) : T(y[i] * (dy[i] - st));
    }
  }
}

// ---------------------------------------------------------- cross entropy
// One block per row: max, float64 sum of exp, (label smoothing) float64 sum
// of the logits; the row loss by thread 0; the gradient by everyone.
template <typename T>
__global__ void ce_kernel(int64_t N, int64_t C, const T* __restrict__ z, const int64_t* __restrict__ target,
                          int64_t ignore_index, double eps, double scale, double* __restrict__ row_loss,
                          T* __restrict__ grad) {
  FC_DYNAMIC_SMEM(double, red);
  const int tid = int(threadIdx.x), nt = int(blockDim.x);
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const T* zr = z + row * C;
    T* g = grad + row * C;
    const int64_t t = target[row];
    if (t == ignore_index) {  // uniform per block: no barrier is skipped by part of it
      for (int64_t c = tid; c < C; c += nt) g[c] = T(0);
      if (tid == 0) row_loss[row] = 0.0;
      continue;
    }
    if (t < 0 || t >= C) {
      // the host bindings reject these; device targets cannot be checked
      // without a copy, so a bad one poisons its row (NaN) instead of reading
      // out of bounds
      for (int64_t c = tid; c < C; c += nt) g[c] = T(NAN);
      if (tid == 0) row_loss[row] = double(NAN);
      continue;
    }
    T m = T(-INFINITY);
    for (int64_t c = tid; c < C; c += nt) m = zr[c] > m ? zr[c] : m;
    red[tid] = double(m);
    tree_max(red, tid, nt);
    m = T(red[0]);
    __syncthreads();
    double s = 0;
    for (int64_t c = tid; c < C; c += nt) s += double(d_exp(zr[c] - m));
    red[tid] = s;
    tree_sum(red, tid, nt);
    s = red[0];
    __syncthreads();
    double sz = 0;
    if (eps != 0.0) {
      for (int64_t c = tid; c < C; c += nt) sz += double(zr[c]) - double(m);  // sum_c (z_c - m)
      red[tid] = sz;
      tree_sum(red, tid, nt);
      sz = red[0];
    }
    const double ls = log(s);  // log p_c = (z_c - m) - log(s), m + log(s) not formed (absorption)
    if (tid == 0) {
      double loss = -(1.0 - eps) * ((double(zr[t]) - double(m)) - ls);
      if (eps != 0.0) loss -= eps / double(C) * (sz - double(C) * ls);
      row_loss[row] = loss;
    }
    const T a = T(scale / s), b = T(scale * eps / double(C)), hit = T(scale * (1.0 - eps));
    for (int64_t c = tid; c < C; c += nt) {
      T v = d_exp(zr[c] - m) * a - b;
      if (c == t) v -= hit;
      g[c] = v;
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------- dropout
// The CPU module's counter-based generator, bit for bit: two rounds of a
// 32-bit mixer over the element's global counter, keyed by splitmix64(seed).
__device__ __forceinline__ uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x7feb352du;
  h ^= h >> 15;
  h *= 0x846ca68bu;
  h ^= h >> 16;
  return h;
}

uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <typename T>
__global__ void dropout_kernel(int64_t n, const T* __restrict__ x, uint32_t k0, uint32_t k1, uint64_t offset,
                               uint32_t thr, T scale, T* __restrict__ y, uint8_t* __restrict__ mask) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const uint64_t g = offset + uint64_t(i);
    uint32_t h = mix32(uint32_t(g) ^ k0);
    h = mix32(h ^ (uint32_t(g >> 32) * 0x9E3779B1u) ^ k1);
    const bool keep = h >= thr;
    mask[i] = keep ? 1 : 0;
    y[i] = x[i] * (keep ? scale : T(0));  // a dropped NaN/inf stays NaN (as torch)
  }
}

template <typename T>
__global__ void dropout_bwd_kernel(int64_t n, const T* __restrict__ dy, const uint8_t* __restrict__ mask, T scale,
                                   T* __restrict__ dx) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    dx[i] = dy[i] * (mask[i] ? scale : T(0));
}

// ------------------------------------------------------------- batch norm
// Walks the N*L elements of one channel c of an (N, C, L) tensor with a
// thread's fixed stride: element j = n*L + l sits at (n*C + c)*L + l.
struct ChannelWalk {
  int64_t n, l, L, dn, dl;
  __device__ __forceinline__ ChannelWalk(int tid, int nt, int64_t L_) : L(L_) {
    // L < 2^31 (launcher), tid/nt <= 256: 32-bit divisions
    n = uint32_t(tid) / uint32_t(L_);
    l = tid - n * L_;
    dn = uint32_t(nt) / uint32_t(L_);
    dl = nt - dn * L_;
  }
  __device__ __forceinline__ void next() {
    n += dn;
    l += dl;
    if (l >= L) {
      l -= L;
      ++n;
    }
  }
};

// Per-channel mean and biased variance: moments shifted by the channel's
// first element (no E[x^2] - E[x]^2 cancellation), float64 accumulation.
template <typename T>
__global__ void bn_stats_kernel(int64_t N, int64_t C, int64_t L, const T* __restrict__ x, double* __restrict__ mean,
                                double* __restrict__ var) {
  FC_DYNAMIC_SMEM(double, red);
  const int tid = int(threadIdx.x), nt = int(blockDim.x);
  double* red2 = red + nt;
  const double M = double(N * L);
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    const double shift = double(x[c * L]);
    double a = 0, b = 0;
    for (ChannelWalk w(tid, nt, L); w.n < N; w.next()) {
      const double v = double(x[(w.n * C + c) * L + w.l]) - shift;
      a += v;
      b += v * v;
    }
    red[tid] = a;
    red2[tid] = b;
    __syncthreads();
    for (int off = nt / 2; off > 0; off /= 2) {
      if (tid < off) {
        red[tid] += red[tid + off];
        red2[tid] += red2[tid + off];
      }
      __syncthreads();
    }
    if (tid == 0) {
      const double d = red[0] / M;
      mean[c] = shift + d;
      const double v = red2[0] / M - d * d;
      // as the CPU's biased_variance: rounding below 0 -> 0; NaN stays NaN
      // (NaN/inf data) unless the mean is finite (finite data whose squares
      // overflowed: +inf, as torch's Welford sums give)
      var[c] = v >= 0.0 ? v : (v < 0.0 ? 0.0 : (d - d == 0.0 ? double(INFINITY) : v));  // d - d == 0: d finite
    }
    __syncthreads();
  }
}

// y = (x - mean) * (invstd * w) + b, one element per thread; the channel is
// tracked incrementally along the walk (no division per element).
template <typename T>
__global__ void bn_apply_kernel(int64_t planes, int64_t C, int64_t L, const T* __restrict__ x,
                                const double* __restrict__ mean, const double* __restrict__ invstd,
                                const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y) {
  for (ChannelPlaneWalk it(L, C); it.plane < planes; it.next()) {
    const int64_t c = it.c;
    const int64_t i = it.plane * L + it.off;
    const T a = T(invstd[c] * (w ? double(w[c]) : 1.0));
    const T m = T(mean[c]);
    const T bb = b ? b[c] : T(0);
    y[i] = (x[i] - m) * a + bb;
  }
}

// One block per channel: float64 sums of dy and dy*(x - mean) (skipped when
// nothing needs them), grad_weight / grad_bias by thread 0, then grad_input
// for the channel's elements by all threads.
template <typename T>
__global__ void bn_backward_kernel(int64_t N, int64_t C, int64_t L, const T* __restrict__ dy,
                                   const T* __restrict__ x, const double* __restrict__ mean,
                                   const double* __restrict__ invstd, const T* __restrict__ w, bool training,
                                   bool sums, T* __restrict__ dx, T* __restrict__ dw, T* __restrict__ db) {
  FC_DYNAMIC_SMEM(double, red);
  const int tid = int(threadIdx.x), nt = int(blockDim.x);
  double* red2 = red + nt;
  const double M = double(N * L);
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    const double mc = mean[c];
    double sdy = 0, sdyx = 0;
    if (sums) {  // uniform: a kernel argument
      double a = 0, b = 0;
      for (ChannelWalk wk(tid, nt, L); wk.n < N; wk.next()) {
        const int64_t i = (wk.n * C + c) * L + wk.l;
        const double g = double(dy[i]);
        a += g;
        b += g * (double(x[i]) - mc);
      }
      red[tid] = a;
      red2[tid] = b;
      __syncthreads();
      for (int off = nt / 2; off > 0; off /= 2) {
        if (tid < off) {
          red[tid] += red[tid + off];
          red2[tid] += red2[tid + off];
        }
        __syncthreads();
      }
      sdy = red[0];
      sdyx = red2[0];
      __syncthreads();  // read by all before the next channel overwrites
    }
    if (tid == 0) {
      if (dw) dw[c] = T(sdyx * invstd[c]);
      if (db) db[c] = T(sdy);
    }
    if (dx) {
      const double gm = w ? double(w[c]) : 1.0;
      const double a = gm * invstd[c];
      const T k1 = T(a), m = T(mc);
      // d/dx through the batch statistics: dx = a (dy - mean(dy) - xhat mean(dy xhat))
      const T k2 = training ? T(-a * invstd[c] * invstd[c] * sdyx / M) : T(0);
      const T k3 = training ? T(-a * sdy / M) : T(0);
      for (ChannelWalk wk(tid, nt, L); wk.n < N; wk.next()) {
        const int64_t i = (wk.n * C + c) * L + wk.l;
        dx[i] = training ? k1 * dy[i] + k2 * (x[i] - m) + k3 : dy[i] * k1;
      }
    }
  }
}

// -------------------------------------------------------------------- LRN
// x viewed as (N, C, L); window of channel c: [c - lo, c + hi] (zero padded).
// One output element per thread; the window sum of squares in float64.
template <typename T>
__device__ __forceinline__ T lrn_base(const T* __restrict__ xn, int64_t C, int64_t L, int64_t l, int64_t c, int64_t lo,
                                      int64_t hi, double k, double coef) {
  const int64_t j0 = c - lo > 0 ? c - lo : 0, j1 = c + hi < C - 1 ? c + hi : C - 1;
  double acc = 0;
  for (int64_t j = j0; j <= j1; ++j) {
    const double v = double(xn[j * L + l]);
    acc += v * v;
  }
  return T(k + coef * acc);
}

template <typename T>
__global__ void lrn_fwd_kernel(int64_t planes, int64_t C, int64_t L, const T* __restrict__ x, int64_t size,
                               double alpha, double beta, double k, T* __restrict__ y) {
  const int64_t lo = size / 2, hi = (size - 1) / 2;
  const double coef = alpha / double(size);
  for (ChannelPlaneWalk it(L, C); it.plane < planes; it.next()) {
    const int64_t c = it.c;
    const T* xn = x + (it.plane - c) * L;  // sample n's (C, L) block
    const int64_t i = it.plane * L + it.off;
    const T b = lrn_base(xn, C, L, it.off, c, lo, hi, k, coef);
    y[i] = x[i] * pow_neg(b, beta);
  }
}

// dx_j = dy_j s_j - 2 alpha beta / size * x_j * sum_{i in [j - hi, j + lo]} dy_i x_i s_i / b_i
// (the windows containing channel j), with s = b^-beta; O(size^2) per element,
// no scratch.
template <typename T>
__global__ void lrn_bwd_kernel(int64_t planes, int64_t C, int64_t L, const T* __restrict__ dy,
                               const T* __restrict__ x, int64_t size, double alpha, double beta, double k,
                               T* __restrict__ dx) {
  const int64_t lo = size / 2, hi = (size - 1) / 2;
  const double coef = alpha / double(size), cgrad = 2.0 * alpha * beta / double(size);
  for (ChannelPlaneWalk it(L, C); it.plane < planes; it.next()) {
    const int64_t j = it.c, l = it.off;
    const int64_t nb = (it.plane - j) * L;
    const T* xn = x + nb;
    const T* dyn = dy + nb;
    const int64_t i0 = j - hi > 0 ? j - hi : 0, i1 = j + lo < C - 1 ? j + lo : C - 1;
    double u = 0;
    for (int64_t i = i0; i <= i1; ++i) {
      const T bi = lrn_base(xn, C, L, l, i, lo, hi, k, coef);
      const T si = pow_neg(bi, beta);
      u += double(dyn[i * L + l] * xn[i * L + l] * si / bi);
    }
    const T bj = lrn_base(xn, C, L, l, j, lo, hi, k, coef);
    const T sj = pow_neg(bj, beta);
    const int64_t e = it.plane * L + l;
    dx[e] = T(double(dy[e] * sj) - cgrad * double(x[e]) * u);
  }
}

// ------------------------------------------------------------------ GEMM
// C (M x N, row stride ldc) = A (M x K) . B (K x N) [+ bias[n]], with A and B
// given by element strides (A(m, k) = A[m*sam + k*sak], B(k, n) = B[k*sbk +
// n*sbn]), so linear's three products need no transposed copies.
//
// Block tile 64 x 64, k slices of 16 staged in shared memory (the next slice
// prefetched into registers while the current one is multiplied), 256
// threads, each computing 4 x 4 outputs in registers: rows ty + 16*i, columns
// tx + 16*j (tx = tid % 16, ty = tid / 16). Bank conflicts (float): in the
// inner loop a warp reads As[k][ty + 16 i] at 2 addresses (broadcast) and
// Bs[k][tx + 16 j] at 16 consecutive words; the tile stores are either
// consecutive words (operand contiguous along m / n) or, when the operand is
// contiguous along k, 16 k's x 2 m's with the row pitch 66 = 2 (mod 32), which
// lands the 32 stores of a warp in 32 distinct banks.
constexpr int kBM = 64, kBN = 64, kBK = 16, kPitch = 66;

// One thread's share of a 64 x 16 operand tile (4 elements), fixed for the
// whole k loop: with the operand contiguous along k, one k column and rows
// r + 16u (16 consecutive threads read 16 consecutive k's); otherwise one row
// and k's kk + 4u (64 consecutive threads read 64 consecutive rows). Pointer
// offsets are precomputed so the k loop only adds.
template <typename T>
struct TileLoad {
  const T* __restrict__ base;  // the thread's element u = 0 at k-slice 0
  int64_t ustep, kstep;        // offset between the thread's elements; per k-slice
  int r, kk, dr, dk;           // tile coordinates of element u = 0, and their per-u steps
  unsigned row_ok;             // bit u: the element's row exists

  __device__ __forceinline__ TileLoad(const T* p, int64_t rows, int64_t r0, int64_t s_row, int64_t s_k, int tid) {
    const bool kc = s_k == 1;
    r = kc ? tid / kBK : tid % 64;
    kk = kc ? tid % kBK : tid / 64;
    dr = kc ? 16 : 0;
    dk = kc ? 0 : 4;
    base = p + (r0 + r) * s_row + int64_t(kk) * s_k;
    ustep = int64_t(dr) * s_row + int64_t(dk) * s_k;
    kstep = int64_t(kBK) * s_k;
    row_ok = 0;
    for (int u = 0; u < 4; ++u)
      if (r0 + r + u * dr < rows) row_ok |= 1u << u;
  }
  // the thread's 4 elements of k-slice `slice` (k0 = slice * 16), zero outside the operand
  __device__ __forceinline__ void load(T (&v)[4], int64_t slice, int64_t K) const {
    const int64_t k0 = slice * kBK;
    const T* p = base + slice * kstep;
#pragma unroll
    for (int u = 0; u < 4; ++u)
      v[u] = ((row_ok >> u) & 1u) && k0 + kk + u * dk < K ? p[u * ustep] : T(0);
  }
  __device__ __forceinline__ void store(const T (&v)[4], T (*tile)[kPitch]) const {
#pragma unroll
    for (int u = 0; u < 4; ++u) tile[kk + u * dk][r + u * dr] = v[u];
  }
};

template <typename T>
__global__ void gemm_kernel(int64_t M, int64_t N, int64_t K, const T* __restrict__ A, int64_t sam, int64_t sak,
                            const T* __restrict__ B, int64_t sbk, int64_t sbn, const T* __restrict__ bias,
                            T* __restrict__ Cm, int64_t ldc) {
  __shared__ T As[kBK][kPitch];
  __shared__ T Bs[kBK][kPitch];
  const int tid = int(threadIdx.x), tx = tid % 16, ty = tid / 16;
  const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  // B seen as an (N x K) operand: row n, k
  const TileLoad<T> la(A, M, m0, sam, sak, tid), lb(B, N, n0, sbn, sbk, tid);
  T acc[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = T(0);
  const int64_t slices = (K + kBK - 1) / kBK;
  T ra[4], rb[4];
  if (slices > 0) {
    la.load(ra, 0, K);
    lb.load(rb, 0, K);
  }
  for (int64_t sl = 0; sl < slices; ++sl) {
    la.store(ra, As);
    lb.store(rb, Bs);
    __syncthreads();
    // the next slice's global loads are in flight while this one is multiplied
    if (sl + 1 < slices) {
      la.load(ra, sl + 1, K);
      lb.load(rb, sl + 1, K);
    }
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      T a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();  // the tile is read by all before the next slice overwrites it
  }
  for (int i = 0; i < 4; ++i) {
    const int64_t gm = m0 + ty + 16 * i;
    if (gm >= M) continue;
    for (int j = 0; j < 4; ++j) {
      const int64_t gn = n0 + tx + 16 * j;
      if (gn < N) Cm[gm * ldc + gn] = bias ? bias[gn] + acc[i][j] : acc[i][j];
    }
  }
}

// db[o] = sum_m dy[m, o]: one column per thread, rows in order, float64 (as the CPU).
template <typename T>
__global__ void colsum_kernel(int64_t M, int64_t O, const T* __restrict__ dy, T* __restrict__ db) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < O; o += step) {
    double acc = 0;
    for (int64_t m = 0; m < M; ++m) acc += double(dy[m * O + o]);
    db[o] = T(acc);
  }
}

template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t sam, int64_t sak, const T* B, int64_t sbk,
          int64_t sbn, const T* bias, T* C, int64_t ldc, void* stream) {
  if (M == 0 || N == 0) return;
  const int64_t gx = (N + kBN - 1) / kBN;
  if (gx > 2147483647) throw std::invalid_argument("linear: too many output columns");
  // grid.y is limited to 65535: row bands of at most 65535 tiles per launch
  const int64_t band = int64_t(65535) * kBM;
  for (int64_t r0 = 0; r0 < M; r0 += band) {
    const int64_t rows = M - r0 < band ? M - r0 : band;
    const dim3 grid(unsigned(gx), unsigned((rows + kBM - 1) / kBM));
    auto k = gemm_kernel<T>;
    FC_LAUNCH(k, grid, dim3(kThreads), 0, FC_STREAM(stream), rows, N, K, A + r0 * sam, sam, sak, B, sbk, sbn, bias,
              C + r0 * ldc, ldc);
  }
}

}  // namespace

// =============================================================== launchers
template <typename T>
void bn_stats(int64_t N, int64_t C, int64_t L, const T* x, double* mean, double* var_biased, void* stream) {
  if (N < 0 || C < 0 || L < 0) throw std::invalid_argument("batch_norm: sizes must be >= 0");
  if (N * L == 0) throw std::invalid_argument("batch_norm: no elements per channel");
  need_32bit(L, "batch_norm: the per-channel plane size L");
  if (C == 0) return;
  const int nt = reduce_threads(N * L);
  auto k = bn_stats_kernel<T>;
  FC_LAUNCH(k, dim3(grid_rows(C)), dim3(unsigned(nt)), 2 * size_t(nt) * sizeof(double), FC_STREAM(stream), N, C, L,
            x, mean, var_biased);
}

template <typename T>
void bn_apply(int64_t N, int64_t C, int64_t L, const T* x, const double* mean, const double* invstd, const T* w,
              const T* b, T* y, void* stream) {
  if (N < 0 || C < 0 || L < 0) throw std::invalid_argument("batch_norm: sizes must be >= 0");
  if (N * C * L == 0) return;
  need_32bit(L, "batch_norm: the per-channel plane size L");
  need_32bit(C, "batch_norm: the channel count");
  auto k = bn_apply_kernel<T>;
  FC_LAUNCH(k, dim3(unsigned(blocks_for(N * C * L, kThreads))), dim3(kThreads), 0, FC_STREAM(stream), N * C, C, L, x,
            mean, invstd, w, b, y);
}

template <typename T>
void bn_backward(int64_t N, int64_t C, int64_t L, const T* dy, const T* x, const double* mean, const double* invstd,
                 const T* w, bool training, T* dx, T* dw, T* db, void* stream) {
  if (N < 0 || C < 0 || L < 0) throw std::invalid_argument("batch_norm: sizes must be >= 0");
  if (N * L == 0) throw std::invalid_argument("batch_norm_backward: no elements per channel");
  need_32bit(L, "batch_norm: the per-channel plane size L");
  if (C == 0) return;
  const bool sums = training || dw || db;
  const int nt = reduce_threads(N * L);
  auto k = bn_backward_kernel<T>;
  FC_LAUNCH(k, dim3(grid_rows(C)), dim3(unsigned(nt)), 2 * size_t(nt) * sizeof(double), FC_STREAM(stream), N, C, L,
            dy, x, mean, invstd, w, training, sums, dx, dw, db);
}

template <typename T>
void lrn_forward(int64_t N, int64_t C, int64_t L, const T* x, int64_t size, double alpha, double beta, double k,
                 T* y, void* stream) {
  if (size < 1) throw std::invalid_argument("lrn: size must be >= 1");
  if (N * C * L == 0) return;
  need_32bit(L, "lrn: the plane size L");
  need_32bit(C, "lrn: the channel count");
  auto kern = lrn_fwd_kernel<T>;
  FC_LAUNCH(kern, dim3(unsigned(blocks_for(N * C * L, kThreads))), dim3(kThreads), 0, FC_STREAM(stream), N * C, C, L,
            x, size, alpha, beta, k, y);
}

template <typename T>
void lrn_backward(int64_t N, int64_t C, int64_t L, const T* dy, const T* x, int64_t size, double alpha, double beta,
                  double k, T* dx, void* stream) {
  if (size < 1) throw std::invalid_argument("lrn: size must be >= 1");
  if (N * C * L == 0) return;
  need_32bit(L, "lrn: the plane size L");
  need_32bit(C, "lrn: the channel count");
  auto kern = lrn_bwd_kernel<T>;
  FC_LAUNCH(kern, dim3(unsigned(blocks_for(N * C * L, kThreads))), dim3(kThreads), 0, FC_STREAM(stream), N * C, C, L,
            dy, x, size, alpha, beta, k, dx);
}

template <typename T>
void activation_forward(int kind, int64_t n, const T* x, T* y, void* stream) {
  if (kind < 0 || kind > 2) throw std::invalid_argument("unknown activation kind");
  if (n <= 0) return;
  const dim3 grid(unsigned(blocks_for(n, kThreads))), block(kThreads);
  if (kind == 0) {
    auto k = act_fwd_kernel<0, T>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), n, x, y);
  } else if (kind == 1) {
    auto k = act_fwd_kernel<1, T>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), n, x, y);
  } else {
    auto k = act_fwd_kernel<2, T>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), n, x, y);
  }
}

template <typename T>
void activation_backward(int kind, int64_t n, const T* dy, const T* y, T* dx, void* stream) {
  if (kind < 0 || kind > 2) throw std::invalid_argument("unknown activation kind");
  if (n <= 0) return;
  const dim3 grid(unsigned(blocks_for(n, kThreads))), block(kThreads);
  if (kind == 0) {
    auto k = act_bwd_kernel<0, T>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), n, dy, y, dx);
  } else if (kind == 1) {
    auto k = act_bwd_kernel<1, T>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), n, dy, y, dx);
  } else {
    auto k = act_bwd_kernel<2, T>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), n, dy, y, dx);
  }
}

template <typename T>
void softmax_forward(bool log, int64_t outer, int64_t D, int64_t inner, const T* x, T* y, void* stream) {
  if (outer < 0 || D < 0 || inner < 0) throw std::invalid_argument("softmax: sizes must be >= 0");
  if (outer * D * inner == 0) return;
  if (inner == 1) {
    const int nt = reduce_threads(D);
    const dim3 grid(grid_rows(outer)), block = dim3(unsigned(nt));
    const size_t smem = size_t(nt) * sizeof(double);
    if (log) {
      auto k = softmax_rows_kernel<true, T>;
      FC_LAUNCH(k, grid, block, smem, FC_STREAM(stream), outer, D, x, y);
    } else {
      auto k = softmax_rows_kernel<false, T>;
      FC_LAUNCH(k, grid, block, smem, FC_STREAM(stream), outer, D, x, y);
    }
    return;
  }
  need_32bit(inner, "softmax: the inner size");
  const dim3 grid(unsigned(blocks_for(outer * inner, kThreads))), block(kThreads);
  if (log) {
    auto k = softmax_cols_kernel<true, T>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), outer, D, inner, x, y);
  } else {
    auto k = softmax_cols_kernel<false, T>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), outer, D, inner, x, y);
  }
}

template <typename T>
void softmax_backward(bool log, int64_t outer, int64_t D, int64_t inner, const T* dy, const T* y, T* dx,
                      void* stream) {
  if (outer < 0 || D < 0 || inner < 0) throw std::invalid_argument("softmax: sizes must be >= 0");
  if (outer * D * inner == 0) return;
  if (inner == 1) {
    const int nt = reduce_threads(D);
    const dim3 grid(grid_rows(outer)), block = dim3(unsigned(nt));
    const size_t smem = size_t(nt) * sizeof(double);
    if (log) {
      auto k = softmax_rows_bwd_kernel<true, T>;
      FC_LAUNCH(k, grid, block, smem, FC_STREAM(stream), outer, D, dy, y, dx);
    } else {
      auto k = softmax_rows_bwd_kernel<false, T>;
      FC_LAUNCH(k, grid, block, smem, FC_STREAM(stream), outer, D, dy, y, dx);
    }
    return;
  }
  need_32bit(inner, "softmax: the inner size");
  const dim3 grid(unsigned(blocks_for(outer * inner, kThreads))), block(kThreads);
  if (log) {
    auto k = softmax_cols_bwd_kernel<true, T>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), outer, D, inner, dy, y, dx);
  } else {
    auto k = softmax_cols_bwd_kernel<false, T>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), outer, D, inner, dy, y, dx);
  }
}

template <typename T>
void cross_entropy_fused(int64_t N, int64_t C, const T* logits, const int64_t* target, int64_t ignore_index,
                         double label_smoothing, double grad_scale, double* row_loss, T* grad, void* stream) {
  if (N < 0 || C < 0) throw std::invalid_argument("cross_entropy: sizes must be >= 0");
  if (N == 0) return;
  if (C == 0) throw std::invalid_argument("cross_entropy: no classes");
  const int nt = reduce_threads(C);
  auto k = ce_kernel<T>;
  FC_LAUNCH(k, dim3(grid_rows(N)), dim3(unsigned(nt)), size_t(nt) * sizeof(double), FC_STREAM(stream), N, C, logits,
            target, ignore_index, label_smoothing, grad_scale, row_loss, grad);
}

template <typename T>
void dropout_forward(int64_t n, const T* x, uint64_t seed, uint64_t offset, uint64_t threshold, T scale, T* y,
                     uint8_t* mask, void* stream) {
  if (n <= 0) return;
  const uint64_t key = splitmix64(seed);
  const uint32_t thr = uint32_t(threshold < 0xFFFFFFFFull ? threshold : 0xFFFFFFFFull);
  auto k = dropout_kernel<T>;
  FC_LAUNCH(k, dim3(unsigned(blocks_for(n, kThreads))), dim3(kThreads), 0, FC_STREAM(stream), n, x, uint32_t(key),
            uint32_t(key >> 32), offset, thr, scale, y, mask);
}

template <typename T>
void dropout_backward(int64_t n, const T* dy, const uint8_t* mask, T scale, T* dx, void* stream) {
  if (n <= 0) return;
  auto k = dropout_bwd_kernel<T>;
  FC_LAUNCH(k, dim3(unsigned(blocks_for(n, kThreads))), dim3(kThreads), 0, FC_STREAM(stream), n, dy, mask, scale, dx);
}

template <typename T>
void linear_forward(int64_t M, int64_t I, int64_t O, const T* x, const T* w, const T* b, T* y, void* stream) {
  if (M < 0 || I < 0 || O < 0) throw std::invalid_argument("linear: sizes must be >= 0");
  // y (M x O) = x (M x I) . w^T: B(k, n) = w[n*I + k]
  gemm<T>(M, O, I, x, I, 1, w, 1, I, b, y, O, stream);
}

template <typename T>
void linear_backward(int64_t M, int64_t I, int64_t O, const T* dy, const T* x, const T* w, T* dx, T* dw, T* db,
                     void* stream) {
  if (M < 0 || I < 0 || O < 0) throw std::invalid_argument("linear: sizes must be >= 0");
  if (dx) gemm<T>(M, I, O, dy, O, 1, w, I, 1, nullptr, dx, I, stream);  // dy (M x O) . w (O x I)
  if (dw) gemm<T>(O, I, M, dy, 1, O, x, I, 1, nullptr, dw, I, stream);  // dy^T (O x M) . x (M x I)
  if (db && O > 0) {
    auto k = colsum_kernel<T>;
    FC_LAUNCH(k, dim3(unsigned(blocks_for(O, kThreads))), dim3(kThreads), 0, FC_STREAM(stream), M, O, dy, db);
  }
}

#define FC_INSTANTIATE(T)                                                                                         \
  template void bn_stats<T>(int64_t, int64_t, int64_t, const T*, double*, double*, void*);                        \
  template void bn_apply<T>(int64_t, int64_t, int64_t, const T*, const double*, const double*, const T*, const T*, \
                            T*, void*);                                                                           \
  template void bn_backward<T>(int64_t, int64_t, int64_t, const T*, const T*, const double*, const double*,       \
                               const T*, bool, T*, T*, T*, void*);                                                \
  template void lrn_forward<T>(int64_t, int64_t, int64_t, const T*, int64_t, double, double, double, T*, void*);  \
  template void lrn_backward<T>(int64_t, int64_t, int64_t, const T*, const T*, int64_t, double, double, double,   \
                                T*, void*);                                                                       \
  template void activation_forward<T>(int, int64_t, const T*, T*, void*);                                         \
  template void activation_backward<T>(int, int64_t, const T*, const T*, T*, void*);                              \
  template void softmax_forward<T>(bool, int64_t, int64_t, int64_t, const T*, T*, void*);                         \
  template void softmax_backward<T>(bool, int64_t, int64_t, int64_t, const T*, const T*, T*, void*);              \
  template void cross_entropy_fused<T>(int64_t, int64_t, const T*, const int64_t*, int64_t, double, double,       \
                                       double*, T*, void*);                                                       \
  template void dropout_forward<T>(int64_t, const T*, uint64_t, uint64_t, uint64_t, T, T*, uint8_t*, void*);      \
  template void dropout_backward<T>(int64_t, const T*, const uint8_t*, T, T*, void*);                             \
  template void linear_forward<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, T*, void*);            \
  template void linear_backward<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, T*, T*, T*, void*);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
#undef FC_INSTANTIATE

}  // namespace cuda
}  // namespace fastconv
