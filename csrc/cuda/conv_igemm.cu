// Implicit-GEMM Fprop (float32 only; see the end of the file). Per group g the convolution is the
// GEMM  Y[k, npq] = sum_crs W[k, crs] * X_col[crs, npq]  with
// M = K/groups, N = N*P*Q and K_gemm = C/groups*R*S; X_col is never built: the
// B tile is gathered from the input while loading (zero where the window
// falls on padding).
//
// Tiling: a 64-thread block computes a 64x64 tile of Y, each thread an 8x8
// register block (rows ty + 8*i, columns tx + 8*j: strided, so that the eight
// threads of a row read consecutive shared-memory words and write consecutive
// output columns). The K_gemm loop walks BK = 8 at a time through two shared
// buffers: the next tile is fetched into registers while the current one is
// multiplied, then stored into the other buffer, and one __syncthreads() per
// step both publishes the new tile and retires the old one.
#include "fastconv/cuda_compat.h"
#include "fastconv/conv_cuda.h"
#include "fastconv/problem.h"

namespace fastconv {
namespace cuda {
namespace {

constexpr int BM = 64, BN = 64, BK = 8, TM = 8, TN = 8, NT = 64;
constexpr int PAD = 4;  // As rows of 68 words: the transposing store hits 32 distinct banks
static_assert((BM / TM) * (BN / TN) == NT, "one 8x8 block per thread");
static_assert(BM * BK == NT * 8 && BN == NT, "each thread loads 8 A and 8 B elements");

template <typename T, bool kRelu, bool kSync>
__global__ void __launch_bounds__(NT)
    igemm_fprop_kernel(ConvProblem p, const T* __restrict__ x, const T* __restrict__ w,
                       const T* __restrict__ bias, T* __restrict__ y) {
  __shared__ __align__(16) T As[2][BK][BM + PAD];
  __shared__ __align__(16) T Bs[2][BK][BN];

  const int tid = int(threadIdx.x);
  const int ty = tid / (BN / TN), tx = tid % (BN / TN);
  const int64_t g = blockIdx.z;
  const int64_t Cg = p.Cg(), Kg = p.Kg(), RS = p.R * p.S, CRS = Cg * RS;
  const int64_t PQ = p.P * p.Q, NPQ = p.N * PQ;
  const int64_t m0 = int64_t(blockIdx.y) * BM;  // first output channel (within the group)
  const int64_t n0 = int64_t(blockIdx.x) * BN;  // first output pixel (over N*P*Q)

  // B loader: this thread gathers column n0 + tid for every BK row.
  const int64_t bcol = n0 + tid;
  const bool bcol_ok = bcol < NPQ;
  int64_t bh0 = 0, bw0 = 0;
  const T* xg = x;
  if (bcol_ok) {
    const int64_t bn = bcol / PQ, pq = bcol % PQ;
    bh0 = (pq / p.Q) * p.stride_h - p.pad_h;
    bw0 = (pq % p.Q) * p.stride_w - p.pad_w;
    xg = x + (bn * p.C + g * Cg) * p.H * p.W;
  }
  // A loader: element e = tid + NT*i of the 64x8 tile is (m = e / BK, kk = e % BK):
  // eight consecutive threads read eight consecutive weights of one row.
  const T* wg = w + g * Kg * CRS;

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
      const int64_t row = m0 + e / BK, kc = k0 + e % BK;
      a_reg[i] = (row < Kg && kc < CRS) ? wg[row * CRS + kc] : T(0);
    }
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      const int64_t kc = k0 + kk;
      T v = T(0);
      if (bcol_ok && kc < CRS) {
        const int64_t c = kc / RS, rs = kc % RS;
        const int64_t h = bh0 + (rs / p.S) * p.dil_h;
        const int64_t ww = bw0 + (rs % p.S) * p.dil_w;
        if (h >= 0 && h < p.H && ww >= 0 && ww < p.W) v = xg[(c * p.H + h) * p.W + ww];
      }
      b_reg[kk] = v;
    }
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

  const int64_t ktiles = (CRS + BK - 1) / BK;
  load(0);
  store(0);
  if (kSync) __syncthreads();
  for (int64_t t = 0; t < ktiles; ++t) {
    const int cur = int(t & 1);
    if (t + 1 < ktiles) load((t + 1) * BK);  // global loads in flight during the FMAs below
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = As[cur][kk][ty + 8 * i];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Bs[cur][kk][tx + 8 * j];
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

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t row = m0 + ty + 8 * i;
    if (row >= Kg) continue;
    const int64_t k = g * Kg + row;
    const T bk = bias ? bias[k] : T(0);
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t col = n0 + tx + 8 * j;
      if (col >= NPQ) continue;
      T v = acc[i][j] + bk;
      if (kRelu) v = v > T(0) ? v : T(0);
      y[((col / PQ) * p.K + k) * PQ + col % PQ] = v;
    }
  }
}

dim3 igemm_grid(const ConvProblem& p) {
  const int64_t NPQ = p.N * p.P * p.Q;
  return dim3(unsigned((NPQ + BN - 1) / BN), unsigned((p.Kg() + BM - 1) / BM), unsigned(p.groups));
}

}  // namespace

std::string igemm_supports(const ConvProblem& p) {
  const int64_t NPQ = p.N * p.P * p.Q;
  if ((NPQ + BN - 1) / BN > 2147483647) return "implicit GEMM: N*P*Q needs more than 2^31-1 tiles";
  if ((p.Kg() + BM - 1) / BM > 65535) return "implicit GEMM: K/groups needs more than 65535 tiles";
  if (p.groups > 65535) return "implicit GEMM: groups > 65535 (one grid z-slice per group)";
  return "";
}

template <typename T>
void igemm_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu, void* stream) {
  check_problem(p);
  const std::string why = igemm_supports(p);
  if (!why.empty()) throw std::invalid_argument(why);
  if (p.N == 0) return;
  if (relu) {
    auto k = igemm_fprop_kernel<T, true, true>;
    FC_LAUNCH(k, igemm_grid(p), dim3(NT), 0, FC_STREAM(stream), p, x, w, bias, y);
  } else {
    auto k = igemm_fprop_kernel<T, false, true>;
    FC_LAUNCH(k, igemm_grid(p), dim3(NT), 0, FC_STREAM(stream), p, x, w, bias, y);
  }
}

template void igemm_fprop<float>(const ConvProblem&, const float*, const float*, const float*, float*, bool, void*);
// No double instantiation: 64 double accumulators per thread spill on sm_90
// (ptxas: 72 bytes). float64 "im2col" Fprop runs the direct kernel (bindings).

#if defined(FC_EMU_TEST_HOOKS)
void igemm_fprop_without_barrier(const ConvProblem& p, const float* x, const float* w, float* y) {
  check_problem(p);
  if (p.N == 0) return;
  auto k = igemm_fprop_kernel<float, false, false>;
  FC_LAUNCH(k, igemm_grid(p), dim3(NT), 0, FC_STREAM(nullptr), p, x, w, static_cast<const float*>(nullptr), y);
}
#endif

}  // namespace cuda
}  // namespace fastconv
