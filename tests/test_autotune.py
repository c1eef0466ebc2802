"""The opt-in autotune cache: picks a supported algorithm, caches it, and the result is still right."""
import numpy as np
import pytest

from fastconv import ops

from reference import conv2d as conv2d_ref


@pytest.fixture
def autotune():
    ops.set_autotune(True)
    yield
    ops.set_autotune(False)


def test_autotune_caches_a_supported_algorithm(autotune):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    w = rng.standard_normal((6, 8, 1, 1)).astype(np.float32)
    before = len(ops.autotune_cache())
    y = ops.conv2d(x, w)
    cache = ops.autotune_cache()
    assert len(cache) == before + 1
    (key, algo), = [(k, v) for k, v in cache.items() if k[1] == "fprop" and k[0].C == 8 and k[0].R == 1]
    assert algo in ops.algorithms_for(x.shape, w.shape)
    ref = conv2d_ref(x.astype(np.float64), w.astype(np.float64))
    assert np.abs(y - ref).max() <= 2e-5 * np.abs(ref).max()
    # a second call reuses the decision (no new entry) and gives the same values
    y2 = ops.conv2d(x, w)
    assert len(ops.autotune_cache()) == before + 1
    np.testing.assert_array_equal(y, y2)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = ops.conv2d_input(x.shape, w, dy)
    dw = ops.conv2d_weight(x, w.shape, dy)
    ops_seen = {k[1] for k in ops.autotune_cache()}
    assert {"fprop", "dgrad", "wgrad"} <= ops_seen
    np.testing.assert_allclose(dx, ops.conv2d_input(x.shape, w, dy, algo="direct"), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, ops.conv2d_weight(x, w.shape, dy, algo="direct"), rtol=1e-5, atol=1e-4)

