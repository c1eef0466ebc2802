"""64-bit indexing without using memory.

The input has more than 2**31 elements but is made with np.zeros, whose pages
are mapped lazily: only the few pages we write (and the few the strided
convolution reads) ever become resident.  Values placed beyond element 2**31
must show up, exactly, in the outputs that see them.
"""
import resource
import warnings

import numpy as np
import pytest

from fastconv import ops

H, W = 65539, 32768  # H*W = 2_147_581_952 > 2**31; rows >= 65536 lie beyond 2**31
STRIDE = 4096


def _big_zeros(shape):
    need = int(np.prod(shape)) * 4
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft < 16 * 2**30:
        pytest.skip(f"needs 16 GB of address space, RLIMIT_AS is {soft}")
    try:
        return np.zeros(shape, np.float32)
    except MemoryError:
        pytest.skip(f"cannot map {need / 2**30:.1f} GiB of (lazily allocated) address space")


@pytest.fixture(scope="module")
def big():
    x = _big_zeros((1, 1, H, W))
    # (row, col, value); flat indices below/above 2**31
    vals = [(65536, 28672, 3.0), (65537, 28673, 7.0), (65538, 28674, 2.0),
            (65536, 4096, -1.5), (32768, 0, 0.5)]
    for r, c, v in vals:
        x[0, 0, r, c] = v
    assert 65536 * W + 28672 > 2**31
    yield x, vals
    del x


def _rss_check(before, what):
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    grown = (after - before) / 2**20
    if grown > 1.0:
        warnings.warn(f"{what}: peak RSS grew by {grown:.1f} GiB (the big input was copied or touched)")


def _algos(x, w, **kw):
    got = ops.algorithms_for(x.shape, w.shape, **kw)
    return ["auto"] + [a for a in ("direct", "im2col", "1x1", "separable", "winograd") if a in got]


def test_algos_available_for_big_problems(big):
    x, _ = big
    assert {"direct", "im2col", "1x1"} <= set(_algos(x, np.ones((2, 1, 1, 1), np.float32), stride=STRIDE))
    assert {"direct", "im2col"} <= set(_algos(x, np.ones((2, 1, 3, 3), np.float32), stride=STRIDE))


# separable too: its workspace must scale with the output, not with the input
@pytest.mark.parametrize("algo", ["auto", "direct", "im2col", "1x1", "separable"])
def test_fprop_1x1_stride(big, algo):
    x, vals = big
    w = np.array([2.0, -1.0], np.float32).reshape(2, 1, 1, 1)
    assert algo in _algos(x, w, stride=STRIDE)  # 1x1, no padding, groups 1: every algo
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    y = ops.conv2d(x, w, stride=(STRIDE, STRIDE), algo=algo)
    _rss_check(before, f"conv2d 1x1 {algo}")
    P, Q = (H - 1) // STRIDE + 1, (W - 1) // STRIDE + 1
    assert y.shape == (1, 2, P, Q) == (1, 2, 17, 8)
    expected = np.zeros((1, 2, P, Q), np.float32)
    for r, c, v in vals:
        if r % STRIDE == 0 and c % STRIDE == 0:
            expected[0, :, r // STRIDE, c // STRIDE] = v * w[:, 0, 0, 0]
    assert expected[0, 0, 16, 7] == 6.0
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("algo", ["auto", "direct", "im2col"])
def test_fprop_3x3_stride(big, algo):
    x, vals = big
    w = np.arange(1, 19, dtype=np.float32).reshape(2, 1, 3, 3) - 9  # small integers: exact sums
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    y = ops.conv2d(x, w, stride=STRIDE, algo=algo)
    _rss_check(before, f"conv2d 3x3 {algo}")
    P, Q = (H - 3) // STRIDE + 1, (W - 3) // STRIDE + 1
    assert y.shape == (1, 2, P, Q) == (1, 2, 17, 8)
    expected = np.zeros((1, 2, P, Q), np.float32)
    for r, c, v in vals:
        p, rr = divmod(r, STRIDE)
        q, ss = divmod(c, STRIDE)
        if rr < 3 and ss < 3 and p < P and q < Q:
            expected[0, :, p, q] += v * w[:, 0, rr, ss]
    # the last window (rows 65536..65538) sees three of the values
    assert expected[0, 0, 16, 7] == 3.0 * w[0, 0, 0, 0] + 7.0 * w[0, 0, 1, 1] + 2.0 * w[0, 0, 2, 2]
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("algo", ["auto", "direct", "im2col"])
def test_wgrad_strided(big, algo):
    x, vals = big
    rng = np.random.default_rng(0)
    P, Q = (H - 3) // STRIDE + 1, (W - 3) // STRIDE + 1
    g = rng.integers(-4, 5, size=(1, 2, P, Q)).astype(np.float32)
    g[0, :, 16, 7] = [3.0, -2.0]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dw = ops.conv2d_weight(x, (2, 1, 3, 3), g, stride=STRIDE, algo=algo)
    _rss_check(before, f"conv2d_weight {algo}")
    expected = np.zeros((2, 1, 3, 3), np.float32)
    for r, c, v in vals:
        p, rr = divmod(r, STRIDE)
        q, ss = divmod(c, STRIDE)
        if rr < 3 and ss < 3 and p < P and q < Q:
            expected[:, 0, rr, ss] += v * g[0, :, p, q]
    assert expected[0, 0, 1, 1] == 21.0 and expected[1, 0, 2, 2] == -4.0
    assert dw.shape == (2, 1, 3, 3) and dw.dtype == np.float32
    np.testing.assert_array_equal(dw, expected)


@pytest.mark.parametrize("algo", ["auto", "direct", "im2col", "1x1"])
def test_wgrad_1x1_strided(big, algo):
    x, vals = big
    P, Q = (H - 1) // STRIDE + 1, (W - 1) // STRIDE + 1
    g = np.zeros((1, 3, P, Q), np.float32)
    g[0, :, 16, 7] = [1.0, 2.0, -3.0]  # sees 3.0 at (65536, 28672)
    g[0, :, 16, 1] = [4.0, 0.0, 1.0]   # sees -1.5 at (65536, 4096)
    g[0, :, 8, 0] = [2.0, 2.0, 2.0]    # sees 0.5 at (32768, 0)
    g[0, :, 3, 3] = [5.0, 5.0, 5.0]    # sees 0
    dw = ops.conv2d_weight(x, (3, 1, 1, 1), g, stride=STRIDE, algo=algo)
    expected = (3.0 * g[0, :, 16, 7] - 1.5 * g[0, :, 16, 1] + 0.5 * g[0, :, 8, 0]).reshape(3, 1, 1, 1)
    np.testing.assert_array_equal(dw, expected)


@pytest.mark.parametrize("algo", ["auto", "direct", "im2col", "1x1"])
def test_channel_offset_beyond_2_31(algo):
    # the second channel starts at element 2**30 + 32768; its last rows lie beyond 2**31
    x = _big_zeros((1, 2, 32769, 32768))
    x[0, 1, 32768, 28672] = 5.0
    x[0, 0, 32768, 28672] = 1.0
    assert (1 * 32769 + 32768) * 32768 + 28672 > 2**31
    for groups, w in ((1, np.array([[1.0, 2.0], [-1.0, 3.0], [0.5, 0.0]], np.float32).reshape(3, 2, 1, 1)),
                      (2, np.array([2.0, -4.0], np.float32).reshape(2, 1, 1, 1))):
        assert algo in _algos(x, w, stride=STRIDE, groups=groups)
        y = ops.conv2d(x, w, stride=STRIDE, groups=groups, algo=algo)
        assert y.shape == (1, w.shape[0], 9, 8)
        expected = np.zeros(y.shape, np.float32)
        if groups == 1:
            expected[0, :, 8, 7] = 1.0 * w[:, 0, 0, 0] + 5.0 * w[:, 1, 0, 0]
        else:
            expected[0, :, 8, 7] = [1.0 * 2.0, 5.0 * -4.0]
        np.testing.assert_array_equal(y, expected)
    del x
