// Implicit-GEMM convolution: Fprop, Dgrad and Wgrad as one tiled GEMM core
// with three operand loaders (float32 only; float64 callers run the direct
// kernels, see the end of the file). No operand matrix is ever built: the
// loaders gather it from the activations while filling the shared tiles.
// The same core, with three 1x1 loaders and a double tile shape, is the 1x1
// kernel family (float32 and float64; "1x1 loaders" below).
//
// Per group g each operator is a GEMM  C[m, n] = sum_k A[m, k] * B[k, n]:
//
//   operator  C (M x N)                A (M x K)             B (K x N, gathered)
//   Fprop     y   [K/g  x N*P*Q]       w  [k, (c,r,s)]       x  at (c, p*str-pad+r*dil, ...)
//   Dgrad     dx  [C/g  x N*H*W/phase] w  [c, (k,r,s)/phase] dy at (k, (h+pad-r*dil)/str, ...)
//   Wgrad     dw  [K/g  x C/g*R*S]     dy [k, (n,p,q)]       x  at ((n,p,q), (c,r,s))
//
// Dgrad is a gather: each thread owns output elements of dx and sums every
// (k, r, s) that reaches them. Input pixels are split by stride phase
// ((h + pad) % stride, one grid.z slice per phase) so that a block's GEMM
// depth holds only the taps of its phase; taps that fall outside the output
// read zero. No atomics; the summation order is fixed: deterministic.
//
// Wgrad splits its reduction dimension N*P*Q into a fixed number of chunks
// (a function of the problem only, never of the device): the chunks run as
// independent blocks (grid.z), each writes its partial tile to a workspace,
// and a second kernel sums the partials in chunk order 0, 1, 2, ...: no
// atomics, bit-identical results run to run and device to device.
//
// Tiling (all three): a 64-thread block computes a 64x64 tile of C, each
// thread an 8x8 register block (rows ty + 8*i, columns tx + 8*j: strided, so
// that the eight threads of a row read consecutive shared-memory words and
// write consecutive output columns). The K loop walks BK = 8 at a time through
// two shared buffers: the next tile is fetched into registers while the
// current one is multiplied, then stored into the other buffer, and one
// __syncthreads() per step both publishes the new tile and retires the old one.
#include "fastconv/cuda_compat.h"
#include "fastconv/conv_cuda.h"
#include "fastconv/problem.h"

namespace fastconv {
namespace cuda {
namespace {

// Tile shape of the GEMM core per element type. float: 64x64 tiles, 64
// threads of 8x8. double (the 1x1 family only, see conv1x1_*): 32x32 tiles,
// 32 threads of 8x4 (64 double accumulators per thread would spill).
template <typename T>
struct Tile;
template <>
struct Tile<float> {
  static constexpr int BM = 64, BN = 64, TM = 8, TN = 8, NT = 64;
};
template <>
struct Tile<double> {
  static constexpr int BM = 32, BN = 32, TM = 8, TN = 4, NT = 32;
};
constexpr int BK = 8;
constexpr int PAD = 4;  // float As rows of 68 words: the transposing store hits 32 distinct banks
constexpr int BM = Tile<float>::BM, BN = Tile<float>::BN, NT = Tile<float>::NT;  // the float32 implicit GEMM
template <typename T>
constexpr bool tile_ok() {
  using G = Tile<T>;
  return (G::BM / G::TM) * (G::BN / G::TN) == G::NT && G::BM * BK == G::NT * 8 && G::BN == G::NT;
}
static_assert(tile_ok<float>() && tile_ok<double>(), "one TMxTN block per thread; each thread loads 8 A and BK B elements");

// Test-only defects (FC_EMU_TEST_HOOKS builds): kernels instantiated with one
// of these must come out wrong in the emulator.
enum Defect : int {
  kIntact = 0,
  kNoBarrier = 1,     // every __syncthreads() removed
  kSkipLastTile = 2,  // off-by-one K loop: `t + 1 < ktiles`, the last BK slice is never multiplied
};

// ---------------------------------------------------------------- loaders
// Each loader is a small value type passed as a kernel parameter:
//   rows(), cols()            M and N of one group's GEMM
//   a(g, row, kc)             A element (row < rows() is checked by the caller, kc by the loader)
//   Col col(g, col)           per-thread state of one B column (computed once per block)
//   b(col_state, kc)          B element, zero outside the image / on the wrong stride phase
//   store(g, row, col, v, z)  the epilogue for one element of C

template <typename T, bool kRelu>
struct FpropOps {
  ConvProblem p;
  const T* x;
  const T* w;
  const T* bias;
  T* y;
  int64_t g = 0;  // per block (for_block)
  struct Col {
    const T* xg;
    int64_t h0, w0;
    bool ok;
  };
  __device__ __forceinline__ FpropOps for_block(int64_t z) const {
    FpropOps o = *this;
    o.g = z;
    return o;
  }
  __device__ __forceinline__ int64_t group() const { return g; }
  __device__ __forceinline__ int64_t chunk() const { return 0; }
  __device__ __forceinline__ int64_t chunk_len() const { return depth() + BK; }
  __device__ __forceinline__ int64_t rows() const { return p.Kg(); }
  __device__ __forceinline__ int64_t cols() const { return p.N * p.P * p.Q; }
  __device__ __forceinline__ int64_t depth() const { return p.Cg() * p.R * p.S; }
  __device__ __forceinline__ T a(int64_t g, int64_t row, int64_t kc) const {
    const int64_t crs = depth();
    return kc < crs ? w[(g * p.Kg() + row) * crs + kc] : T(0);
  }
  __device__ __forceinline__ Col col(int64_t g, int64_t c) const {
    Col s{x, 0, 0, c < cols()};
    if (s.ok) {
      const int64_t PQ = p.P * p.Q, n = c / PQ, pq = c % PQ;
      s.h0 = (pq / p.Q) * p.stride_h - p.pad_h;
      s.w0 = (pq % p.Q) * p.stride_w - p.pad_w;
      s.xg = x + (n * p.C + g * p.Cg()) * p.H * p.W;
    }
    return s;
  }
  __device__ __forceinline__ T b(const Col& s, int64_t kc) const {
    const int64_t RS = p.R * p.S;
    if (!s.ok || kc >= depth()) return T(0);
    const int64_t c = kc / RS, rs = kc % RS;
    const int64_t h = s.h0 + (rs / p.S) * p.dil_h, ww = s.w0 + (rs % p.S) * p.dil_w;
    if (h < 0 || h >= p.H || ww < 0 || ww >= p.W) return T(0);
    return s.xg[(c * p.H + h) * p.W + ww];
  }
  __device__ __forceinline__ void store(int64_t g, int64_t row, int64_t c, T v) const {
    const int64_t k = g * p.Kg() + row, PQ = p.P * p.Q;
    if (bias) v += bias[k];
    if (kRelu) v = relu_value(v);
    y[((c / PQ) * p.K + k) * PQ + c % PQ] = v;
  }
};

// One tap set of Dgrad along one axis: input rows h with (h + pad) % stride ==
// phase are reached only by the taps r with r*dil % stride == phase, which are
// r0, r0 + step, ... (step = stride / gcd(stride, dil)); n of them (0: none).
struct PhaseTaps {
  int64_t first;  // first input row of the phase
  int64_t count;  // input rows of the phase
  int64_t r0, step, n;
};

FC_HOST_DEVICE inline PhaseTaps phase_taps(int64_t phase, int64_t in, int64_t pad, int64_t stride, int64_t dil,
                                           int64_t kernel) {
  PhaseTaps t{0, 0, 0, 1, 0};
  t.first = ((phase - pad) % stride + stride) % stride;
  t.count = t.first < in ? (in - t.first + stride - 1) / stride : 0;
  int64_t a = stride, b = dil % stride;  // gcd(stride, dil)
  while (b) {
    const int64_t r = a % b;
    a = b;
    b = r;
  }
  t.step = stride / a;
  for (int64_t r = 0; r < t.step && r < kernel; ++r) {
    if ((r * dil) % stride == phase) {
      t.r0 = r;
      t.n = (kernel - 1 - r) / t.step + 1;
      break;
    }
  }
  return t;
}

// Dgrad, decomposed by stride phase: grid.z = group * (stride_h*stride_w) +
// phase. A block of phase (ph, pw) owns input pixels with (h + pad_h) %
// stride_h == ph (and likewise for w), and its GEMM depth runs over exactly
// the taps that reach them, so no multiply-add is spent on a tap of the wrong
// phase (stride 2: a quarter of the work of a tap-by-tap check).
template <typename T>
struct DgradOps {
  ConvProblem p;
  const T* dy;
  const T* w;
  T* dx;
  // per block (for_block); the host fills the largest phase so the grid covers every phase
  PhaseTaps th, tw;
  int64_t g;
  struct Col {
    const T* dyg;
    int64_t th0, tw0;  // h + pad_h, w + pad_w
    bool ok;
  };
  __device__ __forceinline__ DgradOps for_block(int64_t z) const {
    DgradOps o = *this;
    const int64_t phases = p.stride_h * p.stride_w, ph = z % phases;
    o.g = z / phases;
    o.th = phase_taps(ph / p.stride_w, p.H, p.pad_h, p.stride_h, p.dil_h, p.R);
    o.tw = phase_taps(ph % p.stride_w, p.W, p.pad_w, p.stride_w, p.dil_w, p.S);
    return o;
  }
  __device__ __forceinline__ int64_t group() const { return g; }
  __device__ __forceinline__ int64_t chunk() const { return 0; }
  __device__ __forceinline__ int64_t chunk_len() const { return depth() + BK; }
  __device__ __forceinline__ int64_t rows() const { return p.Cg(); }
  __device__ __forceinline__ int64_t cols() const { return p.N * th.count * tw.count; }
  __device__ __forceinline__ int64_t depth() const { return p.Kg() * th.n * tw.n; }
  // A[c, (k, i, j)] = w[g*Kg + k, c, r0 + i*step_r, s0 + j*step_s]: the weight read transposed
  __device__ __forceinline__ T a(int64_t, int64_t row, int64_t kc) const {
    if (kc >= depth()) return T(0);
    const int64_t taps = th.n * tw.n, k = kc / taps, t = kc % taps;
    const int64_t r = th.r0 + (t / tw.n) * th.step, s = tw.r0 + (t % tw.n) * tw.step;
    return w[((g * p.Kg() + k) * p.Cg() + row) * p.R * p.S + r * p.S + s];
  }
  __device__ __forceinline__ Col col(int64_t, int64_t c) const {
    Col s{dy, 0, 0, c < cols()};
    if (s.ok) {
      const int64_t hw = th.count * tw.count, n = c / hw, i = (c % hw) / tw.count, j = c % tw.count;
      s.th0 = th.first + i * p.stride_h + p.pad_h;
      s.tw0 = tw.first + j * p.stride_w + p.pad_w;
      s.dyg = dy + (n * p.K + g * p.Kg()) * p.P * p.Q;
    }
    return s;
  }
  __device__ __forceinline__ T b(const Col& s, int64_t kc) const {
    if (!s.ok || kc >= depth()) return T(0);
    const int64_t taps = th.n * tw.n, k = kc / taps, t = kc % taps;
    // output row oh reaches input row h through tap r when oh*stride + r*dil == h + pad;
    // the phase makes the difference a multiple of the stride
    const int64_t dh = s.th0 - (th.r0 + (t / tw.n) * th.step) * p.dil_h;
    const int64_t dw = s.tw0 - (tw.r0 + (t % tw.n) * tw.step) * p.dil_w;
    if (dh < 0 || dw < 0) return T(0);
    const int64_t oh = dh / p.stride_h, ow = dw / p.stride_w;
    if (oh >= p.P || ow >= p.Q) return T(0);
    return s.dyg[(k * p.P + oh) * p.Q + ow];
  }
  __device__ __forceinline__ void store(int64_t, int64_t row, int64_t c, T v) const {
    const int64_t hw = th.count * tw.count, n = c / hw, i = (c % hw) / tw.count, j = c % tw.count;
    const int64_t h = th.first + i * p.stride_h, ww = tw.first + j * p.stride_w;
    dx[((n * p.C + g * p.Cg() + row) * p.H + h) * p.W + ww] = v;
  }
};

template <typename T>
struct WgradOps {
  ConvProblem p;
  const T* x;
  const T* dy;
  T* out;         // chunks == 1: dw itself; else the workspace [chunks][K*Cg*R*S]
  int64_t len;    // K-depth of one chunk (a multiple of BK)
  int64_t chunks;
  int64_t g = 0, ck = 0;  // per block (for_block): group and chunk
  struct Col {
    const T* xc;      // input channel c of group g in image 0
    int64_t dh, dw;   // r*dil_h - pad_h, s*dil_w - pad_w
    bool ok;
  };
  __device__ __forceinline__ WgradOps for_block(int64_t z) const {
    WgradOps o = *this;
    o.g = z / chunks;
    o.ck = z % chunks;
    return o;
  }
  __device__ __forceinline__ int64_t group() const { return g; }
  __device__ __forceinline__ int64_t chunk() const { return ck; }
  __device__ __forceinline__ int64_t chunk_len() const { return len; }
  __device__ __forceinline__ int64_t rows() const { return p.Kg(); }
  __device__ __forceinline__ int64_t cols() const { return p.Cg() * p.R * p.S; }
  __device__ __forceinline__ int64_t depth() const { return p.N * p.P * p.Q; }
  // A[k, (n, p, q)] = dy[n, g*Kg + k, p, q]
  __device__ __forceinline__ T a(int64_t g, int64_t row, int64_t kc) const {
    if (kc >= depth()) return T(0);
    const int64_t PQ = p.P * p.Q, n = kc / PQ;
    return dy[(n * p.K + g * p.Kg() + row) * PQ + kc % PQ];
  }
  __device__ __forceinline__ Col col(int64_t g, int64_t c) const {
    Col s{x, 0, 0, c < cols()};
    if (s.ok) {
      const int64_t RS = p.R * p.S, cc = c / RS, rs = c % RS;
      s.dh = (rs / p.S) * p.dil_h - p.pad_h;
      s.dw = (rs % p.S) * p.dil_w - p.pad_w;
      s.xc = x + (g * p.Cg() + cc) * p.H * p.W;
    }
    return s;
  }
  __device__ __forceinline__ T b(const Col& s, int64_t kc) const {
    if (!s.ok || kc >= depth()) return T(0);
    const int64_t PQ = p.P * p.Q, n = kc / PQ, pq = kc % PQ;
    const int64_t h = (pq / p.Q) * p.stride_h + s.dh, ww = (pq % p.Q) * p.stride_w + s.dw;
    if (h < 0 || h >= p.H || ww < 0 || ww >= p.W) return T(0);
    return s.xc[(n * p.C * p.H + h) * p.W + ww];
  }
  __device__ __forceinline__ void store(int64_t g, int64_t row, int64_t c, T v) const {
    const int64_t crs = cols();
    out[ck * p.weight_elems() + (g * p.Kg() + row) * crs + c] = v;
  }
};

// ------------------------------------------------------------- 1x1 loaders
// A 1x1 kernel with zero padding is a plain GEMM per (image, group): no tap
// decoding, no bounds checks on the input side (every output pixel reads the
// input pixel (p*stride_h, q*stride_w), inside the image: conv1x1_supports).
// Dilation has no effect on a 1x1 kernel. The same core, three more loaders:
//
//   operator  C (M x N)           A (M x K)          B (K x N)
//   Fprop     y  [K/g x N*P*Q]    w [k, c]           x  at (n, c, p*sh, q*sw)
//   Dgrad     dx [C/g x N*P*Q]    w [k, c]^T         dy at (n, k, p, q), stored at (p*sh, q*sw)
//   Wgrad     dw [K/g x C/g]      dy [k, (n,p,q)]    x  at ((n,p,q), c)
//
// Dgrad writes every dx element exactly once: the GEMM the pixels on the
// stride grid, a zero-fill kernel the others; Wgrad uses the chunked N*P*Q
// split and the chunk-order reduction of the implicit GEMM's Wgrad.

template <typename T, bool kRelu>
struct Fprop1x1Ops {
  ConvProblem p;
  const T* x;
  const T* w;
  const T* bias;
  T* y;
  int64_t g = 0;
  struct Col {
    const T* xp;  // input pixel (p*sh, q*sw) of channel g*Cg in image n
    bool ok;
  };
  __device__ __forceinline__ Fprop1x1Ops for_block(int64_t z) const {
    Fprop1x1Ops o = *this;
    o.g = z;
    return o;
  }
  __device__ __forceinline__ int64_t group() const { return g; }
  __device__ __forceinline__ int64_t chunk() const { return 0; }
  __device__ __forceinline__ int64_t chunk_len() const { return depth() + BK; }
  FC_HOST_DEVICE int64_t rows() const { return p.Kg(); }
  FC_HOST_DEVICE int64_t cols() const { return p.N * p.P * p.Q; }
  __device__ __forceinline__ int64_t depth() const { return p.Cg(); }
  __device__ __forceinline__ T a(int64_t g, int64_t row, int64_t kc) const {
    return kc < depth() ? w[(g * p.Kg() + row) * p.Cg() + kc] : T(0);
  }
  __device__ __forceinline__ Col col(int64_t g, int64_t c) const {
    Col s{x, c < cols()};
    if (s.ok) {
      const int64_t PQ = p.P * p.Q, n = c / PQ, pq = c % PQ;
      s.xp = x + (n * p.C + g * p.Cg()) * p.H * p.W + (pq / p.Q) * p.stride_h * p.W + (pq % p.Q) * p.stride_w;
    }
    return s;
  }
  __device__ __forceinline__ T b(const Col& s, int64_t kc) const {
    return (s.ok && kc < depth()) ? s.xp[kc * p.H * p.W] : T(0);
  }
  __device__ __forceinline__ void store(int64_t g, int64_t row, int64_t c, T v) const {
    const int64_t k = g * p.Kg() + row, PQ = p.P * p.Q;
    if (bias) v += bias[k];
    if (kRelu) v = relu_value(v);
    y[((c / PQ) * p.K + k) * PQ + c % PQ] = v;
  }
};

// Dgrad: the GEMM runs over the N*P*Q input pixels some output pixel reads
// ((p*stride_h, q*stride_w), every one inside the image) and writes each of
// them once; the pixels the stride skips get their zero from
// conv1x1_dgrad_zero_kernel, which writes only those (no element twice, no
// FMA on a zero column).
template <typename T>
struct Dgrad1x1Ops {
  ConvProblem p;
  const T* dy;
  const T* w;
  T* dx;
  int64_t g = 0;
  struct Col {
    const T* dyp;  // dy at (n, g*Kg, p, q)
    bool ok;
  };
  __device__ __forceinline__ Dgrad1x1Ops for_block(int64_t z) const {
    Dgrad1x1Ops o = *this;
    o.g = z;
    return o;
  }
  __device__ __forceinline__ int64_t group() const { return g; }
  __device__ __forceinline__ int64_t chunk() const { return 0; }
  __device__ __forceinline__ int64_t chunk_len() const { return depth() + BK; }
  FC_HOST_DEVICE int64_t rows() const { return p.Cg(); }
  FC_HOST_DEVICE int64_t cols() const { return p.N * p.P * p.Q; }
  __device__ __forceinline__ int64_t depth() const { return p.Kg(); }
  // A[c, k] = w[g*Kg + k, c]
  __device__ __forceinline__ T a(int64_t g, int64_t row, int64_t kc) const {
    return kc < depth() ? w[(g * p.Kg() + kc) * p.Cg() + row] : T(0);
  }
  __device__ __forceinline__ Col col(int64_t g, int64_t c) const {
    Col s{dy, c < cols()};
    if (s.ok) {
      const int64_t PQ = p.P * p.Q, n = c / PQ;
      s.dyp = dy + (n * p.K + g * p.Kg()) * PQ + (c - n * PQ);
    }
    return s;
  }
  __device__ __forceinline__ T b(const Col& s, int64_t kc) const {
    return (s.ok && kc < depth()) ? s.dyp[kc * p.P * p.Q] : T(0);
  }
  __device__ __forceinline__ void store(int64_t g, int64_t row, int64_t c, T v) const {
    // one 64-bit division (a called subroutine on the GPU; a second one made
    // sm_80 spill): the in-plane split is 32-bit, planes are < 2^31 pixels
    // (conv1x1_supports)
    const int64_t PQ = p.P * p.Q, n = c / PQ;
    const uint32_t pq = uint32_t(c - n * PQ), q = uint32_t(p.Q), oh = pq / q, ow = pq - oh * q;
    dx[((n * p.C + g * p.Cg() + row) * p.H + int64_t(oh) * p.stride_h) * p.W + int64_t(ow) * p.stride_w] = v;
  }
};

template <typename T>
struct Wgrad1x1Ops {
  ConvProblem p;
  const T* x;
  const T* dy;
  T* out;  // chunks == 1: dw itself; else the workspace [chunks][K*Cg]
  int64_t len;
  int64_t chunks;
  int64_t g = 0, ck = 0;
  struct Col {
    const T* xc;  // input channel g*Cg + c of image 0
    bool ok;
  };
  __device__ __forceinline__ Wgrad1x1Ops for_block(int64_t z) const {
    Wgrad1x1Ops o = *this;
    o.g = z / chunks;
    o.ck = z % chunks;
    return o;
  }
  __device__ __forceinline__ int64_t group() const { return g; }
  __device__ __forceinline__ int64_t chunk() const { return ck; }
  __device__ __forceinline__ int64_t chunk_len() const { return len; }
  FC_HOST_DEVICE int64_t rows() const { return p.Kg(); }
  FC_HOST_DEVICE int64_t cols() const { return p.Cg(); }
  __device__ __forceinline__ int64_t depth() const { return p.N * p.P * p.Q; }
  // A[k, (n, p, q)] = dy[n, g*Kg + k, p, q]
  __device__ __forceinline__ T a(int64_t g, int64_t row, int64_t kc) const {
    if (kc >= depth()) return T(0);
    const int64_t PQ = p.P * p.Q, n = kc / PQ;
    return dy[(n * p.K + g * p.Kg() + row) * PQ + kc % PQ];
  }
  __device__ __forceinline__ Col col(int64_t g, int64_t c) const {
    Col s{x, c < cols()};
    if (s.ok) s.xc = x + (g * p.Cg() + c) * p.H * p.W;
    return s;
  }
  __device__ __forceinline__ T b(const Col& s, int64_t kc) const {
    if (!s.ok || kc >= depth()) return T(0);
    const int64_t PQ = p.P * p.Q, n = kc / PQ, pq = kc % PQ;
    return s.xc[n * p.C * p.H * p.W + (pq / p.Q) * p.stride_h * p.W + (pq % p.Q) * p.stride_w];
  }
  __device__ __forceinline__ void store(int64_t g, int64_t row, int64_t c, T v) const {
    out[ck * p.weight_elems() + (g * p.Kg() + row) * p.Cg() + c] = v;
  }
};

// ------------------------------------------------------------- GEMM core
// grid: x = column tiles, y = row tiles, z decoded by the operator's
// for_block(z) (Fprop: the group; Dgrad: group and stride phase; Wgrad: group
// and chunk). The K range of a block is [chunk*chunk_len, min(depth,
// (chunk+1)*chunk_len)); chunk_len is a multiple of BK (or past the depth),
// so the loaders' own `kc < depth` checks are the only tail handling needed.
template <typename T, class Ops, int kDefect>
__device__ __forceinline__ void igemm_core(const Ops& ops_in) {
  constexpr int BM = Tile<T>::BM, BN = Tile<T>::BN, TM = Tile<T>::TM, TN = Tile<T>::TN, NT = Tile<T>::NT;
  constexpr int RT = BM / TM, CT = BN / TN;  // threads per tile column / row
  __shared__ __align__(16) T As[2][BK][BM + PAD];
  __shared__ __align__(16) T Bs[2][BK][BN];
  constexpr bool kSync = kDefect != kNoBarrier;

  const int tid = int(threadIdx.x);
  const int ty = tid / CT, tx = tid % CT;
  const Ops ops = ops_in.for_block(int64_t(blockIdx.z));
  const int64_t g = ops.group(), chunk = ops.chunk(), chunk_len = ops.chunk_len();
  const int64_t M = ops.rows(), depth = ops.depth();
  const int64_t m0 = int64_t(blockIdx.y) * BM;  // first row of the tile
  const int64_t n0 = int64_t(blockIdx.x) * BN;  // first column of the tile
  const int64_t k_begin = chunk * chunk_len;
  const int64_t k_end = depth < k_begin + chunk_len ? depth : k_begin + chunk_len;

  // B loader: this thread gathers column n0 + tid for every BK row.
  const typename Ops::Col bcol = ops.col(g, n0 + tid);
  // A loader: element e = tid + NT*i of the 64x8 tile is (m = e / BK, kk = e % BK):
  // eight consecutive threads read eight consecutive elements of one row.

  T a_reg[8], b_reg[BK];
  T acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

  auto load = [&](int64_t k0) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int e = tid + NT * i;
      const int64_t row = m0 + e / BK;
      a_reg[i] = row < M ? ops.a(g, row, k0 + e % BK) : T(0);
    }
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) b_reg[kk] = ops.b(bcol, k0 + kk);
  };
  auto store = [&](int buf) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int e = tid + NT * i;
      As[buf][e % BK][e / BK] = a_reg[i];
    }
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) Bs[buf][kk][tid] = b_reg[kk];
  };

  int64_t ktiles = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;
  if (kDefect == kSkipLastTile) ktiles -= 1;  // the deliberate off-by-one
  load(k_begin);
  store(0);
  if (kSync) __syncthreads();
  for (int64_t t = 0; t < ktiles; ++t) {
    const int cur = int(t & 1);
    if (t + 1 < ktiles) load(k_begin + (t + 1) * BK);  // global loads in flight during the FMAs below
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = As[cur][kk][ty + RT * i];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Bs[cur][kk][tx + CT * j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
    }
    // the other buffer was last read in step t-1, which every thread finished
    // before passing the barrier that ended it
    if (t + 1 < ktiles) store(cur ^ 1);
    if (kSync) __syncthreads();
  }

  const int64_t Ncols = ops.cols();
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t row = m0 + ty + RT * i;
    if (row >= M) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t col = n0 + tx + CT * j;
      if (col < Ncols) ops.store(g, row, col, acc[i][j]);
    }
  }
}

// One __global__ per operator (readable names in the ptxas report).
template <typename T, bool kRelu, int kDefect>
__global__ void __launch_bounds__(NT) igemm_fprop_kernel(FpropOps<T, kRelu> ops) {
  igemm_core<T, FpropOps<T, kRelu>, kDefect>(ops);
}

template <typename T, int kDefect>
__global__ void __launch_bounds__(NT) igemm_dgrad_kernel(DgradOps<T> ops) {
  igemm_core<T, DgradOps<T>, kDefect>(ops);
}

template <typename T, int kDefect>
__global__ void __launch_bounds__(NT) igemm_wgrad_kernel(WgradOps<T> ops) {
  igemm_core<T, WgradOps<T>, kDefect>(ops);
}

template <typename T, bool kRelu>
__global__ void __launch_bounds__(Tile<T>::NT) conv1x1_fprop_kernel(Fprop1x1Ops<T, kRelu> ops) {
  igemm_core<T, Fprop1x1Ops<T, kRelu>, kIntact>(ops);
}

// (NT, 1): without a minimum block count ptxas aimed at 168 registers on sm_80
// for the float instantiation and spilled 4 bytes; with it, it may use up to 255
template <typename T>
__global__ void __launch_bounds__(Tile<T>::NT, 1) conv1x1_dgrad_kernel(Dgrad1x1Ops<T> ops) {
  igemm_core<T, Dgrad1x1Ops<T>, kIntact>(ops);
}

template <typename T>
__global__ void __launch_bounds__(Tile<T>::NT) conv1x1_wgrad_kernel(Wgrad1x1Ops<T> ops) {
  igemm_core<T, Wgrad1x1Ops<T>, kIntact>(ops);
}

// dx = 0 at the input pixels no output pixel of a 1x1 convolution reads (off
// the stride grid, or past the last output row/column); the others are the
// 1x1 Dgrad GEMM's. Grid-stride over the N*C planes of H*W.
template <typename T>
__global__ void __launch_bounds__(256) conv1x1_dgrad_zero_kernel(ConvProblem p, T* __restrict__ dx) {
  const int64_t HW = p.H * p.W, total = p.N * p.C * HW;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
    const int64_t hw = e % HW, h = hw / p.W, ww = hw % p.W;
    if (h % p.stride_h || ww % p.stride_w || h / p.stride_h >= p.P || ww / p.stride_w >= p.Q) dx[e] = T(0);
  }
}

// dw[e] = sum over chunks of ws[chunk][e], always in chunk order 0, 1, 2, ...
template <typename T>
__global__ void __launch_bounds__(256)
    wgrad_reduce_kernel(const T* __restrict__ ws, int64_t chunks, int64_t elems, T* __restrict__ dw) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < elems; e += step) {
    T s = T(0);
    for (int64_t c = 0; c < chunks; ++c) s += ws[c * elems + e];
    dw[e] = s;
  }
}

template <typename Ops, typename T = float>
dim3 grid_of(const Ops& ops, int64_t z) {
  constexpr int bm = Tile<T>::BM, bn = Tile<T>::BN;
  return dim3(unsigned((ops.cols() + bn - 1) / bn), unsigned((ops.rows() + bm - 1) / bm), unsigned(z));
}

// bm, bn: the smallest tile any element type launches with (most tiles)
std::string grid_fits(const char* what, int64_t rows, int64_t cols, int64_t z, const char* family = "implicit GEMM",
                      int64_t bm = BM, int64_t bn = BN) {
  if ((cols + bn - 1) / bn > 2147483647) return std::string(family) + " " + what + ": too many column tiles (> 2^31-1)";
  if ((rows + bm - 1) / bm > 65535) return std::string(family) + " " + what + ": more than 65535 row tiles";
  if (z > 65535) return std::string(family) + " " + what + ": groups (x Wgrad chunks) > 65535";
  return "";
}

void validate(const ConvProblem& p) {
  check_problem(p);
  const std::string why = igemm_supports(p);
  if (!why.empty()) throw std::invalid_argument(why);
}

template <int kDefect>
void launch_fprop(const ConvProblem& p, const float* x, const float* w, const float* bias, float* y, bool relu,
                  void* stream) {
  if (p.N == 0) return;
  if (relu) {
    const FpropOps<float, true> ops{p, x, w, bias, y};
    auto k = igemm_fprop_kernel<float, true, kDefect>;
    FC_LAUNCH(k, grid_of(ops, p.groups), dim3(NT), 0, FC_STREAM(stream), ops);
  } else {
    const FpropOps<float, false> ops{p, x, w, bias, y};
    auto k = igemm_fprop_kernel<float, false, kDefect>;
    FC_LAUNCH(k, grid_of(ops, p.groups), dim3(NT), 0, FC_STREAM(stream), ops);
  }
}

template <int kDefect>
void launch_dgrad(const ConvProblem& p, const float* dy, const float* w, float* dx, void* stream) {
  if (p.N == 0) return;
  const int64_t phases = p.stride_h * p.stride_w;
  if (p.groups * phases > 65535) {
    // more (group, phase) pairs than grid.z slices: the direct gather (same result, no phase split)
    direct_dgrad<float>(p, dy, w, dx, stream);
    return;
  }
  DgradOps<float> ops{p, dy, w, dx, {}, {}, 0};
  // the grid covers the largest phase: ceil(H/stride) rows, ceil(W/stride) columns
  ops.th = PhaseTaps{0, (p.H + p.stride_h - 1) / p.stride_h, 0, 1, 0};
  ops.tw = PhaseTaps{0, (p.W + p.stride_w - 1) / p.stride_w, 0, 1, 0};
  auto k = igemm_dgrad_kernel<float, kDefect>;
  FC_LAUNCH(k, grid_of(ops, p.groups * phases), dim3(NT), 0, FC_STREAM(stream), ops);
}

template <int kDefect>
void launch_wgrad(const ConvProblem& p, const float* x, const float* dy, float* dw, float* workspace, void* stream) {
  if (p.N == 0) throw std::invalid_argument("implicit GEMM Wgrad: N == 0 (the caller zeroes grad_weight)");
  const int64_t chunks = igemm_wgrad_chunks(p);
  if (chunks > 1 && workspace == nullptr)
    throw std::invalid_argument("implicit GEMM Wgrad: this problem needs a workspace of " +
                                std::to_string(igemm_wgrad_workspace_elems(p)) + " elements");
  const int64_t npq = p.N * p.P * p.Q;
  const int64_t len = ((npq + chunks - 1) / chunks + BK - 1) / BK * BK;
  const WgradOps<float> ops{p, x, dy, chunks > 1 ? workspace : dw, len, chunks};
  auto k = igemm_wgrad_kernel<float, kDefect>;
  FC_LAUNCH(k, grid_of(ops, p.groups * chunks), dim3(NT), 0, FC_STREAM(stream), ops);
  if (chunks > 1) {
    const int64_t elems = p.weight_elems();
    int64_t blocks = (elems + 255) / 256;
    if (blocks > 65535) blocks = 65535;  // grid-stride loop covers the rest
    auto r = wgrad_reduce_kernel<float>;
    FC_LAUNCH(r, dim3(unsigned(blocks)), dim3(256), 0, FC_STREAM(stream), static_cast<const float*>(workspace),
              chunks, elems, dw);
  }
}

template <typename T>
void launch_1x1_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu, void* stream) {
  if (relu) {
    const Fprop1x1Ops<T, true> ops{p, x, w, bias, y};
    auto k = conv1x1_fprop_kernel<T, true>;
    FC_LAUNCH(k, (grid_of<decltype(ops), T>(ops, p.groups)), dim3(Tile<T>::NT), 0, FC_STREAM(stream), ops);
  } else {
    const Fprop1x1Ops<T, false> ops{p, x, w, bias, y};
    auto k = conv1x1_fprop_kernel<T, false>;
    FC_LAUNCH(k, (grid_of<decltype(ops), T>(ops, p.groups)), dim3(Tile<T>::NT), 0, FC_STREAM(stream), ops);
  }
}

template <typename T>
void launch_1x1_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx, void* stream) {
  if (p.stride_h > 1 || p.stride_w > 1 || p.P != p.H || p.Q != p.W) {  // pixels no output reads
    const int64_t total = p.input_elems();
    int64_t blocks = (total + 255) / 256;
    if (blocks > (int64_t(1) << 20)) blocks = int64_t(1) << 20;  // grid-stride loop covers the rest
    auto z = conv1x1_dgrad_zero_kernel<T>;
    FC_LAUNCH(z, dim3(unsigned(blocks)), dim3(256), 0, FC_STREAM(stream), p, dx);
  }
  const Dgrad1x1Ops<T> ops{p, dy, w, dx};
  auto k = conv1x1_dgrad_kernel<T>;
  FC_LAUNCH(k, (grid_of<decltype(ops), T>(ops, p.groups)), dim3(Tile<T>::NT), 0, FC_STREAM(stream), ops);
}

template <typename T>
void launch_1x1_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw, T* workspace, int64_t chunks,
                      void* stream) {
  const int64_t npq = p.N * p.P * p.Q;
  const int64_t len = ((npq + chunks - 1) / chunks + BK - 1) / BK * BK;
  const Wgrad1x1Ops<T> ops{p, x, dy, chunks > 1 ? workspace : dw, len, chunks};
  auto k = conv1x1_wgrad_kernel<T>;
  FC_LAUNCH(k, (grid_of<decltype(ops), T>(ops, p.groups * chunks)), dim3(Tile<T>::NT), 0, FC_STREAM(stream), ops);
  if (chunks > 1) {
    const int64_t elems = p.weight_elems();
    int64_t blocks = (elems + 255) / 256;
    if (blocks > 65535) blocks = 65535;  // grid-stride loop covers the rest
    auto r = wgrad_reduce_kernel<T>;
    FC_LAUNCH(r, dim3(unsigned(blocks)), dim3(256), 0, FC_STREAM(stream), static_cast<const T*>(workspace), chunks,
              elems, dw);
  }
}

}  // namespace

int64_t igemm_wgrad_chunks(const ConvProblem& p) {
  // A function of the problem only (so results never depend on the device):
  // enough chunks to give a GPU ~256 blocks when the output tile grid is
  // small, never a chunk shallower than 256 of N*P*Q, at most 64 chunks.
  const int64_t npq = p.N * p.P * p.Q;
  const int64_t tiles = ((p.Kg() + BM - 1) / BM) * ((p.Cg() * p.R * p.S + BN - 1) / BN) * p.groups;
  int64_t c = (256 + tiles - 1) / tiles;
  if (c > npq / 256) c = npq / 256;
  if (c > 64) c = 64;
  if (c * p.groups > 65535) c = 65535 / p.groups;
  return c < 1 ? 1 : c;
}

int64_t igemm_wgrad_workspace_elems(const ConvProblem& p) {
  const int64_t c = igemm_wgrad_chunks(p);
  return c > 1 ? c * p.weight_elems() : 0;
}

std::string igemm_supports(const ConvProblem& p) {
  const int64_t Cg = p.Cg(), Kg = p.Kg();
  std::string why = grid_fits("Fprop", Kg, p.N * p.P * p.Q, p.groups);
  // (Dgrad: groups x stride phases beyond 65535 falls back to the direct gather, see launch_dgrad)
  if (why.empty()) why = grid_fits("Dgrad", Cg, p.N * p.H * p.W, p.groups);
  if (why.empty()) why = grid_fits("Wgrad", Kg, Cg * p.R * p.S, p.groups);
  return why;
}

template <typename T>
void igemm_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu, void* stream) {
  static_assert(sizeof(T) == 4, "the implicit GEMM is float32 only");
  validate(p);
  launch_fprop<kIntact>(p, x, w, bias, y, relu, stream);
}
template void igemm_fprop<float>(const ConvProblem&, const float*, const float*, const float*, float*, bool, void*);

void igemm_dgrad(const ConvProblem& p, const float* dy, const float* w, float* dx, void* stream) {
  validate(p);
  launch_dgrad<kIntact>(p, dy, w, dx, stream);
}

void igemm_wgrad(const ConvProblem& p, const float* x, const float* dy, float* dw, float* workspace, void* stream) {
  validate(p);
  launch_wgrad<kIntact>(p, x, dy, dw, workspace, stream);
}
// No double instantiation of the implicit GEMM: 64 double accumulators per
// thread spill on sm_90 (ptxas: 72 bytes). float64 "im2col" runs the direct
// kernels (bindings). (The 1x1 family's double tiles are 32x32, 8x4 per thread.)

// ------------------------------------------------------------- 1x1 family
std::string conv1x1_supports(const ConvProblem& p) {
  if (p.R != 1 || p.S != 1) return "the cuda 1x1 kernels need a 1x1 kernel, got " + std::to_string(p.R) + "x" +
                                    std::to_string(p.S);
  if (p.pad_h != 0 || p.pad_w != 0) return "the cuda 1x1 kernels need zero padding";
  if ((p.P - 1) * p.stride_h >= p.H || (p.Q - 1) * p.stride_w >= p.W)
    return "the cuda 1x1 kernels need every output pixel inside the input (no bottom/right padding)";
  if (p.H * p.W > 2147483647 || p.P * p.Q > 2147483647)
    return "the cuda 1x1 kernels need image planes of fewer than 2^31 pixels";
  // the double tiles (32x32) make the most tiles
  constexpr int64_t bm = Tile<double>::BM, bn = Tile<double>::BN;
  std::string why = grid_fits("Fprop", p.Kg(), p.N * p.P * p.Q, p.groups, "1x1", bm, bn);
  if (why.empty()) why = grid_fits("Dgrad", p.Cg(), p.N * p.P * p.Q, p.groups, "1x1", bm, bn);
  if (why.empty()) why = grid_fits("Wgrad", p.Kg(), p.Cg(), p.groups * igemm_wgrad_chunks(p), "1x1", bm, bn);
  return why;
}

int64_t conv1x1_wgrad_chunks(const ConvProblem& p) { return igemm_wgrad_chunks(p); }

int64_t conv1x1_wgrad_workspace_elems(const ConvProblem& p) {
  const int64_t c = conv1x1_wgrad_chunks(p);
  return c > 1 ? c * p.weight_elems() : 0;
}

namespace {
void validate_1x1(const ConvProblem& p) {
  check_problem(p);
  const std::string why = conv1x1_supports(p);
  if (!why.empty()) throw std::invalid_argument(why);
}
}  // namespace

template <typename T>
void conv1x1_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu, void* stream) {
  validate_1x1(p);
  if (p.N == 0) return;
  launch_1x1_fprop<T>(p, x, w, bias, y, relu, stream);
}

template <typename T>
void conv1x1_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx, void* stream) {
  validate_1x1(p);
  if (p.N == 0) return;
  launch_1x1_dgrad<T>(p, dy, w, dx, stream);
}

template <typename T>
void conv1x1_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw, T* workspace, void* stream) {
  validate_1x1(p);
  if (p.N == 0) throw std::invalid_argument("1x1 Wgrad: N == 0 (the caller zeroes grad_weight)");
  const int64_t chunks = conv1x1_wgrad_chunks(p);
  if (chunks > 1 && workspace == nullptr)
    throw std::invalid_argument("1x1 Wgrad: this problem needs a workspace of " +
                                std::to_string(conv1x1_wgrad_workspace_elems(p)) + " elements");
  launch_1x1_wgrad<T>(p, x, dy, dw, workspace, chunks, stream);
}

#define FC_INSTANTIATE_1X1(T)                                                                          \
  template void conv1x1_fprop<T>(const ConvProblem&, const T*, const T*, const T*, T*, bool, void*); \
  template void conv1x1_dgrad<T>(const ConvProblem&, const T*, const T*, T*, void*);                 \
  template void conv1x1_wgrad<T>(const ConvProblem&, const T*, const T*, T*, T*, void*);
FC_INSTANTIATE_1X1(float)
FC_INSTANTIATE_1X1(double)
#undef FC_INSTANTIATE_1X1

#if defined(FC_EMU_TEST_HOOKS)
void igemm_fprop_without_barrier(const ConvProblem& p, const float* x, const float* w, float* y) {
  validate(p);
  launch_fprop<kNoBarrier>(p, x, w, nullptr, y, false, nullptr);
}

void igemm_defective(const std::string& op, const ConvProblem& p, const float* a, const float* b, float* out,
                     float* workspace) {
  validate(p);
  if (op == "fprop") launch_fprop<kSkipLastTile>(p, a, b, nullptr, out, false, nullptr);
  else if (op == "dgrad") launch_dgrad<kSkipLastTile>(p, a, b, out, nullptr);
  else if (op == "wgrad") launch_wgrad<kSkipLastTile>(p, a, b, out, workspace, nullptr);
  else throw std::invalid_argument("igemm_defective: op must be fprop, dgrad or wgrad");
}
#endif

}  // namespace cuda
}  // namespace fastconv
