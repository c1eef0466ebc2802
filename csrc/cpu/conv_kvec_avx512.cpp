// AVX-512 tile kernels of the register-blocked direct convolution (see
// conv_kvec.h). Compiled with -mavx512f; only called after the dispatcher has
// checked the CPU (fastconv::gemm_isa() == "avx512"). Nothing here
// instantiates a template or inline function shared with another translation
// unit (the linker could keep this ISA's copy for everyone).
#include <immintrin.h>

#include "conv_kvec.h"

namespace fastconv {
namespace detail {
namespace {

static inline __m512 lo_pd(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}
static inline __m512 hi_pd(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}
// r[i][j] -> r[j][i] for a 16 x 16 block of floats held in 16 registers:
// 2x2 blocks of floats, then of float pairs, then of 128-bit lanes twice.
static inline void transpose16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = lo_pd(t[i], t[i + 2]);
    r[i + 1] = hi_pd(t[i], t[i + 2]);
    r[i + 2] = lo_pd(t[i + 1], t[i + 3]);
    r[i + 3] = hi_pd(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

// RT output rows (p .. p+RT-1) x QT pixels (q0 .. q0+QT-1) x KV vectors of
// output channels from k0, over kernel rows [r0, r1). SW: the column stride
// when it is a compile-time 1, else 0 (read j.sw).
template <int RT, int QT, int KV, int SW>
void tile(const KvecJob& j, int64_t p, int64_t q0, int64_t k0, int64_t r0, int64_t r1) {
  __m512 acc[RT][QT][KV];
#pragma GCC unroll 4
  for (int t = 0; t < RT; ++t)
#pragma GCC unroll 32
    for (int i = 0; i < QT; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < KV; ++v) acc[t][i][v] = _mm512_setzero_ps();
  const int64_t sw = SW ? SW : j.sw;
  const int64_t tapk = j.S * j.Kpad, rstep = j.sh * j.Wp;
  const float* xrow = j.xp + (p * j.sh - j.row0) * j.Wp + q0 * sw;
  for (int64_t c = 0; c < j.Cg; ++c) {
    const float* xc = xrow + c * j.plane;
    const float* wc = j.wt + c * j.R * tapk + k0;
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xc + r * j.dh * j.Wp;
      const float* wr = wc + r * tapk;
      for (int64_t s = 0; s < j.S; ++s) {
        const float* xs = xr + s * j.dw;
        const float* ws = wr + s * j.Kpad;
        __m512 w[KV];
#pragma GCC unroll 4
        for (int v = 0; v < KV; ++v) w[v] = _mm512_loadu_ps(ws + 16 * v);
#pragma GCC unroll 4
        for (int t = 0; t < RT; ++t)
#pragma GCC unroll 32
          for (int i = 0; i < QT; ++i) {
            const __m512 b = _mm512_set1_ps(xs[t * rstep + i * sw]);
#pragma GCC unroll 4
            for (int v = 0; v < KV; ++v) acc[t][i][v] = _mm512_fmadd_ps(w[v], b, acc[t][i][v]);
          }
      }
    }
  }
  // NCHW output rows. Wide tiles: 16 pixels x 16 channels at a time
  // transposed in registers, then bias, ReLU and a masked store of the
  // tile's pixels; narrow tiles (the transposes would be mostly padding):
  // through a small buffer, one scalar per output.
  const __m512 zero = _mm512_setzero_ps();
  if constexpr (QT >= 8) {
#pragma GCC unroll 4
    for (int t = 0; t < RT; ++t)
#pragma GCC unroll 4
      for (int v = 0; v < KV; ++v) {
        const int64_t kbase = k0 + 16 * v;
        const int64_t kn = j.Kg - kbase < 16 ? j.Kg - kbase : 16;
        if (kn <= 0) continue;
#pragma GCC unroll 2
        for (int i0 = 0; i0 < QT; i0 += 16) {
          __m512 m[16];
#pragma GCC unroll 16
          for (int ii = 0; ii < 16; ++ii)
            m[ii] = i0 + ii < QT ? acc[t][i0 + ii < QT ? i0 + ii : 0][v] : zero;
          transpose16(m);
          const int n = QT - i0 < 16 ? QT - i0 : 16;
          const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1u);
          float* yrow = j.y + kbase * j.PQ + (p + t) * j.Q + q0 + i0;
          for (int64_t kk = 0; kk < kn; ++kk) {
            __m512 val = m[kk];
            if (j.bias) val = _mm512_add_ps(val, _mm512_set1_ps(j.bias[kbase + kk]));
            // relu_value's rule (problem.h): only v < 0 becomes 0, a NaN stays NaN
            if (j.relu) val = _mm512_mask_mov_ps(val, _mm512_cmp_ps_mask(val, zero, _CMP_LT_OQ), zero);
            _mm512_mask_storeu_ps(yrow + kk * j.PQ, mask, val);
          }
        }
      }
  } else {
    alignas(64) float buf[QT][KV * 16];
    const int64_t kn = j.Kg - k0 < KV * 16 ? j.Kg - k0 : KV * 16;
#pragma GCC unroll 1
    for (int t = 0; t < RT; ++t) {
#pragma GCC unroll 8
      for (int i = 0; i < QT; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < KV; ++v) _mm512_store_ps(&buf[i][16 * v], acc[t][i][v]);
      for (int64_t kk = 0; kk < kn; ++kk) {
        float* yk = j.y + (k0 + kk) * j.PQ + (p + t) * j.Q + q0;
        const float b = j.bias ? j.bias[k0 + kk] : 0.0f;
        for (int i = 0; i < QT; ++i) {
          const float v = buf[i][kk] + b;
          yk[i] = (j.relu && v < 0.0f) ? 0.0f : v;  // relu_value's rule: NaN stays NaN
        }
      }
    }
  }
}

using TileFn = void (*)(const KvecJob&, int64_t, int64_t, int64_t, int64_t, int64_t);

// Widest pixel tile for RT rows and KV weight vectors: RT * QT * KV
// accumulators plus KV weights and one broadcast must fit the 32 zmm
// registers (28 accumulators).
constexpr int max_qt(int rt, int kv) { return 28 / (rt * kv); }
constexpr int kMaxRT = 4;

// tile<RT, qt, KV, SW> for a run-time qt in [1, QT]
template <int RT, int KV, int SW, int QT>
TileFn pick_q(int qt) {
  if constexpr (QT == 0) {
    return nullptr;
  } else {
    return qt == QT ? &tile<RT, QT, KV, SW> : pick_q<RT, KV, SW, QT - 1>(qt);
  }
}
template <int KV, int SW>
TileFn pick_rq(int rt, int qt) {
  switch (rt) {
    case 1: return pick_q<1, KV, SW, max_qt(1, KV)>(qt);
    case 2: return pick_q<2, KV, SW, max_qt(2, KV)>(qt);
    case 3: return pick_q<3, KV, SW, max_qt(3, KV)>(qt);
    default: return pick_q<4, KV, SW, max_qt(4, KV)>(qt);
  }
}
template <int SW>
TileFn pick(int rt, int qt, int kv) {
  switch (kv) {
    case 1: return pick_rq<1, SW>(rt, qt);
    case 2: return pick_rq<2, SW>(rt, qt);
    default: return pick_rq<3, SW>(rt, qt);
  }
}

// Tile shape for rows of Q pixels with `left` weight vectors to go. Two
// weight vectors per tile (three when exactly three are left: 48 channels);
// four measured slower everywhere (more weight loads per broadcast than the
// loads keep up with). The pixels of a row are split into equal tiles (32 ->
// 16 + 16, not 28 + 28 overlapping), and short rows stack several rows per
// tile so that at least 12 accumulators hide the FMA latency.
struct Shape {
  int rt, qt, kv;
};
Shape choose(int64_t Q, int64_t rows, int64_t left) {
  const int kv = left >= 2 ? (left == 3 ? 3 : 2) : 1;
  const int64_t qmax = max_qt(1, kv);
  const int64_t tiles = (Q + qmax - 1) / qmax;
  const int qt = static_cast<int>((Q + tiles - 1) / tiles);
  int rt = 1;
  while (rt < kMaxRT && rt < rows && (rt + 1) * qt * kv <= 28 && rt * qt * kv < 12) ++rt;
  return Shape{rt, qt, kv};
}

// kernel rows whose input row p*sh - ph + r*dh lies inside [0, H), as [r0, r1)
void row_taps(const KvecJob& j, int64_t p, int64_t& r0, int64_t& r1) {
  const int64_t lo = j.ph - p * j.sh, hi = j.H - 1 + j.ph - p * j.sh;
  r0 = lo <= 0 ? 0 : (lo + j.dh - 1) / j.dh;
  r1 = hi < 0 ? 0 : hi / j.dh + 1;
  if (r1 > j.R) r1 = j.R;
  if (r0 > r1) r0 = r1;
}

}  // namespace

void kvec_rows_avx512(const KvecJob& j, int64_t p0, int64_t p1) {
  const int64_t nk = j.Kpad / 16;
  for (int64_t kb = 0; kb < nk;) {
    const Shape sh = choose(j.Q, p1 - p0, nk - kb);
    for (int64_t p = p0; p < p1; p += sh.rt) {
      const int rt = static_cast<int>(p1 - p < sh.rt ? p1 - p : sh.rt);
      const TileFn f = j.sw == 1 ? pick<1>(rt, sh.qt, sh.kv) : pick<0>(rt, sh.qt, sh.kv);
      // a tile of several rows runs the union of their kernel rows (the
      // others read zero padding rows of the copy)
      int64_t a0, a1, b0, b1;
      row_taps(j, p, a0, a1);
      row_taps(j, p + rt - 1, b0, b1);
      const int64_t r0 = b0 < a0 ? b0 : a0, r1 = a1 > b1 ? a1 : b1;
      // the last tile of a row starts at Q - qt and may recompute a few
      // columns of the previous one: same chain, same values
      for (int64_t q0 = 0; q0 < j.Q; q0 += sh.qt) {
        const int64_t qs = q0 + sh.qt > j.Q ? j.Q - sh.qt : q0;
        f(j, p, qs, kb * 16, r0, r1 > r0 ? r1 : r0);
      }
    }
    kb += sh.kv;
  }
}

}  // namespace detail
}  // namespace fastconv
