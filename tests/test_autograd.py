"""fastconv.autograd: Tensor, the tape, in-place detection, memory release, gradcheck.

Gradients are checked two ways: against closed-form float64 derivatives written here,
and with the directional finite-difference gradcheck (random upstream gradients).
"""
import gc
import weakref

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, cat, no_grad
from fastconv.autograd import Function, gradcheck, stack


def t64(rng, *shape, req=True):
    return Tensor(rng.standard_normal(shape), requires_grad=req)


# --------------------------------------------------------------- basics
def test_tensor_attributes(rng):
    a = rng.standard_normal((2, 3)).astype(np.float32)
    t = Tensor(a, requires_grad=True)
    assert t.data is a  # the array itself, not a copy
    assert t.shape == (2, 3) and t.dtype == np.float32 and t.device == "cpu"
    assert t.requires_grad and t.is_leaf and t.grad is None and t.grad_fn is None
    d = t.detach()
    assert d.data is a and not d.requires_grad
    with pytest.raises(RuntimeError, match="detach"):
        t.numpy()
    assert d.numpy() is a
    assert Tensor([1.0, 2.0]).dtype == np.float32  # Python floats become float32, as torch
    with pytest.raises(TypeError, match="floating"):
        Tensor(np.arange(3), requires_grad=True)
    assert "requires_grad=True" in repr(t)


def test_top_level_exports():
    assert fastconv.Tensor is Tensor and fastconv.cat is cat and fastconv.no_grad is no_grad
    assert callable(fastconv.save) and callable(fastconv.load)
    assert hasattr(fastconv.nn, "Conv2d") and hasattr(fastconv.optim, "SGD")


def test_elementwise_grads_closed_form(rng):
    a0 = rng.uniform(0.5, 2.0, (3, 4))
    b0 = rng.uniform(0.5, 2.0, (4,))
    gy = rng.standard_normal((3, 4))
    a, b = Tensor(a0, requires_grad=True), Tensor(b0, requires_grad=True)
    y = (a * b + a / b - b ** 2) * a.exp() + a.log() * 3 + a.sqrt()
    y.backward(gy)
    ea = np.exp(a0)
    f = a0 * b0 + a0 / b0 - b0 ** 2
    da = gy * ((b0 + 1 / b0) * ea + f * ea + 3 / a0 + 0.5 / np.sqrt(a0))
    db = (gy * (a0 - a0 / b0 ** 2 - 2 * b0) * ea).sum(0)
    np.testing.assert_allclose(a.grad, da, rtol=1e-12)
    np.testing.assert_allclose(b.grad, db, rtol=1e-12)


def test_broadcasting_and_scalars(rng):
    a, b = t64(rng, 2, 1, 4), t64(rng, 3, 1)
    gradcheck(lambda a, b: a * b + 2.0 - a / (b * b + 1.0) + 1.5 * a - 3 / (a * a + 1), [a, b])
    assert (a + 1).dtype == np.float64
    x32 = Tensor(np.ones(3, np.float32), requires_grad=True)
    assert (x32 * 2.5).dtype == np.float32  # Python scalars keep the tensor's dtype
    assert (2.5 - x32).dtype == np.float32


def test_ndarray_operand_defers_to_tensor(rng):
    a = t64(rng, 3)
    arr = rng.standard_normal(3)
    y = arr * a  # ndarray on the left must still record the graph
    assert isinstance(y, Tensor) and y.requires_grad
    y.backward(np.ones(3))
    np.testing.assert_allclose(a.grad, arr)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4,)), ((4,), (2, 4, 3)), ((4,), (4,)),
                                   ((2, 1, 3, 4), (5, 4, 2))])
def test_matmul(rng, sa, sb):
    a, b = t64(rng, *sa), t64(rng, *sb)
    np.testing.assert_allclose((a @ b).data, a.data @ b.data)
    gradcheck(lambda a, b: a @ b, [a, b])


def test_reductions(rng):
    a = t64(rng, 3, 4, 5)
    for fn in (lambda a: a.sum(), lambda a: a.sum(1), lambda a: a.sum((0, 2), keepdim=True),
               lambda a: a.mean(), lambda a: a.mean(-1), lambda a: a.max(), lambda a: a.min(),
               lambda a: a.max(1)[0], lambda a: a.min(2, keepdim=True)[0]):
        gradcheck(fn, [a])
    v, i = a.max(1)
    np.testing.assert_array_equal(i.data, a.data.argmax(1))
    assert not i.requires_grad


def test_max_ties_share_gradient():
    a = Tensor(np.array([1.0, 3.0, 3.0, 0.0]), requires_grad=True)
    a.max().backward()
    np.testing.assert_array_equal(a.grad, [0, 0.5, 0.5, 0])
    b = Tensor(np.array([[1.0, 3.0, 3.0]]), requires_grad=True)
    b.max(1)[0].sum().backward()
    np.testing.assert_array_equal(b.grad, [[0, 1, 0]])  # the returned index gets it


def test_shape_ops(rng):
    a = t64(rng, 2, 3, 4)
    for fn in (lambda a: a.reshape(4, 6), lambda a: a.view(-1), lambda a: a.transpose(0, 2),
               lambda a: a.permute(1, 2, 0), lambda a: a.flatten(1), lambda a: a.T, lambda a: a.unsqueeze(1),
               lambda a: a[:, 1:, ::2], lambda a: a[1, 2], lambda a: a[..., None, 0],
               lambda a: a[[0, 0, 1]], lambda a: a[:, [2, 0, 2]], lambda a: a[a.data > 0],
               lambda a: a.unsqueeze(0).expand(3, 2, 3, 4)):
        gradcheck(fn, [a])
    with pytest.raises(ValueError, match="permutation"):
        a.permute(0, 0, 1)


def test_repeated_fancy_index_accumulates():
    a = Tensor(np.zeros(3), requires_grad=True)
    a[[0, 0, 2, 0]].sum().backward()
    np.testing.assert_array_equal(a.grad, [3, 0, 1])


def test_cat_and_stack(rng):
    a, b, c = t64(rng, 2, 3), t64(rng, 4, 3), t64(rng, 2, 3)
    np.testing.assert_array_equal(cat([a, b], 0).data, np.concatenate([a.data, b.data]))
    gradcheck(lambda a, b: cat([a, b, a], dim=0), [a, b])
    gradcheck(lambda a, c: stack([a, c], dim=1), [a, c])
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 3\)"):
        cat([a, b], dim=1)
    with pytest.raises(TypeError):
        cat([], 0)


def test_diamond_graph_topological_order(rng):
    """A node reached by two paths runs once, after both contributions arrived."""
    calls = []

    class Count(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            calls.append(g.copy())
            return g * 2

    x = t64(rng, 3)
    h = Count.apply(x)
    y = (h * h + h.exp()).sum()
    y.backward()
    assert len(calls) == 1
    h0 = x.data * 2
    np.testing.assert_allclose(x.grad, 2 * (2 * h0 + np.exp(h0)))


def test_deep_chain_no_recursion_limit():
    x = Tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1, 1])


def test_grad_accumulates_and_retain_graph(rng):
    x = t64(rng, 3)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 4 * x.data)
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_no_grad_and_set_grad(rng):
    x = t64(rng, 3)
    with no_grad():
        y = x * 2
    assert not y.requires_grad and y.grad_fn is None

    @no_grad()
    def f(z):
        return z * 3
    assert not f(x).requires_grad
    assert (x * 3).requires_grad


def test_non_scalar_backward_needs_gradient(rng):
    x = t64(rng, 3)
    with pytest.raises(RuntimeError, match="scalar"):
        (x * 2).backward()
    with pytest.raises(ValueError, match=r"\(2,\)"):
        (x * 2).backward(np.ones(2))
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).sum().backward()


def test_retain_grad_on_intermediate(rng):
    x = t64(rng, 3)
    h = x * 2
    h.retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad, 2 * h.data)


# ----------------------------------------------------------- in place
def test_inplace_on_saved_tensor_raises_naming_op(rng):
    x = t64(rng, 3)
    y = x * 2
    z = y * y  # MulBackward saves y
    y += 1
    with pytest.raises(RuntimeError, match="MulBackward.*version 1; expected version 0"):
        z.sum().backward()


def test_inplace_setitem_on_saved_output_raises(rng):
    x = t64(rng, 3)
    y = x.exp()  # ExpBackward saves its output
    y[0] = 5.0
    with pytest.raises(RuntimeError, match="ExpBackward"):
        y.sum().backward()


def test_inplace_not_saved_is_differentiated(rng):
    x = t64(rng, 4)
    y = x * 2  # Mul by a constant saves nothing of y
    y += x
    y[1:3] = 0.0
    y *= 3
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [9, 0, 0, 9])


def test_inplace_on_leaf_requiring_grad_raises(rng):
    x = t64(rng, 3)
    with pytest.raises(RuntimeError, match="leaf"):
        x += 1
    with no_grad():
        x += 1  # allowed: that is what optimizers do
    assert x._version.value == 1


def test_optimizer_style_update_invalidates_graph(rng):
    w = t64(rng, 3)
    loss = (w * w).sum()
    with no_grad():
        w -= 0.1
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


# --------------------------------------------------------- memory release
class _Probe:
    """An object a weakref can follow, so a test can see when an array is released."""


def test_saved_arrays_released_after_backward(rng):
    x = t64(rng, 4)
    y = x.exp()
    ref = weakref.ref(y._node)
    node = y._node
    loss = (y * 3).sum()
    del y
    assert node._saved is not None
    loss.backward()
    assert node._saved is None  # dropped once the node's backward ran
    del node, loss
    gc.collect()
    assert ref() is None


def test_intermediates_freed_when_not_saved(rng):
    """An intermediate that no backward needs dies as soon as the user drops it."""
    x = t64(rng, 1000)
    h = x + 1.0  # Add saves nothing
    arr_ref = weakref.ref(_wrap_probe(h))
    y = (h * 2.0).sum()  # Mul by a constant saves nothing of h
    del h
    gc.collect()
    assert arr_ref() is None
    y.backward()
    np.testing.assert_allclose(x.grad, 2.0)


def _wrap_probe(t):
    # ndarray objects support weakrefs only through a subclass view; attach the probe to the Tensor
    p = _Probe()
    t._probe = p
    return p


# ---------------------------------------------------------------- gradcheck
def test_gradcheck_catches_wrong_backward(rng):
    class Bad(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x  # should be 2 * g * x

    x = t64(rng, 5)
    with pytest.raises(AssertionError, match="gradcheck failed"):
        gradcheck(Bad.apply, [x])
    assert gradcheck(Bad.apply, [x], raise_exception=False) is False


def test_gradcheck_requires_float64(rng):
    x = Tensor(rng.standard_normal(3).astype(np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda x: x * 2, [x])


def test_gradcheck_multiple_outputs(rng):
    x = t64(rng, 3, 4)
    gradcheck(lambda x: (x.exp(), x.sum(0), x.max(1)[0]), [x])


# ------------------------------------------ fixes from a fuzz against torch autograd
def test_inplace_through_a_view_reaches_the_base():
    # as torch: the base's graph gets the change (x.grad was [1, 1, 1] for torch's [2, 2, 1])
    for view in (lambda t: t[0:2], lambda t: t.reshape(1, 3)[0, :2], lambda t: t.reshape(3, 1).permute(1, 0)[0, :2]):
        x = Tensor(np.ones(3), requires_grad=True)
        z = x * 1.0
        view(z).mul_(2.0)
        np.testing.assert_array_equal(z.data, [2.0, 2.0, 1.0])
        z.backward(np.array([1.0, 10.0, 100.0]))
        np.testing.assert_array_equal(x.grad, [2.0, 20.0, 100.0])
    # the augmented assignment on a subscript (view += , then base[idx] = view)
    xv = np.arange(6.0).reshape(2, 3)
    x = Tensor(xv.copy(), requires_grad=True)
    y = x * 2.0
    y[:, 0] += y[:, 1] * 3.0
    np.testing.assert_array_equal(y.data[:, 0], 2 * xv[:, 0] + 6 * xv[:, 1])
    g = np.arange(1.0, 7.0).reshape(2, 3)
    y.backward(g)
    want = 2 * g
    want[:, 1] += 6 * g[:, 0]
    np.testing.assert_array_equal(x.grad, want)
    # a base that does not require grad gets the graph of what is written into it
    z = Tensor(np.zeros((4, 3)))
    w = Tensor(np.ones((2, 3)), requires_grad=True)
    v = z[1:3]
    v += w * 5.0
    assert z.requires_grad
    z.backward(np.arange(12.0).reshape(4, 3))
    np.testing.assert_array_equal(w.grad, 5.0 * np.arange(3.0, 9.0).reshape(2, 3))
    # a view of a leaf that requires grad (torch's error); allowed under no_grad, changing the leaf
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="view .* leaf"):
        x[0:2].mul_(5.0)
    v = x[1:]
    with pytest.raises(RuntimeError, match="view .* leaf"):
        v[0] = 5.0
    with no_grad():
        x[0:2].mul_(5.0)
    np.testing.assert_array_equal(x.data, [5.0, 5.0, 1.0])
    # views share the base's version counter: a change made through a view under no_grad is
    # caught by the saved-tensor check (torch raises the same), instead of a gradient of [4, 4, 2]
    x = Tensor(np.ones(3), requires_grad=True)
    z = x * 1.0
    y = z * z
    with no_grad():
        z[0:2].mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    # advanced indexing copies: no view, in-place on the copy is fine and recorded
    x = Tensor(np.arange(4.0), requires_grad=True)
    c = (x * 1.0)[[0, 2]]
    c.mul_(3.0)
    c.backward(np.array([1.0, 10.0]))
    np.testing.assert_array_equal(x.grad, [3.0, 0.0, 30.0, 0.0])


def test_fill_and_copy_are_recorded():
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    z = x * 2.0
    z[1:].detach()  # unrelated view, no effect
    z.fill_(7.0)  # the old values are gone: no gradient to x (it reached x before)
    z.backward(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(z.data, [7.0, 7.0, 7.0])
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0])
    s = Tensor(np.array([0.5, -1.0]), requires_grad=True)
    w = Tensor(np.zeros((3, 2)))
    w.copy_(s)  # broadcast copy: s gets the column sums of the upstream gradient
    g = np.arange(6.0).reshape(3, 2)
    w.backward(g)
    np.testing.assert_array_equal(w.data, [[0.5, -1.0]] * 3)
    np.testing.assert_array_equal(s.grad, g.sum(0))
    with pytest.raises(RuntimeError, match="leaf"):
        s.zero_()


def test_clamp_tensor_bounds_get_gradients(rng):
    a = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    lo = np.array([0.5, 0.5, 2.5, 0.5, 5.0])
    hi = np.array([3.5, 0.7, 3.5, 2.5, 4.5])  # the last: lo > hi gives hi
    x, tl, th = (Tensor(v.copy(), requires_grad=True) for v in (a, lo, hi))
    y = x.clamp(tl, th)
    np.testing.assert_array_equal(y.data, np.minimum(np.maximum(a, lo), hi))
    g = rng.standard_normal(5)
    y.backward(g)
    np.testing.assert_array_equal(x.grad, np.where((a >= lo) & (a <= hi), g, 0))
    np.testing.assert_array_equal(tl.grad, np.where((a < lo) & (lo < hi), g, 0))
    np.testing.assert_array_equal(th.grad, np.where((a > hi) | (hi < lo), g, 0))
    # broadcast bounds are reduced to their shapes; finite differences away from the kinks
    xb = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    lb = Tensor(rng.standard_normal((1, 4)) - 0.5, requires_grad=True)
    hb = Tensor(rng.standard_normal(()) + 1.0, requires_grad=True)
    gradcheck(lambda a, b, c: a.clamp(b, c), [xb, lb, hb])
    with pytest.raises(ValueError, match="at least one"):
        xb.clamp()


def test_pow_gradients_at_zero_follow_torch():
    x = Tensor(np.array([0.0, 2.0]), requires_grad=True)
    (x ** 0).backward(np.ones(2))
    np.testing.assert_array_equal(x.grad, [0.0, 0.0])  # was NaN at 0 (0 * 0**-1)
    a = Tensor(np.array([0.0, 0.0, 2.0]), requires_grad=True)
    b = Tensor(np.array([0.0, 2.0, 3.0]), requires_grad=True)
    (a ** b).backward(np.ones(3))
    np.testing.assert_allclose(a.grad, [0.0, 0.0, 12.0])
    np.testing.assert_allclose(b.grad, [0.0, 0.0, 8.0 * np.log(2.0)])
    e = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (0.0 ** e).backward(np.ones(2))
    np.testing.assert_array_equal(e.grad, [0.0, 0.0])


def test_float32_div_gradient_does_not_overflow():
    for v, want in ((1e20, -1e-20), (1e-25, -1e25)):
        a = Tensor(np.array([v], np.float32), requires_grad=True)
        b = Tensor(np.array([v], np.float32), requires_grad=True)
        (a / b).backward(np.ones(1, np.float32))
        np.testing.assert_allclose(b.grad, [want], rtol=1e-6)


def test_reduction_dims_follow_torch(rng):
    t = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    s = t.sum(dim=())  # () is every dimension, as torch
    assert s.shape == () and s.data == pytest.approx(t.data.sum())
    assert t.mean(dim=[]).data == pytest.approx(t.data.mean())
    assert "tensor(" in repr(t.sum())  # a full reduction is a 0-d array, not a NumPy scalar
    with pytest.raises(ValueError, match="more than once"):
        t.sum(dim=(0, 0))
    bad = [lambda: t.sum(2), lambda: t.sum(-3), lambda: t.mean(5), lambda: t.max(dim=2), lambda: t.unsqueeze(4),
           lambda: t.squeeze(2), lambda: t.permute(0, 3), lambda: t.flatten(0, 4), lambda: t.transpose(0, 2),
           lambda: cat([t, t], dim=2), lambda: stack([t, t], dim=3), lambda: t.argmax(2)]
    for f in bad:
        with pytest.raises(IndexError, match="out of range"):
            f()
        with pytest.raises(ValueError):  # the same error is a ValueError too
            f()
    assert t.unsqueeze(-3).shape == (1, 2, 3) and stack([t, t], dim=-3).shape == (2, 2, 3)
    # 0-d tensors take dim 0 / -1, as torch
    z = Tensor(np.array(1.5), requires_grad=True)
    assert z.sum(0).data == 1.5 and z.mean(-1).data == 1.5 and z.squeeze(0).shape == ()
    assert z.transpose(0, -1).shape == () and z.flatten().shape == (1,) and z.unsqueeze(0).shape == (1,)
    v, i = z.max(0)
    assert v.data == 1.5 and int(i.data) == 0
    v.backward()
    assert z.grad == 1.0
    with pytest.raises(ValueError, match="zero-dimensional"):
        cat([z, z])


def test_max_results_and_errors(rng):
    x = Tensor(np.array([1.0, np.nan, 2.0, np.nan]), requires_grad=True)
    x.max().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.5, 0.0, 0.5])  # the NaNs share it (torch: NaN wins)
    t = Tensor(rng.standard_normal((3, 4)))
    r = t.max(1)
    np.testing.assert_array_equal(r.values.data, t.data.max(1))
    np.testing.assert_array_equal(r.indices.data, t.data.argmax(1))
    vals, idx = t.min(0)
    np.testing.assert_array_equal(vals.data, t.data.min(0))
    with pytest.raises(ValueError, match="empty"):
        Tensor(np.zeros((0, 3))).max()
    with pytest.raises(ValueError, match="empty"):
        Tensor(np.zeros((0, 3))).max(0)


def test_expand_and_matmul_errors_name_the_shapes():
    t = Tensor(np.ones((4, 3)))
    with pytest.raises(ValueError, match="leading"):
        t.expand(-1, 4, 3)  # gave shape (3, 4, 3)
    with pytest.raises(ValueError, match=r"size 5 .* existing size 4"):
        t.expand(5, 3)
    with pytest.raises(ValueError, match="fewer dimensions"):
        t.expand(3)
    assert t.expand(2, -1, 3).shape == (2, 4, 3)
    with pytest.raises(ValueError, match=r"\(4, 3\) and \(4, 3\) cannot be multiplied"):
        t @ t
    with pytest.raises(ValueError, match="at least 1 dimension"):
        t @ Tensor(np.array(2.0))
    with pytest.raises(ValueError, match="batch dimensions"):
        Tensor(np.ones((2, 4, 3))) @ Tensor(np.ones((5, 3, 2)))


def test_grad_mode_objects_follow_torch():
    ng = no_grad()  # creating it changes nothing: entering does
    assert fastconv.autograd.is_grad_enabled()
    assert (Tensor(np.ones(2), requires_grad=True) * 2).requires_grad
    with ng:
        assert not fastconv.autograd.is_grad_enabled()
        with ng:  # re-entrant
            assert not fastconv.autograd.is_grad_enabled()
        assert not fastconv.autograd.is_grad_enabled()
    assert fastconv.autograd.is_grad_enabled()
    sg = fastconv.autograd.set_grad_enabled(False)  # a plain call sets the mode, as torch
    try:
        assert not fastconv.autograd.is_grad_enabled()
    finally:
        fastconv.autograd.set_grad_enabled(True)
    del sg
    with fastconv.autograd.set_grad_enabled(False):
        assert not fastconv.autograd.is_grad_enabled()
    assert fastconv.autograd.is_grad_enabled()

    @no_grad()
    def f(t):
        return t * 2

    assert not f(Tensor(np.ones(1), requires_grad=True)).requires_grad
    assert fastconv.autograd.is_grad_enabled()


def test_type_promotion_follows_torch():
    f32 = Tensor(np.ones(2, np.float32), requires_grad=True)
    i64 = Tensor(np.array([3, 4]))
    assert (f32 + np.float64(1.5)).dtype == np.float32  # NumPy scalars do not widen (NumPy's NEP 50 would)
    assert (np.float64(2.0) * f32).dtype == np.float32
    assert (f32 + Tensor(np.array(2.0))).dtype == np.float32  # a 0-d tensor does not either
    assert (f32 + Tensor(np.ones(2))).dtype == np.float64  # a dimensioned float64 tensor does
    assert (f32 + i64).dtype == np.float32 and (i64 * 1.5).dtype == np.float32
    assert (i64 / i64).dtype == np.float32 and (i64 + 1).dtype == np.int64
    assert (f32 ** np.float64(2.0)).dtype == np.float32 and f32.clamp(np.float64(0.5)).dtype == np.float32
    np.testing.assert_allclose((i64 / Tensor(np.array([2, 8]))).data, [1.5, 0.5])
    with pytest.raises(TypeError, match="can't be cast"):
        i64 += 1.5
    # gradients of float32 graphs stay float32 in intermediate nodes (2 ** x took float64 log(2))
    h = 2.0 ** f32
    h.retain_grad()
    m = h.max()
    m.retain_grad()
    (h * 3.0).sum().backward()
    assert h.grad.dtype == np.float32 and f32.grad.dtype == np.float32
    np.testing.assert_allclose(f32.grad, 3.0 * 2.0 * np.log(2.0), rtol=1e-6)


def test_setitem_value_with_leading_unit_dims():
    x = Tensor(np.ones((3, 2))) * 1.0
    v = Tensor(np.array([[[2.0, 3.0]]]), requires_grad=True)  # (1, 1, 2) into a (2, 2) slice
    x[0:2] = v
    g = np.arange(6.0).reshape(3, 2)
    x.backward(g)
    assert v.grad.shape == (1, 1, 2)
    np.testing.assert_array_equal(v.grad, [[[0.0 + 2.0, 1.0 + 3.0]]])


def test_retained_grads_are_writable_and_gradcheck_keeps_grads(rng):
    x = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    h = x * 1.0
    h.retain_grad()
    h.sum().backward()
    h.grad[0, 0] = 7.0  # was a read-only broadcast view
    assert h.grad[0, 0] == 7.0 and h.grad[1, 2] == 1.0
    x.grad = np.full((2, 3), 5.0)
    gradcheck(lambda a: a * a, [x])
    np.testing.assert_array_equal(x.grad, np.full((2, 3), 5.0))


# ------------------------------------------ second fuzz round
def test_views_taken_before_a_recorded_inplace_op_catch_up():
    # as torch, the view is taken again from the base's new node when next used (was x.grad [1, 1, 0])
    x = Tensor(np.ones(3), requires_grad=True)
    b = x * 1.0
    v = b[0:2]
    b.mul_(2.0)
    np.testing.assert_array_equal(v.data, [2.0, 2.0])  # the data is shared
    v.sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 0.0])
    x.grad = None
    b = x * 1.0
    v, u = b[0:2], b[1:]
    v.mul_(3.0)  # through one view; the other catches up
    u.backward(np.array([1.0, 10.0]))
    np.testing.assert_array_equal(x.grad, [0.0, 3.0, 10.0])
    # a change made under no_grad is not recorded: the old graph stays valid for such views
    y = Tensor(np.ones(3), requires_grad=True)
    c = y * 3.0
    w = c[1:]
    with no_grad():
        c.add_(1.0)
    w.sum().backward()
    np.testing.assert_array_equal(y.grad, [0.0, 3.0, 3.0])


def test_integer_index_to_one_element_is_a_view():
    a = Tensor(np.zeros((2, 3)))
    a[0, 1].fill_(7.0)  # NumPy's a[0, 1] is a scalar copy; torch's a 0-d view
    a[-1, -1].add_(5.0)
    np.testing.assert_array_equal(a.data, [[0, 7, 0], [0, 0, 5]])
    w = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        w[0].mul_(3.0)
    np.testing.assert_array_equal(w.data, [3.0, 1.0, 1.0])
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    e = x[1, 2]
    assert e.shape == () and float(e.data) == 5.0
    e.backward()
    np.testing.assert_array_equal(x.grad, [[0, 0, 0], [0, 0, 1]])


def test_grad_mode_decorators_generators_and_arguments():
    @no_grad
    def plain(t):
        """doc"""
        return t * 2

    assert not plain(Tensor(np.ones(1), requires_grad=True)).requires_grad
    assert plain.__name__ == "plain" and plain.__doc__ == "doc" and hasattr(plain, "__wrapped__")

    @no_grad()
    def gen(n):
        for _ in range(n):
            got = yield fastconv.is_grad_enabled()
            assert got is None or got == "x"
        return "done"

    g = gen(3)
    assert [next(g), g.send("x")] == [False, False]  # the body runs without grad at every resumption
    assert fastconv.is_grad_enabled()
    with pytest.raises(StopIteration) as stop:
        next(g), next(g)
    assert stop.value.value == "done"
    assert list(gen(2)) == [False, False]

    @fastconv.enable_grad
    def inner():
        return fastconv.is_grad_enabled()

    with no_grad():
        assert inner()
    with pytest.raises(TypeError, match="bool"):
        fastconv.set_grad_enabled(0)


def test_contiguous_and_to_alias_as_torch():
    x = Tensor(np.arange(6.0).reshape(2, 3))
    y = x.T.contiguous()  # a copy: x keeps its values
    y += 1.0
    np.testing.assert_array_equal(x.data, np.arange(6.0).reshape(2, 3))
    c = x.contiguous()
    assert c is x and x.to(np.float64) is x and x.double() is x
    z = Tensor(np.ones((3, 2)), requires_grad=True)
    z.T.contiguous().sum().backward()
    np.testing.assert_array_equal(z.grad, np.ones((3, 2)))
