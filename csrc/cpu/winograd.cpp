// Winograd F(2x2, 3x3) convolution (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2016) for 3x3 kernels with stride 1 and
// dilation 1: every 2x2 output tile costs 16 multiplies per (input, output)
// channel pair instead of 36, so the GEMM work is 2.25x smaller than im2col's.
//
//   U = G g G^T      (weight, 3x3 -> 4x4)       G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
//   V = B^T d B      (input tile, 4x4 -> 4x4)   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//   Y = A^T M A      (4x4 -> 2x2 output tile)   A^T = [1 1 1 0; 0 1 -1 -1]
//   M[e] = U[e] (K x C) . V[e] (C x tiles)      for each of the 16 positions e
//
// F(2,3) rather than F(4,3): its transforms only add, subtract and halve, so
// the float32 error stays at the level of the direct sum (F(4,3) loses about
// a decimal digit, more than the 2e-5 relative error the tests allow).
//
// Tiles of all images are numbered t = (n, tile row, tile column) and handled
// in fixed blocks (the block size depends only on the problem), so the result
// is bit-identical for any thread count. Blocks run in parallel with serial
// GEMMs when there are enough of them, else one after another with parallel
// GEMMs. Positions outside the input (padding, the ragged last tile) read as
// zero; outputs outside P x Q are not written.
//
// Dgrad with stride 1 is itself a convolution: grad_input = conv(grad_output,
// w') with w'[c][k] the weight rotated by 180 degrees and top/left padding
// 2 - pad, so it runs the same code. Wgrad differentiates the same
// formula: dU[e] = sum over tiles of (A dY A^T)[e] * V[e], then dW = G^T dU G.
#include "conv_common.h"

namespace fastconv {

std::string winograd_supports(const ConvProblem& p) {
  if (p.R != 3 || p.S != 3) return "the winograd algorithm needs a 3x3 kernel";
  if (p.stride_h != 1 || p.stride_w != 1) return "the winograd algorithm needs stride 1";
  if (p.dil_h != 1 || p.dil_w != 1) return "the winograd algorithm needs dilation 1";
  if (p.groups != 1) return "the winograd algorithm needs groups == 1";
  if (p.pad_h > 2 || p.pad_w > 2) return "the winograd algorithm needs padding <= 2";
  return "";
}

namespace {

// One convolution y (N x Cout x Ho x Wo) = conv3x3(x (N x Cin x Hi x Wi)) with
// top/left padding (pt, pl); U holds the transformed weight as 16 row-major
// Cout x Cin matrices.
template <typename T>
struct WinoConv {
  int64_t N, Cin, Hi, Wi, Cout, Ho, Wo, pt, pl;
  int64_t TP, TQ, tiles, Tb;
};

template <typename T>
WinoConv<T> make_wino(int64_t N, int64_t Cin, int64_t Hi, int64_t Wi, int64_t Cout, int64_t Ho, int64_t Wo,
                      int64_t pt, int64_t pl) {
  WinoConv<T> w{N, Cin, Hi, Wi, Cout, Ho, Wo, pt, pl, (Ho + 1) / 2, (Wo + 1) / 2, 0, 0};
  w.tiles = N * w.TP * w.TQ;
  // V and M blocks (16 x (Cin + Cout) x Tb) sized for about 1.5 MiB (L2), but
  // never narrower than 64 tiles (the GEMM repacks U's panels per block).
  const int64_t budget = int64_t(3) << 19;
  int64_t tb = budget / (16 * (Cin + Cout) * int64_t(sizeof(T)));
  tb = std::max<int64_t>(64, std::min<int64_t>(1024, tb / 16 * 16));
  // equal blocks, so that the last one is not a sliver
  const int64_t blocks = (w.tiles + tb - 1) / tb;
  w.Tb = (w.tiles + blocks - 1) / blocks;
  return w;
}

// Distance between the 16 matrices V[e] (rows x nt) or M[e] of a block: one
// cache line more than the matrix, so that the 16 streams the transforms
// walk together never sit a multiple of 4 KiB apart (which mapped them all
// to the same L1 sets: measured 2-3x slower transforms at 64 channels).
inline int64_t e_stride(int64_t rows, int64_t nt) {
  const int64_t n = rows * nt;
  return n + 16 - (n % 16) + 16;
}

// U[e][ko][ci] from a 3x3 filter g (row-major) scaled as G g G^T.
template <typename T>
inline void weight_tile(const T* g, T* u, int64_t stride_e) {
  T t[4][3];
  for (int j = 0; j < 3; ++j) {
    const T g0 = g[j], g1 = g[3 + j], g2 = g[6 + j];
    t[0][j] = g0;
    t[1][j] = T(0.5) * (g0 + g1 + g2);
    t[2][j] = T(0.5) * (g0 - g1 + g2);
    t[3][j] = g2;
  }
  for (int i = 0; i < 4; ++i) {
    const T a = t[i][0], b = t[i][1], c = t[i][2];
    u[(i * 4 + 0) * stride_e] = a;
    u[(i * 4 + 1) * stride_e] = T(0.5) * (a + b + c);
    u[(i * 4 + 2) * stride_e] = T(0.5) * (a - b + c);
    u[(i * 4 + 3) * stride_e] = c;
  }
}

// Transformed weight. flip = false: U[e] = Kout x Cin from w[k][c] (Fprop);
// flip = true: U[e] = C x K from w[k][c] rotated by 180 degrees (Dgrad).
template <typename T>
void transform_weight(const T* w, int64_t K, int64_t C, bool flip, T* U) {
  const int64_t rows = flip ? C : K, cols = flip ? K : C, se = rows * cols;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (K * C > 4096)
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const T* src = flip ? w + (j * C + i) * 9 : w + (i * C + j) * 9;
      T g[9];
      for (int r = 0; r < 9; ++r) g[r] = flip ? src[8 - r] : src[r];
      weight_tile(g, U + i * cols + j, se);
    }
}

// V[e][c][tt] for tiles [t0, t0 + nt) of the block.
template <typename T>
void transform_input(const WinoConv<T>& q, const T* x, int64_t t0, int64_t nt, T* V, bool par) {
  const int64_t Cin = q.Cin, TQ = q.TQ, TPQ = q.TP * q.TQ, se = e_stride(Cin, nt);
  const int64_t wbuf = 2 * TQ + 2;  // padded row span read by one row of tiles
#pragma omp parallel num_threads(::fastconv::max_threads()) if (par)
  {
    std::vector<T> rows(static_cast<size_t>(4 * wbuf));
#pragma omp for schedule(static)
    for (int64_t c = 0; c < Cin; ++c) {
      int64_t t = t0;
      while (t < t0 + nt) {
        // the run of tiles of one tile row of one image
        const int64_t n = t / TPQ, tp = (t % TPQ) / TQ, tq0 = t % TQ;
        const int64_t tq1 = std::min(TQ, tq0 + (t0 + nt - t));
        const T* xc = x + (n * Cin + c) * q.Hi * q.Wi;
        const int64_t w0 = 2 * tq0 - q.pl, wn = 2 * (tq1 - tq0) + 2;
        for (int i = 0; i < 4; ++i) {
          const int64_t ih = 2 * tp - q.pt + i;
          T* d = rows.data() + i * wbuf;
          if (ih < 0 || ih >= q.Hi) {
            for (int64_t j = 0; j < wn; ++j) d[j] = T(0);
            continue;
          }
          const T* xr = xc + ih * q.Wi;
          const int64_t ja = std::min(wn, std::max<int64_t>(0, -w0));
          const int64_t jb = std::max(ja, std::min(wn, q.Wi - w0));
          for (int64_t j = 0; j < ja; ++j) d[j] = T(0);
          for (int64_t j = ja; j < jb; ++j) d[j] = xr[w0 + j];
          for (int64_t j = jb; j < wn; ++j) d[j] = T(0);
        }
        // B^T d B per tile, straight from the row buffer (16 loads, 16 stores
        // per tile: no intermediate arrays, whose mixed-width store/reload
        // stalled store forwarding)
        const T* r0 = rows.data();
        const T* r1 = r0 + wbuf;
        const T* r2 = r1 + wbuf;
        const T* r3 = r2 + wbuf;
        T* out = V + c * nt + (t - t0);
        const int64_t run = tq1 - tq0;
        for (int64_t k = 0; k < run; ++k) {
          T v[4][4];
          for (int j = 0; j < 4; ++j) {
            const T d0 = r0[2 * k + j], d1 = r1[2 * k + j], d2 = r2[2 * k + j], d3 = r3[2 * k + j];
            v[0][j] = d0 - d2;
            v[1][j] = d1 + d2;
            v[2][j] = d2 - d1;
            v[3][j] = d1 - d3;
          }
          for (int i = 0; i < 4; ++i) {
            out[(i * 4 + 0) * se + k] = v[i][0] - v[i][2];
            out[(i * 4 + 1) * se + k] = v[i][1] + v[i][2];
            out[(i * 4 + 2) * se + k] = v[i][2] - v[i][1];
            out[(i * 4 + 3) * se + k] = v[i][1] - v[i][3];
          }
        }
        t += tq1 - tq0;
      }
    }
  }
}

// y tiles from M[e][ko][tt] (A^T M A), + bias, ReLU. Tiles are walked in runs
// along one tile row of one image: each run's two output rows are built in
// a row buffer (vectorized over the tiles) and copied out clipped to Wo.
template <typename T>
void transform_output(const WinoConv<T>& q, const T* M, int64_t t0, int64_t nt, const T* bias, bool relu,
                      T* y, bool par) {
  const int64_t Cout = q.Cout, TQ = q.TQ, TPQ = q.TP * q.TQ, se = e_stride(Cout, nt);
#pragma omp parallel num_threads(::fastconv::max_threads()) if (par)
  {
    std::vector<T> buf(static_cast<size_t>(4 * TQ + 4));
    T* row0 = buf.data();
    T* row1 = row0 + 2 * TQ + 2;
#pragma omp for schedule(static)
    for (int64_t k = 0; k < Cout; ++k) {
      const T b = bias ? bias[k] : T(0);
      const T* m = M + k * nt;
      int64_t t = t0;
      while (t < t0 + nt) {
        const int64_t n = t / TPQ, tp = (t % TPQ) / TQ, tq0 = t % TQ;
        const int64_t run = std::min(TQ - tq0, t0 + nt - t), tt0 = t - t0;
        const T* m00 = m + 0 * se + tt0;
        const T* m01 = m + 1 * se + tt0;
        const T* m02 = m + 2 * se + tt0;
        const T* m03 = m + 3 * se + tt0;
        const T* m10 = m + 4 * se + tt0;
        const T* m11 = m + 5 * se + tt0;
        const T* m12 = m + 6 * se + tt0;
        const T* m13 = m + 7 * se + tt0;
        const T* m20 = m + 8 * se + tt0;
        const T* m21 = m + 9 * se + tt0;
        const T* m22 = m + 10 * se + tt0;
        const T* m23 = m + 11 * se + tt0;
        const T* m30 = m + 12 * se + tt0;
        const T* m31 = m + 13 * se + tt0;
        const T* m32 = m + 14 * se + tt0;
        const T* m33 = m + 15 * se + tt0;
#pragma omp simd
        for (int64_t r = 0; r < run; ++r) {
          // A^T along the rows ...
          const T a0 = m00[r] + m10[r] + m20[r], a1 = m01[r] + m11[r] + m21[r];
          const T a2 = m02[r] + m12[r] + m22[r], a3 = m03[r] + m13[r] + m23[r];
          const T c0 = m10[r] - m20[r] - m30[r], c1 = m11[r] - m21[r] - m31[r];
          const T c2 = m12[r] - m22[r] - m32[r], c3 = m13[r] - m23[r] - m33[r];
          // ... then along the columns
          T o00 = a0 + a1 + a2 + b, o01 = a1 - a2 - a3 + b;
          T o10 = c0 + c1 + c2 + b, o11 = c1 - c2 - c3 + b;
          if (relu) {
            o00 = relu_value(o00);
            o01 = relu_value(o01);
            o10 = relu_value(o10);
            o11 = relu_value(o11);
          }
          row0[2 * r] = o00;
          row0[2 * r + 1] = o01;
          row1[2 * r] = o10;
          row1[2 * r + 1] = o11;
        }
        const int64_t oh = 2 * tp, ow = 2 * tq0, width = std::min(2 * run, q.Wo - ow);
        T* yk = y + (n * Cout + k) * q.Ho * q.Wo + oh * q.Wo + ow;
        for (int64_t j = 0; j < width; ++j) yk[j] = row0[j];
        if (oh + 1 < q.Ho)
          for (int64_t j = 0; j < width; ++j) yk[q.Wo + j] = row1[j];
        t += run;
      }
    }
  }
}

template <typename T>
void wino_run(const WinoConv<T>& q, const T* x, const T* U, const T* bias, bool relu, T* y) {
  if (q.tiles == 0) return;
  const int64_t blocks = (q.tiles + q.Tb - 1) / q.Tb;
  const int64_t scratch = 16 * (e_stride(q.Cin, q.Tb) + e_stride(q.Cout, q.Tb));
  detail::for_items<T>(blocks, scratch, 2, [&](int64_t blk, T* buf, bool par) {
    const int64_t t0 = blk * q.Tb, nt = std::min(q.Tb, q.tiles - t0);
    T* V = buf;
    T* M = buf + 16 * e_stride(q.Cin, q.Tb);
    transform_input(q, x, t0, nt, V, par);
    for (int e = 0; e < 16; ++e)
      gemm<T>(q.Cout, nt, q.Cin, U + e * q.Cout * q.Cin, q.Cin, 1, V + e * e_stride(q.Cin, nt), nt, 1, T(0),
              M + e * e_stride(q.Cout, nt), nt, par);
    transform_output(q, M, t0, nt, bias, relu, y, par);
  });
}

// Wgrad: Z[e][k][tt] = (A dY A^T)[e] of the 2x2 grad_output tiles (zero
// outside P x Q), A = [1 0; 1 1; 1 -1; 0 -1].
template <typename T>
void transform_grad_output(const WinoConv<T>& q, const T* dy, int64_t t0, int64_t nt, T* Z, bool par) {
  const int64_t Cout = q.Cout, TQ = q.TQ, TPQ = q.TP * q.TQ, se = e_stride(Cout, nt);
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
  for (int64_t k = 0; k < Cout; ++k) {
    T* z = Z + k * nt;
    for (int64_t tt = 0; tt < nt; ++tt) {
      const int64_t t = t0 + tt, n = t / TPQ, tp = (t % TPQ) / TQ, tq = t % TQ;
      const T* g = dy + (n * Cout + k) * q.Ho * q.Wo;
      T d[2][2];
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) {
          const int64_t oh = 2 * tp + a, ow = 2 * tq + b;
          d[a][b] = (oh < q.Ho && ow < q.Wo) ? g[oh * q.Wo + ow] : T(0);
        }
      T u[4][2];
      for (int b = 0; b < 2; ++b) {
        u[0][b] = d[0][b];
        u[1][b] = d[0][b] + d[1][b];
        u[2][b] = d[0][b] - d[1][b];
        u[3][b] = -d[1][b];
      }
      for (int i = 0; i < 4; ++i) {
        z[(i * 4 + 0) * se + tt] = u[i][0];
        z[(i * 4 + 1) * se + tt] = u[i][0] + u[i][1];
        z[(i * 4 + 2) * se + tt] = u[i][0] - u[i][1];
        z[(i * 4 + 3) * se + tt] = -u[i][1];
      }
    }
  }
}

// dW[k][c] (3x3) = G^T dU[k][c] G from the 16 K x C matrices dU[e].
template <typename T>
void weight_grad_from_u(const T* dU, int64_t K, int64_t C, T* dw) {
  const int64_t se = K * C;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (K * C > 4096)
  for (int64_t kc = 0; kc < K * C; ++kc) {
    T u[4][4];
    for (int e = 0; e < 16; ++e) u[e / 4][e % 4] = dU[e * se + kc];
    T t[3][4];
    for (int j = 0; j < 4; ++j) {
      t[0][j] = u[0][j] + T(0.5) * (u[1][j] + u[2][j]);
      t[1][j] = T(0.5) * (u[1][j] - u[2][j]);
      t[2][j] = T(0.5) * (u[1][j] + u[2][j]) + u[3][j];
    }
    T* o = dw + kc * 9;
    for (int r = 0; r < 3; ++r) {
      o[r * 3 + 0] = t[r][0] + T(0.5) * (t[r][1] + t[r][2]);
      o[r * 3 + 1] = T(0.5) * (t[r][1] - t[r][2]);
      o[r * 3 + 2] = T(0.5) * (t[r][1] + t[r][2]) + t[r][3];
    }
  }
}

}  // namespace

template <typename T>
void winograd_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu) {
  AlignedBuffer<T> U(16 * p.K * p.C);
  transform_weight(w, p.K, p.C, false, U.data());
  const auto q = make_wino<T>(p.N, p.C, p.H, p.W, p.K, p.P, p.Q, p.pad_h, p.pad_w);
  wino_run(q, x, U.data(), bias, relu, y);
}

template <typename T>
void winograd_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx) {
  AlignedBuffer<T> U(16 * p.K * p.C);
  transform_weight(w, p.K, p.C, true, U.data());
  const auto q = make_wino<T>(p.N, p.K, p.P, p.Q, p.C, p.H, p.W, 2 - p.pad_h, 2 - p.pad_w);
  wino_run(q, dy, U.data(), static_cast<const T*>(nullptr), false, dx);
}

// Wgrad: dU[e] (K x C) = sum over tiles of Z[e] (K x tiles) . V[e]^T, then
// dW = G^T dU G per filter. With many channels, tile blocks run one after another (transforms
// parallel over channels); within a block the 16 positions e are split over
// the threads, each adding its block GEMMs into its own dU[e] in block
// order. So every dU[e] sees the same sums in the same order for any thread
// count, with no per-thread copies of dU (16 x K x C: partial buffers of
// that size per chunk cost more memory traffic than the GEMMs saved).
// Blocks are wider than for Fprop (at least 256 tiles): the block width is
// the GEMM's reduction length here.
template <typename T>
void winograd_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw) {
  auto q = make_wino<T>(p.N, p.C, p.H, p.W, p.K, p.P, p.Q, p.pad_h, p.pad_w);
  const int64_t KC = p.K * p.C;
  if (16 * KC * int64_t(sizeof(T)) <= (int64_t(1) << 20)) {
    // Few channels (dU <= 1 MiB): the 16 block GEMMs are tiny, so blocks run
    // in parallel instead, each chunk of blocks summing into its own copy of
    // dU, and the copies are added in a fixed order (reduce_weight_grad).
    const int64_t blocks = (q.tiles + q.Tb - 1) / q.Tb;
    const int64_t scratch = 16 * (e_stride(q.Cin, q.Tb) + e_stride(q.Cout, q.Tb));
    AlignedBuffer<T> dU(16 * KC);
    detail::reduce_weight_grad<T>(blocks, 16 * KC, dU.data(), [&](int64_t blk, T* acc, bool par) {
      thread_local AlignedBuffer<T> buf;
      buf.resize(scratch);
      const int64_t t0 = blk * q.Tb, nt = std::min(q.Tb, q.tiles - t0);
      T* V = buf.data();
      T* Z = V + 16 * e_stride(q.Cin, q.Tb);
      transform_input(q, x, t0, nt, V, par);
      transform_grad_output(q, dy, t0, nt, Z, par);
      for (int e = 0; e < 16; ++e)
        gemm<T>(p.K, p.C, nt, Z + e * e_stride(p.K, nt), nt, 1, V + e * e_stride(p.C, nt), 1, nt, T(1),
                acc + e * KC, p.C, par);
    });
    weight_grad_from_u(dU.data(), p.K, p.C, dw);
    return;
  }
  if (q.tiles > q.Tb) {
    const int64_t want = std::max<int64_t>(q.Tb, 256);
    const int64_t blocks = (q.tiles + want - 1) / want;
    q.Tb = (q.tiles + blocks - 1) / blocks;
  }
  AlignedBuffer<T> dU(16 * KC);
  std::memset(dU.data(), 0, sizeof(T) * 16 * KC);
  const int64_t blocks = (q.tiles + q.Tb - 1) / q.Tb;
  AlignedBuffer<T> buf(16 * (e_stride(q.Cin, q.Tb) + e_stride(q.Cout, q.Tb)));
  const bool par = max_threads() > 1;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t t0 = blk * q.Tb, nt = std::min(q.Tb, q.tiles - t0);
    T* V = buf.data();
    T* Z = V + 16 * e_stride(q.Cin, q.Tb);
    transform_input(q, x, t0, nt, V, par);
    transform_grad_output(q, dy, t0, nt, Z, par);
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
    for (int e = 0; e < 16; ++e)
      gemm<T>(p.K, p.C, nt, Z + e * e_stride(p.K, nt), nt, 1, V + e * e_stride(p.C, nt), 1, nt, T(1),
              dU.data() + e * KC, p.C, false);
  }
  weight_grad_from_u(dU.data(), p.K, p.C, dw);
}

#define FC_INST(T)                                                                                     \
  template void winograd_fprop<T>(const ConvProblem&, const T*, const T*, const T*, T*, bool);        \
  template void winograd_dgrad<T>(const ConvProblem&, const T*, const T*, T*);                        \
  template void winograd_wgrad<T>(const ConvProblem&, const T*, const T*, T*);
FC_INST(float)
FC_INST(double)
#undef FC_INST

}  // namespace fastconv
