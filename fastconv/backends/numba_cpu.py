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
* ``1x1`` and ``separable`` run the im2col path (with R == S == 1 the column
  panel is a plain strided copy of the input). Their ``supports`` rules mirror
  the compiled backend's so that the same tests and ``auto`` choices apply.

Determinism: every output element is summed by exactly one iteration in a
fixed order, so results are bit-identical for any Numba thread count.
``fastmath=False`` everywhere but the GEMM micro-kernel, which may contract
a*b + c into an FMA (``fastmath={"contract"}``); no reassociation anywhere.
"""
from __future__ import annotations

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

ALGOS = ("direct", "im2col", "1x1", "separable")


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


def supports(algo: str, p) -> str:
    if algo in ("direct", "im2col"):
        return ""
    if algo == "1x1":
        if p.R != 1 or p.S != 1:
            return f"the 1x1 algorithm needs a 1x1 kernel, got {p.R}x{p.S}"
        if p.pad_h or p.pad_w or getattr(p, "pad_bottom", 0) or getattr(p, "pad_right", 0):
            return "the 1x1 algorithm needs zero padding"
        return ""
    if algo == "separable":
        if p.groups != 1:
            return f"the separable algorithm needs groups == 1, got groups={p.groups}"
        if p.R != 1 and p.S != 1:
            return f"the separable algorithm needs a 1xn or nx1 kernel, got {p.R}x{p.S}"
        return ""
    if algo == "winograd":
        return "the numba backend has no winograd kernels (the compiled CPU backend has them)"
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
                dst[i] = v if v > zero else zero
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
    else:
        _gemm_fprop(x, _packed_filter(w, G), b, y.reshape(p.N, p.K, p.P * p.Q), bool(relu),
                    p.R, p.S, p.P, p.Q, sh, sw, pt, pl, dh, dw, G)


def dgrad(algo, p, dy, w, dx):
    _check(algo, p)
    sh, sw, pt, pl, dh, dw, G = _geom(p)
    if algo == "direct":
        _direct_dgrad(dy, w, dx, sh, sw, pt, pl, dh, dw, G)
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
