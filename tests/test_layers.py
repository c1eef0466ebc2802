"""Layer kernels (fastconv.ops.layers) against the float64 references in
layers_reference.py, against torch float64 where installed, finite-difference
gradient checks with random upstream gradients, determinism over thread counts,
and bad input."""
import re

import numpy as np
import pytest

import fastconv
import layers_reference as R
from fastconv import ops
from fastconv.ops import layers as L
from helpers import torch_or_skip

TOL = {np.float32: 2e-5, np.float64: 1e-11}
DTYPES = [np.float32, np.float64]


def close(out, ref, dtype, what="", tol=None):
    assert isinstance(out, np.ndarray), f"{what}: {type(out)}"
    assert out.dtype == np.dtype(dtype), f"{what}: dtype {out.dtype} != {np.dtype(dtype)}"
    assert out.shape == np.shape(ref), f"{what}: shape {out.shape} != {np.shape(ref)}"
    err = R.rel_err(out, ref)
    tol = TOL[dtype] if tol is None else tol
    assert err <= tol, f"{what}: rel err {err:.3e} > {tol:.1e}"


def randn(rng, shape, dtype=np.float64, scale=1.0, shift=0.0):
    return (rng.standard_normal(shape) * scale + shift).astype(dtype)


def T(a):
    torch = torch_or_skip()
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


# ================================================================ batch norm
BN_SHAPES = [(1, 3, 5, 7), (5, 4), (2, 3, 1, 1), (3, 16, 9, 11), (7, 5, 1, 13), (1, 2, 64, 3), (33, 70)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_train_forward(rng, dtype, shape, affine):
    x = randn(rng, shape, dtype, scale=2.0, shift=3.0)
    C = shape[1]
    w = randn(rng, C, dtype) if affine else None
    b = randn(rng, C, dtype) if affine else None
    ref, mean, var = R.batch_norm_train(x, w, b, 1e-5)
    y, sm, si = L.batch_norm_forward_train(x, w, b, eps=1e-5)
    close(y, ref, dtype, "output")
    np.testing.assert_allclose(sm, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(si, 1 / np.sqrt(var + 1e-5), rtol=1e-9)
    y2 = L.batch_norm(x, None, None, w, b, training=True)
    np.testing.assert_array_equal(y2, y)


def test_batch_norm_large_mean_small_std(rng):
    # shifted moments: no E[x^2] - E[x]^2 cancellation
    x = randn(rng, (4, 3, 10, 10), np.float64, scale=1e-3, shift=1e4)
    ref, _, _ = R.batch_norm_train(x)
    y, _, _ = L.batch_norm_forward_train(x)
    close(y, ref, np.float64, tol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_eval(rng, dtype):
    x = randn(rng, (3, 6, 4, 5), dtype)
    rm, rv = randn(rng, 6, dtype), (rng.random(6) + 0.5).astype(dtype)
    w, b = randn(rng, 6, dtype), randn(rng, 6, dtype)
    close(L.batch_norm(x, rm, rv, w, b, training=False, eps=1e-3), R.batch_norm_eval(x, rm, rv, w, b, 1e-3),
          dtype)
    close(L.batch_norm(x, rm, rv), R.batch_norm_eval(x, rm, rv), dtype)


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (6, 5), (2, 7, 33, 3)], ids=str)
@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_batch_norm_running_stats_vs_torch(rng, shape, momentum):
    torch = torch_or_skip()
    F = torch.nn.functional
    C = shape[1]
    rm, rv = np.zeros(C), np.ones(C)
    trm, trv = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    w, b = randn(rng, C), randn(rng, C)
    for step in range(4):
        x = randn(rng, shape, scale=1 + step, shift=step)
        y = L.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum, eps=1e-4)
        ty = F.batch_norm(T(x), trm, trv, T(w), T(b), training=True, momentum=momentum, eps=1e-4)
        close(y, ty.numpy(), np.float64, f"step {step} output")
        np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-12, atol=1e-14)
    ye = L.batch_norm(x, rm, rv, w, b, training=False, eps=1e-4)
    close(ye, F.batch_norm(T(x), trm, trv, T(w), T(b), training=False, eps=1e-4).numpy(), np.float64)


def test_batch_norm_running_stats_float32(rng):
    C = 5
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    x = randn(rng, (8, C, 3, 3), np.float32, 2.0, 1.0)
    L.batch_norm(x, rm, rv, training=True, momentum=0.2)
    _, mean, var = R.batch_norm_train(x)
    n = x.size // C
    np.testing.assert_allclose(rm, 0.2 * mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rv, 0.8 + 0.2 * var * n / (n - 1), rtol=1e-5)
    assert rm.dtype == np.float32 and rv.dtype == np.float32


def test_batch_norm_training_on_an_empty_batch():
    """N = 0 (or an empty spatial size) in training: an empty output of the input's shape and
    dtype, running statistics untouched (torch); one value per channel still raises."""
    for shape in ((0, 3), (2, 3, 0), (0, 3, 4, 4)):
        rm, rv = np.ones(3), np.full(3, 2.0)
        y = L.batch_norm(np.zeros(shape, np.float32), rm, rv, training=True)
        assert y.shape == shape and y.dtype == np.float32
        np.testing.assert_array_equal(rm, 1.0)
        np.testing.assert_array_equal(rv, 2.0)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        L.batch_norm(np.zeros((1, 3)), None, None, training=True)
    # the functions under the autograd layer agree: an empty output and NaN statistics (there are
    # none), and a backward of an empty grad_input and zero weight/bias gradients (torch autograd's)
    y, mean, invstd = L.batch_norm_forward_train(np.zeros((0, 3, 4, 4), np.float32), np.ones(3, np.float32))
    assert y.shape == (0, 3, 4, 4) and y.dtype == np.float32
    assert mean.shape == invstd.shape == (3,) and np.isnan(mean).all() and np.isnan(invstd).all()
    dx, dw, db = L.batch_norm_backward(np.zeros((0, 3, 4, 4)), np.zeros((0, 3, 4, 4)), np.ones(3), mean, invstd)
    assert dx.shape == (0, 3, 4, 4)
    np.testing.assert_array_equal(dw, 0.0)
    np.testing.assert_array_equal(db, 0.0)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        L.batch_norm_forward_train(np.zeros((1, 3, 1, 1)))


def test_batch_norm_running_stats_must_be_updatable(rng):
    """Training updates the caller's running statistics in place: a list (converted to a fresh
    array nobody sees) is a TypeError, a read-only array a ValueError; an array of another float
    dtype or a strided view is updated itself, not a converted copy. eps = 0 is rejected when
    training, as torch does."""
    C = 4
    x = randn(rng, (6, C, 2, 3), np.float64, 2.0, 1.0)
    _, mean, var = R.batch_norm_train(x)
    with pytest.raises(TypeError, match="running_mean must be a numpy array"):
        L.batch_norm(x, [0.0] * C, np.ones(C), training=True)
    ro = np.ones(C)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="running_var must be writeable"):
        L.batch_norm(x, np.zeros(C), ro, training=True)
    L.batch_norm(x, [0.0] * C, (1.0,) * C, training=False)  # evaluation only reads them: any sequence
    with pytest.raises(ValueError, match="eps must be positive when training"):
        L.batch_norm(x, np.zeros(C), np.ones(C), training=True, eps=0.0)
    with pytest.raises(ValueError, match="eps must be positive when training"):
        L.batch_norm_forward_train(x, eps=0.0)
    rm16, rv_view = np.zeros(C, np.float16), np.ones(2 * C)[::2]
    L.batch_norm(x, rm16, rv_view, training=True, momentum=0.5)
    n = x.size // C
    np.testing.assert_allclose(rm16, 0.5 * mean, rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(rv_view, 0.5 + 0.5 * var * n / (n - 1), rtol=1e-12)
    assert rm16.dtype == np.float16


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (5, 4), (3, 16, 9, 11), (3, 3, 1, 1)], ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_backward_train(rng, dtype, shape, affine):
    C = shape[1]
    x = randn(rng, shape, dtype, 1.5, 0.5)
    w = randn(rng, C, dtype) if affine else None
    b = randn(rng, C, dtype) if affine else None
    g = randn(rng, shape, dtype)
    _, sm, si = L.batch_norm_forward_train(x, w, b)
    dx, dw, db = L.batch_norm_backward(g, x, w, sm, si, training=True)
    rdx, rdw, rdb = R.batch_norm_train_backward(g, x, w)
    tol = 1e-4 if dtype == np.float32 else 1e-9
    close(dx, rdx, dtype, "grad_input", tol)
    close(dw, rdw, dtype, "grad_weight", tol)
    close(db, rdb, dtype, "grad_bias", tol)
    if dtype == np.float64:  # finite differences of the reference forward
        v = randn(rng, shape)
        fd = (R.directional_fd(lambda z: R.batch_norm_train(z, w, b)[0], x, v) * g).sum()
        assert abs(fd - (dx * v).sum()) <= 1e-6 * max(1, abs(fd))
        vw = randn(rng, C)
        ww = np.ones(C) if w is None else w
        fdw = (R.directional_fd(lambda q: R.batch_norm_train(x, q, b)[0], ww, vw) * g).sum()
        assert abs(fdw - (dw * vw).sum()) <= 1e-6 * max(1, abs(fdw))


def test_batch_norm_backward_vs_torch(rng):
    torch = torch_or_skip()
    for training in (True, False):
        x, g = randn(rng, (3, 4, 5, 6)), randn(rng, (3, 4, 5, 6))
        w, b = randn(rng, 4), randn(rng, 4)
        rm, rv = randn(rng, 4), rng.random(4) + 0.5
        tx, tw, tb = (T(a).requires_grad_() for a in (x, w, b))
        ty = torch.nn.functional.batch_norm(tx, T(rm), T(rv), tw, tb, training=training, eps=1e-5)
        ty.backward(T(g))
        if training:
            _, sm, si = L.batch_norm_forward_train(x, w, b)
            out = L.batch_norm_backward(g, x, w, sm, si, training=True)
        else:
            out = L.batch_norm_backward(g, x, w, training=False, running_mean=rm, running_var=rv)
            out2 = L.batch_norm_backward(g, x, w, rm, 1 / np.sqrt(rv + 1e-5), training=False)
            for a, b2 in zip(out, out2):
                np.testing.assert_allclose(a, b2, rtol=1e-14)
        for got, want, n in zip(out, (tx.grad, tw.grad, tb.grad), ("dx", "dw", "db")):
            close(got, want.numpy(), np.float64, f"training={training} {n}", 1e-10)


# ===================================================== local response norm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,size", [((2, 7, 5, 6), 5), ((1, 3, 4, 4), 5), ((2, 9, 3, 5), 4), ((1, 6, 2), 1),
                                        ((3, 5, 2, 2, 3), 3), ((1, 11, 13, 17), 2)], ids=str)
@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_lrn_forward(rng, dtype, shape, size, beta):
    x = randn(rng, shape, dtype, 3.0)
    close(L.local_response_norm(x, size, 1e-2, beta, 2.0), R.lrn(x, size, 1e-2, beta, 2.0), dtype)
    close(L.local_response_norm(x, size), R.lrn(x, size), dtype)


def test_lrn_large_tile(rng):
    # more spatial positions than one tile, AlexNet channel count
    x = randn(rng, (1, 96, 37, 41), np.float32)
    close(L.local_response_norm(x, 5, 1e-3, 0.75, 1.0), R.lrn(x, 5, 1e-3, 0.75, 1.0), np.float32)


@pytest.mark.parametrize("shape,size,beta", [((2, 7, 5, 6), 5, 0.75), ((1, 4, 3, 3), 6, 0.6), ((2, 9, 3, 5), 4, 1.0),
                                             ((1, 96, 5, 71), 5, 0.75)], ids=str)
def test_lrn_backward(rng, shape, size, beta):
    x, g, v = randn(rng, shape, scale=2.0), randn(rng, shape), randn(rng, shape)
    dx = L.local_response_norm_backward(g, x, size, 0.05, beta, 1.5)
    fd = (R.directional_fd(lambda z: R.lrn(z, size, 0.05, beta, 1.5), x, v) * g).sum()
    assert abs(fd - (dx * v).sum()) <= 1e-6 * max(1, abs(fd))
    dx32 = L.local_response_norm_backward(g.astype(np.float32), x.astype(np.float32), size, 0.05, beta, 1.5)
    close(dx32, dx, np.float32, tol=1e-5)


def test_lrn_vs_torch(rng):
    torch = torch_or_skip()
    for shape, size in (((2, 10, 4, 5), 5), ((1, 7, 6), 3), ((2, 5, 3, 3, 2), 4)):
        x, g = randn(rng, shape, scale=3.0), randn(rng, shape)
        tx = T(x).requires_grad_()
        ty = torch.nn.functional.local_response_norm(tx, size, 0.1, 0.75, 1.0)
        ty.backward(T(g))
        close(L.local_response_norm(x, size, 0.1, 0.75, 1.0), ty.detach().numpy(), np.float64)
        close(L.local_response_norm_backward(g, x, size, 0.1, 0.75, 1.0), tx.grad.numpy(), np.float64)


# ============================================================== activations
ACTS = [("relu", L.relu, L.relu_backward, R.relu), ("sigmoid", L.sigmoid, L.sigmoid_backward, R.sigmoid),
        ("tanh", L.tanh, L.tanh_backward, R.tanh)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,fwd,bwd,ref", ACTS, ids=[a[0] for a in ACTS])
@pytest.mark.parametrize("shape", [(1,), (3, 5), (2, 3, 17, 19), (40000,), ()], ids=str)
def test_activation(rng, dtype, name, fwd, bwd, ref, shape):
    x = randn(rng, shape, dtype, 3.0)
    y = fwd(x)
    close(y, ref(x), dtype, f"{name} forward", 2e-7 if dtype == np.float32 else 1e-15)
    g = randn(rng, shape, dtype)
    dx = bwd(g, y)
    y64 = y.astype(np.float64)  # the backward is checked on the output it is given
    want = {"relu": g * (y64 > 0), "sigmoid": g * y64 * (1 - y64), "tanh": g * (1 - y64 ** 2)}[name]
    close(dx, want, dtype, f"{name} backward", 1e-6 if dtype == np.float32 else 1e-14)
    if dtype == np.float64 and shape == (3, 5):
        v = randn(rng, shape)
        fd = (R.directional_fd(ref, x, v) * g).sum()
        assert abs(fd - (dx * v).sum()) <= 1e-6 * max(1, abs(fd))


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_extremes_and_precision(dtype):
    x = np.array([-1e30, -200, -90, -88, -30, -1e-3, -1e-7, 0, 1e-7, 1e-3, 0.29, 0.31, 30, 90, 200, 1e30,
                  np.inf, -np.inf], dtype)
    for f, r in ((L.sigmoid, R.sigmoid), (L.tanh, R.tanh)):
        y = f(x)
        assert np.all(np.isfinite(y))
        want = r(x)
        # elementwise relative accuracy (not only relative to the largest value)
        # (results below the smallest normal number may flush to zero)
        err = np.abs(y - want) - np.finfo(dtype).tiny
        rel = err / np.abs(np.where(want == 0, 1, want))
        assert rel.max() <= (5e-7 if dtype == np.float32 else 1e-15), (f.__name__, x[rel.argmax()], rel.max())
    assert np.isnan(L.relu(np.array([np.nan], dtype)))[0]
    np.testing.assert_array_equal(L.relu(x), np.maximum(x, 0))


def test_relu_backward_takes_input_or_output(rng):
    x = randn(rng, (5, 6))
    g = randn(rng, (5, 6))
    np.testing.assert_array_equal(L.relu_backward(g, x), L.relu_backward(g, L.relu(x)))
    # zero where the output is <= 0 only: a NaN output passes the gradient (torch's threshold_backward)
    for dtype in DTYPES:
        out = np.array([np.nan, -0.0, 0.0, -1.0, 2.0] * 7000, dtype)  # past one chunk: the threaded path too
        got = L.relu_backward(np.full(out.shape, 3, dtype), out)
        np.testing.assert_array_equal(got, np.where(np.isnan(out) | (out > 0), 3, 0).astype(dtype))


def test_activations_vs_torch(rng):
    torch = torch_or_skip()
    x, g = randn(rng, (4, 7, 9), scale=4.0), randn(rng, (4, 7, 9))
    for fwd, bwd, tf in ((L.relu, L.relu_backward, torch.relu), (L.sigmoid, L.sigmoid_backward, torch.sigmoid),
                         (L.tanh, L.tanh_backward, torch.tanh)):
        tx = T(x).requires_grad_()
        ty = tf(tx)
        ty.backward(T(g))
        y = fwd(x)
        close(y, ty.detach().numpy(), np.float64, fwd.__name__, 1e-14)
        close(bwd(g, y), tx.grad.numpy(), np.float64, fwd.__name__ + " backward", 1e-13)


# ================================================================== softmax
SM_SHAPES = [((7,), 0), ((3, 1000), 1), ((3, 1000), -1), ((4, 5, 6), 1), ((4, 5, 6), 0), ((2, 3, 17, 19), 1),
             ((2, 3, 4, 5), -4), ((1, 1), 0), ((5, 1), 1), ((3, 2000, 3), 1), ((2, 2500), -1), ((4, 17), 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", SM_SHAPES, ids=str)
def test_softmax(rng, dtype, shape, dim):
    x = randn(rng, shape, dtype, 5.0)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    y = L.softmax(x, dim)
    close(y, R.softmax(x, dim), dtype, "softmax", tol)
    ly = L.log_softmax(x, dim)
    close(ly, R.log_softmax(x, dim), dtype, "log_softmax", tol)
    g = randn(rng, shape, dtype)
    y64, ly64 = R.softmax(x, dim), R.log_softmax(x, dim)
    want = y64 * (g - (g * y64).sum(axis=dim, keepdims=True))
    close(L.softmax_backward(g, y, dim), want, dtype, "softmax backward", 20 * tol)
    want_l = g - np.exp(ly64) * g.sum(axis=dim, keepdims=True)
    close(L.log_softmax_backward(g, ly, dim), want_l, dtype, "log_softmax backward", 20 * tol)
    if dtype == np.float64 and np.prod(shape) < 1000:
        v = randn(rng, shape)
        for f, bw, yy in ((R.softmax, L.softmax_backward, y), (R.log_softmax, L.log_softmax_backward, ly)):
            fd = (R.directional_fd(lambda z: f(z, dim), x, v) * g).sum()
            assert abs(fd - (bw(g, yy, dim) * v).sum()) <= 1e-6 * max(1, abs(fd))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_stable(dtype):
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1001.0, -np.inf], [0.0, -np.inf, -np.inf]], dtype)
    y = L.softmax(x, 1)
    assert np.all(np.isfinite(y))
    close(y, R.softmax(np.where(np.isinf(x), -1e30, x.astype(np.float64)), 1), dtype, tol=1e-6)
    assert y[2, 1] == 0 and y[2, 2] == 0 and y[2, 0] == 1
    ly = L.log_softmax(x, 1)
    # float32 spacing at 1000 is 6e-5: x - (max + log sum) is exact only to that
    np.testing.assert_allclose(ly[0], [-1.4076059644443806, -0.4076059644443806, -2.4076059644443806],
                               rtol=1e-4 if dtype == np.float32 else 1e-8)
    assert ly[1, 2] == -np.inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_nan_rows(dtype):
    # a NaN anywhere in a row (first element, the vector body, the tail past the last full
    # vector; a NaN larger or smaller than nothing) makes that whole row NaN, as torch; an
    # all -inf row is NaN too; the other rows are untouched
    x = np.random.default_rng(5).standard_normal((5, 1000)).astype(dtype)
    x[0, 0] = x[1, 517] = x[2, 999] = np.nan
    x[3, :] = -np.inf
    for f in (L.softmax, L.log_softmax):
        y = f(x, 1)
        assert np.isnan(y[:4]).all()
        ref = (R.softmax if f is L.softmax else R.log_softmax)(x[4:].astype(np.float64), 1)
        close(y[4:], ref, dtype, "clean row", 2e-6 if dtype == np.float32 else 1e-13)


def test_softmax_exp_accuracy():
    # the float exp inside softmax, directly: rows [0, t, ..., t] (17 wide: a full vector and a
    # masked tail) give y[k] / y[0] = exp(t); within 4 ulp of float64 exp over [-87, 0] (normal
    # results), and exactly 0 from t = -104 (below half the smallest subnormal) down to -inf
    t = np.concatenate([np.linspace(-87.0, 0.0, 40001), [-1e-7, -0.5 * np.log(2), -np.log(2)]]).astype(np.float32)
    x = np.zeros((t.size, 17), np.float32)
    x[:, 1:] = t[:, None]
    y = L.softmax(x, 1).astype(np.float64)
    want = np.exp(t.astype(np.float64))
    for k in (1, 16):
        rel = np.abs(y[:, k] / y[:, 0] - want) / want
        assert rel.max() <= 4 * 2.0 ** -23, f"column {k}: max rel err {rel.max():.2e} at t={t[rel.argmax()]}"
    x2 = np.zeros((4, 17), np.float32)
    x2[:, 1:] = np.array([-104.0, -120.0, -1e30, -np.inf], np.float32)[:, None]
    y2 = L.softmax(x2, 1)
    assert np.all(y2[:, 1:] == 0) and np.all(y2[:, 0] == 1)


def test_softmax_vs_torch(rng):
    torch = torch_or_skip()
    F = torch.nn.functional
    x, g = randn(rng, (3, 4, 5), scale=4.0), randn(rng, (3, 4, 5))
    for dim in (0, 1, 2, -1):
        for ours, bw, tf in ((L.softmax, L.softmax_backward, F.softmax), (L.log_softmax, L.log_softmax_backward,
                                                                          F.log_softmax)):
            tx = T(x).requires_grad_()
            ty = tf(tx, dim)
            ty.backward(T(g))
            y = ours(x, dim)
            close(y, ty.detach().numpy(), np.float64, tol=1e-14)
            close(bw(g, y, dim), tx.grad.numpy(), np.float64, tol=1e-13)


# ============================================================ cross entropy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C", [(1, 1), (1, 10), (7, 3), (64, 1000), (5, 33)])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(rng, dtype, N, C, eps, reduction):
    z = randn(rng, (N, C), dtype, 3.0)
    t = rng.integers(0, C, N)
    loss, grad = L.cross_entropy(z, t, label_smoothing=eps, reduction=reduction)
    want = R.cross_entropy(z, t, eps, reduction)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(np.asarray(loss, np.float64), want, rtol=tol, atol=tol)
    assert np.asarray(loss).dtype == np.dtype(dtype)
    # gradient of the returned (reduced) loss; 'none' -> gradient of loss.sum()
    z64 = z.astype(np.float64)
    v = randn(rng, (N, C))
    red = (lambda q: R.cross_entropy(q, t, eps, reduction).sum())
    fd = R.directional_fd(red, z64, v, 1e-5)
    assert abs(fd - (grad.astype(np.float64) * v).sum()) <= (2e-5 if dtype == np.float32 else 1e-7) * max(1, abs(fd))
    assert grad.dtype == np.dtype(dtype) and grad.shape == (N, C)


def test_cross_entropy_ignore_index_vs_torch(rng):
    torch = torch_or_skip()
    F = torch.nn.functional
    z = randn(rng, (9, 6), scale=2.0)
    t = rng.integers(0, 6, 9)
    t[[1, 4]] = -100
    for eps in (0.0, 0.3):
        for reduction in ("mean", "sum", "none"):
            tz = T(z).requires_grad_()
            tl = F.cross_entropy(tz, torch.from_numpy(t), label_smoothing=eps, reduction=reduction)
            tl.sum().backward()
            loss, grad = L.cross_entropy(z, t, eps, reduction)
            np.testing.assert_allclose(loss, tl.detach().numpy(), rtol=1e-12, atol=1e-14)
            close(grad, tz.grad.numpy(), np.float64, f"{eps} {reduction}", 1e-12)
    assert not grad[1].any() and not grad[4].any()
    loss, grad = L.cross_entropy(z, np.full(9, 3), ignore_index=3)
    assert np.isnan(loss) and not grad.any()
    for big in (2**63, -2**63 - 1, 2**70):  # torch: "Overflow when unpacking long long"
        with pytest.raises(ValueError, match=r"ignore_index=.*does not fit in int64"):
            L.cross_entropy(z, t, ignore_index=big)
    t = np.where(t < 0, -2**63, t)  # the smallest int64 is a valid ignore_index
    np.testing.assert_allclose(L.cross_entropy(z, t, ignore_index=-2**63)[0],
                               F.cross_entropy(T(z), torch.from_numpy(t), ignore_index=-2**63).item(), rtol=1e-12)


def test_cross_entropy_extreme_logits():
    z = np.array([[1e4, 0, -1e4], [-1e4, 1e4, 0]], np.float32)
    loss, grad = L.cross_entropy(z, np.array([2, 1]))
    np.testing.assert_allclose(loss, 1e4, rtol=1e-6)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, [[0.5, 0, -0.5], [0, 0, 0]], atol=1e-6)


def test_cross_entropy_uint64_targets_past_int64():
    """A uint64 class index past 2^63 is out of range with its own value in the message; cast to
    int64 it would wrap (2^64 - 100 into the default ignore_index -100: a row silently ignored)."""
    z = np.zeros((3, 4))
    for bad in (2 ** 64 - 100, 2 ** 63 + 5):
        t = np.array([1, bad, 2], np.uint64)
        with pytest.raises(ValueError, match=rf"target\[1\] = {bad} is out of range"):
            L.cross_entropy(z, t)
    loss, _ = L.cross_entropy(z, np.array([1, 3, 2], np.uint64))
    np.testing.assert_allclose(loss, np.log(4), rtol=1e-15)


# ================================================================== dropout
def test_dropout_determinism(rng, threads):
    x = randn(rng, (8, 16, 33, 35), np.float32)
    fastconv.set_num_threads(1)
    y1, m1 = L.dropout(x, 0.3, seed=1234)
    fastconv.set_num_threads(2)
    y2, m2 = L.dropout(x, 0.3, seed=1234)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(y1, y2)
    y3, m3 = L.dropout(x, 0.3, seed=1235)
    assert (m3 != m1).mean() > 0.3
    g = L.Generator(7)
    a = L.dropout(x, 0.5, seed=g)[1]
    b = L.dropout(x, 0.5, seed=g)[1]
    assert (a != b).mean() > 0.4  # the generator advanced
    g2 = L.Generator(7)
    np.testing.assert_array_equal(L.dropout(x, 0.5, seed=g2)[1], a)
    np.testing.assert_array_equal(L.dropout(x, 0.5, seed=g2)[1], b)
    # a generator's stream does not depend on how it is cut into calls
    g3 = L.Generator(7)
    flat = L.dropout(np.concatenate([x.ravel(), x.ravel()]), 0.5, seed=g3)[1]
    np.testing.assert_array_equal(flat, np.concatenate([a.ravel(), b.ravel()]))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_values_and_rate(rng, p, dtype):
    n = 200_000
    x = randn(rng, (n,), dtype)
    y, m = L.dropout(x, p, seed=int(p * 100))
    assert m.dtype == bool and m.shape == x.shape
    keep = m.mean()
    sd = np.sqrt(p * (1 - p) / n)
    assert abs(keep - (1 - p)) < 5 * sd, (keep, 1 - p)
    np.testing.assert_allclose(y[m], x[m] / dtype(1 - p), rtol=1e-6 if dtype == np.float32 else 1e-15)
    assert not y[~m].any()
    # no structure across neighbours: pairs (i, i+1) are kept independently
    both = (m[:-1] & m[1:]).mean()
    assert abs(both - (1 - p) ** 2) < 6 * np.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / n)
    g = randn(rng, (n,), dtype)
    dx = L.dropout_backward(g, m, p)
    np.testing.assert_allclose(dx, np.where(m, g / (1 - p), 0), rtol=1e-6 if dtype == np.float32 else 1e-15)


def test_dropout_edge_cases(rng):
    x = randn(rng, (3, 4), np.float32)
    for kw in ({"p": 0.0}, {"p": 0.7, "training": False}):
        y, m = L.dropout(x, seed=1, **kw)
        np.testing.assert_array_equal(y, x)
        assert m.all() and y is not x
    y, m = L.dropout(x, 1.0, seed=1)
    assert not y.any() and not m.any()
    assert not L.dropout_backward(x, m, 1.0).any()
    # p = 1 is input * 0 as torch's: signed zeros, NaN for NaN and inf (also in the backward)
    special = np.array([np.nan, np.inf, -np.inf, 1.0, -2.0], np.float32)
    y, m = L.dropout(special, 1.0, seed=1)
    np.testing.assert_array_equal(y, [np.nan, np.nan, np.nan, 0.0, -0.0])
    np.testing.assert_array_equal(np.signbit(y[3:]), [False, True])
    assert y.dtype == np.float32 and not m.any()
    np.testing.assert_array_equal(L.dropout_backward(special, m, 1.0), [np.nan, np.nan, np.nan, 0.0, -0.0])
    y, m = L.dropout(x, 0.5)  # seed None: random, but consistent with its mask
    np.testing.assert_allclose(y, np.where(m, 2 * x, 0))
    with pytest.raises(ValueError, match="p"):
        L.dropout(x, 1.5)
    with pytest.raises(TypeError, match="seed"):
        L.dropout(x, 0.5, seed="abc")


# =================================================================== linear
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xshape,O", [((1, 7), 3), ((5,), 4), ((3, 5, 7), 9), ((64, 300), 129), ((2, 1), 1),
                                      ((17, 33), 1)], ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear(rng, dtype, xshape, O, with_bias):
    I = xshape[-1]
    x, w = randn(rng, xshape, dtype), randn(rng, (O, I), dtype)
    b = randn(rng, O, dtype) if with_bias else None
    y = L.linear(x, w, b)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    close(y, R.linear(x, w, b), dtype, "linear", tol)
    g = randn(rng, y.shape, dtype)
    dx, dw, db = L.linear_backward(g, x, w)
    g64, x64 = g.astype(np.float64).reshape(-1, O), x.astype(np.float64).reshape(-1, I)
    close(dx, (g64 @ w.astype(np.float64)).reshape(x.shape), dtype, "grad_input", tol)
    close(dw, g64.T @ x64, dtype, "grad_weight", tol)
    close(db, g64.sum(0), dtype, "grad_bias", tol)
    dx2, dw2, db2 = L.linear_backward(g, x, w, needs=(False, True, False))
    assert dx2 is None and db2 is None
    np.testing.assert_array_equal(dw2, dw)
    if dtype == np.float64:
        v = randn(rng, w.shape)
        fd = (R.directional_fd(lambda q: R.linear(x, q, b), w, v) * g).sum()
        assert abs(fd - (dw * v).sum()) <= 1e-6 * max(1, abs(fd))


def test_linear_vs_torch(rng):
    torch = torch_or_skip()
    x, w, b = randn(rng, (2, 3, 11)), randn(rng, (6, 11)), randn(rng, 6)
    g = randn(rng, (2, 3, 6))
    tx, tw, tb = (T(a).requires_grad_() for a in (x, w, b))
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(T(g))
    close(L.linear(x, w, b), ty.detach().numpy(), np.float64, tol=1e-13)
    for got, want in zip(L.linear_backward(g, x, w), (tx.grad, tw.grad, tb.grad)):
        close(got, want.numpy(), np.float64, tol=1e-13)


def test_linear_empty():
    y = L.linear(np.ones((0, 4)), np.ones((3, 4)), np.ones(3))
    assert y.shape == (0, 3)
    y = L.linear(np.ones((2, 0)), np.ones((3, 0)), np.arange(3.0))
    np.testing.assert_array_equal(y, [[0, 1, 2], [0, 1, 2]])
    dx, dw, db = L.linear_backward(np.ones((0, 3)), np.ones((0, 4)), np.ones((3, 4)))
    assert dx.shape == (0, 4) and not dw.any() and not db.any()


# ================================================ fused conv bias + ReLU epilogue
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,ws,kw", [((2, 3, 9, 8), (5, 3, 3, 3), dict(padding=1)),
                                      ((1, 8, 7, 7), (6, 8, 1, 1), {}),
                                      ((2, 4, 6, 9), (4, 4, 1, 3), dict(padding=(0, 1))),
                                      ((1, 6, 8, 8), (6, 2, 3, 3), dict(groups=3, stride=2))], ids=str)
def test_conv2d_relu_epilogue(rng, dtype, xs, ws, kw):
    x, w, b = randn(rng, xs, dtype), randn(rng, ws, dtype), randn(rng, ws[0], dtype)
    algos = ops.algorithms_for(xs, ws, **kw)
    assert "direct" in algos
    for algo in algos:
        for bias in (b, None):
            plain = ops.conv2d(x, w, bias, algo=algo, **kw)
            fused = ops.conv2d(x, w, bias, algo=algo, activation="relu", **kw)
            np.testing.assert_array_equal(fused, L.relu(plain), err_msg=algo)
            assert (fused == 0).any() and (fused > 0).any()
    # a NaN stays NaN through the epilogue, as through ops.relu (the vector max once returned 0),
    # under every ISA build of the GEMM micro-kernels
    from fastconv.backends import cpu
    xn = x.copy()
    xn[0, 0, 0, 0] = np.nan
    before = cpu.isa() if cpu.CPU_AVAILABLE else None
    try:
        for isa in cpu.available_isas() if cpu.CPU_AVAILABLE else [None]:
            if isa:
                cpu.set_isa(isa)
            for algo in algos:
                plain = ops.conv2d(xn, w, b, algo=algo, **kw)
                fused = ops.conv2d(xn, w, b, algo=algo, activation="relu", **kw)
                assert np.isnan(plain).any()
                np.testing.assert_array_equal(fused, L.relu(plain), err_msg=f"{algo} {isa}")
    finally:
        if before:
            cpu.set_isa(before)


# ============================================ determinism over thread counts
def test_bit_identical_across_threads(rng, threads):
    x = randn(rng, (4, 24, 30, 31), np.float32, 2.0, 1.0)
    g = randn(rng, x.shape, np.float32)
    z = randn(rng, (300, 500), np.float32)
    t = rng.integers(0, 500, 300)
    w = randn(rng, 24, np.float32)

    def run():
        y, sm, si = L.batch_norm_forward_train(x, w, None)
        return [y, sm, si, *L.batch_norm_backward(g, x, w, sm, si), L.local_response_norm(x, 5),
                L.local_response_norm_backward(g, x, 5), L.softmax(x, 1), L.log_softmax(z, 1),
                L.softmax_backward(g, L.softmax(x, 1), 1), *L.cross_entropy(z, t, 0.1), L.tanh(x),
                *L.linear_backward(z[:, :48], z[:, :40], z[:48, :40])]

    fastconv.set_num_threads(1)
    one = run()
    fastconv.set_num_threads(2)
    two = run()
    for i, (a, b) in enumerate(zip(one, two)):
        np.testing.assert_array_equal(a, b, err_msg=f"result {i}")


# ================================================================ bad input
def check(exc, fn, names, numbers=()):
    with pytest.raises(exc) as ei:
        fn()
    msg = str(ei.value)
    names = (names,) if isinstance(names, str) else names
    assert any(re.search(n, msg, re.IGNORECASE) for n in names), f"message {msg!r} names none of {names}"
    for n in numbers:
        assert re.search(rf"(?<![\d.]){n}(?![\d.])", msg), f"message {msg!r} does not show {n}"


X4 = np.zeros((2, 3, 4, 5), np.float32)
I4 = np.zeros((2, 3, 4, 5), np.int64)
BAD = [
    ("bn_int", TypeError, lambda: L.batch_norm(I4, np.zeros(3), np.ones(3)), "input", ()),
    ("bn_weight_shape", ValueError, lambda: L.batch_norm(X4, np.zeros(3), np.ones(3), np.ones(4, np.float32)),
     "weight", (3, 4)),
    ("bn_mean_shape", ValueError, lambda: L.batch_norm(X4, np.zeros(2), np.ones(3)), "running_mean", (3, 2)),
    ("bn_1d", ValueError, lambda: L.batch_norm(np.zeros(5, np.float32), None, None, training=True), "input", (1,)),
    ("bn_one_value", ValueError, lambda: L.batch_norm(np.zeros((1, 3), np.float32), None, None, training=True),
     ("value", "input"), ()),
    ("bn_eval_no_stats", ValueError, lambda: L.batch_norm(X4, None, None), "running", ()),
    ("bn_dtype_mix", TypeError, lambda: L.batch_norm(X4, np.zeros(3), np.ones(3), np.ones(3)), "dtype", ()),
    ("bn_bwd_shape", ValueError, lambda: L.batch_norm_backward(X4[:1], X4, None, np.zeros(3), np.ones(3)),
     "grad_output", (1, 2)),
    ("bn_neg_eps", ValueError, lambda: L.batch_norm(X4, np.zeros(3), np.ones(3), eps=-1), "eps", ()),
    ("lrn_size0", ValueError, lambda: L.local_response_norm(X4, 0), "size", (0,)),
    ("lrn_size_float", TypeError, lambda: L.local_response_norm(X4, 2.5), "size", ()),
    ("lrn_2d", ValueError, lambda: L.local_response_norm(X4[0, 0], 3), "input", (2,)),
    ("lrn_int", TypeError, lambda: L.local_response_norm(I4, 3), "input", ()),
    ("relu_int", TypeError, lambda: L.relu(I4), ("input", "int64"), ()),
    ("sigmoid_bool", TypeError, lambda: L.sigmoid(np.ones(3, bool)), "input", ()),
    ("tanh_bwd_shape", ValueError, lambda: L.tanh_backward(X4, X4[0]), ("grad_output", "output"), ()),
    ("softmax_dim", ValueError, lambda: L.softmax(X4, 4), "dim", (4,)),
    ("softmax_dim_neg", ValueError, lambda: L.log_softmax(X4, -5), "dim", (-5,)),
    ("softmax_dim_float", TypeError, lambda: L.softmax(X4, 1.0), "dim", ()),
    ("softmax_int", TypeError, lambda: L.softmax(I4, 1), "input", ()),
    ("ce_target_range", ValueError, lambda: L.cross_entropy(np.zeros((3, 4)), np.array([0, 4, 1])), "target",
     (4,)),
    ("ce_target_neg", ValueError, lambda: L.cross_entropy(np.zeros((3, 4)), np.array([0, -1, 1])), "target",
     (-1,)),
    ("ce_target_float", TypeError, lambda: L.cross_entropy(np.zeros((3, 4)), np.array([0.0, 1, 1])), "target",
     ()),
    ("ce_target_shape", ValueError, lambda: L.cross_entropy(np.zeros((3, 4)), np.array([0, 1])), "target",
     (3, 2)),
    ("ce_input_3d", ValueError, lambda: L.cross_entropy(np.zeros((3, 4, 2)), np.array([0, 1, 1])), "input", ()),
    ("ce_int_logits", TypeError, lambda: L.cross_entropy(np.zeros((3, 4), int), np.array([0, 1, 1])), "input",
     ()),
    ("ce_reduction", ValueError, lambda: L.cross_entropy(np.zeros((3, 4)), np.array([0, 1, 1]), reduction="avg"),
     "reduction", ()),
    ("ce_smoothing", ValueError, lambda: L.cross_entropy(np.zeros((3, 4)), np.array([0, 1, 1]), 1.5),
     "label_smoothing", ()),
    ("dropout_p", ValueError, lambda: L.dropout(X4, -0.1), "p", ()),
    ("dropout_int", TypeError, lambda: L.dropout(I4, 0.5), "input", ()),
    ("dropout_mask_dtype", TypeError, lambda: L.dropout_backward(X4, np.ones(X4.shape), 0.5), "mask", ()),
    ("dropout_mask_shape", ValueError, lambda: L.dropout_backward(X4, np.ones((2, 3), bool), 0.5), "mask", ()),
    ("linear_features", ValueError, lambda: L.linear(np.zeros((2, 5)), np.zeros((3, 4))), ("input", "weight"),
     (5, 4)),
    ("linear_weight_1d", ValueError, lambda: L.linear(np.zeros((2, 5)), np.zeros(5)), "weight", ()),
    ("linear_bias", ValueError, lambda: L.linear(np.zeros((2, 5)), np.zeros((3, 5)), np.zeros(4)), "bias",
     (3, 4)),
    ("linear_int", TypeError, lambda: L.linear(np.zeros((2, 5), int), np.zeros((3, 5))), "input", ()),
    ("linear_dtype_mix", TypeError, lambda: L.linear(np.zeros((2, 5)), np.zeros((3, 5), np.float32)), "dtype",
     ()),
    ("linear_bwd_shape", ValueError, lambda: L.linear_backward(np.zeros((2, 4)), np.zeros((2, 5)),
                                                               np.zeros((3, 5))), "grad_output", (4, 3)),
]


@pytest.mark.parametrize("name,exc,fn,names,numbers", BAD, ids=[c[0] for c in BAD])
def test_bad_input(name, exc, fn, names, numbers):
    check(exc, fn, names, numbers)


def test_float16_and_noncontiguous(rng):
    x = randn(rng, (4, 6, 5), np.float32)
    y16 = L.softmax(x.astype(np.float16), 1)
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16, R.softmax(x.astype(np.float16), 1), rtol=2e-3, atol=1e-3)
    xt = x.transpose(2, 1, 0)
    close(L.tanh(xt), R.tanh(xt), np.float32, tol=1e-6)
    close(L.local_response_norm(xt, 3), R.lrn(xt, 3), np.float32)


def _isas():
    from fastconv.backends import cpu
    return cpu.available_isas() if cpu.CPU_AVAILABLE else []


@pytest.mark.parametrize("isa", _isas())
def test_softmax_every_isa(rng, isa):
    # float rows run an AVX-512 kernel when the ISA switch says avx512, the cloned loops otherwise
    from fastconv.backends import cpu
    before = cpu.isa()
    cpu.set_isa(isa)
    try:
        for shape in ((5, 1000), (3, 17), (2, 2500)):
            x = randn(rng, shape, np.float32, 5.0)
            g = randn(rng, shape, np.float32)
            y, ly = L.softmax(x, 1), L.log_softmax(x, 1)
            close(y, R.softmax(x, 1), np.float32, "softmax", 2e-6)
            close(ly, R.log_softmax(x, 1), np.float32, "log_softmax", 2e-6)
            y64 = R.softmax(x, 1)
            close(L.softmax_backward(g, y, 1), y64 * (g - (g * y64).sum(axis=1, keepdims=True)), np.float32,
                  "softmax backward", 4e-5)
    finally:
        cpu.set_isa(before)


def test_big_endian_float64_computes_in_float64(rng):
    """Arrays in non-native byte order (big-endian data read from a file) give the native array's
    results bit for bit, in native order: every op compares dtypes with the native float64, so a
    '>f8' array computed in float32 before. Long double is refused with a TypeError."""
    x = randn(rng, (4, 3, 5, 5))
    w = randn(rng, (6, 3, 3, 3))
    lw = randn(rng, (7, 75))
    for fn in (lambda a, b: L.softmax(a, 1), lambda a, b: L.log_softmax(a, -1),
               lambda a, b: L.batch_norm(a, None, None, training=True),
               lambda a, b: L.local_response_norm(a, 3), lambda a, b: L.sigmoid(a),
               lambda a, b: L.linear(a.reshape(4, 75), b),
               lambda a, b: ops.conv2d(a, w.astype(a.dtype), padding=1)):
        got, want = fn(x.astype(">f8"), lw.astype(">f8")), fn(x, lw)
        assert got.dtype == want.dtype == np.float64
        np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="input must be a floating-point array"):
        L.relu(x.astype(np.longdouble))
    with pytest.raises(TypeError, match="weight must be a floating-point array"):
        ops.conv2d(x, w.astype(np.longdouble))
