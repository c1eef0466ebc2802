"""One suite, every backend: the same problems through each backend in
``fastconv.backends.available()`` (collected at run time, so a backend
registered later, e.g. "numba-cuda", is picked up without editing this file),
checked against the independent float64 references (tests/reference.py,
pool_reference.py, layers_reference.py).

* convolution: Fprop (with and without bias), Dgrad and Wgrad for every
  algorithm the backend's ``supports`` accepts (the others skip, giving its
  reason);
* every pooling op forward and backward (random upstream gradients), ties and
  NaNs included;
* every layer op forward and backward.

A backend without a pooling/layer kernel of its own would only run another
backend's (``layer_kernel(name, b)[1] != b``): those cases skip with that
reason instead of testing the other backend twice. Problems are seeded random
configurations plus fixed edge cases (odd sizes, stride > kernel, 1x1 inputs,
dilation, groups); shapes stay small because "cuda-emu" hands a baton between
OS threads at every barrier. The last test checks that every backend's dropout
mask is bit-identical to the compiled module's for the same seed and offset.
"""
import math
import zlib

import numpy as np
import pytest

from fastconv import backends, ops
from fastconv.problem import make_problem

import layers_reference as lref
import pool_reference as pref
import reference as ref
from shapes import ConvSpec

BACKENDS = backends.available()
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
TOL = {np.float32: 2e-5, np.float64: 1e-12}


def _tol(dtype, f32=None, f64=None):
    if dtype == np.float32:
        return f32 if f32 is not None else TOL[np.float32]
    return f64 if f64 is not None else TOL[np.float64]


def close(out, want, dtype, tol=None, what=""):
    """Same shape, the input dtype, and max|out - want| / max|want| <= tol."""
    assert isinstance(out, np.ndarray), f"{what}: got {type(out).__name__}"
    assert out.shape == np.shape(want), f"{what}: shape {out.shape} != {np.shape(want)}"
    assert out.dtype == np.dtype(dtype), f"{what}: dtype {out.dtype} != {np.dtype(dtype)}"
    tol = TOL[dtype] if tol is None else tol
    err = lref.rel_err(out, want)
    assert err <= tol, f"{what}: max|out-ref|/max|ref| = {err:.3e} > {tol:.1e}"


def own_kernels(backend, *names):
    """Skip unless `backend` runs these kernels itself (rather than falling back)."""
    for name in names:
        runs_on = backends.layer_kernel(name, backend)[1]
        if runs_on != backend:
            pytest.skip(f"backend {backend!r} has no {name} kernel of its own (it would run on {runs_on!r})")


# ------------------------------------------------------------- convolution
def _conv_specs():
    fixed = [
        ConvSpec("img1x1_k1x1", 2, 3, 1, 1, 4, 1, 1),
        ConvSpec("img1x1_k3x3_pad1", 1, 2, 1, 1, 3, 3, 3, padding=1),
        ConvSpec("stride3_gt_kernel2", 2, 3, 9, 11, 4, 2, 2, stride=3),
        ConvSpec("dil2_groups2", 1, 4, 9, 8, 6, 3, 3, padding=2, dilation=2, groups=2),
        ConvSpec("depthwise3", 1, 3, 7, 6, 3, 3, 3, padding=1, groups=3),
        ConvSpec("sep_1x5", 1, 3, 6, 9, 4, 1, 5, padding=(0, 2)),
        ConvSpec("sep_3x1_stride21", 1, 3, 7, 5, 2, 3, 1, stride=(2, 1)),
        ConvSpec("even_4x2_same", 1, 2, 7, 6, 3, 4, 2, padding="same"),
    ]
    rng = np.random.default_rng(20261122)
    rand = []
    while len(rand) < 6:
        g = int(rng.integers(1, 4))
        R, S = (int(v) for v in rng.integers(1, 5, 2))
        dh, dw = (int(v) for v in rng.integers(1, 3, 2))
        ph, pw = int(rng.integers(0, R // 2 + 1)), int(rng.integers(0, S // 2 + 1))
        sh, sw = (int(v) for v in rng.integers(1, 4, 2))
        H = max(1, dh * (R - 1) + 1 - 2 * ph) + int(rng.integers(0, 7))
        W = max(1, dw * (S - 1) + 1 - 2 * pw) + int(rng.integers(0, 7))
        spec = ConvSpec(f"rand{len(rand)}", int(rng.integers(1, 3)), g * int(rng.integers(1, 4)), H, W,
                        g * int(rng.integers(1, 4)), R, S, stride=(sh, sw), padding=(ph, pw),
                        dilation=(dh, dw), groups=g)
        if ref.out_size(H, ph, ph, R, sh, dh) > 0 and ref.out_size(W, pw, pw, S, sw, dw) > 0:
            rand.append(spec)
    return fixed + rand


CONV_SPECS = _conv_specs()


def _conv_refs(spec, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{spec.name}/{np.dtype(dtype).name}".encode()))
    pads = ref.resolve_padding(spec.padding, (spec.H, spec.W), (spec.R, spec.S), spec.stride, spec.dilation)
    kw = dict(stride=spec.stride, pads=pads, dilation=spec.dilation, groups=spec.groups)
    x = rng.standard_normal(spec.input_shape).astype(dtype)
    w = rng.standard_normal(spec.weight_shape).astype(dtype)
    b = rng.standard_normal(spec.K).astype(dtype)
    g = rng.standard_normal(ref.output_shape(spec.input_shape, spec.weight_shape, spec.stride, pads,
                                             spec.dilation)).astype(dtype)
    return x, w, b, g, kw


# every (problem, algorithm) pair the ops layer accepts ("1x1" and "separable" only fit some problems)
CONV_CASES = [pytest.param(s, a, id=f"{s.name}-{a}") for s in CONV_SPECS
              for a in ops.algorithms_for(s.input_shape, s.weight_shape, **s.kwargs())]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec,algo", CONV_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv(backend, spec, algo, dtype):
    p = make_problem(spec.input_shape, spec.weight_shape, **spec.kwargs())
    why = backends.module(backend).supports(algo, p)
    if why:
        pytest.skip(f"backend {backend!r}: {why}")
    x, w, b, g, kw = _conv_refs(spec, dtype)
    args = dict(spec.kwargs(), algo=algo, backend=backend)
    what = f"{backend} {spec.name} {algo}"
    close(ops.conv2d(x, w, None, **args), ref.conv2d(x, w, None, **kw), dtype, what=what + " fprop")
    close(ops.conv2d(x, w, b, **args), ref.conv2d(x, w, b, **kw), dtype, what=what + " fprop+bias")
    close(ops.conv2d_input(x.shape, w, g, **args), ref.conv2d_input(x.shape, w, g, **kw), dtype,
          what=what + " dgrad")
    close(ops.conv2d_weight(x, w.shape, g, **args), ref.conv2d_weight(x, w.shape, g, **kw), dtype,
          what=what + " wgrad")


# ----------------------------------------------------------------- pooling
def _pool_configs():
    """(name, input shape, kernel, stride, padding, dilation, ceil_mode): fixed edge cases + seeded random."""
    fixed = [
        ("img1x1_k1", (2, 3, 1, 1), (1, 1), (1, 1), (0, 0), (1, 1), False),
        ("img1x1_k3_pad1", (1, 2, 1, 1), (3, 3), (1, 1), (1, 1), (1, 1), False),
        ("stride3_gt_kernel2", (2, 3, 10, 11), (2, 2), (3, 3), (0, 0), (1, 1), False),
        ("global", (2, 5, 7, 7), (7, 7), (1, 1), (0, 0), (1, 1), False),
        ("odd_ceil", (1, 3, 9, 8), (3, 2), (2, 2), (1, 1), (1, 1), True),
        ("dil2_pad", (1, 2, 11, 9), (3, 3), (2, 1), (1, 1), (2, 2), True),
    ]
    rng = np.random.default_rng(424242)
    rand = []
    while len(rand) < 6:
        kh, kw = (int(v) for v in rng.integers(1, 5, 2))
        sh, sw = (int(v) for v in rng.integers(1, 5, 2))
        ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
        dh, dw = (int(v) for v in rng.integers(1, 3, 2))
        ceil = bool(rng.integers(0, 2))
        H, W = (int(v) for v in rng.integers(1, 14, 2))
        if min(pref.out_size(H, kh, sh, ph, dh, ceil), pref.out_size(W, kw, sw, pw, dw, ceil)) <= 0:
            continue
        rand.append((f"rand{len(rand)}", (int(rng.integers(1, 3)), int(rng.integers(1, 4)), H, W),
                     (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil))
    return fixed + rand


POOL = [pytest.param(c, id=c[0]) for c in _pool_configs()]


def _x(rng, shape, dtype, ties=False):
    if ties:  # few distinct values: many ties inside every window
        return rng.integers(-2, 3, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("kind", ["max", "min"])
@pytest.mark.parametrize("cfg", POOL)
@pytest.mark.parametrize("backend", BACKENDS)
def test_maxmin_pool(backend, cfg, kind, ties, dtype, rng):
    own_kernels(backend, "pool2d_forward", "pool2d_backward")
    _, shape, k, s, p, d, ceil = cfg
    x = _x(rng, shape, dtype, ties)
    fwd = ops.max_pool2d if kind == "max" else ops.min_pool2d
    bwd = ops.max_pool2d_backward if kind == "max" else ops.min_pool2d_backward
    want, want_idx = pref.maxmin_pool(x, kind, k, s, p, d, ceil)
    y, idx = fwd(x, k, s, p, d, ceil, return_indices=True, backend=backend)
    np.testing.assert_array_equal(y, want.astype(dtype))
    np.testing.assert_array_equal(idx, want_idx)  # first extreme in row-major window order
    np.testing.assert_array_equal(fwd(x, k, s, p, d, ceil, backend=backend), y)
    g = rng.standard_normal(want.shape).astype(dtype)
    gwant = pref.maxmin_pool_backward(g, x.shape, want_idx)
    close(bwd(g, x, k, s, p, d, ceil, indices=idx, backend=backend), gwant, dtype, what="backward, indices")
    close(bwd(g, x, k, s, p, d, ceil, backend=backend), gwant, dtype, what="backward, recomputed argmax")
    # unbatched (C, H, W) input
    np.testing.assert_array_equal(fwd(x[0], k, s, p, d, ceil, backend=backend), y[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_maxmin_pool_nan(backend, dtype, rng):
    """A NaN in a window is the result; its index is the last NaN in window order."""
    own_kernels(backend, "pool2d_forward", "pool2d_backward")
    x = rng.standard_normal((2, 3, 8, 9)).astype(dtype)
    x[rng.random(x.shape) < 0.15] = np.nan
    for kind, fwd in (("max", ops.max_pool2d), ("min", ops.min_pool2d)):
        want, want_idx = pref.maxmin_pool(x, kind, 3, 2, 1)
        y, idx = fwd(x, 3, 2, 1, return_indices=True, backend=backend)
        np.testing.assert_array_equal(y, want.astype(dtype))  # NaNs compare equal here
        np.testing.assert_array_equal(idx, want_idx)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_read_only_arrays(backend, rng):
    """Read-only inputs (np.load(mmap_mode="r"), np.frombuffer, a cached batch) are read, not
    refused: every pooling op and backward with read-only input, grad_output and indices gives
    what the writable arrays give."""
    own_kernels(backend, "pool2d_forward", "pool2d_backward", "adaptive_pool2d_forward", "adaptive_pool2d_backward")

    def frozen(a):
        a = a.copy()
        a.flags.writeable = False
        return a

    x = rng.standard_normal((2, 3, 7, 6))
    y, i = ops.max_pool2d(x, 3, 2, 1, return_indices=True, backend=backend)
    ya, ia = ops.adaptive_max_pool2d(x, (3, 2), return_indices=True, backend=backend)
    g, ga = rng.standard_normal(y.shape), rng.standard_normal(ya.shape)
    calls = [
        lambda x, g, i, ga, ia: ops.max_pool2d(x, 3, 2, 1, return_indices=True, backend=backend),
        lambda x, g, i, ga, ia: ops.min_pool2d(x, 3, 2, 1, backend=backend),
        lambda x, g, i, ga, ia: ops.avg_pool2d(x, 3, 2, 1, backend=backend),
        lambda x, g, i, ga, ia: ops.adaptive_avg_pool2d(x, (3, 2), backend=backend),
        lambda x, g, i, ga, ia: ops.adaptive_max_pool2d(x, (3, 2), return_indices=True, backend=backend),
        lambda x, g, i, ga, ia: ops.max_pool2d_backward(g, x, 3, 2, 1, indices=i, backend=backend),
        lambda x, g, i, ga, ia: ops.min_pool2d_backward(g, x, 3, 2, 1, backend=backend),
        lambda x, g, i, ga, ia: ops.avg_pool2d_backward(g, x, 3, 2, 1, backend=backend),
        lambda x, g, i, ga, ia: ops.adaptive_avg_pool2d_backward(ga, x, backend=backend),
        lambda x, g, i, ga, ia: ops.adaptive_max_pool2d_backward(ga, x, (3, 2), indices=ia, backend=backend),
    ]
    for n, call in enumerate(calls):
        want = call(x, g, i, ga, ia)
        got = call(frozen(x), frozen(g), frozen(i), frozen(ga), frozen(ia))
        for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            np.testing.assert_array_equal(a, b, err_msg=f"call {n}")


def _avg_variants():
    return [pytest.param(True, None, id="include_pad"), pytest.param(False, None, id="exclude_pad"),
            pytest.param(True, 5, id="divisor5"), pytest.param(False, -3, id="divisor-3")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cip,div", _avg_variants())
@pytest.mark.parametrize("cfg", POOL)
@pytest.mark.parametrize("backend", BACKENDS)
def test_avg_pool(backend, cfg, cip, div, dtype, rng):
    own_kernels(backend, "pool2d_forward", "pool2d_backward")
    _, shape, k, s, p, _, ceil = cfg  # avg pooling has no dilation
    if min(pref.out_size(shape[2], k[0], s[0], p[0], 1, ceil), pref.out_size(shape[3], k[1], s[1], p[1], 1, ceil)) <= 0:
        pytest.skip("no output without the configuration's dilation")
    x = _x(rng, shape, dtype)
    want = pref.avg_pool(x, k, s, p, ceil, cip, div)
    close(ops.avg_pool2d(x, k, s, p, ceil, cip, div, backend=backend), want, dtype, what="avg forward")
    g = rng.standard_normal(want.shape).astype(dtype)
    close(ops.avg_pool2d_backward(g, x, k, s, p, ceil, cip, div, backend=backend),
          pref.avg_pool_backward(g, x.shape, k, s, p, ceil, cip, div), dtype, what="avg backward")


ADAPTIVE = [pytest.param(shape, out, id=f"{shape[2]}x{shape[3]}to{out[0]}x{out[1]}") for shape, out in (
    ((2, 3, 9, 7), (4, 3)), ((1, 2, 5, 6), (5, 6)), ((2, 2, 7, 7), (1, 1)), ((1, 3, 1, 1), (2, 3)),
    ((1, 2, 4, 10), (7, 3)), ((2, 1, 13, 11), (5, 4)))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,out", ADAPTIVE)
@pytest.mark.parametrize("backend", BACKENDS)
def test_adaptive_pool(backend, shape, out, dtype, rng):
    own_kernels(backend, "adaptive_pool2d_forward", "adaptive_pool2d_backward")
    x = _x(rng, shape, dtype, ties=shape[2] > 8)
    want, _ = pref.adaptive_pool(x, out, "avg")
    close(ops.adaptive_avg_pool2d(x, out, backend=backend), want, dtype, what="adaptive avg")
    g = rng.standard_normal(want.shape).astype(dtype)
    close(ops.adaptive_avg_pool2d_backward(g, x, backend=backend), pref.adaptive_avg_backward(g, x.shape), dtype,
          what="adaptive avg backward")
    want, want_idx = pref.adaptive_pool(x, out, "max")
    y, idx = ops.adaptive_max_pool2d(x, out, return_indices=True, backend=backend)
    np.testing.assert_array_equal(y, want.astype(dtype))
    np.testing.assert_array_equal(idx, want_idx)
    gwant = pref.maxmin_pool_backward(g, x.shape, want_idx)
    close(ops.adaptive_max_pool2d_backward(g, x, out, indices=idx, backend=backend), gwant, dtype,
          what="adaptive max backward, indices")
    close(ops.adaptive_max_pool2d_backward(g, x, out, backend=backend), gwant, dtype,
          what="adaptive max backward, recomputed argmax")


# ------------------------------------------------------------- batch norm
BN_SHAPES = [pytest.param(s, id="x".join(map(str, s))) for s in
             ((7, 3), (2, 4, 5), (3, 2, 5, 7), (1, 3, 1, 1, 9), (2, 1, 65, 1))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm(backend, shape, affine, dtype, rng):
    own_kernels(backend, "bn_stats", "bn_apply", "bn_backward")
    C = shape[1]
    x = (rng.standard_normal(shape) * 3 + 5).astype(dtype)  # |mean| > std: the shifted moments matter
    w = rng.standard_normal(C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    eps = 1e-3
    y, mean, invstd = ops.batch_norm_forward_train(x, w, b, eps, backend=backend)
    ywant, mwant, vwant = lref.batch_norm_train(x, w, b, eps)
    close(y, ywant, dtype, _tol(dtype, 5e-5, 1e-11), "train forward")
    np.testing.assert_allclose(mean, mwant, rtol=_tol(dtype, 1e-6, 1e-12), atol=0)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(vwant + eps), rtol=_tol(dtype, 1e-5, 1e-11))
    g = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = ops.batch_norm_backward(g, x, w, mean, invstd, True, backend=backend)
    dxw, dww, dbw = lref.batch_norm_train_backward(g, x, w, eps)
    close(dx, dxw, dtype, _tol(dtype, 1e-4, 1e-10), "train dx")
    close(dw, dww, dtype, _tol(dtype, 1e-4, 1e-10), "train dw")
    close(db, dbw, dtype, _tol(dtype, 1e-5), "train db")
    # eval mode: running statistics are constants
    rm = rng.standard_normal(C) + 5
    rv = rng.random(C) + 0.5
    close(ops.batch_norm(x, rm, rv, w, b, training=False, eps=eps, backend=backend),
          lref.batch_norm_eval(x, rm, rv, w, b, eps), dtype, _tol(dtype, 5e-5), "eval forward")
    dx, dw, db = ops.batch_norm_backward(g, x, w, training=False, running_mean=rm, running_var=rv, eps=eps,
                                         backend=backend)
    s = (1, -1) + (1,) * (x.ndim - 2)
    ax = (0,) + tuple(range(2, x.ndim))
    inv = 1 / np.sqrt(rv + eps)
    gw = np.ones(C) if w is None else w.astype(np.float64)
    g64 = g.astype(np.float64)
    close(dx, g64 * (gw * inv).reshape(s), dtype, what="eval dx")
    close(dw, (g64 * (x - rm.reshape(s)) * inv.reshape(s)).sum(axis=ax), dtype, _tol(dtype, 1e-4, 1e-10),
          "eval dw")
    close(db, g64.sum(axis=ax), dtype, _tol(dtype, 1e-5), "eval db")


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_variance_of_nan_inf_and_overflowing_data(backend):
    """A NaN or inf in a channel makes its variance NaN (then its outputs, save_invstd and running
    variance), never a clamped 0 (which gave invstd 1/sqrt(eps) and a finite running variance
    hiding the NaN); finite data whose squares overflow float64 has variance +inf: invstd 0 and
    outputs 0 (+ bias), as torch's Welford sums give. The other channel is untouched."""
    own_kernels(backend, "bn_stats", "bn_apply")
    x = np.stack([np.arange(4.0), np.array([1.0, 4.0, 2.0, 8.0])], axis=1)  # (4, 2)
    ok_col = (x[:, 1] - x[:, 1].mean()) / np.sqrt(x[:, 1].var() + 1e-5)
    for bad in (np.nan, np.inf, -np.inf):
        xb = x.copy()
        xb[1, 0] = bad
        rm, rv = np.zeros(2), np.ones(2)
        y = ops.batch_norm(xb, rm, rv, training=True, backend=backend)
        assert np.isnan(y[:, 0]).all() and np.isnan(rv[0]) and not np.isfinite(rm[0]), (bad, y[:, 0], rv, rm)
        np.testing.assert_allclose(y[:, 1], ok_col, rtol=1e-12)
        np.testing.assert_allclose(rv[1], 0.9 + 0.1 * x[:, 1].var(ddof=1), rtol=1e-12)
        _, _, invstd = ops.batch_norm_forward_train(xb, backend=backend)
        assert np.isnan(invstd[0]) and np.isfinite(invstd[1])
    huge = np.array([[1e200], [-1e200], [3e200], [0.0]])
    rm, rv = np.zeros(1), np.ones(1)
    y = ops.batch_norm(huge, rm, rv, np.ones(1), np.full(1, 0.5), training=True, backend=backend)
    np.testing.assert_array_equal(y, 0.5)
    assert rv[0] == np.inf and rm[0] == 0.1 * 7.5e199


# --------------------------------------------------------------------- LRN
def _lrn_backward_ref(g, x, size, alpha, beta, k):
    """d/dx of sum(g * lrn(x)) written out channel by channel (float64)."""
    x, g = x.astype(np.float64), g.astype(np.float64)
    C = x.shape[1]
    win = [range(max(0, c - size // 2), min(C - 1, c + (size - 1) // 2) + 1) for c in range(C)]
    base = np.stack([k + alpha / size * sum(x[:, j] ** 2 for j in win[c]) for c in range(C)], axis=1)
    dx = g * base ** -beta
    for c in range(C):  # output c depends on x_j, j in its window, through base_c
        t = g[:, c] * x[:, c] * -beta * base[:, c] ** (-beta - 1) * alpha / size
        for j in win[c]:
            dx[:, j] += t * 2 * x[:, j]
    return dx


LRN = [pytest.param(shape, size, beta, id=f"{'x'.join(map(str, shape))}_n{size}_b{beta}")
       for shape, size, beta in (((2, 7, 5, 3), 5, 0.75), ((1, 4, 9), 2, 0.5), ((2, 3, 1, 1), 8, 1.3),
                                 ((1, 6, 300), 3, 0.75))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,size,beta", LRN)
@pytest.mark.parametrize("backend", BACKENDS)
def test_lrn(backend, shape, size, beta, dtype, rng):
    own_kernels(backend, "lrn")
    x = rng.standard_normal(shape).astype(dtype)
    alpha, k = 0.3, 1.5
    close(ops.local_response_norm(x, size, alpha, beta, k, backend=backend), lref.lrn(x, size, alpha, beta, k),
          dtype, what="lrn forward")
    g = rng.standard_normal(shape).astype(dtype)
    dx = ops.local_response_norm_backward(g, x, size, alpha, beta, k, backend=backend)
    close(dx, _lrn_backward_ref(g, x, size, alpha, beta, k), dtype, _tol(dtype, 5e-5, 1e-11), "lrn backward")
    if dtype == np.float64:  # and the closed form agrees with a finite difference of the reference
        v = rng.standard_normal(shape)
        fd = (lref.lrn(x + 1e-6 * v, size, alpha, beta, k) - lref.lrn(x - 1e-6 * v, size, alpha, beta, k)) / 2e-6
        assert abs((g * fd).sum() - (dx * v).sum()) <= 1e-6 * max(1.0, abs((dx * v).sum()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_lrn_large_channel_does_not_spoil_its_neighbours(backend, rng):
    """A channel far larger than the others passes through every window that holds it and must
    leave no trace in the windows after it: with size 1 channel c depends on x[c] alone (a running
    window sum, adding the channel that enters and subtracting the one that leaves, gave 177.8
    instead of 0.99925 for the 1s after 1e8). Element-wise relative error, float64, windows of
    sizes 1 to C + 3 (blocks of every length, windows spanning one and two blocks), backward too
    (its mirrored window sum has signed terms and the same trap)."""
    own_kernels(backend, "lrn")
    x = np.array([1e8, 1.0, 1.0, 1.0]).reshape(1, 4, 1)
    np.testing.assert_allclose(ops.local_response_norm(x, 1, 1.0, 0.75, 1e-3, backend=backend).ravel(),
                               [1e8 / (1e-3 + 1e16) ** 0.75] + [1 / 1.001 ** 0.75] * 3, rtol=1e-14)
    for size in (1, 2, 3, 4, 6, 10):
        x = rng.standard_normal((2, 7, 3, 2))
        x[:, 2] *= 1e4
        g = rng.standard_normal(x.shape)
        args = (size, 1.0, 2.5, 1e-3)
        want = lref.lrn(x, *args)
        got = ops.local_response_norm(x, *args, backend=backend)
        assert np.max(np.abs(got - want) / np.abs(want)) < 1e-13, size
        want = _lrn_backward_ref(g, x, *args)
        got = ops.local_response_norm_backward(g, x, *args, backend=backend)
        assert np.max(np.abs(got - want) / np.abs(want)) < 1e-10, size


# -------------------------------------------------------------- activations
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_activations(backend, name, dtype, rng):
    own_kernels(backend, "activation")
    x = (rng.standard_normal((3, 5, 7)) * 4).astype(dtype)
    x.flat[:6] = [0.0, -0.0, 1e-3, -1e-3, 30.0, -30.0]
    y = getattr(ops, name)(x, backend=backend)
    yw = getattr(lref, name)(x)
    close(y, yw, dtype, what=f"{name} forward")
    g = rng.standard_normal(x.shape).astype(dtype)
    yd = yw.astype(dtype)  # the backward takes the forward's output
    y64 = yd.astype(np.float64)
    dwant = {"relu": g * (y64 > 0), "sigmoid": g * y64 * (1 - y64), "tanh": g * (1 - y64 ** 2)}[name]
    close(getattr(ops, name + "_backward")(g, yd, backend=backend), dwant, dtype, what=f"{name} backward")
    nan = np.array([np.nan, 1.0], dtype)
    assert np.isnan(getattr(ops, name)(nan, backend=backend)[0]), f"{name}: NaN must stay NaN"
    if name == "relu":  # zero only where the output is <= 0: a NaN output passes the gradient (torch)
        got = ops.relu_backward(np.full(3, 2.0, dtype), np.array([np.nan, -0.0, 1.0], dtype), backend=backend)
        np.testing.assert_array_equal(got, np.array([2.0, 0.0, 2.0], dtype))


SOFTMAX = [pytest.param(shape, dim, id=f"{'x'.join(map(str, shape))}_dim{dim}") for shape, dim in (
    ((4, 10), 1), ((4, 10), 0), ((2, 5, 3, 4), 1), ((2, 5, 3, 4), -1), ((3, 600, 2), 1), ((7,), 0),
    ((1, 1), 1))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("shape,dim", SOFTMAX)
@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax(backend, shape, dim, log, dtype, rng):
    own_kernels(backend, "softmax")
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    fwd, bwd = (ops.log_softmax, ops.log_softmax_backward) if log else (ops.softmax, ops.softmax_backward)
    yw = (lref.log_softmax if log else lref.softmax)(x, dim)
    close(fwd(x, dim, backend=backend), yw, dtype, what="forward")
    g = rng.standard_normal(shape).astype(dtype)
    yd = yw.astype(dtype)
    y64, g64 = yd.astype(np.float64), g.astype(np.float64)
    if log:
        want = g64 - np.exp(y64) * g64.sum(axis=dim, keepdims=True)
    else:
        want = y64 * (g64 - (g64 * y64).sum(axis=dim, keepdims=True))
    close(bwd(g, yd, dim, backend=backend), want, dtype, _tol(dtype, 5e-5), "backward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_log_softmax_and_cross_entropy_at_large_logits(backend, dtype, rng):
    """log p = (x - max) - log(sum): forming max + log(sum) first rounds log(sum) away next to a
    large maximum (float32 logits near 1e4 were off by 4.5e-4, and logits of 1e30 gave log p = 0
    and a cross entropy of -0 where the answer is log 3). Absolute errors, every reduction layout
    (rows, and columns: dim 0), label smoothing (its sum of log p over the classes too)."""
    own_kernels(backend, "softmax", "cross_entropy")
    tol = 2e-6 if dtype == np.float32 else 1e-12
    for offset in (1e4, -3e5, 1e30):
        x = (offset + rng.standard_normal((5, 37)) * (3.0 if offset < 1e10 else 0.0)).astype(dtype)
        want = lref.log_softmax(x, 1)
        assert np.max(np.abs(ops.log_softmax(x, 1, backend=backend) - want)) <= tol, offset
        assert np.max(np.abs(ops.log_softmax(np.ascontiguousarray(x.T), 0, backend=backend) - want.T)) <= tol
        t = rng.integers(0, 37, 5)
        for eps in (0.0, 0.3):
            loss, _ = ops.cross_entropy(x, t, eps, "none", backend=backend)
            assert np.max(np.abs(np.asarray(loss) - lref.cross_entropy(x, t, eps, "none"))) <= 10 * tol, (offset, eps)


# ------------------------------------------------------------ cross entropy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy(backend, reduction, smoothing, dtype, rng):
    own_kernels(backend, "cross_entropy")
    N, C = 9, 13
    z = (rng.standard_normal((N, C)) * 3).astype(dtype)
    t = rng.integers(0, C, N)
    t[[2, 5]] = -1  # ignored rows
    loss, grad = ops.cross_entropy(z, t, smoothing, reduction, ignore_index=-1, backend=backend)
    want = lref.cross_entropy(z, t, smoothing, reduction, ignore_index=-1)
    close(np.asarray(loss), np.asarray(want), dtype, _tol(dtype, 1e-5), "loss")
    # gradient: scale * (softmax(z) - target distribution) on counted rows, zero on ignored rows
    keep = t != -1
    q = np.full((N, C), smoothing / C)
    q[np.arange(N), np.where(keep, t, 0)] += 1 - smoothing
    scale = 1.0 / keep.sum() if reduction == "mean" else 1.0
    gw = np.where(keep[:, None], scale * (lref.softmax(z, 1) - q), 0.0)
    close(grad, gw, dtype, _tol(dtype, 1e-5), "grad")
    with pytest.raises(ValueError, match="out of range"):
        ops.cross_entropy(z, np.full(N, C), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_without_classes(backend):
    """C = 0 is valid when every row is ignored (torch: a NaN mean, a zero sum, zero rows, an empty
    gradient) on every backend alike (the CUDA kernels had raised 'no classes')."""
    own_kernels(backend, "cross_entropy")
    z, t = np.zeros((3, 0)), np.full(3, -100)
    for reduction, want in (("mean", np.nan), ("sum", 0.0), ("none", np.zeros(3))):
        loss, grad = ops.cross_entropy(z, t, reduction=reduction, backend=backend)
        np.testing.assert_array_equal(np.asarray(loss), want)
        assert grad.shape == (3, 0)
    with pytest.raises(ValueError, match="out of range"):
        ops.cross_entropy(z, np.array([-100, 0, -100]), backend=backend)


# ----------------------------------------------------------------- dropout
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout(backend, dtype, rng):
    own_kernels(backend, "dropout", "dropout_backward")
    p = 0.3
    x = rng.standard_normal((4, 50, 100)).astype(dtype)
    y, mask = ops.dropout(x, p, seed=1234, backend=backend)
    assert mask.dtype == bool and mask.shape == x.shape
    assert abs(mask.mean() - (1 - p)) < 0.02, mask.mean()
    close(y, np.where(mask, x.astype(np.float64) / (1 - p), 0.0), dtype, what="dropout forward")
    y2, mask2 = ops.dropout(x, p, seed=1234, backend=backend)
    np.testing.assert_array_equal(mask2, mask)  # same seed, same mask
    gen = ops.Generator(1234)
    _, m1 = ops.dropout(x, p, seed=gen, backend=backend)
    _, m2 = ops.dropout(x, p, seed=gen, backend=backend)
    np.testing.assert_array_equal(m1, mask)
    assert not np.array_equal(m1, m2)  # the generator advanced
    g = rng.standard_normal(x.shape).astype(dtype)
    close(ops.dropout_backward(g, mask, p, backend=backend), np.where(mask, g.astype(np.float64) / (1 - p), 0.0),
          dtype, what="dropout backward")


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_mask_matches_compiled(backend):
    """Every backend draws the compiled module's mask for the same (seed, offset), offsets past 2^32 and 2^64 too."""
    if "cpu" not in backends.available():
        pytest.skip("the compiled module is not available to compare with")
    if backend == "cpu":
        pytest.skip("the compiled module itself")
    own_kernels(backend, "dropout")
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    for seed, offset, p in ((0, 0, 0.5), (1234, 17, 0.1), (2 ** 64 - 1, 2 ** 32 - 2000, 0.9),
                            (99, 2 ** 64 - 2500, 0.37)):
        masks = []
        for b in ("cpu", backend):
            gen = ops.Generator(seed)
            gen.offset = offset
            masks.append(ops.dropout(x, p, seed=gen, backend=b)[1])
        np.testing.assert_array_equal(masks[0], masks[1], err_msg=f"seed={seed} offset={offset} p={p}")


# ------------------------------------------------------------------ linear
LINEAR = [pytest.param(xs, o, id=f"{'x'.join(map(str, xs))}_O{o}") for xs, o in (
    ((5, 7), 3), ((1, 1), 1), ((2, 3, 17), 9), ((100, 37), 130), ((4, 1), 70), ((11,), 5))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("xs,o", LINEAR)
@pytest.mark.parametrize("backend", BACKENDS)
def test_linear(backend, xs, o, bias, dtype, rng):
    own_kernels(backend, "linear", "linear_backward")
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal((o, xs[-1])).astype(dtype)
    b = rng.standard_normal(o).astype(dtype) if bias else None
    close(ops.linear(x, w, b, backend=backend), lref.linear(x, w, b), dtype, what="linear forward")
    g = rng.standard_normal(xs[:-1] + (o,)).astype(dtype)
    dx, dw, db = ops.linear_backward(g, x, w, backend=backend)
    g2 = g.reshape(-1, o).astype(np.float64)
    x2 = x.reshape(-1, xs[-1]).astype(np.float64)
    close(dx, np.einsum("mo,oi->mi", g2, w.astype(np.float64)).reshape(xs), dtype, what="dx")
    close(dw, np.einsum("mo,mi->oi", g2, x2), dtype, what="dw")
    close(db, g2.sum(axis=0), dtype, what="db")
    dx2, dw2, db2 = ops.linear_backward(g, x, w, needs=(False, True, False), backend=backend)
    assert dx2 is None and db2 is None
    np.testing.assert_array_equal(dw2, dw)


def test_numba_runs_its_own_kernels():
    """With numba installed, the numba backend has every pooling / layer kernel itself."""
    if "numba" not in BACKENDS:
        pytest.skip("numba is not installed")
    names = ("pool2d_forward", "pool2d_backward", "adaptive_pool2d_forward", "adaptive_pool2d_backward",
             "bn_stats", "bn_apply", "bn_backward", "lrn", "activation", "softmax", "cross_entropy",
             "dropout", "dropout_backward", "linear", "linear_backward")
    assert [n for n in names if backends.layer_kernel(n, "numba")[1] != "numba"] == []
    assert math.isfinite(float(ops.max_pool2d(np.ones((1, 1, 3, 3)), 2, backend="numba").sum()))
