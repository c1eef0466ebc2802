// Internal contract between the GEMM driver (gemm.cpp, baseline x86-64) and
// the ISA-specific micro-kernels (gemm_avx512.cpp, gemm_avx2.cpp).
//
// This header is included by a baseline-compiled TU, so it must not use
// intrinsics or vector types: only plain function pointers and constants.
// The ISA TUs are only ever *called* through these pointers after gemm.cpp has
// checked CPUID + XCR0, so the binary stays runnable on any x86-64.
#pragma once
#include <cstdint>

namespace fastconv {
namespace detail {

// Packed operand layouts (shared by every kernel; MR/NR come from the kernel):
//   A micro-panel: MR rows x kc, stored k-major:  a[p*MR + i] = A(i, p).
//                  Rows >= m are zero-filled by the packer.
//   B micro-panel: kc x NR, stored k-major:       b[p*ldb + j] = B(p, j).
//                  Packed panels use ldb == NR and are zero-padded to NR
//                  columns; the driver may also pass an *unpacked* row-major B
//                  (ldb == rsb) for full-width panels, so kernels must use
//                  unaligned loads and must not assume ldb == NR.
//
// Micro-kernel: computes the MR x NR product acc = a * b over kc steps, then
// writes only the m x n corner (m <= MR, n <= NR) of C (row stride ldc):
//   r = acc                      if beta == 0   (C is never read)
//   r = C + acc                  if beta == 1
//   r = beta*C + acc             otherwise
//   if bias: r += bias[i]        (bias points at this tile's first row)
//   if relu: r = max(r, 0)
// The driver passes beta = 1 and no bias/relu for all but the first/last K
// block, so the epilogue is fused into the last pass over C.
// Every kernel accumulates each C element as one sequential chain over k
// starting from 0, so the result never depends on how the driver tiles M/N
// (which is what makes the output independent of the thread count).
template <typename T>
using GemmUkr = void (*)(int64_t kc, const T* a, const T* b, int64_t ldb,
                         T* c, int64_t ldc, int m, int n, T beta,
                         const T* bias, bool relu);

// Optional ISA-accelerated "k-major" packer, the transpose that both
// row-major A (lines = rows of A, W = MR) and transposed B (lines = columns
// of B, W = NR) need:
//   dst[p*W + j] = src[j*ld + p]   for j < w (<= W), p < kc
//   dst[p*W + j] = 0               for w <= j < W
template <typename T>
using PackKMajor = void (*)(int64_t w, int W, int64_t kc, const T* src,
                            int64_t ld, T* dst);

template <typename T>
struct GemmKernel {
  const char* name;
  int mr;
  int nr;
  GemmUkr<T> ukr;
  PackKMajor<T> pack_kmajor;  // nullptr: use the portable blocked transpose
  // Narrower variants for the ragged N edge, same MR and same packed layout
  // (they just read the first columns of each B row): edge[i] handles
  // n <= (i+1)*edge_w. nullptr entries fall back to ukr. They accumulate
  // exactly like ukr, so using them never changes results.
  int edge_w;
  GemmUkr<T> edge[4];
};

// Upper bounds over all kernels (for fixed-size scratch in the driver).
constexpr int kMaxMR = 16;
constexpr int kMaxNR = 64;

// Defined in gemm_avx512.cpp (compiled with -mavx512f/vl/bw/dq -mfma).
// Fills up to `max` tile shapes (best general-purpose shape first); the driver
// picks one per call from M and N so small/skinny problems waste fewer lanes.
int sgemm_kernels_avx512(GemmKernel<float>* out, int max);
// Register-only FMA loop: runs `iters` iterations, returns flops executed.
double peak_fma_loop_avx512(int64_t iters);

// Defined in gemm_avx2.cpp (compiled with -mavx2 -mfma).
GemmKernel<float> sgemm_kernel_avx2();
double peak_fma_loop_avx2(int64_t iters);

}  // namespace detail
}  // namespace fastconv
