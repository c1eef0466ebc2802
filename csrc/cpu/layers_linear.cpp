// linear (y = x w^T + b) and its gradients on fastconv's packed GEMM. The
// GEMM takes any element strides, so the transposes are expressed as strides
// and nothing is copied.
#include <algorithm>
#include <vector>

#include "fastconv/gemm.h"
#include "fastconv/layers_cpu.h"
#include "layers_common.h"

namespace fastconv {
namespace layers_detail {

template <typename T>
FC_CLONES void copy_row(const T* b, int64_t n, T* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = b[i];
}

// acc[j] += row[j] over a column block.
template <typename T>
FC_CLONES void add_row(const T* row, int64_t n, double* acc) {
  for (int64_t j = 0; j < n; ++j) acc[j] += double(row[j]);
}

}  // namespace layers_detail

using namespace layers_detail;

template <typename T>
void linear_forward(int64_t M, int64_t I, int64_t O, const T* x, const T* w, const T* b, T* y) {
  T beta = T(0);
  if (b) {
    // The bias runs along the columns of y, which the GEMM's row-bias
    // epilogue does not cover: pre-fill y with it and accumulate (beta = 1).
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (M * O > kParallelMin)
    for (int64_t m = 0; m < M; ++m) copy_row<T>(b, O, y + m * O);
    beta = T(1);
  }
  if (I == 0) {
    if (!b) std::fill(y, y + M * O, T(0));
    return;
  }
  // A = x (M x I), B(k, j) = w[j, k]: w^T through strides.
  gemm<T>(M, O, I, x, I, 1, w, 1, I, beta, y, O, true);
}

template <typename T>
void linear_backward(int64_t M, int64_t I, int64_t O, const T* dy, const T* x, const T* w, T* dx,
                     T* dw, T* db) {
  if (dx) {
    if (O == 0) std::fill(dx, dx + M * I, T(0));
    else gemm<T>(M, I, O, dy, O, 1, w, I, 1, T(0), dx, I, true);  // dy (M x O) . w (O x I)
  }
  if (dw) {
    if (M == 0) std::fill(dw, dw + O * I, T(0));
    else gemm<T>(O, I, M, dy, 1, O, x, I, 1, T(0), dw, I, true);  // dy^T (O x M) . x (M x I)
  }
  if (db) {
    // column sums of dy, each column added in row order (fixed), column
    // blocks spread over threads
    constexpr int64_t kBlock = 256;
    const int64_t nb = ceil_div(O, kBlock);
#pragma omp parallel num_threads(::fastconv::max_threads()) if (M * O > kParallelMin)
    {
      std::vector<double> acc(kBlock);
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < nb; ++blk) {
        const int64_t j0 = blk * kBlock, len = std::min(kBlock, O - j0);
        std::fill(acc.begin(), acc.begin() + len, 0.0);
        for (int64_t m = 0; m < M; ++m) add_row<T>(dy + m * O + j0, len, acc.data());
        for (int64_t j = 0; j < len; ++j) db[j0 + j] = T(acc[j]);
      }
    }
  }
}

template void linear_forward<float>(int64_t, int64_t, int64_t, const float*, const float*,
                                    const float*, float*);
template void linear_forward<double>(int64_t, int64_t, int64_t, const double*, const double*,
                                     const double*, double*);
template void linear_backward<float>(int64_t, int64_t, int64_t, const float*, const float*,
                                     const float*, float*, float*, float*);
template void linear_backward<double>(int64_t, int64_t, int64_t, const double*, const double*,
                                      const double*, double*, double*, double*);

}  // namespace fastconv
