"""The register-blocked AVX-512 direct convolution (csrc/cpu/conv_kvec.h) that algo "direct" runs
for fp32 problems with 16+ output lanes, against the float64 reference of tests/reference.py.

Its tiles, row chunks, padded copies, weight re-layouts and (for Wgrad) batch blocks each have
edges of their own, so the configurations here are drawn to cross them: output channels per group
that are not a multiple of 16, rows narrower and wider than a tile (1 to 60 pixels), strides larger
than the kernel, dilation, groups, asymmetric ('same') padding, 1x1 maps, batches whose Wgrad
splits into several blocks, and rows too wide for one padded chunk. Each test first checks that
the kernel really takes the problem (fastconv.backends.cpu.direct_vectorized), so none of them
passes by running the scalar direct kernel instead; on a CPU without AVX-512 they skip, visibly.
"""
import numpy as np
import pytest

import fastconv
from fastconv import ops
from fastconv.backends import cpu
from fastconv.problem import make_problem

import reference as ref
from helpers import TOL32, check_close, seed_of

pytestmark = pytest.mark.skipif(
    not cpu.CPU_AVAILABLE or "avx512" not in cpu.available_isas(),
    reason="the register-blocked direct kernel needs the compiled module on an AVX-512 CPU")


@pytest.fixture(autouse=True)
def _avx512():
    cpu.set_isa("avx512")
    yield
    cpu.set_isa("auto")


def _draw(i):
    """Random configuration i: (input shape, weight shape, conv kwargs, reference pads)."""
    rng = np.random.default_rng(seed_of("kvec", i))
    groups = int(rng.choice([1, 1, 1, 2, 3]))
    Cg = int(rng.choice([1, 2, 3, 5, 16, 17, 24]))
    Kg = int(rng.choice([16, 17, 20, 31, 32, 33, 48, 64]))
    R, S = (int(v) for v in rng.choice([1, 2, 3, 4, 5, 7], size=2))
    sh, sw = (int(v) for v in rng.choice([1, 1, 1, 2, 3, 4, 6], size=2))  # up to stride > kernel
    dh, dw = (int(v) for v in rng.choice([1, 1, 2, 3], size=2))
    N = int(rng.choice([1, 2, 3, 5]))
    H = int(rng.integers(max(1, (R - 1) * dh - 2), 30))
    W = int(rng.integers(max(1, (S - 1) * dw - 2), 62))
    if i % 5 == 0:
        padding = "same"
        sh = sw = 1
    else:
        padding = (int(rng.integers(0, R // 2 + 1)) * dh, int(rng.integers(0, S // 2 + 1)) * dw)
        # keep at least one output row and column
        H = max(H, (R - 1) * dh + 1 - 2 * padding[0])
        W = max(W, (S - 1) * dw + 1 - 2 * padding[1])
    kw = dict(stride=(sh, sw), padding=padding, dilation=(dh, dw), groups=groups)
    pads = ref.resolve_padding(padding, (H, W), (R, S), (sh, sw), (dh, dw))
    return (N, Cg * groups, H, W), (Kg * groups, Cg, R, S), kw, pads


CASES = list(range(40))


def _data(xs, ws, kw, pads, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    rkw = dict(stride=kw["stride"], pads=pads, dilation=kw["dilation"], groups=kw["groups"])
    y_shape = ref.output_shape(xs, ws, kw["stride"], pads, kw["dilation"])
    g = rng.standard_normal(y_shape).astype(np.float32)
    return x, w, b, g, rkw


def _problem(xs, ws, kw):
    return make_problem(xs, ws, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])


def _case(op, case):
    """Configuration `case` with its data, after checking that the vectorized kernel takes it."""
    xs, ws, kw, pads = _draw(case)
    assert cpu.direct_vectorized(op, _problem(xs, ws, kw)), (op, xs, ws, kw)
    return (xs, ws, kw) + _data(xs, ws, kw, pads, seed_of("kvec", op, case))


@pytest.mark.parametrize("case", CASES)
def test_fprop_bias_relu_matches_reference(case):
    xs, ws, kw, x, w, b, _, rkw = _case("fprop", case)
    want = ref.conv2d(x, w, b, **rkw)
    check_close(ops.conv2d(x, w, b, algo="direct", **kw), want, TOL32, np.float32, f"{xs} {ws} {kw}")
    got = ops.conv2d(x, w, b, algo="direct", activation="relu", **kw)
    check_close(got, np.maximum(want, 0), TOL32, np.float32, f"relu {xs} {ws} {kw}")
    assert np.all(got >= 0)


@pytest.mark.parametrize("case", CASES)
def test_dgrad_matches_reference(case):
    xs, ws, kw, pads = _draw(case)
    # the vectorized Dgrad takes stride 1 and 16+ input channels per group: make it so
    kw = dict(kw, stride=1)
    xs = (xs[0], 16 * kw["groups"] + xs[1], xs[2], xs[3])
    ws = (ws[0], xs[1] // kw["groups"], ws[2], ws[3])
    pads = ref.resolve_padding(kw["padding"], xs[2:], ws[2:], 1, kw["dilation"])
    assert cpu.direct_vectorized("dgrad", _problem(xs, ws, kw)), (xs, ws, kw)
    x, w, _, g, rkw = _data(xs, ws, kw, pads, seed_of("kvec-d", case))
    want = ref.conv2d_input(xs, w, g, **rkw)
    check_close(ops.conv2d_input(xs, w, g, algo="direct", **kw), want, TOL32, np.float32,
                f"{xs} {ws} {kw}")


@pytest.mark.parametrize("case", CASES)
def test_wgrad_matches_reference(case):
    xs, ws, kw, x, w, _, g, rkw = _case("wgrad", case)
    want = ref.conv2d_weight(x, ws, g, **rkw)
    check_close(ops.conv2d_weight(x, ws, g, algo="direct", **kw), want, TOL32, np.float32,
                f"{xs} {ws} {kw}")


@pytest.mark.parametrize("xs,ws,kw", [
    # Wgrad over N*P*Q = 12*14*14 > 2048 products: several batch blocks, added in order
    ((12, 16, 14, 14), (32, 16, 5, 5), dict(padding=2)),
    # 8 images of 64 wide rows: each padded chunk over the 1 MiB budget is halved
    ((8, 64, 12, 260), (16, 64, 3, 3), dict(padding=1)),
    # 1x1 input, 1x1 output (a GEMV per image), and a 5x5 kernel that only meets padding
    ((3, 20, 1, 1), (40, 20, 1, 1), {}),
    ((2, 16, 1, 1), (16, 16, 5, 5), dict(padding=2)),
    # the Fashion net's conv2, the layer the kernel was written for
    ((4, 16, 14, 14), (32, 16, 5, 5), dict(padding=2)),
])
def test_edge_shapes_all_ops(xs, ws, kw):
    kw = dict(dict(stride=1, padding=0, dilation=1, groups=1), **kw)
    pads = ref.resolve_padding(kw["padding"], xs[2:], ws[2:], kw["stride"], kw["dilation"])
    x, w, b, g, rkw = _data(xs, ws, kw, pads, seed_of("kvec-e", xs, ws))
    p = _problem(xs, ws, kw)
    for op in ("fprop", "dgrad", "wgrad"):
        assert cpu.direct_vectorized(op, p), (op, xs, ws)
    check_close(ops.conv2d(x, w, b, algo="direct", **kw), ref.conv2d(x, w, b, **rkw), TOL32, np.float32, "fprop")
    check_close(ops.conv2d_input(xs, w, g, algo="direct", **kw), ref.conv2d_input(xs, w, g, **rkw), TOL32,
                np.float32, "dgrad")
    check_close(ops.conv2d_weight(x, ws, g, algo="direct", **kw), ref.conv2d_weight(x, ws, g, **rkw), TOL32,
                np.float32, "wgrad")


def test_wgrad_blocks_keep_fp32_accuracy():
    # one fp32 chain over the 12544 products of a batch-64 Fashion conv2 gave 5.8e-6 relative
    # error; the blocked sum stays at the GEMM's level (2.6e-7 measured; 2e-6 allowed)
    xs, ws, kw = (64, 16, 14, 14), (32, 16, 5, 5), dict(padding=2)
    x, w, _, g, rkw = _data(xs, ws, dict(kw, stride=1, dilation=1, groups=1), (2, 2, 2, 2), 7)
    want = ref.conv2d_weight(x, ws, g, **rkw)
    got = ops.conv2d_weight(x, ws, g, algo="direct", **kw)
    assert ref.rel_err(got, want) < 2e-6


def test_results_do_not_depend_on_the_thread_count():
    xs, ws, kw = (3, 17, 23, 41), (33, 17, 5, 3), dict(padding=(2, 2), dilation=(1, 2))
    x, w, b, g, _ = _data(xs, ws, dict(kw, stride=1, groups=1), (2, 2, 2, 2), 11)
    before = fastconv.get_num_threads()
    runs = []
    try:
        for t in (1, 2, 3):
            fastconv.set_num_threads(t)
            runs.append((ops.conv2d(x, w, b, algo="direct", **kw), ops.conv2d_input(xs, w, g, algo="direct", **kw),
                         ops.conv2d_weight(x, ws, g, algo="direct", **kw)))
    finally:
        fastconv.set_num_threads(before)
    for other in runs[1:]:
        for a, c in zip(runs[0], other):
            assert np.array_equal(a, c)


def test_relu_keeps_nan_and_zeroes_negatives():
    x = np.zeros((1, 1, 4, 20), np.float32)
    x[0, 0, 1, 3] = np.nan
    w = np.ones((16, 1, 1, 1), np.float32)
    w[1] = -1
    b = np.zeros(16, np.float32)
    b[2] = -0.5
    y = ops.conv2d(x, w, b, algo="direct", activation="relu")
    assert np.isnan(y[:, :, 1, 3]).all()  # relu(NaN) is NaN, as torch
    assert y[0, 2, 0, 0] == 0.0 and not np.isnan(y[0, 2, 0, 1])


@pytest.mark.parametrize("op", ["fprop", "dgrad", "wgrad"])
def test_auto_picks_it_for_the_fashion_conv2_in_fp32_only(op):
    args = ((64, 16, 14, 14), (32, 16, 5, 5))
    assert ops.choose_algo(*args, padding=2, op=op, backend="cpu") == "direct"
    assert ops.choose_algo(*args, padding=2, op=op, backend="cpu", dtype="float64") == "im2col"
    assert ops.choose_algo(*args, padding=2, op=op, backend="numba") != "direct"
    # a 1x1 output (LeNet C5) stays on im2col
    assert ops.choose_algo((64, 16, 5, 5), (120, 16, 5, 5), op=op, backend="cpu") == "im2col"


@pytest.mark.parametrize("op", ["fprop", "dgrad", "wgrad"])
def test_auto_trades_winograd_for_it_below_24_channels(op):
    # ResNet-20's first stage (16 -> 16, 3x3, 32x32): the direct kernel measured 1.5-1.8x faster
    # than Winograd in every operator; from 24 channels up Winograd stays
    cifar16 = ((128, 16, 32, 32), (16, 16, 3, 3))
    assert ops.choose_algo(*cifar16, padding=1, op=op, backend="cpu") == "direct"
    assert ops.choose_algo(*cifar16, padding=1, op=op, backend="cpu", dtype="float64") != "direct"
    for shapes in [((128, 32, 16, 16), (32, 32, 3, 3)), ((128, 64, 8, 8), (64, 64, 3, 3))]:
        assert ops.choose_algo(*shapes, padding=1, op=op, backend="cpu") == "winograd"


def test_auto_wgrad_3x3_takes_it_with_16_output_channels_only():
    assert ops.choose_algo((128, 32, 16, 16), (16, 32, 3, 3), padding=1, op="wgrad", backend="cpu") == "direct"
    assert ops.choose_algo((128, 16, 16, 16), (32, 16, 3, 3), padding=1, op="wgrad", backend="cpu") == "im2col"
    # 8 input channels: the table's im2col; a 3x5 kernel was not measured: im2col
    assert ops.choose_algo((128, 8, 16, 16), (16, 8, 3, 3), padding=1, op="wgrad", backend="cpu") == "im2col"
    assert ops.choose_algo((128, 32, 16, 16), (16, 32, 3, 5), padding=1, op="wgrad", backend="cpu") == "im2col"


def test_auto_direct_3x3_16_channels_matches_reference():
    # the auto path (direct) against the float64 reference for all three operators
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 16, 11, 9)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    g = rng.standard_normal((3, 16, 11, 9)).astype(np.float32)
    for op in ("fprop", "dgrad", "wgrad"):
        assert ops.choose_algo(x.shape, w.shape, padding=1, op=op, backend="cpu") == "direct"
    x64, w64, g64, pads = x.astype(np.float64), w.astype(np.float64), g.astype(np.float64), (1, 1, 1, 1)
    check_close(ops.conv2d(x, w, padding=1), ref.conv2d(x64, w64, pads=pads), TOL32, np.float32, "fprop")
    check_close(ops.conv2d_input(x.shape, w, g, padding=1), ref.conv2d_input(x.shape, w64, g64, pads=pads),
                TOL32, np.float32, "dgrad")
    check_close(ops.conv2d_weight(x, w.shape, g, padding=1), ref.conv2d_weight(x64, w.shape, g64, pads=pads),
                TOL32, np.float32, "wgrad")


def test_auto_fprop_many_taps_only_for_large_kernels():
    # AlexNet conv2 (96 -> 256, 5x5: 2400 taps) measured faster on the direct kernel; ResNet's 3x3
    # 256 -> 512 stride 2 (2304 taps) slower, so it stays on im2col
    assert ops.choose_algo((8, 96, 27, 27), (256, 96, 5, 5), padding=2, backend="cpu") == "direct"
    assert ops.choose_algo((8, 64, 14, 14), (64, 64, 7, 7), padding=3, backend="cpu") == "direct"
    assert ops.choose_algo((8, 256, 28, 28), (512, 256, 3, 3), stride=2, padding=1, backend="cpu") == "im2col"
