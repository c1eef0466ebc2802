// Separable 1 x n / n x 1 convolution (Inception v3's factorized kernels),
// float and double, groups == 1, any stride / padding / dilation.
//
// Both shapes run the same kernels on a `Line` view of the problem: the axis
// that carries the n taps is "the line" (W for 1 x n, H for n x 1) and the
// other axis is "the cross axis" (kernel size 1 there, so each output line
// reads exactly one input line, or only padding). The view holds the element
// distances along both axes, so an n x 1 kernel walks columns (distance W)
// exactly as a 1 x n kernel walks rows (distance 1).
//
// Fprop: a block of 128 threads owns 32 consecutive output positions of one
//   output line (image n, cross position oc) and 16 output channels; thread
//   (lane = tid / 32, j = tid % 32) accumulates 4 output channels at position
//   j in registers. Input channels are staged `cs` at a time (a problem-fixed
//   count <= 8 that fits 48 KiB): the input segment the 32 windows cover
//   (31*stride + (n-1)*dil + 1 elements per channel) and the 16 x cs x n
//   weights, in dynamic shared memory; each staged input value feeds 4
//   channels from registers. Bias and ReLU are fused into the store.
// Dgrad: a gather, 32 input positions x 16 input channels per block, each
//   thread 4 channels at one position; output channels are staged cs at a
//   time with the output segment that reaches the 32 positions. Every dx
//   element is written exactly once (a whole line that no output line reads,
//   stride > 1 on the cross axis, is written as zeros); no atomics.
// Wgrad: a block owns 16 output channels x 8 input channels x 8 taps (tap
//   groups in grid.z); thread (k, c) keeps 8 tap sums in registers and walks
//   every (n, output line, segment) in one fixed order, staging the dy
//   segment and the input span per step. One block per weight tile, no
//   atomics, no split: the summation order is a function of the problem only
//   (deterministic, bit-identical run to run).
#include "fastconv/cuda_compat.h"
#include "fastconv/conv_cuda.h"
#include "fastconv/problem.h"

namespace fastconv {
namespace cuda {
namespace {

constexpr int kSeg = 32;                // positions along the line per block (Fprop / Dgrad)
constexpr int kLanes = 4;               // channel lanes per block
constexpr int kNT = kSeg * kLanes;      // 128 threads
constexpr int kCPT = 4;                 // channels per thread (registers)
constexpr int kChan = kLanes * kCPT;    // 16 channels per block
constexpr int kStage = 8;               // at most this many reduction channels staged per step
constexpr int kWK = 16, kWC = 8;        // Wgrad: output x input channels per block
constexpr int kWTaps = 8;               // Wgrad: taps per block
static_assert(kWK * kWC == kNT, "Wgrad: one (k, c) pair per thread");
constexpr int64_t kSmemBytes = 48 * 1024;  // dynamic shared memory without opt-in

// The problem seen along the kernel's line (see the top of the file).
struct Line {
  int64_t N, C, K;
  int64_t in_len, out_len;      // along the line
  int64_t in_cross, out_cross;  // along the cross axis
  int64_t taps, stride, pad, dil;
  int64_t cstride, cpad;        // cross axis (kernel size 1: dilation irrelevant)
  int64_t in_step, in_cstep;    // element distance between neighbours along the line / cross axis (input)
  int64_t out_step, out_cstep;  // the same for the output
  int64_t in_plane, out_plane;  // H*W, P*Q
};

Line line_of(const ConvProblem& p) {
  Line L{};
  L.N = p.N;
  L.C = p.C;
  L.K = p.K;
  L.in_plane = p.H * p.W;
  L.out_plane = p.P * p.Q;
  if (p.R == 1) {  // 1 x n (and 1 x 1): the line is a row
    L.in_len = p.W, L.out_len = p.Q, L.in_cross = p.H, L.out_cross = p.P;
    L.taps = p.S, L.stride = p.stride_w, L.pad = p.pad_w, L.dil = p.dil_w;
    L.cstride = p.stride_h, L.cpad = p.pad_h;
    L.in_step = 1, L.in_cstep = p.W, L.out_step = 1, L.out_cstep = p.Q;
  } else {  // n x 1: the line is a column
    L.in_len = p.H, L.out_len = p.P, L.in_cross = p.W, L.out_cross = p.Q;
    L.taps = p.R, L.stride = p.stride_h, L.pad = p.pad_h, L.dil = p.dil_h;
    L.cstride = p.stride_w, L.cpad = p.pad_w;
    L.in_step = p.W, L.in_cstep = 1, L.out_step = p.Q, L.out_cstep = 1;
  }
  return L;
}

// Elements of one staged channel.
FC_HOST_DEVICE inline int64_t fprop_span(const Line& L) { return (kSeg - 1) * L.stride + (L.taps - 1) * L.dil + 1; }
FC_HOST_DEVICE inline int64_t dgrad_span(const Line& L) {
  return ((kSeg - 1) + (L.taps - 1) * L.dil) / L.stride + 2;
}
FC_HOST_DEVICE inline int64_t wgrad_span(const Line& L, int64_t seg) {
  return (seg - 1) * L.stride + (kWTaps - 1) * L.dil + 1;
}

// Reduction channels staged per step: as many as fit (<= kStage); 0 = none fits.
int64_t stage_channels(int64_t span, int64_t taps, int64_t elem) {
  const int64_t per = (span + int64_t(kChan) * taps) * elem;
  int64_t cs = kSmemBytes / per;
  return cs > kStage ? kStage : cs;
}
// Wgrad positions per step: the longest segment (<= kSeg) whose stage fits; 0 = none.
int64_t wgrad_seg(const Line& L, int64_t elem) {
  for (int64_t seg = kSeg; seg >= 1; --seg)
    if ((kWK * seg + kWC * wgrad_span(L, seg)) * elem <= kSmemBytes) return seg;
  return 0;
}

// ------------------------------------------------------------------- Fprop
template <typename T, bool kRelu>
__global__ void __launch_bounds__(kNT)
    sep_fprop_kernel(Line L, int64_t cs, const T* __restrict__ x, const T* __restrict__ w,
                     const T* __restrict__ bias, T* __restrict__ y) {
  FC_DYNAMIC_SMEM(T, smem);
  // in-block sizes and offsets fit 32 bits: the stage fits 48 KiB (separable_supports),
  // so no 64-bit division (a called subroutine on the GPU) runs inside the loops
  const int span = int(fprop_span(L)), taps = int(L.taps), stride = int(L.stride), dil = int(L.dil);
  const int ics = int(cs), wstage = ics * taps;
  T* sx = smem;               // [cs][span]
  T* sw = smem + ics * span;  // [kChan][cs][taps]
  const int tid = int(threadIdx.x), j = tid % kSeg, lane = tid / kSeg;
  const int64_t segs = (L.out_len + kSeg - 1) / kSeg;
  int64_t b = int64_t(blockIdx.x);
  const int64_t seg = b % segs;
  b /= segs;
  const int64_t oc = b % L.out_cross, n = b / L.out_cross;
  const int64_t k0 = int64_t(blockIdx.y) * kChan;
  const int64_t o0 = seg * kSeg, i0 = o0 * L.stride - L.pad;
  const int64_t ic = oc * L.cstride - L.cpad;  // the one input line this output line reads

  T acc[kCPT];
#pragma unroll
  for (int i = 0; i < kCPT; ++i) acc[i] = T(0);

  if (ic >= 0 && ic < L.in_cross) {  // uniform over the block: the barriers below are reached by all
    const T* xn = x + n * L.C * L.in_plane + ic * L.in_cstep;
    for (int64_t c0 = 0; c0 < L.C; c0 += ics) {
      for (int e = tid; e < ics * span; e += kNT) {
        const int cc = e / span;
        const int64_t c = c0 + cc, i = i0 + (e - cc * span);
        sx[e] = (c < L.C && i >= 0 && i < L.in_len) ? xn[c * L.in_plane + i * L.in_step] : T(0);
      }
      for (int e = tid; e < kChan * wstage; e += kNT) {
        const int kk = e / wstage, r = e - kk * wstage, cc = r / taps;
        const int64_t k = k0 + kk, c = c0 + cc;
        sw[e] = (k < L.K && c < L.C) ? w[(k * L.C + c) * taps + (r - cc * taps)] : T(0);
      }
      __syncthreads();
      for (int cc = 0; cc < ics; ++cc) {
        const T* xr = sx + cc * span + j * stride;
        const T* wr = sw + (lane * kCPT * ics + cc) * taps;
        for (int t = 0; t < taps; ++t) {
          const T v = xr[t * dil];
#pragma unroll
          for (int i = 0; i < kCPT; ++i) acc[i] += v * wr[i * wstage + t];
        }
      }
      __syncthreads();  // the stage is overwritten by the next step
    }
  }

  const int64_t o = o0 + j;
  if (o >= L.out_len) return;
#pragma unroll
  for (int i = 0; i < kCPT; ++i) {
    const int64_t k = k0 + lane * kCPT + i;
    if (k >= L.K) continue;
    T v = acc[i];
    if (bias) v += bias[k];
    if (kRelu) v = relu_value(v);
    y[(n * L.K + k) * L.out_plane + oc * L.out_cstep + o * L.out_step] = v;
  }
}

// ------------------------------------------------------------------- Dgrad
template <typename T>
__global__ void __launch_bounds__(kNT)
    sep_dgrad_kernel(Line L, int64_t cs, const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx) {
  FC_DYNAMIC_SMEM(T, smem);
  // 32-bit in-block index math, as in the Fprop kernel
  const int span = int(dgrad_span(L)), taps = int(L.taps), stride = int(L.stride), dil = int(L.dil);
  const int ics = int(cs), wstage = ics * taps;
  T* sd = smem;               // [cs][span]: dy at output positions o_lo ...
  T* sw = smem + ics * span;  // [kChan][cs][taps]
  const int tid = int(threadIdx.x), j = tid % kSeg, lane = tid / kSeg;
  const int64_t segs = (L.in_len + kSeg - 1) / kSeg;
  int64_t b = int64_t(blockIdx.x);
  const int64_t seg = b % segs;
  b /= segs;
  const int64_t ic = b % L.in_cross, n = b / L.in_cross;
  const int64_t c0 = int64_t(blockIdx.y) * kChan;
  const int64_t i0 = seg * kSeg, i = i0 + j;
  // the output line that reads input line ic (none: off the cross stride grid, or past the output)
  const int64_t tc = ic + L.cpad;
  const int64_t oc = tc / L.cstride;
  const bool line_hit = tc % L.cstride == 0 && oc < L.out_cross;
  // first output position any of the 32 input positions receives from
  const int64_t lo_num = i0 + L.pad - (taps - 1) * L.dil;
  const int64_t o_lo = lo_num <= 0 ? 0 : (lo_num + L.stride - 1) / L.stride;
  // i + pad = qb*stride + bm + j: the tap test below needs only 32-bit remainders
  const int64_t qb = (i0 + L.pad) / L.stride;
  const int bm = int(i0 + L.pad - qb * L.stride);

  T acc[kCPT];
#pragma unroll
  for (int q = 0; q < kCPT; ++q) acc[q] = T(0);

  if (line_hit) {  // uniform over the block
    const T* dyn = dy + n * L.K * L.out_plane + oc * L.out_cstep;
    for (int64_t k0 = 0; k0 < L.K; k0 += ics) {
      for (int e = tid; e < ics * span; e += kNT) {
        const int kk = e / span;
        const int64_t k = k0 + kk, o = o_lo + (e - kk * span);
        sd[e] = (k < L.K && o < L.out_len) ? dyn[k * L.out_plane + o * L.out_step] : T(0);
      }
      for (int e = tid; e < kChan * wstage; e += kNT) {
        const int cc = e / wstage, r = e - cc * wstage, kk = r / taps;
        const int64_t c = c0 + cc, k = k0 + kk;
        sw[e] = (c < L.C && k < L.K) ? w[(k * L.C + c) * taps + (r - kk * taps)] : T(0);
      }
      __syncthreads();
      for (int t = 0; t < taps; ++t) {
        // output position o reaches input position i through tap t when o*stride + t*dil == i + pad
        const int r = bm + j - t * dil;  // i + pad - t*dil == qb*stride + r
        if (qb * stride + r < 0) break;  // more negative for larger t
        if (r % stride) continue;
        const int64_t o = qb + r / stride;  // exact division
        if (o >= L.out_len) continue;
        const T* d = sd + int(o - o_lo);
        const T* wr = sw + lane * kCPT * wstage + t;
        for (int kk = 0; kk < ics; ++kk) {
          const T v = d[kk * span];
#pragma unroll
          for (int q = 0; q < kCPT; ++q) acc[q] += v * wr[q * wstage + kk * taps];
        }
      }
      __syncthreads();
    }
  }

  if (i >= L.in_len) return;
#pragma unroll
  for (int q = 0; q < kCPT; ++q) {
    const int64_t c = c0 + lane * kCPT + q;
    if (c < L.C) dx[(n * L.C + c) * L.in_plane + ic * L.in_cstep + i * L.in_step] = acc[q];
  }
}

// ------------------------------------------------------------------- Wgrad
template <typename T>
__global__ void __launch_bounds__(kNT)
    sep_wgrad_kernel(Line L, int64_t seg, const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dw) {
  FC_DYNAMIC_SMEM(T, smem);
  // 32-bit in-block index math, as in the Fprop kernel
  const int span = int(wgrad_span(L, seg)), iseg = int(seg), stride = int(L.stride), dil = int(L.dil);
  T* sd = smem;               // [kWK][seg]
  T* sx = smem + kWK * iseg;  // [kWC][span]
  const int tid = int(threadIdx.x), kk = tid / kWC, cc = tid % kWC;
  const int64_t k0 = int64_t(blockIdx.x) * kWK, c0 = int64_t(blockIdx.y) * kWC;
  const int64_t t0 = int64_t(blockIdx.z) * kWTaps;
  const int64_t segs = (L.out_len + seg - 1) / seg;

  T acc[kWTaps];
#pragma unroll
  for (int t = 0; t < kWTaps; ++t) acc[t] = T(0);

  // one fixed walk over (n, output line, segment): the loop bounds depend on
  // the problem only, so every thread reaches every barrier
  for (int64_t n = 0; n < L.N; ++n) {
    for (int64_t oc = 0; oc < L.out_cross; ++oc) {
      const int64_t ic = oc * L.cstride - L.cpad;
      if (ic < 0 || ic >= L.in_cross) continue;  // the line reads padding only: no contribution
      const T* dyl = dy + n * L.K * L.out_plane + oc * L.out_cstep;
      const T* xl = x + n * L.C * L.in_plane + ic * L.in_cstep;
      for (int64_t s = 0; s < segs; ++s) {
        const int64_t o0 = s * seg, i0 = o0 * L.stride - L.pad + t0 * L.dil;
        for (int e = tid; e < kWK * iseg; e += kNT) {
          const int a = e / iseg;
          const int64_t k = k0 + a, o = o0 + (e - a * iseg);
          sd[e] = (k < L.K && o < L.out_len) ? dyl[k * L.out_plane + o * L.out_step] : T(0);
        }
        for (int e = tid; e < kWC * span; e += kNT) {
          const int a = e / span;
          const int64_t c = c0 + a, ii = i0 + (e - a * span);
          sx[e] = (c < L.C && ii >= 0 && ii < L.in_len) ? xl[c * L.in_plane + ii * L.in_step] : T(0);
        }
        __syncthreads();
        const T* d = sd + kk * iseg;
        const T* xr = sx + cc * span;
        for (int jj = 0; jj < iseg; ++jj) {
          const T v = d[jj];
          const T* xj = xr + jj * stride;
#pragma unroll
          for (int t = 0; t < kWTaps; ++t) acc[t] += v * xj[t * dil];
        }
        __syncthreads();
      }
    }
  }

  const int64_t k = k0 + kk, c = c0 + cc;
  if (k >= L.K || c >= L.C) return;
#pragma unroll
  for (int t = 0; t < kWTaps; ++t)
    if (t0 + t < L.taps) dw[(k * L.C + c) * L.taps + t0 + t] = acc[t];
}

template <typename T>
int64_t fprop_stage(const Line& L) {
  return stage_channels(fprop_span(L), L.taps, int64_t(sizeof(T)));
}
template <typename T>
int64_t dgrad_stage(const Line& L) {
  return stage_channels(dgrad_span(L), L.taps, int64_t(sizeof(T)));
}

void validate(const ConvProblem& p) {
  check_problem(p);
  const std::string why = separable_supports(p);
  if (!why.empty()) throw std::invalid_argument(why);
}

template <typename T>
void launch_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu, void* stream) {
  const Line L = line_of(p);
  const int64_t cs = fprop_stage<T>(L);
  const size_t smem = size_t((cs * fprop_span(L) + kChan * cs * L.taps) * int64_t(sizeof(T)));
  const dim3 grid(unsigned((L.out_len + kSeg - 1) / kSeg * L.out_cross * L.N), unsigned((L.K + kChan - 1) / kChan));
  if (relu) {
    auto k = sep_fprop_kernel<T, true>;
    FC_LAUNCH(k, grid, dim3(kNT), smem, FC_STREAM(stream), L, cs, x, w, bias, y);
  } else {
    auto k = sep_fprop_kernel<T, false>;
    FC_LAUNCH(k, grid, dim3(kNT), smem, FC_STREAM(stream), L, cs, x, w, bias, y);
  }
}

template <typename T>
void launch_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx, void* stream) {
  const Line L = line_of(p);
  const int64_t cs = dgrad_stage<T>(L);
  const size_t smem = size_t((cs * dgrad_span(L) + kChan * cs * L.taps) * int64_t(sizeof(T)));
  const dim3 grid(unsigned((L.in_len + kSeg - 1) / kSeg * L.in_cross * L.N), unsigned((L.C + kChan - 1) / kChan));
  auto k = sep_dgrad_kernel<T>;
  FC_LAUNCH(k, grid, dim3(kNT), smem, FC_STREAM(stream), L, cs, dy, w, dx);
}

template <typename T>
void launch_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw, void* stream) {
  const Line L = line_of(p);
  const int64_t seg = wgrad_seg(L, int64_t(sizeof(T)));
  const size_t smem = size_t((kWK * seg + kWC * wgrad_span(L, seg)) * int64_t(sizeof(T)));
  const dim3 grid(unsigned((L.K + kWK - 1) / kWK), unsigned((L.C + kWC - 1) / kWC),
                  unsigned((L.taps + kWTaps - 1) / kWTaps));
  auto k = sep_wgrad_kernel<T>;
  FC_LAUNCH(k, grid, dim3(kNT), smem, FC_STREAM(stream), L, seg, x, dy, dw);
}

}  // namespace

std::string separable_supports(const ConvProblem& p) {
  if (p.groups != 1) return "the cuda separable kernels need groups == 1, got groups=" + std::to_string(p.groups);
  if (p.R != 1 && p.S != 1)
    return "the cuda separable kernels need a 1xn or nx1 kernel, got " + std::to_string(p.R) + "x" +
           std::to_string(p.S);
  const Line L = line_of(p);
  // sized for double (the larger element): float always fits then
  if (stage_channels(fprop_span(L), L.taps, 8) < 1 || stage_channels(dgrad_span(L), L.taps, 8) < 1)
    return "the cuda separable kernels: one channel of the staged segment (stride " + std::to_string(L.stride) +
           ", dilation " + std::to_string(L.dil) + ", " + std::to_string(L.taps) +
           " taps) does not fit 48 KiB of shared memory";
  if (wgrad_seg(L, 8) < 1)
    return "the cuda separable kernels: the Wgrad stage (dilation " + std::to_string(L.dil) +
           ") does not fit 48 KiB of shared memory";
  const int64_t fblocks = (L.out_len + kSeg - 1) / kSeg * L.out_cross * L.N;
  const int64_t dblocks = (L.in_len + kSeg - 1) / kSeg * L.in_cross * L.N;
  if (fblocks > 2147483647 || dblocks > 2147483647)
    return "the cuda separable kernels: more than 2^31-1 blocks (N x lines x segments)";
  if ((L.K + kChan - 1) / kChan > 65535 || (L.C + kChan - 1) / kChan > 65535 || (L.C + kWC - 1) / kWC > 65535 ||
      (L.taps + kWTaps - 1) / kWTaps > 65535)
    return "the cuda separable kernels: too many channel / tap tiles (> 65535)";
  return "";
}

template <typename T>
void separable_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu, void* stream) {
  validate(p);
  if (p.N == 0) return;
  launch_fprop<T>(p, x, w, bias, y, relu, stream);
}

template <typename T>
void separable_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx, void* stream) {
  validate(p);
  if (p.N == 0) return;
  launch_dgrad<T>(p, dy, w, dx, stream);
}

template <typename T>
void separable_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw, void* stream) {
  validate(p);
  if (p.N == 0) throw std::invalid_argument("separable Wgrad: N == 0 (the caller zeroes grad_weight)");
  launch_wgrad<T>(p, x, dy, dw, stream);
}

#define FC_INSTANTIATE(T)                                                                                 \
  template void separable_fprop<T>(const ConvProblem&, const T*, const T*, const T*, T*, bool, void*); \
  template void separable_dgrad<T>(const ConvProblem&, const T*, const T*, T*, void*);                 \
  template void separable_wgrad<T>(const ConvProblem&, const T*, const T*, T*, void*);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
#undef FC_INSTANTIATE

}  // namespace cuda
}  // namespace fastconv
