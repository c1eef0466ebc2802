// im2col + our packed GEMM.
//
// Fprop:  output[n, g] (Kg x PQ)  = weight[g] (Kg x CgRS) . col[n, g] (CgRS x PQ)
// Dgrad:  dcol (CgRS x PQ)        = weight[g]^T . grad_output[n, g], then a
//         gather-style col2im: each grad_input row pulls its taps (no atomics).
// Wgrad:  grad_weight[g]         += grad_output[n, g] . col[n, g]^T, summed over
//         images and column blocks in a fixed order (see reduce_weight_grad).
//
// Column blocks. The GEMM's N dimension is a block of output columns: a tile
// of one image's P*Q pixels when the image is large, or several WHOLE images
// side by side when P*Q is small (late ResNet/VGG layers: 7x7, 14x14), so that
// the GEMM stays wide enough to amortize packing the weight (which is
// repacked for every GEMM call). Batched blocks go through small scratch
// copies of the output / grad_output (Kg x block), cheap next to the GEMM.
//
// Workspace bound: the column matrix is never materialized for the whole
// batch; one block holds at most kIm2colTileBytes (16 MiB) of columns per
// thread (a block is never narrower than 64 columns, so for CgRS > 65536 the
// bound is CgRS * 64 * sizeof(T)), plus Kg x block for batched blocks.
#include "conv_common.h"

namespace fastconv {

using detail::im2col_rows;
using detail::for_items;
using detail::im2col_tile_cols;

std::string im2col_supports(const ConvProblem&) { return ""; }

namespace {

// Below this many output pixels per image, whole images are batched.
constexpr int64_t kMinBlockCols = 512;

struct Blocking {
  int64_t nb;      // images per block (1: single-image tiles)
  int64_t nt;      // columns per tile of one image (== PQ when nb > 1)
  int64_t tiles;   // tiles per image (1 when nb > 1)
  int64_t blocks;  // column blocks per group
  int64_t cols;    // max columns in a block
};

Blocking blocking(const ConvProblem& p, int64_t rows, int64_t elem) {
  const int64_t PQ = p.P * p.Q;
  const int64_t max_cols = im2col_tile_cols(rows, std::max<int64_t>(PQ, p.N * PQ), elem);
  Blocking b;
  if (PQ < kMinBlockCols && p.N > 1 && max_cols >= 2 * PQ) {
    b.nb = std::min<int64_t>(p.N, std::min(max_cols / PQ, (kMinBlockCols * 2 + PQ - 1) / PQ));
    b.blocks = (p.N + b.nb - 1) / b.nb;
    b.nb = (p.N + b.blocks - 1) / b.blocks;  // even out the blocks (8 -> 4+4, not 6+2)
    b.nt = PQ;
    b.tiles = 1;
    b.cols = b.nb * PQ;
  } else {
    b.nb = 1;
    b.nt = std::min(max_cols, PQ);
    b.tiles = (PQ + b.nt - 1) / b.nt;
    b.blocks = p.N * b.tiles;
    b.cols = b.nt;
  }
  return b;
}

// One column block of group g: images [n0, n0 + nimg), and within a single
// image the pixel tile [j0, j0 + ncols).
struct Block {
  int64_t n0, nimg, j0, ncols, width;  // width = columns of the block = ld of col
};

Block block_at(const ConvProblem& p, const Blocking& b, int64_t index) {
  const int64_t PQ = p.P * p.Q;
  Block k;
  if (b.nb > 1) {
    k.n0 = index * b.nb;
    k.nimg = std::min(b.nb, p.N - k.n0);
    k.j0 = 0;
    k.ncols = PQ;
    k.width = k.nimg * PQ;
  } else {
    k.n0 = index / b.tiles;
    k.nimg = 1;
    k.j0 = (index % b.tiles) * b.nt;
    k.ncols = std::min(b.nt, PQ - k.j0);
    k.width = k.ncols;
  }
  return k;
}

// col (CRS x width) for one block of group g
template <typename T>
void build_columns(const ConvProblem& p, const T* x, int64_t g, const Block& k, T* col, bool par) {
  const int64_t Cg = p.Cg(), HW = p.H * p.W, CRS = Cg * p.R * p.S, RS = p.R * p.S;
  const int64_t PQ = p.P * p.Q;
  if (k.nimg > 1 && PQ <= 64) {
    // Tiny outputs (late stages, stride-2 entries into 2x2 / 1x1 maps): one
    // im2col_rows call per (image, row) would do a few divisions and loop
    // set-ups for 1-64 values. Instead each tap's input offsets (or -1 for
    // padding) are tabulated once and every row is a table-driven gather.
    std::vector<int64_t> off(static_cast<size_t>(RS * PQ));
    for (int64_t rs = 0; rs < RS; ++rs) {
      const int64_t r = rs / p.S, s = rs % p.S;
      for (int64_t pp = 0; pp < p.P; ++pp)
        for (int64_t q = 0; q < p.Q; ++q) {
          const int64_t ih = pp * p.stride_h - p.pad_h + r * p.dil_h;
          const int64_t iw = q * p.stride_w - p.pad_w + s * p.dil_w;
          off[rs * PQ + pp * p.Q + q] = (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W) ? ih * p.W + iw : -1;
        }
    }
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
    for (int64_t row = 0; row < CRS; ++row) {
      const int64_t c = row / RS, rs = row % RS;
      const int64_t* o = off.data() + rs * PQ;
      T* dst = col + row * k.width;
      for (int64_t i = 0; i < k.nimg; ++i) {
        const T* xc = x + ((k.n0 + i) * p.C + g * Cg + c) * HW;
        T* d = dst + i * PQ;
        for (int64_t j = 0; j < PQ; ++j) d[j] = o[j] >= 0 ? xc[o[j]] : T(0);
      }
    }
    return;
  }
  const int64_t units = k.nimg * CRS;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
  for (int64_t u = 0; u < units; ++u) {
    const int64_t i = u / CRS, row = u % CRS;
    const T* xg = x + ((k.n0 + i) * p.C + g * Cg) * HW;
    im2col_rows(p, xg, k.j0, k.ncols, row, row + 1, col + i * k.ncols, k.width);
  }
}

// (Kg x width) block of a NKPQ tensor <-> contiguous scratch
template <typename T>
void gather_block(const ConvProblem& p, const T* t, int64_t g, const Block& k, T* dst) {
  const int64_t Kg = p.Kg(), PQ = p.P * p.Q;
  if (PQ == 1) {  // 1x1 outputs: a strided gather instead of one 4-byte memcpy per value
    for (int64_t kk = 0; kk < Kg; ++kk)
      for (int64_t i = 0; i < k.nimg; ++i) dst[kk * k.width + i] = t[(k.n0 + i) * p.K + g * Kg + kk];
    return;
  }
  for (int64_t kk = 0; kk < Kg; ++kk)
    for (int64_t i = 0; i < k.nimg; ++i)
      std::memcpy(dst + kk * k.width + i * PQ, t + ((k.n0 + i) * p.K + g * Kg + kk) * PQ,
                  sizeof(T) * PQ);
}
template <typename T>
void scatter_block(const ConvProblem& p, const T* src, int64_t g, const Block& k, T* t) {
  const int64_t Kg = p.Kg(), PQ = p.P * p.Q;
  if (PQ == 1) {
    for (int64_t i = 0; i < k.nimg; ++i)
      for (int64_t kk = 0; kk < Kg; ++kk) t[(k.n0 + i) * p.K + g * Kg + kk] = src[kk * k.width + i];
    return;
  }
  for (int64_t kk = 0; kk < Kg; ++kk)
    for (int64_t i = 0; i < k.nimg; ++i)
      std::memcpy(t + ((k.n0 + i) * p.K + g * Kg + kk) * PQ, src + kk * k.width + i * PQ,
                  sizeof(T) * PQ);
}

}  // namespace

// ---------------------------------------------------------------------------
// Padded-width columns for small stride-1 problems.
//
// With stride 1, output pixel (p, q) of tap (c, r, s) reads padded-input
// element (p + r*dil_h, q + s*dil_w). Indexing output columns by j = p*Wp + q
// over the PADDED width Wp = Q + dil_w*(S-1), the whole im2col row of a tap is
// one contiguous slice of the padded image starting at r*dil_h*Wp + s*dil_w:
// one copy per (tap, image) instead of one short copy per output row, which
// is what dominates small layers (LeNet, 14x14 feature maps). The GEMM then
// also computes the Wp - Q columns that straddle two rows; they are dropped
// when the result is compacted (at most kMaxWaste extra work). Dgrad adds each
// dcol row back as one contiguous slice; Wgrad sees zero grad_output there.
namespace {

constexpr double kMaxWaste = 1.5;  // Wp / Q

struct Padded {
  int64_t Hp, Wp, ncols, span;  // span = P*Wp columns per image, ncols of them valid
};

Padded padded_geometry(const ConvProblem& p) {
  Padded g;
  g.Hp = p.P + p.dil_h * (p.R - 1);
  g.Wp = p.Q + p.dil_w * (p.S - 1);
  g.span = p.P * g.Wp;
  g.ncols = (p.P - 1) * g.Wp + p.Q;
  return g;
}

// Worth it when the im2col copies cost more than the extra GEMM columns: a
// column element costs about as much to gather as ~25 multiply-adds, and the
// GEMM spends Kg multiply-adds on it, so the relative im2col overhead is about
// 25 / Kg; the padded layout adds (Wp - Q) / Q to the GEMM.
bool padded_ok(const ConvProblem& p) {
  const double waste = double(p.dil_w * (p.S - 1)) / double(p.Q);
  return p.stride_h == 1 && p.stride_w == 1 && p.P * p.Q < kMinBlockCols &&
         1.0 + waste <= kMaxWaste && waste * double(p.Kg()) < 20.0;
}

// padded plane(s) of one image/group: (Cg x Hp x Wp); the input itself when no
// padding is needed
template <typename T>
const T* padded_input(const ConvProblem& p, const Padded& g, const T* xg, T* buf, bool par) {
  const int64_t Cg = p.Cg();
  if (p.pad_h == 0 && p.pad_w == 0 && g.Hp == p.H && g.Wp == p.W) return xg;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
  for (int64_t c = 0; c < Cg; ++c)
    for (int64_t h = 0; h < g.Hp; ++h) {
      T* d = buf + (c * g.Hp + h) * g.Wp;
      const int64_t ih = h - p.pad_h;
      for (int64_t w = 0; w < g.Wp; ++w) {
        const int64_t iw = w - p.pad_w;
        d[w] = (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W) ? xg[(c * p.H + ih) * p.W + iw] : T(0);
      }
    }
  return buf;
}

// col rows for image i of a block: row (c, r, s) = contiguous slice, the tail
// past ncols zeroed. zero_gaps (Wgrad): the Wp - Q straddling columns inside
// each row are zeroed too. Fprop drops those outputs, but Wgrad multiplies
// them with grad_output's zero gap columns and sums: 0 * inf (a pixel that tap
// never reads) would put NaN into that tap's gradient.
template <typename T>
void padded_columns(const ConvProblem& p, const Padded& g, const T* xp, int64_t i, int64_t width,
                    T* col, bool par, bool zero_gaps = false) {
  const int64_t CRS = p.Cg() * p.R * p.S, RS = p.R * p.S;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
  for (int64_t row = 0; row < CRS; ++row) {
    const int64_t c = row / RS, r = (row % RS) / p.S, s = row % p.S;
    const T* src = xp + c * g.Hp * g.Wp + r * p.dil_h * g.Wp + s * p.dil_w;
    T* dst = col + row * width + i * g.span;
    std::memcpy(dst, src, sizeof(T) * g.ncols);
    for (int64_t j = g.ncols; j < g.span; ++j) dst[j] = T(0);
    if (zero_gaps)
      for (int64_t pp = 0; pp + 1 < p.P; ++pp)
        for (int64_t j = p.Q; j < g.Wp; ++j) dst[pp * g.Wp + j] = T(0);
  }
}

int64_t padded_block_images(const ConvProblem& p, const Padded& g) {
  const int64_t CRS = p.Cg() * p.R * p.S;
  int64_t nb = std::max<int64_t>(1, (2 * kMinBlockCols + g.span - 1) / g.span);
  nb = std::min(nb, std::max<int64_t>(1, kIm2colTileBytes / int64_t(sizeof(float) * CRS * g.span)));
  nb = std::min(nb, p.N);
  const int64_t blocks = (p.N + nb - 1) / nb;
  return (p.N + blocks - 1) / blocks;
}

template <typename T>
void padded_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, HW = p.H * p.W;
  const int64_t CRS = Cg * p.R * p.S;
  const Padded g = padded_geometry(p);
  const int64_t nb = padded_block_images(p, g), blocks = (p.N + nb - 1) / nb;
  const int64_t width_max = nb * g.span;
  const int64_t scratch = CRS * width_max + Kg * width_max + Cg * g.Hp * g.Wp;
  for_items<T>(p.groups * blocks, scratch, 2, [&](int64_t item, T* buf, bool par) {
    const int64_t grp = item % p.groups, n0 = (item / p.groups) * nb;
    const int64_t nimg = std::min(nb, p.N - n0), width = nimg * g.span;
    T* col = buf;
    T* out = col + CRS * width_max;
    T* xpbuf = out + Kg * width_max;
    for (int64_t i = 0; i < nimg; ++i) {
      const T* xp = padded_input(p, g, x + ((n0 + i) * p.C + grp * Cg) * HW, xpbuf, par);
      padded_columns(p, g, xp, i, width, col, par);
    }
    GemmEpilogue<T> ep;
    ep.row_bias = bias ? bias + grp * Kg : nullptr;
    ep.relu = relu;
    gemm<T>(Kg, width, CRS, w + grp * Kg * CRS, CRS, 1, col, width, 1, T(0), out, width, par, ep);
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
    for (int64_t ik = 0; ik < nimg * Kg; ++ik) {
      const int64_t i = ik / Kg, kk = ik % Kg;
      T* yk = y + ((n0 + i) * p.K + grp * Kg + kk) * PQ;
      const T* src = out + kk * width + i * g.span;
      for (int64_t pp = 0; pp < p.P; ++pp)
        std::memcpy(yk + pp * p.Q, src + pp * g.Wp, sizeof(T) * p.Q);
    }
  });
}

// grad_output of a block in padded-width layout (Kg x width), gap columns 0
template <typename T>
void padded_grad_output(const ConvProblem& p, const Padded& g, const T* dy, int64_t grp,
                        int64_t n0, int64_t nimg, int64_t width, T* dst, bool par) {
  const int64_t Kg = p.Kg(), PQ = p.P * p.Q;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
  for (int64_t kk = 0; kk < Kg; ++kk)
    for (int64_t i = 0; i < nimg; ++i) {
      const T* src = dy + ((n0 + i) * p.K + grp * Kg + kk) * PQ;
      T* d = dst + kk * width + i * g.span;
      for (int64_t pp = 0; pp < p.P; ++pp) {
        std::memcpy(d + pp * g.Wp, src + pp * p.Q, sizeof(T) * p.Q);
        for (int64_t j = p.Q; j < g.Wp; ++j) d[pp * g.Wp + j] = T(0);
      }
    }
}

template <typename T>
void padded_dgrad(const ConvProblem& p, const T* dy, const T* w, T* dx) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), HW = p.H * p.W, RS = p.R * p.S;
  const int64_t CRS = Cg * RS;
  const Padded g = padded_geometry(p);
  const int64_t nb = padded_block_images(p, g), blocks = (p.N + nb - 1) / nb;
  const int64_t width_max = nb * g.span, plane = g.Hp * g.Wp;
  const int64_t scratch = CRS * width_max + Kg * width_max + Cg * plane;
  for_items<T>(p.groups * blocks, scratch, 1, [&](int64_t item, T* buf, bool par) {
    const int64_t grp = item % p.groups, n0 = (item / p.groups) * nb;
    const int64_t nimg = std::min(nb, p.N - n0), width = nimg * g.span;
    T* dcol = buf;
    T* dyb = dcol + CRS * width_max;
    T* dxp = dyb + Kg * width_max;
    padded_grad_output(p, g, dy, grp, n0, nimg, width, dyb, par);
    gemm<T>(CRS, width, Kg, w + grp * Kg * CRS, 1, CRS, dyb, width, 1, T(0), dcol, width, par);
    for (int64_t i = 0; i < nimg; ++i) {
      // each channel's padded gradient sums its taps' slices in (r, s) order
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
      for (int64_t c = 0; c < Cg; ++c) {
        T* d = dxp + c * plane;
        for (int64_t e = 0; e < plane; ++e) d[e] = T(0);
        for (int64_t rs = 0; rs < RS; ++rs) {
          const int64_t r = rs / p.S, s = rs % p.S;
          T* dst = d + r * p.dil_h * g.Wp + s * p.dil_w;
          const T* src = dcol + (c * RS + rs) * width + i * g.span;
#pragma omp simd
          for (int64_t j = 0; j < g.ncols; ++j) dst[j] += src[j];
        }
        T* dxc = dx + ((n0 + i) * p.C + grp * Cg + c) * HW;
        for (int64_t h = 0; h < p.H; ++h)
          for (int64_t x = 0; x < p.W; ++x) {
            const int64_t hp = h + p.pad_h, wp = x + p.pad_w;
            dxc[h * p.W + x] = (hp < g.Hp && wp < g.Wp) ? d[hp * g.Wp + wp] : T(0);
          }
      }
    }
  });
}

template <typename T>
void padded_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw) {
  const int64_t Cg = p.Cg(), Kg = p.Kg(), HW = p.H * p.W;
  const int64_t CRS = Cg * p.R * p.S;
  const Padded g = padded_geometry(p);
  const int64_t nb = padded_block_images(p, g), blocks = (p.N + nb - 1) / nb;
  const int64_t width_max = nb * g.span;
  const int64_t scratch = CRS * width_max + Kg * width_max + Cg * g.Hp * g.Wp;
  detail::reduce_weight_grad<T>(blocks * p.groups, p.K * CRS, dw, [&](int64_t item, T* acc,
                                                                        bool par) {
    thread_local AlignedBuffer<T> buf;
    buf.resize(scratch);
    const int64_t grp = item % p.groups, n0 = (item / p.groups) * nb;
    const int64_t nimg = std::min(nb, p.N - n0), width = nimg * g.span;
    T* col = buf.data();
    T* dyb = col + CRS * width_max;
    T* xpbuf = dyb + Kg * width_max;
    for (int64_t i = 0; i < nimg; ++i) {
      const T* xp = padded_input(p, g, x + ((n0 + i) * p.C + grp * Cg) * HW, xpbuf, par);
      padded_columns(p, g, xp, i, width, col, par, /*zero_gaps=*/true);
    }
    padded_grad_output(p, g, dy, grp, n0, nimg, width, dyb, par);
    gemm<T>(Kg, CRS, width, dyb, width, 1, col, 1, width, T(1), acc + grp * Kg * CRS, CRS, par);
  });
}

}  // namespace

template <typename T>
void im2col_fprop(const ConvProblem& p, const T* x, const T* w, const T* bias, T* y, bool relu) {
  if (padded_ok(p)) return padded_fprop(p, x, w, bias, y, relu);
  const int64_t Kg = p.Kg(), PQ = p.P * p.Q;
  const int64_t CRS = p.Cg() * p.R * p.S;
  const Blocking b = blocking(p, CRS, sizeof(T));
  const int64_t out_scratch = b.nb > 1 ? Kg * b.cols : 0;
  for_items<T>(p.groups * b.blocks, CRS * b.cols + out_scratch, 2, [&](int64_t item, T* scratch,
                                                                          bool par) {
    const int64_t g = item % p.groups;
    const Block k = block_at(p, b, item / p.groups);
    T* col = scratch;
    build_columns(p, x, g, k, col, par);
    GemmEpilogue<T> ep;
    ep.row_bias = bias ? bias + g * Kg : nullptr;
    ep.relu = relu;
    if (b.nb > 1) {
      T* out = scratch + CRS * b.cols;
      gemm<T>(Kg, k.width, CRS, w + g * Kg * CRS, CRS, 1, col, k.width, 1, T(0), out, k.width, par,
              ep);
      scatter_block(p, out, g, k, y);
    } else {
      gemm<T>(Kg, k.ncols, CRS, w + g * Kg * CRS, CRS, 1, col, k.ncols, 1, T(0),
              y + (k.n0 * p.K + g * Kg) * PQ + k.j0, PQ, par, ep);
    }
  });
}

// col2im as a gather for output rows [p0, p1) of one image: grad_input rows
// `item` in [row0, row1) (item = c * H + h) pull every tap (r, s) that lands
// on them. `dcol` holds the block's columns for this image, row stride ld,
// column 0 = output pixel (p0, 0).
template <typename T>
static void col2im_gather_rows(const ConvProblem& p, const T* dcol, int64_t ld, int64_t p0,
                               int64_t p1, int64_t row0, int64_t row1, T* dxg) {
  const int64_t HW = p.H * p.W, RS = p.R * p.S;
  for (int64_t item = row0; item < row1; ++item) {
    const int64_t c = item / p.H, h = item % p.H;
    T* dxr = dxg + c * HW + h * p.W;
    for (int64_t r = 0; r < p.R; ++r) {
      const int64_t num = h + p.pad_h - r * p.dil_h;
      if (num < 0 || num % p.stride_h) continue;
      const int64_t pp = num / p.stride_h;
      if (pp < p0 || pp >= p1) continue;
      for (int64_t s = 0; s < p.S; ++s) {
        const T* src = dcol + (c * RS + r * p.S + s) * ld + (pp - p0) * p.Q;
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
  if (padded_ok(p)) return padded_dgrad(p, dy, w, dx);
  const int64_t Cg = p.Cg(), Kg = p.Kg(), PQ = p.P * p.Q, HW = p.H * p.W;
  const int64_t CRS = Cg * p.R * p.S;
  const Blocking b = blocking(p, CRS, sizeof(T));
  if (b.nb > 1) {
    // whole images per block: dcol = weight^T . grad_output block, then each
    // image's grad_input is gathered from its own columns of dcol
    for_items<T>(p.groups * b.blocks, CRS * b.cols + Kg * b.cols, 1, [&](int64_t item, T* scratch,
                                                                          bool par) {
      const int64_t g = item % p.groups;
      const Block k = block_at(p, b, item / p.groups);
      T* dcol = scratch;
      T* dyb = scratch + CRS * b.cols;
      gather_block(p, dy, g, k, dyb);
      gemm<T>(CRS, k.width, Kg, w + g * Kg * CRS, 1, CRS, dyb, k.width, 1, T(0), dcol, k.width, par);
      if (PQ <= 64) {
        // tiny outputs: each input pixel sums its (tap, output pixel) entries
        // from a table built once per block (in tap, then pixel order)
        const int64_t RS = p.R * p.S;
        std::vector<int64_t> start(static_cast<size_t>(HW + 1), 0), ent(static_cast<size_t>(RS * PQ));
        std::vector<int64_t> pos(static_cast<size_t>(RS * PQ), -1);
        for (int64_t rs = 0; rs < RS; ++rs)
          for (int64_t j = 0; j < PQ; ++j) {
            const int64_t ih = (j / p.Q) * p.stride_h - p.pad_h + (rs / p.S) * p.dil_h;
            const int64_t iw = (j % p.Q) * p.stride_w - p.pad_w + (rs % p.S) * p.dil_w;
            if (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W) {
              pos[rs * PQ + j] = ih * p.W + iw;
              ++start[ih * p.W + iw + 1];
            }
          }
        for (int64_t e = 0; e < HW; ++e) start[e + 1] += start[e];
        std::vector<int64_t> fill(start.begin(), start.end() - 1);
        for (int64_t rs = 0; rs < RS; ++rs)
          for (int64_t j = 0; j < PQ; ++j)
            if (pos[rs * PQ + j] >= 0) ent[fill[pos[rs * PQ + j]]++] = rs * k.width + j;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
        for (int64_t u = 0; u < k.nimg * Cg; ++u) {
          const int64_t i = u / Cg, c = u % Cg;
          T* dxc = dx + ((k.n0 + i) * p.C + g * Cg + c) * HW;
          const T* base = dcol + c * RS * k.width + i * PQ;
          for (int64_t e = 0; e < HW; ++e) {
            T acc = T(0);
            for (int64_t t = start[e]; t < start[e + 1]; ++t) acc += base[ent[t]];
            dxc[e] = acc;
          }
        }
        return;
      }
      const int64_t rows = k.nimg * Cg * p.H;
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
      for (int64_t u = 0; u < rows; ++u) {
        const int64_t i = u / (Cg * p.H), row = u % (Cg * p.H);
        T* dxg = dx + ((k.n0 + i) * p.C + g * Cg) * HW;
        const int64_t c = row / p.H, h = row % p.H;
        T* dxr = dxg + c * HW + h * p.W;
        for (int64_t q = 0; q < p.W; ++q) dxr[q] = T(0);
        col2im_gather_rows(p, dcol + i * PQ, k.width, 0, p.P, row, row + 1, dxg);
      }
    });
    return;
  }
  // large images: tile over whole output rows so a tile's taps map to a band
  // of input rows; grad_input accumulates over the tiles in order
  const int64_t rows_per_tile = std::max<int64_t>(1, std::min<int64_t>(p.P, b.nt / p.Q));
  for_items<T>(p.N * p.groups, CRS * rows_per_tile * p.Q, 1, [&](int64_t item, T* dcol, bool par) {
    const int64_t g = item % p.groups, n = item / p.groups;
    T* dxg = dx + (n * p.C + g * Cg) * HW;
    std::memset(dxg, 0, sizeof(T) * Cg * HW);
    for (int64_t p0 = 0; p0 < p.P; p0 += rows_per_tile) {
      const int64_t p1 = std::min(p.P, p0 + rows_per_tile), ncols = (p1 - p0) * p.Q;
      // dcol = weight[g]^T (CRS x Kg) . grad_output tile (Kg x ncols)
      gemm<T>(CRS, ncols, Kg, w + g * Kg * CRS, 1, CRS, dy + (n * p.K + g * Kg) * PQ + p0 * p.Q,
              PQ, 1, T(0), dcol, ncols, par);
#pragma omp parallel for num_threads(::fastconv::max_threads()) schedule(static) if (par)
      for (int64_t i = 0; i < Cg * p.H; ++i)
        col2im_gather_rows(p, dcol, ncols, p0, p1, i, i + 1, dxg);
    }
  });
}

template <typename T>
void im2col_wgrad(const ConvProblem& p, const T* x, const T* dy, T* dw) {
  if (padded_ok(p)) return padded_wgrad(p, x, dy, dw);
  const int64_t Kg = p.Kg(), PQ = p.P * p.Q;
  const int64_t CRS = p.Cg() * p.R * p.S;
  const Blocking b = blocking(p, CRS, sizeof(T));
  // items ordered (block, group); groups are independent slices of dw
  const int64_t items = b.blocks * p.groups;
  const int64_t scratch = CRS * b.cols + (b.nb > 1 ? Kg * b.cols : 0);
  detail::reduce_weight_grad<T>(items, p.K * CRS, dw, [&](int64_t item, T* acc, bool par) {
    thread_local AlignedBuffer<T> buf;
    buf.resize(scratch);
    const int64_t g = item % p.groups;
    const Block k = block_at(p, b, item / p.groups);
    T* col = buf.data();
    build_columns(p, x, g, k, col, par);
    // acc[g] (Kg x CRS) += grad_output block (Kg x width) . col^T (width x CRS)
    if (b.nb > 1) {
      T* dyb = col + CRS * b.cols;
      gather_block(p, dy, g, k, dyb);
      gemm<T>(Kg, CRS, k.width, dyb, k.width, 1, col, 1, k.width, T(1), acc + g * Kg * CRS, CRS,
              par);
    } else {
      gemm<T>(Kg, CRS, k.ncols, dy + (k.n0 * p.K + g * Kg) * PQ + k.j0, PQ, 1, col, 1, k.ncols,
              T(1), acc + g * Kg * CRS, CRS, par);
    }
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
