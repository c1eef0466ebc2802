"""Independent float64 NumPy references for pooling (naive window loops, no fastconv).

Each output window is enumerated explicitly (row-major over the kernel taps),
vectorized only over the (N, C) planes. Backward references scatter each
window's gradient onto its members, the opposite direction from the kernels'
gathers.
"""
from __future__ import annotations

import numpy as np


def out_size(n, k, s, p, d, ceil_mode):
    """torch's pooling output size, written out independently of fastconv."""
    span = n + 2 * p - d * (k - 1) - 1
    if ceil_mode:
        o = -(-span // s) + 1  # ceil, also for a negative span (kernel larger than input)
        if (o - 1) * s >= n + p:
            o -= 1
    else:
        o = span // s + 1
    return o


def _pair(v):
    return (v, v) if np.isscalar(v) else tuple(v)


def _windows(H, W, k, s, p, d, ceil_mode):
    """Per output (oh, ow): list of in-image (ih, iw) taps in row-major window order, and the padded box."""
    kh, kw = k
    P = out_size(H, kh, s[0], p[0], d[0], ceil_mode)
    Q = out_size(W, kw, s[1], p[1], d[1], ceil_mode)
    out = {}
    for oh in range(P):
        for ow in range(Q):
            taps = []
            for r in range(kh):
                for c in range(kw):
                    ih = oh * s[0] - p[0] + r * d[0]
                    iw = ow * s[1] - p[1] + c * d[1]
                    if 0 <= ih < H and 0 <= iw < W:
                        taps.append((ih, iw))
            out[(oh, ow)] = taps
    return P, Q, out


def _first_inside(start, dil):
    while start < 0:
        start += dil
    return start


def maxmin_pool(x, kind, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """(values, indices) of max ("max") or min ("min") pooling, first extreme wins, NaN propagates."""
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    k = _pair(kernel_size)
    s = k if stride is None else _pair(stride)
    p, d = _pair(padding), _pair(dilation)
    P, Q, win = _windows(H, W, k, s, p, d, ceil_mode)
    y = np.empty((N, C, P, Q))
    idx = np.empty((N, C, P, Q), np.int64)
    sign = 1.0 if kind == "max" else -1.0
    for (oh, ow), taps in win.items():
        best = np.full((N, C), -np.inf)
        bi = np.full((N, C), _first_inside(oh * s[0] - p[0], d[0]) * W + _first_inside(ow * s[1] - p[1], d[1]),
                     np.int64)
        for ih, iw in taps:
            v = sign * x[:, :, ih, iw]
            m = (v > best) | np.isnan(v)
            best = np.where(m, v, best)
            bi = np.where(m, ih * W + iw, bi)
        y[:, :, oh, ow] = sign * best
        idx[:, :, oh, ow] = bi
    return y, idx


def maxmin_pool_backward(g, x_shape, idx):
    N, C, H, W = x_shape
    dx = np.zeros((N * C, H * W))
    gf = np.asarray(g, np.float64).reshape(N * C, g.shape[2] * g.shape[3])
    idf = idx.reshape(N * C, g.shape[2] * g.shape[3])
    for j in range(gf.shape[1]):
        np.add.at(dx, (np.arange(N * C), idf[:, j]), gf[:, j])
    return dx.reshape(x_shape)


def _avg_div(o, s, p, k, n, include_pad):
    start = o * s - p
    end = min(start + k, n + p)
    size = end - start
    start, end = max(start, 0), min(end, n)
    return size if include_pad else end - start


def avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
             divisor_override=None):
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    k = _pair(kernel_size)
    s = k if stride is None else _pair(stride)
    p = _pair(padding)
    P, Q, win = _windows(H, W, k, s, p, (1, 1), ceil_mode)
    y = np.zeros((N, C, P, Q))
    for (oh, ow), taps in win.items():
        acc = np.zeros((N, C))
        for ih, iw in taps:
            acc += x[:, :, ih, iw]
        if divisor_override:
            div = divisor_override
        else:
            div = (_avg_div(oh, s[0], p[0], k[0], H, count_include_pad)
                   * _avg_div(ow, s[1], p[1], k[1], W, count_include_pad))
        y[:, :, oh, ow] = acc / div
    return y


def avg_pool_backward(g, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                      divisor_override=None):
    N, C, H, W = x_shape
    g = np.asarray(g, np.float64)
    k = _pair(kernel_size)
    s = k if stride is None else _pair(stride)
    p = _pair(padding)
    P, Q, win = _windows(H, W, k, s, p, (1, 1), ceil_mode)
    dx = np.zeros(x_shape)
    for (oh, ow), taps in win.items():
        if divisor_override:
            div = divisor_override
        else:
            div = (_avg_div(oh, s[0], p[0], k[0], H, count_include_pad)
                   * _avg_div(ow, s[1], p[1], k[1], W, count_include_pad))
        for ih, iw in taps:
            dx[:, :, ih, iw] += g[:, :, oh, ow] / div
    return dx


def lp_pool(x, norm_type, kernel_size, stride=None, ceil_mode=False):
    """(kh*kw / |clipped window| * sum x^p) ** (1/p): torch's formula written out directly."""
    x = np.asarray(x, np.float64)
    k = _pair(kernel_size)
    N, C, H, W = x.shape
    s = k if stride is None else _pair(stride)
    P, Q, win = _windows(H, W, k, s, (0, 0), (1, 1), ceil_mode)
    y = np.zeros((N, C, P, Q))
    for (oh, ow), taps in win.items():
        acc = sum(x[:, :, ih, iw] ** norm_type for ih, iw in taps)
        y[:, :, oh, ow] = (acc * (k[0] * k[1]) / len(taps)) ** (1.0 / norm_type)
    return y


def _adaptive_bounds(i, n_in, n_out):
    return (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)


def adaptive_pool(x, output_size, kind):
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    P, Q = output_size
    y = np.zeros((N, C, P, Q))
    idx = np.zeros((N, C, P, Q), np.int64)
    for oh in range(P):
        h0, h1 = _adaptive_bounds(oh, H, P)
        for ow in range(Q):
            w0, w1 = _adaptive_bounds(ow, W, Q)
            if kind == "avg":
                y[:, :, oh, ow] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / ((h1 - h0) * (w1 - w0))
            else:
                best = np.full((N, C), -np.inf)
                bi = np.full((N, C), h0 * W + w0, np.int64)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        v = x[:, :, ih, iw]
                        m = (v > best) | np.isnan(v)
                        best = np.where(m, v, best)
                        bi = np.where(m, ih * W + iw, bi)
                y[:, :, oh, ow] = best
                idx[:, :, oh, ow] = bi
    return y, idx


def adaptive_avg_backward(g, x_shape):
    N, C, H, W = x_shape
    g = np.asarray(g, np.float64)
    P, Q = g.shape[2:]
    dx = np.zeros(x_shape)
    for oh in range(P):
        h0, h1 = _adaptive_bounds(oh, H, P)
        for ow in range(Q):
            w0, w1 = _adaptive_bounds(ow, W, Q)
            dx[:, :, h0:h1, w0:w1] += (g[:, :, oh, ow] / ((h1 - h0) * (w1 - w0)))[:, :, None, None]
    return dx
