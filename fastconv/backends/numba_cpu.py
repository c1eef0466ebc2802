"""Numba CPU backend: the fallback where the compiled module is missing.

Same function table as :mod:`fastconv.backends.cpu`::

    supports(algo, problem) -> "" or the reason
    fprop(algo, p, x, w, b, y, relu)   dgrad(algo, p, dy, w, dx)   wgrad(algo, p, x, dy, dw)

The ops layer hands over C-contiguous arrays of the compute dtype (float32 or
float64); every kernel is generic over the two (Numba specializes per dtype).

Algorithms
----------
* ``direct``: loops straight from the definition. Fprop parallel over output
  rows (n, k, p); Dgrad a gather, parallel over input rows (n, c, h), each row
  summing its own contributions; Wgrad parallel over (k, c) filter slices.
* ``im2col``: one panel of ``NR`` output columns is gathered at a time (never
  the whole column matrix) into the packed layout the GEMM micro-kernel reads,
  and multiplied with the packed filter by the blocked GEMM below (not numpy's
  BLAS). Dgrad computes the column gradient for a bounded chunk of channels
  and folds it back with a gather (one input pixel per iteration: no races).
  Wgrad is a GEMM over N*P*Q: dy is packed once, each task gathers one
  column panel of the input per (image, P*Q chunk) and multiplies it with a
  block of filter rows.
* ``winograd``: F(2x2, 3x3) for 3x3 / stride 1 / dilation 1 / groups 1 / padding <= 2 (the
  compiled backend's rules): 16 GEMMs on the same micro-kernel between vectorized tile
  transforms. Fprop in blocks of NR tiles; Dgrad is the Fprop of dy with the filter turned
  180 degrees (K and C swapped, padding 2 - pad); Wgrad multiplies the transformed dy and
  input tiles in chunks of WINO_CHUNK tiles and turns dU back with G^T dU G.
* ``1x1`` and ``separable`` run the im2col path (with R == S == 1 the column
  panel is a plain strided copy of the input). Their ``supports`` rules mirror
  the compiled backend's so that the same tests and ``auto`` choices apply.

Determinism: every output element is summed by exactly one iteration in a
fixed order, so results are bit-identical for any Numba thread count.
``fastmath=False`` everywhere but the GEMM micro-kernel, which may contract
a*b + c into an FMA (``fastmath={"contract"}``); no reassociation anywhere.
"""
from __future__ import annotations

from ..problem import algorithm_rule
from ._names import LAYER_KERNELS

import numpy as np

try:
    import numba
    from numba import njit, prange

    # Numba's default threading layer is used (tbb, else omp, else workqueue). Its "omp" layer
    # shares libgomp with the compiled module and calls omp_set_num_threads() on its launches;
    # the compiled kernels keep their own count (parallel.h), so fastconv.set_num_threads()
    # stays in force. (The "workqueue" layer, used here before, costs ~90 us per parallel launch
    # against ~1.5 us for "omp": most of the time of a small convolution.)

    AVAILABLE = True
    IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised where numba is not installed
    numba = None
    AVAILABLE = False
    IMPORT_ERROR = repr(exc)

ALGOS = ("direct", "im2col", "1x1", "separable", "winograd")


def apply_thread_count():
    """Numba's thread count from fastconv.set_num_threads() (capped at NUMBA_NUM_THREADS)."""
    from . import requested_threads

    if AVAILABLE and requested_threads["n"] is not None:
        numba.set_num_threads(min(requested_threads["n"], numba.config.NUMBA_NUM_THREADS))


apply_thread_count()

# Micro-tile: MR filter rows x NR output columns. LLVM's loop vectorizer (numba
# leaves the SLP vectorizer off) handles the j loop of the micro-kernel; with
# its 8-step k unrolling, MR=8, NR=64 measured fastest among 4..8 x 32..128 on
# AVX-512 (MR=6 was best for the one-step kernel).
MR = 8
NR = 64
# Bounds on the temporary buffers (elements): Dgrad's column-gradient chunk and
# Wgrad's reduction chunk along P*Q (512 x NR: the gathered column panel, 128 KiB
# in float32, stays in L2 while every row panel of the task reads it).
DCOL_MAX_ELEMS = 4 << 20
PQ_CHUNK = 512
# Wgrad with fewer (group, column panel, row block) tasks than this splits its (image, P*Q chunk)
# pairs into slots summed at the end (a constant: the result must not depend on the thread count)
WGRAD_TASKS = 16
# Winograd Wgrad: tiles per chunk (the depth of its GEMMs)
WINO_CHUNK = 256


def supports(algo: str, p) -> str:
    if algo in ALGOS:
        return algorithm_rule(algo, p)
    return f"unknown algorithm {algo!r}; the numba backend has {ALGOS}"


def _check(algo, p):
    why = supports(algo, p)
    if why:
        raise ValueError(f"numba backend: algo={algo!r} cannot run this problem: {why}")
    if not AVAILABLE:
        raise RuntimeError(f"the numba backend is not available: {IMPORT_ERROR}")


if AVAILABLE:
    _PAR = dict(parallel=True, cache=True, fastmath=False)
    _SEQ = dict(cache=True, fastmath=False)

    @njit(**_SEQ)
    def _qrange(off, sw, W, Q):
        """Output columns q with 0 <= q*sw + off < W, as [q0, q1)."""
        q0 = 0 if off >= 0 else (-off + sw - 1) // sw
        if W - 1 - off < 0:
            return q0, q0
        q1 = min(Q, (W - 1 - off) // sw + 1)
        return q0, max(q0, q1)

    # Inner loops index views (slices) from 0: Numba then needs no negative-index wraparound
    # and LLVM vectorizes them (an indexed loop like `row[q] += w * x[q * sw + off]` stayed
    # scalar: ~10x slower on a 112-wide row).
    @njit(**_SEQ)
    def _axpy(dst, a, src, n):
        """dst[:n] += a * src[:n]"""
        for i in range(n):
            dst[i] += a * src[i]

    @njit(**_SEQ)
    def _fma_lanes(acc, u, v, n):
        """acc[:n] += u[:n] * v[:n]"""
        for i in range(n):
            acc[i] += u[i] * v[i]

    @njit(**_SEQ)
    def _bias_relu(dst, src, bias, relu, n):
        """dst[:n] = src[:n] + bias, then max(., 0) when relu"""
        zero = dst.dtype.type(0)
        if relu:
            for i in range(n):
                v = src[i] + bias
                dst[i] = zero if v < zero else v  # NaN stays NaN (as torch's relu and the other kernels)
        else:
            for i in range(n):
                dst[i] = src[i] + bias

    @njit(**_SEQ)
    def _copy(dst, src, n):
        """dst[:n] = src[:n]"""
        for i in range(n):
            dst[i] = src[i]

    @njit(**_SEQ)
    def _add(dst, src, n):
        """dst[:n] += src[:n]"""
        for i in range(n):
            dst[i] += src[i]

    @njit(**_SEQ)
    def _gather_columns(dst, plane, j0, nj, Q, sh, sw, hoff, woff):
        """dst[j] = plane[p*sh + hoff, q*sw + woff] for the output pixels j0 + j = p*Q + q,
        j < nj (zero where that reads padding); dst[nj:] = 0. One im2col row of a column panel,
        copied a row segment at a time."""
        H, W = plane.shape
        zero = dst.dtype.type(0)
        qa, qb = _qrange(woff, sw, W, Q)  # the output columns that read inside the row
        p = j0 // Q
        q = j0 - p * Q
        j = 0
        while j < nj:
            seg = min(Q - q, nj - j)
            h = p * sh + hoff
            d = dst[j:j + seg]
            if h < 0 or h >= H:
                for i in range(seg):
                    d[i] = zero
            else:
                lo = min(max(q, qa), q + seg)
                hi = max(min(q + seg, qb), lo)
                for i in range(lo - q):
                    d[i] = zero
                if hi > lo:
                    dd = d[lo - q:hi - q]
                    if sw == 1:  # a contiguous view: the copy vectorizes
                        _copy(dd, plane[h, lo + woff:hi + woff], hi - lo)
                    else:
                        _copy(dd, plane[h, lo * sw + woff:(hi - 1) * sw + woff + 1:sw], hi - lo)
                tail = d[hi - q:]
                for i in range(q + seg - hi):
                    tail[i] = zero
            j += seg
            p += 1
            q = 0
        rest = dst[nj:]
        for i in range(dst.shape[0] - nj):
            rest[i] = zero

    # ------------------------------------------------------------ direct
    @njit(**_PAR)
    def _direct_fprop(x, w, b, y, relu, sh, sw, pt, pl, dh, dw, G):
        N, C, H, W = x.shape
        K, Cg, R, S = w.shape
        P, Q = y.shape[2], y.shape[3]
        Kg = K // G
        zero = y.dtype.type(0)
        for t in prange(N * K * P):
            n = t // (K * P)
            k = (t // P) % K
            p = t - (t // P) * P
            g = k // Kg
            row = y[n, k, p]
            for q in range(Q):
                row[q] = zero
            for c in range(Cg):
                ci = g * Cg + c
                for r in range(R):
                    h = p * sh - pt + r * dh
                    if h < 0 or h >= H:
                        continue
                    xrow = x[n, ci, h]
                    for s in range(S):
                        wv = w[k, c, r, s]
                        off = s * dw - pl
                        q0, q1 = _qrange(off, sw, W, Q)
                        if sw == 1:
                            _axpy(row[q0:q1], wv, xrow[q0 + off:q1 + off], q1 - q0)
                        else:
                            _axpy(row[q0:q1], wv, xrow[q0 * sw + off:(q1 - 1) * sw + off + 1:sw], q1 - q0)
            bk = b[k]
            for q in range(Q):
                v = row[q] + bk
                if relu and v < zero:
                    v = zero
                row[q] = v

    @njit(**_PAR)
    def _direct_dgrad(dy, w, dx, sh, sw, pt, pl, dh, dw, G):
        N, C, H, W = dx.shape
        K, Cg, R, S = w.shape
        P, Q = dy.shape[2], dy.shape[3]
        Kg = K // G
        zero = dx.dtype.type(0)
        for t in prange(N * C * H):
            n = t // (C * H)
            c = (t // H) % C
            h = t - (t // H) * H
            g = c // Cg
            cl = c - g * Cg
            drow = dx[n, c, h]
            for i in range(W):
                drow[i] = zero
            for kk in range(Kg):
                k = g * Kg + kk
                for r in range(R):
                    ph = h + pt - r * dh
                    if ph < 0 or ph % sh != 0:
                        continue
                    p = ph // sh
                    if p >= P:
                        continue
                    dyrow = dy[n, k, p]
                    for s in range(S):
                        wv = w[k, cl, r, s]
                        off = s * dw - pl
                        q0, q1 = _qrange(off, sw, W, Q)
                        if sw == 1:
                            _axpy(drow[q0 + off:q1 + off], wv, dyrow[q0:q1], q1 - q0)
                        else:
                            _axpy(drow[q0 * sw + off:(q1 - 1) * sw + off + 1:sw], wv, dyrow[q0:q1], q1 - q0)

    @njit(**_PAR)
    def _direct_wgrad(x, dy, dwt, sh, sw, pt, pl, dh, dw, G):
        N, C, H, W = x.shape
        K, Cg, R, S = dwt.shape
        P, Q = dy.shape[2], dy.shape[3]
        Kg = K // G
        for t in prange(K * Cg):
            k = t // Cg
            c = t - k * Cg
            ci = (k // Kg) * Cg + c
            # one partial sum per output column q (a vectorizable update), added up in q order at
            # the end: the same order for any thread count
            lanes = np.empty(Q, dwt.dtype)
            for r in range(R):
                for s in range(S):
                    off = s * dw - pl
                    q0, q1 = _qrange(off, sw, W, Q)
                    nq = q1 - q0
                    for i in range(nq):
                        lanes[i] = 0
                    for n in range(N):
                        for p in range(P):
                            h = p * sh - pt + r * dh
                            if h < 0 or h >= H:
                                continue
                            xrow = x[n, ci, h]
                            if sw == 1:
                                _fma_lanes(lanes, dy[n, k, p, q0:q1], xrow[q0 + off:q1 + off], nq)
                            else:
                                _fma_lanes(lanes, dy[n, k, p, q0:q1],
                                           xrow[q0 * sw + off:(q1 - 1) * sw + off + 1:sw], nq)
                    acc = dwt.dtype.type(0)
                    for i in range(nq):
                        acc += lanes[i]
                    dwt[k, c, r, s] = acc

    # -------------------------------------------------------------- GEMM
    # The micro-kernel may contract a*b + c into one FMA (deterministic: the
    # same instructions whatever the thread count) and nothing else.
    _MICRO = dict(cache=True, fastmath={"contract"})

    @njit(**_MICRO)
    def _micro(Ap, ip, Bp, Kd, Ct, accumulate):
        """Ct[MR, NR] (+)= A panel ip (Kd x MR, packed) times Bp (Kd x NR, packed).

        The j loop runs over NR contiguous elements of Bp and Ct: that is the
        loop LLVM vectorizes. Numba keeps Ct in memory (no register tiles), so
        each pass over Ct costs a load and a store per vector; eight k steps
        are summed into one update of Ct (in a fixed order: two chains of
        four, then added), which cuts that traffic eightfold. The remaining
        k < 8 steps go one at a time.
        """
        if not accumulate:
            for i in range(MR):
                for j in range(NR):
                    Ct[i, j] = 0
        p = 0
        while p + 8 <= Kd:
            for i in range(MR):
                a0 = Ap[ip, p, i]
                a1 = Ap[ip, p + 1, i]
                a2 = Ap[ip, p + 2, i]
                a3 = Ap[ip, p + 3, i]
                a4 = Ap[ip, p + 4, i]
                a5 = Ap[ip, p + 5, i]
                a6 = Ap[ip, p + 6, i]
                a7 = Ap[ip, p + 7, i]
                for j in range(NR):
                    lo = ((a0 * Bp[p, j] + a1 * Bp[p + 1, j]) + a2 * Bp[p + 2, j]) + a3 * Bp[p + 3, j]
                    hi = ((a4 * Bp[p + 4, j] + a5 * Bp[p + 5, j]) + a6 * Bp[p + 6, j]) + a7 * Bp[p + 7, j]
                    Ct[i, j] += lo + hi
            p += 8
        while p < Kd:
            for i in range(MR):
                a = Ap[ip, p, i]
                for j in range(NR):
                    Ct[i, j] += a * Bp[p, j]
            p += 1

    @njit(**_SEQ)
    def _pack_rows(src, Ap):
        """Ap[ip, kd, i] = src[ip*MR + i, kd] (rows past src's end are zero)."""
        M, Kd = src.shape
        nMp = Ap.shape[0]
        for ip in range(nMp):
            for i in range(MR):
                m = ip * MR + i
                if m < M:
                    for kd in range(Kd):
                        Ap[ip, kd, i] = src[m, kd]
                else:
                    for kd in range(Kd):
                        Ap[ip, kd, i] = 0

    # ------------------------------------------------------------ im2col
    @njit(**_PAR)
    def _gemm_fprop(x, Ap, b, y3, relu, R, S, P, Q, sh, sw, pt, pl, dh, dw, G):
        """y3 (N, K, P*Q) = packed filter (G, nMp, Kd, MR) x column panels of x."""
        N, C, H, W = x.shape
        K = y3.shape[1]
        Cg = C // G
        Kg = K // G
        RS = R * S
        Kd = Cg * RS
        nMp = Ap.shape[1]
        PQ = P * Q
        nNp = (PQ + NR - 1) // NR
        zero = y3.dtype.type(0)
        for t in prange(N * G * nNp):
            n = t // (G * nNp)
            g = (t // nNp) % G
            jp = t - (t // nNp) * nNp
            j0 = jp * NR
            nj = min(NR, PQ - j0)
            Bp = np.empty((Kd, NR), y3.dtype)
            for kd in range(Kd):
                c = kd // RS
                r = (kd // S) % R
                s = kd - (kd // S) * S
                _gather_columns(Bp[kd], x[n, g * Cg + c], j0, nj, Q, sh, sw, r * dh - pt, s * dw - pl)
            Ct = np.empty((MR, NR), y3.dtype)
            Ag = Ap[g]
            for ip in range(nMp):
                _micro(Ag, ip, Bp, Kd, Ct, False)
                for i in range(MR):
                    kl = ip * MR + i
                    if kl >= Kg:
                        break
                    k = g * Kg + kl
                    _bias_relu(y3[n, k, j0:j0 + nj], Ct[i], b[k], relu, nj)

    @njit(**_PAR)
    def _gemm_dgrad(dy3, wt, dx, R, S, P, Q, sh, sw, pt, pl, dh, dw, G, chunk_c, n_split):
        """dx = col2im(W^T x dy), a bounded chunk of channels at a time.

        wt: (G, Cg*R*S, Kg), the transposed filter of each group. The GEMM
        tasks are (column panel, one of n_split row blocks): small images have
        a single column panel, and the row blocks keep every thread busy.
        """
        N, C, H, W = dx.shape
        K = dy3.shape[1]
        Cg = C // G
        Kg = K // G
        RS = R * S
        PQ = P * Q
        nNp = (PQ + NR - 1) // NR
        zero = dx.dtype.type(0)
        for n in range(N):
            for g in range(G):
                for c0 in range(0, Cg, chunk_c):
                    c1 = min(Cg, c0 + chunk_c)
                    rows = (c1 - c0) * RS
                    nMp = (rows + MR - 1) // MR
                    Ap = np.empty((nMp, Kg, MR), dx.dtype)
                    _pack_rows(wt[g, c0 * RS:c1 * RS], Ap)
                    dcol = np.empty((rows, PQ), dx.dtype)
                    nb = min(n_split, nMp)
                    for t in prange(nNp * nb):
                        jp = t // nb
                        blk = t - jp * nb
                        j0 = jp * NR
                        nj = min(NR, PQ - j0)
                        Bp = np.empty((Kg, NR), dx.dtype)
                        for kk in range(Kg):
                            src = dy3[n, g * Kg + kk]
                            _copy(Bp[kk], src[j0:j0 + nj], nj)
                            tail = Bp[kk, nj:]
                            for j in range(NR - nj):
                                tail[j] = zero
                        Ct = np.empty((MR, NR), dx.dtype)
                        for ip in range(blk * nMp // nb, (blk + 1) * nMp // nb):
                            _micro(Ap, ip, Bp, Kg, Ct, False)
                            for i in range(MR):
                                m = ip * MR + i
                                if m >= rows:
                                    break
                                _copy(dcol[m, j0:j0 + nj], Ct[i], nj)
                    for t in prange((c1 - c0) * H):
                        cl = t // H
                        h = t - cl * H
                        out = dx[n, g * Cg + c0 + cl, h]
                        for wi in range(W):
                            out[wi] = zero
                        for r in range(R):
                            ph = h + pt - r * dh
                            if ph < 0 or ph % sh != 0:
                                continue
                            p = ph // sh
                            if p >= P:
                                continue
                            for s in range(S):
                                drow = dcol[(cl * R + r) * S + s]
                                off = s * dw - pl
                                q0, q1 = _qrange(off, sw, W, Q)
                                src = drow[p * Q + q0:p * Q + q1]
                                if sw == 1:
                                    _add(out[q0 + off:q1 + off], src, q1 - q0)
                                else:
                                    _add(out[q0 * sw + off:(q1 - 1) * sw + off + 1:sw], src, q1 - q0)

    # ---------------------------------------------------------- winograd
    # F(2x2, 3x3): each 2x2 output tile is A^T [(G g G^T) . (B^T d B)] A for the 4x4 input
    # patch d; the 16 products over channels are 16 GEMMs (K x C) x (C x tiles) on the blocked
    # micro-kernel. Tiles go in blocks of NR; a block's transforms run along whole tile rows
    # with contiguous vector operations (the patch rows first, then their even/odd columns).
    @njit(**_SEQ)
    def _zero_cols(dst, u0, u1):
        """dst[:, u0:u1] = 0"""
        zero = dst.dtype.type(0)
        for r in range(dst.shape[0]):
            for u in range(u0, u1):
                dst[r, u] = zero

    @njit(**_SEQ)
    def _tile_run(tile, th, tw, left):
        """(n, ti, tj, cnt): image and tile row/column of tile number `tile` (th x tw tiles per
        image), and how many of the next `left` tiles stay on its tile row."""
        n = tile // (th * tw)
        r = tile - n * th * tw
        ti = r // tw
        tj = r - ti * tw
        return n, ti, tj, min(tw - tj, left)

    @njit(**_SEQ)
    def _wino_filter(w, Up):
        """Up[4a+b, ip, c, i] = (G w[k, c] G^T)[a, b] for k = ip*MR + i (zero past K)."""
        K, C = w.shape[0], w.shape[1]
        nMp = Up.shape[1]
        zero = Up.dtype.type(0)
        half = Up.dtype.type(0.5)
        t = np.empty((4, 3), Up.dtype)
        for ip in range(nMp):
            for i in range(MR):
                k = ip * MR + i
                for c in range(C):
                    if k >= K:
                        for xi in range(16):
                            Up[xi, ip, c, i] = zero
                        continue
                    g = w[k, c]
                    for col in range(3):  # G g: rows g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2
                        t[0, col] = g[0, col]
                        t[1, col] = (g[0, col] + g[1, col] + g[2, col]) * half
                        t[2, col] = (g[0, col] - g[1, col] + g[2, col]) * half
                        t[3, col] = g[2, col]
                    for a in range(4):  # (G g) G^T along the columns
                        Up[4 * a + 0, ip, c, i] = t[a, 0]
                        Up[4 * a + 1, ip, c, i] = (t[a, 0] + t[a, 1] + t[a, 2]) * half
                        Up[4 * a + 2, ip, c, i] = (t[a, 0] - t[a, 1] + t[a, 2]) * half
                        Up[4 * a + 3, ip, c, i] = t[a, 2]

    @njit(**_SEQ)
    def _wino_input_rows(plane, h0, w0, cnt, rb, v, Vc):
        """B^T d B of the cnt tiles whose patches start at (h0, w0 + 2j): Vc[xi, j] (Vc: 16 x cnt view).

        rb: 4 x (2 cnt + 2) scratch for the patch rows (zero outside the plane), v: the same for
        their vertical combinations."""
        H, W = plane.shape
        zero = rb.dtype.type(0)
        L = 2 * cnt + 2
        for a in range(4):
            h = h0 + a
            row = rb[a]
            if h < 0 or h >= H:
                for u in range(L):
                    row[u] = zero
                continue
            lo = min(max(0, -w0), L)
            hi = max(min(L, W - w0), lo)
            for u in range(lo):
                row[u] = zero
            _copy(row[lo:hi], plane[h, w0 + lo:w0 + hi], hi - lo)
            tail = row[hi:L]
            for u in range(L - hi):
                tail[u] = zero
        r0, r1, r2, r3 = rb[0], rb[1], rb[2], rb[3]
        v0, v1, v2, v3 = v[0], v[1], v[2], v[3]
        for u in range(L):  # B^T along the patch rows
            v0[u] = r0[u] - r2[u]
            v1[u] = r1[u] + r2[u]
            v2[u] = r2[u] - r1[u]
            v3[u] = r1[u] - r3[u]
        for a in range(4):  # B along the columns: tile j reads columns 2j .. 2j+3
            va = v[a]
            o0, o1, o2, o3 = Vc[4 * a], Vc[4 * a + 1], Vc[4 * a + 2], Vc[4 * a + 3]
            for j in range(cnt):
                e0 = va[2 * j]
                d0 = va[2 * j + 1]
                e1 = va[2 * j + 2]
                d1 = va[2 * j + 3]
                o0[j] = e0 - e1
                o1[j] = d0 + e1
                o2[j] = e1 - d0
                o3[j] = d0 - d1

    @njit(**_SEQ)
    def _wino_output_rows(Mi, j0, cnt, yp, oh, ow, bias, relu, s):
        """A^T m A of the cnt tiles j0.. of Mi (16 x NR) into yp rows oh, oh+1 from column ow
        (clipped to the plane), plus bias, then ReLU. s: 4 x cnt scratch."""
        P, Q = yp.shape
        zero = yp.dtype.type(0)
        for half_row in range(2):
            if oh + half_row >= P:
                break
            for b in range(4):  # A^T down each column b: rows 0+1+2, or 1-2-3
                m0, m1, m2, m3 = Mi[b, j0:j0 + cnt], Mi[4 + b, j0:j0 + cnt], Mi[8 + b, j0:j0 + cnt], Mi[12 + b, j0:j0 + cnt]
                sb = s[b]
                if half_row == 0:
                    for j in range(cnt):
                        sb[j] = m0[j] + m1[j] + m2[j]
                else:
                    for j in range(cnt):
                        sb[j] = m1[j] - m2[j] - m3[j]
            out = yp[oh + half_row]
            s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
            for j in range(cnt):
                q = ow + 2 * j
                v = s0[j] + s1[j] + s2[j] + bias
                if relu and v < zero:
                    v = zero
                out[q] = v
                if q + 1 < Q:
                    v = s1[j] - s2[j] - s3[j] + bias
                    if relu and v < zero:
                        v = zero
                    out[q + 1] = v

    @njit(**_PAR)
    def _wino_fprop(x, Up, b, y, relu, pt, pl):
        """y = conv(x, w) for a 3x3, stride-1 problem (any padding <= 2), Up from _wino_filter."""
        N, C, H, W = x.shape
        K, P, Q = y.shape[1], y.shape[2], y.shape[3]
        nMp = Up.shape[1]
        th = (P + 1) // 2
        tw = (Q + 1) // 2
        T = N * th * tw
        nTB = (T + NR - 1) // NR
        for tb in prange(nTB):
            t0 = tb * NR
            nt = min(NR, T - t0)
            V = np.empty((16, C, NR), y.dtype)
            rb = np.empty((4, 2 * NR + 2), y.dtype)
            v = np.empty((4, 2 * NR + 2), y.dtype)
            # the block's tiles, a run along one tile row at a time
            j = 0
            while j < nt:
                n, ti, tj, cnt = _tile_run(t0 + j, th, tw, nt - j)
                for c in range(C):
                    _wino_input_rows(x[n, c], 2 * ti - pt, 2 * tj - pl, cnt, rb, v, V[:, c, j:j + cnt])
                j += cnt
            for xi in range(16):
                _zero_cols(V[xi], nt, NR)
            M = np.empty((16, MR, NR), y.dtype)
            Mi = np.empty((16, NR), y.dtype)
            s = np.empty((4, NR), y.dtype)
            for ip in range(nMp):
                for xi in range(16):
                    _micro(Up[xi], ip, V[xi], C, M[xi], False)
                for i in range(MR):
                    k = ip * MR + i
                    if k >= K:
                        break
                    for xi in range(16):
                        _copy(Mi[xi], M[xi, i], nt)
                    j = 0
                    while j < nt:
                        n, ti, tj, cnt = _tile_run(t0 + j, th, tw, nt - j)
                        _wino_output_rows(Mi, j, cnt, y[n, k], 2 * ti, 2 * tj, b[k], relu, s)
                        j += cnt

    @njit(**_PAR)
    def _wino_wgrad_pack(x, dy, t0, nt, pt, pl, Av, Bd):
        """Wgrad operands of the tiles t0 .. t0+nt (one chunk, the GEMM depth):
        Av[xi, ip, u, i] = (B^T d B)[xi] of tile u and channel c = ip*MR + i (zero past C),
        Bd[xi, jp, u, j] = (A dy A^T)[xi] of tile u and output channel k = jp*NR + j (zero past K).
        Parallel over the C + K channels; tiles past nt are zero."""
        N, C, H, W = x.shape
        K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
        th = (P + 1) // 2
        tw = (Q + 1) // 2
        Lt = Av.shape[2]
        zero = Av.dtype.type(0)
        nCp = Av.shape[1]
        nKp = Bd.shape[1]
        for item in prange(nCp * MR + nKp * NR):
            if item < nCp * MR:
                c = item
                ip = c // MR
                i = c - ip * MR
                dst = Av[:, ip, :, i]
                if c >= C:
                    _zero_cols(dst, 0, Lt)
                    continue
                rb = np.empty((4, 2 * Lt + 2), Av.dtype)
                v = np.empty((4, 2 * Lt + 2), Av.dtype)
                j = 0
                while j < nt:
                    n, ti, tj, cnt = _tile_run(t0 + j, th, tw, nt - j)
                    _wino_input_rows(x[n, c], 2 * ti - pt, 2 * tj - pl, cnt, rb, v, dst[:, j:j + cnt])
                    j += cnt
                _zero_cols(dst, nt, Lt)
            else:
                k = item - nCp * MR
                jp = k // NR
                jj = k - jp * NR
                dst = Bd[:, jp, :, jj]
                if k >= K:
                    _zero_cols(dst, 0, Lt)
                    continue
                _zero_cols(dst, nt, Lt)
                for u in range(nt):
                    n, ti, tj, _ = _tile_run(t0 + u, th, tw, 1)
                    plane = dy[n, k]
                    oh = 2 * ti
                    ow = 2 * tj
                    y00 = plane[oh, ow]
                    y01 = plane[oh, ow + 1] if ow + 1 < Q else zero
                    y10 = plane[oh + 1, ow] if oh + 1 < P else zero
                    y11 = plane[oh + 1, ow + 1] if (oh + 1 < P and ow + 1 < Q) else zero
                    # A dy A^T with A = [[1, 0], [1, 1], [1, -1], [0, -1]]: rows, then columns
                    for a in range(4):
                        if a == 0:
                            a0, a1 = y00, y01
                        elif a == 1:
                            a0, a1 = y00 + y10, y01 + y11
                        elif a == 2:
                            a0, a1 = y00 - y10, y01 - y11
                        else:
                            a0, a1 = -y10, -y11
                        dst[4 * a, u] = a0
                        dst[4 * a + 1, u] = a0 + a1
                        dst[4 * a + 2, u] = a0 - a1
                        dst[4 * a + 3, u] = -a1

    @njit(**_PAR)
    def _wino_wgrad_gemm(Av, Bd, dU, accumulate):
        """dU[xi, ip, jp] (MR x NR) (+)= Av[xi] panel ip x Bd[xi, jp] over the chunk's tiles."""
        nCp = Av.shape[1]
        nKp = Bd.shape[1]
        Lt = Av.shape[2]
        for t in prange(16 * nCp):
            xi = t // nCp
            ip = t - xi * nCp
            for jp in range(nKp):
                _micro(Av[xi], ip, Bd[xi, jp], Lt, dU[xi, ip, jp], accumulate)

    @njit(**_SEQ)
    def _wino_wgrad_filter(dU, dw):
        """dw[k, c] = G^T dU[:, c, k] G (3x3 from 4x4) for G = [[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]]."""
        K, C = dw.shape[0], dw.shape[1]
        half = dw.dtype.type(0.5)
        t = np.empty((3, 4), dw.dtype)
        for k in range(K):
            jp = k // NR
            j = k - jp * NR
            for c in range(C):
                ip = c // MR
                i = c - ip * MR
                for b in range(4):  # G^T down each column b
                    u0 = dU[b, ip, jp, i, j]
                    u1 = dU[4 + b, ip, jp, i, j]
                    u2 = dU[8 + b, ip, jp, i, j]
                    u3 = dU[12 + b, ip, jp, i, j]
                    t[0, b] = u0 + (u1 + u2) * half
                    t[1, b] = (u1 - u2) * half
                    t[2, b] = (u1 + u2) * half + u3
                for a in range(3):  # then G along the rows
                    dw[k, c, a, 0] = t[a, 0] + (t[a, 1] + t[a, 2]) * half
                    dw[k, c, a, 1] = (t[a, 1] - t[a, 2]) * half
                    dw[k, c, a, 2] = (t[a, 1] + t[a, 2]) * half + t[a, 3]

    @njit(**_PAR)
    def _pack_dy(dy3, G, Lc, Apk):
        """Apk[n, c, g, ip, u, i] = dy[n, g*Kg + ip*MR + i, c*Lc + u]: Wgrad's A panels, packed once.

        Rows past Kg are zero; columns past the end of the last chunk are never read.
        """
        N, K, PQ = dy3.shape
        Kg = K // G
        nCh = Apk.shape[1]
        nMp = Apk.shape[3]
        zero = Apk.dtype.type(0)
        for t in prange(N * nCh * G * nMp):
            ip = t % nMp
            r = t // nMp
            g = r % G
            r = r // G
            c = r % nCh
            n = r // nCh
            pq0 = c * Lc
            L = min(Lc, PQ - pq0)
            dst = Apk[n, c, g, ip]
            for i in range(MR):
                kl = ip * MR + i
                if kl < Kg:
                    src = dy3[n, g * Kg + kl, pq0:pq0 + L]
                    for u in range(L):
                        dst[u, i] = src[u]
                else:
                    for u in range(L):
                        dst[u, i] = zero

    @njit(**_PAR)
    def _gemm_wgrad(x, Apk, part, R, S, P, Q, sh, sw, pt, pl, dh, dw, G, ib_size):
        """part[slot] (K, Cg*R*S) = sum over the slot's (image, P*Q chunk) pairs of dy x columns^T.

        Tasks are (group, NR-column panel, block of ib_size row panels, slot): each gathers
        its column panel of the input once per (n, chunk) and reuses it for every row panel
        of the block; dy comes pre-packed (Apk). The (n, chunk) pairs are split into
        part.shape[0] slots, a fixed function of the problem (not of the thread count), so
        problems with few column panels still have parallel tasks and the caller's sum over
        the slots gives the same bits for any thread count.
        """
        N, C, H, W = x.shape
        n_slots, K = part.shape[0], part.shape[1]
        Cg = C // G
        Kg = K // G
        RS = R * S
        Kd = Cg * RS
        PQ = P * Q
        nCh = Apk.shape[1]
        Lc = Apk.shape[4]
        nMp = Apk.shape[3]
        nNp = (Kd + NR - 1) // NR
        nIb = (nMp + ib_size - 1) // ib_size
        pairs = N * nCh
        zero = part.dtype.type(0)
        for ts in prange(G * nNp * nIb * n_slots):
            slot = ts % n_slots
            t = ts // n_slots
            g = t // (nNp * nIb)
            jp = (t // nIb) % nNp
            ib = t - (t // nIb) * nIb
            ip0 = ib * ib_size
            ni = min(nMp, ip0 + ib_size) - ip0
            j0 = jp * NR
            nj = min(NR, Kd - j0)
            # per column j of the panel: its channel and tap offsets
            cj = np.zeros(NR, np.int64)
            hj = np.zeros(NR, np.int64)
            wj = np.zeros(NR, np.int64)
            for j in range(nj):
                kd = j0 + j
                c = kd // RS
                r = (kd // S) % R
                s = kd - (kd // S) * S
                cj[j] = g * Cg + c
                hj[j] = r * dh - pt
                wj[j] = s * dw - pl
            Acc = np.empty((ni, MR, NR), part.dtype)
            Bp = np.empty((Lc, NR), part.dtype)
            first = True
            for pair in range(slot * pairs // n_slots, (slot + 1) * pairs // n_slots):
                n = pair // nCh
                ch = pair - n * nCh
                pq0 = ch * Lc
                L = min(Lc, PQ - pq0)
                p = pq0 // Q
                q = pq0 - p * Q
                for u in range(L):
                    for j in range(NR):
                        v = zero
                        if j < nj:
                            h = p * sh + hj[j]
                            wi = q * sw + wj[j]
                            if h >= 0 and h < H and wi >= 0 and wi < W:
                                v = x[n, cj[j], h, wi]
                        Bp[u, j] = v
                    q += 1
                    if q == Q:
                        q = 0
                        p += 1
                Ag = Apk[n, ch, g]
                for li in range(ni):
                    _micro(Ag, ip0 + li, Bp, L, Acc[li], not first)
                first = False
            for li in range(ni):
                for i in range(MR):
                    kl = (ip0 + li) * MR + i
                    if kl >= Kg:
                        break
                    _copy(part[slot, g * Kg + kl, j0:j0 + nj], Acc[li, i], nj)


def _row_block(n_row_panels, n_col_tasks):
    """Row panels per task: all of them (each gathered column panel reused
    the most) unless there are too few column tasks to keep the threads busy;
    at most 64 panels, which bounds the per-task accumulator."""
    threads = numba.get_num_threads()
    split = -(-2 * threads // max(1, n_col_tasks)) if n_col_tasks < 2 * threads else 1
    return int(max(1, min(64, -(-n_row_panels // split))))


def _wino_filters(w):
    """The 16 transformed filters as packed micro-kernel A operands: (16, nMp, C, MR)."""
    up = np.empty((16, -(-w.shape[0] // MR), w.shape[1], MR), w.dtype)
    _wino_filter(w, up)
    return up


def _wino_wgrad(p, x, dy, dw_out):
    """dw = G^T [sum over tiles (A dy A^T) x (B^T d B)^T] G, the tiles in chunks of WINO_CHUNK
    (the GEMM depth), each chunk's operands packed in parallel and then multiplied in parallel
    over (xi, channel panel); every dU element sums its chunks in order (any thread count gives
    the same bits)."""
    P, Q = p.P, p.Q
    T = p.N * ((P + 1) // 2) * ((Q + 1) // 2)
    Lt = min(WINO_CHUNK, T)
    nCp, nKp = -(-p.C // MR), -(-p.K // NR)
    av = np.empty((16, nCp, Lt, MR), x.dtype)
    bd = np.empty((16, nKp, Lt, NR), x.dtype)
    du = np.empty((16, nCp, nKp, MR, NR), x.dtype)
    for t0 in range(0, T, Lt):
        nt = min(Lt, T - t0)
        _wino_wgrad_pack(x, dy, t0, nt, p.pad_h, p.pad_w, av, bd)
        _wino_wgrad_gemm(av, bd, du, t0 > 0)
    _wino_wgrad_filter(du, dw_out)


def _geom(p):
    return (p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dil_h, p.dil_w, p.groups)


def _packed_filter(w, G):
    """(G, nMp, Kd, MR): each group's filter rows in MR-row panels, zero-padded."""
    K = w.shape[0]
    Kg, Kd = K // G, w[0].size
    nMp = -(-Kg // MR)
    a = np.zeros((G, nMp * MR, Kd), w.dtype)
    a[:, :Kg] = w.reshape(G, Kg, Kd)
    return np.ascontiguousarray(a.reshape(G, nMp, MR, Kd).transpose(0, 1, 3, 2))


def fprop(algo, p, x, w, b, y, relu=False):
    _check(algo, p)
    if b is None:
        b = np.zeros(p.K, y.dtype)
    sh, sw, pt, pl, dh, dw, G = _geom(p)
    if algo == "direct":
        _direct_fprop(x, w, b, y, bool(relu), sh, sw, pt, pl, dh, dw, G)
    elif algo == "winograd":
        _wino_fprop(x, _wino_filters(w), b, y, bool(relu), pt, pl)
    else:
        _gemm_fprop(x, _packed_filter(w, G), b, y.reshape(p.N, p.K, p.P * p.Q), bool(relu),
                    p.R, p.S, p.P, p.Q, sh, sw, pt, pl, dh, dw, G)


def dgrad(algo, p, dy, w, dx):
    _check(algo, p)
    sh, sw, pt, pl, dh, dw, G = _geom(p)
    if algo == "direct":
        _direct_dgrad(dy, w, dx, sh, sw, pt, pl, dh, dw, G)
        return
    if algo == "winograd":
        # dx = conv(dy, the filter turned 180 degrees with K and C swapped), padding 2 - pad
        wr = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        _wino_fprop(dy, _wino_filters(wr), np.zeros(p.C, dx.dtype), dx, False, 2 - pt, 2 - pl)
        return
    Kg, Cg = p.K // G, p.C // G
    wt = np.ascontiguousarray(w.reshape(G, Kg, Cg * p.R * p.S).transpose(0, 2, 1))
    per_channel = p.R * p.S * p.P * p.Q
    chunk_c = int(max(1, min(Cg, DCOL_MAX_ELEMS // max(per_channel, 1))))
    nNp = -(-(p.P * p.Q) // NR)
    n_split = -(-2 * numba.get_num_threads() // nNp) if nNp < 2 * numba.get_num_threads() else 1
    _gemm_dgrad(dy.reshape(p.N, p.K, p.P * p.Q), wt, dx, p.R, p.S, p.P, p.Q, sh, sw, pt, pl, dh, dw,
                G, chunk_c, int(n_split))


def wgrad(algo, p, x, dy, dw_out):
    _check(algo, p)
    sh, sw, pt, pl, dh, dw, G = _geom(p)
    if algo == "direct":
        _direct_wgrad(x, dy, dw_out, sh, sw, pt, pl, dh, dw, G)
        return
    if algo == "winograd":
        _wino_wgrad(p, x, dy, dw_out)
        return
    Kd = (p.C // G) * p.R * p.S
    Kg, PQ = p.K // G, p.P * p.Q
    nMp, nNp = -(-Kg // MR), -(-Kd // NR)
    Lc = min(PQ, PQ_CHUNK)
    nCh = -(-PQ // Lc)
    apk = np.empty((p.N, nCh, G, nMp, Lc, MR), dy.dtype)
    _pack_dy(dy.reshape(p.N, p.K, PQ), G, Lc, apk)
    tasks = G * nNp * -(-nMp // 64)
    n_slots = 1 if tasks >= WGRAD_TASKS else int(min(p.N * nCh, -(-WGRAD_TASKS // tasks)))
    part = dw_out.reshape(1, p.K, Kd) if n_slots == 1 else np.empty((n_slots, p.K, Kd), dy.dtype)
    _gemm_wgrad(x, apk, part, p.R, p.S, p.P, p.Q, sh, sw, pt, pl, dh, dw, G,
                _row_block(nMp, G * nNp * n_slots))
    if n_slots > 1:
        np.sum(part, axis=0, out=dw_out.reshape(p.K, Kd))


# ------------------------------------------------------ pooling / layer kernels
def layer_kernel(name):
    """Pooling / layer kernel ``name`` (see ``fastconv.backends.layer_kernel``), or None.

    The kernels live in :mod:`numba_layers`, imported on first use so that
    ``import fastconv`` does not load them where only convolutions run.
    """
    if not AVAILABLE or name not in LAYER_KERNELS:
        return None
    from . import numba_layers

    return numba_layers.KERNELS[name]
