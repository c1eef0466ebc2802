"""Directional finite-difference gradient check (Chainer's ``check_backward`` idea).

For random upstream gradients ``gy`` and a random direction ``d`` over all inputs,
backprop gives ``sum_i <grad_i, d_i>`` and central differences give
``(<f(x + eps d), gy> - <f(x - eps d), gy>) / (2 eps)``; the two must agree. One
direction checks every input at once, several directions make a miss unlikely.
"""
from __future__ import annotations

import numpy as np

from .engine import array_module, no_grad
from .tensor import Tensor

__all__ = ["gradcheck"]


def _outputs(fn, inputs):
    out = fn(*inputs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o for o in outs if isinstance(o, Tensor) and np.dtype(o.dtype).kind == "f"]


def gradcheck(fn, inputs, *, eps=1e-6, atol=1e-8, rtol=1e-5, n_directions=3, seed=0, raise_exception=True):
    """Check ``fn``'s backward against central differences along random directions.

    ``inputs``: Tensors (those with ``requires_grad`` are checked; they must be float64)
    or other arguments passed through unchanged. Returns True, or raises AssertionError
    with the two numbers (or returns False when ``raise_exception`` is False).
    """
    rng = np.random.default_rng(seed)
    checked = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    for t in checked:
        if t.dtype != np.float64:
            raise TypeError(f"gradcheck: inputs must be float64 for a meaningful check, got {t.dtype} "
                            f"for an input of shape {t.shape}")
    outs = _outputs(fn, inputs)
    if not outs:
        raise ValueError("gradcheck: fn returned no floating-point Tensor")
    gys = []
    for o in outs:
        xp = array_module(o.data)
        gys.append(xp.asarray(rng.standard_normal(o.shape)).astype(o.dtype))

    kept = [t.grad for t in checked]  # the caller's gradients come back afterwards
    for t in checked:
        t.grad = None
    # one backward through the sum of <out, gy> (random upstream gradients for every output)
    total = None
    for o, gy in zip(outs, gys):
        if not o.requires_grad:
            continue
        term = (o * Tensor._wrap(gy)).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("gradcheck: no output depends on an input that requires grad")
    total.backward()
    grads = [t.grad if t.grad is not None else array_module(t.data).zeros(t.shape, t.dtype) for t in checked]
    for t, g in zip(checked, kept):
        t.grad = g

    def project():
        with no_grad():
            vals = _outputs(fn, inputs)
        return sum(float((v.data * gy).sum()) for v, gy in zip(vals, gys))

    ok = True
    msgs = []
    for k in range(n_directions):
        dirs = []
        for t in checked:
            xp = array_module(t.data)
            d = xp.asarray(rng.standard_normal(t.shape))
            dirs.append(d)
        norm = np.sqrt(sum(float((d * d).sum()) for d in dirs)) or 1.0
        dirs = [d / norm for d in dirs]
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, dirs))
        saved = [t.data.copy() for t in checked]
        for t, d in zip(checked, dirs):
            t.data[...] = t.data + eps * d
        fp = project()
        for t, s, d in zip(checked, saved, dirs):
            t.data[...] = s - eps * d
        fm = project()
        for t, s in zip(checked, saved):
            t.data[...] = s
        numeric = (fp - fm) / (2 * eps)
        if not abs(analytic - numeric) <= atol + rtol * max(abs(analytic), abs(numeric)):
            ok = False
            msgs.append(f"direction {k}: backward gives {analytic!r}, finite differences give {numeric!r} "
                        f"(difference {abs(analytic - numeric):.3e})")
    if not ok and raise_exception:
        raise AssertionError("gradcheck failed: " + "; ".join(msgs))
    return ok
