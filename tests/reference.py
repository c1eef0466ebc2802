"""Independent float64 reference for 2-D convolution (does NOT import fastconv).

Conventions follow torch.nn.functional.conv2d: input (N, C, H, W), weight
(K, C/groups, R, S), output (N, K, P, Q).  Padding is always given here as
explicit zero padding (top, bottom, left, right); `resolve_padding` turns the
user-facing forms (int, (ph, pw), 'valid', 'same') into that, using the
TensorFlow rule for 'same' (which also covers stride > 1 and even kernels).

Forward, data gradient and weight gradient are written independently of each
other: forward gathers one strided window per kernel tap and contracts it with
that tap's weights; dgrad scatters each tap's contribution back into a padded
buffer; wgrad contracts each tap's window with the upstream gradient over
(N, P, Q).
"""
from __future__ import annotations

import numpy as np


def _pair(v, name="value"):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must have 2 elements, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def resolve_padding(padding, in_hw, kernel_hw, stride=1, dilation=1):
    """(top, bottom, left, right) for the padding forms of the API.

    'same' is TF-style: out = ceil(in / stride);
    total = max((out - 1) * stride + dil * (k - 1) + 1 - in, 0);
    the smaller half goes top/left, the extra row/column bottom/right.
    """
    H, W = in_hw
    R, S = kernel_hw
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            pads = []
            for n, k, s, d in ((H, R, sh, dh), (W, S, sw, dw)):
                out = -(-n // s)
                total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        raise ValueError(f"unknown padding {padding!r}")
    ph, pw = _pair(padding)
    return (ph, ph, pw, pw)


def out_size(n, pad_lo, pad_hi, k, stride, dil):
    return (n + pad_lo + pad_hi - dil * (k - 1) - 1) // stride + 1


def output_shape(input_shape, weight_shape, stride=1, pads=(0, 0, 0, 0), dilation=1):
    N, C, H, W = input_shape
    K, _, R, S = weight_shape
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    t, b, l, r = pads
    return (N, K, out_size(H, t, b, R, sh, dh), out_size(W, l, r, S, sw, dw))


def _tap_slices(r, s, P, Q, sh, sw, dh, dw):
    rows = slice(r * dh, r * dh + (P - 1) * sh + 1, sh)
    cols = slice(s * dw, s * dw + (Q - 1) * sw + 1, sw)
    return rows, cols


def conv2d(x, w, bias=None, stride=1, pads=(0, 0, 0, 0), dilation=1, groups=1):
    """Forward convolution in float64.  pads = (top, bottom, left, right)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    G = groups
    assert C == Cg * G and K % G == 0
    Kg = K // G
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    t, b, l, rr = pads
    _, _, P, Q = output_shape(x.shape, w.shape, (sh, sw), pads, (dh, dw))
    assert P > 0 and Q > 0, "kernel does not fit"
    xp = np.zeros((N, C, H + t + b, W + l + rr))
    xp[:, :, t:t + H, l:l + W] = x
    xg = xp.reshape(N, G, Cg, H + t + b, W + l + rr)
    wg = w.reshape(G, Kg, Cg, R, S)
    out = np.zeros((N, G, Kg, P, Q))
    for r in range(R):
        for s in range(S):
            rows, cols = _tap_slices(r, s, P, Q, sh, sw, dh, dw)
            win = xg[:, :, :, rows, cols]  # (N, G, Cg, P, Q)
            assert win.shape[-2:] == (P, Q)
            # out[n,g,k,p,q] += sum_c w[g,k,c] * win[n,g,c,p,q]
            out += np.matmul(wg[None, :, :, :, r, s], win.reshape(N, G, Cg, P * Q)).reshape(N, G, Kg, P, Q)
    out = out.reshape(N, K, P, Q)
    if bias is not None:
        out += np.asarray(bias, dtype=np.float64).reshape(1, K, 1, 1)
    return out


def conv2d_input(input_shape, w, g, stride=1, pads=(0, 0, 0, 0), dilation=1, groups=1):
    """Gradient w.r.t. the input: scatter every tap back into a padded buffer."""
    w = np.asarray(w, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    N, C, H, W = input_shape
    K, Cg, R, S = w.shape
    G = groups
    Kg = K // G
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    t, b, l, rr = pads
    _, _, P, Q = g.shape
    assert g.shape == output_shape(input_shape, w.shape, (sh, sw), pads, (dh, dw))
    dxp = np.zeros((N, G, Cg, H + t + b, W + l + rr))
    gg = g.reshape(N, G, Kg, P, Q)
    wg = w.reshape(G, Kg, Cg, R, S)
    for r in range(R):
        for s in range(S):
            rows, cols = _tap_slices(r, s, P, Q, sh, sw, dh, dw)
            dxp[:, :, :, rows, cols] += np.einsum("ngkpq,gkc->ngcpq", gg, wg[:, :, :, r, s], optimize=True)
    return dxp[:, :, :, t:t + H, l:l + W].reshape(N, C, H, W).copy()


def conv2d_weight(x, weight_shape, g, stride=1, pads=(0, 0, 0, 0), dilation=1, groups=1):
    """Gradient w.r.t. the weight: per tap, contract the window with g over N, P, Q."""
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    N, C, H, W = x.shape
    K, Cg, R, S = weight_shape
    G = groups
    Kg = K // G
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    t, b, l, rr = pads
    _, _, P, Q = g.shape
    assert g.shape == output_shape(x.shape, weight_shape, (sh, sw), pads, (dh, dw))
    xp = np.zeros((N, C, H + t + b, W + l + rr))
    xp[:, :, t:t + H, l:l + W] = x
    xg = xp.reshape(N, G, Cg, H + t + b, W + l + rr)
    gg = g.reshape(N, G, Kg, P, Q)
    dw_ = np.zeros((G, Kg, Cg, R, S))
    for r in range(R):
        for s in range(S):
            rows, cols = _tap_slices(r, s, P, Q, sh, sw, dh, dw)
            dw_[:, :, :, r, s] = np.einsum("ngcpq,ngkpq->gkc", xg[:, :, :, rows, cols], gg, optimize=True)
    return dw_.reshape(K, Cg, R, S)


def naive_conv2d(x, w, bias=None, stride=1, pads=(0, 0, 0, 0), dilation=1, groups=1):
    """Fully naive loops straight from the definition (tiny shapes only)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    Kg = K // groups
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    t, b, l, rr = pads
    P = (H + t + b - dh * (R - 1) - 1) // sh + 1
    Q = (W + l + rr - dw * (S - 1) - 1) // sw + 1
    out = np.zeros((N, K, P, Q))
    for n in range(N):
        for k in range(K):
            grp = k // Kg
            for p in range(P):
                for q in range(Q):
                    acc = 0.0 if bias is None else float(bias[k])
                    for c in range(Cg):
                        for r in range(R):
                            for s in range(S):
                                h = p * sh - t + r * dh
                                ww = q * sw - l + s * dw
                                if 0 <= h < H and 0 <= ww < W:
                                    acc += x[n, grp * Cg + c, h, ww] * w[k, c, r, s]
                    out[n, k, p, q] = acc
    return out


def rel_err(out, ref):
    """max|out - ref| / max(max|ref|, 1e-30)."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if ref.size == 0:
        return 0.0
    return float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), 1e-30))
