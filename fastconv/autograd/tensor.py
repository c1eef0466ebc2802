"""``fastconv.Tensor``: an array plus the node that produced it.

The array is kept as it is (NumPy now, CuPy with the CUDA backend): every bit of
glue here asks the array for its module (:func:`array_module`) instead of
assuming NumPy.
"""
from __future__ import annotations

import numbers

import numpy as np

from .engine import (Function, _Version, apply_view_chain, array_module, check_view_current, is_grad_enabled, retain,
                     run_backward, view_of_array)

__all__ = ["Tensor", "cat", "stack", "tensor"]


def _unbroadcast(g, shape):
    """Sum ``g`` down to ``shape`` (the inverse of broadcasting)."""
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    if g.ndim < len(shape):  # leading 1-dims that broadcasting dropped (x[0:2] = v of shape (1, 2))
        g = g.reshape((1,) * (len(shape) - g.ndim) + tuple(g.shape))
    lead = g.ndim - len(shape)
    if lead > 0:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _shape_of(a):
    return tuple(getattr(a, "shape", ()))


def _is_int_value(v):
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def _as_operand(x, like):
    """A Tensor stays a Tensor; a Python/NumPy scalar becomes a Python scalar (so that it does not
    widen the tensor's dtype: float32 * np.float64(2) stays float32, as torch); an array or a list
    becomes a constant array."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.generic) and x.dtype.kind in "biuf":
        return x.item()
    if isinstance(x, (numbers.Number, np.generic)):
        return x
    xp = array_module(like.data)
    return xp.asarray(x)


def _kind_rank(dtype):
    return {"b": 0, "i": 1, "u": 1, "f": 2}.get(np.dtype(dtype).kind, 3)


def _result_dtype(operands, true_divide=False):
    """torch's result dtype for an elementwise op over Tensors, arrays and Python scalars.

    The highest category (bool < int < float) wins; within it, operands with dimensions decide
    over 0-d ones, and those over Python scalars; a category that only Python scalars bring gives
    the default dtype (float32 for floats, int64 for ints). True division of ints gives float32.
    None where an operand is not a real number (complex: left to NumPy).
    """
    best = None  # (category, priority, dtypes)
    for o in operands:
        if o is None:
            continue
        if isinstance(o, (bool, np.bool_)):
            cat, pri, dt = 0, 0, np.dtype(bool)
        elif isinstance(o, numbers.Integral):
            cat, pri, dt = 1, 0, np.dtype(np.int64)
        elif isinstance(o, numbers.Real):
            cat, pri, dt = 2, 0, np.dtype(np.float32)
        elif hasattr(o, "dtype"):
            cat = _kind_rank(o.dtype)
            if cat > 2:
                return None
            pri, dt = (2 if o.ndim else 1), np.dtype(o.dtype)
        else:
            return None
        if best is None or (cat, pri) > best[:2]:
            best = (cat, pri, [dt])
        elif (cat, pri) == best[:2]:
            best[2].append(dt)
    if best is None:
        return None
    dt = np.result_type(*best[2])
    if true_divide and best[0] < 2:
        dt = np.dtype(np.float32)
    return dt


def _cast_to(x, dtype):
    """A Tensor or an array in ``dtype`` (a Tensor through Cast, so gradients flow back)."""
    if dtype is None or isinstance(x, (numbers.Number, np.generic)) or x is None or x.dtype == dtype:
        return x
    if isinstance(x, Tensor):
        return Cast.apply(x, dtype) if np.dtype(x.dtype).kind == "f" or dtype.kind != "f" else \
            Tensor._wrap(x.data.astype(dtype))
    return x.astype(dtype)


def _check_matmul(sa, sb):
    """torch.matmul's shape rules, checked up front for a message that names both shapes."""
    if len(sa) == 0 or len(sb) == 0:
        raise ValueError(f"matmul: both arguments need at least 1 dimension, got shapes {sa} and {sb}")
    ka = sa[-1]
    kb = sb[0] if len(sb) == 1 else sb[-2]
    if ka != kb:
        raise ValueError(f"matmul: shapes {sa} and {sb} cannot be multiplied ({ka} != {kb})")
    try:
        np.broadcast_shapes(sa[:-2], sb[:-2])
    except ValueError:
        raise ValueError(f"matmul: the batch dimensions of shapes {sa} and {sb} do not broadcast "
                         f"({sa[:-2]} and {sb[:-2]})") from None


class _MaxResult(tuple):
    """``(values, indices)`` of max(dim)/min(dim), with torch's names."""

    __slots__ = ()

    def __new__(cls, values, indices):
        return super().__new__(cls, (values, indices))

    @property
    def values(self):
        return self[0]

    @property
    def indices(self):
        return self[1]


# ----------------------------------------------------------- elementwise
class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (_shape_of(a), _shape_of(b))
        return a + b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        n = ctx.needs_input_grad
        return (_unbroadcast(g, sa) if n[0] else None, _unbroadcast(g, sb) if n[1] else None)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (_shape_of(a), _shape_of(b))
        return a - b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        n = ctx.needs_input_grad
        return (_unbroadcast(g, sa) if n[0] else None, _unbroadcast(-g, sb) if n[1] else None)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (_shape_of(a), _shape_of(b))
        n = ctx.needs_input_grad
        ctx.save_for_backward(b if n[0] else None, a if n[1] else None)
        return a * b

    @staticmethod
    def backward(ctx, g):
        b, a = ctx.saved_tensors
        sa, sb = ctx.shapes
        n = ctx.needs_input_grad
        return (_unbroadcast(g * b, sa) if n[0] else None, _unbroadcast(g * a, sb) if n[1] else None)


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (_shape_of(a), _shape_of(b))
        ctx.save_for_backward(a if ctx.needs_input_grad[1] else None, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        sa, sb = ctx.shapes
        n = ctx.needs_input_grad
        ga = _unbroadcast(g / b, sa) if n[0] else None
        gb = _unbroadcast(-g * ((a / b) / b), sb) if n[1] else None  # not a / (b*b): b*b overflows
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return -g


class Pow(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (_shape_of(a), _shape_of(b))
        y = a ** b
        ctx.save_for_backward(a, b, y if ctx.needs_input_grad[1] else None)
        return y

    @staticmethod
    def backward(ctx, g):
        a, b, y = ctx.saved_tensors
        sa, sb = ctx.shapes
        n = ctx.needs_input_grad
        xp = array_module(g)
        ga = gb = None
        # torch's rules: d/da is 0 where the exponent is 0 (not 0 * 0**-1 = NaN at a = 0), d/db is 0
        # where a == 0 and b >= 0 (not 0 * log(0)); scalars are computed in the gradient's dtype
        if n[0]:
            bb = xp.asarray(b, dtype=g.dtype) if not hasattr(b, "dtype") else b
            with np.errstate(divide="ignore", invalid="ignore"):
                ga = _unbroadcast(xp.where(bb == 0, xp.zeros((), g.dtype), g * bb * a ** (bb - 1)), sa)
        if n[1]:
            aa = xp.asarray(a, dtype=g.dtype) if not hasattr(a, "dtype") else a
            with np.errstate(divide="ignore", invalid="ignore"):
                gb = _unbroadcast(g * xp.where((aa == 0) & (b >= 0), xp.zeros((), g.dtype), y * xp.log(aa)), sb)
        return ga, gb


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        y = array_module(a).exp(a)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return array_module(a).log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g / a


class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        y = array_module(a).sqrt(a)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g / (2 * y)


class Abs(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return array_module(a).abs(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * array_module(a).sign(a)


class Clamp(Function):
    """clamp(a, lo, hi): torch's gradients, bounds included when they are Tensors: ``a`` gets the
    gradient where lo <= a <= hi, ``lo`` where a < lo (and lo < hi), ``hi`` where a > hi (or hi < lo,
    where the result is hi)."""

    @staticmethod
    def forward(ctx, a, lo, hi):
        ctx.save_for_backward(a)
        ctx.bounds = (lo, hi)
        xp = array_module(a)
        if lo is None:
            return xp.minimum(a, hi)
        if hi is None:
            return xp.maximum(a, lo)
        return xp.minimum(xp.maximum(a, lo), hi)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        n = ctx.needs_input_grad
        xp = array_module(g)
        zero = xp.zeros((), g.dtype)
        mask = True
        if lo is not None:
            mask = mask & (a >= lo)
        if hi is not None:
            mask = mask & (a <= hi)
        ga = xp.where(mask, g, zero) if n[0] else None
        glo = ghi = None
        if n[1]:
            glo = _unbroadcast(xp.where((a < lo) & (lo < hi) if hi is not None else a < lo, g, zero), _shape_of(lo))
        if n[2]:
            ghi = _unbroadcast(xp.where((a > hi) | (hi < lo) if lo is not None else a > hi, g, zero), _shape_of(hi))
        return ga, glo, ghi


class Cast(Function):
    @staticmethod
    def forward(ctx, a, dtype):
        ctx.src = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.src), None


class Contiguous(Function):
    @staticmethod
    def forward(ctx, a):
        return array_module(a).ascontiguousarray(a)

    @staticmethod
    def backward(ctx, g):
        return g


class MatMul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a if ctx.needs_input_grad[1] else None, b if ctx.needs_input_grad[0] else None)
        ctx.shapes = (a.shape, b.shape)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        sa, sb = ctx.shapes
        xp = array_module(g)
        if len(sa) == 1 and len(sb) == 1:  # dot product
            return (g * b if ctx.needs_input_grad[0] else None, g * a if ctx.needs_input_grad[1] else None)
        # promote 1-D operands the way matmul does, then undo it
        a2 = None if a is None else (a[None, :] if a.ndim == 1 else a)
        b2 = None if b is None else (b[:, None] if b.ndim == 1 else b)
        g2 = g
        if len(sa) == 1:
            g2 = xp.expand_dims(g2, -2)
        if len(sb) == 1:
            g2 = xp.expand_dims(g2, -1)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = g2 @ xp.swapaxes(b2, -1, -2)
            if len(sa) == 1:
                ga = ga.reshape(ga.shape[:-2] + ga.shape[-1:])
            ga = _unbroadcast(ga, sa)
        if ctx.needs_input_grad[1]:
            gb = xp.swapaxes(a2, -1, -2) @ g2
            if len(sb) == 1:
                gb = gb[..., 0]
            gb = _unbroadcast(gb, sb)
        return ga, gb


# ------------------------------------------------------------- reductions
class DimError(IndexError, ValueError):
    """A dimension out of range (torch raises IndexError; a ValueError too, as every bad argument)."""


def _dim(d, ndim, what="dim"):
    """``d`` wrapped into [0, ndim) (a 0-d tensor takes 0 and -1, as torch); out of range raises."""
    if isinstance(d, bool) or not isinstance(d, (numbers.Integral, np.integer)):
        raise TypeError(f"{what} must be an int, got {d!r}")
    n = max(ndim, 1)
    if not -n <= d < n:
        raise DimError(f"{what} out of range (expected to be in range of [{-n}, {n - 1}], but got {d})")
    return int(d) % n


def _axes(dim, ndim):
    """Reduction axes: None or () for all; 0-d tensors reduce over nothing."""
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(ndim))
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    axes = tuple(_dim(d, ndim) for d in dims)
    if len(set(axes)) != len(axes):
        raise ValueError(f"dim {dims} names a dimension more than once (tensor of {ndim} dims)")
    return axes if ndim else ()


class Sum(Function):
    @staticmethod
    def forward(ctx, a, dim, keepdim):
        ctx.shape = a.shape
        ctx.axes = _axes(dim, a.ndim)
        ctx.keepdim = keepdim
        return array_module(a).sum(a, axis=ctx.axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        if not ctx.keepdim:
            g = xp.expand_dims(g, ctx.axes) if ctx.axes else g
        return xp.broadcast_to(g, ctx.shape), None, None


class Mean(Function):
    @staticmethod
    def forward(ctx, a, dim, keepdim):
        ctx.shape = a.shape
        ctx.axes = _axes(dim, a.ndim)
        ctx.keepdim = keepdim
        ctx.count = int(np.prod([a.shape[i] for i in ctx.axes])) if ctx.axes else 1
        return array_module(a).mean(a, axis=ctx.axes, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        if not ctx.keepdim and ctx.axes:
            g = xp.expand_dims(g, ctx.axes)
        return xp.broadcast_to(g / ctx.count, ctx.shape), None, None


class MaxAll(Function):
    """max()/min() over everything; ties share the gradient evenly (as torch)."""

    @staticmethod
    def forward(ctx, a, is_min):
        xp = array_module(a)
        if a.size == 0:
            raise ValueError(f"{'min' if is_min else 'max'}(): the tensor is empty (shape {a.shape}); give a dim")
        y = a.min() if is_min else a.max()
        ctx.save_for_backward(a, y)
        return xp.asarray(y)

    @staticmethod
    def backward(ctx, g):
        a, y = ctx.saved_tensors
        xp = array_module(g)
        mask = xp.isnan(a) if xp.isnan(y) else a == y  # a NaN maximum: the NaNs share it (as torch)
        return xp.where(mask, g / xp.asarray(mask.sum(), dtype=g.dtype), xp.zeros((), g.dtype)), None


class MaxDim(Function):
    """max(dim)/min(dim): values and indices; the gradient goes to the returned index."""

    @staticmethod
    def forward(ctx, a, dim, keepdim, is_min):
        xp = array_module(a)
        dim = _dim(dim, a.ndim)
        if a.ndim == 0:  # the value itself, index 0 (as torch)
            ctx.shape, ctx.dim, ctx.keepdim = a.shape, None, keepdim
            idx = xp.zeros((), np.int64)
            ctx.mark_non_differentiable(idx)
            return a.copy(), idx
        if a.shape[dim] == 0:
            raise ValueError(f"{'min' if is_min else 'max'}(): dim {dim} of shape {a.shape} is empty")
        idx = xp.argmin(a, axis=dim) if is_min else xp.argmax(a, axis=dim)
        idx_k = xp.expand_dims(idx, dim)
        vals = xp.take_along_axis(a, idx_k, axis=dim)
        if not keepdim:
            vals = vals.squeeze(dim)
        ctx.shape, ctx.dim, ctx.keepdim = a.shape, dim, keepdim
        ctx.save_for_backward(idx_k)
        out_idx = idx_k if keepdim else idx
        ctx.mark_non_differentiable(out_idx)
        return vals, out_idx

    @staticmethod
    def backward(ctx, g, _gi):
        if ctx.dim is None:
            return g, None, None, None
        (idx_k,) = ctx.saved_tensors
        xp = array_module(g)
        if not ctx.keepdim:
            g = xp.expand_dims(g, ctx.dim)
        out = xp.zeros(ctx.shape, g.dtype)
        xp.put_along_axis(out, idx_k, g, axis=ctx.dim)
        return out, None, None, None


# ----------------------------------------------------------- shape ops
class Reshape(Function):
    _makes_view = True

    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape), None


class Permute(Function):
    _makes_view = True

    @staticmethod
    def forward(ctx, a, dims):
        ctx.dims = dims
        return array_module(a).transpose(a, dims)

    @staticmethod
    def backward(ctx, g):
        inv = [0] * len(ctx.dims)
        for i, d in enumerate(ctx.dims):
            inv[d] = i
        return array_module(g).transpose(g, inv), None


class Expand(Function):
    _makes_view = True

    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return array_module(a).broadcast_to(a, shape)

    @staticmethod
    def backward(ctx, g):
        return _unbroadcast(g, ctx.shape), None


def _is_basic_index(idx):
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(i, (int, np.integer, slice, type(None), type(Ellipsis))) and not isinstance(i, bool)
               for i in items)


def _unit_slices(idx):
    """A basic index with each int i replaced by the slice i:i+1 (same elements, dims kept)."""
    items = idx if isinstance(idx, tuple) else (idx,)
    return tuple(slice(i, i + 1 if i != -1 else None) if isinstance(i, (int, np.integer)) else i for i in items)


def _unwrap_index(idx):
    if isinstance(idx, Tensor):
        return idx.data
    if isinstance(idx, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in idx)
    return idx


def _scatter_add(out, idx, g):
    xp = array_module(out)
    if xp is np:
        np.add.at(out, idx, g)
    else:  # pragma: no cover - CuPy path
        import cupyx  # noqa: PLC0415

        cupyx.scatter_add(out, idx, g)


class GetItem(Function):
    _makes_view = True

    @staticmethod
    def forward(ctx, a, idx):
        ctx.shape, ctx.dtype, ctx.idx = a.shape, a.dtype, idx
        y = a[idx]
        if isinstance(y, np.generic) and _is_basic_index(idx):
            # NumPy gives a scalar copy for a[int, int]; torch a 0-d view (so a[0, 1].fill_(7)
            # writes into a): the same element through unit slices, reshaped to 0-d, is a view
            y = a[_unit_slices(idx)].reshape(())
        return array_module(a).asarray(y)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        out = xp.zeros(ctx.shape, g.dtype)
        if _is_basic_index(ctx.idx):
            out[ctx.idx] = g
        else:
            _scatter_add(out, ctx.idx, g)
        return out, None


class SetItem(Function):
    @staticmethod
    def forward(ctx, a, value, idx):
        ctx.idx = idx
        ctx.vshape = _shape_of(value)
        out = a.copy()
        out[idx] = value
        return out

    @staticmethod
    def backward(ctx, g):
        ga = gv = None
        if ctx.needs_input_grad[0]:
            ga = g.copy()
            ga[ctx.idx] = 0
        if ctx.needs_input_grad[1]:
            gv = _unbroadcast(g[ctx.idx], ctx.vshape)
        return ga, gv, None


class ScatterView(Function):
    """``base`` with the view ``chain`` of it replaced by ``value`` (an in-place op through a view)."""

    @staticmethod
    def forward(ctx, base, value, chain):
        ctx.chain = chain
        out = base.copy()
        view_of_array(out, chain)[...] = value
        return out

    @staticmethod
    def backward(ctx, g):
        gb = gv = None
        if ctx.needs_input_grad[0]:
            gb = g.copy()
            view_of_array(gb, ctx.chain)[...] = 0
        if ctx.needs_input_grad[1]:
            gv = view_of_array(g, ctx.chain).copy()
        return gb, gv, None


class Cat(Function):
    @staticmethod
    def forward(ctx, dim, *arrays):
        xp = array_module(arrays[0])
        dim = dim % arrays[0].ndim
        ctx.dim = dim
        ctx.sizes = [a.shape[dim] for a in arrays]
        return xp.concatenate(arrays, axis=dim)

    @staticmethod
    def backward(ctx, g):
        outs, start = [None], 0
        for s in ctx.sizes:
            sl = [slice(None)] * g.ndim
            sl[ctx.dim] = slice(start, start + s)
            outs.append(g[tuple(sl)])
            start += s
        return tuple(outs)


class Stack(Function):
    @staticmethod
    def forward(ctx, dim, *arrays):
        xp = array_module(arrays[0])
        ctx.dim = dim % (arrays[0].ndim + 1)
        return xp.stack(arrays, axis=ctx.dim)

    @staticmethod
    def backward(ctx, g):
        xp = array_module(g)
        return (None,) + tuple(xp.take(g, i, axis=ctx.dim) for i in range(g.shape[ctx.dim]))


# ------------------------------------------------------------------ Tensor
def _shape_args(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


class Tensor:
    """An array (``.data``) with an optional gradient (``.grad``) and the node that made it."""

    __array_ufunc__ = None  # ndarray op Tensor defers to Tensor's reflected operator
    __array_priority__ = 1000
    __hash__ = object.__hash__

    def __init__(self, data, requires_grad=False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        xp = array_module(data)
        if not hasattr(data, "dtype") or not hasattr(data, "shape"):
            data = np.asarray(data)
            if data.dtype == np.float64 and dtype is None:
                data = data.astype(np.float32)  # Python floats become float32, as torch.tensor
        if dtype is not None:
            data = xp.asarray(data, dtype=dtype)
        elif isinstance(data, np.generic):
            data = np.asarray(data)
        self.data = data
        self.grad = None
        self._node = None
        self._out_idx = 0
        self._version = _Version()
        self._base = None
        self._view_rec = 0
        self._view_chain = ()
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _wrap(cls, array):
        t = cls.__new__(cls)
        t.data = array
        t.grad = None
        t._node = None
        t._out_idx = 0
        t._version = _Version()
        t._base = None
        t._view_rec = 0
        t._view_chain = ()
        t.requires_grad = False
        return t

    # -- properties
    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def device(self):
        dev = getattr(self.data, "device", None)
        if array_module(self.data) is not np and dev is not None:
            return f"cuda:{getattr(dev, 'id', 0)}"
        return "cpu"

    @property
    def requires_grad(self):
        # a view taken before a recorded in-place op on its base requires grad once the base does
        # (its graph is brought up to date when it is next used: engine.check_view_current)
        if self._base is not None and self._version.recorded != self._view_rec:
            return self._requires_grad or self._base.requires_grad
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        self._requires_grad = value

    @property
    def grad_fn(self):
        check_view_current(self)
        return self._node

    @property
    def is_leaf(self):
        return self._node is None

    @property
    def T(self):
        return self.permute(*reversed(range(self.ndim)))

    def dim(self):
        return self.data.ndim

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self):
        return int(self.data.size)

    def __len__(self):
        return len(self.data)

    # -- grad plumbing
    def requires_grad_(self, requires_grad=True):
        if requires_grad and np.dtype(self.data.dtype).kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, got dtype {self.data.dtype}")
        if not requires_grad and self._node is not None:
            raise RuntimeError("requires_grad can only be changed on leaf tensors; use detach()")
        self.requires_grad = bool(requires_grad)
        return self

    def retain_grad(self):
        if self._node is not None:
            retain(self._node, self._out_idx, self)

    def backward(self, gradient=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` (``gradient``: the upstream grad)."""
        check_view_current(self)
        xp = array_module(self.data)
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(f"grad can be implicitly created only for scalar outputs; this tensor has "
                                   f"shape {self.shape}: pass gradient=")
            g = xp.ones(self.data.shape, self.data.dtype)
        else:
            g = gradient.data if isinstance(gradient, Tensor) else xp.asarray(gradient, dtype=self.data.dtype)
            if tuple(g.shape) != self.shape:
                raise ValueError(f"gradient has shape {tuple(g.shape)}, the tensor has shape {self.shape}")
        run_backward([self], [g], retain_graph=retain_graph)

    def detach(self):
        t = Tensor._wrap(self.data)
        t._version = self._version  # same array, same version counter
        return t

    def numpy(self):
        if self.requires_grad:
            raise RuntimeError("Can't call numpy() on a Tensor that requires grad; use tensor.detach().numpy()")
        if array_module(self.data) is not np:  # pragma: no cover - CuPy path
            return self.data.get()
        return self.data

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item(): only one-element tensors can be converted, got shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        return self.data.tolist()

    def __array__(self, dtype=None, copy=None):
        a = self.data if array_module(self.data) is np else self.data.get()
        return a if dtype is None else a.astype(dtype)

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        return bool(self.item())

    def __repr__(self):
        extra = ""
        if self._node is not None:
            extra = f", grad_fn=<{self._node.name()}>"
        elif self.requires_grad:
            extra = ", requires_grad=True"
        body = np.array2string(np.asarray(self), separator=", ", prefix="tensor(")
        return f"tensor({body}{extra})" if self.dtype == np.float32 else f"tensor({body}, dtype={self.dtype}{extra})"

    # -- arithmetic
    def _bin(self, cls, other, reverse=False):
        other = _as_operand(other, self)
        if cls is MatMul:
            a, b = (other, self) if reverse else (self, other)
            _check_matmul(_shape_of(a), _shape_of(b))
            return cls.apply(a, b)
        kind = self.data.dtype.kind
        if kind == "f" and (type(other) in (float, int) or (isinstance(other, Tensor) and
                                                             other.data.dtype == self.data.dtype)):
            a, b = self, other  # the common case: nothing to promote
        else:
            dt = _result_dtype((self, other), true_divide=cls is Div)
            a, b = _cast_to(self, dt), _cast_to(other, dt)
        return cls.apply(b, a) if reverse else cls.apply(a, b)

    def __add__(self, o):
        return self._bin(Add, o)

    def __radd__(self, o):
        return self._bin(Add, o, True)

    def __sub__(self, o):
        return self._bin(Sub, o)

    def __rsub__(self, o):
        return self._bin(Sub, o, True)

    def __mul__(self, o):
        return self._bin(Mul, o)

    def __rmul__(self, o):
        return self._bin(Mul, o, True)

    def __truediv__(self, o):
        return self._bin(Div, o)

    def __rtruediv__(self, o):
        return self._bin(Div, o, True)

    def __pow__(self, o):
        return self._bin(Pow, o)

    def __rpow__(self, o):
        return self._bin(Pow, o, True)

    def __matmul__(self, o):
        return self._bin(MatMul, o)

    def __rmatmul__(self, o):
        return self._bin(MatMul, o, True)

    def __neg__(self):
        return Neg.apply(self)

    def __pos__(self):
        return self

    def _cmp(self, o, op):
        o = o.data if isinstance(o, Tensor) else o
        return Tensor._wrap(op(self.data, o))

    def __lt__(self, o):
        return self._cmp(o, lambda a, b: a < b)

    def __le__(self, o):
        return self._cmp(o, lambda a, b: a <= b)

    def __gt__(self, o):
        return self._cmp(o, lambda a, b: a > b)

    def __ge__(self, o):
        return self._cmp(o, lambda a, b: a >= b)

    def __eq__(self, o):
        return self._cmp(o, lambda a, b: a == b)

    def __ne__(self, o):
        return self._cmp(o, lambda a, b: a != b)

    add = __add__
    sub = __sub__
    mul = __mul__
    div = __truediv__
    matmul = __matmul__
    pow = __pow__

    def exp(self):
        return Exp.apply(self)

    def log(self):
        return Log.apply(self)

    def sqrt(self):
        return Sqrt.apply(self)

    def abs(self):
        return Abs.apply(self)

    def clamp(self, min=None, max=None):  # noqa: A002 - torch's names
        if min is None and max is None:
            raise ValueError("clamp: at least one of min and max must be given")
        lo, hi = _as_operand(min, self) if min is not None else None, _as_operand(max, self) if max is not None else None
        dt = _result_dtype((self, lo, hi))
        return Clamp.apply(_cast_to(self, dt), _cast_to(lo, dt), _cast_to(hi, dt))

    clip = clamp

    def relu(self):
        from ..nn import functional as F  # noqa: PLC0415

        return F.relu(self)

    def sigmoid(self):
        from ..nn import functional as F  # noqa: PLC0415

        return F.sigmoid(self)

    def tanh(self):
        from ..nn import functional as F  # noqa: PLC0415

        return F.tanh(self)

    def softmax(self, dim):
        from ..nn import functional as F  # noqa: PLC0415

        return F.softmax(self, dim)

    def log_softmax(self, dim):
        from ..nn import functional as F  # noqa: PLC0415

        return F.log_softmax(self, dim)

    # -- reductions
    def sum(self, dim=None, keepdim=False, axis=None):
        """Sum over ``dim`` (None or () for all dimensions, as torch)."""
        return Sum.apply(self, dim if axis is None else axis, keepdim)

    def mean(self, dim=None, keepdim=False, axis=None):
        return Mean.apply(self, dim if axis is None else axis, keepdim)

    def max(self, dim=None, keepdim=False):
        """The maximum; with ``dim``, ``(values, indices)`` (a named tuple, as torch)."""
        if dim is None:
            return MaxAll.apply(self, False)
        return _MaxResult(*MaxDim.apply(self, dim, keepdim, False))

    def min(self, dim=None, keepdim=False):
        if dim is None:
            return MaxAll.apply(self, True)
        return _MaxResult(*MaxDim.apply(self, dim, keepdim, True))

    def argmax(self, dim=None, keepdim=False):
        xp = array_module(self.data)
        if dim is None:
            return Tensor._wrap(xp.asarray(xp.argmax(self.data)))
        if self.ndim == 0:
            _dim(dim, 0)
            return Tensor._wrap(xp.zeros((), np.int64))
        dim = _dim(dim, self.ndim)
        r = xp.argmax(self.data, axis=dim)
        return Tensor._wrap(xp.expand_dims(r, dim) if keepdim else r)

    # -- shapes
    def reshape(self, *shape):
        return Reshape.apply(self, _shape_args(shape))

    def view(self, *shape):
        return Reshape.apply(self, _shape_args(shape))

    def flatten(self, start_dim=0, end_dim=-1):
        nd = self.ndim
        s, e = _dim(start_dim, nd, "start_dim"), _dim(end_dim, nd, "end_dim")
        if nd == 0:
            return self.reshape(1)
        if s > e:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for shape {self.shape}")
        shape = self.shape[:s] + (int(np.prod(self.shape[s:e + 1])),) + self.shape[e + 1:]
        return self.reshape(shape)

    def permute(self, *dims):
        dims = _shape_args(dims)
        if len(dims) != self.ndim:
            raise ValueError(f"permute: dims {dims} are not a permutation of the {self.ndim} dims of {self.shape}")
        wrapped = tuple(_dim(d, self.ndim) for d in dims) if self.ndim else ()
        if sorted(wrapped) != list(range(self.ndim)):
            raise ValueError(f"permute: dims {dims} are not a permutation of the {self.ndim} dims of {self.shape}")
        return Permute.apply(self, wrapped)

    def transpose(self, dim0, dim1):
        d0, d1 = _dim(dim0, self.ndim, "dim0"), _dim(dim1, self.ndim, "dim1")
        if self.ndim == 0:
            return Permute.apply(self, ())
        dims = list(range(self.ndim))
        dims[d0], dims[d1] = dims[d1], dims[d0]
        return Permute.apply(self, tuple(dims))

    def unsqueeze(self, dim):
        dim = _dim(dim, self.ndim + 1)
        return self.reshape(self.shape[:dim] + (1,) + self.shape[dim:])

    def squeeze(self, dim=None):
        if dim is None:
            return self.reshape(tuple(s for s in self.shape if s != 1))
        dim = _dim(dim, self.ndim)
        if self.ndim == 0 or self.shape[dim] != 1:
            return self.reshape(self.shape)
        return self.reshape(self.shape[:dim] + self.shape[dim + 1:])

    def expand(self, *shape):
        """A broadcast view (torch's expand): -1 keeps a dimension; new dimensions go in front."""
        shape = _shape_args(shape)
        lead = len(shape) - self.ndim
        if lead < 0:
            raise ValueError(f"expand: the target shape {shape} has fewer dimensions than the tensor's {self.shape}")
        full = []
        for i, size in enumerate(shape):
            if size == -1 and i < lead:
                raise ValueError(f"expand: -1 is not allowed in a new leading dimension ({i}): target shape {shape}, "
                                 f"tensor shape {self.shape}")
            own = self.shape[i - lead] if i >= lead else None
            size = own if size == -1 else size
            if not _is_int_value(size) or size < 0:
                raise ValueError(f"expand: sizes must be non-negative ints or -1, got {shape}")
            if own is not None and own != 1 and own != size:
                raise ValueError(f"expand: the expanded size {size} must match the existing size {own} at "
                                 f"non-singleton dimension {i}: target shape {shape}, tensor shape {self.shape}")
            full.append(int(size))
        return Expand.apply(self, tuple(full))

    def contiguous(self):
        """``self`` when its array is C-contiguous, else a contiguous copy (as torch)."""
        if self.data.flags.c_contiguous:
            return self
        return Contiguous.apply(self)

    def to(self, dtype):
        """``self`` in ``dtype``: ``self`` itself when it already is (as torch), else a cast copy."""
        dtype = np.dtype(dtype)
        return self if dtype == self.dtype else Cast.apply(self, dtype)

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    def clone(self):
        return Add.apply(self, 0) if self.requires_grad else Tensor._wrap(self.data.copy())

    def __getitem__(self, idx):
        return GetItem.apply(self, _unwrap_index(idx))

    # -- in-place (bump the version so saved copies are checked)
    def _inplace(self, cls, other, raw, *extra):
        other = _as_operand(other, self)
        other_t = isinstance(other, Tensor)
        dt = _result_dtype((self, other), true_divide=cls is Div) if cls in (Add, Sub, Mul, Div) else None
        if dt is not None and _kind_rank(dt) > _kind_rank(self.dtype):
            raise TypeError(f"in-place operation: the result type {dt} can't be cast to the tensor's dtype "
                            f"{self.dtype} (shape {self.shape})")
        recording = is_grad_enabled() and (self.requires_grad or (other_t and other.requires_grad))
        if recording:
            if self._node is None and self.requires_grad:
                raise RuntimeError(f"a leaf Tensor that requires grad (shape {self.shape}) is being used in an "
                                   "in-place operation; wrap it in fastconv.no_grad() or use an out-of-place op")
            if self._base is not None:
                return self._inplace_on_view(cls, other, extra)
            old = Tensor._wrap(self.data.copy())
            old._node, old._out_idx, old.requires_grad = self._node, self._out_idx, self.requires_grad
            r = cls.apply(old, _as_operand(other, self), *extra)
            self.data[...] = r.data
            self._version.value += 1
            self._version.recorded += 1  # views taken before this are stale (check_view_current)
            self._node, self._out_idx, self.requires_grad = r._node, r._out_idx, True
            if r._node is not None:
                r._node._retained = None
        else:
            raw(self.data, other.data if other_t else other)
            self._version.value += 1
        return self

    def _inplace_on_view(self, cls, other, extra):
        """A recorded in-place op on a view, as torch: the base's graph gets a node that writes the
        view's new values into it (ScatterView), and the view is taken again from that node; other
        views of the base catch up when next used (engine.check_view_current)."""
        base = self._base
        if base._node is None and base.requires_grad:
            raise RuntimeError(f"a view (shape {self.shape}) of a leaf Tensor that requires grad (shape "
                               f"{base.shape}) is being used in an in-place operation; wrap it in "
                               "fastconv.no_grad() or use an out-of-place op")
        check_view_current(self)
        old = Tensor._wrap(self.data.copy())  # the op saves this copy, not the memory it overwrites
        old._node, old._out_idx, old.requires_grad = self._node, self._out_idx, self.requires_grad
        r = cls.apply(old, other, *extra)
        new_base = ScatterView.apply(base, r, self._view_chain)
        base.data[...] = new_base.data  # in place: every view of the base sees the new values
        self._version.value += 1
        self._version.recorded += 1
        base._node, base._out_idx, base.requires_grad = new_base._node, new_base._out_idx, True
        fresh = apply_view_chain(base, self._view_chain)
        self._node, self._out_idx, self.requires_grad = fresh._node, fresh._out_idx, True
        self._view_rec = self._version.recorded
        return self

    def _iop(self, cls, other, npop):
        def raw(a, b):
            a[...] = npop(a, b)
        return self._inplace(cls, other, raw)

    def __iadd__(self, o):
        return self._iop(Add, o, lambda a, b: a + b)

    def __isub__(self, o):
        return self._iop(Sub, o, lambda a, b: a - b)

    def __imul__(self, o):
        return self._iop(Mul, o, lambda a, b: a * b)

    def __itruediv__(self, o):
        return self._iop(Div, o, lambda a, b: a / b)

    def add_(self, o, alpha=1):
        return self.__iadd__(o if alpha == 1 else o * alpha)

    def sub_(self, o, alpha=1):
        return self.__isub__(o if alpha == 1 else o * alpha)

    def mul_(self, o):
        return self.__imul__(o)

    def div_(self, o):
        return self.__itruediv__(o)

    def __setitem__(self, idx, value):
        idx = _unwrap_index(idx)

        def raw(a, v):
            a[idx] = v
        self._inplace(SetItem, value, raw, idx)

    def zero_(self):
        return self.fill_(0)

    def fill_(self, value):
        """Every element set to ``value``; recorded (the old values get no gradient, a Tensor value
        gets the sum of the gradient) where gradients are being recorded."""
        def raw(a, v):
            a[...] = v
        return self._inplace(SetItem, value, raw, Ellipsis)

    def copy_(self, src):
        """``self`` overwritten by ``src`` (broadcast), as torch: ``src`` gets the gradient."""
        return self.fill_(src)


def tensor(data, requires_grad=False, dtype=None):
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def _tensors(seq, name):
    if not isinstance(seq, (list, tuple)) or not seq:
        raise TypeError(f"{name}: expected a non-empty list or tuple of Tensors, got {type(seq).__name__}")
    out = [t if isinstance(t, Tensor) else Tensor(t) for t in seq]
    nd = out[0].ndim
    for i, t in enumerate(out):
        if t.ndim != nd:
            raise ValueError(f"{name}: tensor 0 has shape {out[0].shape} but tensor {i} has shape {t.shape}")
    return out


def cat(tensors, dim=0):
    """Concatenate tensors along ``dim`` (torch.cat)."""
    ts = _tensors(tensors, "cat")
    if ts[0].ndim == 0:
        raise ValueError("cat: zero-dimensional tensors cannot be concatenated (use stack)")
    d = _dim(dim, ts[0].ndim)
    for i, t in enumerate(ts):
        if t.shape[:d] + t.shape[d + 1:] != ts[0].shape[:d] + ts[0].shape[d + 1:]:
            raise ValueError(f"cat: sizes must match except in dim {dim}: tensor 0 has shape {ts[0].shape}, "
                             f"tensor {i} has shape {t.shape}")
    return Cat.apply(d, *ts)


def stack(tensors, dim=0):
    ts = _tensors(tensors, "stack")
    for i, t in enumerate(ts):
        if t.shape != ts[0].shape:
            raise ValueError(f"stack: tensor 0 has shape {ts[0].shape}, tensor {i} has shape {t.shape}")
    return Stack.apply(_dim(dim, ts[0].ndim + 1), *ts)
