"""fastconv against torch (float64 torch as the oracle) where torch is installed.

BENCH_LAYERS at N=1 (the >~5e7-MAC ones skipped visibly, their cropped copies
tested) and the TEST_SHAPES entries torch accepts (torch's 'same' only with
stride 1).  Gradients come from torch.nn.grad.conv2d_input / conv2d_weight for
int/pair padding, and from autograd through F.conv2d for 'same'/'valid'
(torch.nn.grad does not take string padding).
"""
import numpy as np
import pytest

from fastconv import ops

from helpers import TOL32, TOL64, bench_params, check_close, pair, seed_of, spec_params, torch_or_skip
from shapes import TEST_SHAPES


def torch_accepts(spec):
    return not (spec.padding == "same" and pair(spec.stride) != (1, 1))


TORCH_SHAPES = [s for s in TEST_SHAPES if torch_accepts(s)]


def test_torch_subset_is_most_of_the_catalog():
    assert len(TORCH_SHAPES) >= len(TEST_SHAPES) - 15


def _torch_results(spec, x, w, b, g):
    torch = torch_or_skip()
    F = torch.nn.functional
    tx, tw, tb, tg = (torch.from_numpy(np.asarray(a, np.float64)) for a in (x, w, b, g))
    kw = dict(stride=spec.stride, padding=spec.padding, dilation=spec.dilation, groups=spec.groups)
    y = F.conv2d(tx, tw, None, **kw)
    yb = F.conv2d(tx, tw, tb, **kw)
    if isinstance(spec.padding, str):
        ax = tx.clone().requires_grad_(True)
        aw = tw.clone().requires_grad_(True)
        F.conv2d(ax, aw, None, **kw).backward(tg)
        dx, dw = ax.grad, aw.grad
    else:
        dx = torch.nn.grad.conv2d_input(tuple(x.shape), tw, tg, **kw)
        dw = torch.nn.grad.conv2d_weight(tx, tuple(w.shape), tg, **kw)
    return dict(fprop=y.numpy(), fprop_bias=yb.numpy(), dgrad=dx.numpy(), wgrad=dw.numpy())


def _compare(spec, dtype, tol, algos):
    torch_or_skip()
    rng = np.random.default_rng(seed_of(spec.name, np.dtype(dtype).name))
    x = rng.standard_normal(spec.input_shape).astype(dtype)
    w = rng.standard_normal(spec.weight_shape).astype(dtype)
    b = rng.standard_normal(spec.K).astype(dtype)
    y = ops.conv2d(x, w, **spec.kwargs())
    g = rng.standard_normal(y.shape).astype(dtype)
    ref = _torch_results(spec, x, w, b, g)
    assert y.shape == ref["fprop"].shape
    supported = ops.algorithms_for(x.shape, w.shape, **spec.kwargs())
    for algo in algos:
        if algo != "auto" and algo not in supported:
            continue
        kw = dict(spec.kwargs(), algo=algo)
        what = f"{spec.name} {algo}"
        check_close(ops.conv2d(x, w, None, **kw), ref["fprop"], tol, dtype, "fprop " + what)
        check_close(ops.conv2d(x, w, b, **kw), ref["fprop_bias"], tol, dtype, "fprop+bias " + what)
        check_close(ops.conv2d_input(x.shape, w, g, **kw), ref["dgrad"], tol, dtype, "dgrad " + what)
        check_close(ops.conv2d_weight(x, w.shape, g, **kw), ref["wgrad"], tol, dtype, "wgrad " + what)


ALL = ("auto", "direct", "im2col", "1x1", "separable")


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("spec", spec_params(TORCH_SHAPES))
def test_test_shapes_vs_torch(spec):
    _compare(spec, np.float32, TOL32, ALL)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("spec", spec_params(TORCH_SHAPES))
def test_test_shapes_vs_torch_float64(spec):
    _compare(spec, np.float64, TOL64, ALL)


@pytest.mark.parametrize("spec", bench_params())
def test_bench_layers_vs_torch(spec):
    _compare(spec, np.float32, TOL32, ("auto",))
