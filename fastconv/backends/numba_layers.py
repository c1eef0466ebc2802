"""Numba CPU versions of the pooling and layer kernels (the "numba" backend's second table).

Every public function has the name, argument list and semantics of the
compiled module's function of the same name (``fastconv._cpu``; arguments in
``csrc/bindings/cpu_pool.cpp`` / ``cpu_layers.cpp``, semantics in
``csrc/cpu/pool.cpp`` / ``layers_*.cpp``), so ``fastconv.ops.pool`` and
``fastconv.ops.layers`` call either one the same way; they are reached through
``numba_cpu.layer_kernel(name)``. Like the bindings, the wrappers here check
dtype, contiguity and sizes before a kernel can touch a buffer (TypeError for
a dtype, ValueError for shapes), then call one ``@njit`` kernel.

Rules kept from the compiled kernels:

* pooling: max/min windows in row-major order keep the first extreme value
  (strictly better only); a NaN always wins, so the last NaN of a window is
  the result and its index. Indices are int64 flat positions ``h*W + w``.
  The initial index of a window is its first in-image tap (what is returned
  when every value is -inf). Avg uses torch's divisor (count_include_pad,
  ceil-mode windows clipped at the padded border, divisor_override).
* every backward is a gather or a per-plane scatter in a fixed order, and
  every output element is written by exactly one loop iteration: results do
  not depend on the Numba thread count.
* dropout draws with the compiled module's counter-based hash (splitmix64 of
  the seed as key, two rounds of a 32-bit mixer over the element counter), so
  the mask is bit-identical to ``fastconv._cpu.dropout`` for the same
  (seed, offset).
* linear runs on the blocked GEMM micro-kernel of :mod:`numba_cpu` (packed
  MR x K panels of A, K x NR panels of B), not on numpy's BLAS.

Sums (batch-norm moments, softmax denominators, LRN windows, avg pooling,
bias gradients) accumulate in float64 whatever the array dtype; the results
are then rounded to the array dtype. Integer arithmetic is int64 throughout.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .numba_cpu import MR, NR, _micro

_PAR = dict(parallel=True, cache=True, fastmath=False)
_SEQ = dict(cache=True, fastmath=False)

_MAX, _MIN, _AVG = 0, 1, 2


# ------------------------------------------------------------ argument checks
def _dtype_of(a):
    """The kernel dtype the bindings pick: float64 for float64 arrays, float32 otherwise."""
    return np.dtype(np.float64) if getattr(a, "dtype", None) == np.float64 else np.dtype(np.float32)


def _arr(a, name, dtype, *, shape=None, size=None, write=False):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name}: dtype {a.dtype} does not match the kernel's ({np.dtype(dtype)})")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous (shape {a.shape})")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
    if size is not None and a.size != size:
        raise ValueError(f"{name}: has {a.size} elements (shape {a.shape}), the kernel needs {size}")
    if write and not a.flags.writeable:
        raise ValueError(f"{name}: is read-only")
    return a


def _opt(a, name, dtype, size, write=False):
    return None if a is None else _arr(a, name, dtype, size=size, write=write)


def _nonneg(**dims):
    for k, v in dims.items():
        if int(v) < 0:
            raise ValueError(f"sizes must be >= 0, got {k}={v}")


def _kind(kind):
    if kind not in (0, 1, 2):
        raise ValueError(f"pool kind must be 0 (max), 1 (min) or 2 (avg), got {kind!r}")
    return int(kind)


def _idx_arr(indices, shape, write):
    if indices is None:
        return None
    if not isinstance(indices, np.ndarray) or indices.dtype != np.int64:
        raise TypeError("indices: must be an int64 array")
    if not indices.flags.c_contiguous:
        raise ValueError("indices: must be C-contiguous")
    if tuple(indices.shape) != tuple(shape):
        raise ValueError(f"indices: shape {indices.shape} does not match the output {tuple(shape)}")
    if write and not indices.flags.writeable:
        raise ValueError("indices: is read-only")
    return indices


def _pool_check(kind, planes, H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw):
    """The rules (and messages) of fastconv::pool_check."""
    if planes < 0:
        return "planes must be >= 0"
    if H <= 0 or W <= 0:
        return "input plane must be non-empty"
    if P <= 0 or Q <= 0:
        return "output size must be positive"
    if kh <= 0 or kw <= 0:
        return "kernel_size must be positive"
    if sh <= 0 or sw <= 0:
        return "stride must be positive"
    if dh <= 0 or dw <= 0:
        return "dilation must be positive"
    if ph < 0 or pw < 0:
        return "padding must be >= 0"
    if ph > kh // 2 or pw > kw // 2:
        return "padding must be at most half the kernel size"
    if kind == _AVG and (dh != 1 or dw != 1):
        return "avg pooling has no dilation"
    if (P - 1) * sh - ph >= H or (Q - 1) * sw - pw >= W:
        return "output size too large for the input"
    return ""


def _pool_problem(kind, big, small, kh, kw, sh, sw, ph, pw, dh, dw):
    """(planes, H, W, P, Q) of a (planes, H, W) / (planes, P, Q) pair, validated."""
    if not isinstance(big, np.ndarray) or not isinstance(small, np.ndarray) or big.ndim != 3 or small.ndim != 3:
        raise ValueError("pool: arrays must be 3-D (planes, H, W)")
    planes, H, W = big.shape
    _, P, Q = small.shape
    if small.shape[0] != planes:
        raise ValueError(f"pool: input and output plane counts differ ({planes} vs {small.shape[0]})")
    why = _pool_check(kind, planes, H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw)
    if why:
        raise ValueError("pool: " + why)
    return planes, H, W, P, Q


# ------------------------------------------------------------ pooling kernels
@njit(**_SEQ)
def _first_inside(start, dil):
    """First coordinate start + i*dil that is >= 0."""
    if start >= 0:
        return start
    return start + ((-start + dil - 1) // dil) * dil


@njit(**_SEQ)
def _taps_inside(start, dil, k, n):
    """Taps i in [i0, i1) of a window starting at `start` with 0 <= start + i*dil < n: loops visit
    only those (a kernel of 2^31 - 1 over a few pixels is valid, and visiting every tap took
    seconds per output)."""
    i0 = (_first_inside(start, dil) - start) // dil
    i1 = 0 if start > n - 1 else min(k, (n - 1 - start) // dil + 1)
    return i0, max(i0, i1)


@njit(**_SEQ)
def _avg_count(o, stride, pad, k, n, include_pad):
    """torch's avg divisor along one axis (the window clipped at the padded, then the real border)."""
    s = o * stride - pad
    e = min(s + k, n + pad)
    padded = e - s
    s = max(s, 0)
    e = min(e, n)
    return padded if include_pad else e - s


@njit(**_PAR)
def _pool_fwd(kind, x, y, idx, want_idx, kh, kw, sh, sw, ph, pw, dh, dw, cip, div):
    """One output row (plane, oh) per iteration; taps in row-major window order."""
    planes, H, W = x.shape
    P, Q = y.shape[1], y.shape[2]
    for t in prange(planes * P):
        pl = t // P
        oh = t - pl * P
        h0 = oh * sh - ph
        r0, r1 = _taps_inside(h0, dh, kh, H)
        if kind == 2:
            rc = _avg_count(oh, sh, ph, kh, H, cip)
            for ow in range(Q):
                w0 = ow * sw - pw
                s0, s1 = _taps_inside(w0, 1, kw, W)
                acc = 0.0
                for r in range(r0, r1):
                    ih = h0 + r
                    for s in range(s0, s1):
                        acc += x[pl, ih, w0 + s]
                d = div if div != 0 else rc * _avg_count(ow, sw, pw, kw, W, cip)
                y[pl, oh, ow] = acc / d
        else:
            fr = _first_inside(h0, dh)
            for ow in range(Q):
                w0 = ow * sw - pw
                best = -np.inf if kind == 0 else np.inf
                bi = fr * W + _first_inside(w0, dw)
                s0, s1 = _taps_inside(w0, dw, kw, W)
                for r in range(r0, r1):
                    ih = h0 + r * dh
                    for s in range(s0, s1):
                        iw = w0 + s * dw
                        v = x[pl, ih, iw]
                        # strictly better keeps the first extreme; a NaN always replaces
                        if (v > best if kind == 0 else v < best) or v != v:
                            best = v
                            bi = ih * W + iw
                y[pl, oh, ow] = best
                if want_idx:
                    idx[pl, oh, ow] = bi


@njit(**_PAR)
def _scatter_planes(dy2, idx2, dx2):
    """dx plane = 0, then every output adds its gradient at its index, in output order.

    One plane per iteration, so overlapping windows accumulate in a fixed
    order. Indices outside the plane are skipped (the ops layer rejects them
    before the call; the guard only keeps a bad call from writing out of bounds).
    """
    planes, HW = dx2.shape
    PQ = dy2.shape[1]
    for pl in prange(planes):
        for i in range(HW):
            dx2[pl, i] = 0
        for o in range(PQ):
            j = idx2[pl, o]
            if j >= 0 and j < HW:
                dx2[pl, j] += dy2[pl, o]


@njit(**_PAR)
def _avg_bwd(dy, dx, kh, kw, sh, sw, ph, pw, cip, div):
    """Gather: each input pixel sums g/divisor of the windows that contain it (oh, then ow increasing)."""
    planes, H, W = dx.shape
    P, Q = dy.shape[1], dy.shape[2]
    for t in prange(planes * H):
        pl = t // H
        ih = t - pl * H
        # windows oh with oh*sh - ph <= ih <= oh*sh - ph + kh - 1
        num = ih + ph - kh + 1
        lo = 0 if num <= 0 else (num + sh - 1) // sh
        hi = min((ih + ph) // sh, P - 1)
        for iw in range(W):
            numw = iw + pw - kw + 1
            qlo = 0 if numw <= 0 else (numw + sw - 1) // sw
            qhi = min((iw + pw) // sw, Q - 1)
            acc = 0.0
            for oh in range(lo, hi + 1):
                rc = _avg_count(oh, sh, ph, kh, H, cip)
                for ow in range(qlo, qhi + 1):
                    d = div if div != 0 else rc * _avg_count(ow, sw, pw, kw, W, cip)
                    acc += dy[pl, oh, ow] / d
            dx[pl, ih, iw] = acc


def _planes2(a):
    return a.reshape(a.shape[0], a.shape[1] * a.shape[2])


def pool2d_forward(kind, input, output, indices, kh, kw, sh, sw, ph, pw, dh, dw, count_include_pad,
                   divisor_override):
    """Pooling forward on (planes, H, W) -> (planes, P, Q); kind 0 max, 1 min, 2 avg."""
    k = _kind(kind)
    planes, H, W, P, Q = _pool_problem(k, input, output, kh, kw, sh, sw, ph, pw, dh, dw)
    dt = _dtype_of(input)
    _arr(input, "input", dt, shape=(planes, H, W))
    _arr(output, "output", dt, shape=(planes, P, Q), write=True)
    idx = None if k == _AVG else _idx_arr(indices, (planes, P, Q), True)
    if planes == 0:
        return
    want = idx is not None
    _pool_fwd(k, input, output, idx if want else np.empty((0, 0, 0), np.int64), want, int(kh), int(kw),
              int(sh), int(sw), int(ph), int(pw), int(dh), int(dw), bool(count_include_pad), int(divisor_override))


def pool2d_backward(kind, grad_output, input, indices, grad_input, kh, kw, sh, sw, ph, pw, dh, dw,
                    count_include_pad, divisor_override):
    """Pooling backward (gather, deterministic); max/min without indices recompute the argmax."""
    k = _kind(kind)
    planes, H, W, P, Q = _pool_problem(k, grad_input, grad_output, kh, kw, sh, sw, ph, pw, dh, dw)
    dt = _dtype_of(grad_output)
    _arr(grad_output, "grad_output", dt, shape=(planes, P, Q))
    _arr(grad_input, "grad_input", dt, shape=(planes, H, W), write=True)
    if planes == 0:
        return
    if k == _AVG:
        _avg_bwd(grad_output, grad_input, int(kh), int(kw), int(sh), int(sw), int(ph), int(pw),
                 bool(count_include_pad), int(divisor_override))
        return
    idx = _idx_arr(indices, (planes, P, Q), False)
    if idx is None:
        if input is None:
            raise ValueError("pool backward: needs the input or the indices")
        _arr(input, "input", dt, shape=(planes, H, W))
        # recompute the argmax with the forward's tie rule
        idx = np.empty((planes, P, Q), np.int64)
        _pool_fwd(k, input, np.empty((planes, P, Q), dt), idx, True, int(kh), int(kw), int(sh), int(sw),
                  int(ph), int(pw), int(dh), int(dw), True, 0)
    _scatter_planes(_planes2(grad_output), _planes2(idx), _planes2(grad_input))


# ----------------------------------------------------------- adaptive pooling
@njit(**_SEQ)
def _a_start(i, n_in, n_out):
    return (i * n_in) // n_out


@njit(**_SEQ)
def _a_end(i, n_in, n_out):
    return ((i + 1) * n_in + n_out - 1) // n_out


@njit(**_PAR)
def _adaptive_fwd(kind, x, y, idx, want_idx):
    """Window i covers [floor(i*in/out), ceil((i+1)*in/out)); max keeps the first maximum, NaN wins."""
    planes, H, W = x.shape
    P, Q = y.shape[1], y.shape[2]
    for t in prange(planes * P):
        pl = t // P
        oh = t - pl * P
        hs = _a_start(oh, H, P)
        he = _a_end(oh, H, P)
        for ow in range(Q):
            ws = _a_start(ow, W, Q)
            we = _a_end(ow, W, Q)
            if kind == 2:
                acc = 0.0
                for h in range(hs, he):
                    for w in range(ws, we):
                        acc += x[pl, h, w]
                y[pl, oh, ow] = acc / ((he - hs) * (we - ws))
            else:
                best = -np.inf
                bi = hs * W + ws
                for h in range(hs, he):
                    for w in range(ws, we):
                        v = x[pl, h, w]
                        if v > best or v != v:
                            best = v
                            bi = h * W + w
                y[pl, oh, ow] = best
                if want_idx:
                    idx[pl, oh, ow] = bi


@njit(**_SEQ)
def _adaptive_ranges(n_in, n_out, lo, hi):
    """lo[i], hi[i]: the first and last adaptive window containing input coordinate i."""
    for i in range(n_in):
        lo[i] = n_out
        hi[i] = -1
    for o in range(n_out):
        for i in range(_a_start(o, n_in, n_out), _a_end(o, n_in, n_out)):
            lo[i] = min(lo[i], o)
            hi[i] = max(hi[i], o)


@njit(**_PAR)
def _adaptive_avg_bwd(dy, dx):
    """Gather: each input pixel sums g / window area of the windows containing it, in (oh, ow) order."""
    planes, H, W = dx.shape
    P, Q = dy.shape[1], dy.shape[2]
    hlo = np.empty(H, np.int64)
    hhi = np.empty(H, np.int64)
    wlo = np.empty(W, np.int64)
    whi = np.empty(W, np.int64)
    _adaptive_ranges(H, P, hlo, hhi)
    _adaptive_ranges(W, Q, wlo, whi)
    for t in prange(planes * H):
        pl = t // H
        ih = t - pl * H
        for iw in range(W):
            acc = 0.0
            for oh in range(hlo[ih], hhi[ih] + 1):
                rc = _a_end(oh, H, P) - _a_start(oh, H, P)
                for ow in range(wlo[iw], whi[iw] + 1):
                    acc += dy[pl, oh, ow] / (rc * (_a_end(ow, W, Q) - _a_start(ow, W, Q)))
            dx[pl, ih, iw] = acc


def _adaptive_problem(kind, big, small):
    if not isinstance(big, np.ndarray) or not isinstance(small, np.ndarray) or big.ndim != 3 or small.ndim != 3:
        raise ValueError("adaptive pool: arrays must be 3-D")
    planes, H, W = big.shape
    _, P, Q = small.shape
    if small.shape[0] != planes:
        raise ValueError(f"adaptive pool: plane counts differ ({planes} vs {small.shape[0]})")
    if kind == _MIN:
        raise ValueError("adaptive pool: adaptive min pooling is not implemented")
    if H <= 0 or W <= 0:
        raise ValueError("adaptive pool: input plane must be non-empty")
    if P <= 0 or Q <= 0:
        raise ValueError("adaptive pool: output size must be positive")
    return planes, H, W, P, Q


def adaptive_pool2d_forward(kind, input, output, indices):
    k = _kind(kind)
    planes, H, W, P, Q = _adaptive_problem(k, input, output)
    dt = _dtype_of(input)
    _arr(input, "input", dt, shape=(planes, H, W))
    _arr(output, "output", dt, shape=(planes, P, Q), write=True)
    idx = None if k == _AVG else _idx_arr(indices, (planes, P, Q), True)
    if planes == 0:
        return
    want = idx is not None
    _adaptive_fwd(k, input, output, idx if want else np.empty((0, 0, 0), np.int64), want)


def adaptive_pool2d_backward(kind, grad_output, input, indices, grad_input):
    k = _kind(kind)
    planes, H, W, P, Q = _adaptive_problem(k, grad_input, grad_output)
    dt = _dtype_of(grad_output)
    _arr(grad_output, "grad_output", dt, shape=(planes, P, Q))
    _arr(grad_input, "grad_input", dt, shape=(planes, H, W), write=True)
    if planes == 0:
        return
    if k == _AVG:
        _adaptive_avg_bwd(grad_output, grad_input)
        return
    idx = _idx_arr(indices, (planes, P, Q), False)
    if idx is None:
        if input is None:
            raise ValueError("adaptive pool backward: needs the input or the indices")
        _arr(input, "input", dt, shape=(planes, H, W))
        idx = np.empty((planes, P, Q), np.int64)
        _adaptive_fwd(k, input, np.empty((planes, P, Q), dt), idx, True)
    _scatter_planes(_planes2(grad_output), _planes2(idx), _planes2(grad_input))


# ----------------------------------------------------------------- batch norm
@njit(**_SEQ)
def _biased_variance(s2m, d):
    """E[v^2] - E[v]^2: as the compiled kernel's biased_variance (rounding below 0 -> 0, NaN from
    NaN/inf data stays NaN, overflow of finite data -> inf)."""
    v = s2m - d * d
    if v >= 0.0:
        return v
    if v < 0.0:
        return 0.0
    return math.inf if abs(d) < math.inf else v


@njit(**_PAR)
def _bn_moments(x3, mean, var):
    """Per channel: shifted moments (shift = the channel's first element) summed in (n, l) order."""
    N, C, L = x3.shape
    M = N * L
    for c in prange(C):
        shift = np.float64(x3[0, c, 0])
        s1 = 0.0
        s2 = 0.0
        for n in range(N):
            for i in range(L):
                v = x3[n, c, i] - shift
                s1 += v
                s2 += v * v
        d = s1 / M
        mean[c] = shift + d
        var[c] = _biased_variance(s2 / M, d)


@njit(**_PAR)
def _bn_affine(x3, m, a, b, y3):
    """y = (x - m) * a + b per channel, in the array dtype (as the compiled kernel)."""
    N, C, L = x3.shape
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        mc, ac, bc = m[c], a[c], b[c]
        for i in range(L):
            y3[n, c, i] = (x3[n, c, i] - mc) * ac + bc


@njit(**_PAR)
def _bn_grad_sums(dy3, x3, mean, sdy, sdyx):
    N, C, L = x3.shape
    for c in prange(C):
        mc = mean[c]
        s1 = 0.0
        s2 = 0.0
        for n in range(N):
            for i in range(L):
                g = np.float64(dy3[n, c, i])
                s1 += g
                s2 += g * (x3[n, c, i] - mc)
        sdy[c] = s1
        sdyx[c] = s2


@njit(**_PAR)
def _bn_dx(dy3, x3, k1, k2, m, k3, dx3):
    """dx = k1 dy + k2 (x - m) + k3 per channel (k2 = k3 = 0 in eval mode)."""
    N, C, L = x3.shape
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        a, b, mc, d = k1[c], k2[c], m[c], k3[c]
        for i in range(L):
            dx3[n, c, i] = a * dy3[n, c, i] + b * (x3[n, c, i] - mc) + d


def bn_stats(x, N, C, L, mean, var):
    _nonneg(N=N, C=C, L=L)
    if N * L == 0:
        raise ValueError("batch_norm: no elements per channel")
    dt = _dtype_of(x)
    _arr(x, "input", dt, size=N * C * L)
    _arr(mean, "mean", np.float64, size=C, write=True)
    _arr(var, "var", np.float64, size=C, write=True)
    _bn_moments(x.reshape(N, C, L), mean.reshape(C), var.reshape(C))


def bn_apply(x, N, C, L, mean, invstd, w, b, y):
    _nonneg(N=N, C=C, L=L)
    dt = _dtype_of(x)
    _arr(x, "input", dt, size=N * C * L)
    _arr(mean, "mean", np.float64, size=C)
    _arr(invstd, "invstd", np.float64, size=C)
    _opt(w, "weight", dt, C)
    _opt(b, "bias", dt, C)
    _arr(y, "output", dt, size=N * C * L, write=True)
    if N * C * L == 0:
        return
    # per-channel constants rounded to the array dtype, as the compiled kernel
    a = (invstd.reshape(C) * (1.0 if w is None else w.reshape(C).astype(np.float64))).astype(dt)
    bb = np.zeros(C, dt) if b is None else b.reshape(C)
    _bn_affine(x.reshape(N, C, L), mean.reshape(C).astype(dt), a, bb, y.reshape(N, C, L))


def bn_backward(dy, x, N, C, L, mean, invstd, w, training, dx, dw, db):
    _nonneg(N=N, C=C, L=L)
    dt = _dtype_of(x)
    _arr(dy, "grad_output", dt, size=N * C * L)
    _arr(x, "input", dt, size=N * C * L)
    _arr(mean, "mean", np.float64, size=C)
    _arr(invstd, "invstd", np.float64, size=C)
    _opt(w, "weight", dt, C)
    _opt(dx, "grad_input", dt, N * C * L, write=True)
    _opt(dw, "grad_weight", dt, C, write=True)
    _opt(db, "grad_bias", dt, C, write=True)
    if N * L == 0:
        raise ValueError("batch_norm_backward: no elements per channel")
    mean, invstd = mean.reshape(C), invstd.reshape(C)
    x3, dy3 = x.reshape(N, C, L), dy.reshape(N, C, L)
    sdy = np.zeros(C)
    sdyx = np.zeros(C)
    if training or dw is not None or db is not None:
        _bn_grad_sums(dy3, x3, mean, sdy, sdyx)
    if dw is not None:
        dw.reshape(C)[...] = (sdyx * invstd).astype(dt)
    if db is not None:
        db.reshape(C)[...] = sdy.astype(dt)
    if dx is None:
        return
    g = np.ones(C) if w is None else w.reshape(C).astype(np.float64)
    a = g * invstd
    M = float(N * L)
    if training:
        # d/dx through the batch statistics: dx = a (dy - mean(dy) - xhat mean(dy xhat))
        k2 = -a * invstd * invstd * sdyx / M
        k3 = -a * sdy / M
    else:
        k2 = np.zeros(C)
        k3 = np.zeros(C)
    _bn_dx(dy3, x3, a.astype(dt), k2.astype(dt), mean.astype(dt), k3.astype(dt), dx.reshape(N, C, L))


# ------------------------------------------------------------------------ LRN
_LRN_TILE = 256  # spatial positions per task: the per-task scratch (C x tile) stays in L2


@njit(**_SEQ)
def _block_scans(v, w, P, S):
    """Prefix (P) and suffix (S) sums of the rows of v (C x ln) within blocks of w channels.

    Window sums are then taken from these (_window_sum) instead of a running sum, whose
    subtraction of the channel that leaves the window loses the small channels' digits to
    cancellation after a large one (the compiled kernels' block_scans, layers_norm.cpp).
    """
    C, ln = v.shape
    for b0 in range(0, C, w):
        b1 = min(C, b0 + w)
        for c in range(b0, b1):
            for i in range(ln):
                P[c, i] = v[c, i] if c == b0 else P[c - 1, i] + v[c, i]
        for c in range(b1 - 1, b0 - 1, -1):
            for i in range(ln):
                S[c, i] = v[c, i] if c == b1 - 1 else S[c + 1, i] + v[c, i]


@njit(**_SEQ)
def _window_sum(c, lo, hi, w, P, S, acc):
    """Sums over channels [c - lo, c + hi] (clipped) from _block_scans, into acc."""
    C, ln = P.shape
    a = max(0, c - lo)
    e = min(C - 1, c + hi)
    if a // w == e // w:
        if a % w == 0:
            for i in range(ln):
                acc[i] = P[e, i]
        else:
            for i in range(ln):
                acc[i] = S[a, i]
    else:
        for i in range(ln):
            acc[i] = S[a, i] + P[e, i]


@njit(**_PAR)
def _lrn_fwd(x3, size, alpha, beta, k, y3):
    """y = x * (k + alpha/size * sum_{c' in [c - size//2, c + (size-1)//2]} x_c'^2) ** -beta.

    Block prefix/suffix sums of squares over channels, per spatial tile, in float64.
    """
    N, C, L = x3.shape
    lo = size // 2
    hi = (size - 1) // 2
    w = min(size, C)
    coef = alpha / size
    TL = min(L, _LRN_TILE)
    nt = (L + TL - 1) // TL
    for it in prange(N * nt):
        n = it // nt
        l0 = (it - n * nt) * TL
        ln = min(TL, L - l0)
        sq = np.empty((C, ln))
        for c in range(C):
            for i in range(ln):
                v = np.float64(x3[n, c, l0 + i])
                sq[c, i] = v * v
        P = np.empty((C, ln))
        S = np.empty((C, ln))
        acc = np.empty(ln)
        _block_scans(sq, w, P, S)
        for c in range(C):
            _window_sum(c, lo, hi, w, P, S, acc)
            for i in range(ln):
                y3[n, c, l0 + i] = x3[n, c, l0 + i] * (k + coef * acc[i]) ** (-beta)


@njit(**_PAR)
def _lrn_bwd(dy3, x3, size, alpha, beta, k, dx3):
    """dx_j = dy_j b_j^-beta - 2 alpha beta/size * x_j * sum_{i: j in W(i)} dy_i x_i b_i^(-beta-1).

    j in W(i) = [i - lo, i + hi]  <=>  i in [j - hi, j + lo] (the mirrored window).
    """
    N, C, L = x3.shape
    lo = size // 2
    hi = (size - 1) // 2
    w = min(size, C)
    coef = alpha / size
    cgrad = 2.0 * alpha * beta / size
    TL = min(L, _LRN_TILE)
    nt = (L + TL - 1) // TL
    for it in prange(N * nt):
        n = it // nt
        l0 = (it - n * nt) * TL
        ln = min(TL, L - l0)
        acc = np.empty(ln)
        s = np.empty((C, ln))
        t = np.empty((C, ln))
        P = np.empty((C, ln))
        S = np.empty((C, ln))
        for c in range(C):
            for i in range(ln):
                v = np.float64(x3[n, c, l0 + i])
                t[c, i] = v * v
        _block_scans(t, w, P, S)
        for c in range(C):
            _window_sum(c, lo, hi, w, P, S, acc)
            for i in range(ln):
                b = k + coef * acc[i]
                sv = b ** (-beta)
                s[c, i] = sv
                t[c, i] = np.float64(dy3[n, c, l0 + i]) * x3[n, c, l0 + i] * sv / b
        _block_scans(t, w, P, S)
        for j in range(C):
            _window_sum(j, hi, lo, w, P, S, acc)
            for i in range(ln):
                dx3[n, j, l0 + i] = dy3[n, j, l0 + i] * s[j, i] - cgrad * x3[n, j, l0 + i] * acc[i]


def lrn(dy, x, N, C, L, size, alpha, beta, k, out):
    _nonneg(N=N, C=C, L=L)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    dt = _dtype_of(x)
    _arr(x, "input", dt, size=N * C * L)
    _opt(dy, "grad_output", dt, N * C * L)
    _arr(out, "output" if dy is None else "grad_input", dt, size=N * C * L, write=True)
    if N * C * L == 0:
        return
    x3 = x.reshape(N, C, L)
    if dy is None:
        _lrn_fwd(x3, int(size), float(alpha), float(beta), float(k), out.reshape(N, C, L))
    else:
        _lrn_bwd(dy.reshape(N, C, L), x3, int(size), float(alpha), float(beta), float(k), out.reshape(N, C, L))


# ---------------------------------------------------------------- activations
@njit(**_PAR)
def _act_fwd(kind, x, y):
    n = x.size
    if kind == 0:
        for i in prange(n):
            v = x[i]
            y[i] = 0 if v < 0 else v  # NaN stays NaN (as torch.relu)
    elif kind == 1:
        for i in prange(n):
            v = np.float64(x[i])
            e = math.exp(-abs(v))  # exp(-|x|) never overflows
            inv = 1.0 / (1.0 + e)
            y[i] = inv if v >= 0 else e * inv
    else:
        for i in prange(n):
            y[i] = math.tanh(np.float64(x[i]))


@njit(**_PAR)
def _act_bwd(kind, dy, y, dx):
    """Backward from the forward's output y (relu: the input works too; zero where y <= 0, so a NaN
    passes the gradient, as torch's threshold_backward)."""
    n = y.size
    if kind == 0:
        for i in prange(n):
            dx[i] = 0 if y[i] <= 0 else dy[i]
    elif kind == 1:
        for i in prange(n):
            dx[i] = dy[i] * y[i] * (1 - y[i])
    else:
        for i in prange(n):
            dx[i] = dy[i] * (1 - y[i] * y[i])


def activation(kind, dy, x, out):
    if kind not in (0, 1, 2):
        raise ValueError(f"unknown activation kind {kind!r} (0 relu, 1 sigmoid, 2 tanh)")
    dt = _dtype_of(x)
    n = x.size
    _arr(x, "input", dt, size=n)
    _opt(dy, "grad_output", dt, n)
    _arr(out, "output", dt, size=n, write=True)
    if n == 0:
        return
    if dy is None:
        _act_fwd(int(kind), x.reshape(n), out.reshape(n))
    else:
        _act_bwd(int(kind), dy.reshape(n), x.reshape(n), out.reshape(n))


# -------------------------------------------------------------------- softmax
_SOFTMAX_TILE = 256  # columns per task when the reduced axis is strided (inner > 1)


@njit(**_PAR)
def _softmax_fwd(log, x3, y3):
    """Softmax / log_softmax over axis 1 of (outer, D, inner); max-shifted, float64 sums."""
    outer, D, inner = x3.shape
    TL = min(inner, _SOFTMAX_TILE)
    nt = (inner + TL - 1) // TL
    for it in prange(outer * nt):
        o = it // nt
        j0 = (it - o * nt) * TL
        ln = min(TL, inner - j0)
        mx = np.empty(ln)
        acc = np.zeros(ln)
        for j in range(ln):
            mx[j] = -np.inf
        for d in range(D):
            for j in range(ln):
                v = x3[o, d, j0 + j]
                if v > mx[j]:
                    mx[j] = v
        for d in range(D):
            for j in range(ln):
                acc[j] += math.exp(x3[o, d, j0 + j] - mx[j])
        if log:
            for j in range(ln):  # (x - m) - log(s): m + log(s) would absorb log(s) into a large m
                acc[j] = math.log(acc[j])
            for d in range(D):
                for j in range(ln):
                    y3[o, d, j0 + j] = (x3[o, d, j0 + j] - mx[j]) - acc[j]
        else:
            # normalize from the float64 exponentials, not from their rounded copies in y
            for d in range(D):
                for j in range(ln):
                    y3[o, d, j0 + j] = math.exp(x3[o, d, j0 + j] - mx[j]) / acc[j]


@njit(**_PAR)
def _softmax_bwd(log, dy3, y3, dx3):
    """softmax: dx = y (g - sum g y); log_softmax: dx = g - exp(y) sum g."""
    outer, D, inner = y3.shape
    TL = min(inner, _SOFTMAX_TILE)
    nt = (inner + TL - 1) // TL
    for it in prange(outer * nt):
        o = it // nt
        j0 = (it - o * nt) * TL
        ln = min(TL, inner - j0)
        acc = np.zeros(ln)
        for d in range(D):
            for j in range(ln):
                g = np.float64(dy3[o, d, j0 + j])
                acc[j] += g if log else g * y3[o, d, j0 + j]
        for d in range(D):
            for j in range(ln):
                g = np.float64(dy3[o, d, j0 + j])
                yv = np.float64(y3[o, d, j0 + j])
                dx3[o, d, j0 + j] = g - math.exp(yv) * acc[j] if log else yv * (g - acc[j])


def softmax(log, outer, D, inner, dy, x, out):
    _nonneg(outer=outer, D=D, inner=inner)
    n = outer * D * inner
    dt = _dtype_of(x)
    _arr(x, "input", dt, size=n)
    _opt(dy, "grad_output", dt, n)
    _arr(out, "output", dt, size=n, write=True)
    if n == 0:
        return
    shp = (outer, D, inner)
    if dy is None:
        _softmax_fwd(bool(log), x.reshape(shp), out.reshape(shp))
    else:
        _softmax_bwd(bool(log), dy.reshape(shp), x.reshape(shp), out.reshape(shp))


# -------------------------------------------------------------- cross entropy
@njit(**_PAR)
def _ce(z, t, ignore_index, eps, scale, rows, g):
    """Per row: loss = -(1-eps) logp_t - eps/C sum_c logp_c; g = scale (softmax - target distribution)."""
    N, C = z.shape
    for i in prange(N):
        ti = t[i]
        if ti == ignore_index:
            for c in range(C):
                g[i, c] = 0
            rows[i] = 0.0
            continue
        m = -np.inf
        for c in range(C):
            if z[i, c] > m:
                m = z[i, c]
        s = 0.0
        zsum = 0.0
        for c in range(C):
            s += math.exp(z[i, c] - m)
            zsum += np.float64(z[i, c]) - m  # sum_c (z_c - m)
        ls = math.log(s)  # log p_c = (z_c - m) - log(s); m + log(s) is not formed (absorption)
        loss = -(1.0 - eps) * ((np.float64(z[i, ti]) - m) - ls)
        if eps != 0.0:
            loss -= eps / C * (zsum - C * ls)
        rows[i] = loss
        a = scale / s
        b = scale * eps / C
        for c in range(C):
            g[i, c] = math.exp(z[i, c] - m) * a - b
        g[i, ti] = g[i, ti] - scale * (1.0 - eps)


def cross_entropy(logits, target, N, C, ignore_index, eps, scale, row_loss, grad):
    _nonneg(N=N, C=C)
    dt = _dtype_of(logits)
    _arr(logits, "input", dt, size=N * C)
    _arr(target, "target", np.int64, size=N)
    t = target.reshape(N)
    bad = (t != ignore_index) & ((t < 0) | (t >= C))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"target[{i}] = {int(t[i])} is outside [0, {C})")
    _arr(row_loss, "row_loss", np.float64, size=N, write=True)
    _arr(grad, "grad", dt, size=N * C, write=True)
    if N == 0:
        return
    _ce(logits.reshape(N, C), t, int(ignore_index), float(eps), float(scale), row_loss.reshape(N),
        grad.reshape(N, C))


# -------------------------------------------------------------------- dropout
# The compiled generator (csrc/cpu/layers_act.cpp): key = splitmix64(seed),
# element i of a call draws h = mix(mix(lo32(g) ^ k0) ^ hi32(g) * 0x9E3779B1 ^ k1)
# with g = offset + i (mod 2^64), and is kept when h >= threshold. 32-bit
# products are formed in uint64 and masked back to 32 bits (both factors are
# below 2^32, so nothing is lost before the mask).
_U32 = np.uint64(0xFFFFFFFF)
_U16 = np.uint64(16)
_U15 = np.uint64(15)
_U32S = np.uint64(32)
_C1 = np.uint64(0x7FEB352D)
_C2 = np.uint64(0x846CA68B)
_GOLD = np.uint64(0x9E3779B1)


def _splitmix64(z):
    m = 0xFFFFFFFFFFFFFFFF
    z = (z + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


@njit(**_SEQ)
def _mix32(h):
    h ^= h >> _U16
    h = (h * _C1) & _U32
    h ^= h >> _U15
    h = (h * _C2) & _U32
    h ^= h >> _U16
    return h


@njit(**_PAR)
def _dropout(x, k0, k1, start, thr, scale, y, mask):
    zero = y.dtype.type(0)
    for i in prange(x.size):
        g = start + np.uint64(i)  # wraps mod 2^64, as the C++ counter
        h = _mix32((g & _U32) ^ k0)
        h = _mix32(h ^ (((g >> _U32S) * _GOLD) & _U32) ^ k1)
        keep = h >= thr
        mask[i] = 1 if keep else 0
        # multiply rather than select, so a dropped NaN/inf stays NaN (as torch)
        y[i] = x[i] * (scale if keep else zero)


@njit(**_PAR)
def _dropout_bwd(dy, mask, scale, dx):
    zero = dx.dtype.type(0)
    for i in prange(dy.size):
        dx[i] = dy[i] * (scale if mask[i] != 0 else zero)


def dropout(x, seed, offset, threshold, scale, y, mask):
    dt = _dtype_of(x)
    n = x.size
    _arr(x, "input", dt, size=n)
    _arr(y, "output", dt, size=n, write=True)
    _arr(mask, "mask", np.uint8, size=n, write=True)
    for v, name in ((seed, "seed"), (offset, "offset"), (threshold, "threshold")):
        if int(v) < 0 or int(v) >= 2 ** 64:
            raise ValueError(f"{name} must be an unsigned 64-bit integer, got {v}")
    if n == 0:
        return
    key = _splitmix64(int(seed))
    thr = min(int(threshold), 0xFFFFFFFF)
    _dropout(x.reshape(n), np.uint64(key & 0xFFFFFFFF), np.uint64(key >> 32), np.uint64(int(offset)),
             np.uint64(thr), dt.type(scale), y.reshape(n), mask.reshape(n))


def dropout_backward(dy, mask, scale, dx):
    dt = _dtype_of(dy)
    n = dy.size
    _arr(dy, "grad_output", dt, size=n)
    _arr(mask, "mask", np.uint8, size=n)
    _arr(dx, "grad_input", dt, size=n, write=True)
    if n == 0:
        return
    _dropout_bwd(dy.reshape(n), mask.reshape(n), dt.type(scale), dx.reshape(n))


# --------------------------------------------------------------------- linear
_GEMM_MB = 16  # MR-row panels of A per task: each packed B panel is reused this many times


@njit(**_PAR)
def _pack_a(A, trans, M, K, Ap):
    """Ap[ip, k, i] = A(ip*MR + i, k), zero past row M; A(m, k) = A[k, m] when trans."""
    nMp = Ap.shape[0]
    for ip in prange(nMp):
        for i in range(MR):
            m = ip * MR + i
            if m >= M:
                for k in range(K):
                    Ap[ip, k, i] = 0
            elif trans:
                for k in range(K):
                    Ap[ip, k, i] = A[k, m]
            else:
                for k in range(K):
                    Ap[ip, k, i] = A[m, k]


@njit(**_PAR)
def _gemm_packed(Ap, B, trans_b, M, N, K, out, bias, has_bias):
    """out (M x N) = A (packed by _pack_a) x B (+ bias[j]); B(k, j) = B[j, k] when trans_b.

    Tasks are (NR-column panel, block of MR-row panels): each packs its K x NR
    panel of B once, and the micro-kernel sums over all of K in order, so each
    output element is computed by one task in a fixed order.
    """
    nMp = Ap.shape[0]
    nNp = (N + NR - 1) // NR
    nIb = (nMp + _GEMM_MB - 1) // _GEMM_MB
    zero = out.dtype.type(0)
    for t in prange(nNp * nIb):
        jp = t // nIb
        ib = t - jp * nIb
        j0 = jp * NR
        nj = min(NR, N - j0)
        Bp = np.empty((K, NR), out.dtype)
        if trans_b:
            for j in range(NR):
                if j < nj:
                    for k in range(K):
                        Bp[k, j] = B[j0 + j, k]
                else:
                    for k in range(K):
                        Bp[k, j] = zero
        else:
            for k in range(K):
                for j in range(NR):
                    Bp[k, j] = B[k, j0 + j] if j < nj else zero
        Ct = np.empty((MR, NR), out.dtype)
        for ip in range(ib * _GEMM_MB, min(nMp, (ib + 1) * _GEMM_MB)):
            _micro(Ap, ip, Bp, K, Ct, False)
            for i in range(MR):
                m = ip * MR + i
                if m >= M:
                    break
                for j in range(nj):
                    v = Ct[i, j]
                    if has_bias:
                        v += bias[j0 + j]
                    out[m, j0 + j] = v


def _gemm(A, trans_a, B, trans_b, M, N, K, out, bias=None):
    """out = op(A) @ op(B) (+ bias) on the Numba blocked GEMM; A, B, out C-contiguous 2-D."""
    nMp = -(-M // MR)
    Ap = np.empty((nMp, K, MR), out.dtype)
    _pack_a(A, trans_a, M, K, Ap)
    has_bias = bias is not None
    _gemm_packed(Ap, B, trans_b, M, N, K, out, bias if has_bias else np.zeros(1, out.dtype), has_bias)


@njit(**_PAR)
def _col_sums(dy2, db):
    """db[j] = sum_m dy[m, j] in row order (float64), column blocks spread over threads."""
    M, O = dy2.shape
    nb = (O + 255) // 256
    for blk in prange(nb):
        j0 = blk * 256
        ln = min(256, O - j0)
        acc = np.zeros(ln)
        for m in range(M):
            for j in range(ln):
                acc[j] += dy2[m, j0 + j]
        for j in range(ln):
            db[j0 + j] = acc[j]


def linear(x, w, b, M, I, O, y):
    _nonneg(M=M, I=I, O=O)
    dt = _dtype_of(x)
    _arr(x, "input", dt, size=M * I)
    _arr(w, "weight", dt, size=O * I)
    _opt(b, "bias", dt, O)
    _arr(y, "output", dt, size=M * O, write=True)
    if M == 0 or O == 0:
        return
    # A = x (M x I), B(k, j) = w[j, k]: w^T by reading w transposed while packing
    _gemm(x.reshape(M, I), False, w.reshape(O, I), True, M, O, I, y.reshape(M, O),
          None if b is None else b.reshape(O))


def linear_backward(dy, x, w, M, I, O, dx, dw, db):
    _nonneg(M=M, I=I, O=O)
    dt = _dtype_of(x)
    _arr(dy, "grad_output", dt, size=M * O)
    _arr(x, "input", dt, size=M * I)
    _arr(w, "weight", dt, size=O * I)
    _opt(dx, "grad_input", dt, M * I, write=True)
    _opt(dw, "grad_weight", dt, O * I, write=True)
    _opt(db, "grad_bias", dt, O, write=True)
    dy2, x2, w2 = dy.reshape(M, O), x.reshape(M, I), w.reshape(O, I)
    if dx is not None and M > 0 and I > 0:
        if O == 0:
            dx[...] = 0
        else:  # dx (M x I) = dy (M x O) . w (O x I)
            _gemm(dy2, False, w2, False, M, I, O, dx.reshape(M, I))
    if dw is not None and O > 0 and I > 0:
        if M == 0:
            dw[...] = 0
        else:  # dw (O x I) = dy^T (O x M) . x (M x I)
            _gemm(dy2, True, x2, False, O, I, M, dw.reshape(O, I))
    if db is not None and O > 0:
        acc = np.empty(O)
        _col_sums(dy2, acc)
        db.reshape(O)[...] = acc.astype(dt)


KERNELS = {f.__name__: f for f in (
    pool2d_forward, pool2d_backward, adaptive_pool2d_forward, adaptive_pool2d_backward,
    bn_stats, bn_apply, bn_backward, lrn, activation, softmax, cross_entropy,
    dropout, dropout_backward, linear, linear_backward)}
