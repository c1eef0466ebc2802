"""Hypothesis-generated random problems through every supported algorithm and
all three ops, against the independent float64 reference."""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fastconv import ops
from fastconv.backends import cpu

import reference as ref
from helpers import ALGOS, TOL32, TOL64, available_isas, check_close


@st.composite
def problems(draw):
    N = draw(st.integers(0, 3))
    groups = draw(st.integers(1, 3))
    Cg = draw(st.integers(1, 3))
    Kg = draw(st.integers(1, 3))
    H = draw(st.integers(1, 12))
    W = draw(st.integers(1, 12))
    R = draw(st.integers(1, 5))
    S = draw(st.integers(1, 5))
    stride = draw(st.one_of(st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    dilation = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = draw(st.one_of(st.integers(0, 3), st.tuples(st.integers(0, 3), st.integers(0, 3)),
                             st.sampled_from(["same", "valid"])))
    pads = ref.resolve_padding(padding, (H, W), (R, S), stride, dilation)
    shape = ref.output_shape((N, Cg * groups, H, W), (Kg * groups, Cg, R, S), stride, pads, dilation)
    assume(shape[2] > 0 and shape[3] > 0)
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(N=N, C=Cg * groups, K=Kg * groups, H=H, W=W, R=R, S=S, stride=stride,
                dilation=dilation, padding=padding, groups=groups, pads=pads, seed=seed)


def _run_all(p, dtype, tol):
    rng = np.random.default_rng(p["seed"])
    x = rng.standard_normal((p["N"], p["C"], p["H"], p["W"])).astype(dtype)
    w = rng.standard_normal((p["K"], p["C"] // p["groups"], p["R"], p["S"])).astype(dtype)
    b = rng.standard_normal(p["K"]).astype(dtype)
    kw = dict(stride=p["stride"], padding=p["padding"], dilation=p["dilation"], groups=p["groups"])
    rkw = dict(stride=p["stride"], pads=p["pads"], dilation=p["dilation"], groups=p["groups"])
    y_ref = ref.conv2d(x, w, b, **rkw)
    g = rng.standard_normal(y_ref.shape).astype(dtype)
    dx_ref = ref.conv2d_input(x.shape, w, g, **rkw)
    dw_ref = ref.conv2d_weight(x, w.shape, g, **rkw)
    supported = ops.algorithms_for(x.shape, w.shape, **kw)
    assert {"direct", "im2col"} <= set(supported)
    for algo in ALGOS:
        if algo != "auto" and algo not in supported:
            with pytest.raises(ValueError):
                ops.conv2d(x, w, b, algo=algo, **kw)
            continue
        what = f"{p} algo={algo}"
        check_close(ops.conv2d(x, w, b, algo=algo, **kw), y_ref, tol, dtype, "fprop " + what)
        check_close(ops.conv2d_input(x.shape, w, g, algo=algo, **kw), dx_ref, tol, dtype, "dgrad " + what)
        check_close(ops.conv2d_weight(x, w.shape, g, algo=algo, **kw), dw_ref, tol, dtype, "wgrad " + what)


@pytest.mark.parametrize("isa", available_isas())
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(p=problems())
def test_random_problems_float32(isa, p):
    cpu.set_isa(isa)
    try:
        _run_all(p, np.float32, TOL32)
    finally:
        cpu.set_isa("auto")


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(p=problems())
def test_random_problems_float64(p):
    _run_all(p, np.float64, TOL64)
