// fastconv's own packed GEMM (BLIS-style): packing, L1/L2/L3 cache blocking,
// register-blocked FMA micro-kernels for AVX-512 and AVX2 chosen at run time
// from CPUID, plus a portable path. No BLAS library is used anywhere.
//
// GEMM names (A, B, C, M, N, K) stay inside GEMM code and its callers' glue.
#pragma once
#include <cstdint>

namespace fastconv {

// Optional epilogue applied to C after accumulation (C row i = output channel):
//   C[i, j] = act(C[i, j] + row_bias[i])
template <typename T>
struct GemmEpilogue {
  const T* row_bias = nullptr;  // length M, or nullptr
  bool relu = false;
};

// C[i*ldc + j] = beta * C[i*ldc + j] + sum_k A(i,k) * B(k,j)   (then epilogue)
//   A(i,k) = A[i*rsa + k*csa],  B(k,j) = B[k*rsb + j*csb]   (any strides, 64-bit)
// beta == 0 means C is write-only (may hold NaN/garbage on entry).
// parallel == true: split the work over OpenMP threads (call from outside a
// parallel region); false: run on the calling thread only.
// Deterministic: the result does not depend on the thread count.
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K,
          const T* A, int64_t rsa, int64_t csa,
          const T* B, int64_t rsb, int64_t csb,
          T beta, T* C, int64_t ldc, bool parallel,
          const GemmEpilogue<T>& ep = GemmEpilogue<T>());

// "avx512", "avx2" or "portable": the micro-kernel the float GEMM dispatches to.
const char* gemm_isa();
// What the CPU supports (CPUID + OS XSAVE state), independent of any override.
bool cpu_has_avx512();
bool cpu_has_avx2_fma();
// Force a micro-kernel ("avx512", "avx2", "portable", or "auto" to re-detect);
// throws std::invalid_argument for an ISA the CPU lacks. For tests/benchmarks.
void set_gemm_isa(const char* isa);

// Measured fp32 FMA peak of this machine in GFLOP/s with `threads` threads
// (a register-only FMA loop in the dispatched ISA, ~`seconds` long).
double measure_peak_gflops(int threads, double seconds);

}  // namespace fastconv
