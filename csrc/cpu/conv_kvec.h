// Register-blocked direct convolution, vectorized over output channels
// (internal header shared by conv_kvec.cpp, the baseline driver, and
// conv_kvec_avx512.cpp, the AVX-512 tile kernels).
//
// Output pixel (p, q) of output channels k0..k0+16*KV-1 is a vector sum over
// the taps (c, r, s) of  weight[c, r, s, k0:k0+16*KV] * input[c, p*sh + r*dh,
// q*sw + s*dw]: one broadcast input value times a weight vector. A tile holds
// RT output rows x QT pixels x KV weight vectors in RT*QT*KV <= 28 zmm
// accumulators, so each broadcast feeds KV multiply-adds and each weight
// vector RT*QT of them, with no im2col matrix and no wasted columns. The input
// is read from a zero-padded copy of the rows a job needs, so the inner loop
// has no bounds checks; kernel rows that read only padding rows (for every
// row of the tile) are skipped. Every output element is one sequential
// multiply-add chain over (c, r, s); the tiles and row chunks follow from the
// problem alone, never from the thread count: deterministic.
#pragma once
#include <cstdint>

#include "fastconv/problem.h"

namespace fastconv {
namespace detail {

struct KvecJob {
  const float* xp;   // padded input rows of one image and group: Cg planes of `plane` elements
  int64_t plane;     // elements per channel in xp (rows * Wp)
  int64_t Wp;        // padded row length
  int64_t row0;      // padded-row index (0 = top padding edge) of xp's first row
  const float* wt;   // weights of the group, [Cg][R][S][Kpad], lanes >= Kg zero
  int64_t Cg, R, S, Kg, Kpad;
  int64_t sh, sw, dh, dw;
  int64_t H, ph;     // input rows and top padding (kernel-row skipping)
  int64_t Q, PQ;
  float* y;          // output of the image and group: Kg planes of PQ
  const float* bias; // Kg values or nullptr
  bool relu;
};

// Output rows [p0, p1) of one job (AVX-512; conv_kvec_avx512.cpp).
void kvec_rows_avx512(const KvecJob& j, int64_t p0, int64_t p1);

// conv_kvec.cpp: whether the CPU runs the tiles (the GEMM's ISA choice is
// avx512), whether the kernels take a problem (fp32 only), and the operators.
bool kvec_available();
bool kvec_fprop_ok(const ConvProblem& p);
bool kvec_dgrad_ok(const ConvProblem& p);
bool kvec_wgrad_ok(const ConvProblem& p);
void kvec_fprop(const ConvProblem& p, const float* x, const float* w, const float* bias, float* y,
                bool relu);
void kvec_dgrad(const ConvProblem& p, const float* dy, const float* w, float* dx);
void kvec_wgrad(const ConvProblem& p, const float* x, const float* dy, float* dw);

}  // namespace detail
}  // namespace fastconv
