"""The tape: :class:`Function` nodes, grad mode and the reverse-mode walk.

A node is the ``Function`` instance that produced a tensor. It keeps *edges*
to the nodes of its inputs (never the input tensors themselves, so an
intermediate array dies as soon as neither the user nor a backward needs it),
the arrays ``forward`` chose to save, and the version of each saved tensor at
save time, so that an in-place change made afterwards is caught in backward.
"""
from __future__ import annotations

import functools
import inspect
import threading
import weakref

import numpy as np

__all__ = ["Function", "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled", "array_module",
           "run_backward"]


def array_module(a):
    """NumPy for NumPy arrays, CuPy for CuPy arrays (the glue never assumes NumPy)."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy  # noqa: PLC0415 - only reached with a CuPy array in hand

        return cupy
    return np


# ------------------------------------------------------------------ grad mode
class _GradMode(threading.local):
    enabled = True


_mode = _GradMode()


def is_grad_enabled() -> bool:
    return _mode.enabled


class _GradModeContext:
    """A context manager / decorator that sets grad mode on entry and restores it on exit."""

    def __init__(self, mode: bool):
        self.mode = bool(mode)
        self._prev = []

    def __enter__(self):
        self._prev.append(_mode.enabled)
        _mode.enabled = self.mode
        return self

    def __exit__(self, *exc):
        _mode.enabled = self._prev.pop()
        return False

    def __call__(self, fn):
        mode = self.mode
        if inspect.isgeneratorfunction(fn):
            # the body of a generator runs at each next(), not when it is called: set the mode
            # around every resumption (as torch)
            @functools.wraps(fn)
            def gen_wrapper(*a, **k):
                gen = fn(*a, **k)
                step, arg = gen.send, None
                while True:
                    try:
                        with _GradModeContext(mode):
                            item = step(arg)
                    except StopIteration as stop:
                        return stop.value
                    try:
                        arg, step = (yield item), gen.send
                    except GeneratorExit:
                        with _GradModeContext(mode):
                            gen.close()
                        raise
                    except BaseException as exc:  # noqa: BLE001 - handed to the generator
                        arg, step = exc, gen.throw

            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*a, **k):
            with _GradModeContext(mode):
                return fn(*a, **k)

        return wrapper


class _NoArgDecorator(_GradModeContext):
    """no_grad / enable_grad: ``@no_grad`` works without parentheses too (as torch)."""

    def __new__(cls, fn=None):
        if fn is None:
            return super().__new__(cls)
        if not callable(fn):
            raise TypeError(f"{cls.__name__}() takes no arguments (got {fn!r})")
        return cls()(fn)


class set_grad_enabled(_GradModeContext):
    """Sets grad mode (per thread, as torch): at once when called (``set_grad_enabled(False)`` as a
    plain statement turns recording off), and as a context manager restores the previous mode on
    exit; also usable as a decorator."""

    def __init__(self, mode: bool):
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"set_grad_enabled: mode must be a bool, got {mode!r}")
        super().__init__(mode)
        self._before = _mode.enabled
        _mode.enabled = self.mode

    def __enter__(self):
        self._prev.append(self._before)  # the mode was set by __init__
        return self

    def __call__(self, fn):
        _mode.enabled = self._before  # built as a decorator: do not change the mode now
        return super().__call__(fn)


class no_grad(_NoArgDecorator):
    """``with fastconv.no_grad():`` records nothing (also usable as a decorator). Creating the
    object changes nothing; entering it does (as torch)."""

    def __init__(self):
        super().__init__(False)


class enable_grad(_NoArgDecorator):
    def __init__(self):
        super().__init__(True)


# --------------------------------------------------------------- versions
class _Version:
    """Shared by every Tensor that wraps the same array (views included); ``value`` is bumped by
    every in-place op, ``recorded`` by those recorded in the graph (a view taken before one of those
    has a graph that misses the change: see check_view_current)."""

    __slots__ = ("value", "recorded", "__weakref__")

    def __init__(self):
        self.value = 0
        self.recorded = 0


def check_view_current(t):
    """Bring the graph of view ``t`` up to date when its base got a recorded in-place op after the
    view was taken (as torch): the view is taken again from the base's current node."""
    if t._base is not None and t._version.recorded != t._view_rec and _mode.enabled:
        fresh = apply_view_chain(t._base, t._view_chain)
        t._node, t._out_idx, t.requires_grad = fresh._node, fresh._out_idx, fresh.requires_grad
        t._view_rec = t._version.recorded


def apply_view_chain(base, chain):
    """The view ops of ``chain`` ((Function, extra args) from the base) applied to Tensor ``base``."""
    t = base
    for cls, extra in chain:
        t = cls.apply(t, *extra)
    return t


def view_of_array(arr, chain):
    """The same view ops applied to a plain array (a writable view of it)."""
    class _Ctx:
        needs_input_grad = ()

    for cls, extra in chain:
        arr = cls.forward(_Ctx(), arr, *extra)
    return arr


class _Saved:
    __slots__ = ("array", "counter", "version", "shape")

    def __init__(self, array, counter, version):
        self.array = array
        self.counter = counter
        self.version = version
        self.shape = getattr(array, "shape", None)


# ---------------------------------------------------------------- Function
class Function:
    """A differentiable operation: subclass with ``forward`` and ``backward`` on arrays.

    ``forward(ctx, *args, **kwargs)`` gets arrays where the caller passed Tensors and
    returns an array or a tuple of arrays; ``backward(ctx, *grad_outputs)`` returns one
    gradient (or None) per positional argument of ``forward``. ``ctx`` is the node
    itself: ``ctx.save_for_backward(*arrays)``, ``ctx.saved_tensors``,
    ``ctx.needs_input_grad``, ``ctx.mark_non_differentiable(*arrays)``.
    """

    # set on each node
    needs_input_grad: tuple = ()
    # True for operations whose output may be a view of their first input's array (reshape,
    # permute, basic indexing, expand): the output then shares the input's version counter and
    # remembers its base, so in-place changes through it are seen (see Tensor._inplace)
    _makes_view = False

    def __init__(self):
        self._saved = None
        self._to_save = ()
        self._non_diff = ()
        self._edges = ()
        self._out_meta = ()
        self._retained = None
        self._released = False

    # -- API used inside forward/backward
    def save_for_backward(self, *arrays):
        self._to_save = arrays

    def mark_non_differentiable(self, *arrays):
        self._non_diff = arrays

    @property
    def saved_tensors(self):
        if self._released:
            raise RuntimeError(
                f"{self.name()}: trying to backward through the graph a second time (the saved arrays were "
                "freed after the first backward); pass retain_graph=True to the first backward")
        out = []
        for s in self._saved or ():
            if s is None:
                out.append(None)
                continue
            if s.counter is not None and s.counter.value != s.version:
                raise RuntimeError(
                    f"one of the arrays needed for gradient computation has been modified by an inplace "
                    f"operation: the array of shape {s.shape} saved by {self.name()} is at version "
                    f"{s.counter.value}; expected version {s.version} instead")
            out.append(s.array)
        return tuple(out)

    @classmethod
    def name(cls):
        return cls.__name__ + "Backward"

    def __repr__(self):
        return f"<{self.name()}>"

    @property
    def next_functions(self):
        return tuple(e[0] if e is not None else None for e in self._edges)

    # -- the part subclasses write
    @staticmethod
    def forward(ctx, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def backward(ctx, *grad_outputs):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- recording
    @classmethod
    def apply(cls, *args, **kwargs):
        from .tensor import Tensor  # noqa: PLC0415 - tensor imports engine

        ctx = cls()
        for a in args:
            if isinstance(a, Tensor) and a._base is not None:
                check_view_current(a)
        raw = [a.data if isinstance(a, Tensor) else a for a in args]
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        record = _mode.enabled and any(needs)
        ctx.needs_input_grad = needs
        with set_grad_enabled(False):
            result = cls.forward(ctx, *raw, **kwargs)
        multi = isinstance(result, tuple)
        outs = result if multi else (result,)
        non_diff = {id(a) for a in ctx._non_diff}
        tensors = []
        for o in outs:
            if o is None:
                tensors.append(None)
                continue
            if isinstance(o, np.generic):  # a full NumPy reduction gives a scalar: keep arrays everywhere
                o = np.asarray(o)
            t = Tensor._wrap(o)
            if record and id(o) not in non_diff and _is_float(o):
                t.requires_grad = True
                t._node = ctx
                t._out_idx = len(tensors)
            tensors.append(t)
        if cls._makes_view and tensors[0] is not None and isinstance(args[0], Tensor):
            _mark_view(tensors[0], args[0], cls, tuple(args[1:]))
        if record:
            ctx._edges = tuple(_edge_of(a) if n else None for a, n in zip(args, needs))
            ctx._out_meta = tuple((o.shape, o.dtype, array_module(o)) if o is not None else None for o in outs)
            saved = []
            for arr in ctx._to_save:
                saved.append(None if arr is None else _saved_of(arr, args, tensors))
            ctx._saved = saved
        ctx._to_save = ()
        ctx._non_diff = ()
        return tuple(tensors) if multi else tensors[0]


def _mark_view(out, src, cls, extra):
    """``out`` (a Tensor) views ``src``'s array: share the version counter, keep the base and the
    chain of view ops that leads from it (to take the view again, or write through it)."""
    xp = array_module(src.data)
    if out.data.size == 0 or not xp.may_share_memory(out.data, src.data):
        return
    out._version = src._version
    out._view_rec = src._version.recorded
    out._base = src._base if src._base is not None else src
    out._view_chain = (src._view_chain if src._base is not None else ()) + ((cls, extra),)


def _is_float(a):
    dt = getattr(a, "dtype", None)
    return dt is not None and np.dtype(dt).kind == "f"


def _edge_of(t):
    """(node, output index) for a non-leaf, (None, leaf tensor) for a leaf."""
    if t._node is not None:
        return (t._node, t._out_idx)
    return (None, t)


def _saved_of(arr, args, outputs):
    """Remember which tensor (version counter) a saved array belongs to, if any."""
    from .tensor import Tensor  # noqa: PLC0415

    for t in list(args) + list(outputs):
        if isinstance(t, Tensor) and t.data is arr:
            return _Saved(arr, t._version, t._version.value)
    return _Saved(arr, None, 0)


# ------------------------------------------------------------------ backward
def _accumulate(buf, g):
    return g if buf is None else buf + g


def run_backward(tensors, grads, retain_graph=False):
    """Reverse-mode walk from ``tensors`` seeded with ``grads`` (arrays)."""
    roots = []
    for t, g in zip(tensors, grads):
        if not t.requires_grad:
            raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
        roots.append((t, g))

    # topological order over nodes (iterative DFS, post-order)
    order, seen = [], set()
    for t, _ in roots:
        if t._node is None or id(t._node) in seen:
            continue
        stack = [(t._node, False)]
        while stack:
            node, done = stack.pop()
            if done:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            for e in node._edges:
                if e is not None and e[0] is not None and id(e[0]) not in seen:
                    stack.append((e[0], False))
    order.reverse()

    buffers = {}
    for t, g in roots:
        if t._node is None:
            _to_leaf(t, g)
        else:
            key = id(t._node)
            slot = buffers.setdefault(key, [None] * len(t._node._out_meta))
            slot[t._out_idx] = _accumulate(slot[t._out_idx], g)

    for node in order:
        slot = buffers.pop(id(node), None)
        if slot is None:
            continue  # not reached from the roots' gradients
        grads_out = []
        for g, meta in zip(slot, node._out_meta):
            if g is None and meta is not None:
                shape, dtype, xp = meta
                g = xp.zeros(shape, dtype)
            grads_out.append(g)
        if node._retained:
            for i, ref in node._retained.items():
                t = ref()
                if t is not None and grads_out[i] is not None:
                    # an owned, writable array (a sum's gradient is a read-only broadcast view)
                    g = grads_out[i]
                    t.grad = array_module(g).array(g, copy=True) if t.grad is None else t.grad + g
        with set_grad_enabled(False):
            grads_in = node.backward(node, *grads_out)
        if not isinstance(grads_in, tuple):
            grads_in = (grads_in,)
        if len(grads_in) < len(node._edges):
            grads_in = tuple(grads_in) + (None,) * (len(node._edges) - len(grads_in))
        if not retain_graph:
            node._saved = None
            node._released = True
        del slot, grads_out
        for e, g in zip(node._edges, grads_in):
            if e is None or g is None:
                continue
            prev, idx = e
            if prev is None:
                _to_leaf(idx, g)
            else:
                s = buffers.setdefault(id(prev), [None] * len(prev._out_meta))
                s[idx] = _accumulate(s[idx], g)


def _to_leaf(t, g):
    xp = array_module(g)
    if tuple(g.shape) != tuple(t.data.shape):
        raise RuntimeError(f"gradient of shape {tuple(g.shape)} for a leaf of shape {tuple(t.data.shape)}")
    if t.grad is None:
        # a copy: the same array may have been handed to several inputs (e.g. by an add)
        t.grad = xp.array(g, dtype=t.data.dtype, copy=True)
    else:
        t.grad = t.grad + g.astype(t.data.dtype, copy=False)
    for hook in getattr(t, "_post_accumulate_hooks", ()):
        hook(t)


def retain(node, idx, tensor):
    if node._retained is None:
        node._retained = {}
    node._retained[idx] = weakref.ref(tensor)
