// fastconv GEMM driver: ISA detection/dispatch, BLIS-style blocking, packing,
// epilogue, OpenMP split, and the portable micro-kernel.
//
// Compiled for the x86-64 baseline (-O3 -fopenmp only). The AVX-512 / AVX2
// micro-kernels live in their own TUs and are reached only through function
// pointers handed out after the CPUID + XCR0 checks below.
//
// Loop nest (C row-major, vectors run along N, A values are broadcast):
//   jc : N in blocks of NC      -> packed B block (KC x NC) sized for L2
//   pc : K in blocks of KC      -> the one K split; never crosses threads
//   ir : M in steps of MR       -> packed A micro-panel (MR x KC) sized for L1
//   jr : N in steps of NR       -> B micro-panels stream from L2
//   micro-kernel MR x NR
// This is BLIS's loop nest with the roles of A and B swapped (it computes
// C^T = B^T A^T in BLIS's column-major terms): the broadcast operand stays in
// L1 and the vector operand streams from L2, which suits a row-major C.
#include <fastconv/gemm.h>
#include <fastconv/parallel.h>
#include <fastconv/problem.h>  // relu_value

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cpuid.h>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "gemm_kernels.h"

namespace fastconv {
namespace detail {
namespace {

// ---------------------------------------------------------------------------
// CPU feature detection. CPUID says what the core implements; XCR0 (XGETBV)
// says whether the OS saves/restores the ymm/zmm state, without which using
// those registers is unsafe even if CPUID advertises them.
// ---------------------------------------------------------------------------
uint64_t read_xcr0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

struct CpuFeatures {
  bool avx2_fma = false;
  bool avx512 = false;  // F + VL + BW + DQ, with OS zmm support
};

CpuFeatures detect_cpu() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27);
  const bool avx = c & (1u << 28);
  const bool fma = c & (1u << 12);
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = read_xcr0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;             // SSE + AVX state
  const bool os_zmm = os_ymm && (xcr0 & 0xE0) == 0xE0;  // opmask + zmm hi
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  const bool f512 = b & (1u << 16), dq = b & (1u << 17);
  const bool bw = b & (1u << 30), vl = b & (1u << 31);
  f.avx2_fma = os_ymm && avx2 && fma;
  f.avx512 = os_zmm && f.avx2_fma && f512 && dq && bw && vl;
  return f;
}

const CpuFeatures& cpu() {
  static const CpuFeatures f = detect_cpu();
  return f;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

enum Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

int best_isa() {
  if (cpu().avx512) return kAvx512;
  if (cpu().avx2_fma) return kAvx2;
  return kPortable;
}

std::atomic<int> g_isa{-1};  // -1: not chosen yet

int active_isa() {
  int isa = g_isa.load(std::memory_order_relaxed);
  if (isa < 0) {
    isa = best_isa();
    g_isa.store(isa, std::memory_order_relaxed);
  }
  return isa;
}

// ---------------------------------------------------------------------------
// Portable micro-kernel: plain loops over a fixed-size accumulator tile that
// g++ vectorizes with SSE2 at baseline. Also the only double kernel.
// ---------------------------------------------------------------------------
template <typename T, int MR, int NR>
void ukr_portable(int64_t kc, const T* a, const T* b, int64_t ldb, T* c,
                  int64_t ldc, int m, int n, T beta, const T* bias, bool relu) {
  T acc[MR][NR] = {};
  for (int64_t p = 0; p < kc; ++p) {
    for (int i = 0; i < MR; ++i) {
      const T ai = a[i];
      for (int j = 0; j < NR; ++j) acc[i][j] += ai * b[j];
    }
    a += MR;
    b += ldb;
  }
  for (int i = 0; i < m; ++i) {
    T* ci = c + i * ldc;
    const T bi = bias ? bias[i] : T(0);
    for (int j = 0; j < n; ++j) {
      T r = acc[i][j];
      if (beta == T(1))
        r = ci[j] + r;
      else if (beta != T(0))
        r = beta * ci[j] + r;
      if (bias) r += bi;
      if (relu) r = relu_value(r);
      ci[j] = r;
    }
  }
}

// 4x8 float / 4x4 double: 8 SSE2 accumulators, which leaves registers for B
// and the broadcast (4x16 spilled and ran 3x slower).
template <typename T>
GemmKernel<T> portable_kernel();
template <>
GemmKernel<float> portable_kernel<float>() {
  return {"portable", 4, 8, &ukr_portable<float, 4, 8>, nullptr, 8, {}};
}
template <>
GemmKernel<double> portable_kernel<double>() {
  return {"portable", 4, 4, &ukr_portable<double, 4, 4>, nullptr, 4, {}};
}

// Of the active ISA's tile shapes, the one with the least padded work for this
// M x N (earlier entries win near-ties). The choice depends only on the call's
// shape, and all shapes accumulate identically anyway.
template <typename T>
GemmKernel<T> pick_shape(const GemmKernel<T>* ks, int n, int64_t M, int64_t N) {
  int best = 0;
  double best_cost = 1e300;
  for (int i = 0; i < n; ++i) {
    // The N edge runs on a narrower variant, so N only pads to edge_w.
    const double cost = double(round_up(M, ks[i].mr)) * double(round_up(N, ks[i].edge_w));
    if (cost < best_cost * 0.97) {
      best_cost = cost;
      best = i;
    }
  }
  return ks[best];
}

struct FloatKernels {
  GemmKernel<float> avx512[4];
  int n512 = 0;
  GemmKernel<float> avx2;
  FloatKernels() {
    // The ISA TUs are entered only here, after the CPU check.
    if (cpu().avx512) n512 = sgemm_kernels_avx512(avx512, 4);
    avx2 = cpu().avx2_fma ? sgemm_kernel_avx2() : portable_kernel<float>();
  }
};

template <typename T>
GemmKernel<T> select_kernel(int64_t M, int64_t N);
template <>
GemmKernel<float> select_kernel<float>(int64_t M, int64_t N) {
  static const FloatKernels ks;
  switch (active_isa()) {
    case kAvx512:
      if (ks.n512 > 0) return pick_shape(ks.avx512, ks.n512, M, N);
      return portable_kernel<float>();
    case kAvx2: return ks.avx2;
    default: return portable_kernel<float>();
  }
}
template <>
GemmKernel<double> select_kernel<double>(int64_t, int64_t) {
  return portable_kernel<double>();
}

// ---------------------------------------------------------------------------
// Blocking parameters (Zen4: 32 KiB L1d, 1 MiB L2 per core, shared L3).
//   KC: the A micro-panel (MR x KC, <= 12 x 256 x 4 B = 12 KiB) stays in L1
//       next to the B lines streaming through.
//   NC: the packed B block (KC x NC) gets about half of L2.
// K is split into equal-sized blocks (depends on K only, never on threads).
// ---------------------------------------------------------------------------
constexpr int64_t kKcMax = 256;
constexpr int64_t kL2BudgetBytes = 512 * 1024;
// B is read in place when a region has at most this many A micro-panels.
constexpr int64_t kDirectPanels = 4;

// Thread-local, 64-byte-aligned scratch grown on demand: no heap traffic in
// steady state, and each OpenMP worker keeps its own.
struct AlignedBuf {
  void* p = nullptr;
  size_t cap = 0;
  ~AlignedBuf() { std::free(p); }
  void* get(size_t bytes) {
    if (bytes > cap) {
      std::free(p);
      cap = (bytes + 4095) & ~size_t(4095);
      p = std::aligned_alloc(64, cap);
      if (!p) {
        cap = 0;
        throw std::bad_alloc();
      }
    }
    return p;
  }
};
thread_local AlignedBuf tls_abuf;
thread_local AlignedBuf tls_bbuf;

// ---------------------------------------------------------------------------
// Packing.
// ---------------------------------------------------------------------------

// Full-width row copies with a compile-time width, so they become straight
// vector moves instead of memcpy calls.
template <typename T, int NR>
void copy_rows(int64_t kc, const T* B, int64_t rsb, T* dst) {
  for (int64_t p = 0; p < kc; ++p) {
    const T* s = B + p * rsb;
    if (kc > 1) __builtin_prefetch(s + 8 * rsb, 0, 3);
    T* d = dst + p * NR;
    for (int j = 0; j < NR; ++j) d[j] = s[j];
  }
}

// A micro-panel: dst[p*MR + i] = A(i, p) for i < mr, zero for mr <= i < MR.
template <typename T>
void pack_a(int64_t mr, int64_t kc, const T* A, int64_t rsa, int64_t csa,
            int MR, PackKMajor<T> kmajor, T* dst) {
  if (rsa == 1) {
    // Column-major / transposed A (Dgrad's weight^T): each k is a contiguous
    // run of mr values -> straight copies.
    // Each k touches a new source line (stride csa); prefetch a few k ahead
    // so these misses overlap.
    for (int64_t p = 0; p < std::min<int64_t>(kc, 8); ++p)
      __builtin_prefetch(A + p * csa, 0, 3);
    if (mr == MR) {
      switch (MR) {
        case 4: return copy_rows<T, 4>(kc, A, csa, dst);
        case 6: return copy_rows<T, 6>(kc, A, csa, dst);
        case 8: return copy_rows<T, 8>(kc, A, csa, dst);
        case 12: return copy_rows<T, 12>(kc, A, csa, dst);
        default: break;
      }
    }
    for (int64_t p = 0; p < kc; ++p) {
      const T* s = A + p * csa;
      T* d = dst + p * MR;
      for (int64_t i = 0; i < mr; ++i) d[i] = s[i];
      for (int64_t i = mr; i < MR; ++i) d[i] = T(0);
    }
    return;
  }
  if (csa == 1 && kmajor) {
    kmajor(mr, MR, kc, A, rsa, dst);
    return;
  }
  if (mr < MR) std::memset(static_cast<void*>(dst), 0, sizeof(T) * MR * kc);
  if (csa == 1) {
    // Row-major A: transpose in k-blocks so each of the mr source rows is read
    // as a contiguous run while the destination block stays in L1.
    constexpr int64_t kB = 64;
    for (int64_t p0 = 0; p0 < kc; p0 += kB) {
      const int64_t pk = std::min(kB, kc - p0);
      for (int64_t i = 0; i < mr; ++i) {
        const T* s = A + i * rsa + p0;
        T* d = dst + p0 * MR + i;
        for (int64_t pp = 0; pp < pk; ++pp) d[pp * MR] = s[pp];
      }
    }
    return;
  }
  for (int64_t p = 0; p < kc; ++p)
    for (int64_t i = 0; i < mr; ++i) dst[p * MR + i] = A[i * rsa + p * csa];
}

// One B micro-panel: dst[p*NR + j] = B(p, j) for j < nr, zero for nr <= j < NR.
template <typename T>
void pack_b_panel(int64_t kc, int64_t nr, const T* B, int64_t rsb, int64_t csb,
                  int NR, PackKMajor<T> kmajor, T* dst) {
  if (csb == 1) {
    // Row-major B (Fprop's im2col / input): contiguous row copies.
    if (nr == NR) {
      switch (NR) {
        case 8: return copy_rows<T, 8>(kc, B, rsb, dst);
        case 16: return copy_rows<T, 16>(kc, B, rsb, dst);
        case 32: return copy_rows<T, 32>(kc, B, rsb, dst);
        case 48: return copy_rows<T, 48>(kc, B, rsb, dst);
        case 64: return copy_rows<T, 64>(kc, B, rsb, dst);
        default: break;
      }
    }
    for (int64_t p = 0; p < kc; ++p) {
      std::memcpy(dst + p * NR, B + p * rsb, sizeof(T) * nr);
      for (int64_t j = nr; j < NR; ++j) dst[p * NR + j] = T(0);
    }
    return;
  }
  if (rsb == 1 && kmajor) {
    kmajor(nr, NR, kc, B, csb, dst);
    return;
  }
  if (nr < NR) std::memset(static_cast<void*>(dst), 0, sizeof(T) * NR * kc);
  if (rsb == 1) {
    // Transposed B (Wgrad): blocked transpose; every source column is read as
    // a contiguous k-run and the destination block (kB x NR) stays in L1.
    constexpr int64_t kB = 32;
    for (int64_t p0 = 0; p0 < kc; p0 += kB) {
      const int64_t pk = std::min(kB, kc - p0);
      for (int64_t j = 0; j < nr; ++j) {
        const T* s = B + j * csb + p0;
        T* d = dst + p0 * NR + j;
        for (int64_t pp = 0; pp < pk; ++pp) d[pp * NR] = s[pp];
      }
    }
    return;
  }
  for (int64_t p = 0; p < kc; ++p)
    for (int64_t j = 0; j < nr; ++j) dst[p * NR + j] = B[p * rsb + j * csb];
}

// Whole KC x NC block of a row-major B, walked row by row: each source row is
// read as one long sequential run (DRAM/prefetcher friendly when B is larger
// than L3) and scattered into the NR-wide panels, which live in L2.
template <typename T>
void pack_b_block_rowmajor(int64_t kc, int64_t nc, const T* B, int64_t rsb,
                           int NR, T* dst) {
  const int64_t nfull = nc / NR * NR;
  const int64_t ahead = 8;  // rows
  for (int64_t p = 0; p < kc; ++p) {
    const T* s = B + p * rsb;
    T* d = dst + p * NR;
    // Each source row is a short run (nc elements) followed by a jump of
    // rsb, which the hardware prefetcher re-learns row after row; fetching
    // rows a few ahead keeps many misses in flight when B comes from L3/DRAM.
    if (p + ahead < kc) {
      const T* sn = s + ahead * rsb;
      for (int64_t j = 0; j < nc; j += 64 / int64_t(sizeof(T)))
        __builtin_prefetch(sn + j, 0, 3);
    }
    switch (NR) {
      case 16:
        for (int64_t jr = 0; jr < nfull; jr += 16) copy_rows<T, 16>(1, s + jr, 0, d + jr * kc);
        break;
      case 32:
        for (int64_t jr = 0; jr < nfull; jr += 32) copy_rows<T, 32>(1, s + jr, 0, d + jr * kc);
        break;
      case 48:
        for (int64_t jr = 0; jr < nfull; jr += 48) copy_rows<T, 48>(1, s + jr, 0, d + jr * kc);
        break;
      case 64:
        for (int64_t jr = 0; jr < nfull; jr += 64) copy_rows<T, 64>(1, s + jr, 0, d + jr * kc);
        break;
      default:
        for (int64_t jr = 0; jr < nfull; jr += NR)
          std::memcpy(d + jr * kc, s + jr, sizeof(T) * NR);
    }
    if (nfull < nc) {
      T* e = d + nfull * kc;
      const int64_t nr = nc - nfull;
      for (int64_t j = 0; j < nr; ++j) e[j] = s[nfull + j];
      for (int64_t j = nr; j < NR; ++j) e[j] = T(0);
    }
  }
}

// ---------------------------------------------------------------------------
// Driver.
// ---------------------------------------------------------------------------
template <typename T>
struct Problem {
  int64_t M, N, K;
  const T* A;
  int64_t rsa, csa;
  const T* B;
  int64_t rsb, csb;
  T beta;
  T* C;
  int64_t ldc;
  const T* bias;
  bool relu;
};


// K blocking depends on K only, so every thread/region splits the reduction
// identically (bit-identical results for any thread count).
inline int64_t kc_block(int64_t K) {
  const int64_t nblk = ceil_div(K, kKcMax);
  return ceil_div(K, nblk);
}

// Widest N block whose packed KC x NC B block fits the L2 budget.
inline int64_t nc_max_for(int64_t kcb, int64_t NR, int64_t elem) {
  return std::max<int64_t>(NR, kL2BudgetBytes / (kcb * elem) / NR * NR);
}

// Computes rows [m0, m1) x columns [n0, n1) of C on the calling thread.
template <typename T>
void gemm_region(const Problem<T>& P, const GemmKernel<T>& kr, int64_t m0,
                 int64_t m1, int64_t n0, int64_t n1) {
  const int MR = kr.mr, NR = kr.nr;
  const int64_t K = P.K;
  const int64_t kcb = kc_block(K);

  // With few A micro-panels (each B element used <= 4 times) or a short K
  // (tiny B panels), packing B costs more than it saves (measured): read full
  // NR-wide panels straight from a row-major B and pack only the ragged edge.
  const int64_t mpanels = ceil_div(m1 - m0, MR);
  const bool direct_b = P.csb == 1 && (mpanels <= kDirectPanels || kcb <= 64);

  // Equal-sized N blocks that fit the L2 budget.
  const int64_t nn = n1 - n0;
  const int64_t nc_max = nc_max_for(kcb, NR, sizeof(T));
  const int64_t nblocks = ceil_div(nn, nc_max);
  const int64_t nc_blk = round_up(ceil_div(nn, nblocks), NR);

  T* abuf = static_cast<T*>(tls_abuf.get(sizeof(T) * MR * kcb));
  T* bbuf = static_cast<T*>(
      tls_bbuf.get(sizeof(T) * kcb * (direct_b ? NR : nc_blk)));

  for (int64_t jc = n0; jc < n1; jc += nc_blk) {
    const int64_t nc = std::min(nc_blk, n1 - jc);
    const int64_t nfull = nc / NR * NR;
    for (int64_t pc = 0; pc < K; pc += kcb) {
      const int64_t kc = std::min(kcb, K - pc);
      const bool first = pc == 0, last = pc + kc >= K;
      const T beta = first ? P.beta : T(1);
      const bool relu = last && P.relu;
      const T* Bblk = P.B + pc * P.rsb + jc * P.csb;

      if (direct_b) {
        if (nfull < nc)
          pack_b_panel(kc, nc - nfull, Bblk + nfull, P.rsb, P.csb, NR,
                       kr.pack_kmajor, bbuf);
      } else if (P.csb == 1) {
        pack_b_block_rowmajor(kc, nc, Bblk, P.rsb, NR, bbuf);
      } else {
        for (int64_t jr = 0; jr < nc; jr += NR)
          pack_b_panel(kc, std::min<int64_t>(NR, nc - jr), Bblk + jr * P.csb,
                       P.rsb, P.csb, NR, kr.pack_kmajor, bbuf + jr * kc);
      }

      for (int64_t ir = m0; ir < m1; ir += MR) {
        const int64_t mr = std::min<int64_t>(MR, m1 - ir);
        // Packed just in time: the MR x KC panel then sits in L1 for the
        // whole jr sweep. (Packing whole MC x KC blocks up front was measured
        // slower, even for column-major A.)
        pack_a(mr, kc, P.A + ir * P.rsa + pc * P.csa, P.rsa, P.csa, MR,
               kr.pack_kmajor, abuf);
        const T* bias = (last && P.bias) ? P.bias + ir : nullptr;
        T* Crow = P.C + ir * P.ldc + jc;
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
          const T* bp;
          int64_t ldb;
          if (direct_b && jr < nfull) {
            bp = Bblk + jr;
            ldb = P.rsb;
          } else {
            bp = direct_b ? bbuf : bbuf + jr * kc;
            ldb = NR;
          }
          GemmUkr<T> ukr = kr.ukr;
          if (nr < NR) {
            const GemmUkr<T> e = kr.edge[(nr - 1) / kr.edge_w];
            if (e) ukr = e;
          }
          ukr(kc, abuf, bp, ldb, Crow + jr, P.ldc, static_cast<int>(mr), nr, beta,
              bias, relu);
        }
      }
    }
  }
}

// K == 0: C = beta*C, then the epilogue.
template <typename T>
void scale_epilogue(const Problem<T>& P) {
  for (int64_t i = 0; i < P.M; ++i) {
    T* ci = P.C + i * P.ldc;
    const T bi = P.bias ? P.bias[i] : T(0);
    for (int64_t j = 0; j < P.N; ++j) {
      T r = P.beta == T(0) ? T(0) : P.beta * ci[j];
      r += bi;
      if (P.relu) r = relu_value(r);
      ci[j] = r;
    }
  }
}

// Chooses a tm x tn grid of per-thread C regions (tm*tn <= threads). Each
// region packs its own operands, so the model charges padded micro-tile work
// plus packing: A is re-packed once per NC block of the region's columns, B
// once (unless it is read in place). Costs are in FMA lanes; packing one
// element costs roughly as much as 32 lanes (one vector FMA).
template <typename T>
void choose_grid(const Problem<T>& P, const GemmKernel<T>& kr, int threads,
                 int* tm_out, int* tn_out) {
  const int64_t MR = kr.mr, NR = kr.nr, K = P.K;
  const int64_t mt = ceil_div(P.M, MR), nt = ceil_div(P.N, NR);
  const int64_t ncm = nc_max_for(kc_block(K), NR, sizeof(T));
  double best = 1e300;
  int btm = 1, btn = 1;
  for (int tm = 1; tm <= threads; ++tm) {
    const int tn = threads / tm;
    if (tm > mt || tn > nt) continue;
    const int64_t mp = std::min(ceil_div(mt, tm) * MR, round_up(P.M, MR));
    const int64_t np = std::min(ceil_div(nt, tn) * NR, round_up(P.N, kr.edge_w));
    const double work = double(mp) * double(np) * double(K);
    const double pack = double(mp) * K * ceil_div(np, ncm) + double(np) * K;
    const double cost = work + 32.0 * pack;
    if (cost < best * 0.999) {
      best = cost;
      btm = tm;
      btn = tn;
    }
  }
  *tm_out = btm;
  *tn_out = btn;
}

template <typename T>
void gemm_impl(const Problem<T>& P, bool parallel) {
  if (P.M <= 0 || P.N <= 0) return;
  if (P.K <= 0) {
    scale_epilogue(P);
    return;
  }
  const GemmKernel<T> kr = select_kernel<T>(P.M, P.N);

  int threads = 1;
  if (parallel && !omp_in_parallel()) threads = ::fastconv::max_threads();
  // Tiny products: the fork/join costs more than the work.
  if (threads > 1 && double(P.M) * P.N * P.K < 64.0 * 1024) threads = 1;
  if (threads > 1) {
    int tm, tn;
    choose_grid(P, kr, threads, &tm, &tn);
    threads = tm * tn;
    if (threads > 1) {
      const int64_t mt = ceil_div(P.M, kr.mr), nt = ceil_div(P.N, kr.nr);
#pragma omp parallel num_threads(threads)
      {
        const int nth = omp_get_num_threads();
        for (int r = omp_get_thread_num(); r < tm * tn; r += nth) {
          const int im = r / tn, in = r % tn;
          const int64_t m0 = std::min(P.M, mt * im / tm * kr.mr);
          const int64_t m1 = std::min(P.M, mt * (im + 1) / tm * kr.mr);
          const int64_t n0 = std::min(P.N, nt * in / tn * kr.nr);
          const int64_t n1 = std::min(P.N, nt * (in + 1) / tn * kr.nr);
          if (m0 < m1 && n0 < n1) gemm_region(P, kr, m0, m1, n0, n1);
        }
      }
      return;
    }
  }
  gemm_region(P, kr, 0, P.M, 0, P.N);
}

double peak_fma_loop_portable(int64_t iters) {
  // No FMA at baseline: mul+add chains (6-cycle latency, 2 mul + 2 add per
  // cycle) need ~12 independent 4-lane chains; 12 x 4 floats fit in SSE regs.
  constexpr int kChains = 12;
  float acc[kChains][4];
  for (int i = 0; i < kChains; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = 1.0f + 1e-7f * (i * 4 + j);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kChains; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] = acc[i][j] * 0.999999f + 1e-7f;
  float s = 0;
  for (int i = 0; i < kChains; ++i)
    for (int j = 0; j < 4; ++j) s += acc[i][j];
  volatile float sink = s;
  (void)sink;
  return static_cast<double>(iters) * kChains * 4 * 2;
}

}  // namespace
}  // namespace detail

template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t rsa, int64_t csa,
          const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc,
          bool parallel, const GemmEpilogue<T>& ep) {
  detail::Problem<T> P{M, N, K, A, rsa, csa, B, rsb, csb, beta, C, ldc,
                       ep.row_bias, ep.relu};
  detail::gemm_impl(P, parallel);
}

template void gemm<float>(int64_t, int64_t, int64_t, const float*, int64_t,
                          int64_t, const float*, int64_t, int64_t, float,
                          float*, int64_t, bool, const GemmEpilogue<float>&);
template void gemm<double>(int64_t, int64_t, int64_t, const double*, int64_t,
                           int64_t, const double*, int64_t, int64_t, double,
                           double*, int64_t, bool, const GemmEpilogue<double>&);

const char* gemm_isa() {
  switch (detail::active_isa()) {
    case detail::kAvx512: return "avx512";
    case detail::kAvx2: return "avx2";
    default: return "portable";
  }
}

bool cpu_has_avx512() { return detail::cpu().avx512; }
bool cpu_has_avx2_fma() { return detail::cpu().avx2_fma; }

void set_gemm_isa(const char* isa) {
  const std::string s = isa ? isa : "auto";
  int v;
  if (s == "auto") {
    v = detail::best_isa();
  } else if (s == "avx512") {
    if (!cpu_has_avx512()) throw std::invalid_argument("set_gemm_isa: CPU lacks AVX-512");
    v = detail::kAvx512;
  } else if (s == "avx2") {
    if (!cpu_has_avx2_fma()) throw std::invalid_argument("set_gemm_isa: CPU lacks AVX2/FMA");
    v = detail::kAvx2;
  } else if (s == "portable") {
    v = detail::kPortable;
  } else {
    throw std::invalid_argument("set_gemm_isa: unknown ISA '" + s + "'");
  }
  detail::g_isa.store(v, std::memory_order_relaxed);
}

double measure_peak_gflops(int threads, double seconds) {
  if (threads <= 0) threads = ::fastconv::max_threads();
  if (!(seconds > 0)) seconds = 0.1;
  double (*loop)(int64_t) = &detail::peak_fma_loop_portable;
  const int isa = detail::active_isa();
  if (isa == detail::kAvx512) loop = &detail::peak_fma_loop_avx512;
  else if (isa == detail::kAvx2) loop = &detail::peak_fma_loop_avx2;

  // Each thread times its own run after a common barrier; the sum of the
  // per-thread rates is the machine rate at that thread count.
  double total = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    loop(1 << 12);  // warm up (clock ramp, zmm power state)
#pragma omp barrier
    const double t0 = omp_get_wtime();
    double flops = 0.0, t = t0;
    do {
      flops += loop(1 << 16);
      t = omp_get_wtime();
    } while (t - t0 < seconds);
    total += flops / (t - t0) * 1e-9;
  }
  return total;
}

}  // namespace fastconv
