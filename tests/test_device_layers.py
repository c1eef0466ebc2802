"""Pooling and layer ops (fastconv.ops.pool / fastconv.ops.layers) on GPU arrays.

Without a GPU (here) the whole device path runs end to end on stand-ins
(tests/helpers.py): ``FakeDeviceArray`` (a NumPy array exporting
``__cuda_array_interface__``), a fake CuPy module, and a fake "cuda" backend
whose pooling/layer kernels are the compiled CPU ones and which asserts that it
only receives C-contiguous "GPU arrays". Every op is compared with the float64
references (tests/pool_reference.py, tests/layers_reference.py, or closed forms
written here) with random upstream gradients, and with the NumPy path bit for
bit (the same kernels run underneath, so any difference is the device path's).

The tests marked ``need_gpu`` run the same cases on the real "cuda" backend
(CuPy arrays) against the references and the "cpu" backend; they skip here with
the backend's own reason.
"""
import zlib

import numpy as np
import pytest

from fastconv import backends, ops
from fastconv.backends import cuda as cuda_backend
from fastconv.ops import _device

import layers_reference as lref
import pool_reference as pref
from helpers import FakeDeviceArray, dev, fake_cupy, fake_gpu_backend

GPU = cuda_backend.AVAILABLE
need_gpu = pytest.mark.skipif(not GPU, reason=f"needs a GPU: the 'cuda' backend is unavailable here "
                                              f"({cuda_backend.IMPORT_ERROR})")
TOL = {np.float32: 2e-5, np.float64: 1e-10}


def _rng(name, dt):
    return np.random.default_rng(zlib.crc32(f"{name}-{np.dtype(dt).name}".encode()))


def _n(rng, shape, dt, away_from_zero=False):
    a = rng.standard_normal(shape)
    if away_from_zero:
        a = np.where(np.abs(a) < 0.1, a + np.sign(a) * 0.2 + 0.05, a)
    return a.astype(dt)


# ------------------------------------------------------------------- cases
# Each case makes its inputs and returns (run, expect): run(T, backend) calls the ops with every
# array argument passed through T (identity: NumPy path; dev / cupy.asarray: GPU path) and returns
# a tuple of results; expect(host_results) returns their float64 references (integer/bool
# references are compared exactly).
CASES = {}


def case(fn):
    CASES[fn.__name__[len("case_"):]] = fn
    return fn


@case
def case_max_pool2d(rng, dt):
    x = _n(rng, (2, 3, 7, 6), dt)
    y, idx = pref.maxmin_pool(x, "max", 3, 2, 1, 1, True)
    g = _n(rng, y.shape, dt)

    def run(T, backend=None):
        yy, ii = ops.max_pool2d(T(x), 3, 2, 1, 1, True, return_indices=True, backend=backend)
        gi = ops.max_pool2d_backward(T(g), T(x), 3, 2, 1, 1, True, indices=ii, backend=backend)
        gn = ops.max_pool2d_backward(T(g), T(x), 3, 2, 1, 1, True, backend=backend)
        return yy, ii, gi, gn

    dx = pref.maxmin_pool_backward(g, x.shape, idx)
    return run, lambda h: (y, idx, dx, dx)


@case
def case_min_pool2d_unbatched_dilated(rng, dt):
    x = _n(rng, (3, 8, 7), dt)
    k, s, p, d = (2, 3), (1, 2), (1, 1), (2, 1)
    y, idx = pref.maxmin_pool(x[None], "min", k, s, p, d, False)
    g = _n(rng, y.shape[1:], dt)

    def run(T, backend=None):
        yy, ii = ops.min_pool2d(T(x), k, s, p, d, return_indices=True, backend=backend)
        gi = ops.min_pool2d_backward(T(g), T(x), k, s, p, d, indices=ii, backend=backend)
        gn = ops.min_pool2d_backward(T(g), T(x), k, s, p, d, backend=backend)
        return yy, ii, gi, gn

    dx = pref.maxmin_pool_backward(g[None], x[None].shape, idx)[0]
    return run, lambda h: (y[0], idx[0], dx, dx)


@case
def case_avg_pool2d(rng, dt):
    x = _n(rng, (2, 2, 7, 5), dt)
    y1 = pref.avg_pool(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    y2 = pref.avg_pool(x, (2, 3), (2, 1), (1, 0), divisor_override=-5)
    g1, g2 = _n(rng, y1.shape, dt), _n(rng, y2.shape, dt)

    def run(T, backend=None):
        a = ops.avg_pool2d(T(x), 3, 2, 1, ceil_mode=True, count_include_pad=False, backend=backend)
        b = ops.avg_pool2d(T(x), (2, 3), (2, 1), (1, 0), divisor_override=-5, backend=backend)
        ga = ops.avg_pool2d_backward(T(g1), T(x), 3, 2, 1, ceil_mode=True, count_include_pad=False,
                                     backend=backend)
        gb = ops.avg_pool2d_backward(T(g2), T(x), (2, 3), (2, 1), (1, 0), divisor_override=-5, backend=backend)
        return a, b, ga, gb

    dx1 = pref.avg_pool_backward(g1, x.shape, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    dx2 = pref.avg_pool_backward(g2, x.shape, (2, 3), (2, 1), (1, 0), divisor_override=-5)
    return run, lambda h: (y1, y2, dx1, dx2)


def _lp_backward_ref(g, x, p, k):
    """d/dx of sum(g * lp_pool(x)) with ceil_mode=True: (kk/n)^(1/p) S^(1/p-1) x^(p-1) per window."""
    x, g = lref.f64(x), lref.f64(g)
    N, C, H, W = x.shape
    _, _, win = pref._windows(H, W, k, k, (0, 0), (1, 1), True)
    dx = np.zeros_like(x)
    for (oh, ow), taps in win.items():
        S = sum(x[:, :, ih, iw] ** p for ih, iw in taps)
        coef = g[:, :, oh, ow] * (k[0] * k[1] / len(taps)) ** (1 / p) * S ** (1 / p - 1)
        for ih, iw in taps:
            dx[:, :, ih, iw] += coef * x[:, :, ih, iw] ** (p - 1)
    return dx


@case
def case_lp_pool2d(rng, dt):
    x = _n(rng, (1, 2, 6, 7), dt, away_from_zero=True)
    k = (2, 3)
    y = pref.lp_pool(x, 2.0, k, ceil_mode=True)
    g = _n(rng, y.shape, dt)
    yi, ii = pref.maxmin_pool(np.abs(x), "max", 2)
    gi = _n(rng, yi.shape, dt)

    def run(T, backend=None):
        a = ops.lp_pool2d(T(x), 2.0, k, ceil_mode=True, backend=backend)
        ga = ops.lp_pool2d_backward(T(g), T(x), 2.0, k, ceil_mode=True, backend=backend)
        b = ops.lp_pool2d(T(x), float("inf"), 2, backend=backend)
        gb = ops.lp_pool2d_backward(T(gi), T(x), float("inf"), 2, backend=backend)
        return a, ga, b, gb

    dxi = pref.maxmin_pool_backward(gi, x.shape, ii) * np.sign(x)
    return run, lambda h: (y, _lp_backward_ref(g, x, 2.0, k), yi, dxi)


@case
def case_adaptive_avg_pool2d(rng, dt):
    x = _n(rng, (2, 3, 7, 6), dt)
    y, _ = pref.adaptive_pool(x, (3, 4), "avg")
    g = _n(rng, y.shape, dt)

    def run(T, backend=None):
        return (ops.adaptive_avg_pool2d(T(x), (3, 4), backend=backend),
                ops.adaptive_avg_pool2d_backward(T(g), T(x), backend=backend))

    return run, lambda h: (y, pref.adaptive_avg_backward(g, x.shape))


@case
def case_adaptive_max_pool2d_unbatched(rng, dt):
    x = _n(rng, (3, 7, 6), dt)
    y, idx = pref.adaptive_pool(x[None], (4, 6), "max")
    g = _n(rng, y.shape[1:], dt)

    def run(T, backend=None):
        yy, ii = ops.adaptive_max_pool2d(T(x), (4, None), return_indices=True, backend=backend)
        gi = ops.adaptive_max_pool2d_backward(T(g), T(x), (4, None), indices=ii, backend=backend)
        gn = ops.adaptive_max_pool2d_backward(T(g), T(x), (4, None), backend=backend)
        return yy, ii, gi, gn

    dx = pref.maxmin_pool_backward(g[None], x[None].shape, idx)[0]
    return run, lambda h: (y[0], idx[0], dx, dx)


@case
def case_batch_norm(rng, dt):
    x = _n(rng, (4, 3, 5, 2), dt)
    w, b = _n(rng, 3, dt), _n(rng, 3, dt)
    rm = rng.standard_normal(3).astype(dt)
    rv = (rng.random(3) + 0.5).astype(dt)

    def run(T, backend=None):
        rm_t, rv_t = T(rm.copy()), T(rv.copy())
        y = ops.batch_norm(T(x), rm_t, rv_t, T(w), T(b), training=True, momentum=0.2, backend=backend)
        ye = ops.batch_norm(T(x), T(rm), T(rv), T(w), T(b), training=False, backend=backend)
        return y, rm_t, rv_t, ye

    y_ref, mean, var = lref.batch_norm_train(x, w, b)
    n = x.size // 3
    return run, lambda h: (y_ref, 0.8 * lref.f64(rm) + 0.2 * mean, 0.8 * lref.f64(rv) + 0.2 * var * n / (n - 1),
                           lref.batch_norm_eval(x, rm, rv, w, b))


@case
def case_batch_norm_backward(rng, dt):
    x = _n(rng, (5, 4, 3), dt)
    w, b = _n(rng, 4, dt), _n(rng, 4, dt)
    g = _n(rng, x.shape, dt)
    rm = rng.standard_normal(4).astype(dt)
    rv = (rng.random(4) + 0.5).astype(dt)

    def run(T, backend=None):
        y, sm, si = ops.batch_norm_forward_train(T(x), T(w), T(b), backend=backend)
        dx, dw, db = ops.batch_norm_backward(T(g), T(x), T(w), sm, si, training=True, backend=backend)
        ex, ew, eb = ops.batch_norm_backward(T(g), T(x), T(w), training=False, running_mean=T(rm),
                                             running_var=T(rv), backend=backend)
        return y, sm, si, dx, dw, db, ex, ew, eb

    y_ref, mean, var = lref.batch_norm_train(x, w, b)
    dx, dw, db = lref.batch_norm_train_backward(g, x, w)
    s = (1, -1, 1)
    inv = 1 / np.sqrt(lref.f64(rv) + 1e-5)
    xhat = (lref.f64(x) - lref.f64(rm).reshape(s)) * inv.reshape(s)
    g64 = lref.f64(g)
    eval_grads = ((g64 * (lref.f64(w) * inv).reshape(s)), (g64 * xhat).sum(axis=(0, 2)), g64.sum(axis=(0, 2)))
    return run, lambda h: (y_ref, mean, 1 / np.sqrt(var + 1e-5), dx, dw, db) + eval_grads


def _lrn_backward_ref(g, x, size, alpha, beta, k):
    x, g = lref.f64(x), lref.f64(g)
    C = x.shape[1]
    D = np.empty_like(x)
    for c in range(C):
        lo, hi = max(0, c - size // 2), min(C - 1, c + (size - 1) // 2)
        D[:, c] = k + alpha / size * (x[:, lo:hi + 1] ** 2).sum(axis=1)
    dx = g * D ** -beta
    for c in range(C):
        lo, hi = max(0, c - size // 2), min(C - 1, c + (size - 1) // 2)
        t = g[:, c] * x[:, c] * D[:, c] ** (-beta - 1)
        for j in range(lo, hi + 1):
            dx[:, j] -= 2 * alpha * beta / size * x[:, j] * t
    return dx


@case
def case_local_response_norm(rng, dt):
    x = _n(rng, (2, 5, 3, 4), dt)
    g = _n(rng, x.shape, dt)
    a = (3, 0.05, 0.75, 1.5)

    def run(T, backend=None):
        return (ops.local_response_norm(T(x), *a, backend=backend),
                ops.local_response_norm_backward(T(g), T(x), *a, backend=backend))

    return run, lambda h: (lref.lrn(x, *a), _lrn_backward_ref(g, x, *a))


@case
def case_activations(rng, dt):
    x = _n(rng, (3, 4, 5), dt, away_from_zero=True)
    g = _n(rng, x.shape, dt)

    def run(T, backend=None):
        r, s, t = (ops.relu(T(x), backend=backend), ops.sigmoid(T(x), backend=backend),
                   ops.tanh(T(x), backend=backend))
        return (r, s, t, ops.relu_backward(T(g), r, backend=backend), ops.sigmoid_backward(T(g), s, backend=backend),
                ops.tanh_backward(T(g), t, backend=backend))

    s, t, g64 = lref.sigmoid(x), lref.tanh(x), lref.f64(g)
    return run, lambda h: (lref.relu(x), s, t, g64 * (x > 0), g64 * s * (1 - s), g64 * (1 - t * t))


@case
def case_softmax(rng, dt):
    x = _n(rng, (3, 5, 4), dt)
    g = _n(rng, x.shape, dt)

    def run(T, backend=None):
        y = ops.softmax(T(x), 1, backend=backend)
        ly = ops.log_softmax(T(x), -1, backend=backend)
        return (y, ly, ops.softmax_backward(T(g), y, 1, backend=backend),
                ops.log_softmax_backward(T(g), ly, -1, backend=backend))

    y, ly, g64 = lref.softmax(x, 1), lref.log_softmax(x, -1), lref.f64(g)
    return run, lambda h: (y, ly, y * (g64 - (g64 * y).sum(axis=1, keepdims=True)),
                           g64 - np.exp(ly) * g64.sum(axis=-1, keepdims=True))


@case
def case_cross_entropy(rng, dt):
    z = _n(rng, (6, 5), dt)
    t = np.array([0, 4, -100, 2, 1, 3], np.int64)
    eps = 0.1

    def run(T, backend=None):
        out = ()
        for red in ("mean", "sum", "none"):
            out += ops.cross_entropy(T(z), T(t), label_smoothing=eps, reduction=red, backend=backend)
        return out

    def grad(scale):
        p = lref.softmax(z, 1)
        q = np.full(z.shape, eps / 5)
        keep = t != -100
        q[np.arange(6)[keep], t[keep]] += 1 - eps
        return np.where(keep[:, None], (p - q) * scale, 0.0)

    return run, lambda h: (lref.cross_entropy(z, t, eps, "mean"), grad(1 / 5), lref.cross_entropy(z, t, eps, "sum"),
                           grad(1.0), lref.cross_entropy(z, t, eps, "none"), grad(1.0))


@case
def case_dropout(rng, dt):
    from fastconv.ops.layers import Generator

    x = _n(rng, (4, 33), dt)
    g = _n(rng, x.shape, dt)

    def run(T, backend=None):
        y, m = ops.dropout(T(x), 0.3, seed=123, backend=backend)
        gen = Generator(7)
        y1, m1 = ops.dropout(T(x), 0.3, seed=gen, backend=backend)
        y2, m2 = ops.dropout(T(x), 0.3, seed=gen, backend=backend)
        dx = ops.dropout_backward(T(g), m, 0.3, backend=backend)
        ye, me = ops.dropout(T(x), 0.3, training=False, backend=backend)
        y1p, m1p = ops.dropout(T(x), 1.0, seed=1, backend=backend)
        return y, m, y1, m1, y2, m2, dx, ye, me, y1p, m1p, ops.dropout_backward(T(g), m1p, 1.0, backend=backend)

    def expect(h):
        m, m1, m2 = h[1], h[3], h[5]
        assert 0.5 < m.mean() < 0.9 and not np.array_equal(m1, m2), "masks: ~70% kept, the Generator advances"
        x64, g64 = lref.f64(x), lref.f64(g)
        return (x64 * m / 0.7, m, x64 * m1 / 0.7, m1, x64 * m2 / 0.7, m2, g64 * m / 0.7, x64,
                np.ones(x.shape, bool), np.zeros(x.shape), np.zeros(x.shape, bool), np.zeros(x.shape))

    return run, expect


@case
def case_linear(rng, dt):
    x = _n(rng, (2, 3, 7), dt)
    w, b = _n(rng, (5, 7), dt), _n(rng, 5, dt)
    g = _n(rng, (2, 3, 5), dt)

    def run(T, backend=None):
        y = ops.linear(T(x), T(w), T(b), backend=backend)
        y0 = ops.linear(T(x), T(w), backend=backend)
        dx, dw, db = ops.linear_backward(T(g), T(x), T(w), backend=backend)
        ex, ew, eb = ops.linear_backward(T(g), T(x), T(w), needs=(True, False, True), backend=backend)
        return y, y0, dx, dw, db, ex, ew, eb

    g64 = lref.f64(g)
    dx = np.einsum("...o,oi->...i", g64, lref.f64(w))
    dw = g64.reshape(-1, 5).T @ lref.f64(x).reshape(-1, 7)
    db = g64.sum(axis=(0, 1))
    return run, lambda h: (lref.linear(x, w, b), lref.linear(x, w), dx, dw, db, dx, None, db)


# ---------------------------------------------------------------- checking
def _ident(a):
    return a


def _check(name, got, want, tol, host=None):
    """got (host copies of the device results) against the references, and bitwise against `host`."""
    assert len(got) == len(want), name
    for i, (g, w) in enumerate(zip(got, want)):
        what = f"{name} result {i}"
        if w is None:
            assert g is None, what
            continue
        g = np.asarray(g)
        assert g.shape == np.shape(w), f"{what}: shape {g.shape}, expected {np.shape(w)}"
        if np.asarray(w).dtype.kind in "biu":
            assert g.dtype == np.asarray(w).dtype, f"{what}: dtype {g.dtype}"
            np.testing.assert_array_equal(g, w, err_msg=what)
        else:
            err = lref.rel_err(g, w)
            assert err <= tol, f"{what}: relative error {err:.3g} > {tol}"
        if host is not None:
            np.testing.assert_array_equal(g, np.asarray(host[i]), err_msg=f"{what}: device path != NumPy path")


def _host(a):
    if a is None:
        return None
    assert type(a) is FakeDeviceArray, f"the device path must return GPU arrays, got {type(a)}"
    return a.view(np.ndarray)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A working "cuda" backend on the stand-ins; yields the list of kernel calls it received."""
    if "cpu" not in backends.available():
        pytest.skip("the stand-in GPU backend runs the compiled CPU kernels, which are not built")
    calls = []
    monkeypatch.setattr(_device, "_cupy", fake_cupy)
    monkeypatch.setitem(backends._cache, "cuda", (fake_gpu_backend(calls, "cuda"), None))
    return calls


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CASES))
def test_device_path_matches_reference(fake_gpu, name, dt):
    run, expect = CASES[name](_rng(name, dt), dt)
    host = run(_ident)
    got = tuple(_host(a) for a in run(dev))
    _check(name, got, expect(host), TOL[dt], host)
    assert fake_gpu and all(c[1] == "cuda" for c in fake_gpu)
    assert all(c[2] in (None, np.dtype(dt)) for c in fake_gpu), "kernels compute in the input's precision"


@pytest.mark.parametrize("name", ["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "activations", "softmax",
                                  "batch_norm_backward", "linear", "dropout", "cross_entropy"])
def test_device_path_float16(fake_gpu, name):
    # float16 computes in float32 and rounds back, as on the host: identical results
    run, _ = CASES[name](_rng(name, np.float16), np.float16)
    host = run(_ident)
    got = run(dev)
    for i, (h, g) in enumerate(zip(host, got)):
        if h is None:
            continue
        g = _host(g)
        assert g.dtype == np.asarray(h).dtype, f"{name} result {i}: dtype {g.dtype}, host {np.asarray(h).dtype}"
        np.testing.assert_array_equal(g, np.asarray(h), err_msg=f"{name} result {i}")
    assert all(c[2] in (None, np.dtype(np.float32)) for c in fake_gpu)


def test_device_results_are_gpu_arrays_with_torch_dtypes(fake_gpu):
    x = dev(np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32))
    y, idx = ops.max_pool2d(x, 2, return_indices=True)
    assert type(y) is FakeDeviceArray and type(idx) is FakeDeviceArray and idx.dtype == np.int64
    loss, grad = ops.cross_entropy(dev(np.zeros((2, 3), np.float32)), dev(np.array([0, 2])))
    assert type(loss) is FakeDeviceArray and loss.shape == () and loss.dtype == np.float32
    assert abs(float(loss) - np.log(3)) < 1e-6 and type(grad) is FakeDeviceArray
    loss, _ = ops.cross_entropy(dev(np.zeros((2, 3), np.float32)), dev(np.array([-100, -100])))
    assert type(loss) is FakeDeviceArray and np.isnan(float(loss)), "every row ignored: NaN mean (as torch)"
    y, m = ops.dropout(x, 0.0)
    assert type(y) is FakeDeviceArray and type(m) is FakeDeviceArray and m.dtype == bool and m.all()
    # running statistics given as GPU arrays are wrapped without copying and updated in place
    rm, rv = dev(np.zeros(2, np.float32)), dev(np.ones(2, np.float32))
    ops.batch_norm(x, rm, rv, training=True)
    assert rm.any(), "running statistics on the device are updated in place"


# ------------------------------------------------------------------ errors
def _bad_calls():
    rng = np.random.default_rng(1)
    x = dev(rng.standard_normal((1, 2, 5, 5)).astype(np.float32))
    xh = np.asarray(x).view(np.ndarray).copy()
    g = dev(np.zeros((1, 2, 2, 2), np.float32))
    gh = g.view(np.ndarray).copy()
    z, t = dev(np.zeros((3, 4), np.float32)), dev(np.array([0, 1, 2]))
    w2 = dev(np.zeros((3, 5), np.float32))
    idx_bad = dev(np.full((1, 2, 2, 2), 25, np.int64))
    return [
        # host arrays among GPU arrays: TypeError naming the host one
        (TypeError, "grad_output is a host array", lambda: ops.max_pool2d_backward(gh, x, 2)),
        (TypeError, "input is a host array", lambda: ops.avg_pool2d_backward(g, xh, 2)),
        (TypeError, "indices is a host array",
         lambda: ops.max_pool2d_backward(g, x, 2, indices=np.zeros((1, 2, 2, 2), np.int64))),
        (TypeError, "grad_output is a host array", lambda: ops.lp_pool2d_backward(gh, x, 2.0, 2)),
        (TypeError, "grad_output is a host array", lambda: ops.adaptive_avg_pool2d_backward(gh, x)),
        (TypeError, "weight is a host array", lambda: ops.batch_norm(x, None, None, np.ones(2, np.float32),
                                                                     training=True)),
        (TypeError, "running_mean is a host array",
         lambda: ops.batch_norm(x, np.zeros(2, np.float32), dev(np.ones(2, np.float32)))),
        (TypeError, "target is a host array", lambda: ops.cross_entropy(z, np.array([0, 1, 2]))),
        (TypeError, "input is a host array", lambda: ops.cross_entropy(z.view(np.ndarray), t)),
        (TypeError, "mask is a host array", lambda: ops.dropout_backward(x, np.ones(x.shape, bool), 0.5)),
        (TypeError, "bias is a host array", lambda: ops.linear(dev(np.zeros((2, 5), np.float32)), w2,
                                                               np.zeros(3, np.float32))),
        (TypeError, "output is a host array", lambda: ops.softmax_backward(x, xh, 1)),
        (TypeError, "grad_output is a host array", lambda: ops.local_response_norm_backward(xh, x, 3)),
        # the NumPy path's checks and messages
        (TypeError, "floating-point", lambda: ops.relu(dev(np.zeros(3, np.int32)))),
        (TypeError, "dtypes must match", lambda: ops.linear(dev(np.zeros((2, 5), np.float64)), w2)),
        (ValueError, "grad_output has shape", lambda: ops.max_pool2d_backward(dev(np.zeros((1, 2, 3, 3),
                                                                                    np.float32)), x, 2)),
        (ValueError, r"indices must lie in \[0, 25\)", lambda: ops.max_pool2d_backward(g, x, 2, indices=idx_bad)),
        (TypeError, "indices must have dtype int64",
         lambda: ops.adaptive_max_pool2d_backward(g, x, 2, indices=dev(np.zeros((1, 2, 2, 2), np.int32)))),
        (ValueError, "padding should be at most half", lambda: ops.max_pool2d(x, 2, padding=2)),
        (ValueError, r"target\[1\] = 7 is out of range", lambda: ops.cross_entropy(z, dev(np.array([0, 7, 1])))),
        (TypeError, "target must be an integer array", lambda: ops.cross_entropy(z, dev(np.zeros(3, np.float32)))),
        (TypeError, "mask must be a bool array", lambda: ops.dropout_backward(x, dev(np.ones(x.shape)), 0.5)),
        (ValueError, "must have shape", lambda: ops.batch_norm(x, None, None, dev(np.ones(3, np.float32)),
                                                               training=True)),
        (ValueError, "Expected more than 1 value per channel",
         lambda: ops.batch_norm(dev(np.zeros((1, 2), np.float32)), None, None, training=True)),
        (ValueError, "out of range", lambda: ops.softmax(x, 4)),
        (ValueError, "grad_output must have shape",
         lambda: ops.linear_backward(dev(np.zeros((2, 4), np.float32)), dev(np.zeros((2, 5), np.float32)), w2)),
        (ValueError, "dropout probability", lambda: ops.dropout(x, 1.5)),
        (ValueError, "at least 3-D", lambda: ops.local_response_norm(dev(np.zeros((2, 3), np.float32)), 2)),
    ]


def test_device_path_errors_run_no_kernel(fake_gpu):
    for exc, match, call in _bad_calls():
        with pytest.raises(exc, match=match):
            call()
    assert not fake_gpu, f"no kernel may run on bad arguments, got {fake_gpu}"


def test_backend_choice_errors(fake_gpu):
    x = dev(np.zeros((1, 2, 4, 4), np.float32))
    for b in ("cpu", "numba", "reference"):
        if b in backends.available():
            with pytest.raises(TypeError, match=f"input is a GPU array .* backend '{b}' takes NumPy arrays"):
                ops.max_pool2d(x, 2, backend=b)
            with pytest.raises(TypeError, match=f"grad_output is a GPU array .* backend '{b}' takes NumPy"):
                ops.relu_backward(x, x, backend=b)
    with pytest.raises(TypeError, match="backend 'cuda' takes GPU arrays"):
        ops.avg_pool2d(np.zeros((1, 2, 4, 4), np.float32), 2, backend="cuda")
    with pytest.raises(TypeError, match="backend 'cuda' takes GPU arrays"):
        ops.softmax(np.zeros((2, 3), np.float32), 1, backend="cuda")
    assert not fake_gpu
    # backend="cuda" by name with GPU arrays is the default choice
    ops.relu(x, backend="cuda")
    assert [c[:2] for c in fake_gpu] == [("activation", "cuda")]


@pytest.mark.skipif(GPU, reason="checks the no-GPU-backend error; a GPU backend is available here")
def test_gpu_array_without_gpu_backend_is_a_clear_error():
    x = dev(np.zeros((1, 2, 4, 4), np.float32))
    for call in (lambda: ops.max_pool2d(x, 2), lambda: ops.batch_norm_forward_train(x),
                 lambda: ops.cross_entropy(np.zeros((2, 3), np.float32), dev(np.array([0, 1]))),
                 lambda: ops.linear(np.zeros((2, 5), np.float32), dev(np.zeros((3, 5), np.float32)))):
        with pytest.raises(ValueError, match="GPU array .* no GPU backend is available") as ei:
            call()
        assert "'numba-cuda'" in str(ei.value)


def test_gpu_backend_never_falls_back_to_a_host_kernel(fake_gpu, monkeypatch):
    mod = backends._cache["cuda"][0]
    monkeypatch.setattr(mod, "layer_kernel", lambda name: None)
    with pytest.raises(ValueError, match="backend 'cuda' has no activation kernel for GPU arrays"):
        ops.relu(dev(np.zeros(3, np.float32)))


def test_falls_back_to_numba_cuda(monkeypatch):
    if "cpu" not in backends.available():
        pytest.skip("the stand-in GPU backend runs the compiled CPU kernels, which are not built")
    calls = []
    monkeypatch.setattr(_device, "_cupy", fake_cupy)
    monkeypatch.setitem(backends._cache, "cuda", (None, "no usable CUDA device: test"))
    monkeypatch.setitem(backends._REGISTRY, "numba-cuda", ".numba_cuda")
    monkeypatch.setitem(backends._cache, "numba-cuda", (fake_gpu_backend(calls, "numba-cuda"), None))
    for name, make in CASES.items():
        run, expect = make(_rng(name, np.float32), np.float32)
        host = run(_ident)
        got = tuple(_host(a) for a in run(dev))
        _check(f"numba-cuda {name}", got, expect(host), TOL[np.float32], host)
    assert calls and all(c[1] == "numba-cuda" for c in calls)
    assert {c[0] for c in calls} == set(backends._names.LAYER_KERNELS), "every pooling/layer kernel ran"


def test_cuda_layer_kernel_table_adds_the_stream(monkeypatch):
    """fastconv.backends.cuda.layer_kernel: the _cuda functions, with CuPy's current stream added."""
    import types

    seen = []
    fake = types.SimpleNamespace(activation=lambda *a, **k: seen.append((a, k)))
    monkeypatch.setattr(cuda_backend, "AVAILABLE", True)
    monkeypatch.setattr(cuda_backend, "_cuda", fake)
    monkeypatch.setattr(cuda_backend, "_stream", lambda: 4242)
    monkeypatch.setattr(cuda_backend, "_layer_wrappers", {})
    fn = cuda_backend.layer_kernel("activation")
    fn(0, None, "x", "out")
    assert seen == [((0, None, "x", "out"), {"stream": 4242})]
    assert cuda_backend.layer_kernel("activation") is fn
    assert cuda_backend.layer_kernel("softmax") is None  # not in this fake module
    assert cuda_backend.layer_kernel("conv2d") is None  # not a pooling/layer kernel


def test_cuda_module_binds_every_layer_kernel():
    if cuda_backend._cuda is None:
        pytest.skip(f"fastconv._cuda not built here: {cuda_backend.IMPORT_ERROR}")
    missing = [n for n in backends._names.LAYER_KERNELS if not hasattr(cuda_backend._cuda, n)]
    assert not missing, f"fastconv._cuda lacks {missing}"


# ------------------------------------------------------------ on a GPU
@need_gpu
@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CASES))
def test_gpu_matches_cpu_and_reference(name, dt):
    import cupy as cp

    run, expect = CASES[name](_rng(name, dt), dt)
    cpu = run(_ident, "cpu")
    out = run(cp.asarray)
    for a in out:
        assert a is None or isinstance(a, cp.ndarray), f"{name}: got {type(a)}"
    got = tuple(None if a is None else cp.asnumpy(a) for a in out)
    want = expect(cpu)
    _check(f"gpu {name}", got, want, TOL[dt])
    # and against the CPU kernels (indices, masks exactly: same tie rule, same counter-based hash)
    _check(f"gpu vs cpu {name}", got, tuple(None if c is None else (np.asarray(c) if np.asarray(c).dtype.kind in "biu"
                                                                   else lref.f64(c)) for c in cpu), TOL[dt])


@need_gpu
def test_gpu_bad_input_raises():
    import cupy as cp

    x = cp.zeros((1, 2, 5, 5), cp.float32)
    with pytest.raises(TypeError, match="host array"):
        ops.max_pool2d_backward(np.zeros((1, 2, 2, 2), np.float32), x, 2)
    with pytest.raises(ValueError, match="out of range"):
        ops.cross_entropy(cp.zeros((2, 3), cp.float32), cp.asarray(np.array([0, 3])))
    with pytest.raises(TypeError, match="backend 'cpu' takes NumPy arrays"):
        ops.relu(x, backend="cpu")
