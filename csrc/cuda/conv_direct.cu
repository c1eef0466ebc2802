// Direct convolution kernels (the always-correct CUDA fallback), float and
// double. Index arithmetic is int64_t throughout: N*C*H*W passes 2^31 on
// ordinary training batches. Every kernel walks its elements with a
// grid-stride loop so the grid can be capped.
#include "fastconv/cuda_compat.h"
#include "fastconv/conv_cuda.h"
#include "fastconv/problem.h"

namespace fastconv {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

int64_t blocks_for(int64_t work, int64_t threads) {
  const int64_t b = (work + threads - 1) / threads;
  return b < kMaxBlocks ? b : kMaxBlocks;
}

// Fprop: one output element (n, k, p, q) per thread; bias and ReLU fused.
template <typename T, bool kRelu>
__global__ void __launch_bounds__(kThreads)
    direct_fprop_kernel(ConvProblem p, const T* __restrict__ x, const T* __restrict__ w,
                        const T* __restrict__ bias, T* __restrict__ y) {
  const int64_t total = p.output_elems();
  const int64_t Cg = p.Cg(), Kg = p.Kg(), HW = p.H * p.W, RS = p.R * p.S;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t q = i % p.Q;
    int64_t t = i / p.Q;
    const int64_t op = t % p.P;
    t /= p.P;
    const int64_t k = t % p.K;
    const int64_t n = t / p.K;
    const int64_t g = k / Kg;
    const T* xg = x + (n * p.C + g * Cg) * HW;
    const T* wk = w + k * Cg * RS;
    const int64_t h0 = op * p.stride_h - p.pad_h, w0 = q * p.stride_w - p.pad_w;
    T acc = T(0);
    for (int64_t c = 0; c < Cg; ++c) {
      for (int64_t r = 0; r < p.R; ++r) {
        const int64_t h = h0 + r * p.dil_h;
        if (h < 0 || h >= p.H) continue;
        const T* xrow = xg + c * HW + h * p.W;
        const T* wrow = wk + (c * p.R + r) * p.S;
        for (int64_t s = 0; s < p.S; ++s) {
          const int64_t ww = w0 + s * p.dil_w;
          if (ww < 0 || ww >= p.W) continue;
          acc += xrow[ww] * wrow[s];
        }
      }
    }
    if (bias) acc += bias[k];
    if (kRelu) acc = relu_value(acc);
    y[i] = acc;
  }
}

// Fprop, register-tiled: each thread computes kTK output channels x kTQ
// consecutive output columns of one output row (n, group, channel tile, p,
// column tile). Per tap it loads kTK weights and kTQ inputs into registers
// and does kTK*kTQ multiply-adds with them (16 FMAs per 8 loads instead of
// 1 per 2). Channel tiles stay inside a group; tails are masked.
constexpr int kTK = 4, kTQ = 4;

template <typename T, bool kRelu>
__global__ void __launch_bounds__(kThreads)
    direct_fprop_tiled_kernel(ConvProblem p, const T* __restrict__ x, const T* __restrict__ w,
                              const T* __restrict__ bias, T* __restrict__ y) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), HW = p.H * p.W, RS = p.R * p.S, CRS = Cg * RS;
  const int64_t kt = (Kg + kTK - 1) / kTK, qt = (p.Q + kTQ - 1) / kTQ;
  const int64_t total = p.N * p.groups * kt * p.P * qt;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t qb = i % qt;
    int64_t t = i / qt;
    const int64_t op = t % p.P;
    t /= p.P;
    const int64_t kb = t % kt;
    t /= kt;
    const int64_t g = t % p.groups;
    const int64_t n = t / p.groups;
    const int64_t k0 = g * Kg + kb * kTK, q0 = qb * kTQ;  // first output channel / column of the tile
    const int nk = int(Kg - kb * kTK < kTK ? Kg - kb * kTK : kTK);
    const int nq = int(p.Q - q0 < kTQ ? p.Q - q0 : kTQ);
    const T* xg = x + (n * p.C + g * Cg) * HW;
    const T* wk = w + k0 * CRS;
    const int64_t h0 = op * p.stride_h - p.pad_h, w0 = q0 * p.stride_w - p.pad_w;
    T acc[kTK][kTQ];
#pragma unroll
    for (int a = 0; a < kTK; ++a)
#pragma unroll
      for (int b = 0; b < kTQ; ++b) acc[a][b] = T(0);
    for (int64_t c = 0; c < Cg; ++c) {
      for (int64_t r = 0; r < p.R; ++r) {
        const int64_t h = h0 + r * p.dil_h;
        if (h < 0 || h >= p.H) continue;
        const T* xrow = xg + c * HW + h * p.W;
        const T* wrow = wk + (c * p.R + r) * p.S;
        for (int64_t s = 0; s < p.S; ++s) {
          T wv[kTK], xv[kTQ];
#pragma unroll
          for (int a = 0; a < kTK; ++a) wv[a] = a < nk ? wrow[a * CRS + s] : T(0);
          const int64_t ws = w0 + s * p.dil_w;
#pragma unroll
          for (int b = 0; b < kTQ; ++b) {
            const int64_t ww = ws + b * p.stride_w;
            xv[b] = (b < nq && ww >= 0 && ww < p.W) ? xrow[ww] : T(0);
          }
#pragma unroll
          for (int a = 0; a < kTK; ++a)
#pragma unroll
            for (int b = 0; b < kTQ; ++b) acc[a][b] += wv[a] * xv[b];
        }
      }
    }
#pragma unroll
    for (int a = 0; a < kTK; ++a) {
      if (a >= nk) continue;
      const T bv = bias ? bias[k0 + a] : T(0);
      T* yrow = y + ((n * p.K + k0 + a) * p.P + op) * p.Q + q0;
#pragma unroll
      for (int b = 0; b < kTQ; ++b) {
        if (b >= nq) continue;
        T v = acc[a][b] + bv;
        if (kRelu) v = relu_value(v);
        yrow[b] = v;
      }
    }
  }
}

// Dgrad as a gather: one input element (n, c, h, w) per thread sums over the
// output positions whose window covers it, so no two threads write the same
// element (deterministic, no atomics).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    direct_dgrad_kernel(ConvProblem p, const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx) {
  const int64_t total = p.input_elems();
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, RS = p.R * p.S;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t iw = i % p.W;
    int64_t t = i / p.W;
    const int64_t ih = t % p.H;
    t /= p.H;
    const int64_t c = t % p.C;
    const int64_t n = t / p.C;
    const int64_t g = c / Cg, cc = c % Cg;
    const T* dyg = dy + (n * p.K + g * Kg) * PQ;
    const T* wg = w + (g * Kg * Cg + cc) * RS;
    T acc = T(0);
    for (int64_t r = 0; r < p.R; ++r) {
      const int64_t th = ih + p.pad_h - r * p.dil_h;
      if (th < 0) break;  // grows more negative with r
      if (th % p.stride_h) continue;
      const int64_t op = th / p.stride_h;
      if (op >= p.P) continue;
      for (int64_t s = 0; s < p.S; ++s) {
        const int64_t tw = iw + p.pad_w - s * p.dil_w;
        if (tw < 0) break;
        if (tw % p.stride_w) continue;
        const int64_t oq = tw / p.stride_w;
        if (oq >= p.Q) continue;
        const T* d = dyg + op * p.Q + oq;
        const T* wr = wg + r * p.S + s;
        for (int64_t k = 0; k < Kg; ++k) acc += d[k * PQ] * wr[k * Cg * RS];
      }
    }
    dx[i] = acc;
  }
}

// Dgrad as a gather, register-tiled: each thread owns kTC input channels x
// kTW input columns of one input row. The columns are one stride phase apart
// (w = pw + m*stride_w for kTW consecutive m), so every column of the tile is
// reached by the same taps s, at consecutive output columns: per (tap, output
// channel) the thread loads kTW dy values and kTC weights into registers and
// does kTC*kTW multiply-adds with them. Each dx element belongs to exactly one
// (phase, column tile) and is written once by its thread: no atomics.
constexpr int kTC = 4, kTW = 4;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    direct_dgrad_tiled_kernel(ConvProblem p, const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, RS = p.R * p.S;
  const int64_t ct = (Cg + kTC - 1) / kTC;
  const int64_t qt = ((p.W + p.stride_w - 1) / p.stride_w + kTW - 1) / kTW;  // column tiles of the widest phase
  const int64_t total = p.N * p.groups * ct * p.H * p.stride_w * qt;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t qb = i % qt;
    int64_t t = i / qt;
    const int64_t pw = t % p.stride_w;
    t /= p.stride_w;
    const int64_t ih = t % p.H;
    t /= p.H;
    const int64_t cb = t % ct;
    t /= ct;
    const int64_t g = t % p.groups;
    const int64_t n = t / p.groups;
    const int64_t m0 = qb * kTW;                     // first column of the tile within its phase
    const int64_t iw0 = pw + m0 * p.stride_w;        // its input column
    if (iw0 >= p.W) continue;                        // a narrower phase: no column here
    const int nc = int(Cg - cb * kTC < kTC ? Cg - cb * kTC : kTC);
    const T* dyg = dy + (n * p.K + g * Kg) * PQ;
    const T* wg = w + (g * Kg * Cg + cb * kTC) * RS;  // w[g*Kg + k, cb*kTC + c, r, s] = wg[(k*Cg + c)*RS + r*S + s]
    T acc[kTC][kTW];
#pragma unroll
    for (int a = 0; a < kTC; ++a)
#pragma unroll
      for (int b = 0; b < kTW; ++b) acc[a][b] = T(0);
    for (int64_t r = 0; r < p.R; ++r) {
      const int64_t th = ih + p.pad_h - r * p.dil_h;
      if (th < 0) break;  // grows more negative with r
      if (th % p.stride_h) continue;
      const int64_t op = th / p.stride_h;
      if (op >= p.P) continue;
      for (int64_t s = 0; s < p.S; ++s) {
        // column iw0 + b*stride_w meets tap s at output column (iw0 + pad - s*dil)/stride + b
        const int64_t tw = iw0 + p.pad_w - s * p.dil_w;
        if (tw % p.stride_w) continue;  // the whole tile is on another phase of this tap (also for tw < 0)
        const int64_t oq0 = tw >= 0 ? tw / p.stride_w : -((-tw) / p.stride_w);  // exact
        int64_t off[kTW];
        bool ok[kTW];
#pragma unroll
        for (int b = 0; b < kTW; ++b) {
          const int64_t oq = oq0 + b;
          ok[b] = oq >= 0 && oq < p.Q && iw0 + b * p.stride_w < p.W;
          off[b] = op * p.Q + oq;
        }
        const T* wrs = wg + r * p.S + s;
        for (int64_t k = 0; k < Kg; ++k) {
          T dv[kTW], wv[kTC];
#pragma unroll
          for (int b = 0; b < kTW; ++b) dv[b] = ok[b] ? dyg[k * PQ + off[b]] : T(0);
#pragma unroll
          for (int a = 0; a < kTC; ++a) wv[a] = a < nc ? wrs[(k * Cg + a) * RS] : T(0);
#pragma unroll
          for (int a = 0; a < kTC; ++a)
#pragma unroll
            for (int b = 0; b < kTW; ++b) acc[a][b] += wv[a] * dv[b];
        }
      }
    }
#pragma unroll
    for (int a = 0; a < kTC; ++a) {
      if (a >= nc) continue;
      T* dxrow = dx + ((n * p.C + g * Cg + cb * kTC + a) * p.H + ih) * p.W;
#pragma unroll
      for (int b = 0; b < kTW; ++b) {
        const int64_t iw = iw0 + b * p.stride_w;
        if (iw < p.W) dxrow[iw] = acc[a][b];
      }
    }
  }
}

// Wgrad: one weight element (k, c, r, s) per block. Each thread sums a fixed,
// strided slice of N*P*Q; the block then reduces in shared memory with a
// fixed-order tree, so the result does not depend on timing (deterministic).
// blockDim.x must be a power of two.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    direct_wgrad_kernel(ConvProblem p, const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dw) {
  FC_DYNAMIC_SMEM(T, red);
  const int tid = int(threadIdx.x);
  const int nt = int(blockDim.x);
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, NPQ = p.N * PQ, HW = p.H * p.W;
  const int64_t total = p.weight_elems();
  // the loop bound depends on blockIdx only: every thread of a block takes
  // the same trips, so the barriers inside are reached by all of them
  for (int64_t e = blockIdx.x; e < total; e += gridDim.x) {
    const int64_t s = e % p.S;
    int64_t t = e / p.S;
    const int64_t r = t % p.R;
    t /= p.R;
    const int64_t cc = t % Cg;
    const int64_t k = t / Cg;
    const int64_t c = (k / Kg) * Cg + cc;
    const int64_t dh = r * p.dil_h - p.pad_h, dwo = s * p.dil_w - p.pad_w;
    T acc = T(0);
    for (int64_t j = tid; j < NPQ; j += nt) {
      const int64_t n = j / PQ, pq = j % PQ;
      const int64_t h = (pq / p.Q) * p.stride_h + dh;
      const int64_t ww = (pq % p.Q) * p.stride_w + dwo;
      if (h < 0 || h >= p.H || ww < 0 || ww >= p.W) continue;
      acc += x[(n * p.C + c) * HW + h * p.W + ww] * dy[(n * p.K + k) * PQ + pq];
    }
    red[tid] = acc;
    __syncthreads();
    for (int off = nt / 2; off > 0; off /= 2) {
      if (tid < off) red[tid] += red[tid + off];
      __syncthreads();
    }
    if (tid == 0) dw[e] = red[0];
    __syncthreads();  // red[0] is read before the next element overwrites red
  }
}

template <typename T>
void launch_fprop_tiled(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu,
                        void* stream) {
  const int64_t total = p.N * p.groups * ((p.Kg() + kTK - 1) / kTK) * p.P * ((p.Q + kTQ - 1) / kTQ);
  if (total == 0) return;
  const dim3 grid(unsigned(blocks_for(total, kThreads))), block(kThreads);
  if (relu) {
    auto k = direct_fprop_tiled_kernel<T, true>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), p, x, w, bias, y);
  } else {
    auto k = direct_fprop_tiled_kernel<T, false>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), p, x, w, bias, y);
  }
}

template <typename T>
void launch_fprop_naive(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu,
                        void* stream) {
  const int64_t total = p.output_elems();
  if (total == 0) return;
  const dim3 grid(unsigned(blocks_for(total, kThreads))), block(kThreads);
  if (relu) {
    auto k = direct_fprop_kernel<T, true>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), p, x, w, bias, y);
  } else {
    auto k = direct_fprop_kernel<T, false>;
    FC_LAUNCH(k, grid, block, 0, FC_STREAM(stream), p, x, w, bias, y);
  }
}

template <typename T>
void launch_dgrad_tiled(const ConvProblem& p, const T* dy, const T* w, T* dx, void* stream) {
  const int64_t qt = ((p.W + p.stride_w - 1) / p.stride_w + kTW - 1) / kTW;
  const int64_t total = p.N * p.groups * ((p.Cg() + kTC - 1) / kTC) * p.H * p.stride_w * qt;
  if (total == 0) return;
  auto k = direct_dgrad_tiled_kernel<T>;
  FC_LAUNCH(k, dim3(unsigned(blocks_for(total, kThreads))), dim3(kThreads), 0, FC_STREAM(stream), p, dy, w, dx);
}

template <typename T>
void launch_dgrad_naive(const ConvProblem& p, const T* dy, const T* w, T* dx, void* stream) {
  const int64_t total = p.input_elems();
  if (total == 0) return;
  auto k = direct_dgrad_kernel<T>;
  FC_LAUNCH(k, dim3(unsigned(blocks_for(total, kThreads))), dim3(kThreads), 0, FC_STREAM(stream), p, dy, w, dx);
}

}  // namespace

bool direct_fprop_tiled(const ConvProblem& p) { return p.Kg() >= 2 && p.Q >= 2; }
bool direct_dgrad_tiled(const ConvProblem& p) { return p.Cg() >= 2 && (p.W + p.stride_w - 1) / p.stride_w >= 2; }

template <typename T>
void direct_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu, void* stream) {
  check_problem(p);
  if (direct_fprop_tiled(p)) launch_fprop_tiled<T>(p, x, w, bias, y, relu, stream);
  else launch_fprop_naive<T>(p, x, w, bias, y, relu, stream);
}

#if defined(FC_EMU_TEST_HOOKS)
template <typename T>
void direct_fprop_variant(bool tiled, const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu) {
  check_problem(p);
  if (tiled) launch_fprop_tiled<T>(p, x, w, bias, y, relu, nullptr);
  else launch_fprop_naive<T>(p, x, w, bias, y, relu, nullptr);
}
template <typename T>
void direct_dgrad_variant(bool tiled, const ConvProblem& p, const T* dy, const T* w, T* dx) {
  check_problem(p);
  if (tiled) launch_dgrad_tiled<T>(p, dy, w, dx, nullptr);
  else launch_dgrad_naive<T>(p, dy, w, dx, nullptr);
}
template void direct_dgrad_variant<float>(bool, const ConvProblem&, const float*, const float*, float*);
template void direct_dgrad_variant<double>(bool, const ConvProblem&, const double*, const double*, double*);
template void direct_fprop_variant<float>(bool, const ConvProblem&, const float*, const float*, const float*, float*,
                                          bool);
template void direct_fprop_variant<double>(bool, const ConvProblem&, const double*, const double*, const double*,
                                           double*, bool);
#endif

template <typename T>
void direct_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx, void* stream) {
  check_problem(p);
  if (direct_dgrad_tiled(p)) launch_dgrad_tiled<T>(p, dy, w, dx, stream);
  else launch_dgrad_naive<T>(p, dy, w, dx, stream);
}

template <typename T>
void direct_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw, void* stream) {
  check_problem(p);
  const int64_t total = p.weight_elems();
  if (total == 0) return;
  // about 8 products per thread before the reduction, 32..256 threads: the
  // block size depends on the problem only, so the summation order (and the
  // result) is the same on every device
  const int64_t npq = p.N * p.P * p.Q;
  int threads = 32;
  while (threads < kThreads && int64_t(threads) * 8 < npq) threads *= 2;
  const int64_t blocks = total < kMaxBlocks ? total : kMaxBlocks;
  auto k = direct_wgrad_kernel<T>;
  FC_LAUNCH(k, dim3(unsigned(blocks)), dim3(unsigned(threads)), size_t(threads) * sizeof(T), FC_STREAM(stream), p,
            x, dy, dw);
}

#define FC_INSTANTIATE(T)                                                                               \
  template void direct_fprop<T>(const ConvProblem&, const T*, const T*, const T*, T*, bool, void*); \
  template void direct_dgrad<T>(const ConvProblem&, const T*, const T*, T*, void*);                 \
  template void direct_wgrad<T>(const ConvProblem&, const T*, const T*, T*, void*);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
#undef FC_INSTANTIATE

}  // namespace cuda
}  // namespace fastconv
