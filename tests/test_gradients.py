"""float64 gradient checks (Chainer style).

1. Directional finite differences: L(x, w, b) = <conv2d(x, w, b), g> with a random
   g; the central difference of L along random directions dx, dw, db must equal
   <conv2d_input(x.shape, w, g), dx>, <conv2d_weight(x, w.shape, g), dw> and
   <g.sum((0, 2, 3)), db>.
2. The adjoint identity <conv2d(x, w), g> == <x, conv2d_input(...)> ==
   <w, conv2d_weight(...)> for every algorithm that supports the problem.
"""
import numpy as np
import pytest

from fastconv import ops

from helpers import ALGOS, algo_isa_params, spec_params
from shapes import ConvSpec, TEST_SHAPES

GRAD_SPECS = [
    ConvSpec("fd_plain", 2, 3, 7, 6, 4, 3, 3, padding=1),
    ConvSpec("fd_groups", 2, 6, 6, 7, 9, 3, 2, padding=(1, 0), groups=3),
    ConvSpec("fd_depthwise", 1, 4, 7, 7, 8, 3, 3, padding=1, groups=4),
    ConvSpec("fd_dilation", 2, 2, 9, 8, 3, 3, 3, dilation=(2, 3), padding=2),
    ConvSpec("fd_stride", 2, 3, 9, 10, 2, 3, 2, stride=(2, 3), padding=(1, 1)),
    ConvSpec("fd_same_s2", 2, 3, 9, 8, 4, 3, 3, stride=2, padding="same"),
    ConvSpec("fd_same_s2_even", 1, 2, 10, 7, 3, 4, 2, stride=2, padding="same"),
    ConvSpec("fd_1x1_s2", 2, 5, 7, 6, 3, 1, 1, stride=2),
    ConvSpec("fd_sep_1x5", 2, 3, 6, 9, 4, 1, 5, padding=(0, 2)),
    ConvSpec("fd_valid", 1, 3, 6, 5, 2, 2, 3, padding="valid"),
]


def _data(spec, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.input_shape)
    w = rng.standard_normal(spec.weight_shape)
    b = rng.standard_normal(spec.K)
    y = ops.conv2d(x, w, b, **spec.kwargs())
    assert y.dtype == np.float64
    g = rng.standard_normal(y.shape)
    return rng, x, w, b, g


@pytest.mark.parametrize("algo,isa", algo_isa_params(), indirect=["isa"])
@pytest.mark.parametrize("spec", spec_params(GRAD_SPECS))
def test_directional_finite_differences(spec, algo, isa):
    rng, x, w, b, g = _data(spec)
    kw = spec.kwargs()
    if algo != "auto" and algo not in ops.algorithms_for(x.shape, w.shape, **kw):
        with pytest.raises(ValueError):
            ops.conv2d(x, w, b, algo=algo, **kw)
        return

    def L(x_, w_, b_):
        return float(np.vdot(ops.conv2d(x_, w_, b_, algo=algo, **kw), g))

    gx = ops.conv2d_input(x.shape, w, g, algo=algo, **kw)
    gw = ops.conv2d_weight(x, w.shape, g, algo=algo, **kw)
    gb = g.sum((0, 2, 3))
    eps = 1e-3
    for trial in range(3):
        dx = rng.standard_normal(x.shape)
        dw = rng.standard_normal(w.shape)
        db = rng.standard_normal(b.shape)
        fd_x = (L(x + eps * dx, w, b) - L(x - eps * dx, w, b)) / (2 * eps)
        fd_w = (L(x, w + eps * dw, b) - L(x, w - eps * dw, b)) / (2 * eps)
        fd_b = (L(x, w, b + eps * db) - L(x, w, b - eps * db)) / (2 * eps)
        # L is linear in each argument: the central difference is exact up to rounding
        scale = np.sqrt(np.vdot(g, g)) * 1e-7
        assert abs(fd_x - np.vdot(gx, dx)) <= scale * (1 + abs(fd_x)), (fd_x, np.vdot(gx, dx))
        assert abs(fd_w - np.vdot(gw, dw)) <= scale * (1 + abs(fd_w)), (fd_w, np.vdot(gw, dw))
        assert abs(fd_b - np.vdot(gb, db)) <= scale * (1 + abs(fd_b)), (fd_b, np.vdot(gb, db))
        # and all together along one joint direction (checks the product rule in x and w)
        fd = (L(x + eps * dx, w + eps * dw, b + eps * db) - L(x - eps * dx, w - eps * dw, b - eps * db)) / (2 * eps)
        lin = np.vdot(gx, dx) + np.vdot(gw, dw) + np.vdot(gb, db)
        # second-order term <conv(dx, dw), g> cancels in the central difference
        assert abs(fd - lin) <= scale * (1 + abs(fd)) * 10, (fd, lin)


@pytest.mark.parametrize("algo,isa", algo_isa_params(), indirect=["isa"])
@pytest.mark.parametrize("spec", spec_params(GRAD_SPECS + TEST_SHAPES))
def test_adjoint_identity(spec, algo, isa):
    rng, x, w, _, g = _data(spec, seed=1)
    kw = spec.kwargs()
    if algo != "auto" and algo not in ops.algorithms_for(x.shape, w.shape, **kw):
        with pytest.raises(ValueError):
            ops.conv2d_weight(x, w.shape, g, algo=algo, **kw)
        return
    y = ops.conv2d(x, w, algo=algo, **kw)
    dx = ops.conv2d_input(x.shape, w, g, algo=algo, **kw)
    dw = ops.conv2d_weight(x, w.shape, g, algo=algo, **kw)
    a = np.vdot(y, g)
    b_ = np.vdot(x, dx)
    c = np.vdot(w, dw)
    tol = 1e-12 * max(np.abs(y).sum() * np.abs(g).max(), 1e-300)
    assert abs(a - b_) <= tol, (a, b_)
    assert abs(a - c) <= tol, (a, c)


def test_algos_listed():
    assert tuple(ops.ALGORITHMS) == ALGOS
