// Pieces shared by the GEMM-based convolution algorithms (internal header).
#pragma once
#include <algorithm>
#include <cstring>
#include <vector>

#include "fastconv/conv_cpu.h"
#include "fastconv/gemm.h"
#include "fastconv/parallel.h"

namespace fastconv {
namespace detail {

// Build rows [row0, row1) of the im2col matrix of one image and one group for
// output columns [j0, j0 + nt): row (c, r, s), column j = p*Q + q holds
// input[c, p*stride_h - pad_h + r*dil_h, q*stride_w - pad_w + s*dil_w] or 0.
// `xg` points at the group's first input channel; `col` is row-major (ld nt).
// `ld` is the row stride of `col` (defaults to nt; larger when several images
// share one column block side by side).
template <typename T>
void im2col_rows(const ConvProblem& p, const T* xg, int64_t j0, int64_t nt, int64_t row0,
                 int64_t row1, T* col, int64_t ld = -1) {
  if (ld < 0) ld = nt;
  const int64_t HW = p.H * p.W, RS = p.R * p.S;
  if (j0 == 0 && nt == p.P * p.Q) {
    // Whole image (the common case for small images): walk output rows
    // directly, no divisions per segment, no memcpy calls for short rows.
    for (int64_t row = row0; row < row1; ++row) {
      const int64_t c = row / RS, r = (row % RS) / p.S, s = row % p.S;
      const T* xc = xg + c * HW;
      const int64_t hoff = r * p.dil_h - p.pad_h, woff = s * p.dil_w - p.pad_w;
      const int64_t qa = std::min(p.Q, first_valid(woff, p.stride_w));
      const int64_t qb = std::max(qa, end_valid(woff, p.stride_w, p.W, p.Q));
      T* dst = col + row * ld;
      for (int64_t pp = 0; pp < p.P; ++pp, dst += p.Q) {
        const int64_t ih = pp * p.stride_h + hoff;
        if (ih < 0 || ih >= p.H) {
          for (int64_t q = 0; q < p.Q; ++q) dst[q] = T(0);
          continue;
        }
        const T* xr = xc + ih * p.W + woff;
        for (int64_t q = 0; q < qa; ++q) dst[q] = T(0);
        if (p.stride_w == 1) {
          for (int64_t q = qa; q < qb; ++q) dst[q] = xr[q];
        } else {
          for (int64_t q = qa; q < qb; ++q) dst[q] = xr[q * p.stride_w];
        }
        for (int64_t q = qb; q < p.Q; ++q) dst[q] = T(0);
      }
    }
    return;
  }
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t c = row / RS, r = (row % RS) / p.S, s = row % p.S;
    const T* xc = xg + c * HW;
    const int64_t hoff = r * p.dil_h - p.pad_h, woff = s * p.dil_w - p.pad_w;
    const int64_t qa = first_valid(woff, p.stride_w);
    const int64_t qb = std::max(qa, end_valid(woff, p.stride_w, p.W, p.Q));
    T* dst = col + row * ld;
    int64_t j = j0;
    const int64_t jend = j0 + nt;
    while (j < jend) {
      const int64_t pp = j / p.Q, q0 = j % p.Q;
      const int64_t q1 = std::min(p.Q, q0 + (jend - j));
      const int64_t ih = pp * p.stride_h + hoff;
      if (ih < 0 || ih >= p.H) {
        std::memset(dst, 0, sizeof(T) * (q1 - q0));
      } else {
        const T* xr = xc + ih * p.W + woff;
        const int64_t a = std::min(std::max(q0, qa), q1), b = std::max(std::min(q1, qb), a);
        for (int64_t q = q0; q < a; ++q) dst[q - q0] = T(0);
        if (p.stride_w == 1) {
          std::memcpy(dst + (a - q0), xr + a, sizeof(T) * (b - a));
        } else {
          for (int64_t q = a; q < b; ++q) dst[q - q0] = xr[q * p.stride_w];
        }
        for (int64_t q = b; q < q1; ++q) dst[q - q0] = T(0);
      }
      dst += q1 - q0;
      j += q1 - q0;
    }
  }
}

// Deterministic reduction of a weight gradient over `items` independent
// contributions. body(item, acc, parallel) must ADD item's contribution into
// acc (a full K x Cg x R x S buffer). The result never depends on the thread
// count: with small weights, items are cut into a FIXED number of contiguous
// chunks, each summed into its own buffer by one thread, then the chunks are
// added in order; with large weights, items run in order and each body
// parallelizes internally (its GEMM splits M/N, never the reduction).
template <typename T, typename Body>
void reduce_weight_grad(int64_t items, int64_t welems, T* dw, Body&& body) {
  constexpr int64_t kChunks = 8;
  constexpr int64_t kPartialBytes = int64_t(64) << 20;
  const int64_t chunks = std::min<int64_t>(kChunks, items);
  if (items <= 0) {
    std::memset(dw, 0, sizeof(T) * welems);
    return;
  }
  if (chunks > 1 && max_threads() > 1 && welems * chunks * int64_t(sizeof(T)) <= kPartialBytes) {
    AlignedBuffer<T> partial(welems * chunks);
    T* part = partial.data();
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(dynamic, 1)
    for (int64_t ch = 0; ch < chunks; ++ch) {
      T* acc = part + ch * welems;
      std::memset(acc, 0, sizeof(T) * welems);
      const int64_t i0 = items * ch / chunks, i1 = items * (ch + 1) / chunks;
      for (int64_t i = i0; i < i1; ++i) body(i, acc, false);
    }
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static)
    for (int64_t e = 0; e < welems; ++e) {
      T s = part[e];
      for (int64_t ch = 1; ch < chunks; ++ch) s += part[ch * welems + e];
      dw[e] = s;
    }
    return;
  }
  // Same chunk boundaries as above so 1 thread and N threads agree bit for bit.
  std::memset(dw, 0, sizeof(T) * welems);
  if (chunks > 1 && welems * chunks * int64_t(sizeof(T)) <= kPartialBytes) {
    AlignedBuffer<T> acc(welems);
    for (int64_t ch = 0; ch < chunks; ++ch) {
      std::memset(acc.data(), 0, sizeof(T) * welems);
      const int64_t i0 = items * ch / chunks, i1 = items * (ch + 1) / chunks;
      for (int64_t i = i0; i < i1; ++i) body(i, acc.data(), false);
      for (int64_t e = 0; e < welems; ++e) dw[e] += acc.data()[e];
    }
    return;
  }
  for (int64_t i = 0; i < items; ++i) body(i, dw, true);
}

// Number of output columns per im2col tile so the tile stays under the bound.
inline int64_t im2col_tile_cols(int64_t rows, int64_t total_cols, int64_t elem_bytes) {
  int64_t nt = kIm2colTileBytes / std::max<int64_t>(1, rows * elem_bytes);
  nt = std::max<int64_t>(nt, 64);
  return std::min(nt, total_cols);
}

// Run body(item, scratch, parallel) over items [0, items): in parallel, one
// item per thread at a time with serial GEMMs inside, when there are at
// least min_items per thread; else one after another with parallel GEMMs
// inside. Each thread gets its own scratch of scratch_elems elements. The
// items themselves never depend on the thread count (determinism).
template <typename T, typename Body>
void for_items(int64_t items, int64_t scratch_elems, int64_t min_items, Body&& body) {
  const int threads = max_threads();
  if (threads > 1 && items >= min_items * threads) {
#pragma omp parallel num_threads(::fastconv::max_threads())
    {
      AlignedBuffer<T> scratch(scratch_elems);
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < items; ++i) body(i, scratch.data(), false);
    }
  } else {
    AlignedBuffer<T> scratch(scratch_elems);
    for (int64_t i = 0; i < items; ++i) body(i, scratch.data(), threads > 1);
  }
}

}  // namespace detail
}  // namespace fastconv
