"""Self-checks of the independent float64 reference in tests/reference.py.

These do not need fastconv: the reference is compared with a fully naive
7-loop convolution on tiny shapes, its gradients with the adjoint identity and
with finite differences, its padding resolver with hand-computed values, and
(where installed) everything with torch.
"""
import numpy as np
import pytest

import reference as ref
from shapes import TEST_SHAPES

TINY = [s for s in TEST_SHAPES if s.N * s.K * (s.C // s.groups) * s.R * s.S * s.H * s.W <= 60000]


def _problem(spec, rng):
    x = rng.standard_normal(spec.input_shape)
    w = rng.standard_normal(spec.weight_shape)
    b = rng.standard_normal(spec.K)
    pads = ref.resolve_padding(spec.padding, (spec.H, spec.W), (spec.R, spec.S), spec.stride, spec.dilation)
    return x, w, b, pads


def test_tiny_subset_is_not_empty():
    assert len(TINY) >= 30


@pytest.mark.parametrize("spec", TINY, ids=lambda s: s.name)
def test_reference_matches_naive_loops(spec):
    rng = np.random.default_rng(1)
    x, w, b, pads = _problem(spec, rng)
    kw = dict(stride=spec.stride, pads=pads, dilation=spec.dilation, groups=spec.groups)
    out = ref.conv2d(x, w, b, **kw)
    naive = ref.naive_conv2d(x, w, b, **kw)
    assert out.shape == naive.shape
    np.testing.assert_allclose(out, naive, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", TINY, ids=lambda s: s.name)
def test_reference_gradients_adjoint(spec):
    rng = np.random.default_rng(2)
    x, w, _, pads = _problem(spec, rng)
    kw = dict(stride=spec.stride, pads=pads, dilation=spec.dilation, groups=spec.groups)
    y = ref.naive_conv2d(x, w, None, **kw)
    g = rng.standard_normal(y.shape)
    dx = ref.conv2d_input(x.shape, w, g, **kw)
    dw = ref.conv2d_weight(x, w.shape, g, **kw)
    lhs = np.vdot(y, g)
    assert dx.shape == x.shape and dw.shape == w.shape
    np.testing.assert_allclose(np.vdot(x, dx), lhs, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(np.vdot(w, dw), lhs, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("spec", TINY[::4], ids=lambda s: s.name)
def test_reference_gradients_elementwise(spec):
    # conv is linear: d<conv(x,w),g>/dx[i] = <conv(e_i, w), g> exactly
    rng = np.random.default_rng(3)
    x, w, _, pads = _problem(spec, rng)
    kw = dict(stride=spec.stride, pads=pads, dilation=spec.dilation, groups=spec.groups)
    g = rng.standard_normal(ref.output_shape(x.shape, w.shape, spec.stride, pads, spec.dilation))
    dx = ref.conv2d_input(x.shape, w, g, **kw)
    dw = ref.conv2d_weight(x, w.shape, g, **kw)
    for idx in list(np.ndindex(*x.shape))[:40]:
        e = np.zeros_like(x)
        e[idx] = 1.0
        assert abs(np.vdot(ref.naive_conv2d(e, w, None, **kw), g) - dx[idx]) < 1e-10
    for idx in list(np.ndindex(*w.shape))[:40]:
        e = np.zeros_like(w)
        e[idx] = 1.0
        assert abs(np.vdot(ref.naive_conv2d(x, e, None, **kw), g) - dw[idx]) < 1e-10


@pytest.mark.parametrize(
    "padding,in_hw,k_hw,stride,dil,expected",
    [
        (0, (5, 5), (3, 3), 1, 1, (0, 0, 0, 0)),
        (2, (5, 5), (3, 3), 1, 1, (2, 2, 2, 2)),
        ((1, 3), (5, 5), (3, 3), 1, 1, (1, 1, 3, 3)),
        ("valid", (5, 5), (3, 3), 2, 1, (0, 0, 0, 0)),
        ("same", (7, 8), (3, 3), 1, 1, (1, 1, 1, 1)),
        ("same", (7, 6), (4, 4), 1, 1, (1, 2, 1, 2)),  # torch: total 3, extra bottom/right
        ("same", (6, 7), (2, 3), 1, 2, (1, 1, 2, 2)),  # dil 2: span 3 and 5
        ("same", (9, 8), (3, 3), 2, 1, None),
        ("same", (10, 11), (2, 2), 3, 1, None),
        ("same", (1, 1), (5, 5), 1, 1, (2, 2, 2, 2)),
        ("same", (7, 6), (1, 1), 2, 1, (0, 0, 0, 0)),
        ("same", (3, 2), (3, 3), 4, 1, None),
    ],
)
def test_resolve_padding_hand_values(padding, in_hw, k_hw, stride, dil, expected):
    # 'same' rows: recomputed here from the TF rule, written out a second time:
    def tf(n, k, s, d):
        out = (n + s - 1) // s
        total = (out - 1) * s + (k - 1) * d + 1 - n
        total = total if total > 0 else 0
        return [total // 2, total - total // 2]

    if padding == "same":
        formula = tuple(tf(in_hw[0], k_hw[0], stride, dil) + tf(in_hw[1], k_hw[1], stride, dil))
        if expected is None:
            expected = formula
        assert formula == expected
    assert ref.resolve_padding(padding, in_hw, k_hw, stride, dil) == expected


def test_resolve_padding_same_spot_values():
    # a few fully hand-computed cases (no formula in the test)
    # H=10, R=2, s=3: P=4, total = 3*3+2-10 = 1 -> (0, 1)
    assert ref.resolve_padding("same", (10, 10), (2, 2), 3, 1) == (0, 1, 0, 1)
    # H=9, R=3, s=2: P=5, total = 4*2+3-9 = 2 -> (1, 1); W=8: Q=4, total = 3*2+3-8 = 1 -> (0, 1)
    assert ref.resolve_padding("same", (9, 8), (3, 3), 2, 1) == (1, 1, 0, 1)
    # H=11, R=4, dil 2 (span 7), s=2: P=6, total = 5*2+7-11 = 6 -> (3, 3)
    assert ref.resolve_padding("same", (11, 11), (4, 4), 2, 2) == (3, 3, 3, 3)
    # H=3, R=3, s=4: P=1, total = 0+3-3 = 0; W=2: Q=1, total = 0+3-2 = 1 -> (0, 1)
    assert ref.resolve_padding("same", (3, 2), (3, 3), 4, 1) == (0, 0, 0, 1)
    # stride 1: torch's rule, total = dil*(k-1)
    assert ref.resolve_padding("same", (5, 5), (4, 4), 1, 1) == (1, 2, 1, 2)


def test_same_stride1_keeps_size():
    rng = np.random.default_rng(4)
    for R, S, d in [(3, 3, 1), (4, 2, 1), (2, 3, 2), (5, 1, 3)]:
        x = rng.standard_normal((1, 2, 7, 6))
        w = rng.standard_normal((3, 2, R, S))
        pads = ref.resolve_padding("same", (7, 6), (R, S), 1, d)
        assert ref.conv2d(x, w, pads=pads, dilation=d).shape == (1, 3, 7, 6)


def test_rel_err():
    a = np.array([1.0, -4.0])
    assert ref.rel_err(a, a) == 0.0
    assert ref.rel_err(a + np.array([0.0, 0.4]), a) == pytest.approx(0.1)
    assert ref.rel_err(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0


# ---------------------------------------------------------------- torch oracle
def _torch_pad_args(spec):
    # torch only knows symmetric int/pair padding and 'same'/'valid' with stride 1
    if isinstance(spec.padding, str):
        s = spec.stride if isinstance(spec.stride, tuple) else (spec.stride, spec.stride)
        if spec.padding == "same" and s != (1, 1):
            return None
    return spec.padding


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("spec", TEST_SHAPES, ids=lambda s: s.name)
def test_reference_vs_torch(spec):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    x, w, b, pads = _problem(spec, rng)
    kw = dict(stride=spec.stride, pads=pads, dilation=spec.dilation, groups=spec.groups)
    y = ref.conv2d(x, w, b, **kw)
    g = rng.standard_normal(y.shape)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    t, bb, l, r = pads
    # explicit (possibly asymmetric) padding via F.pad: covers the TF 'same' too
    ty = F.conv2d(F.pad(tx, (l, r, t, bb)), tw, torch.tensor(b), stride=spec.stride,
                  padding=0, dilation=spec.dilation, groups=spec.groups)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ref.conv2d_input(x.shape, w, g, **kw), tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ref.conv2d_weight(x, w.shape, g, **kw), tw.grad.numpy(), rtol=1e-10, atol=1e-10)
    tp = _torch_pad_args(spec)
    if tp is not None:  # and the padding argument itself, as torch reads it
        ty2 = F.conv2d(torch.tensor(x), torch.tensor(w), None, stride=spec.stride, padding=tp,
                       dilation=spec.dilation, groups=spec.groups)
        np.testing.assert_allclose(ref.conv2d(x, w, None, **kw), ty2.numpy(), rtol=1e-10, atol=1e-10)
