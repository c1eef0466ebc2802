"""Independent float64 references for the layer kernels (plain NumPy, loops where
that keeps them obviously right). Nothing here calls fastconv."""
from __future__ import annotations

import numpy as np


def f64(a):
    return np.asarray(a, dtype=np.float64)


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _bshape(x):
    return (1, -1) + (1,) * (x.ndim - 2)


def batch_norm_train(x, w=None, b=None, eps=1e-5):
    """(y, mean, biased var) with batch statistics."""
    x = f64(x)
    ax = _axes(x)
    mean = x.mean(axis=ax)
    var = ((x - mean.reshape(_bshape(x))) ** 2).mean(axis=ax)
    return batch_norm_eval(x, mean, var, w, b, eps), mean, var


def batch_norm_eval(x, mean, var, w=None, b=None, eps=1e-5):
    x = f64(x)
    s = _bshape(x)
    y = (x - f64(mean).reshape(s)) / np.sqrt(f64(var).reshape(s) + eps)
    if w is not None:
        y = y * f64(w).reshape(s)
    if b is not None:
        y = y + f64(b).reshape(s)
    return y


def batch_norm_train_backward(dy, x, w, eps=1e-5):
    """Closed form of d(batch_norm_train)/dx, dw, db."""
    x, dy = f64(x), f64(dy)
    ax = _axes(x)
    s = _bshape(x)
    M = x.size // x.shape[1]
    mean = x.mean(axis=ax)
    var = ((x - mean.reshape(s)) ** 2).mean(axis=ax)
    invstd = 1 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(s)) * invstd.reshape(s)
    g = np.ones(x.shape[1]) if w is None else f64(w)
    db = dy.sum(axis=ax)
    dw = (dy * xhat).sum(axis=ax)
    dx = (g * invstd).reshape(s) / M * (M * dy - db.reshape(s) - xhat * dw.reshape(s))
    return dx, dw, db


def lrn(x, size, alpha=1e-4, beta=0.75, k=1.0):
    x = f64(x)
    C = x.shape[1]
    y = np.empty_like(x)
    for c in range(C):
        lo, hi = max(0, c - size // 2), min(C - 1, c + (size - 1) // 2)
        s = (x[:, lo:hi + 1] ** 2).sum(axis=1)
        y[:, c] = x[:, c] / (k + alpha / size * s) ** beta
    return y


def relu(x):
    return np.maximum(f64(x), 0)


def sigmoid(x):
    x = f64(x)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))


def tanh(x):
    return np.tanh(f64(x))


def softmax(x, dim):
    x = f64(x)
    m = x.max(axis=dim, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=dim, keepdims=True)


def log_softmax(x, dim):
    x = f64(x)
    m = x.max(axis=dim, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=dim, keepdims=True))


def cross_entropy_rows(z, t, eps=0.0, ignore_index=-100):
    """Per-row losses (0 where ignored) and the mask of counted rows."""
    z = f64(z)
    N, C = z.shape
    rows = np.zeros(N)
    keep = np.asarray(t) != ignore_index
    for i in range(N):
        if not keep[i]:
            continue
        lp = log_softmax(z[i], 0)
        q = np.full(C, eps / C)
        q[t[i]] += 1 - eps
        rows[i] = -(q * lp).sum()
    return rows, keep


def cross_entropy(z, t, eps=0.0, reduction="mean", ignore_index=-100):
    rows, keep = cross_entropy_rows(z, t, eps, ignore_index)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / keep.sum()


def linear(x, w, b=None):
    y = np.einsum("...i,oi->...o", f64(x), f64(w))
    return y if b is None else y + f64(b)


def directional_fd(f, x, v, h=1e-6):
    """Central difference of f along v (float64)."""
    return (f64(f(x + h * v)) - f64(f(x - h * v))) / (2 * h)


def rel_err(out, ref):
    out, ref = f64(out), f64(ref)
    scale = max(np.abs(ref).max(initial=0.0), 1e-30)
    return np.abs(out - ref).max(initial=0.0) / scale
