// Driver of the register-blocked direct convolution (see conv_kvec.h):
// weight re-layout, padded row copies, jobs and threads. Baseline x86-64
// code; the AVX-512 tiles are in conv_kvec_avx512.cpp.
#include "conv_kvec.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "fastconv/conv_cpu.h"
#include "fastconv/gemm.h"
#include "fastconv/parallel.h"

namespace fastconv {
namespace detail {

bool kvec_available() {
#ifdef FASTCONV_NO_X86_KERNELS
  return false;
#else
  return std::strcmp(gemm_isa(), "avx512") == 0;
#endif
}

// Worth it from 16 lanes of output channels per group: fewer would leave
// most of each 16-lane vector empty (depthwise and tiny layers keep the
// row-axpy direct kernels).
bool kvec_fprop_ok(const ConvProblem& p) { return kvec_available() && p.Kg() >= 16; }
bool kvec_dgrad_ok(const ConvProblem& p) {
  return kvec_available() && p.Cg() >= 16 && p.stride_h == 1 && p.stride_w == 1;
}
// Wgrad's jobs each hold a padded copy of one input channel over a block of
// the batch (see kvec_wgrad): bounded here.
bool kvec_wgrad_ok(const ConvProblem& p) {
  const int64_t Hp = (p.P - 1) * p.stride_h + (p.R - 1) * p.dil_h + 1;
  const int64_t Wp = (p.Q - 1) * p.stride_w + (p.S - 1) * p.dil_w + 1;
  const int64_t nb = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, p.P * p.Q));
  return kvec_available() && p.Kg() >= 16 && std::min(nb, p.N) * Hp * Wp <= (int64_t(1) << 21);
}

namespace {

int64_t round16(int64_t v) { return (v + 15) / 16 * 16; }

// Convolution q (explicit P and Q; paddings may be negative) of `in` with the
// re-laid-out weights wt ([groups][Cg][R][S][Kpad]) into `out`. Input image n,
// channel c starts at in + n*image_stride + c*channel_stride (NCHW: C*H*W and
// H*W; Wgrad reads the input with the two swapped, without a copy).
void kvec_run(const ConvProblem& q, const float* in, int64_t image_stride, int64_t channel_stride,
              const float* wt, int64_t Kpad, const float* bias, float* out, bool relu) {
  const int64_t Cg = q.Cg(), Kg = q.Kg(), PQ = q.P * q.Q, RS = q.R * q.S;
  const int64_t Wp = (q.Q - 1) * q.stride_w + (q.S - 1) * q.dil_w + 1;
  const int64_t span = (q.R - 1) * q.dil_h + 1;  // padded rows one output row reads
  const int threads = max_threads();
  const int64_t images = q.N * q.groups;
  if (images == 0) return;
  // Jobs: row chunks of one image and group; at least kMinJobs of them to
  // share among the threads, and each chunk's padded rows (per thread) under
  // ~1 MiB. The chunks depend on the problem only, never on the thread
  // count: a tile of several rows runs the union of their kernel rows, so
  // the (zero) products an output sums depend on where the chunks end.
  constexpr int64_t kMinJobs = 8;
  int64_t chunks = images >= kMinJobs ? 1 : (kMinJobs + images - 1) / images;
  int64_t rows_per = (q.P + chunks - 1) / chunks;
  const int64_t budget = (int64_t(1) << 20) / int64_t(sizeof(float));
  while (rows_per > 1 && Cg * ((rows_per - 1) * q.stride_h + span) * Wp > budget)
    rows_per = (rows_per + 1) / 2;
  chunks = (q.P + rows_per - 1) / rows_per;
  const int64_t jobs = images * chunks;
  const int64_t plane = ((rows_per - 1) * q.stride_h + span) * Wp;
  // padded columns [x0, x1) hold input columns [x0 - pad_w, x1 - pad_w)
  const int64_t x0 = std::min(Wp, std::max<int64_t>(0, q.pad_w));
  const int64_t x1 = std::max(x0, std::min(Wp, q.pad_w + q.W));
#pragma omp parallel num_threads(::fastconv::max_threads()) if (jobs > 1 && threads > 1)
  {
    AlignedBuffer<float> buf(Cg * plane);
#pragma omp for schedule(dynamic, 1)
    for (int64_t job = 0; job < jobs; ++job) {
      const int64_t ng = job / chunks, ch = job % chunks;
      const int64_t n = ng / q.groups, g = ng % q.groups;
      const int64_t p0 = ch * rows_per, p1 = std::min(q.P, p0 + rows_per);
      const int64_t row0 = p0 * q.stride_h, nrows = (p1 - 1 - p0) * q.stride_h + span;
      const float* xg = in + n * image_stride + g * Cg * channel_stride;
      float* xp = buf.data();
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t rr = 0; rr < nrows; ++rr) {
          float* d = xp + c * plane + rr * Wp;
          const int64_t ih = row0 + rr - q.pad_h;
          if (ih < 0 || ih >= q.H || x1 == x0) {
            std::memset(d, 0, sizeof(float) * Wp);
            continue;
          }
          std::memset(d, 0, sizeof(float) * x0);
          std::memcpy(d + x0, xg + c * channel_stride + ih * q.W + (x0 - q.pad_w),
                      sizeof(float) * (x1 - x0));
          std::memset(d + x1, 0, sizeof(float) * (Wp - x1));
        }
      const KvecJob jb{xp, plane, Wp, row0, wt + g * Cg * RS * Kpad,
                       Cg, q.R, q.S, Kg, Kpad,
                       q.stride_h, q.stride_w, q.dil_h, q.dil_w,
                       q.H, q.pad_h, q.Q, PQ,
                       out + (n * q.K + g * Kg) * PQ, bias ? bias + g * Kg : nullptr, relu};
#ifndef FASTCONV_NO_X86_KERNELS
      kvec_rows_avx512(jb, p0, p1);
#endif
    }
  }
}

}  // namespace

// The weights (K x Cg x R x S) as the tiles read them, output lanes
// contiguous and zero-padded to 16: for Fprop [g][c][r][s][k], for Dgrad
// (whose output lanes are the input channels) [g][k][R-1-r][S-1-s][c].
static void relayout_weights(const ConvProblem& p, const float* w, bool dgrad, AlignedBuffer<float>& wt,
                      int64_t& lanes) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), RS = p.R * p.S;
  lanes = round16(dgrad ? Cg : Kg);
  const int64_t n = p.groups * (dgrad ? Kg : Cg) * RS * lanes;
  wt.resize(n);
  float* d = wt.data();
  std::memset(d, 0, sizeof(float) * n);
  for (int64_t g = 0; g < p.groups; ++g)
    for (int64_t kk = 0; kk < Kg; ++kk)
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t rs = 0; rs < RS; ++rs) {
          const float v = w[((g * Kg + kk) * Cg + c) * RS + rs];
          if (dgrad)
            d[((g * Kg + kk) * RS + (RS - 1 - rs)) * lanes + c] = v;
          else
            d[((g * Cg + c) * RS + rs) * lanes + kk] = v;
        }
}

void kvec_fprop(const ConvProblem& p, const float* x, const float* w, const float* bias, float* y,
                bool relu) {
  AlignedBuffer<float> wt;
  int64_t lanes = 0;
  relayout_weights(p, w, false, wt, lanes);
  kvec_run(p, x, p.C * p.H * p.W, p.H * p.W, wt.data(), lanes, bias, y, relu);
}

// Stride-1 Dgrad is the convolution of grad_output (padded by dil*(R-1) -
// pad) with the flipped, transposed weights: grad_input[c, h, w] = sum over
// (k, r', s') of w[k, c, R-1-r', S-1-s'] * dy[k, h - pad' + r'*dil_h, ...].
void kvec_dgrad(const ConvProblem& p, const float* dy, const float* w, float* dx) {
  ConvProblem q = p;
  q.C = p.K;
  q.H = p.P;
  q.W = p.Q;
  q.K = p.C;
  q.P = p.H;
  q.Q = p.W;
  q.pad_h = p.dil_h * (p.R - 1) - p.pad_h;
  q.pad_w = p.dil_w * (p.S - 1) - p.pad_w;
  AlignedBuffer<float> wt;
  int64_t lanes = 0;
  relayout_weights(p, w, true, wt, lanes);
  kvec_run(q, dy, q.C * q.H * q.W, q.H * q.W, wt.data(), lanes, nullptr, dx, false);
}

// Wgrad is a convolution too, with batch and channels swapped: for each input
// channel c (a "batch" entry), grad_weight[k, c, r, s] = sum over (n, p, q) of
// dy[n, k, p, q] * x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw], i.e. the
// input x[:, c] (N channels) correlated with grad_output as an N x P x Q
// filter per k, at stride (dh, dw) and dilation (sh, sw), giving R x S.
// One fp32 chain over all N*P*Q products lost accuracy (12544 of them in the
// Fashion net's conv2: 5.8e-6 relative, against 2.6e-7 for the GEMM), so the
// batch is cut into blocks of at most kWgradChain products (a fixed split,
// from N*P*Q only) and the blocks' partial results are added in order.
constexpr int64_t kWgradChain = 2048;

void kvec_wgrad(const ConvProblem& p, const float* x, const float* dy, float* dw) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), RS = p.R * p.S, HW = p.H * p.W, PQ = p.P * p.Q;
  const int64_t Kpad = round16(Kg), welems = Cg * Kg * RS;
  int64_t blocks = std::max<int64_t>(1, (p.N * PQ + kWgradChain - 1) / kWgradChain);
  blocks = std::min(blocks, std::max<int64_t>(1, p.N));
  const int64_t nb = p.N == 0 ? 0 : (p.N + blocks - 1) / blocks;
  blocks = p.N == 0 ? 0 : (p.N + nb - 1) / nb;
  if (blocks == 0) {
    std::memset(dw, 0, sizeof(float) * p.K * Cg * RS);
    return;
  }
  // N, C (set per block), H, W, K, R, S, P, Q, pads, strides, dilations, groups
  ConvProblem q{Cg, 0, p.H, p.W, Kg, p.P, p.Q, p.R, p.S, p.pad_h, p.pad_w,
                p.dil_h, p.dil_w, p.stride_h, p.stride_w, 1};
  AlignedBuffer<float> wt(p.N * PQ * Kpad), acc(welems), blk(blocks > 1 ? welems : 0);
  for (int64_t g = 0; g < p.groups; ++g) {
    // dy[:, group] as [N][P][Q][Kpad]: the "weights", output channels contiguous
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static)
    for (int64_t n = 0; n < p.N; ++n) {
      float* d = wt.data() + n * PQ * Kpad;
      std::memset(d, 0, sizeof(float) * PQ * Kpad);
      for (int64_t kk = 0; kk < Kg; ++kk) {
        const float* src = dy + (n * p.K + g * Kg + kk) * PQ;
        for (int64_t j = 0; j < PQ; ++j) d[j * Kpad + kk] = src[j];
      }
    }
    // the blocks' results, added in order into acc: (Cg, Kg, R, S)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n0 = b * nb;
      q.C = std::min(nb, p.N - n0);
      float* dst = b == 0 ? acc.data() : blk.data();
      // "image" c = input channel g*Cg + c, "channel" n = image n0 + n
      kvec_run(q, x + (n0 * p.C + g * Cg) * HW, HW, p.C * HW, wt.data() + n0 * PQ * Kpad, Kpad,
               nullptr, dst, false);
      if (b > 0) {
        float* a = acc.data();
        const float* o = blk.data();
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static)
        for (int64_t e = 0; e < welems; ++e) a[e] += o[e];
      }
    }
    // (Cg, Kg, R, S) -> grad_weight[g*Kg + k, c, r, s]
    for (int64_t c = 0; c < Cg; ++c)
      for (int64_t kk = 0; kk < Kg; ++kk)
        std::memcpy(dw + ((g * Kg + kk) * Cg + c) * RS, acc.data() + (c * Kg + kk) * RS,
                    sizeof(float) * RS);
  }
}

}  // namespace detail

bool direct_vectorized(const std::string& op, const ConvProblem& p) {
  if (op == "fprop") return detail::kvec_fprop_ok(p);
  if (op == "dgrad") return detail::kvec_dgrad_ok(p);
  if (op == "wgrad") return detail::kvec_wgrad_ok(p);
  throw std::invalid_argument("direct_vectorized: op must be fprop, dgrad or wgrad, got " + op);
}

}  // namespace fastconv
