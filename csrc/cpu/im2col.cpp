// im2col + our packed GEMM.
//
// Fprop:  output[n, g] (Kg x PQ)  = weight[g] (Kg x CgRS) . col[n, g] (CgRS x PQ)
// Dgrad:  dcol (CgRS x PQ)        = weight[g]^T . grad_output[n, g], then a
//         gather-style col2im: each grad_input row pulls its taps (no atomics).
// Wgrad:  grad_weight[g]         += grad_output[n, g] . col[n, g]^T, summed over
//         n and column tiles in a fixed order (see reduce_weight_grad).
// The column matrix is never materialized for the whole batch: it is built one
// tile of output columns at a time, at most kIm2colTileBytes (16 MiB) per
// thread (a tile is never narrower than 64 columns, so for CgRS > 65536 the
// bound is CgRS * 64 * sizeof(T)).
#include "conv_common.h"

namespace fastconv {

using detail::im2col_rows;
using detail::im2col_tile_cols;

std::string im2col_supports(const ConvProblem&) { return ""; }

template <typename T>
void im2col_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, HW = p.H * p.W;
  const int64_t CRS = Cg * p.R * p.S;
  const int64_t nt = im2col_tile_cols(CRS, PQ, sizeof(T));
  const int64_t tiles = (PQ + nt - 1) / nt;
  const int64_t items = p.N * p.groups * tiles;
  const int threads = max_threads();

  auto run_item = [&](int64_t item, T* col, bool par) {
    const int64_t t = item % tiles, ng = item / tiles;
    const int64_t g = ng % p.groups, n = ng / p.groups;
    const int64_t j0 = t * nt, ncols = std::min(nt, PQ - j0);
    const T* xg = x + (n * p.C + g * Cg) * HW;
    if (par) {
#pragma omp parallel for schedule(static)
      for (int64_t row = 0; row < CRS; ++row) im2col_rows(p, xg, j0, ncols, row, row + 1, col);
    } else {
      im2col_rows(p, xg, j0, ncols, 0, CRS, col);
    }
    GemmEpilogue<T> ep;
    ep.row_bias = bias ? bias + g * Kg : nullptr;
    ep.relu = relu;
    gemm<T>(Kg, ncols, CRS, w + g * Kg * CRS, CRS, 1, col, ncols, 1, T(0),
            y + (n * p.K + g * Kg) * PQ + j0, PQ, par, ep);
  };

  if (threads > 1 && items >= 2 * threads) {
#pragma omp parallel
    {
      AlignedBuffer<T> col(CRS * nt);
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < items; ++item) run_item(item, col.data(), false);
    }
  } else {
    AlignedBuffer<T> col(CRS * nt);
    for (int64_t item = 0; item < items; ++item) run_item(item, col.data(), threads > 1);
  }
}

// col2im as a gather for output rows [p0, p1): grad_input rows of channels
// [c0, c1) pull every tap (r, s) that lands on them from the dcol tile.
template <typename T>
static void col2im_gather_rows(const ConvProblem& p, const T* dcol, int64_t p0, int64_t p1,
                               int64_t cg_row0, int64_t cg_row1, T* dxg) {
  const int64_t HW = p.H * p.W, RS = p.R * p.S, ncols = (p1 - p0) * p.Q;
  for (int64_t item = cg_row0; item < cg_row1; ++item) {  // item = c * H + h
    const int64_t c = item / p.H, h = item % p.H;
    T* dxr = dxg + c * HW + h * p.W;
    for (int64_t r = 0; r < p.R; ++r) {
      const int64_t num = h + p.pad_h - r * p.dil_h;
      if (num < 0 || num % p.stride_h) continue;
      const int64_t pp = num / p.stride_h;
      if (pp < p0 || pp >= p1) continue;
      for (int64_t s = 0; s < p.S; ++s) {
        const T* src = dcol + (c * RS + r * p.S + s) * ncols + (pp - p0) * p.Q;
        const int64_t woff = s * p.dil_w - p.pad_w;
        const int64_t q0 = first_valid(woff, p.stride_w);
        const int64_t q1 = end_valid(woff, p.stride_w, p.W, p.Q);
        if (p.stride_w == 1) {
          T* d = dxr + woff;
#pragma omp simd
          for (int64_t q = q0; q < q1; ++q) d[q] += src[q];
        } else {
          for (int64_t q = q0; q < q1; ++q) dxr[q * p.stride_w + woff] += src[q];
        }
      }
    }
  }
}

template <typename T>
void im2col_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, HW = p.H * p.W;
  const int64_t CRS = Cg * p.R * p.S;
  // tile over whole output rows so a tile's taps map to a band of input rows
  const int64_t rows_per_tile =
      std::max<int64_t>(1, std::min<int64_t>(p.P, im2col_tile_cols(CRS, PQ, sizeof(T)) / p.Q));
  const int64_t items = p.N * p.groups;
  const int threads = max_threads();

  auto run_item = [&](int64_t item, T* dcol, bool par) {
    const int64_t g = item % p.groups, n = item / p.groups;
    T* dxg = dx + (n * p.C + g * Cg) * HW;
    std::memset(dxg, 0, sizeof(T) * Cg * HW);
    for (int64_t p0 = 0; p0 < p.P; p0 += rows_per_tile) {
      const int64_t p1 = std::min(p.P, p0 + rows_per_tile), ncols = (p1 - p0) * p.Q;
      // dcol = weight[g]^T (CRS x Kg) . grad_output tile (Kg x ncols)
      gemm<T>(CRS, ncols, Kg, w + g * Kg * CRS, 1, CRS, dy + (n * p.K + g * Kg) * PQ + p0 * p.Q,
              PQ, 1, T(0), dcol, ncols, par);
      if (par) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < Cg * p.H; ++i) col2im_gather_rows(p, dcol, p0, p1, i, i + 1, dxg);
      } else {
        col2im_gather_rows(p, dcol, p0, p1, 0, Cg * p.H, dxg);
      }
    }
  };

  if (threads > 1 && items >= threads) {
#pragma omp parallel
    {
      AlignedBuffer<T> dcol(CRS * rows_per_tile * p.Q);
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < items; ++item) run_item(item, dcol.data(), false);
    }
  } else {
    AlignedBuffer<T> dcol(CRS * rows_per_tile * p.Q);
    for (int64_t item = 0; item < items; ++item) run_item(item, dcol.data(), threads > 1);
  }
}

template <typename T>
void im2col_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, HW = p.H * p.W;
  const int64_t CRS = Cg * p.R * p.S;
  const int64_t nt = im2col_tile_cols(CRS, PQ, sizeof(T));
  const int64_t tiles = (PQ + nt - 1) / nt;
  // items ordered (n, tile) within each group; groups are independent slices
  const int64_t items = p.N * tiles * p.groups;
  const int64_t welems = p.K * CRS;
  // one column buffer per thread, created lazily inside the body
  detail::reduce_weight_grad<T>(items, welems, dw, [&](int64_t item, T* acc, bool par) {
    thread_local AlignedBuffer<T> col;
    col.resize(CRS * nt);
    const int64_t g = item % p.groups, nt_item = item / p.groups;
    const int64_t t = nt_item % tiles, n = nt_item / tiles;
    const int64_t j0 = t * nt, ncols = std::min(nt, PQ - j0);
    const T* xg = x + (n * p.C + g * Cg) * HW;
    T* colp = col.data();
    if (par) {
#pragma omp parallel for schedule(static)
      for (int64_t row = 0; row < CRS; ++row) im2col_rows(p, xg, j0, ncols, row, row + 1, colp);
    } else {
      im2col_rows(p, xg, j0, ncols, 0, CRS, colp);
    }
    // acc[g] (Kg x CRS) += grad_output tile (Kg x ncols) . col^T (ncols x CRS)
    gemm<T>(Kg, CRS, ncols, dy + (n * p.K + g * Kg) * PQ + j0, PQ, 1, colp, 1, ncols, T(1),
            acc + g * Kg * CRS, CRS, par);
  });
}

#define FC_INSTANTIATE(T)                                                                    \
  template void im2col_fprop<T>(const ConvProblem&, const T*, const T*, const T*, T*, bool); \
  template void im2col_dgrad<T>(const ConvProblem&, const T*, const T*, T*);                 \
  template void im2col_wgrad<T>(const ConvProblem&, const T*, const T*, T*);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
#undef FC_INSTANTIATE

}  // namespace fastconv
