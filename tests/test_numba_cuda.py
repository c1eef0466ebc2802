"""The Numba CUDA backend (fastconv/backends/numba_cuda.py) against the independent
float64 references (reference.py, pool_reference.py, layers_reference.py).

Runs on a GPU, or on Numba's CUDA simulator: ``NUMBA_ENABLE_CUDASIM=1`` must be
set before numba is imported, so in CI this file runs in its own process::

    NUMBA_ENABLE_CUDASIM=1 pytest -q tests/test_numba_cuda.py

The simulator runs every GPU thread as a Python thread: shapes are tiny, but
cover odd sizes, stride > kernel, 1x1 inputs, dilation, groups, ceil_mode,
padding, ties and NaNs, float32 and float64, forward and backward with random
upstream gradients. Without a GPU and without the simulator everything here
skips with the reason.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastconv import backends, ops
from fastconv.problem import make_problem

import layers_reference as lref
import pool_reference as pref
import reference as ref

pytestmark = pytest.mark.skipif(
    "numba-cuda" not in backends.available(),
    reason="numba-cuda backend unavailable: no GPU for numba.cuda and NUMBA_ENABLE_CUDASIM=1 is not set "
           "(run: NUMBA_ENABLE_CUDASIM=1 pytest tests/test_numba_cuda.py)")

DTYPES = (np.float32, np.float64)
TOL = {np.float32: 2e-5, np.float64: 1e-12}


def _nc():
    return backends.module("numba-cuda")


def _close(out, expect, dtype, what, tol=None):
    err = lref.rel_err(out, expect)
    assert err <= (tol or TOL[dtype]), f"{what}: rel err {err:.3g}"


def _num_grad(f, x, dy, h=1e-6):
    """d/dx sum(dy * f(x)) by central differences, element by element (float64, tiny arrays)."""
    x = np.array(x, np.float64)
    g = np.zeros_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + h
        up = np.sum(dy * f(x))
        flat[i] = keep - h
        down = np.sum(dy * f(x))
        flat[i] = keep
        gf[i] = (up - down) / (2 * h)
    return g


# ------------------------------------------------------------------- registry
def test_registered_but_never_the_automatic_default():
    assert "numba-cuda" in backends.available()
    assert backends.default_backend() != "numba-cuda"
    _, runner = backends.layer_kernel("relu" if False else "activation", "numba-cuda")
    assert runner == "numba-cuda"
    # the per-kernel fallback order for other backends never goes through it
    assert "numba-cuda" not in backends._FALLBACK_ORDER


def test_unavailable_without_gpu_or_simulator_is_silent():
    # a fresh process without the simulator: importing fastconv must not warn,
    # and the backend is listed only where numba.cuda sees a GPU
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    env.pop("FASTCONV_BACKEND", None)
    code = ("import json, warnings\nwarnings.simplefilter('error')\nimport fastconv\n"
            "from fastconv import backends\nimport numba.cuda\n"
            "print(json.dumps([backends.available(), bool(numba.cuda.is_available()), backends.default_backend()]))")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    assert res.returncode == 0, res.stderr
    avail, gpu, default = json.loads(res.stdout.strip().splitlines()[-1])
    assert ("numba-cuda" in avail) == gpu
    assert default != "numba-cuda"
    if not gpu:
        res = subprocess.run([sys.executable, "-c", "import fastconv; fastconv.set_backend('numba-cuda')"],
                             env=env, capture_output=True, text=True, timeout=300,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        assert res.returncode != 0
        assert "ValueError: backend 'numba-cuda' is not available" in res.stderr, res.stderr
        assert "NUMBA_ENABLE_CUDASIM" in res.stderr


# ---------------------------------------------------------------------- conv
# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CONV_CASES = [
    ("3x3_pad", (2, 2, 5, 7, 3, 3, 3, 1, 1, 1, 1)),
    ("stride_gt_kernel", (1, 4, 7, 9, 4, 2, 3, (3, 4), 0, 1, 2)),
    ("1x1_input", (2, 2, 1, 1, 3, 1, 1, 1, 0, 1, 1)),
    ("dilated_depthwise", (1, 4, 7, 6, 4, 3, 2, 2, (2, 1), (2, 1), 4)),
    ("same_stride2_even", (1, 2, 6, 5, 2, 2, 2, 2, "same", 1, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv_direct(name, case, dtype, rng):
    N, C, H, W, K, R, S, stride, padding, dil, groups = case
    p = make_problem((N, C, H, W), (K, C // groups, R, S), stride, padding, dil, groups)
    pads = (p.pad_h, p.pad_bottom, p.pad_w, p.pad_right)
    kw = dict(stride=(p.stride_h, p.stride_w), pads=pads, dilation=(p.dil_h, p.dil_w), groups=groups)
    x = rng.standard_normal(p.input_shape).astype(dtype)
    w = rng.standard_normal(p.weight_shape).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    g = rng.standard_normal(p.output_shape).astype(dtype)
    nc = _nc()
    assert nc.supports("direct", p) == ""
    y = np.full(p.output_shape, np.nan, dtype)
    nc.fprop("direct", p, x, w, b, y, False)
    expect = ref.conv2d(x, w, b, **kw)
    _close(y, expect, dtype, f"{name} fprop")
    nc.fprop("direct", p, x, w, None, y, True)
    _close(y, np.maximum(ref.conv2d(x, w, None, **kw), 0), dtype, f"{name} fprop relu")
    dx = np.full(p.input_shape, np.nan, dtype)
    nc.dgrad("direct", p, g, w, dx)
    _close(dx, ref.conv2d_input(p.input_shape, w, g, **kw), dtype, f"{name} dgrad")
    dw = np.full(p.weight_shape, np.nan, dtype)
    nc.wgrad("direct", p, x, g, dw)
    _close(dw, ref.conv2d_weight(x, p.weight_shape, g, **kw), dtype, f"{name} wgrad")
    # deterministic: a second run is bit-identical
    dw2 = np.empty_like(dw)
    nc.wgrad("direct", p, x, g, dw2)
    assert np.array_equal(dw, dw2)


def test_conv_through_ops(rng):
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    y = ops.conv2d(x, w, b, stride=2, padding=1, algo="direct", backend="numba-cuda")
    _close(y, ref.conv2d(x, w, b, stride=2, pads=(1, 1, 1, 1)), np.float32, "ops.conv2d")
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx = ops.conv2d_input(x.shape, w, g, stride=2, padding=1, algo="direct", backend="numba-cuda")
    _close(dx, ref.conv2d_input(x.shape, w, g, stride=2, pads=(1, 1, 1, 1)), np.float32, "ops.conv2d_input")


def _conv_setup(case, dtype, rng):
    N, C, H, W, K, R, S, stride, padding, dil, groups = case
    p = make_problem((N, C, H, W), (K, C // groups, R, S), stride, padding, dil, groups)
    pads = (p.pad_h, p.pad_bottom, p.pad_w, p.pad_right)
    kw = dict(stride=(p.stride_h, p.stride_w), pads=pads, dilation=(p.dil_h, p.dil_w), groups=groups)
    x = rng.standard_normal(p.input_shape).astype(dtype)
    w = rng.standard_normal(p.weight_shape).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    g = rng.standard_normal(p.output_shape).astype(dtype)
    return p, kw, x, w, b, g


def _run3(algo, p, x, w, b, g, relu=False):
    """(fprop, dgrad, wgrad) of the numba-cuda backend; outputs start as NaN so unwritten elements show."""
    nc = _nc()
    dt = x.dtype
    y = np.full(p.output_shape, np.nan, dt)
    nc.fprop(algo, p, x, w, b, y, relu)
    dx = np.full(p.input_shape, np.nan, dt)
    nc.dgrad(algo, p, g, w, dx)
    dw = np.full(p.weight_shape, np.nan, dt)
    nc.wgrad(algo, p, x, g, dw)
    return y, dx, dw


# the direct cases, plus one with more filters (K = 10) and more reduction (Cg*R*S = 18) than one GEMM tile
# (simulator tiles: GBM = GBN = 8) and uneven dilation/padding
IM2COL_CASES = CONV_CASES + [("k10_dil_pad", (2, 3, 6, 5, 10, 3, 2, 1, (1, 2), (2, 1), 1))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,case", IM2COL_CASES, ids=[c[0] for c in IM2COL_CASES])
def test_conv_im2col(name, case, dtype, rng):
    """im2col + shared-memory tiled GEMM: Fprop (+bias, +relu), Dgrad (GEMM + gather col2im), Wgrad."""
    p, kw, x, w, b, g = _conv_setup(case, dtype, rng)
    nc = _nc()
    assert nc.supports("im2col", p) == ""
    y, dx, dw = _run3("im2col", p, x, w, b, g)
    _close(y, ref.conv2d(x, w, b, **kw), dtype, f"{name} fprop")
    _close(dx, ref.conv2d_input(p.input_shape, w, g, **kw), dtype, f"{name} dgrad")
    _close(dw, ref.conv2d_weight(x, p.weight_shape, g, **kw), dtype, f"{name} wgrad")
    yr = np.full(p.output_shape, np.nan, dtype)
    nc.fprop("im2col", p, x, w, None, yr, True)
    _close(yr, np.maximum(ref.conv2d(x, w, None, **kw), 0), dtype, f"{name} fprop relu")
    nc.fprop("im2col", p, x, w, b, yr, True)
    _close(yr, np.maximum(ref.conv2d(x, w, b, **kw), 0), dtype, f"{name} fprop bias+relu")
    # deterministic: a second run is bit-identical
    y2, dx2, dw2 = _run3("im2col", p, x, w, b, g)
    assert np.array_equal(y, y2) and np.array_equal(dx, dx2) and np.array_equal(dw, dw2)


# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
ONE_CASES = [
    ("plain_gemm_groups", (2, 4, 3, 5, 6, 1, 1, 1, 0, 1, 2)),     # stride 1: the input is the column matrix
    ("plain_gemm_k9", (1, 3, 4, 3, 9, 1, 1, 1, 0, 1, 1)),         # K and N*H*W beyond one GEMM tile
    ("strided_via_im2col", (2, 3, 5, 4, 2, 1, 1, (2, 3), 0, 1, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,case", ONE_CASES, ids=[c[0] for c in ONE_CASES])
def test_conv_1x1(name, case, dtype, rng):
    p, kw, x, w, b, g = _conv_setup(case, dtype, rng)
    assert _nc().supports("1x1", p) == ""
    y, dx, dw = _run3("1x1", p, x, w, b, g, relu=True)
    _close(y, np.maximum(ref.conv2d(x, w, b, **kw), 0), dtype, f"{name} fprop bias+relu")
    _close(dx, ref.conv2d_input(p.input_shape, w, g, **kw), dtype, f"{name} dgrad")
    _close(dw, ref.conv2d_weight(x, p.weight_shape, g, **kw), dtype, f"{name} wgrad")


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_im2col_batch_tiles(dtype, rng, monkeypatch):
    """A column buffer limit of a few columns splits the N*P*Q columns into many batch tiles, with tile
    boundaries inside images (Dgrad's gather then adds an image's contributions tile by tile)."""
    nc = _nc()
    case = (2, 4, 5, 4, 4, 3, 2, (2, 1), (1, 0), (1, 2), 2)   # P x Q = 3 x 2: 12 columns
    p, kw, x, w, b, g = _conv_setup(case, dtype, rng)
    whole = _run3("im2col", p, x, w, b, g, relu=True)
    assert len(nc._tiles(p, dtype)[1]) == 1
    for cols in (7, 4):   # tiles [0,7) [7,12) and [0,4) [4,8) [8,12): boundaries inside images
        monkeypatch.setattr(nc, "COL_BYTES", p.C * p.R * p.S * np.dtype(dtype).itemsize * cols)
        width, tiles = nc._tiles(p, dtype)
        assert width == cols and len(tiles) == -(-p.N * p.P * p.Q // cols) > 1
        y, dx, dw = _run3("im2col", p, x, w, b, g, relu=True)
        # Fprop: every output column is computed whole in one tile: bit-identical
        assert np.array_equal(y, whole[0])
        _close(dx, ref.conv2d_input(p.input_shape, w, g, **kw), dtype, f"{cols}-column tiles dgrad")
        _close(dw, ref.conv2d_weight(x, p.weight_shape, g, **kw), dtype, f"{cols}-column tiles wgrad")
        if cols == 4:   # and deterministic with the tiles too
            y2, dx2, dw2 = _run3("im2col", p, x, w, b, g, relu=True)
            assert np.array_equal(dx, dx2) and np.array_equal(dw, dw2)


def test_conv_im2col_through_ops(rng):
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    nb = dict(stride=(2, 1), padding=1, algo="im2col", backend="numba-cuda")
    kw = dict(stride=(2, 1), pads=(1, 1, 1, 1))
    y = ops.conv2d(x, w, b, activation="relu", **nb)
    _close(y, np.maximum(ref.conv2d(x, w, b, **kw), 0), np.float32, "ops.conv2d im2col relu")
    g = rng.standard_normal(y.shape).astype(np.float32)
    _close(ops.conv2d_input(x.shape, w, g, **nb), ref.conv2d_input(x.shape, w, g, **kw), np.float32,
           "ops.conv2d_input im2col")
    _close(ops.conv2d_weight(x, w.shape, g, **nb), ref.conv2d_weight(x, w.shape, g, **kw), np.float32,
           "ops.conv2d_weight im2col")


def test_conv_auto(rng):
    """algo='auto' follows the compiled CPU path's table (im2col, 1x1, direct for depthwise); the one
    algorithm numba-cuda lacks (separable) runs on im2col."""
    from fastconv.ops import conv as c

    pick = lambda xs, ws, **k: c._pick("auto", make_problem(xs, ws, k.get("stride", 1), k.get("padding", 0), 1,
                                                            k.get("groups", 1)), "fprop", "numba-cuda")
    assert pick((1, 4, 5, 5), (3, 4, 3, 3), padding=1) == "im2col"
    assert pick((1, 4, 5, 5), (3, 4, 1, 1)) == "1x1"
    assert pick((1, 4, 5, 5), (4, 1, 3, 3), groups=4) == "direct"
    assert c._auto(make_problem((1, 32, 5, 5), (3, 32, 1, 3), 1, 0, 1, 1), "fprop") == "separable"
    assert pick((1, 32, 5, 5), (3, 32, 1, 3)) == "im2col"
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    for w in (rng.standard_normal((3, 4, 3, 3)).astype(np.float32), rng.standard_normal((3, 4, 1, 1)).astype(np.float32)):
        pad = w.shape[-1] // 2
        y = ops.conv2d(x, w, padding=pad, backend="numba-cuda")
        _close(y, ref.conv2d(x, w, None, pads=(pad,) * 4), np.float32, "auto fprop")
        g = rng.standard_normal(y.shape).astype(np.float32)
        _close(ops.conv2d_input(x.shape, w, g, padding=pad, backend="numba-cuda"),
               ref.conv2d_input(x.shape, w, g, pads=(pad,) * 4), np.float32, "auto dgrad")
        _close(ops.conv2d_weight(x, w.shape, g, padding=pad, backend="numba-cuda"),
               ref.conv2d_weight(x, w.shape, g, pads=(pad,) * 4), np.float32, "auto wgrad")


def test_conv_unsupported_algorithms_refused():
    nc = _nc()
    z = lambda shape: np.zeros(shape, np.float32)
    p = make_problem((1, 2, 4, 4), (2, 2, 1, 3), 1, 0, 1, 1)
    assert "no separable kernel" in nc.supports("separable", p)
    assert "unknown algorithm" in nc.supports("winograd", p)
    assert "1x1 kernel, got 1x3" in nc.supports("1x1", p)
    assert "zero padding" in nc.supports("1x1", make_problem((1, 2, 4, 4), (2, 2, 1, 1), 1, 1, 1, 1))
    for algo in ("separable", "1x1"):
        with pytest.raises(ValueError, match=algo):
            nc.fprop(algo, p, z(p.input_shape), z(p.weight_shape), None, z(p.output_shape))
    with pytest.raises(ValueError, match="separable"):
        nc.wgrad("separable", p, z(p.input_shape), z(p.output_shape), z(p.weight_shape))


def test_bad_arguments_name_the_array():
    p = make_problem((1, 2, 4, 4), (2, 2, 3, 3), 1, 1, 1, 1)
    nc = _nc()
    x = np.zeros(p.input_shape, np.float32)
    w = np.zeros(p.weight_shape, np.float32)
    with pytest.raises(TypeError, match="weight"):
        nc.fprop("direct", p, x, w.astype(np.float64), None, np.zeros(p.output_shape, np.float32))
    with pytest.raises(ValueError, match="output.*elements"):
        nc.fprop("direct", p, x, w, None, np.zeros((1, 2, 4, 3), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        nc.fprop("direct", p, x, w, None, np.zeros((1, 2, 4, 8), np.float32)[..., ::2])
    with pytest.raises(TypeError, match="grad_input"):
        nc.dgrad("im2col", p, np.zeros(p.output_shape, np.float32), w, np.zeros(p.input_shape, np.float64))
    with pytest.raises(ValueError, match="grad_weight.*elements"):
        nc.wgrad("im2col", p, x, np.zeros(p.output_shape, np.float32), np.zeros((2, 2, 3, 2), np.float32))
    relu = nc.layer_kernel("activation")
    with pytest.raises(ValueError, match="read-only"):
        out = np.zeros(3, np.float32)
        out.flags.writeable = False
        relu(0, None, np.ones(3, np.float32), out)
    with pytest.raises(ValueError, match="pool: padding"):
        nc.layer_kernel("pool2d_forward")(0, np.zeros((1, 4, 4), np.float32), np.zeros((1, 4, 4), np.float32),
                                           None, 2, 2, 1, 1, 2, 0, 1, 1, True, 0)


# ---------------------------------------------------------------------- pool
# (H, W, kernel, stride, padding, dilation, ceil_mode)
POOL_CASES = [
    ("3x3_s2_pad", (7, 6, 3, 2, 1, 1, False)),
    ("ceil_mode", (6, 7, 3, 2, 1, 1, True)),
    ("stride_gt_kernel", (7, 8, 2, 3, 0, 1, True)),
    ("dilated", (8, 7, (3, 2), (1, 2), (1, 1), (2, 3), False)),
    ("1x1_input", (1, 1, 1, 1, 0, 1, False)),
    ("global", (5, 3, (5, 3), 1, 0, 1, False)),
]


def _pool_geom(case):
    H, W, k, s, p, d, ceil = case
    k, s, p, d = (pref._pair(v) for v in (k, s, p, d))
    P = pref.out_size(H, k[0], s[0], p[0], d[0], ceil)
    Q = pref.out_size(W, k[1], s[1], p[1], d[1], ceil)
    return H, W, k, s, p, d, ceil, P, Q


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["max", "min"])
@pytest.mark.parametrize("name,case", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_maxmin_pool(name, case, kind, dtype, rng):
    H, W, k, s, p, d, ceil, P, Q = _pool_geom(case)
    N, C = 2, 2
    # small integers: many ties, so the first-extreme rule is exercised
    x = rng.integers(-3, 4, (N, C, H, W)).astype(dtype)
    if H * W > 4:
        x[0, 1, 1, 1] = np.nan
    ey, ei = pref.maxmin_pool(x, kind, k, s, p, d, ceil)
    nc = _nc()
    kd = 0 if kind == "max" else 1
    geo = (k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], True, 0)
    y = np.empty((N * C, P, Q), dtype)
    idx = np.full((N * C, P, Q), -1, np.int64)
    nc.layer_kernel("pool2d_forward")(kd, x.reshape(N * C, H, W), y, idx, *geo)
    np.testing.assert_array_equal(y.reshape(ey.shape), ey.astype(dtype))
    np.testing.assert_array_equal(idx.reshape(ei.shape), ei)
    g = rng.standard_normal((N * C, P, Q)).astype(dtype)
    expect = pref.maxmin_pool_backward(g.reshape(N, C, P, Q), x.shape, ei)
    bwd = nc.layer_kernel("pool2d_backward")
    for use_idx in (True, False):
        dx = np.full((N * C, H, W), np.nan, dtype)
        bwd(kd, g, x.reshape(N * C, H, W), idx if use_idx else None, dx, *geo)
        _close(dx.reshape(x.shape), expect, dtype, f"{name} {kind} backward (indices={use_idx})")


AVG_CASES = [
    ("pad_include", (7, 6, 3, 2, 1, True, None, False)),
    ("pad_exclude_ceil", (6, 7, 3, 2, 1, False, None, True)),
    ("divisor_override", (5, 5, 2, 3, 1, True, 3, True)),
    ("1x1_input", (1, 1, 1, 1, 0, True, None, False)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,case", AVG_CASES, ids=[c[0] for c in AVG_CASES])
def test_avg_pool(name, case, dtype, rng):
    H, W, k, s, p, cip, div, ceil = case
    N, C = 2, 3
    P = pref.out_size(H, k, s, p, 1, ceil)
    Q = pref.out_size(W, k, s, p, 1, ceil)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    nc = _nc()
    geo = (k, k, s, s, p, p, 1, 1, cip, div or 0)
    y = np.empty((N * C, P, Q), dtype)
    nc.layer_kernel("pool2d_forward")(2, x.reshape(N * C, H, W), y, None, *geo)
    kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=cip, divisor_override=div)
    _close(y.reshape(N, C, P, Q), pref.avg_pool(x, **kw), dtype, f"{name} avg forward")
    g = rng.standard_normal((N * C, P, Q)).astype(dtype)
    dx = np.full((N * C, H, W), np.nan, dtype)
    nc.layer_kernel("pool2d_backward")(2, g, None, None, dx, *geo)
    _close(dx.reshape(x.shape), pref.avg_pool_backward(g.reshape(N, C, P, Q), x.shape, **kw), dtype,
           f"{name} avg backward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw,out", [((7, 5), (3, 2)), ((4, 6), (4, 6)), ((3, 3), (5, 4)), ((5, 6), (1, 1))])
def test_adaptive_pool(hw, out, dtype, rng):
    N, C = 2, 2
    x = rng.integers(-3, 4, (N, C) + hw).astype(dtype)
    nc = _nc()
    planes = N * C
    x3 = x.reshape(planes, *hw)
    fwd = nc.layer_kernel("adaptive_pool2d_forward")
    bwd = nc.layer_kernel("adaptive_pool2d_backward")
    g = rng.standard_normal((planes,) + out).astype(dtype)
    # avg
    y = np.empty((planes,) + out, dtype)
    fwd(2, x3, y, None)
    _close(y.reshape(N, C, *out), pref.adaptive_pool(x, out, "avg")[0], dtype, "adaptive avg")
    dx = np.full(x3.shape, np.nan, dtype)
    bwd(2, g, None, None, dx)
    _close(dx.reshape(x.shape), pref.adaptive_avg_backward(g.reshape(N, C, *out), x.shape), dtype,
           "adaptive avg backward")
    # max, with ties
    ey, ei = pref.adaptive_pool(x, out, "max")
    idx = np.full((planes,) + out, -1, np.int64)
    fwd(0, x3, y, idx)
    np.testing.assert_array_equal(y.reshape(ey.shape), ey.astype(dtype))
    np.testing.assert_array_equal(idx.reshape(ei.shape), ei)
    expect = pref.maxmin_pool_backward(g.reshape(N, C, *out), x.shape, ei)
    for use_idx in (True, False):
        dx = np.full(x3.shape, np.nan, dtype)
        bwd(0, g, x3, idx if use_idx else None, dx)
        _close(dx.reshape(x.shape), expect, dtype, f"adaptive max backward (indices={use_idx})")


def test_pool_through_ops(rng):
    x = rng.standard_normal((1, 2, 7, 6)).astype(np.float32)
    y, idx = ops.max_pool2d(x, 3, 2, 1, dilation=1, ceil_mode=True, return_indices=True, backend="numba-cuda")
    ey, ei = pref.maxmin_pool(x, "max", 3, 2, 1, 1, True)
    np.testing.assert_array_equal(idx, ei)
    _close(y, ey, np.float32, "ops.max_pool2d")


# --------------------------------------------------------------- batch norm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 4, 3, 5), (5, 3), (6, 3, 1, 1)])
def test_batch_norm(shape, dtype, rng):
    nc = _nc()
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    N, C = shape[0], shape[1]
    L = int(np.prod(shape[2:], dtype=np.int64))
    eps = 1e-5
    mean, var = np.empty(C), np.empty(C)
    nc.layer_kernel("bn_stats")(x, N, C, L, mean, var)
    _, emean, evar = lref.batch_norm_train(x)
    _close(mean, emean, np.float64, "bn mean", 1e-12 if dtype == np.float64 else 1e-6)
    _close(var, evar, np.float64, "bn var", 1e-10 if dtype == np.float64 else 1e-5)
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    invstd = 1 / np.sqrt(evar + eps)
    y = np.empty_like(x)
    nc.layer_kernel("bn_apply")(x, N, C, L, emean, invstd, w, b, y)
    _close(y, lref.batch_norm_eval(x, emean, evar, w, b, eps), dtype, "bn apply", 1e-5 if dtype == np.float32 else None)
    nc.layer_kernel("bn_apply")(x, N, C, L, emean, invstd, None, None, y)
    _close(y, lref.batch_norm_eval(x, emean, evar, None, None, eps), dtype, "bn apply (no affine)",
           1e-5 if dtype == np.float32 else None)
    dy = rng.standard_normal(shape).astype(dtype)
    edx, edw, edb = lref.batch_norm_train_backward(dy, x, w, eps)
    dx, dw, db = np.empty_like(x), np.empty(C, dtype), np.empty(C, dtype)
    bwd = nc.layer_kernel("bn_backward")
    bwd(dy, x, N, C, L, emean, invstd, w, True, dx, dw, db)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    _close(dx, edx, dtype, "bn backward dx", tol)
    _close(dw, edw, dtype, "bn backward dw", tol)
    _close(db, edb, dtype, "bn backward db", tol)
    # eval mode: the statistics are constants
    bwd(dy, x, N, C, L, emean, invstd, w, False, dx, None, None)
    ax = (0,) + tuple(range(2, len(shape)))
    bs = (1, C) + (1,) * (len(shape) - 2)
    _close(dx, lref.f64(dy) * (lref.f64(w) * invstd).reshape(bs), dtype, "bn eval backward dx", tol)
    bwd(dy, x, N, C, L, emean, invstd, None, False, None, dw, db)
    _close(dw, (lref.f64(dy) * (lref.f64(x) - emean.reshape(bs)) * invstd.reshape(bs)).sum(axis=ax), dtype,
           "bn eval backward dw", tol)
    _close(db, lref.f64(dy).sum(axis=ax), dtype, "bn eval backward db", tol)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator computes with NumPy scalars
def test_batch_norm_variance_of_nan_inf_and_overflow():
    """bn_stats' variance rule, as the CPU kernel's: NaN/inf in a channel gives a NaN variance
    (not a clamped 0), finite data whose squares overflow gives +inf, the other channels are exact."""
    nc = _nc()
    x = np.array([[0.0, 1.0, 1e200], [np.nan, 4.0, -1e200], [2.0, 2.0, 3e200], [3.0, 8.0, 0.0]])
    mean, var = np.empty(3), np.empty(3)
    nc.layer_kernel("bn_stats")(x, 4, 3, 1, mean, var)
    assert np.isnan(var[0]) and var[2] == np.inf
    np.testing.assert_allclose(var[1], np.var(x[:, 1]), rtol=1e-12)
    x[1, 0] = np.inf
    nc.layer_kernel("bn_stats")(x, 4, 3, 1, mean, var)
    assert np.isnan(var[0])


# ---------------------------------------------------------------------- LRN
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size,beta", [(3, 0.75), (4, 0.5), (1, 1.3)])
def test_lrn(size, beta, dtype, rng):
    nc = _nc()
    shape = (2, 5, 3)
    N, C, L = 2, 5, 3
    x = rng.standard_normal(shape).astype(dtype)
    alpha, k = 0.3, 1.5
    y = np.empty_like(x)
    nc.layer_kernel("lrn")(None, x, N, C, L, size, alpha, beta, k, y)
    _close(y, lref.lrn(x, size, alpha, beta, k), dtype, "lrn forward")
    dy = rng.standard_normal(shape)
    dx = np.empty_like(x)
    nc.layer_kernel("lrn")(dy.astype(dtype), x, N, C, L, size, alpha, beta, k, dx)
    expect = _num_grad(lambda v: lref.lrn(v, size, alpha, beta, k), x, dy.astype(dtype))
    _close(dx, expect, dtype, "lrn backward", 1e-5 if dtype == np.float32 else 1e-8)


# -------------------------------------------------------------- activations
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,name", [(0, "relu"), (1, "sigmoid"), (2, "tanh")])
def test_activation(kind, name, dtype, rng):
    nc = _nc()
    act = nc.layer_kernel("activation")
    x = (rng.standard_normal(37) * 4).astype(dtype)
    x[:3] = [0, 30, -30]
    y = np.empty_like(x)
    act(kind, None, x, y)
    fn = getattr(lref, name)
    _close(y, fn(x), dtype, f"{name} forward", 1e-6 if dtype == np.float32 else None)
    dy = rng.standard_normal(37).astype(dtype)
    dx = np.empty_like(x)
    act(kind, dy, y, dx)   # the backward takes the forward's output
    x64 = lref.f64(x)
    deriv = {"relu": (x64 > 0).astype(float), "sigmoid": fn(x64) * (1 - fn(x64)), "tanh": 1 - np.tanh(x64) ** 2}
    _close(dx, lref.f64(dy) * deriv[name], dtype, f"{name} backward", 1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape,dim", [((3, 7), 1), ((2, 4, 3), 1), ((5, 1), 1), ((3, 2, 2), 0), ((2, 45), 1)])
def test_softmax(shape, dim, log, dtype, rng):
    nc = _nc()
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    outer = int(np.prod(shape[:dim], dtype=np.int64))
    D = shape[dim]
    inner = int(np.prod(shape[dim + 1:], dtype=np.int64))
    f = (lambda v: lref.log_softmax(v, dim)) if log else (lambda v: lref.softmax(v, dim))
    y = np.empty_like(x)
    nc.layer_kernel("softmax")(log, outer, D, inner, None, x, y)
    _close(y, f(x), dtype, "softmax forward", 1e-6 if dtype == np.float32 else None)
    dy = rng.standard_normal(shape).astype(dtype)
    dx = np.empty_like(x)
    nc.layer_kernel("softmax")(log, outer, D, inner, dy, y, dx)
    _close(dx, _num_grad(f, x, dy), dtype, "softmax backward", 1e-5 if dtype == np.float32 else 1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("C", [7, 41])
def test_cross_entropy(C, eps, dtype, rng):
    nc = _nc()
    N = 5
    z = (rng.standard_normal((N, C)) * 3).astype(dtype)
    t = rng.integers(0, C, N).astype(np.int64)
    t[2] = -100
    rows = np.empty(N)
    grad = np.empty_like(z)
    scale = 0.25
    nc.layer_kernel("cross_entropy")(z, t, N, C, -100, eps, scale, rows, grad)
    erows, _ = lref.cross_entropy_rows(z, t, eps, -100)
    _close(rows, erows, dtype, "cross entropy rows", 1e-6 if dtype == np.float32 else None)
    eg = scale * _num_grad(lambda v: lref.cross_entropy_rows(v, t, eps, -100)[0], z, np.ones(N))
    _close(grad, eg, dtype, "cross entropy grad", 1e-5 if dtype == np.float32 else 1e-8)
    bad = t.copy()
    bad[0] = C
    with pytest.raises(ValueError, match=r"target\[0\]"):
        nc.layer_kernel("cross_entropy")(z, bad, N, C, -100, eps, scale, rows, grad)


# ------------------------------------------------------------------ dropout
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_matches_compiled_cpu_mask(dtype, rng):
    nc = _nc()
    n = 300
    x = rng.standard_normal(n).astype(dtype)
    p = 0.3
    thr = int(round(p * 2 ** 32))
    scale = 1 / (1 - p)
    cases = [(7, 0), (2 ** 40 + 123, 5 * 2 ** 32 - 100), (2 ** 64 - 1, 2 ** 33 + 7)]
    try:
        from fastconv import _cpu
    except ImportError:
        _cpu = None
    for seed, offset in cases:
        y = np.empty_like(x)
        mask = np.empty(n, np.uint8)
        nc.layer_kernel("dropout")(x, seed, offset, thr, scale, y, mask)
        assert 0.1 < 1 - mask.mean() < 0.5
        np.testing.assert_array_equal(y, x * np.where(mask == 1, dtype(scale), dtype(0)))
        if _cpu is not None:
            y2 = np.empty_like(x)
            mask2 = np.empty(n, np.uint8)
            _cpu.dropout(x, seed, offset, thr, scale, y2, mask2)
            np.testing.assert_array_equal(mask, mask2)
            np.testing.assert_array_equal(y, y2)
        dy = rng.standard_normal(n).astype(dtype)
        dx = np.empty_like(x)
        nc.layer_kernel("dropout_backward")(dy, mask, scale, dx)
        np.testing.assert_array_equal(dx, dy * np.where(mask == 1, dtype(scale), dtype(0)))
    if _cpu is None:
        pytest.skip("mask checked for shape and rate only: the compiled module fastconv._cpu is not built")


# ------------------------------------------------------------------- linear
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,I,O", [(5, 7, 3), (1, 1, 1), (9, 4, 10), (0, 3, 2), (3, 0, 2)])
def test_linear(M, I, O, dtype, rng):
    nc = _nc()
    x = rng.standard_normal((M, I)).astype(dtype)
    w = rng.standard_normal((O, I)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    y = np.full((M, O), np.nan, dtype)
    nc.layer_kernel("linear")(x, w, b, M, I, O, y)
    _close(y, lref.linear(x, w, b), dtype, "linear")
    nc.layer_kernel("linear")(x, w, None, M, I, O, y)
    _close(y, lref.linear(x, w), dtype, "linear (no bias)")
    dy = rng.standard_normal((M, O)).astype(dtype)
    dx, dw, db = (np.full(s, np.nan, dtype) for s in ((M, I), (O, I), (O,)))
    nc.layer_kernel("linear_backward")(dy, x, w, M, I, O, dx, dw, db)
    d64 = lref.f64(dy)
    _close(dx, d64 @ lref.f64(w), dtype, "linear dx")
    _close(dw, d64.T @ lref.f64(x), dtype, "linear dw")
    _close(db, d64.sum(axis=0), dtype, "linear db")


# ------------------------------------------------------------ device arrays
def test_device_arrays_in_place(rng):
    from numba import cuda

    nc = _nc()
    p = make_problem((1, 2, 5, 4), (3, 2, 3, 3), 1, 1, 1, 1)
    x = rng.standard_normal(p.input_shape).astype(np.float32)
    w = rng.standard_normal(p.weight_shape).astype(np.float32)
    dx_, dw_ = cuda.to_device(x), cuda.to_device(w)
    dy_ = cuda.device_array(p.output_shape, np.float32)
    nc.fprop("direct", p, dx_, dw_, None, dy_, False)   # device in, device out
    _close(dy_.copy_to_host(), ref.conv2d(x, w, None, pads=(1, 1, 1, 1)), np.float32, "fprop on device arrays")
    dy2_ = cuda.device_array(p.output_shape, np.float32)
    nc.fprop("im2col", p, dx_, dw_, None, dy2_, False)
    _close(dy2_.copy_to_host(), ref.conv2d(x, w, None, pads=(1, 1, 1, 1)), np.float32, "im2col on device arrays")
    # a layer kernel mixing a device input and a NumPy output
    out = np.empty(x.size, np.float32)
    nc.layer_kernel("activation")(0, None, cuda.to_device(x.reshape(-1)), out)
    _close(out, lref.relu(x.reshape(-1)), np.float32, "relu device -> host")
    with pytest.raises(TypeError, match="weight"):
        nc.fprop("direct", p, dx_, cuda.to_device(w.astype(np.float64)), None, dy_, False)


# ----------------------------------------------- the real CUDA target (PTX)
# The simulator runs the kernels as Python, so it never types them for the
# GPU. This compiles every kernel, for both dtypes, with the argument types the
# host wrappers pass, to PTX for the real target (sm_90) in a process without
# the simulator. No GPU is needed, only NVVM; where a GPU is present its own
# compute capability is used. T: the element dtype; A(x): a C-contiguous 1-D array;
# tN: a tuple of N int64 (the conv_gemm operand descriptors).
_SIGS = {
    "conv_fprop": "A(T) A(T) A(T) b A(T) b" + " i" * 17,
    "conv_dgrad": "A(T) A(T) A(T)" + " i" * 17,
    "conv_wgrad": "A(T) A(T) A(T)" + " i" * 17,
    "im2col": "A(T) A(T)" + " i" * 15,
    "col2im": "A(T) A(T)" + " i" * 17,
    "conv_gemm": "A(T) t10 A(T) t10 A(T) t10 i i i i A(T) b i b b",
    "pool_fwd": "i A(T) A(T) A(i8) b" + " i" * 13 + " b i",
    "pool_bwd": "i A(T) A(i8) A(T)" + " i" * 13 + " b i",
    "apool_fwd": "i A(T) A(T) A(i8) b i i i i i",
    "apool_bwd": "i A(T) A(i8) A(T) i i i i i",
    "bn_stats": "A(T) i i i f A(f) A(f)",
    "bn_apply": "A(T) i i i A(f) A(f) A(T) b A(T) b A(T)",
    "bn_grad_sums": "A(T) A(T) i i i A(f) A(f) A(f) A(f) A(T) b A(T) b",
    "bn_dx": "A(T) A(T) i i i f A(f) A(f) A(T) b b A(f) A(f) A(T)",
    "lrn_fwd": "A(T) i i i i f f f A(T)",
    "lrn_bwd": "A(T) A(T) i i i i f f f A(T)",
    "act_fwd": "i A(T) A(T) i",
    "act_bwd": "i A(T) A(T) A(T) i",
    "softmax_fwd": "b i i i A(T) A(T)",
    "softmax_bwd": "b i i i A(T) A(T) A(T)",
    "softmax_rows_fwd": "b i i A(T) A(T)",
    "softmax_rows_bwd": "b i i A(T) A(T) A(T)",
    "cross_entropy": "A(T) A(i8) i i i f f A(f) A(T)",
    "dropout_fwd": "A(T) i u u u u T A(T) A(u1)",
    "dropout_bwd": "A(T) A(u1) T A(T) i",
    "gemm": "A(T) i i A(T) i i A(T) i i i A(T) b",
    "col_sums": "A(T) i i A(T)",
}

_PTX_SCRIPT = r"""
import json, sys, types as pytypes
import numpy as np
import numba
from numba import cuda, types
from fastconv.backends import numba_cuda as nc
sigs = json.loads(sys.argv[1])
try:
    from numba.cuda.cudadrv import nvvm
    nvvm.NVVM()
except Exception as exc:
    print(json.dumps({"skip": f"NVVM is not usable here: {exc!r}"}))
    sys.exit(0)
if nc.AVAILABLE:
    cc = cuda.get_current_device().compute_capability
else:
    # no GPU: device functions are compiled for the current device's
    # compute capability, so name one (numba internals; skip if they moved)
    import numba.cuda.dispatcher as disp
    if not hasattr(disp, "get_current_device"):
        print(json.dumps({"skip": "numba.cuda.dispatcher.get_current_device moved: cannot compile without a GPU"}))
        sys.exit(0)
    cc = (9, 0)
    disp.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=cc)
out = {"ok": 0, "fail": []}
for dt in ("float32", "float64"):
    ks = nc._build(np.dtype(dt))
    names = {"T": numba.from_dtype(np.dtype(dt)), "i": types.int64, "b": types.boolean, "f": types.float64,
             "u": types.uint64, "i8": types.int64, "u1": types.uint8}
    assert set(ks) == set(sigs), sorted(set(ks) ^ set(sigs))
    for name, sig in sigs.items():
        args = tuple(types.Array(names[t[2:-1]], 1, "C") if t.startswith("A(") else
                     types.UniTuple(types.int64, int(t[1:])) if t.startswith("t") else names[t] for t in sig.split())
        try:
            cuda.compile_ptx(ks[name].py_func, args, cc=cc)
            out["ok"] += 1
        except Exception as exc:
            out["fail"].append(f"{dt} {name}: {str(exc)[:400]}")
print(json.dumps(out))
"""


def test_kernels_compile_for_the_real_cuda_target():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    res = subprocess.run([sys.executable, "-c", _PTX_SCRIPT, json.dumps(_SIGS)], env=env, capture_output=True,
                         text=True, timeout=600, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    if "skip" in r:
        pytest.skip(r["skip"])
    assert not r["fail"], "\n".join(r["fail"])
    assert r["ok"] == 2 * len(_SIGS)


def test_layer_ops_through_backend(rng):
    x = rng.standard_normal((3, 5, 2, 2)).astype(np.float32)
    nb = dict(backend="numba-cuda")
    _close(ops.softmax(x, 1, **nb), lref.softmax(x, 1), np.float32, "ops.softmax", 1e-6)
    _close(ops.relu(x, **nb), lref.relu(x), np.float32, "ops.relu")
    w = rng.standard_normal((4, 2)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    _close(ops.linear(x, w, b, **nb), lref.linear(x, w, b), np.float32, "ops.linear")
    z = rng.standard_normal((4, 6))
    t = np.array([0, 5, -100, 2])
    loss, _ = ops.cross_entropy(z, t, 0.1, **nb)
    _close(loss, lref.cross_entropy(z, t, 0.1), np.float64, "ops.cross_entropy", 1e-12)
    if "cpu" in backends.available():
        y1, m1 = ops.dropout(x, 0.4, seed=11, **nb)
        y2, m2 = ops.dropout(x, 0.4, seed=11, backend="cpu")
        np.testing.assert_array_equal(m1, m2)
        np.testing.assert_array_equal(y1, y2)
