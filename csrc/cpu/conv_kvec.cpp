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
// re-laid-out weights wt ([groups][Cg][R][S][Kpad]) into `out`.
void kvec_run(const ConvProblem& q, const float* in, const float* wt, int64_t Kpad,
              const float* bias, float* out, bool relu) {
  const int64_t Cg = q.Cg(), Kg = q.Kg(), HW = q.H * q.W, PQ = q.P * q.Q, RS = q.R * q.S;
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
      const float* xg = in + (n * q.C + g * Cg) * HW;
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
          std::memcpy(d + x0, xg + (c * q.H + ih) * q.W + (x0 - q.pad_w), sizeof(float) * (x1 - x0));
          std::memset(d + x1, 0, sizeof(float) * (Wp - x1));
        }
      KvecJob jb;
      jb.xp = xp;
      jb.plane = plane;
      jb.Wp = Wp;
      jb.row0 = row0;
      jb.wt = wt + g * Cg * RS * Kpad;
      jb.Cg = Cg;
      jb.R = q.R;
      jb.S = q.S;
      jb.Kg = Kg;
      jb.Kpad = Kpad;
      jb.sh = q.stride_h;
      jb.sw = q.stride_w;
      jb.dh = q.dil_h;
      jb.dw = q.dil_w;
      jb.H = q.H;
      jb.ph = q.pad_h;
      jb.Q = q.Q;
      jb.PQ = PQ;
      jb.y = out + (n * q.K + g * Kg) * PQ;
      jb.bias = bias ? bias + g * Kg : nullptr;
      jb.relu = relu;
#ifndef FASTCONV_NO_X86_KERNELS
      kvec_rows_avx512(jb, p0, p1);
#endif
    }
  }
}

}  // namespace

void kvec_fprop(const ConvProblem& p, const float* x, const float* w, const float* bias, float* y,
                bool relu) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), RS = p.R * p.S, Kpad = round16(Kg);
  AlignedBuffer<float> wt(p.groups * Cg * RS * Kpad);
  std::memset(wt.data(), 0, sizeof(float) * p.groups * Cg * RS * Kpad);
  for (int64_t g = 0; g < p.groups; ++g)
    for (int64_t kk = 0; kk < Kg; ++kk)
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t rs = 0; rs < RS; ++rs)
          wt.data()[((g * Cg + c) * RS + rs) * Kpad + kk] = w[((g * Kg + kk) * Cg + c) * RS + rs];
  kvec_run(p, x, wt.data(), Kpad, bias, y, relu);
}

// Stride-1 Dgrad is the convolution of grad_output (padded by dil*(R-1) -
// pad) with the flipped, transposed weights: grad_input[c, h, w] = sum over
// (k, r', s') of w[k, c, R-1-r', S-1-s'] * dy[k, h - pad' + r'*dil_h, ...].
void kvec_dgrad(const ConvProblem& p, const float* dy, const float* w, float* dx) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), RS = p.R * p.S, Cpad = round16(Cg);
  ConvProblem q = p;
  q.C = p.K;
  q.H = p.P;
  q.W = p.Q;
  q.K = p.C;
  q.P = p.H;
  q.Q = p.W;
  q.pad_h = p.dil_h * (p.R - 1) - p.pad_h;
  q.pad_w = p.dil_w * (p.S - 1) - p.pad_w;
  AlignedBuffer<float> wt(p.groups * Kg * RS * Cpad);
  std::memset(wt.data(), 0, sizeof(float) * p.groups * Kg * RS * Cpad);
  for (int64_t g = 0; g < p.groups; ++g)
    for (int64_t kk = 0; kk < Kg; ++kk)
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t rs = 0; rs < RS; ++rs)
          wt.data()[((g * Kg + kk) * RS + (RS - 1 - rs)) * Cpad + c] =
              w[((g * Kg + kk) * Cg + c) * RS + rs];
  kvec_run(q, dy, wt.data(), Cpad, nullptr, dx, false);
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
  ConvProblem q;
  q.N = Cg;
  q.H = p.H;
  q.W = p.W;
  q.K = Kg;
  q.R = p.P;
  q.S = p.Q;
  q.P = p.R;
  q.Q = p.S;
  q.pad_h = p.pad_h;
  q.pad_w = p.pad_w;
  q.stride_h = p.dil_h;
  q.stride_w = p.dil_w;
  q.dil_h = p.stride_h;
  q.dil_w = p.stride_w;
  q.groups = 1;
  AlignedBuffer<float> xt(Cg * p.N * HW), wt(p.N * PQ * Kpad), out(blocks * welems);
  for (int64_t g = 0; g < p.groups; ++g) {
    // x[:, group channels] as [block][Cg][images of the block][H][W];
    // dy[:, group] as [N][P][Q][Kpad]
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static)
    for (int64_t cn = 0; cn < Cg * p.N; ++cn) {
      const int64_t n = cn / Cg, c = cn % Cg;
      const int64_t n0 = n / nb * nb, nbb = std::min(nb, p.N - n0);
      std::memcpy(xt.data() + (Cg * n0 + c * nbb + (n - n0)) * HW, x + (n * p.C + g * Cg + c) * HW,
                  sizeof(float) * HW);
    }
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static)
    for (int64_t n = 0; n < p.N; ++n) {
      float* d = wt.data() + n * PQ * Kpad;
      std::memset(d, 0, sizeof(float) * PQ * Kpad);
      for (int64_t kk = 0; kk < Kg; ++kk) {
        const float* src = dy + (n * p.K + g * Kg + kk) * PQ;
        for (int64_t j = 0; j < PQ; ++j) d[j * Kpad + kk] = src[j];
      }
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n0 = b * nb;
      q.C = std::min(nb, p.N - n0);
      kvec_run(q, xt.data() + Cg * n0 * HW, wt.data() + n0 * PQ * Kpad, Kpad, nullptr,
               out.data() + b * welems, false);
    }
    // sum the blocks in order; (Cg, Kg, R, S) -> grad_weight[g*Kg + k, c, r, s]
    const float* o = out.data();
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static)
    for (int64_t e = 0; e < welems; ++e) {
      float v = o[e];
      for (int64_t b = 1; b < blocks; ++b) v += o[b * welems + e];
      const int64_t c = e / (Kg * RS), kk = (e / RS) % Kg, rs = e % RS;
      dw[((g * Kg + kk) * Cg + c) * RS + rs] = v;
    }
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
