"""Pooling ops (fastconv.ops.pool): forward and backward against the independent
float64 reference in tests/pool_reference.py and against torch (float64),
finite differences, tie / NaN rules, dtypes, determinism and bad input."""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fastconv.ops import pool as P

import pool_reference as ref
from helpers import torch_or_skip

HYP = settings(max_examples=60, derandomize=True, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def distinct(rng, shape):
    """Tie-free values: a permutation of 0.1*k plus sub-gap noise (gaps stay > 0.05)."""
    n = int(np.prod(shape))
    v = rng.permutation(n).astype(np.float64) * 0.1 + rng.uniform(-0.02, 0.02, n)
    return (v - (v.mean() if n else 0.0)).reshape(shape)


def close(a, b, tol=1e-12):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= tol * scale, f"max abs err {err:.3e} > {tol:.1e} * {scale:.3g}"


# ------------------------------------------------------------ configurations
@st.composite
def fixed_cfg(draw, kind):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = draw(st.one_of(st.none(), st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    pad = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    dil = (1, 1) if kind == "avg" else (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    ceil_mode = draw(st.booleans())
    H, W = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    s = (kh, kw) if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    P_ = ref.out_size(H, kh, s[0], pad[0], dil[0], ceil_mode)
    Q_ = ref.out_size(W, kw, s[1], pad[1], dil[1], ceil_mode)
    assume(P_ > 0 and Q_ > 0)
    N, C = draw(st.integers(0, 2)), draw(st.integers(1, 3))
    cfg = dict(kernel_size=(kh, kw), stride=stride, padding=pad, ceil_mode=ceil_mode)
    if kind != "avg":
        cfg["dilation"] = dil
    else:
        cfg["count_include_pad"] = draw(st.booleans())
        cfg["divisor_override"] = draw(st.one_of(st.none(), st.integers(1, 7)))
    return (N, C, H, W), cfg, draw(st.integers(0, 2**31 - 1))


def _torch_max(torch, x, cfg, kind="max"):
    F = torch.nn.functional
    t = torch.from_numpy(x if kind == "max" else -x).requires_grad_()
    y, i = F.max_pool2d(t, return_indices=True, **cfg)
    return t, y, i


@pytest.mark.parametrize("kind", ["max", "min"])
@HYP
@given(data=st.data())
def test_maxmin_random_vs_reference(kind, data):
    shape, cfg, seed = data.draw(fixed_cfg("max"))
    rng = np.random.default_rng(seed)
    x = distinct(rng, shape)
    fwd = P.max_pool2d if kind == "max" else P.min_pool2d
    bwd = P.max_pool2d_backward if kind == "max" else P.min_pool2d_backward
    y, idx = fwd(x, return_indices=True, **cfg)
    y_ref, idx_ref = ref.maxmin_pool(x, kind, **cfg)
    assert y.dtype == np.float64 and idx.dtype == np.int64
    close(y, y_ref, 0)
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_array_equal(fwd(x, **cfg), y)
    g = rng.standard_normal(y.shape)
    dx_ref = ref.maxmin_pool_backward(g, x.shape, idx_ref)
    close(bwd(g, x, **cfg), dx_ref)
    close(bwd(g, x, indices=idx, **cfg), dx_ref)
    # float32 path on the same values
    y32, idx32 = fwd(x.astype(np.float32), return_indices=True, **cfg)
    assert y32.dtype == np.float32
    close(y32, y_ref.astype(np.float32), 0)
    np.testing.assert_array_equal(idx32, idx_ref)
    close(bwd(g.astype(np.float32), x.astype(np.float32), **cfg), dx_ref, 1e-6)


@HYP
@given(data=st.data())
def test_max_random_vs_torch(data):
    torch = torch_or_skip()
    shape, cfg, seed = data.draw(fixed_cfg("max"))
    rng = np.random.default_rng(seed)
    x = distinct(rng, shape)
    t, ty, ti = _torch_max(torch, x, cfg)
    y, idx = P.max_pool2d(x, return_indices=True, **cfg)
    close(y, ty.detach().numpy(), 0)
    np.testing.assert_array_equal(idx, ti.numpy())
    g = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(g))
    close(P.max_pool2d_backward(g, x, **cfg), t.grad.numpy())


@HYP
@given(data=st.data())
def test_min_is_negated_max(data):
    shape, cfg, seed = data.draw(fixed_cfg("max"))
    x = distinct(np.random.default_rng(seed), shape)
    y, i = P.min_pool2d(x, return_indices=True, **cfg)
    ym, im = P.max_pool2d(-x, return_indices=True, **cfg)
    np.testing.assert_array_equal(y, -ym)  # windows with no tap in the image give +-inf
    np.testing.assert_array_equal(i, im)


@HYP
@given(data=st.data())
def test_avg_random_vs_reference_and_torch(data):
    shape, cfg, seed = data.draw(fixed_cfg("avg"))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    y = P.avg_pool2d(x, **cfg)
    close(y, ref.avg_pool(x, **cfg))
    g = rng.standard_normal(y.shape)
    dx = P.avg_pool2d_backward(g, x, **cfg)
    close(dx, ref.avg_pool_backward(g, x.shape, **cfg))
    close(P.avg_pool2d(x.astype(np.float32), **cfg), ref.avg_pool(x, **cfg), 2e-6)
    try:
        import torch
    except ImportError:
        return
    t = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.avg_pool2d(t, **cfg)
    close(y, ty.detach().numpy())
    ty.backward(torch.from_numpy(g))
    close(dx, t.grad.numpy())


@pytest.mark.parametrize("hw", [(29, 31), (262, 259)], ids=["plane_path", "row_path"])
@pytest.mark.parametrize("cfg", [dict(kernel_size=3, stride=2, padding=1),
                                 dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), ceil_mode=True),
                                 dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
                                 dict(kernel_size=2, stride=2, divisor_override=3)])
def test_avg_backward_plane_and_row_paths(hw, cfg, rng):
    # the compiled kernel divides small output planes once per plane and large ones per input row
    # (> 2^14 output elements): both against the float64 reference, float32 and float64
    x = rng.standard_normal((2, 2) + hw)
    g = rng.standard_normal(ref.avg_pool(x, **cfg).shape)
    want = ref.avg_pool_backward(g, x.shape, **cfg)
    assert (g.shape[2] * g.shape[3] > 1 << 14) == (hw[0] > 100)
    close(P.avg_pool2d_backward(g, x, **cfg), want)
    close(P.avg_pool2d_backward(g.astype(np.float32), x.astype(np.float32), **cfg), want, 2e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hw", [(28, 28), (29, 31), (2, 3), (7, 2)])
@pytest.mark.parametrize("extra", [{}, dict(divisor_override=3), dict(divisor_override=8),
                                   dict(count_include_pad=False), dict(ceil_mode=True)])
def test_avg_backward_2x2s2(hw, extra, dtype, rng):
    # 2x2/s2 windows inside the image run their own kernel: every quotient is written to its 2x2
    # block (the same bits as g / divisor: a power-of-two divisor is applied as an exact
    # reciprocal), the odd last row/column is zero; ceil_mode on odd sizes leaves that kernel
    x = rng.standard_normal((3, 2) + hw).astype(dtype)
    cfg = dict(kernel_size=2, **extra)
    g = rng.standard_normal(ref.avg_pool(x, **cfg).shape).astype(dtype)
    dx = P.avg_pool2d_backward(g, x, **cfg)
    close(dx, ref.avg_pool_backward(g.astype(np.float64), x.shape, **cfg), 1e-6 if dtype == np.float32 else 1e-12)
    if not extra.get("ceil_mode"):
        q = g / dtype(extra.get("divisor_override", 4))
        P2, Q2 = 2 * g.shape[2], 2 * g.shape[3]
        np.testing.assert_array_equal(dx[:, :, :P2, :Q2], np.repeat(np.repeat(q, 2, axis=2), 2, axis=3))
        assert not dx[:, :, P2:].any() and not dx[:, :, :, Q2:].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hw", [(28, 28), (29, 31), (1, 1), (2, 3), (5, 2), (112, 17)])
@pytest.mark.parametrize("extra", [{}, dict(count_include_pad=False), dict(divisor_override=7),
                                   dict(ceil_mode=True)])
def test_avg_backward_3x3s2p1(hw, extra, dtype, rng):
    # 3x3/s2/p1 runs its own kernel (even input rows/columns under one window, odd ones under two);
    # odd and even sizes, borders with and without the padding counted, 1x1 planes
    x = rng.standard_normal((2, 3) + hw).astype(dtype)
    cfg = dict(kernel_size=3, stride=2, padding=1, **extra)
    g = rng.standard_normal(ref.avg_pool(x, **cfg).shape).astype(dtype)
    dx = P.avg_pool2d_backward(g, x, **cfg)
    assert dx.shape == x.shape and dx.dtype == dtype
    close(dx, ref.avg_pool_backward(g.astype(np.float64), x.shape, **cfg), 1e-6 if dtype == np.float32 else 1e-12)


def test_avg_torch_visible(torch):
    """A fixed avg case against torch (visible skip without torch; the random one above returns quietly)."""
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 10))
    for cfg in [dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
                dict(kernel_size=(4, 2), stride=(3, 1), padding=(2, 1), ceil_mode=True, divisor_override=5)]:
        t = torch.from_numpy(x).requires_grad_()
        ty = torch.nn.functional.avg_pool2d(t, **cfg)
        close(P.avg_pool2d(x, **cfg), ty.detach().numpy())
        g = np.random.default_rng(2).standard_normal(ty.shape)
        ty.backward(torch.from_numpy(g))
        close(P.avg_pool2d_backward(g, x, **cfg), t.grad.numpy())


# --------------------------------------------------------------------- lp
@pytest.mark.parametrize("norm_type", [1, 2, 3, 1.5, float("inf"), -float("inf")])
@pytest.mark.parametrize("cfg", [dict(kernel_size=3, stride=2, ceil_mode=True), dict(kernel_size=(2, 3)),
                                 dict(kernel_size=2, stride=1), dict(kernel_size=(3, 1), stride=(2, 3), ceil_mode=True)])
def test_lp_pool(norm_type, cfg, rng):
    x = distinct(rng, (2, 3, 7, 8))
    if norm_type == 1.5:
        x = np.abs(x) + 0.1  # fractional powers need positive input
    y = P.lp_pool2d(x, norm_type, **cfg)
    if np.isinf(norm_type):
        sgn = 1 if norm_type > 0 else -1
        y_ref = sgn * ref.maxmin_pool(np.abs(x), "max" if sgn > 0 else "min", cfg["kernel_size"],
                                      cfg.get("stride"), 0, 1, cfg.get("ceil_mode", False))[0]
        y_ref = np.abs(y_ref)
    else:
        y_ref = ref.lp_pool(x, norm_type, **cfg)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12, equal_nan=True)
    g = rng.standard_normal(y.shape)
    dx = P.lp_pool2d_backward(g, x, norm_type, **cfg)
    assert dx.shape == x.shape
    try:
        import torch
    except ImportError:
        return
    t = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.lp_pool2d(t, norm_type, **cfg)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12, equal_nan=True)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-10, atol=1e-10, equal_nan=True)


def test_lp_pool_torch_visible(torch):
    x = np.abs(distinct(np.random.default_rng(3), (1, 2, 6, 6))) + 0.1
    t = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.lp_pool2d(t, 2, 3, 2, True)
    close(P.lp_pool2d(x, 2, 3, 2, True), ty.detach().numpy())
    g = np.ones(ty.shape) * 0.5
    ty.backward(torch.from_numpy(g))
    close(P.lp_pool2d_backward(g, x, 2, 3, 2, True), t.grad.numpy())


# --------------------------------------------------------------- adaptive
ADAPTIVE = [((2, 3, 11, 13), 1), ((2, 3, 11, 13), (3, None)), ((1, 2, 5, 7), (9, 20)), ((1, 2, 5, 7), (5, 7)),
            ((2, 2, 1, 1), (3, 2)), ((1, 3, 10, 10), (4, 6)), ((2, 5, 7, 7), (1, 1)), ((1, 2, 6, 37), (2, 1)),
            ((1, 1, 1, 9), (None, 4)), ((2, 3, 9, 5), (7, 3))]


@pytest.mark.parametrize("shape,osize", ADAPTIVE)
def test_adaptive(shape, osize, rng):
    x = distinct(rng, shape)
    full = (osize, osize) if isinstance(osize, int) else osize
    PQ = tuple(shape[2 + i] if v is None else v for i, v in enumerate(full))
    ya = P.adaptive_avg_pool2d(x, osize)
    close(ya, ref.adaptive_pool(x, PQ, "avg")[0])
    ym, im = P.adaptive_max_pool2d(x, osize, return_indices=True)
    ym_ref, im_ref = ref.adaptive_pool(x, PQ, "max")
    close(ym, ym_ref, 0)
    np.testing.assert_array_equal(im, im_ref)
    close(P.adaptive_max_pool2d(x, osize), ym_ref, 0)
    g = rng.standard_normal(ya.shape)
    close(P.adaptive_avg_pool2d_backward(g, x), ref.adaptive_avg_backward(g, x.shape))
    dm_ref = ref.maxmin_pool_backward(g, x.shape, im_ref)
    close(P.adaptive_max_pool2d_backward(g, x, osize), dm_ref)
    close(P.adaptive_max_pool2d_backward(g, x, osize, indices=im), dm_ref)
    # indices passed by hand land where they point, inside their window or not (a scatter, as torch
    # on the CPU and as max_pool2d_backward): all on element 0, and shifted by one output
    H, W = shape[2:]
    for hand in (np.zeros_like(im), np.roll(im, 1, axis=-1), (im + W) % (H * W)):
        close(P.adaptive_max_pool2d_backward(g, x, osize, indices=hand), ref.maxmin_pool_backward(g, x.shape, hand))
    close(P.adaptive_avg_pool2d(x.astype(np.float32), osize), ya, 2e-6)


@pytest.mark.parametrize("shape,osize", ADAPTIVE)
def test_adaptive_vs_torch(shape, osize, rng, torch):
    F = torch.nn.functional
    x = distinct(rng, shape)
    t = torch.from_numpy(x).requires_grad_()
    ta = F.adaptive_avg_pool2d(t, osize)
    close(P.adaptive_avg_pool2d(x, osize), ta.detach().numpy())
    g = rng.standard_normal(tuple(ta.shape))
    ta.backward(torch.from_numpy(g))
    close(P.adaptive_avg_pool2d_backward(g, x), t.grad.numpy())
    t.grad = None
    tm, ti = F.adaptive_max_pool2d(t, osize, return_indices=True)
    ym, im = P.adaptive_max_pool2d(x, osize, return_indices=True)
    close(ym, tm.detach().numpy(), 0)
    np.testing.assert_array_equal(im, ti.numpy())
    tm.backward(torch.from_numpy(g))
    close(P.adaptive_max_pool2d_backward(g, x, osize), t.grad.numpy())


# ---------------------------------------------------------- global paths
@pytest.mark.parametrize("shape", [(2, 37, 7, 7), (1, 3, 1, 1), (2, 3, 5, 40), (1, 2, 4, 4), (3, 2, 17, 1)])
def test_global_paths(shape, rng):
    x = distinct(rng, shape)
    H, W = shape[2:]
    mean = x.mean(axis=(2, 3), keepdims=True)
    close(P.adaptive_avg_pool2d(x, 1), mean)
    close(P.avg_pool2d(x, (H, W)), mean)
    close(P.avg_pool2d(x, (H, W), divisor_override=3), x.sum(axis=(2, 3), keepdims=True) / 3)
    flat = x.reshape(shape[0], shape[1], -1)
    for fwd, red, arg in ((P.max_pool2d, np.max, np.argmax), (P.min_pool2d, np.min, np.argmin)):
        y, i = fwd(x, (H, W), return_indices=True)
        close(y[..., 0, 0], red(flat, axis=2), 0)
        np.testing.assert_array_equal(i[..., 0, 0], arg(flat, axis=2))
    y, i = P.adaptive_max_pool2d(x, 1, return_indices=True)
    np.testing.assert_array_equal(i[..., 0, 0], np.argmax(flat, axis=2))
    g = rng.standard_normal((shape[0], shape[1], 1, 1))
    close(P.adaptive_avg_pool2d_backward(g, x), np.broadcast_to(g / (H * W), shape))
    close(P.avg_pool2d(x.astype(np.float32), (H, W)), mean, 2e-6)


def test_global_ties_and_nan():
    x = np.zeros((1, 3, 5, 7))
    x[0, 0, 1, 2] = x[0, 0, 3, 6] = x[0, 0, 4, 0] = 2.0        # tie: first in row-major order
    x[0, 1] = -np.inf                                             # all -inf: index 0, like torch
    x[0, 2, 0, 3] = np.nan
    x[0, 2, 4, 5] = np.nan                                        # NaN wins; the last NaN gives the index
    y, i = P.max_pool2d(x, (5, 7), return_indices=True)
    assert y[0, 0, 0, 0] == 2.0 and i[0, 0, 0, 0] == 1 * 7 + 2
    assert y[0, 1, 0, 0] == -np.inf and i[0, 1, 0, 0] == 0
    assert np.isnan(y[0, 2, 0, 0]) and i[0, 2, 0, 0] == 4 * 7 + 5
    ya, ia = P.adaptive_max_pool2d(x, 1, return_indices=True)
    np.testing.assert_array_equal(ia, i)
    assert np.isnan(P.avg_pool2d(x, (5, 7))[0, 2, 0, 0])


# ------------------------------------------------------ ties, NaN, -inf
def test_ties_first_in_row_major_order():
    # 3x3 window whose maximum 5 appears at (1, 0) and (0, 2): row-major order picks (0, 2),
    # column-major order would pick (1, 0).
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 0] = x[0, 0, 0, 2] = 5.0
    y, i = P.max_pool2d(x, 3, return_indices=True)
    assert y.item() == 5.0 and i.item() == 2
    x = -x
    y, i = P.min_pool2d(x, 3, return_indices=True)
    assert y.item() == -5.0 and i.item() == 2
    # all-equal windows: the first tap inside the image
    x = np.ones((1, 1, 4, 4))
    y, i = P.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    np.testing.assert_array_equal(i[0, 0], [[0, 1], [4, 5]])
    # the gradient of a tie goes to the first maximum only
    dx = P.max_pool2d_backward(np.ones((1, 1, 2, 2)), x, 3, stride=2, padding=1)
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    _, ia = P.adaptive_max_pool2d(np.ones((1, 1, 5, 5)), 2, return_indices=True)
    np.testing.assert_array_equal(ia[0, 0], [[0, 2], [10, 12]])


def test_ties_match_torch(torch):
    x = np.round(np.random.default_rng(5).standard_normal((2, 3, 9, 9)))  # many ties
    for cfg in [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2), dict(kernel_size=3, stride=1, dilation=2)]:
        y, i = P.max_pool2d(x, return_indices=True, **cfg)
        ty, ti = torch.nn.functional.max_pool2d(torch.from_numpy(x), return_indices=True, **cfg)
        close(y, ty.numpy(), 0)
        np.testing.assert_array_equal(i, ti.numpy())


def test_nan_and_inf_match_torch(torch):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2, 9, 11))
    x[0, 0, 2, 3] = np.nan
    x[0, 0, 2, 5] = np.nan
    x[0, 1, :4] = -np.inf
    for cfg in [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(2, 4), stride=1, ceil_mode=True),
                dict(kernel_size=3, stride=2, padding=1, dilation=2)]:
        y, i = P.max_pool2d(x, return_indices=True, **cfg)
        ty, ti = torch.nn.functional.max_pool2d(torch.from_numpy(x), return_indices=True, **cfg)
        np.testing.assert_array_equal(y, ty.numpy())  # NaN == NaN for assert_array_equal
        np.testing.assert_array_equal(i, ti.numpy())
        y_ref, i_ref = ref.maxmin_pool(x, "max", **cfg)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(i, i_ref)
    yn = P.min_pool2d(x, 3, 2, 1)
    assert np.isnan(yn[0, 0]).any()
    ya, ia = P.adaptive_max_pool2d(x, (3, 4), return_indices=True)
    ta, tia = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(x), (3, 4), return_indices=True)
    np.testing.assert_array_equal(ya, ta.numpy())
    np.testing.assert_array_equal(ia, tia.numpy())


# ------------------------------------------------------ finite differences
def _fd_check(f, grad_fn, x, rng, n_dirs=3, eps=1e-6, tol=1e-7):
    y = f(x)
    g = rng.standard_normal(y.shape)
    dx = grad_fn(g, x)
    for _ in range(n_dirs):
        v = rng.standard_normal(x.shape)
        num = (np.sum(g * f(x + eps * v)) - np.sum(g * f(x - eps * v))) / (2 * eps)
        ana = np.sum(dx * v)
        assert abs(num - ana) <= tol * max(1.0, abs(ana)), f"finite difference {num} vs analytic {ana}"


FD_CFGS = [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(2, 3), stride=1, ceil_mode=True),
           dict(kernel_size=(3, 2), stride=(1, 3), padding=(1, 1), ceil_mode=True)]


@pytest.mark.parametrize("cfg", FD_CFGS)
def test_finite_differences(cfg, rng):
    x = distinct(rng, (2, 2, 7, 8))
    for fwd, bwd in ((P.max_pool2d, P.max_pool2d_backward), (P.min_pool2d, P.min_pool2d_backward)):
        _fd_check(lambda a: fwd(a, dilation=(2, 1), **cfg), lambda g, a: bwd(g, a, dilation=(2, 1), **cfg), x, rng)
    for extra in (dict(), dict(count_include_pad=False), dict(divisor_override=4)):
        _fd_check(lambda a: P.avg_pool2d(a, **cfg, **extra), lambda g, a: P.avg_pool2d_backward(g, a, **cfg, **extra),
                  x, rng)
    lp = dict(kernel_size=cfg["kernel_size"], stride=cfg["stride"], ceil_mode=cfg.get("ceil_mode", False))
    xp = np.abs(x) + 0.2
    for p in (2, 3, 1.5):
        _fd_check(lambda a: P.lp_pool2d(a, p, **lp), lambda g, a: P.lp_pool2d_backward(g, a, p, **lp), xp, rng,
                  tol=1e-6)
    for osize in ((3, 5), (9, 4), 1):
        _fd_check(lambda a: P.adaptive_avg_pool2d(a, osize), lambda g, a: P.adaptive_avg_pool2d_backward(g, a), x, rng)
        _fd_check(lambda a: P.adaptive_max_pool2d(a, osize),
                  lambda g, a: P.adaptive_max_pool2d_backward(g, a, osize), x, rng)


# ------------------------------------------------ dtypes, layout, threads
def test_dtypes_and_unbatched(rng):
    x = distinct(rng, (3, 9, 10))
    for dt in (np.float16, np.float32, np.float64):
        xd = x.astype(dt)
        y = P.max_pool2d(xd, 3, 2, 1)
        assert y.dtype == dt and y.shape == (3, 5, 5)
        close(y, ref.maxmin_pool(xd[None].astype(np.float64), "max", 3, 2, 1)[0][0], 0)
        ya = P.avg_pool2d(xd, 2)
        assert ya.dtype == dt and ya.shape == (3, 4, 5)
        close(ya, ref.avg_pool(xd[None].astype(np.float64), 2)[0], 1e-3 if dt == np.float16 else 1e-6)
        assert P.adaptive_avg_pool2d(xd, 2).dtype == dt
        g = np.ones((3, 5, 5), dt)
        assert P.max_pool2d_backward(g, xd, 3, 2, 1).dtype == dt
    # big-endian float64 (data read from a file) computes in float64 like the native array (it was
    # compared with the native float64 dtype, so it computed in float32: errors of 1e-7, an argmax
    # between values 1e-12 apart lost); results come back in native byte order
    xb = x.astype(">f8")
    for fn in (lambda a: P.avg_pool2d(a, 2), lambda a: P.lp_pool2d(a, 2, 3, 2),
               lambda a: P.max_pool2d(a, 3, 2, 1, return_indices=True)[1]):
        yb, yn = fn(xb), fn(x)
        assert yb.dtype == yn.dtype and yb.dtype.isnative
        np.testing.assert_array_equal(yb, yn)
    close_pair = np.array([[[[1.0, 1.0 + 1e-12]]]], ">f8")
    np.testing.assert_array_equal(P.max_pool2d(close_pair, (1, 2), return_indices=True)[1], [[[[1]]]])
    np.testing.assert_array_equal(P.max_pool2d_backward(np.ones((3, 5, 5), ">f8"), xb, 3, 2, 1),
                                  P.max_pool2d_backward(np.ones((3, 5, 5)), x, 3, 2, 1))
    # non-contiguous input
    xt = distinct(rng, (2, 3, 8, 6)).transpose(0, 1, 3, 2)
    close(P.max_pool2d(xt, 2), ref.maxmin_pool(np.ascontiguousarray(xt), "max", 2)[0], 0)
    # empty batch
    assert P.max_pool2d(np.zeros((0, 3, 8, 8)), 2).shape == (0, 3, 4, 4)
    assert P.avg_pool2d_backward(np.zeros((0, 3, 4, 4)), np.zeros((0, 3, 8, 8)), 2).shape == (0, 3, 8, 8)


def test_deterministic_across_threads(threads, rng):
    import fastconv

    x = rng.standard_normal((3, 40, 30, 33)).astype(np.float32)
    outs = []
    for n in (1, 2, 3):
        fastconv.set_num_threads(n)
        y, i = P.max_pool2d(x, 3, 2, 1, return_indices=True)
        ya = P.avg_pool2d(x, 3, 2, 1, ceil_mode=True)
        g = np.ones_like(ya) * 0.3
        outs.append((y, i, ya, P.avg_pool2d_backward(g, x, 3, 2, 1, ceil_mode=True),
                     P.max_pool2d_backward(np.ones_like(y), x, 3, 2, 1), P.adaptive_avg_pool2d(x, 1),
                     P.adaptive_avg_pool2d_backward(rng.standard_normal((3, 40, 5, 7)).astype(np.float32) * 0 + 1, x)))
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            assert np.array_equal(a, b)


def test_resnet_like_shapes_float32(rng):
    x = rng.standard_normal((2, 16, 56, 57)).astype(np.float32)
    for cfg in [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, stride=2)]:
        close(P.max_pool2d(x, **cfg), ref.maxmin_pool(x, "max", **cfg)[0], 0)
        close(P.avg_pool2d(x, **cfg), ref.avg_pool(x, **cfg), 2e-6)


# ---------------------------------------------------------------- errors
X = np.zeros((2, 3, 8, 8))


def check(exc, fn, names, numbers=()):
    with pytest.raises(exc) as ei:
        fn()
    msg = str(ei.value)
    names = (names,) if isinstance(names, str) else names
    assert any(re.search(n, msg, re.IGNORECASE) for n in names), f"message {msg!r} names none of {names}"
    for n in numbers:
        assert re.search(rf"(?<![\d.]){n}(?![\d.])", msg), f"message {msg!r} does not show {n}"


G = np.zeros((2, 3, 4, 4))
BAD = [
    ("kernel_zero", ValueError, lambda: P.max_pool2d(X, 0), "kernel_size", ()),
    ("kernel_negative", ValueError, lambda: P.avg_pool2d(X, (2, -1)), "kernel_size", ()),
    ("kernel_float", TypeError, lambda: P.max_pool2d(X, 2.0), "kernel_size", ()),
    ("kernel_triple", ValueError, lambda: P.max_pool2d(X, (2, 2, 2)), "kernel_size", ()),
    ("stride_zero", ValueError, lambda: P.max_pool2d(X, 2, 0), "stride", ()),
    ("stride_float", TypeError, lambda: P.avg_pool2d(X, 2, 1.5), "stride", ()),
    ("dilation_zero", ValueError, lambda: P.max_pool2d(X, 2, dilation=0), "dilation", ()),
    ("padding_negative", ValueError, lambda: P.max_pool2d(X, 3, padding=-1), "padding", ()),
    ("padding_too_big", ValueError, lambda: P.max_pool2d(X, 3, padding=2), "padding", (2, 3)),
    ("padding_too_big_avg", ValueError, lambda: P.avg_pool2d(X, (4, 2), padding=(1, 2)), "padding", ()),
    ("output_too_small", ValueError, lambda: P.max_pool2d(X, 5, dilation=2), ("output", "small"), (8,)),
    ("ndim_2", ValueError, lambda: P.max_pool2d(np.zeros((8, 8)), 2), "input", (2,)),
    ("ndim_5", ValueError, lambda: P.avg_pool2d(np.zeros((1, 2, 3, 8, 8)), 2), "input", (5,)),
    ("int_input", TypeError, lambda: P.max_pool2d(np.zeros((1, 1, 4, 4), np.int32), 2), ("input", "dtype"), ()),
    ("bool_input", TypeError, lambda: P.adaptive_avg_pool2d(np.zeros((1, 1, 4, 4), bool), 2), "input", ()),
    ("divisor_zero", ValueError, lambda: P.avg_pool2d(X, 2, divisor_override=0), "divisor_override", ()),
    ("divisor_float", TypeError, lambda: P.avg_pool2d(X, 2, divisor_override=2.5), "divisor_override", ()),
    ("divisor_past_int64", ValueError, lambda: P.avg_pool2d(X, 2, divisor_override=2**63), "divisor_override",
     (2**63,)),
    ("divisor_past_int64_numba", ValueError, lambda: P.avg_pool2d(X, 2, divisor_override=-2**63 - 1,
                                                                  backend="numba"), "divisor_override", ()),
    ("long_double_input", TypeError, lambda: P.max_pool2d(X.astype(np.longdouble), 2), ("input", "dtype"), ()),
    ("adaptive_zero", ValueError, lambda: P.adaptive_avg_pool2d(X, 0), "output_size", ()),
    ("adaptive_negative", ValueError, lambda: P.adaptive_max_pool2d(X, (2, -1)), "output_size", ()),
    ("adaptive_float", TypeError, lambda: P.adaptive_avg_pool2d(X, 2.5), "output_size", ()),
    ("adaptive_triple", ValueError, lambda: P.adaptive_avg_pool2d(X, (1, 2, 3)), "output_size", ()),
    ("grad_shape", ValueError, lambda: P.max_pool2d_backward(np.zeros((2, 3, 4, 5)), X, 2), "grad_output", (5,)),
    ("grad_shape_avg", ValueError, lambda: P.avg_pool2d_backward(np.zeros((2, 3, 3, 3)), X, 2), "grad_output", ()),
    ("grad_shape_adaptive", ValueError, lambda: P.adaptive_avg_pool2d_backward(np.zeros((2, 4, 3, 3)), X),
     "grad_output", ()),
    ("grad_shape_adaptive_max", ValueError, lambda: P.adaptive_max_pool2d_backward(np.zeros((2, 3, 3, 3)), X, 2),
     "grad_output", ()),
    ("grad_int", TypeError, lambda: P.max_pool2d_backward(np.zeros((2, 3, 4, 4), np.int64), X, 2), "grad_output", ()),
    ("grad_dtype_mismatch", TypeError, lambda: P.max_pool2d_backward(G.astype(np.float32), X, 2), "grad_output", ()),
    ("indices_shape", ValueError, lambda: P.max_pool2d_backward(G, X, 2, indices=np.zeros((2, 3, 4, 3), np.int64)),
     "indices", ()),
    ("indices_dtype", TypeError, lambda: P.max_pool2d_backward(G, X, 2, indices=np.zeros((2, 3, 4, 4), np.int32)),
     "indices", ()),
    ("indices_range", ValueError, lambda: P.max_pool2d_backward(G, X, 2, indices=np.full((2, 3, 4, 4), 64)),
     "indices", (64,)),
    # one bad index among valid ones (the compiled kernel checks while it scatters), negative, and min pooling
    ("indices_one_bad", ValueError, lambda: P.max_pool2d_backward(
        G, X, 2, indices=np.where(np.arange(96).reshape(2, 3, 4, 4) == 77, 64, 0)), "indices", (64,)),
    ("indices_negative", ValueError, lambda: P.min_pool2d_backward(
        G, X, 2, indices=np.where(np.arange(96).reshape(2, 3, 4, 4) == 5, -1, 3)), "indices", (-1,)),
    ("indices_list", TypeError, lambda: P.max_pool2d_backward(G, X, 2, indices=[0]), "indices", ()),
    ("lp_norm_zero", ValueError, lambda: P.lp_pool2d(X, 0, 2), "norm_type", ()),
    ("lp_norm_str", TypeError, lambda: P.lp_pool2d(X, "2", 2), "norm_type", ()),
    ("empty_plane", ValueError, lambda: P.max_pool2d(np.zeros((1, 1, 0, 4)), 1), "input", ()),
    ("ceil_mode_str", TypeError, lambda: P.max_pool2d(X, 2, ceil_mode="yes"), "ceil_mode", ()),
]


@pytest.mark.parametrize("name,exc,fn,names,numbers", BAD, ids=[b[0] for b in BAD])
def test_bad_input(name, exc, fn, names, numbers):
    check(exc, fn, names, numbers)


# ---------------------------------------- the 2x2 stride-2 chunked fast path
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (1, 2, 9, 35), (1, 1, 2, 64), (3, 1, 5, 33), (1, 2, 2, 2)])
def test_2x2_stride2_fast_path_ties_nan_and_chunk_edges(shape, dtype, rng):
    """2x2/s2/p0 runs its own kernel in 16-wide chunks: rows shorter, equal and longer than a chunk,
    odd sizes (the last row/column unused), heavy ties, NaN and -inf, against the float64 reference."""
    x = rng.integers(-2, 3, size=shape).astype(dtype)          # values in {-2..2}: many ties
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, size=max(1, flat.size // 40), replace=False)] = np.nan
    flat[rng.choice(flat.size, size=max(1, flat.size // 40), replace=False)] = -np.inf
    for kind in ("max", "min"):
        fn = P.max_pool2d if kind == "max" else P.min_pool2d
        y, i = fn(x, 2, 2, return_indices=True)
        y_only = fn(x, 2, 2)
        ry, ri = ref.maxmin_pool(x, kind, 2, 2)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_array_equal(y, ry.astype(dtype))
        np.testing.assert_array_equal(y_only, y)
    xf = rng.standard_normal(shape).astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for div in (None, 3):
        np.testing.assert_allclose(P.avg_pool2d(xf, 2, 2, divisor_override=div),
                                   ref.avg_pool(xf, 2, 2, divisor_override=div), rtol=tol, atol=tol)


# ------------------------------------------- the 3x3 stride-2 fast paths
S2_SHAPES = [(2, 3, 28, 28), (1, 2, 29, 31), (1, 1, 1, 1), (2, 1, 2, 3), (1, 2, 5, 2), (1, 1, 3, 32), (1, 1, 4, 33),
             (1, 2, 7, 64), (1, 1, 6, 65), (1, 1, 112, 17), (1, 1, 8, 34), (1, 1, 9, 35)]
S2_CASES = [(shape, pad, ceil) for shape in S2_SHAPES for pad in (1, 0) for ceil in (False, True)
            if pad == 1 or min(shape[2:]) >= 3]  # without padding a 3x3 window needs 3x3


def _isas():
    try:
        from fastconv.backends import cpu
        return cpu.available_isas() if cpu.CPU_AVAILABLE else []
    except ImportError:
        return []


@pytest.fixture(params=_isas())
def each_isa(request):
    """Runs the test under each instruction set this CPU has (the kernels follow set_isa)."""
    from fastconv.backends import cpu
    before = cpu.isa()
    cpu.set_isa(request.param)
    yield request.param
    cpu.set_isa(before)


OVERSIZED = [  # (H, W), kernel, stride, padding, dilation, ceil_mode: strides/windows/padding >> the image
    ((6, 6), 2, (1, 2**30), 0, 1, False),
    ((5, 7), (3, 101), (2, 1), (1, 50), 1, False),
    ((6, 9), 3, (100, 1), 1, (2, 3), True),
    ((4, 6), (101, 2), (1, 3), (50, 1), 1, True),
    ((3, 1), (1, 3), (2**31 - 1, 5), (0, 1), 1, False),
]


@pytest.mark.parametrize("hw,k,s,p,d,ceil", OVERSIZED)
def test_oversized_stride_window_and_padding(hw, k, s, p, d, ceil, rng):
    """Strides, windows, padding or dilation far larger than the image are valid (torch runs them)
    and must neither allocate scratch in proportion to them (a 2^30 stride aborted the process
    with bad_alloc) nor visit every tap: forward values/indices and backwards vs the reference."""
    x = distinct(rng, (2, 3) + hw)
    cfg = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil)
    for kind, fwd, bwd in (("max", P.max_pool2d, P.max_pool2d_backward), ("min", P.min_pool2d, P.min_pool2d_backward)):
        y, i = fwd(x, dilation=d, return_indices=True, **cfg)
        y_ref, i_ref = ref.maxmin_pool(x, kind, dilation=d, **cfg)
        close(y, y_ref, 0)
        np.testing.assert_array_equal(i, i_ref)
        g = rng.standard_normal(y.shape)
        close(bwd(g, x, dilation=d, **cfg), ref.maxmin_pool_backward(g, x.shape, i_ref))
    if d == 1:
        for extra in ({}, dict(count_include_pad=False), dict(divisor_override=3)):
            y = P.avg_pool2d(x, **cfg, **extra)
            close(y, ref.avg_pool(x, **cfg, **extra))
            g = rng.standard_normal(y.shape)
            close(P.avg_pool2d_backward(g, x, **cfg, **extra), ref.avg_pool_backward(g, x.shape, **cfg, **extra))


def test_window_with_no_element_of_the_input(rng):
    """With dilation a window can hold only padding: -inf and torch's initial index (here outside
    the 1x8 plane). Backward with those indices raises a ValueError that says why (torch writes out
    of bounds there); without indices the -inf outputs send no gradient."""
    x = distinct(rng, (2, 3, 1, 8))
    cfg = dict(kernel_size=2, stride=(1, 5), padding=1, dilation=2, ceil_mode=True)
    y, i = P.max_pool2d(x, return_indices=True, **cfg)
    y_ref, i_ref = ref.maxmin_pool(x, "max", **cfg)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(i, i_ref)
    outside = i >= 8
    assert outside.any() and np.all(y[outside] == -np.inf)
    g = rng.standard_normal(y.shape)
    with pytest.raises(ValueError, match="no element of the input"):
        P.max_pool2d_backward(g, x, indices=i, **cfg)
    close(P.max_pool2d_backward(g, x, **cfg), ref.maxmin_pool_backward(np.where(outside, 0, g), x.shape,
                                                                       np.where(outside, 0, i_ref)))


@pytest.mark.parametrize("backend", ["cpu", "numba"])
def test_window_of_2_to_the_30_and_parameters_past_int32(rng, backend):
    """Windows of 2^30 x 2^30 taps: each output visits only its taps inside the image (the numba
    kernels visited every tap: 2^60 per output)."""
    x = distinct(rng, (1, 2, 6, 6))
    y, i = P.max_pool2d(x, 2**30, 1, 2**29, return_indices=True, backend=backend)  # windows cover the image
    assert y.shape == (1, 2, 7, 7)
    close(y, np.broadcast_to(x.max(axis=(2, 3), keepdims=True), y.shape), 0)
    np.testing.assert_array_equal(i, np.broadcast_to(x.reshape(1, 2, 36).argmax(-1)[..., None, None], i.shape))
    close(P.avg_pool2d(x, 2**30, 1, 2**29, count_include_pad=False, backend=backend),
          np.broadcast_to(x.mean(axis=(2, 3), keepdims=True), y.shape))
    g = rng.standard_normal(y.shape)
    close(P.max_pool2d_backward(g, x, 2**30, 1, 2**29, backend=backend),
          ref.maxmin_pool_backward(g, x.shape, i))
    for arg in ("kernel_size", "stride", "padding", "dilation"):
        cfg = dict(kernel_size=2**31 if arg == "kernel_size" else 2, stride=2**31 if arg == "stride" else None,
                   padding=2**31 if arg == "padding" else 0, dilation=2**31 if arg == "dilation" else 1)
        with pytest.raises(ValueError, match=f"{arg} must be < 2\\^31"):
            P.max_pool2d(x, **cfg)


@pytest.mark.parametrize("planes", [1, 15, 16, 17, 40])
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (4, 4), (1, 17), (7, 7), (5, 40)])
def test_global_average_in_groups_of_planes(planes, hw, each_isa):
    """Global average pooling (float: AVX-512 sums 16 planes at a time and folds the 16 lane
    vectors together): plane counts below, at and past a group of 16, planes shorter and longer
    than a vector, a NaN and an inf plane that must not reach their neighbours; float64 reference."""
    rng = np.random.default_rng(planes * 100 + hw[0] * hw[1])
    x = rng.standard_normal((1, planes) + hw).astype(np.float32)
    if planes > 3:
        x[0, 1, 0, 0] = np.nan
        x[0, 2, -1, -1] = np.inf
    want = x.astype(np.float64).mean(axis=(2, 3), keepdims=True)
    for got in (P.adaptive_avg_pool2d(x, 1), P.avg_pool2d(x, hw)):
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-7, equal_nan=True)
    np.testing.assert_allclose(P.avg_pool2d(x, hw, divisor_override=3), want * (hw[0] * hw[1] / 3), rtol=2e-6,
                               atol=2e-7, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,pad,ceil", S2_CASES)
def test_3x3_stride2_fast_path_ties_nan_and_chunk_edges(shape, pad, ceil, dtype, rng, each_isa):
    """3x3/s2 with padding 0 or 1 in either ceil mode (ResNet, AlexNet, GoogLeNet) runs forward
    kernels of its own (AVX-512: values only and with indices; AVX2: values only), under each ISA (16 outputs per chunk, each window row read
    as 33 columns): rows shorter, equal and longer than one or two chunks, odd and even sizes (the
    right/bottom padding or a ceil-mode window's overhang inside or outside the last window), 1x1
    planes, heavy ties, NaN, -inf and planes of identities only (indices: the first in-image
    element), values and indices against the float64 reference; avg with every divisor rule."""
    cfg = dict(kernel_size=3, stride=2, padding=pad, ceil_mode=ceil)
    x = rng.integers(-2, 3, size=shape).astype(dtype)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, size=max(1, flat.size // 40), replace=False)] = np.nan
    flat[rng.choice(flat.size, size=max(1, flat.size // 40), replace=False)] = -np.inf
    for kind in ("max", "min"):
        fn = P.max_pool2d if kind == "max" else P.min_pool2d
        xk = x.copy()
        xk[0, 0] = -np.inf if kind == "max" else np.inf         # windows of identities only
        y_only = fn(xk, **cfg)
        y, i = fn(xk, return_indices=True, **cfg)
        ry, ri = ref.maxmin_pool(xk, kind, 3, 2, pad, 1, ceil)
        np.testing.assert_array_equal(y_only, ry.astype(dtype))
        np.testing.assert_array_equal(y, ry.astype(dtype))
        np.testing.assert_array_equal(i, ri)
    xf = rng.standard_normal(shape).astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for extra in ({}, dict(count_include_pad=False), dict(divisor_override=5)):
        np.testing.assert_allclose(P.avg_pool2d(xf, **cfg, **extra), ref.avg_pool(xf, **cfg, **extra),
                                   rtol=tol, atol=tol)
    xn = xf.copy()
    xn.reshape(-1)[rng.choice(xn.size, size=max(1, xn.size // 40), replace=False)] = np.nan
    np.testing.assert_allclose(P.avg_pool2d(xn, **cfg), ref.avg_pool(xn, **cfg), rtol=tol, atol=tol,
                               equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (1, 2, 9, 35), (1, 1, 2, 64), (3, 1, 5, 33), (1, 2, 2, 2),
                                   (1, 1, 3, 3), (2, 64, 61, 67)])
def test_2x2_stride2_backward_fast_path(shape, dtype, rng):
    """Max/min backward with 2x2/s2/p0 indices writes each plane in one pass (windows do not
    overlap): odd sizes (the uncovered last row/column must come out 0 even in a recycled
    buffer: the last shape is over the 1 MiB output-cache size and runs after a garbage result
    of the same size), -0 gradients (+0, as 0 + g), and hand-made indices outside their own
    window (another window's element, or one element for all: the plane falls back to the
    scatter and overlapping gradients add up)."""
    x = rng.integers(-2, 3, size=shape).astype(dtype)
    g = rng.standard_normal((shape[0], shape[1], shape[2] // 2, shape[3] // 2)).astype(dtype)
    g.reshape(-1)[::7] = -0.0
    for kind in ("max", "min"):
        fn, bw = (P.max_pool2d, P.max_pool2d_backward) if kind == "max" else (P.min_pool2d, P.min_pool2d_backward)
        _, i = fn(x, 2, 2, return_indices=True)
        del _
        garbage = np.full(x.shape, np.nan, dtype) + P.avg_pool2d(np.full(x.shape, 7, dtype), 1)  # a dead result
        del garbage
        for idx in (i, np.zeros_like(i), np.roll(i, 1, axis=-1)):
            dx = bw(g, x, 2, 2, indices=idx)
            want = ref.maxmin_pool_backward(g.astype(np.float64), x.shape, idx)
            if idx is not i and not idx.any():     # all on one element: a float sum of many
                close(dx, want, 1e-5 if dtype == np.float32 else 1e-13)
            else:                                   # one gradient per element at most: exact
                np.testing.assert_array_equal(dx, want.astype(dtype))
            assert not np.signbit(dx[dx == 0]).any()                  # no -0
        with pytest.raises(ValueError, match="indices must lie in"):  # its own window's index + 2^32:
            bw(g, x, 2, 2, indices=i + (1 << 32))                   # must not alias into the window
        dx_own = bw(g, x, 2, 2)                                     # indices recomputed
        np.testing.assert_array_equal(dx_own, bw(g, x, 2, 2, indices=i))


# ------------------------------------------------ every ISA build of the kernels
@pytest.mark.parametrize("isa", _isas())
def test_every_isa_build_against_reference(isa):
    """The pooling kernels are compiled for AVX-512, AVX2 and baseline x86-64 and follow the GEMM's
    ISA switch: each build this CPU can run, on random configurations (kernel 1-5, stride, padding,
    dilation, ceil mode, odd sizes, rows shorter and longer than a vector; the 2x2/s2 and 3x3/s2
    fast paths included), forward with and without indices and every backward, float32 and
    float64, against the float64 reference."""
    from fastconv.backends import cpu
    rng = np.random.default_rng(11)
    cases = [dict(kernel_size=2, stride=2, padding=0, ceil_mode=False), dict(kernel_size=3, stride=2, padding=1,
             ceil_mode=False), dict(kernel_size=3, stride=2, padding=0, ceil_mode=True)]
    for _ in range(12):
        k = int(rng.integers(1, 6))
        cases.append(dict(kernel_size=(k, int(rng.integers(1, 6))), stride=(int(rng.integers(1, 4)), int(rng.integers(1, 4))),
                          padding=(int(rng.integers(0, k // 2 + 1)), 0), dilation=int(rng.integers(1, 3)),
                          ceil_mode=bool(rng.integers(0, 2))))
    before = cpu.isa()
    cpu.set_isa(isa)
    try:
        assert cpu._need().pool_isa() == {"portable": "baseline"}.get(isa, isa)
        for cfg in cases:
            shape = (2, 3, int(rng.integers(9, 40)), int(rng.integers(9, 40)))
            for dtype, tol in ((np.float32, 2e-6), (np.float64, 1e-12)):
                x = distinct(rng, shape).astype(dtype)
                for kind in ("max", "min"):
                    fn = P.max_pool2d if kind == "max" else P.min_pool2d
                    bw = P.max_pool2d_backward if kind == "max" else P.min_pool2d_backward
                    y, i = fn(x, return_indices=True, **cfg)
                    ry, ri = ref.maxmin_pool(x, kind, cfg["kernel_size"], cfg["stride"], cfg["padding"],
                                             cfg.get("dilation", 1), cfg["ceil_mode"])
                    np.testing.assert_array_equal(i, ri)
                    close(y, ry, tol)
                    close(fn(x, **cfg), ry, tol)
                    g = rng.standard_normal(y.shape).astype(dtype)
                    want = ref.maxmin_pool_backward(g, x.shape, ri)
                    close(bw(g, x, indices=i, **cfg), want, tol)
                    close(bw(g, x, **cfg), want, tol)
                acfg = {k: v for k, v in cfg.items() if k != "dilation"}
                for extra in ({}, dict(count_include_pad=False)):
                    y = P.avg_pool2d(x, **acfg, **extra)
                    close(y, ref.avg_pool(x, **acfg, **extra), tol)
                    g = rng.standard_normal(y.shape).astype(dtype)
                    close(P.avg_pool2d_backward(g, x, **acfg, **extra),
                          ref.avg_pool_backward(g, x.shape, **acfg, **extra), tol)
    finally:
        cpu.set_isa(before)


def test_adaptive_output_size_forms(rng):
    """output_size as an int, a tuple, a list, an array of two (as torch), NumPy integers, None
    for a kept dimension: the same result; a 2-D array or three values raise naming it."""
    x = rng.standard_normal((2, 3, 9, 7))
    want = P.adaptive_avg_pool2d(x, (4, 3))
    for form in ([4, 3], np.array([4, 3]), (np.int64(4), np.int32(3)), np.array([4, 3], np.uint8)):
        np.testing.assert_array_equal(P.adaptive_avg_pool2d(x, form), want)
        np.testing.assert_array_equal(P.adaptive_max_pool2d(x, form), P.adaptive_max_pool2d(x, (4, 3)))
    np.testing.assert_array_equal(P.adaptive_avg_pool2d(x, (None, 3)), P.adaptive_avg_pool2d(x, (9, 3)))
    with pytest.raises(ValueError, match="output_size"):
        P.adaptive_avg_pool2d(x, np.array([4, 3, 2]))
    with pytest.raises(TypeError, match="output_size"):
        P.adaptive_avg_pool2d(x, np.array([[4, 3]]))
