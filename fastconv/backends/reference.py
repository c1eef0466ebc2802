"""Plain-NumPy convolution: slow, simple, and always available.

It computes in the arrays' own dtype with einsum over the (r, s) taps; the
algorithm argument is ignored (every algorithm is the same sum here).
"""
from __future__ import annotations

import numpy as np


def _padded(x, p):
    return np.pad(x, ((0, 0), (0, 0), (p.pad_h, p.pad_bottom), (p.pad_w, p.pad_right)))


def _tap(xp, p, r, s):
    """View of the padded input read by tap (r, s) for every output pixel: (N, C, P, Q)."""
    h0, w0 = r * p.dil_h, s * p.dil_w
    return xp[:, :, h0:h0 + (p.P - 1) * p.stride_h + 1:p.stride_h,
              w0:w0 + (p.Q - 1) * p.stride_w + 1:p.stride_w]


def supports(algo, problem) -> str:
    return ""


def fprop(algo, p, x, w, b, y, relu=False):
    G, Cg, Kg = p.groups, p.C // p.groups, p.K // p.groups
    xp = _padded(x, p)
    acc = np.zeros((p.N, G, Kg, p.P, p.Q), dtype=x.dtype)
    wg = w.reshape(G, Kg, Cg, p.R, p.S)
    for r in range(p.R):
        for s in range(p.S):
            t = _tap(xp, p, r, s).reshape(p.N, G, Cg, p.P, p.Q)
            acc += np.einsum("ngcpq,gkc->ngkpq", t, wg[:, :, :, r, s])
    out = acc.reshape(p.N, p.K, p.P, p.Q)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    if relu:
        np.maximum(out, 0, out=out)
    y[...] = out


def dgrad(algo, p, dy, w, dx):
    G, Cg, Kg = p.groups, p.C // p.groups, p.K // p.groups
    dxp = np.zeros((p.N, p.C, p.H + p.pad_h + p.pad_bottom, p.W + p.pad_w + p.pad_right), dx.dtype)
    dyg = dy.reshape(p.N, G, Kg, p.P, p.Q)
    wg = w.reshape(G, Kg, Cg, p.R, p.S)
    for r in range(p.R):
        for s in range(p.S):
            contrib = np.einsum("ngkpq,gkc->ngcpq", dyg, wg[:, :, :, r, s]).reshape(p.N, p.C, p.P, p.Q)
            _tap(dxp, p, r, s)[...] += contrib
    dx[...] = dxp[:, :, p.pad_h:p.pad_h + p.H, p.pad_w:p.pad_w + p.W]


def wgrad(algo, p, x, dy, dw):
    G, Cg, Kg = p.groups, p.C // p.groups, p.K // p.groups
    xp = _padded(x, p)
    dyg = dy.reshape(p.N, G, Kg, p.P, p.Q)
    out = np.zeros((G, Kg, Cg, p.R, p.S), dtype=dw.dtype)
    for r in range(p.R):
        for s in range(p.S):
            t = _tap(xp, p, r, s).reshape(p.N, G, Cg, p.P, p.Q)
            out[:, :, :, r, s] = np.einsum("ngkpq,ngcpq->gkc", dyg, t)
    dw[...] = out.reshape(dw.shape)
