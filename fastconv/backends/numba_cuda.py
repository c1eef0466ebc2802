"""Numba CUDA backend (``"numba-cuda"``): ``@cuda.jit`` kernels for a GPU without the compiled CUDA module.

Available when ``numba.cuda.is_available()`` (a usable GPU and driver) or when
Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1`` set before numba is
imported; every GPU thread then runs as a Python thread: tests only). Never the
automatic default: choose it with ``backend="numba-cuda"`` or ``set_backend``.

Function tables (the same as :mod:`fastconv.backends.cpu`):

* conv: ``supports / fprop / dgrad / wgrad(algo, problem, ...)`` with algos
  ``"direct"``, ``"im2col"`` and ``"1x1"`` (``"separable"`` is refused, see
  :func:`supports`):

  - ``direct``: one thread per output (Fprop), per input (Dgrad, a gather) and
    one block per filter element (Wgrad, a fixed-order tree reduction).
  - ``im2col``: the N*P*Q output pixels are the GEMM columns, processed in
    batch tiles whose C*R*S x tile column buffer stays under ``COL_BYTES``
    (16 MiB). Per tile: the ``im2col`` kernel fills the buffer, then the
    shared-memory tiled GEMM ``conv_gemm`` (GTY x GTX threads, each a
    GRM x GRN register block; groups along grid z; ragged edges zero-filled)
    computes Fprop ``Y_g = W_g x col_g`` with the bias + relu epilogue writing
    straight into NCHW, Dgrad's column gradient ``W_g^T x dY_g`` followed by
    ``col2im`` as a gather (each input element sums its taps in (r, s) order;
    the tile holding an image's first column writes, later tiles add), and
    Wgrad ``dW_g (+)= dY_g x col_g^T`` accumulated over the tiles in order.
  - ``1x1`` (1x1 filter, no padding): with stride 1 the input already is the
    column matrix, so Fprop, Dgrad and Wgrad are single GEMMs over NCHW with
    no column buffer; other strides run the im2col path.

  ``algo="auto"`` in :mod:`fastconv.ops` uses the compiled CPU path's table
  (1x1, direct for depthwise, else im2col); where that table says separable,
  numba-cuda runs im2col.
* pooling / layers: ``layer_kernel(name)`` returns callables with exactly the
  argument lists of the compiled module's functions (``csrc/bindings/cpu_pool.cpp``,
  ``cpu_layers.cpp``).

Arrays: NumPy arrays are copied to the device, the kernel runs, and the
results are copied back into the given NumPy output arrays. Device arrays
(numba device arrays, or anything with ``__cuda_array_interface__`` such as
CuPy) are used in place, without a host round trip. Every array must be
C-contiguous and of the kernel's dtype (float32 / float64; int64 indices and
targets, uint8 dropout masks, float64 batch-norm statistics).

Determinism: no atomics anywhere. Each output element is produced by one
thread in a fixed loop order (Dgrad and the pooling backward passes are
gathers; each GEMM element sums over k in increasing order), and the
reductions (direct Wgrad, batch-norm statistics) give each block a fixed
thread-to-element assignment and a fixed-order shared-memory tree, so results
do not depend on scheduling (they do depend on the block size and, for im2col
Dgrad/Wgrad, on the column tile width, constants of this module).

Index arithmetic is 64-bit: grid-stride loops run over int64 element counts and
all offsets are computed from them.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ..problem import algorithm_rule

AVAILABLE = False
IMPORT_ERROR = None
SIMULATOR = False
# Probing must never fail or warn (importing fastconv lists the backends): any
# error, including a broken driver, just means "not available".
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        import numba
        from numba import cuda

        SIMULATOR = bool(numba.config.ENABLE_CUDASIM)
        AVAILABLE = SIMULATOR or bool(cuda.is_available())
        if not AVAILABLE:
            IMPORT_ERROR = ("numba.cuda finds no usable GPU (numba.cuda.is_available() is False) and Numba's "
                            "CUDA simulator is off (set NUMBA_ENABLE_CUDASIM=1 before numba is imported)")
    except Exception as exc:  # noqa: BLE001 - pragma: no cover where numba.cuda works
        numba = cuda = None
        SIMULATOR = AVAILABLE = False
        IMPORT_ERROR = f"numba.cuda is unusable: {exc!r}"

ALGOS = ("direct", "im2col", "1x1")

# Launch shapes. The simulator runs each GPU thread as a Python thread, so it
# gets small blocks and few of them (grid-stride loops cover the rest).
if SIMULATOR:
    TPB, MAX_BLOCKS, RTPB, RED_MAX_BLOCKS, TILE, TILE_GRID = 32, 4, 32, 4, 4, 2
else:
    TPB, MAX_BLOCKS, RTPB, RED_MAX_BLOCKS, TILE, TILE_GRID = 256, 8192, 256, 65535, 16, 256
# RTPB (threads of a reduction block) must be a power of two: the tree halves it.
assert RTPB & (RTPB - 1) == 0

# The convolution GEMM (conv_gemm): a block of GTY x GTX threads computes a
# GBM x GBN tile of C, each thread a GRM x GRN register block (rows ty + i*GTY,
# columns tx + j*GTX), stepping through the reduction GBK at a time with A and
# B tiles staged in shared memory. GGRID / GGRID_Z cap the grid (grid-stride
# over tiles and groups).
if SIMULATOR:
    GTX, GTY, GRM, GRN, GBK, GGRID, GGRID_Z = 4, 4, 2, 2, 4, 2, 2
else:
    GTX, GTY, GRM, GRN, GBK, GGRID, GGRID_Z = 16, 16, 4, 4, 16, 4096, 65535
GBM, GBN = GTY * GRM, GTX * GRN
# Bound on the im2col column buffer (bytes): the columns (output pixels n, p, q)
# are processed in batch tiles of at most this many bytes of C*R*S x columns.
# Module-level and read at call time (tests monkeypatch it to force many tiles).
COL_BYTES = 16 << 20


def supports(algo: str, p) -> str:
    if algo in ("direct", "im2col", "1x1"):
        return algorithm_rule(algo, p)
    if algo == "separable":
        return ("the numba-cuda backend has no separable kernel (algos: direct, im2col, 1x1): the CPU one is "
                "built around packed GEMM panels sized for CPU caches; run 1xn / nx1 filters with im2col")
    return f"unknown algorithm {algo!r}; the numba-cuda backend has {ALGOS}"


def _need():
    if not AVAILABLE:
        raise RuntimeError(f"the numba-cuda backend is not available: {IMPORT_ERROR}")


# ------------------------------------------------------------ array handling
def _is_device(a):
    if a is None or isinstance(a, np.ndarray):
        return False
    if SIMULATOR:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return isinstance(a, FakeCUDAArray)
    return cuda.is_cuda_array(a)


class _Call:
    """Device views of one call's arrays; ``finish()`` copies device results back into NumPy outputs."""

    def __init__(self):
        self._back = []

    def _device(self, a, name, dtype, n, write):
        dtype = np.dtype(dtype)
        if _is_device(a):
            d = a if SIMULATOR else cuda.as_cuda_array(a)
            if np.dtype(d.dtype) != dtype:
                raise TypeError(f"{name}: dtype does not match the kernel's ({d.dtype}, needs {dtype})")
            if not d.is_c_contiguous():
                raise ValueError(f"{name}: must be C-contiguous")
            if d.size != n:
                raise ValueError(f"{name}: has {d.size} elements (shape {tuple(d.shape)}), the kernel needs {n}")
            return d.reshape(d.size) if d.size else d, None
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: must be a NumPy or CUDA device array, got {type(a).__name__}")
        if a.dtype != dtype:
            raise TypeError(f"{name}: dtype does not match the kernel's ({a.dtype}, needs {dtype})")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: must be C-contiguous")
        if a.size != n:
            raise ValueError(f"{name}: has {a.size} elements (shape {a.shape}), the kernel needs {n}")
        if write and not a.flags.writeable:
            raise ValueError(f"{name}: is read-only")
        flat = a.reshape(a.size)
        if write:
            d = cuda.device_array(a.size, dtype)
            self._back.append((d, flat))
            return d, flat
        return cuda.to_device(flat), None

    def inp(self, a, name, dtype, n):
        return self._device(a, name, dtype, n, False)[0]

    def out(self, a, name, dtype, n):
        return self._device(a, name, dtype, n, True)[0]

    def opt_inp(self, a, name, dtype, n):
        """(device array or a 1-element dummy, present flag): kernels take no None."""
        if a is None:
            return _dummy(dtype), False
        return self.inp(a, name, dtype, n), True

    def opt_out(self, a, name, dtype, n):
        if a is None:
            return _dummy(dtype), False
        return self.out(a, name, dtype, n), True

    def finish(self):
        for d, host in self._back:
            if host.size:
                d.copy_to_host(host)


_dummies: dict = {}


def _dummy(dtype):
    dtype = np.dtype(dtype)
    if dtype not in _dummies:
        _dummies[dtype] = cuda.device_array(1, dtype)
    return _dummies[dtype]


def _dtype_of(a, name):
    dt = np.dtype(a.dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{name}: the numba-cuda kernels take float32 or float64, got {dt}")
    return dt


def _shape3(a, name, shape):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")


def _blocks(n, tpb=TPB):
    """Blocks of a grid-stride launch over n items (at least 1, at most MAX_BLOCKS)."""
    return int(max(1, min((n + tpb - 1) // tpb, MAX_BLOCKS)))


def _launch(kernel, n, *args):
    if n > 0:
        kernel[_blocks(n), TPB](*args)


def _launch_red(kernel, items, *args):
    """One block (RTPB threads) per reduced item, grid-stride over the items."""
    if items > 0:
        kernel[int(min(items, RED_MAX_BLOCKS)), RTPB](*args)


# ----------------------------------------------------------------- kernels
_kernels: dict = {}


def _k(dtype):
    """The kernels specialized for one element dtype (constants and shared arrays need it)."""
    dtype = np.dtype(dtype)
    if dtype not in _kernels:
        _kernels[dtype] = _build(dtype)
    return _kernels[dtype]


def _build(dtype):  # noqa: C901 - one closure per dtype holding every kernel
    T = numba.from_dtype(dtype)   # shared-array element type
    TC = dtype.type                # cast to the element type
    Z = dtype.type(0)
    ONE = dtype.type(1)
    NEG_INF = dtype.type(-np.inf)
    POS_INF = dtype.type(np.inf)
    F64 = np.float64
    M32 = np.uint64(0xFFFFFFFF)
    U16, U15, U32 = np.uint64(16), np.uint64(15), np.uint64(32)
    C1, C2, GOLD = np.uint64(0x7FEB352D), np.uint64(0x846CA68B), np.uint64(0x9E3779B1)
    ks = {}

    # min/max as device functions: the builtins do not compile for the CUDA
    # target in this numba (cuda.compile_ptx: "Signature mismatch")
    @cuda.jit(device=True)
    def imin(a, b):
        return a if a < b else b

    @cuda.jit(device=True)
    def imax(a, b):
        return a if a > b else b

    # ------------------------------------------------------------ conv
    @cuda.jit
    def conv_fprop(x, w, b, has_b, y, relu, N, C, H, W, K, Cg, R, S, P, Q, sh, sw, pt, pl, dlh, dlw, G):
        Kg = K // G
        for i in range(cuda.grid(1), N * K * P * Q, cuda.gridsize(1)):
            q = i % Q
            t = i // Q
            p = t % P
            t = t // P
            k = t % K
            n = t // K
            g = k // Kg
            acc = Z
            for c in range(Cg):
                xb = (n * C + g * Cg + c) * H
                wb = (k * Cg + c) * R
                for r in range(R):
                    h = p * sh - pt + r * dlh
                    if h < 0 or h >= H:
                        continue
                    for s in range(S):
                        wi = q * sw - pl + s * dlw
                        if wi < 0 or wi >= W:
                            continue
                        acc += x[(xb + h) * W + wi] * w[(wb + r) * S + s]
            if has_b:
                acc += b[k]
            if relu and acc < Z:
                acc = Z
            y[i] = acc

    @cuda.jit
    def conv_dgrad(dy, w, dx, N, C, H, W, K, Cg, R, S, P, Q, sh, sw, pt, pl, dlh, dlw, G):
        # gather: each input element sums the (k, r, s) taps that read it
        Kg = K // G
        for i in range(cuda.grid(1), N * C * H * W, cuda.gridsize(1)):
            wi = i % W
            t = i // W
            h = t % H
            t = t // H
            c = t % C
            n = t // C
            g = c // Cg
            cl = c - g * Cg
            acc = Z
            for kk in range(Kg):
                k = g * Kg + kk
                for r in range(R):
                    ph = h + pt - r * dlh
                    if ph < 0 or ph % sh != 0:
                        continue
                    p = ph // sh
                    if p >= P:
                        continue
                    for s in range(S):
                        pw = wi + pl - s * dlw
                        if pw < 0 or pw % sw != 0:
                            continue
                        q = pw // sw
                        if q >= Q:
                            continue
                        acc += w[((k * Cg + cl) * R + r) * S + s] * dy[((n * K + k) * P + p) * Q + q]
            dx[i] = acc

    @cuda.jit
    def conv_wgrad(x, dy, dwt, N, C, H, W, K, Cg, R, S, P, Q, sh, sw, pt, pl, dlh, dlw, G):
        # one block per filter element: fixed strided partial sums, then a fixed tree
        red = cuda.shared.array(RTPB, T)
        tid = cuda.threadIdx.x
        Kg = K // G
        NPQ = N * P * Q
        for e in range(cuda.blockIdx.x, K * Cg * R * S, cuda.gridDim.x):
            s = e % S
            t = e // S
            r = t % R
            t = t // R
            c = t % Cg
            k = t // Cg
            ci = (k // Kg) * Cg + c
            acc = Z
            for j in range(tid, NPQ, RTPB):
                q = j % Q
                t2 = j // Q
                p = t2 % P
                n = t2 // P
                h = p * sh - pt + r * dlh
                wi = q * sw - pl + s * dlw
                if h >= 0 and h < H and wi >= 0 and wi < W:
                    acc += dy[((n * K + k) * P + p) * Q + q] * x[((n * C + ci) * H + h) * W + wi]
            red[tid] = acc
            cuda.syncthreads()
            step = RTPB // 2
            while step > 0:
                if tid < step:
                    red[tid] += red[tid + step]
                cuda.syncthreads()
                step //= 2
            if tid == 0:
                dwt[e] = red[0]
            cuda.syncthreads()  # red is reused by the next element

    ks.update(conv_fprop=conv_fprop, conv_dgrad=conv_dgrad, conv_wgrad=conv_wgrad)

    # ------------------------------------------- im2col + tiled GEMM conv
    # Columns are the output pixels j = (n*P + p)*Q + q; rows of the column
    # matrix are (c, r, s), so group g's rows are the contiguous block
    # [g*Cg*R*S, (g+1)*Cg*R*S). A batch tile holds columns [j0, j0 + nc) with
    # leading dimension nc.
    @cuda.jit
    def im2col(x, col, j0, nc, C, H, W, R, S, P, Q, sh, sw, pt, pl, dlh, dlw):
        PQ = P * Q
        for e in range(cuda.grid(1), C * R * S * nc, cuda.gridsize(1)):
            j = e % nc
            row = e // nc
            s = row % S
            t = row // S
            r = t % R
            c = t // R
            jj = j0 + j
            n = jj // PQ
            pq = jj - n * PQ
            p = pq // Q
            q = pq - p * Q
            h = p * sh - pt + r * dlh
            wi = q * sw - pl + s * dlw
            v = Z
            if h >= 0 and h < H and wi >= 0 and wi < W:
                v = x[((n * C + c) * H + h) * W + wi]
            col[e] = v

    @cuda.jit
    def col2im(dcol, dx, j0, nc, n_lo, n_cnt, C, H, W, R, S, P, Q, sh, sw, pt, pl, dlh, dlw):
        # gather: each input element of images n_lo .. n_lo+n_cnt-1 sums the
        # column-gradient entries of this tile that read it, in (r, s) order.
        # The tile holding an image's first column writes, later tiles add:
        # a fixed order, no atomics.
        PQ = P * Q
        CHW = C * H * W
        for e in range(cuda.grid(1), n_cnt * CHW, cuda.gridsize(1)):
            wi = e % W
            t = e // W
            h = t % H
            t = t // H
            c = t % C
            n = n_lo + t // C
            acc = Z
            for r in range(R):
                ph = h + pt - r * dlh
                if ph < 0 or ph % sh != 0:
                    continue
                p = ph // sh
                if p >= P:
                    continue
                for s in range(S):
                    pw = wi + pl - s * dlw
                    if pw < 0 or pw % sw != 0:
                        continue
                    q = pw // sw
                    if q >= Q:
                        continue
                    j = n * PQ + p * Q + q - j0
                    if j >= 0 and j < nc:
                        acc += dcol[((c * R + r) * S + s) * nc + j]
            i = n_lo * CHW + e
            if n * PQ >= j0:
                dx[i] = acc
            else:
                dx[i] += acc

    @cuda.jit(device=True)
    def ax(i, base, dv, hi, lo):
        """Offset of index i along one operand axis: i*lo, or with dv > 0 the split
        ((i + base) // dv)*hi + ((i + base) % dv)*lo (an (image, pixel) column index)."""
        if dv == 0:
            return i * lo
        t = i + base
        u = t // dv
        return u * hi + (t - u * dv) * lo

    @cuda.jit
    def conv_gemm(a, da, b, db, c, dc, M, Nc, Kd, G, bias, has_bias, bgs, relu, accumulate):
        """Per group g: C_g (M x Nc) = A_g (M x Kd) @ B_g (Kd x Nc), epilogue bias[g*bgs + m], relu,
        or C_g += (accumulate). Operand X(i, j) lives at
        X[dx[0] + g*dx[1] + ax(i, dx[2:6]) + ax(j, dx[6:10])] (see ax).

        GBK-deep A and B tiles go through shared memory; every C element is
        summed over k in increasing order by one thread (deterministic).
        Ragged edges load zeros and store nothing.
        """
        As = cuda.shared.array((GBK, GBM), T)
        Bs = cuda.shared.array((GBK, GBN), T)
        acc = cuda.local.array((GRM, GRN), T)
        ar = cuda.local.array(GRM, T)
        br = cuda.local.array(GRN, T)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * GTX + tx
        ntm = (M + GBM - 1) // GBM
        ntn = (Nc + GBN - 1) // GBN
        for g in range(cuda.blockIdx.z, G, cuda.gridDim.z):
            a0 = da[0] + g * da[1]
            b0 = db[0] + g * db[1]
            c0 = dc[0] + g * dc[1]
            for tm in range(cuda.blockIdx.y, ntm, cuda.gridDim.y):
                m0 = tm * GBM
                for tn in range(cuda.blockIdx.x, ntn, cuda.gridDim.x):
                    n0 = tn * GBN
                    for i in range(GRM):
                        for j in range(GRN):
                            acc[i, j] = Z
                    for k0 in range(0, Kd, GBK):
                        for e in range(tid, GBM * GBK, GTX * GTY):
                            kk = e % GBK
                            mm = e // GBK
                            m = m0 + mm
                            k = k0 + kk
                            v = Z
                            if m < M and k < Kd:
                                v = a[a0 + ax(m, da[2], da[3], da[4], da[5]) + ax(k, da[6], da[7], da[8], da[9])]
                            As[kk, mm] = v
                        for e in range(tid, GBK * GBN, GTX * GTY):
                            nn = e % GBN
                            kk = e // GBN
                            n = n0 + nn
                            k = k0 + kk
                            v = Z
                            if n < Nc and k < Kd:
                                v = b[b0 + ax(k, db[2], db[3], db[4], db[5]) + ax(n, db[6], db[7], db[8], db[9])]
                            Bs[kk, nn] = v
                        cuda.syncthreads()
                        for kk in range(GBK):
                            for i in range(GRM):
                                ar[i] = As[kk, ty + i * GTY]
                            for j in range(GRN):
                                br[j] = Bs[kk, tx + j * GTX]
                            for i in range(GRM):
                                for j in range(GRN):
                                    acc[i, j] += ar[i] * br[j]
                        cuda.syncthreads()  # the tiles are overwritten next
                    for i in range(GRM):
                        m = m0 + ty + i * GTY
                        if m >= M:
                            continue
                        rowoff = c0 + ax(m, dc[2], dc[3], dc[4], dc[5])
                        for j in range(GRN):
                            n = n0 + tx + j * GTX
                            if n >= Nc:
                                continue
                            v = acc[i, j]
                            if has_bias:
                                v += bias[g * bgs + m]
                            if relu and v < Z:
                                v = Z
                            o = rowoff + ax(n, dc[6], dc[7], dc[8], dc[9])
                            if accumulate:
                                v = c[o] + v
                            c[o] = v

    ks.update(im2col=im2col, col2im=col2im, conv_gemm=conv_gemm)

    # --------------------------------------------------------- pooling
    @cuda.jit(device=True)
    def first_inside(start, dil):
        if start >= 0:
            return start
        return start + ((-start + dil - 1) // dil) * dil

    @cuda.jit(device=True)
    def avg_count(o, stride, pad, k, n, include_pad):
        s = o * stride - pad
        e = imin(s + k, n + pad)
        padded = e - s
        s = imax(s, 0)
        e = imin(e, n)
        return padded if include_pad else e - s

    @cuda.jit(device=True)
    def better(kind, v, best):
        # max/min: strictly better keeps the first extreme; a NaN always wins
        if v != v:
            return True
        if kind == 0:
            return v > best
        return v < best

    @cuda.jit(device=True)
    def ceil_pos(a, b):
        return 0 if a <= 0 else (a + b - 1) // b

    @cuda.jit
    def pool_fwd(kind, x, y, idx, has_idx, planes, H, W, P, Q, kh, kw, sh, sw, ph, pw, dlh, dlw, cip, divo):
        for i in range(cuda.grid(1), planes * P * Q, cuda.gridsize(1)):
            q = i % Q
            t = i // Q
            p = t % P
            pln = t // P
            base = pln * H * W
            h0 = p * sh - ph
            w0 = q * sw - pw
            if kind == 2:
                acc = Z
                for r in range(kh):
                    h = h0 + r
                    if h < 0 or h >= H:
                        continue
                    for s in range(kw):
                        wi = w0 + s
                        if wi >= 0 and wi < W:
                            acc += x[base + h * W + wi]
                if divo != 0:
                    div = divo
                else:
                    div = avg_count(p, sh, ph, kh, H, cip) * avg_count(q, sw, pw, kw, W, cip)
                y[i] = acc / TC(div)
            else:
                best = NEG_INF if kind == 0 else POS_INF
                bi = first_inside(h0, dlh) * W + first_inside(w0, dlw)
                for r in range(kh):
                    h = h0 + r * dlh
                    if h < 0 or h >= H:
                        continue
                    for s in range(kw):
                        wi = w0 + s * dlw
                        if wi < 0 or wi >= W:
                            continue
                        v = x[base + h * W + wi]
                        if better(kind, v, best):
                            best = v
                            bi = h * W + wi
                y[i] = best
                if has_idx:
                    idx[i] = bi

    @cuda.jit
    def pool_bwd(kind, dy, idx, dx, planes, H, W, P, Q, kh, kw, sh, sw, ph, pw, dlh, dlw, cip, divo):
        # gather: each input element visits the windows that can contain it, in output order
        for i in range(cuda.grid(1), planes * H * W, cuda.gridsize(1)):
            iw = i % W
            t = i // W
            ih = t % H
            pln = t // H
            ob = pln * P * Q
            lo_h = ceil_pos(ih + ph - (kh - 1) * dlh, sh)
            hi_h = imin((ih + ph) // sh, P - 1)
            lo_w = ceil_pos(iw + pw - (kw - 1) * dlw, sw)
            hi_w = imin((iw + pw) // sw, Q - 1)
            acc = Z
            if kind == 2:
                for oh in range(lo_h, hi_h + 1):
                    for ow in range(lo_w, hi_w + 1):
                        if divo != 0:
                            div = divo
                        else:
                            div = avg_count(oh, sh, ph, kh, H, cip) * avg_count(ow, sw, pw, kw, W, cip)
                        acc += dy[ob + oh * Q + ow] / TC(div)
            else:
                me = ih * W + iw
                for oh in range(lo_h, hi_h + 1):
                    for ow in range(lo_w, hi_w + 1):
                        if idx[ob + oh * Q + ow] == me:
                            acc += dy[ob + oh * Q + ow]
            dx[i] = acc

    @cuda.jit
    def apool_fwd(kind, x, y, idx, has_idx, planes, H, W, P, Q):
        for i in range(cuda.grid(1), planes * P * Q, cuda.gridsize(1)):
            q = i % Q
            t = i // Q
            p = t % P
            base = (t // P) * H * W
            hs = (p * H) // P
            he = ((p + 1) * H + P - 1) // P
            ws = (q * W) // Q
            we = ((q + 1) * W + Q - 1) // Q
            if kind == 2:
                acc = Z
                for h in range(hs, he):
                    for wi in range(ws, we):
                        acc += x[base + h * W + wi]
                y[i] = acc / TC((he - hs) * (we - ws))
            else:
                best = NEG_INF
                bi = hs * W + ws
                for h in range(hs, he):
                    for wi in range(ws, we):
                        v = x[base + h * W + wi]
                        if better(0, v, best):
                            best = v
                            bi = h * W + wi
                y[i] = best
                if has_idx:
                    idx[i] = bi

    @cuda.jit
    def apool_bwd(kind, dy, idx, dx, planes, H, W, P, Q):
        for i in range(cuda.grid(1), planes * H * W, cuda.gridsize(1)):
            iw = i % W
            t = i // W
            ih = t % H
            ob = (t // H) * P * Q
            # windows o with start(o) <= i < end(o): o in [i*out // in, ceil((i+1)*out / in) - 1]
            lo_h = (ih * P) // H
            hi_h = imin(((ih + 1) * P + H - 1) // H - 1, P - 1)
            lo_w = (iw * Q) // W
            hi_w = imin(((iw + 1) * Q + W - 1) // W - 1, Q - 1)
            acc = Z
            me = ih * W + iw
            for oh in range(lo_h, hi_h + 1):
                hs = (oh * H) // P
                he = ((oh + 1) * H + P - 1) // P
                if ih < hs or ih >= he:
                    continue
                for ow in range(lo_w, hi_w + 1):
                    ws = (ow * W) // Q
                    we = ((ow + 1) * W + Q - 1) // Q
                    if iw < ws or iw >= we:
                        continue
                    if kind == 2:
                        acc += dy[ob + oh * Q + ow] / TC((he - hs) * (we - ws))
                    elif idx[ob + oh * Q + ow] == me:
                        acc += dy[ob + oh * Q + ow]
            dx[i] = acc

    ks.update(pool_fwd=pool_fwd, pool_bwd=pool_bwd, apool_fwd=apool_fwd, apool_bwd=apool_bwd)

    # ------------------------------------------------------ batch norm
    @cuda.jit
    def bn_stats(x, N, C, L, M, mean, var):
        # one block per channel; moments shifted by the channel's first element
        r1 = cuda.shared.array(RTPB, numba.float64)
        r2 = cuda.shared.array(RTPB, numba.float64)
        tid = cuda.threadIdx.x
        for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
            shift = F64(x[c * L])
            a = 0.0
            b = 0.0
            for j in range(tid, N * L, RTPB):
                n = j // L
                v = F64(x[(n * C + c) * L + (j - n * L)]) - shift
                a += v
                b += v * v
            r1[tid] = a
            r2[tid] = b
            cuda.syncthreads()
            step = RTPB // 2
            while step > 0:
                if tid < step:
                    r1[tid] += r1[tid + step]
                    r2[tid] += r2[tid + step]
                cuda.syncthreads()
                step //= 2
            if tid == 0:
                d = r1[0] / M
                mean[c] = shift + d
                v = r2[0] / M - d * d
                # as the CPU's biased_variance: rounding below 0 -> 0, NaN (NaN/inf
                # data) stays NaN, overflow of finite data -> inf
                if v < 0.0:
                    v = 0.0
                elif v != v and abs(d) < math.inf:
                    v = math.inf
                var[c] = v
            cuda.syncthreads()

    @cuda.jit
    def bn_apply(x, N, C, L, mean, invstd, w, has_w, b, has_b, y):
        for i in range(cuda.grid(1), N * C * L, cuda.gridsize(1)):
            c = (i // L) % C
            a = invstd[c] * (F64(w[c]) if has_w else 1.0)
            bb = b[c] if has_b else Z
            y[i] = (x[i] - TC(mean[c])) * TC(a) + bb

    @cuda.jit
    def bn_grad_sums(dy, x, N, C, L, mean, invstd, sdy, sdyx, dwt, has_dw, db, has_db):
        r1 = cuda.shared.array(RTPB, numba.float64)
        r2 = cuda.shared.array(RTPB, numba.float64)
        tid = cuda.threadIdx.x
        for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
            m = mean[c]
            a = 0.0
            b = 0.0
            for j in range(tid, N * L, RTPB):
                n = j // L
                k = (n * C + c) * L + (j - n * L)
                g = F64(dy[k])
                a += g
                b += g * (F64(x[k]) - m)
            r1[tid] = a
            r2[tid] = b
            cuda.syncthreads()
            step = RTPB // 2
            while step > 0:
                if tid < step:
                    r1[tid] += r1[tid + step]
                    r2[tid] += r2[tid + step]
                cuda.syncthreads()
                step //= 2
            if tid == 0:
                sdy[c] = r1[0]
                sdyx[c] = r2[0]
                if has_dw:
                    dwt[c] = TC(r2[0] * invstd[c])
                if has_db:
                    db[c] = TC(r1[0])
            cuda.syncthreads()

    @cuda.jit
    def bn_dx(dy, x, N, C, L, M, mean, invstd, w, has_w, training, sdy, sdyx, dx):
        for i in range(cuda.grid(1), N * C * L, cuda.gridsize(1)):
            c = (i // L) % C
            iv = invstd[c]
            a = (F64(w[c]) if has_w else 1.0) * iv
            if training:
                # dx = a (dy - mean(dy) - xhat mean(dy xhat))
                k2 = -a * iv * iv * sdyx[c] / M
                k3 = -a * sdy[c] / M
                dx[i] = TC(a) * dy[i] + TC(k2) * (x[i] - TC(mean[c])) + TC(k3)
            else:
                dx[i] = dy[i] * TC(a)

    ks.update(bn_stats=bn_stats, bn_apply=bn_apply, bn_grad_sums=bn_grad_sums, bn_dx=bn_dx)

    # ------------------------------------------------------------- LRN
    @cuda.jit(device=True)
    def lrn_base(x, n, C, L, l, c, lo, hi, k, coef):
        acc = 0.0
        for j in range(imax(0, c - lo), imin(C - 1, c + hi) + 1):
            v = F64(x[(n * C + j) * L + l])
            acc += v * v
        return k + coef * acc

    @cuda.jit
    def lrn_fwd(x, N, C, L, size, alpha, beta, k, y):
        lo = size // 2
        hi = (size - 1) // 2
        coef = alpha / size
        for i in range(cuda.grid(1), N * C * L, cuda.gridsize(1)):
            l = i % L
            t = i // L
            c = t % C
            n = t // C
            b = lrn_base(x, n, C, L, l, c, lo, hi, k, coef)
            y[i] = TC(F64(x[i]) * b ** (-beta))

    @cuda.jit
    def lrn_bwd(dy, x, N, C, L, size, alpha, beta, k, dx):
        # dx_j = dy_j b_j^-beta - 2 alpha beta / size * x_j * sum_{i in [j-hi, j+lo]} dy_i x_i b_i^(-beta-1)
        lo = size // 2
        hi = (size - 1) // 2
        coef = alpha / size
        cgrad = 2.0 * alpha * beta / size
        for i in range(cuda.grid(1), N * C * L, cuda.gridsize(1)):
            l = i % L
            t = i // L
            c = t % C
            n = t // C
            u = 0.0
            for j in range(imax(0, c - hi), imin(C - 1, c + lo) + 1):
                bj = lrn_base(x, n, C, L, l, j, lo, hi, k, coef)
                o = (n * C + j) * L + l
                u += F64(dy[o]) * F64(x[o]) * bj ** (-beta - 1.0)
            b = lrn_base(x, n, C, L, l, c, lo, hi, k, coef)
            dx[i] = TC(F64(dy[i]) * b ** (-beta) - cgrad * F64(x[i]) * u)

    ks.update(lrn_fwd=lrn_fwd, lrn_bwd=lrn_bwd)

    # ----------------------------------------------------- activations
    @cuda.jit
    def act_fwd(kind, x, y, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            v = x[i]
            if kind == 0:
                y[i] = Z if v < Z else v  # NaN stays NaN
            elif kind == 1:
                e = math.exp(-abs(v))  # exp(-|x|): never overflows
                inv = ONE / (ONE + e)
                y[i] = inv if v >= Z else e * inv
            else:
                y[i] = math.tanh(v)

    @cuda.jit
    def act_bwd(kind, dy, y, dx, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            v = y[i]
            if kind == 0:
                dx[i] = Z if v <= Z else dy[i]  # a NaN output passes the gradient (torch)
            elif kind == 1:
                dx[i] = dy[i] * v * (ONE - v)
            else:
                dx[i] = dy[i] * (ONE - v * v)

    ks.update(act_fwd=act_fwd, act_bwd=act_bwd)

    # --------------------------------------------------------- softmax
    @cuda.jit
    def softmax_fwd(log, outer, D, inner, x, y):
        # one thread per (outer, inner) column; sums in float64, in d order
        for i in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
            o = i // inner
            base = o * D * inner + (i - o * inner)
            m = NEG_INF
            for d in range(D):
                v = x[base + d * inner]
                if v > m:
                    m = v
            s = 0.0
            for d in range(D):
                s += F64(math.exp(x[base + d * inner] - m))
            if log:
                ls = TC(math.log(s))  # (x - m) - log(s): m + log(s) would absorb log(s) into a large m
                for d in range(D):
                    y[base + d * inner] = (x[base + d * inner] - m) - ls
            else:
                inv = TC(1.0 / s)
                for d in range(D):
                    y[base + d * inner] = math.exp(x[base + d * inner] - m) * inv

    @cuda.jit
    def softmax_bwd(log, outer, D, inner, dy, y, dx):
        for i in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
            o = i // inner
            base = o * D * inner + (i - o * inner)
            s = 0.0
            for d in range(D):
                k = base + d * inner
                s += F64(dy[k]) if log else F64(dy[k]) * F64(y[k])
            st = TC(s)
            for d in range(D):
                k = base + d * inner
                if log:
                    dx[k] = dy[k] - math.exp(y[k]) * st
                else:
                    dx[k] = y[k] * (dy[k] - st)

    # Rows (inner == 1, the usual classifier case): one block per row, so a
    # (256, 1000) softmax has 256 blocks of RTPB threads rather than 256
    # threads. Each thread strides over the row; max and sums go through fixed
    # shared-memory trees (deterministic), sums in float64.
    @cuda.jit(device=True)
    def tree_max(red, tid):
        step = RTPB // 2
        while step > 0:
            if tid < step and red[tid + step] > red[tid]:
                red[tid] = red[tid + step]
            cuda.syncthreads()
            step //= 2

    @cuda.jit(device=True)
    def tree_sum(red, tid):
        step = RTPB // 2
        while step > 0:
            if tid < step:
                red[tid] += red[tid + step]
            cuda.syncthreads()
            step //= 2

    @cuda.jit(device=True)
    def row_max_exp_sum(x, base, D, tid, rm, rs):
        """(max, sum exp(x - max)) of x[base : base + D], on the whole block."""
        m = NEG_INF
        for d in range(tid, D, RTPB):
            v = x[base + d]
            if v > m:  # NaN never wins: as the CPU's row_max
                m = v
        rm[tid] = m
        cuda.syncthreads()
        tree_max(rm, tid)
        m = rm[0]
        s = 0.0
        for d in range(tid, D, RTPB):
            s += F64(math.exp(x[base + d] - m))
        rs[tid] = s
        cuda.syncthreads()
        tree_sum(rs, tid)
        return m, rs[0]

    @cuda.jit
    def softmax_rows_fwd(log, outer, D, x, y):
        rm = cuda.shared.array(RTPB, T)
        rs = cuda.shared.array(RTPB, numba.float64)
        tid = cuda.threadIdx.x
        for o in range(cuda.blockIdx.x, outer, cuda.gridDim.x):
            base = o * D
            m, s = row_max_exp_sum(x, base, D, tid, rm, rs)
            if log:
                ls = TC(math.log(s))  # (x - m) - log(s), as above
                for d in range(tid, D, RTPB):
                    y[base + d] = (x[base + d] - m) - ls
            else:
                inv = TC(1.0 / s)
                for d in range(tid, D, RTPB):
                    y[base + d] = math.exp(x[base + d] - m) * inv
            cuda.syncthreads()  # rm / rs are reused by the next row

    @cuda.jit
    def softmax_rows_bwd(log, outer, D, dy, y, dx):
        rs = cuda.shared.array(RTPB, numba.float64)
        tid = cuda.threadIdx.x
        for o in range(cuda.blockIdx.x, outer, cuda.gridDim.x):
            base = o * D
            s = 0.0
            for d in range(tid, D, RTPB):
                k = base + d
                s += F64(dy[k]) if log else F64(dy[k]) * F64(y[k])
            rs[tid] = s
            cuda.syncthreads()
            tree_sum(rs, tid)
            st = TC(rs[0])
            for d in range(tid, D, RTPB):
                k = base + d
                if log:
                    dx[k] = dy[k] - math.exp(y[k]) * st
                else:
                    dx[k] = y[k] * (dy[k] - st)
            cuda.syncthreads()

    @cuda.jit
    def cross_entropy(z, target, N, C, ignore_index, eps, scale, row_loss, grad):
        # one block per row: loss and gradient of softmax cross entropy with label smoothing
        rm = cuda.shared.array(RTPB, T)
        rs = cuda.shared.array(RTPB, numba.float64)
        tid = cuda.threadIdx.x
        for i in range(cuda.blockIdx.x, N, cuda.gridDim.x):
            base = i * C
            t = target[i]
            if t == ignore_index:  # the same branch for the whole block
                for c in range(tid, C, RTPB):
                    grad[base + c] = Z
                if tid == 0:
                    row_loss[i] = 0.0
                continue
            m, s = row_max_exp_sum(z, base, C, tid, rm, rs)
            zs = 0.0
            if eps != 0.0:
                for c in range(tid, C, RTPB):
                    zs += F64(z[base + c]) - F64(m)  # sum_c (z_c - m)
                cuda.syncthreads()  # every thread has read rs[0] (the sum) before it is overwritten
                rs[tid] = zs
                cuda.syncthreads()
                tree_sum(rs, tid)
                zs = rs[0]
            ls = math.log(s)  # log p_c = (z_c - m) - log(s); m + log(s) is not formed (absorption)
            a = TC(scale / s)
            bb = TC(scale * eps / C)
            hit = TC(scale * (1.0 - eps))
            for c in range(tid, C, RTPB):
                g = math.exp(z[base + c] - m) * a - bb
                if c == t:
                    g -= hit
                grad[base + c] = g
            if tid == 0:
                loss = -(1.0 - eps) * ((F64(z[base + t]) - F64(m)) - ls)
                if eps != 0.0:
                    loss -= eps / C * (zs - C * ls)
                row_loss[i] = loss
            cuda.syncthreads()

    ks.update(softmax_fwd=softmax_fwd, softmax_bwd=softmax_bwd, softmax_rows_fwd=softmax_rows_fwd,
              softmax_rows_bwd=softmax_rows_bwd, cross_entropy=cross_entropy)

    # --------------------------------------------------------- dropout
    @cuda.jit(device=True)
    def mix32(h):
        # the compiled module's 32-bit mixer, in uint64 lanes masked to 32 bits
        # (products of two 32-bit values fit in 64 bits: nothing overflows)
        h = h ^ (h >> U16)
        h = (h * C1) & M32
        h = h ^ (h >> U15)
        h = (h * C2) & M32
        h = h ^ (h >> U16)
        return h

    @cuda.jit
    def dropout_fwd(x, n, k0, k1, offset, thr, scale, y, mask):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            g = offset + np.uint64(i)  # wraps like the C++ uint64 counter
            h = mix32((g & M32) ^ k0)
            h = mix32(h ^ (((g >> U32) * GOLD) & M32) ^ k1)
            keep = h >= thr
            mask[i] = 1 if keep else 0
            # multiply rather than select, so a dropped NaN/inf stays NaN (as torch)
            y[i] = x[i] * (scale if keep else Z)

    @cuda.jit
    def dropout_bwd(dy, mask, scale, dx, n):
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            dx[i] = dy[i] * (scale if mask[i] != 0 else Z)

    ks.update(dropout_fwd=dropout_fwd, dropout_bwd=dropout_bwd)

    # ------------------------------------------------------------ GEMM
    @cuda.jit
    def gemm(a, sa0, sa1, b, sb0, sb1, c, M, Nc, Kd, bias, has_bias):
        """c (M x Nc, row-major) = A @ B (+ bias per column); A(i, k) = a[i*sa0 + k*sa1], B likewise.

        TILE x TILE blocks stage TILE x TILE tiles of A and B in shared memory;
        each thread sums its element over k in increasing order (deterministic).
        Grid-stride over output tiles.
        """
        As = cuda.shared.array((TILE, TILE), T)
        Bs = cuda.shared.array((TILE, TILE), T)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        ntm = (M + TILE - 1) // TILE
        ntn = (Nc + TILE - 1) // TILE
        for tm in range(cuda.blockIdx.y, ntm, cuda.gridDim.y):
            for tn in range(cuda.blockIdx.x, ntn, cuda.gridDim.x):
                row = tm * TILE + ty
                col = tn * TILE + tx
                acc = Z
                for k0 in range(0, Kd, TILE):
                    ka = k0 + tx
                    As[ty, tx] = a[row * sa0 + ka * sa1] if (row < M and ka < Kd) else Z
                    kb = k0 + ty
                    Bs[ty, tx] = b[kb * sb0 + col * sb1] if (kb < Kd and col < Nc) else Z
                    cuda.syncthreads()
                    for kk in range(TILE):
                        acc += As[ty, kk] * Bs[kk, tx]
                    cuda.syncthreads()
                if row < M and col < Nc:
                    if has_bias:
                        acc += bias[col]
                    c[row * Nc + col] = acc

    @cuda.jit
    def col_sums(dy, M, O, db):
        # bias gradient: each column summed in row order, in float64
        for j in range(cuda.grid(1), O, cuda.gridsize(1)):
            s = 0.0
            for m in range(M):
                s += F64(dy[m * O + j])
            db[j] = TC(s)

    ks.update(gemm=gemm, col_sums=col_sums)
    return ks


def _gemm(ks, a, sa, b, sb, c, M, Nc, Kd, bias=None, has_bias=False, dtype=None):
    if M == 0 or Nc == 0:
        return
    if bias is None:
        bias = _dummy(dtype)
    grid = (int(min((Nc + TILE - 1) // TILE, TILE_GRID)), int(min((M + TILE - 1) // TILE, TILE_GRID)))
    ks["gemm"][grid, (TILE, TILE)](a, sa[0], sa[1], b, sb[0], sb[1], c, M, Nc, Kd, bias, has_bias)


# -------------------------------------------------------------- conv table
def _check(algo, p):
    why = supports(algo, p)
    if why:
        raise ValueError(f"numba-cuda backend: algo={algo!r} cannot run this problem: {why}")
    _need()


def _geom(p):
    return (p.N, p.C, p.H, p.W, p.K, p.C // p.groups, p.R, p.S, p.P, p.Q, p.stride_h, p.stride_w,
            p.pad_h, p.pad_w, p.dil_h, p.dil_w, p.groups)


# Operand descriptors of conv_gemm: (offset, group stride, row axis, column
# axis), an axis being (base, dv, hi, lo) as read by the kernel's ax().
def _ax(lo):
    return (0, 0, 0, int(lo))


def _split(base, dv, hi, lo=1):
    return (int(base), int(dv), int(hi), int(lo))


def _op(gs, rows, cols):
    return (0, int(gs)) + rows + cols


def _conv_gemm(ks, dt, G, M, Nc, Kd, a, da, b, db, c, dc, bias=None, has_bias=False, bgs=0, relu=False,
               accumulate=False):
    if M == 0 or Nc == 0 or G == 0:
        return
    grid = (int(min((Nc + GBN - 1) // GBN, GGRID)), int(min((M + GBM - 1) // GBM, GGRID)), int(min(G, GGRID_Z)))
    ks["conv_gemm"][grid, (GTX, GTY)](a, da, b, db, c, dc, int(M), int(Nc), int(Kd), int(G),
                                      _dummy(dt) if bias is None else bias, bool(has_bias), int(bgs), bool(relu),
                                      bool(accumulate))


def _plain_1x1(algo, p):
    """algo "1x1" with stride 1 (supports() has checked 1x1 and zero padding): the input is already the
    column matrix (P == H, Q == W), no im2col."""
    return algo == "1x1" and p.stride_h == 1 and p.stride_w == 1


def _tiles(p, dt):
    """Batch tiles [j0, j0 + n) of the N*P*Q columns: each tile's C*R*S x n column buffer fits COL_BYTES
    (at least one column per tile). Returns (tile width, list of (j0, n))."""
    NPQ = p.N * p.P * p.Q
    rows = p.C * p.R * p.S
    nc = max(1, int(COL_BYTES) // (rows * np.dtype(dt).itemsize))
    if nc > GBN:
        nc -= nc % GBN   # whole GEMM tiles
    nc = int(min(nc, max(NPQ, 1)))
    return nc, [(j0, int(min(nc, NPQ - j0))) for j0 in range(0, NPQ, nc)]


def _geo_cols(p):
    return (p.C, p.H, p.W, p.R, p.S, p.P, p.Q, p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dil_h, p.dil_w)


def _dy_op(p, j0):
    """Output (or output gradient) as group g's Kg x columns matrix, columns from j0: (n*K + g*Kg + m)*PQ + pq."""
    PQ = p.P * p.Q
    return _op((p.K // p.groups) * PQ, _ax(PQ), _split(j0, PQ, p.K * PQ))


def _x_op(p, transposed=False):
    """Input as group g's Cg x (N*H*W) matrix (the 1x1 stride-1 column matrix), or its transpose."""
    HW = p.H * p.W
    cols = _split(0, HW, p.C * HW)
    gs = (p.C // p.groups) * HW
    return _op(gs, cols, _ax(HW)) if transposed else _op(gs, _ax(HW), cols)


def _igemm_fprop(algo, p, x, w, b, has_b, y, relu, dt):
    ks = _k(dt)
    G, Kg, Cg = p.groups, p.K // p.groups, p.C // p.groups
    Kd = Cg * p.R * p.S
    w_op = _op(Kg * Kd, _ax(Kd), _ax(1))          # W_g: Kg x Kd
    epi = dict(bias=b, has_bias=has_b, bgs=Kg, relu=relu)
    if _plain_1x1(algo, p):
        _conv_gemm(ks, dt, G, Kg, p.N * p.P * p.Q, Cg, w, w_op, x, _x_op(p), y, _dy_op(p, 0), **epi)
        return
    nc, tiles = _tiles(p, dt)
    col = cuda.device_array(p.C * p.R * p.S * nc, dt)
    for j0, n in tiles:
        _launch(ks["im2col"], p.C * p.R * p.S * n, x, col, j0, n, *_geo_cols(p))
        _conv_gemm(ks, dt, G, Kg, n, Kd, w, w_op, col, _op(Kd * n, _ax(n), _ax(1)), y, _dy_op(p, j0), **epi)


def _igemm_dgrad(algo, p, dy, w, dx, dt):
    ks = _k(dt)
    G, Kg, Cg = p.groups, p.K // p.groups, p.C // p.groups
    Kd = Cg * p.R * p.S
    wt_op = _op(Kg * Kd, _ax(1), _ax(Kd))          # W_g^T: Kd x Kg
    if _plain_1x1(algo, p):
        _conv_gemm(ks, dt, G, Cg, p.N * p.P * p.Q, Kg, w, wt_op, dy, _dy_op(p, 0), dx, _x_op(p))
        return
    PQ = p.P * p.Q
    nc, tiles = _tiles(p, dt)
    dcol = cuda.device_array(p.C * p.R * p.S * nc, dt)
    for j0, n in tiles:
        # column gradient of the tile (W^T x dY), then each input element gathers from it
        _conv_gemm(ks, dt, G, Kd, n, Kg, w, wt_op, dy, _dy_op(p, j0), dcol, _op(Kd * n, _ax(n), _ax(1)))
        n_lo, n_hi = j0 // PQ, (j0 + n - 1) // PQ
        cnt = n_hi - n_lo + 1
        _launch(ks["col2im"], cnt * p.C * p.H * p.W, dcol, dx, j0, n, n_lo, cnt, *_geo_cols(p))


def _igemm_wgrad(algo, p, x, dy, dw, dt):
    ks = _k(dt)
    G, Kg, Cg = p.groups, p.K // p.groups, p.C // p.groups
    Kd = Cg * p.R * p.S
    dw_op = _op(Kg * Kd, _ax(Kd), _ax(1))          # dW_g: Kg x Kd
    NPQ = p.N * p.P * p.Q
    if NPQ == 0:   # no columns (N == 0): a zero-length reduction writes zeros
        _conv_gemm(ks, dt, G, Kg, Kd, 0, dy, _dy_op(p, 0), x, _x_op(p, True), dw, dw_op)
        return
    if _plain_1x1(algo, p):   # dW_g (Kg x Cg) = dY_g (Kg x NPQ) x X_g^T (NPQ x Cg)
        _conv_gemm(ks, dt, G, Kg, Cg, NPQ, dy, _dy_op(p, 0), x, _x_op(p, transposed=True), dw, dw_op)
        return
    nc, tiles = _tiles(p, dt)
    col = cuda.device_array(p.C * p.R * p.S * nc, dt)
    for t, (j0, n) in enumerate(tiles):
        # dW_g (+)= dY tile (Kg x n) x col tile^T (n x Kd); tiles in column order
        _launch(ks["im2col"], p.C * p.R * p.S * n, x, col, j0, n, *_geo_cols(p))
        _conv_gemm(ks, dt, G, Kg, Kd, n, dy, _dy_op(p, j0), col, _op(Kd * n, _ax(1), _ax(n)), dw, dw_op,
                   accumulate=t > 0)


def fprop(algo, p, x, w, b, y, relu=False):
    _check(algo, p)
    dt = _dtype_of(x, "input")
    call = _Call()
    dx_ = call.inp(x, "input", dt, p.N * p.C * p.H * p.W)
    dw_ = call.inp(w, "weight", dt, p.K * (p.C // p.groups) * p.R * p.S)
    db_, has_b = call.opt_inp(b, "bias", dt, p.K)
    dy_ = call.out(y, "output", dt, p.N * p.K * p.P * p.Q)
    if algo == "direct":
        _launch(_k(dt)["conv_fprop"], p.N * p.K * p.P * p.Q, dx_, dw_, db_, has_b, dy_, bool(relu), *_geom(p))
    else:
        _igemm_fprop(algo, p, dx_, dw_, db_, has_b, dy_, bool(relu), dt)
    call.finish()


def dgrad(algo, p, dy, w, dx):
    _check(algo, p)
    dt = _dtype_of(dy, "grad_output")
    call = _Call()
    d_dy = call.inp(dy, "grad_output", dt, p.N * p.K * p.P * p.Q)
    d_w = call.inp(w, "weight", dt, p.K * (p.C // p.groups) * p.R * p.S)
    d_dx = call.out(dx, "grad_input", dt, p.N * p.C * p.H * p.W)
    if algo == "direct":
        _launch(_k(dt)["conv_dgrad"], p.N * p.C * p.H * p.W, d_dy, d_w, d_dx, *_geom(p))
    else:
        _igemm_dgrad(algo, p, d_dy, d_w, d_dx, dt)
    call.finish()


def wgrad(algo, p, x, dy, dw_out):
    _check(algo, p)
    dt = _dtype_of(x, "input")
    call = _Call()
    d_x = call.inp(x, "input", dt, p.N * p.C * p.H * p.W)
    d_dy = call.inp(dy, "grad_output", dt, p.N * p.K * p.P * p.Q)
    nw = p.K * (p.C // p.groups) * p.R * p.S
    d_dw = call.out(dw_out, "grad_weight", dt, nw)
    if algo == "direct":
        _launch_red(_k(dt)["conv_wgrad"], nw, d_x, d_dy, d_dw, *_geom(p))
    else:
        _igemm_wgrad(algo, p, d_x, d_dy, d_dw, dt)
    call.finish()


# ------------------------------------------------------------ pool kernels
def _kind(kind):
    if kind not in (0, 1, 2):
        raise ValueError("pool kind must be 0 (max), 1 (min) or 2 (avg)")
    return int(kind)


def _pool_check(kind, planes, H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw):
    # the same rules as fastconv::pool_check (csrc/cpu/pool.cpp)
    why = ""
    if planes < 0:
        why = "planes must be >= 0"
    elif H <= 0 or W <= 0:
        why = "input plane must be non-empty"
    elif P <= 0 or Q <= 0:
        why = "output size must be positive"
    elif kh <= 0 or kw <= 0:
        why = "kernel_size must be positive"
    elif sh <= 0 or sw <= 0:
        why = "stride must be positive"
    elif dh <= 0 or dw <= 0:
        why = "dilation must be positive"
    elif ph < 0 or pw < 0:
        why = "padding must be >= 0"
    elif ph > kh // 2 or pw > kw // 2:
        why = "padding must be at most half the kernel size"
    elif kind == 2 and (dh != 1 or dw != 1):
        why = "avg pooling has no dilation"
    elif (P - 1) * sh - ph >= H or (Q - 1) * sw - pw >= W:
        why = "output size too large for the input"
    if why:
        raise ValueError("pool: " + why)


def _dims3(a, other, what):
    if len(a.shape) != 3 or len(other.shape) != 3:
        raise ValueError(f"{what}: arrays must be 3-D (planes, H, W)")
    if a.shape[0] != other.shape[0]:
        raise ValueError(f"{what}: input and output plane counts differ ({a.shape[0]} vs {other.shape[0]})")
    return int(a.shape[0]), int(a.shape[1]), int(a.shape[2]), int(other.shape[1]), int(other.shape[2])


def pool2d_forward(kind, input, output, indices, kh, kw, sh, sw, ph, pw, dh, dw, count_include_pad,
                   divisor_override):
    _need()
    kind = _kind(kind)
    planes, H, W, P, Q = _dims3(input, output, "pool")
    _pool_check(kind, planes, H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw)
    dt = _dtype_of(input, "input")
    _shape3(output, "output", (planes, P, Q))
    call = _Call()
    x = call.inp(input, "input", dt, planes * H * W)
    y = call.out(output, "output", dt, planes * P * Q)
    idx, has_idx = (_dummy(np.int64), False) if (indices is None or kind == 2) else (
        call.out(indices, "indices", np.int64, planes * P * Q), True)
    _launch(_k(dt)["pool_fwd"], planes * P * Q, kind, x, y, idx, has_idx, planes, H, W, P, Q, kh, kw, sh, sw,
            ph, pw, dh, dw, bool(count_include_pad), int(divisor_override))
    call.finish()


def pool2d_backward(kind, grad_output, input, indices, grad_input, kh, kw, sh, sw, ph, pw, dh, dw,
                    count_include_pad, divisor_override):
    _need()
    kind = _kind(kind)
    planes, H, W, P, Q = _dims3(grad_input, grad_output, "pool")
    _pool_check(kind, planes, H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw)
    dt = _dtype_of(grad_output, "grad_output")
    call = _Call()
    dy = call.inp(grad_output, "grad_output", dt, planes * P * Q)
    dx = call.out(grad_input, "grad_input", dt, planes * H * W)
    ks = _k(dt)
    geo = (planes, H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw, bool(count_include_pad), int(divisor_override))
    idx = _dummy(np.int64)
    if kind != 2:
        if indices is not None:
            idx = call.inp(indices, "indices", np.int64, planes * P * Q)
        else:
            # recompute the argmax with the forward's tie rule
            if input is None:
                raise ValueError("pool backward: needs the input or the indices")
            x = call.inp(input, "input", dt, planes * H * W)
            idx = cuda.device_array(planes * P * Q, np.int64)
            _launch(ks["pool_fwd"], planes * P * Q, kind, x, cuda.device_array(planes * P * Q, dt), idx, True, *geo)
    _launch(ks["pool_bwd"], planes * H * W, kind, dy, idx, dx, *geo)
    call.finish()


def _adaptive_dims(kind, a, other):
    if kind == 1:
        raise ValueError("adaptive pool: adaptive min pooling is not implemented")
    planes, H, W, P, Q = _dims3(a, other, "adaptive pool")
    if H <= 0 or W <= 0:
        raise ValueError("adaptive pool: input plane must be non-empty")
    if P <= 0 or Q <= 0:
        raise ValueError("adaptive pool: output size must be positive")
    return planes, H, W, P, Q


def adaptive_pool2d_forward(kind, input, output, indices):
    _need()
    kind = _kind(kind)
    planes, H, W, P, Q = _adaptive_dims(kind, input, output)
    dt = _dtype_of(input, "input")
    call = _Call()
    x = call.inp(input, "input", dt, planes * H * W)
    y = call.out(output, "output", dt, planes * P * Q)
    idx, has_idx = (_dummy(np.int64), False) if (indices is None or kind == 2) else (
        call.out(indices, "indices", np.int64, planes * P * Q), True)
    _launch(_k(dt)["apool_fwd"], planes * P * Q, kind, x, y, idx, has_idx, planes, H, W, P, Q)
    call.finish()


def adaptive_pool2d_backward(kind, grad_output, input, indices, grad_input):
    _need()
    kind = _kind(kind)
    planes, H, W, P, Q = _adaptive_dims(kind, grad_input, grad_output)
    dt = _dtype_of(grad_output, "grad_output")
    call = _Call()
    dy = call.inp(grad_output, "grad_output", dt, planes * P * Q)
    dx = call.out(grad_input, "grad_input", dt, planes * H * W)
    ks = _k(dt)
    idx = _dummy(np.int64)
    if kind != 2:
        if indices is not None:
            idx = call.inp(indices, "indices", np.int64, planes * P * Q)
        else:
            if input is None:
                raise ValueError("adaptive pool backward: needs the input or the indices")
            x = call.inp(input, "input", dt, planes * H * W)
            idx = cuda.device_array(planes * P * Q, np.int64)
            _launch(ks["apool_fwd"], planes * P * Q, kind, x, cuda.device_array(planes * P * Q, dt), idx, True,
                    planes, H, W, P, Q)
    _launch(ks["apool_bwd"], planes * H * W, kind, dy, idx, dx, planes, H, W, P, Q)
    call.finish()


# ----------------------------------------------------------- layer kernels
def _nonneg(*dims):
    if any(d < 0 for d in dims):
        raise ValueError("sizes must be >= 0")


def bn_stats(input, N, C, L, mean, var):
    _need()
    _nonneg(N, C, L)
    if N * L == 0:
        raise ValueError("batch_norm: no elements per channel")
    dt = _dtype_of(input, "input")
    call = _Call()
    x = call.inp(input, "input", dt, N * C * L)
    m = call.out(mean, "mean", np.float64, C)
    v = call.out(var, "var", np.float64, C)
    _launch_red(_k(dt)["bn_stats"], C, x, N, C, L, float(N * L), m, v)
    call.finish()


def bn_apply(input, N, C, L, mean, invstd, weight, bias, output):
    _need()
    _nonneg(N, C, L)
    dt = _dtype_of(input, "input")
    call = _Call()
    x = call.inp(input, "input", dt, N * C * L)
    m = call.inp(mean, "mean", np.float64, C)
    iv = call.inp(invstd, "invstd", np.float64, C)
    w, has_w = call.opt_inp(weight, "weight", dt, C)
    b, has_b = call.opt_inp(bias, "bias", dt, C)
    y = call.out(output, "output", dt, N * C * L)
    _launch(_k(dt)["bn_apply"], N * C * L, x, N, C, L, m, iv, w, has_w, b, has_b, y)
    call.finish()


def bn_backward(grad_output, input, N, C, L, mean, invstd, weight, training, grad_input, grad_weight,
                grad_bias):
    _need()
    _nonneg(N, C, L)
    dt = _dtype_of(input, "input")
    call = _Call()
    dy = call.inp(grad_output, "grad_output", dt, N * C * L)
    x = call.inp(input, "input", dt, N * C * L)
    m = call.inp(mean, "mean", np.float64, C)
    iv = call.inp(invstd, "invstd", np.float64, C)
    w, has_w = call.opt_inp(weight, "weight", dt, C)
    dx, has_dx = call.opt_out(grad_input, "grad_input", dt, N * C * L)
    dw, has_dw = call.opt_out(grad_weight, "grad_weight", dt, C)
    db, has_db = call.opt_out(grad_bias, "grad_bias", dt, C)
    if N * L == 0:
        raise ValueError("batch_norm_backward: no elements per channel")
    ks = _k(dt)
    sdy = cuda.device_array(max(C, 1), np.float64)
    sdyx = cuda.device_array(max(C, 1), np.float64)
    if training or has_dw or has_db:
        _launch_red(ks["bn_grad_sums"], C, dy, x, N, C, L, m, iv, sdy, sdyx, dw, has_dw, db, has_db)
    if has_dx:
        _launch(ks["bn_dx"], N * C * L, dy, x, N, C, L, float(N * L), m, iv, w, has_w, bool(training), sdy, sdyx,
                dx)
    call.finish()


def lrn(grad_output, input, N, C, L, size, alpha, beta, k, output):
    _need()
    _nonneg(N, C, L)
    if size < 1:
        raise ValueError("size must be >= 1")
    dt = _dtype_of(input, "input")
    call = _Call()
    x = call.inp(input, "input", dt, N * C * L)
    out = call.out(output, "output" if grad_output is None else "grad_input", dt, N * C * L)
    ks = _k(dt)
    if grad_output is None:
        _launch(ks["lrn_fwd"], N * C * L, x, N, C, L, int(size), float(alpha), float(beta), float(k), out)
    else:
        dy = call.inp(grad_output, "grad_output", dt, N * C * L)
        _launch(ks["lrn_bwd"], N * C * L, dy, x, N, C, L, int(size), float(alpha), float(beta), float(k), out)
    call.finish()


def activation(kind, grad_output, input, output):
    _need()
    if kind not in (0, 1, 2):
        raise ValueError("unknown activation kind")
    dt = _dtype_of(input, "input")
    n = int(input.size)
    call = _Call()
    x = call.inp(input, "input", dt, n)
    out = call.out(output, "output", dt, n)
    ks = _k(dt)
    if grad_output is None:
        _launch(ks["act_fwd"], n, int(kind), x, out, n)
    else:
        dy = call.inp(grad_output, "grad_output", dt, n)
        _launch(ks["act_bwd"], n, int(kind), dy, x, out, n)
    call.finish()


def softmax(log, outer, D, inner, grad_output, input, output):
    _need()
    _nonneg(outer, D, inner)
    dt = _dtype_of(input, "input")
    n = outer * D * inner
    call = _Call()
    x = call.inp(input, "input", dt, n)
    out = call.out(output, "output", dt, n)
    if n:
        ks = _k(dt)
        dy = None if grad_output is None else call.inp(grad_output, "grad_output", dt, n)
        if inner == 1:   # rows: a block per row
            if dy is None:
                _launch_red(ks["softmax_rows_fwd"], outer, bool(log), outer, D, x, out)
            else:
                _launch_red(ks["softmax_rows_bwd"], outer, bool(log), outer, D, dy, x, out)
        elif dy is None:  # columns (softmax over a middle axis): a thread per column
            _launch(ks["softmax_fwd"], outer * inner, bool(log), outer, D, inner, x, out)
        else:
            _launch(ks["softmax_bwd"], outer * inner, bool(log), outer, D, inner, dy, x, out)
    call.finish()


def cross_entropy(logits, target, N, C, ignore_index, eps, scale, row_loss, grad):
    _need()
    _nonneg(N, C)
    dt = _dtype_of(logits, "input")
    call = _Call()
    z = call.inp(logits, "input", dt, N * C)
    t = call.inp(target, "target", np.int64, N)
    # targets are checked on the host (N int64 values: a small copy for device arrays)
    th = np.asarray(t.copy_to_host() if _is_device(target) else target).reshape(-1)
    bad = (th != ignore_index) & ((th < 0) | (th >= C))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"target[{i}] = {int(th[i])} is outside [0, {C})")
    rl = call.out(row_loss, "row_loss", np.float64, N)
    g = call.out(grad, "grad", dt, N * C)
    _launch_red(_k(dt)["cross_entropy"], N, z, t, N, C, int(ignore_index), float(eps), float(scale), rl, g)
    call.finish()


def _splitmix64(z):
    m = (1 << 64) - 1
    z = (z + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def dropout(input, seed, offset, threshold, scale, output, mask):
    """Same counter-based generator as csrc/cpu/layers_act.cpp: the mask is bit-identical to the CPU's."""
    _need()
    for v, nm in ((seed, "seed"), (offset, "offset"), (threshold, "threshold")):
        if int(v) < 0 or int(v) >= 1 << 64:
            raise ValueError(f"{nm} must be an unsigned 64-bit integer, got {v}")
    dt = _dtype_of(input, "input")
    n = int(input.size)
    call = _Call()
    x = call.inp(input, "input", dt, n)
    y = call.out(output, "output", dt, n)
    mk = call.out(mask, "mask", np.uint8, n)
    key = _splitmix64(int(seed))
    k0, k1 = np.uint64(key & 0xFFFFFFFF), np.uint64(key >> 32)
    thr = np.uint64(min(int(threshold), 0xFFFFFFFF))
    _launch(_k(dt)["dropout_fwd"], n, x, n, k0, k1, np.uint64(int(offset)), thr, dt.type(scale), y, mk)
    call.finish()


def dropout_backward(grad_output, mask, scale, grad_input):
    _need()
    dt = _dtype_of(grad_output, "grad_output")
    n = int(grad_output.size)
    call = _Call()
    dy = call.inp(grad_output, "grad_output", dt, n)
    mk = call.inp(mask, "mask", np.uint8, n)
    dx = call.out(grad_input, "grad_input", dt, n)
    _launch(_k(dt)["dropout_bwd"], n, dy, mk, dt.type(scale), dx, n)
    call.finish()


def linear(input, weight, bias, M, I, O, output):
    """y (M x O) = x (M x I) @ w^T (w: O x I) + b, on the shared-memory tiled GEMM."""
    _need()
    _nonneg(M, I, O)
    dt = _dtype_of(input, "input")
    call = _Call()
    x = call.inp(input, "input", dt, M * I)
    w = call.inp(weight, "weight", dt, O * I)
    b, has_b = call.opt_inp(bias, "bias", dt, O)
    y = call.out(output, "output", dt, M * O)
    # B(k, j) = w[j, k]: the transpose through strides, nothing copied
    _gemm(_k(dt), x, (I, 1), w, (1, I), y, M, O, I, b, has_b, dt)
    call.finish()


def linear_backward(grad_output, input, weight, M, I, O, grad_input, grad_weight, grad_bias):
    _need()
    _nonneg(M, I, O)
    dt = _dtype_of(input, "input")
    call = _Call()
    dy = call.inp(grad_output, "grad_output", dt, M * O)
    x = call.inp(input, "input", dt, M * I)
    w = call.inp(weight, "weight", dt, O * I)
    dx, has_dx = call.opt_out(grad_input, "grad_input", dt, M * I)
    dw, has_dw = call.opt_out(grad_weight, "grad_weight", dt, O * I)
    db, has_db = call.opt_out(grad_bias, "grad_bias", dt, O)
    ks = _k(dt)
    if has_dx:
        _gemm(ks, dy, (O, 1), w, (I, 1), dx, M, I, O, dtype=dt)        # dy (M x O) . w (O x I)
    if has_dw:
        _gemm(ks, dy, (1, O), x, (I, 1), dw, O, I, M, dtype=dt)        # dy^T (O x M) . x (M x I)
    if has_db:
        _launch(ks["col_sums"], O, dy, M, O, db)
    call.finish()


_LAYER_KERNELS = {
    "pool2d_forward": pool2d_forward, "pool2d_backward": pool2d_backward,
    "adaptive_pool2d_forward": adaptive_pool2d_forward, "adaptive_pool2d_backward": adaptive_pool2d_backward,
    "bn_stats": bn_stats, "bn_apply": bn_apply, "bn_backward": bn_backward, "lrn": lrn,
    "activation": activation, "softmax": softmax, "cross_entropy": cross_entropy, "dropout": dropout,
    "dropout_backward": dropout_backward, "linear": linear, "linear_backward": linear_backward,
}


def layer_kernel(name):
    """Pooling / layer kernel ``name`` (see ``fastconv.backends.layer_kernel``); None where unavailable."""
    if not AVAILABLE:
        return None
    return _LAYER_KERNELS.get(name)
