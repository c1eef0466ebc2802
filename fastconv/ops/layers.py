"""Layer kernels with ``torch.nn.functional`` semantics: NumPy in, NumPy out; GPU arrays in, CuPy out.

Batch norm, local response norm, relu / sigmoid / tanh, softmax / log_softmax,
a fused cross entropy (loss and gradient in one pass), dropout with an explicit
counter-based generator, and linear on fastconv's own GEMM; each with its
backward. The arithmetic runs in the backend's kernel table
(``fastconv.backends.layer_kernel``: by default the C++ module ``fastconv._cpu``,
OpenMP; ``backend=`` picks numba, cuda-emu or numba-cuda); results are
bit-identical for any thread count.

dtypes: float32 computes in float32, float64 in float64, float16 is computed
in float32 and rounded back. Integer, bool and complex arrays raise TypeError,
as do mixed dtypes. Any strides are accepted (non-contiguous inputs are copied).

GPU arrays (CuPy arrays, ``__cuda_array_interface__`` objects, CUDA DLPack
tensors) run on backend "cuda" (else "numba-cuda"; see
:mod:`fastconv.ops._device`) with the same checks, dtype rules and results,
and come back as CuPy arrays: batch norm's running statistics (GPU arrays
then) are updated in place on the device, dropout draws the same mask for the
same seed / Generator state as on the host, and cross_entropy returns its loss
as a CuPy array (0-d, or (N,) for ``reduction='none'``). Every array argument
of one call must live on the same side (a host array among GPU arrays is a
TypeError naming it).
"""
from __future__ import annotations

import math
import numbers
import os

import numpy as np

from ..problem import _is_int, check_int64
from ._device import arrays_for as _arrays_for

__all__ = [
    "batch_norm", "batch_norm_forward_train", "batch_norm_backward",
    "local_response_norm", "local_response_norm_backward",
    "relu", "relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
    "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
    "cross_entropy", "dropout", "dropout_backward", "Generator",
    "linear", "linear_backward",
]


# ----------------------------------------------------------------- helpers
# Every op takes an array context `A` (fastconv.ops._device.arrays_for): A.array converts an
# argument (NumPy, or CuPy for GPU arrays), A.xp allocates, A.c makes a contiguous copy of the
# compute dtype when needed, A.kernel(name) is the backend's kernel.


def _compute_dtype(*named):
    dts = {a.dtype for a, _ in named if a is not None}
    if len(dts) > 1:
        desc = ", ".join(f"{n} {a.dtype}" for a, n in named if a is not None)
        raise TypeError(f"dtypes must match: {desc}")
    dt = dts.pop()
    return np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)


def _same_shape(a, name_a, b, name_b):
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; they must match")


def _real(v, name, lo=None, lo_open=False):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    v = float(v)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v}")
    return v


def _int(v, name):
    if not _is_int(v):
        raise TypeError(f"{name} must be an int, got {v!r}")
    return int(v)


def _dim(dim, ndim, name="dim"):
    d = _int(dim, name)
    if not -max(ndim, 1) <= d < max(ndim, 1):
        raise ValueError(f"{name}={dim} is out of range for a {ndim}-D input (expected [{-max(ndim, 1)}, "
                         f"{max(ndim, 1) - 1}])")
    return d % max(ndim, 1)


def _split(shape, dim):
    """(outer, D, inner) of `shape` around axis `dim`."""
    if len(shape) == 0:
        return 1, 1, 1
    outer = math.prod(shape[:dim])
    inner = math.prod(shape[dim + 1:])
    return outer, int(shape[dim]), inner


# ------------------------------------------------------------- batch norm
def _bn_view(x):
    if x.ndim not in (2, 3, 4, 5):
        raise ValueError(f"input must be 2-D (N, C), 3-D (N, C, L), 4-D (N, C, H, W) or 5-D, got "
                         f"{x.ndim}-D with shape {x.shape}")
    N, C = x.shape[0], x.shape[1]
    L = math.prod(x.shape[2:])
    return N, C, L


def _channel_vec(A, v, name, C, x_shape):
    if v is None:
        return None
    v = A.array(v, name)
    if v.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},) for input shape {x_shape}, got {v.shape}")
    return v


def _train_eps(eps):
    if not eps > 0:  # as torch: a constant channel would divide by zero
        raise ValueError(f"eps must be positive when training, got {eps}")
    return eps


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5, *, backend=None):
    """As ``torch.nn.functional.batch_norm``: normalizes over every axis but 1.

    training=True: normalizes with the batch mean and the biased batch variance and, when the
    running statistics are given, updates them IN PLACE (``r = (1 - momentum) r + momentum s``,
    with the unbiased variance ``n/(n-1)`` for ``running_var``; ``momentum=None`` is a cumulative
    average, which needs a step count torch keeps in the module, so it is rejected here).
    training=False: normalizes with the running statistics.
    """
    A = _arrays_for(backend, ("input", input), ("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias))
    x = A.array(input, "input")
    N, C, L = _bn_view(x)
    rm = _channel_vec(A, running_mean, "running_mean", C, x.shape)
    rv = _channel_vec(A, running_var, "running_var", C, x.shape)
    w = _channel_vec(A, weight, "weight", C, x.shape)
    b = _channel_vec(A, bias, "bias", C, x.shape)
    eps = _real(eps, "eps", 0.0)
    dtype = _compute_dtype((x, "input"), (w, "weight"), (b, "bias"))
    if not training:
        if rm is None or rv is None:
            raise ValueError("running_mean and running_var are required when training=False")
        mean = A.c(rm, np.float64)
        invstd = 1.0 / A.xp.sqrt(rv.astype(np.float64, copy=False) + eps)
        return _bn_apply(A, x, dtype, N, C, L, mean, invstd, w, b)
    if momentum is None:
        raise ValueError("momentum=None (cumulative moving average) is not supported; pass a float")
    momentum = _real(momentum, "momentum")
    _train_eps(eps)
    if not A.on_device:  # GPU arrays (views of the caller's memory) are always writeable
        # the caller's objects, not their float views: a list converts to a fresh array whose
        # update nobody would see, and an array of another dtype is updated through a copy
        for v, n in ((running_mean, "running_mean"), (running_var, "running_var")):
            if v is not None and not isinstance(v, np.ndarray):
                raise TypeError(f"{n} must be a numpy array when training (it is updated in place), got "
                                f"{type(v).__name__}")
            if v is not None and not v.flags.writeable:
                raise ValueError(f"{n} must be writeable when training: it is updated in place")
        rm = running_mean if rm is not None else None
        rv = running_var if rv is not None else None
    if N * L == 0:  # an empty batch: an empty output, running statistics untouched (torch)
        return A.empty(x.shape, dtype).astype(x.dtype, copy=False)
    if N * L <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    y, mean, invstd, var = _bn_train(A, x, dtype, N, C, L, w, b, eps)
    count = N * L
    if rm is not None:
        rm[...] = (1.0 - momentum) * rm.astype(np.float64) + momentum * mean
    if rv is not None:
        rv[...] = (1.0 - momentum) * rv.astype(np.float64) + momentum * var * (count / (count - 1))
    return y


def _bn_apply(A, x, dtype, N, C, L, mean, invstd, w, b):
    y = A.empty(x.shape, dtype)
    A.kernel("bn_apply")(A.c(x, dtype), N, C, L, A.c(mean, np.float64), A.c(invstd, np.float64), A.c(w, dtype),
                         A.c(b, dtype), y)
    return y.astype(x.dtype, copy=False)


def _bn_train(A, x, dtype, N, C, L, w, b, eps):
    xc = A.c(x, dtype)
    mean = A.empty(C, np.float64)
    var = A.empty(C, np.float64)
    A.kernel("bn_stats")(xc, N, C, L, mean, var)
    invstd = 1.0 / A.xp.sqrt(var + eps)
    y = A.empty(x.shape, dtype)
    A.kernel("bn_apply")(xc, N, C, L, mean, invstd, A.c(w, dtype), A.c(b, dtype), y)
    return y.astype(x.dtype, copy=False), mean, invstd, var


def batch_norm_forward_train(input, weight=None, bias=None, eps=1e-5, *, backend=None):
    """Training-mode batch norm without running statistics.

    Returns ``(output, save_mean, save_invstd)``; the saved statistics (float64, shape (C,)) are
    what :func:`batch_norm_backward` needs. ``save_invstd = 1 / sqrt(biased_var + eps)``.
    An empty batch gives an empty output and NaN statistics (there are none; torch's batch_norm
    also returns an empty output there, and its backward zero weight and bias gradients).
    """
    A = _arrays_for(backend, ("input", input), ("weight", weight), ("bias", bias))
    x = A.array(input, "input")
    N, C, L = _bn_view(x)
    w = _channel_vec(A, weight, "weight", C, x.shape)
    b = _channel_vec(A, bias, "bias", C, x.shape)
    eps = _train_eps(_real(eps, "eps", 0.0))
    dtype = _compute_dtype((x, "input"), (w, "weight"), (b, "bias"))
    if N * L == 0:
        nan = A.xp.full(C, np.nan, np.float64)
        return A.empty(x.shape, dtype).astype(x.dtype, copy=False), nan, nan.copy()
    if N * L == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    y, mean, invstd, _ = _bn_train(A, x, dtype, N, C, L, w, b, eps)
    return y, mean, invstd


def batch_norm_backward(grad_output, input, weight, save_mean=None, save_invstd=None, training=True, *,
                        running_mean=None, running_var=None, eps=1e-5, backend=None):
    """Gradients of batch norm: ``(grad_input, grad_weight, grad_bias)``.

    training=True: ``save_mean`` / ``save_invstd`` are the batch statistics from
    :func:`batch_norm_forward_train`, and grad_input includes the paths through them.
    training=False (eval): the statistics are constants; pass either ``save_mean`` /
    ``save_invstd`` or ``running_mean`` / ``running_var`` (and ``eps``).
    grad_weight and grad_bias are always returned (computed as if weight were ones when
    ``weight`` is None).
    """
    A = _arrays_for(backend, ("grad_output", grad_output), ("input", input), ("weight", weight),
                    ("save_mean", save_mean), ("save_invstd", save_invstd), ("running_mean", running_mean),
                    ("running_var", running_var))
    x = A.array(input, "input")
    dy = A.array(grad_output, "grad_output")
    _same_shape(dy, "grad_output", x, "input")
    N, C, L = _bn_view(x)
    w = _channel_vec(A, weight, "weight", C, x.shape)
    dtype = _compute_dtype((x, "input"), (dy, "grad_output"), (w, "weight"))
    if training:
        if save_mean is None or save_invstd is None:
            raise ValueError("training=True needs save_mean and save_invstd (from batch_norm_forward_train)")
        mean = _channel_vec(A, save_mean, "save_mean", C, x.shape)
        invstd = _channel_vec(A, save_invstd, "save_invstd", C, x.shape)
    else:
        if save_mean is not None and save_invstd is not None:
            mean = _channel_vec(A, save_mean, "save_mean", C, x.shape)
            invstd = _channel_vec(A, save_invstd, "save_invstd", C, x.shape)
        elif running_mean is not None and running_var is not None:
            mean = _channel_vec(A, running_mean, "running_mean", C, x.shape)
            rv = _channel_vec(A, running_var, "running_var", C, x.shape)
            invstd = 1.0 / A.xp.sqrt(rv.astype(np.float64) + _real(eps, "eps", 0.0))
        else:
            raise ValueError("training=False needs save_mean/save_invstd or running_mean/running_var")
    dx = A.empty(x.shape, dtype)
    dw = A.empty(C, dtype)
    db = A.empty(C, dtype)
    if N * L == 0:
        dw[...] = 0
        db[...] = 0
    else:
        A.kernel("bn_backward")(A.c(dy, dtype), A.c(x, dtype), N, C, L, A.c(mean, np.float64),
                                A.c(invstd, np.float64), A.c(w, dtype), bool(training), dx, dw, db)
    od = x.dtype
    return dx.astype(od, copy=False), dw.astype(od, copy=False), db.astype(od, copy=False)


# ----------------------------------------------------- local response norm
def _lrn_args(x, size, alpha, beta, k):
    if x.ndim < 3:
        raise ValueError(f"input must be at least 3-D (N, C, ...), got {x.ndim}-D with shape {x.shape}")
    size = _int(size, "size")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    alpha = _real(alpha, "alpha")
    beta = _real(beta, "beta")
    k = _real(k, "k")
    N, C = x.shape[0], x.shape[1]
    L = math.prod(x.shape[2:])
    return size, alpha, beta, k, N, C, L


def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0, *, backend=None):
    """As ``torch.nn.functional.local_response_norm``.

    ``y = x / (k + alpha/size * sum_{c' in [c - size//2, c + (size-1)//2]} x_{c'}^2) ** beta``,
    channels outside [0, C) counting as zero.
    """
    A = _arrays_for(backend, ("input", input))
    x = A.array(input, "input")
    size, alpha, beta, k, N, C, L = _lrn_args(x, size, alpha, beta, k)
    dtype = _compute_dtype((x, "input"))
    y = A.empty(x.shape, dtype)
    A.kernel("lrn")(None, A.c(x, dtype), N, C, L, size, alpha, beta, k, y)
    return y.astype(x.dtype, copy=False)


def local_response_norm_backward(grad_output, input, size, alpha=1e-4, beta=0.75, k=1.0, *, backend=None):
    """Gradient of :func:`local_response_norm` with respect to its input."""
    A = _arrays_for(backend, ("grad_output", grad_output), ("input", input))
    x = A.array(input, "input")
    dy = A.array(grad_output, "grad_output")
    _same_shape(dy, "grad_output", x, "input")
    size, alpha, beta, k, N, C, L = _lrn_args(x, size, alpha, beta, k)
    dtype = _compute_dtype((x, "input"), (dy, "grad_output"))
    dx = A.empty(x.shape, dtype)
    A.kernel("lrn")(A.c(dy, dtype), A.c(x, dtype), N, C, L, size, alpha, beta, k, dx)
    return dx.astype(x.dtype, copy=False)


# -------------------------------------------------------------- activations
_KIND = {"relu": 0, "sigmoid": 1, "tanh": 2}


def _act(kind, input, backend):
    A = _arrays_for(backend, ("input", input))
    x = A.array(input, "input")
    dtype = _compute_dtype((x, "input"))
    y = A.empty(x.shape, dtype)
    A.kernel("activation")(_KIND[kind], None, A.c(x, dtype), y)
    return y.astype(x.dtype, copy=False)


def _act_bwd(kind, grad_output, y_or_x, name, backend):
    A = _arrays_for(backend, ("grad_output", grad_output), (name, y_or_x))
    dy = A.array(grad_output, "grad_output")
    y = A.array(y_or_x, name)
    _same_shape(dy, "grad_output", y, name)
    dtype = _compute_dtype((dy, "grad_output"), (y, name))
    dx = A.empty(y.shape, dtype)
    A.kernel("activation")(_KIND[kind], A.c(dy, dtype), A.c(y, dtype), dx)
    return dx.astype(y.dtype, copy=False)


def relu(input, *, backend=None):
    """max(x, 0) (NaN stays NaN), as ``torch.relu``."""
    return _act("relu", input, backend)


def sigmoid(input, *, backend=None):
    """1 / (1 + exp(-x)), computed without overflow, as ``torch.sigmoid``."""
    return _act("sigmoid", input, backend)


def tanh(input, *, backend=None):
    """As ``torch.tanh``."""
    return _act("tanh", input, backend)


def relu_backward(grad_output, output, *, backend=None):
    """``grad_output`` where ``output > 0``, else 0; the forward's input works as well as its output.

    A NaN output passes the gradient (torch's ``threshold_backward`` zeroes only where output <= 0).
    """
    return _act_bwd("relu", grad_output, output, "output", backend)


def sigmoid_backward(grad_output, output, *, backend=None):
    """``grad_output * y * (1 - y)`` with y the forward output."""
    return _act_bwd("sigmoid", grad_output, output, "output", backend)


def tanh_backward(grad_output, output, *, backend=None):
    """``grad_output * (1 - y**2)`` with y the forward output."""
    return _act_bwd("tanh", grad_output, output, "output", backend)


def _softmax(input, dim, log, backend):
    A = _arrays_for(backend, ("input", input))
    x = A.array(input, "input")
    d = _dim(dim, x.ndim)
    dtype = _compute_dtype((x, "input"))
    outer, D, inner = _split(x.shape, d)
    y = A.empty(x.shape, dtype)
    A.kernel("softmax")(log, outer, D, inner, None, A.c(x, dtype), y)
    return y.astype(x.dtype, copy=False)


def _softmax_bwd(grad_output, output, dim, log, backend):
    A = _arrays_for(backend, ("grad_output", grad_output), ("output", output))
    dy = A.array(grad_output, "grad_output")
    y = A.array(output, "output")
    _same_shape(dy, "grad_output", y, "output")
    d = _dim(dim, y.ndim)
    dtype = _compute_dtype((dy, "grad_output"), (y, "output"))
    outer, D, inner = _split(y.shape, d)
    dx = A.empty(y.shape, dtype)
    A.kernel("softmax")(log, outer, D, inner, A.c(dy, dtype), A.c(y, dtype), dx)
    return dx.astype(y.dtype, copy=False)


def softmax(input, dim, *, backend=None):
    """exp(x - max) / sum exp(x - max) along ``dim`` (any axis, negative allowed)."""
    return _softmax(input, dim, False, backend)


def log_softmax(input, dim, *, backend=None):
    """x - max - log(sum exp(x - max)) along ``dim``."""
    return _softmax(input, dim, True, backend)


def softmax_backward(grad_output, output, dim, *, backend=None):
    """``y * (g - sum(g * y))`` along ``dim``, with y the softmax output."""
    return _softmax_bwd(grad_output, output, dim, False, backend)


def log_softmax_backward(grad_output, output, dim, *, backend=None):
    """``g - exp(y) * sum(g)`` along ``dim``, with y the log_softmax output."""
    return _softmax_bwd(grad_output, output, dim, True, backend)


# ------------------------------------------------------------ cross entropy
def cross_entropy(input, target, label_smoothing=0.0, reduction="mean", ignore_index=-100, *, backend=None):
    """Fused cross entropy from logits: returns ``(loss, grad_input)``.

    ``input``: logits (N, C); ``target``: integer class indices (N,). Semantics of
    ``torch.nn.functional.cross_entropy`` (label smoothing: the target distribution is
    ``(1 - s) onehot + s / C``; rows whose target is ``ignore_index`` contribute nothing).

    ``grad_input`` is the gradient of the returned loss: for ``reduction='mean'`` it is already
    divided by the number of non-ignored rows, for ``'sum'`` it is not; for ``'none'`` (loss of
    shape (N,)) it is the gradient of ``loss.sum()``, i.e. row i holds d loss[i] / d input[i].
    With every row ignored, the 'mean' loss is NaN (0/0, as torch) and the gradient zero.
    The loss is float64-accumulated and returned as a scalar of the input's dtype (for GPU
    arrays: a 0-d CuPy array; the target check and the row count copy scalars back).
    """
    A = _arrays_for(backend, ("input", input), ("target", target))
    xp = A.xp
    z = A.array(input, "input")
    if z.ndim != 2:
        raise ValueError(f"input must be 2-D logits (N, C), got {z.ndim}-D with shape {z.shape}")
    t = A.any_array(target, "target")
    if t.dtype.kind not in "iu":
        raise TypeError(f"target must be an integer array of class indices, got dtype {t.dtype} with shape "
                        f"{t.shape}")
    N, C = z.shape
    if t.shape != (N,):
        raise ValueError(f"target must have shape ({N},) for input shape {z.shape}, got {t.shape}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    eps = _real(label_smoothing, "label_smoothing", 0.0)
    if eps > 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {eps}")
    ignore_index = check_int64(_int(ignore_index, "ignore_index"), "ignore_index")
    if t.dtype.kind == "u" and t.dtype.itemsize == 8 and t.size:  # past 2^63 a cast to int64 would wrap
        big = t > np.uint64(np.iinfo(np.int64).max)               # (2^64 - 100 into ignore_index -100)
        if big.any():
            i = int(xp.argmax(big))
            raise ValueError(f"target[{i}] = {int(t[i])} is out of range: class indices must be in [0, {C}) "
                             f"(C = {C} from input shape {z.shape})")
    t64 = A.c(t, np.int64)
    bad = (t64 != ignore_index) & ((t64 < 0) | (t64 >= C))
    if bad.any():
        i = int(xp.argmax(bad))
        raise ValueError(f"target[{i}] = {int(t64[i])} is out of range: class indices must be in [0, {C}) "
                         f"(C = {C} from input shape {z.shape}), or equal ignore_index={ignore_index}")
    dtype = _compute_dtype((z, "input"))
    count = int(xp.count_nonzero(t64 != ignore_index))
    scale = 1.0 / count if (reduction == "mean" and count > 0) else 1.0
    grad = A.empty(z.shape, dtype)
    if C == 0:  # no classes: every row is ignored (checked above), each a zero loss
        rows = xp.zeros(N, np.float64)
    else:
        rows = xp.empty(N, np.float64)
        A.kernel("cross_entropy")(A.c(z, dtype), t64, N, C, ignore_index, eps, scale, rows, grad)
    od = z.dtype
    if reduction == "none":
        loss = rows.astype(od)
    elif A.on_device:  # a 0-d device array: no copy back
        total = xp.sum(rows)
        if reduction == "sum":
            loss = total.astype(od)
        else:
            loss = (total / count).astype(od) if count > 0 else xp.full((), np.nan, od)
    elif reduction == "sum":
        loss = od.type(rows.sum())
    else:
        loss = od.type(rows.sum() / count) if count > 0 else od.type(np.nan)
    return loss, grad.astype(od, copy=False)


# ------------------------------------------------------------------ dropout
class Generator:
    """Counter-based random stream for :func:`dropout`.

    The draw of element i of a call is a hash of ``(seed, offset + i)``: it does not depend on
    the thread count or on how the work is split. Each call advances ``offset`` by the number of
    elements, so consecutive calls draw different masks; re-creating a Generator with the same
    seed replays the same masks.
    """

    def __init__(self, seed=None):
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self.seed = _int(seed, "seed") & 0xFFFFFFFFFFFFFFFF
        self.offset = 0

    def manual_seed(self, seed):
        self.seed = _int(seed, "seed") & 0xFFFFFFFFFFFFFFFF
        self.offset = 0
        return self

    def _take(self, n):
        off = self.offset
        self.offset = (self.offset + n) & 0xFFFFFFFFFFFFFFFF
        return self.seed, off

    def __repr__(self):
        return f"Generator(seed={self.seed}, offset={self.offset})"


def _dropout_p(p):
    p = _real(p, "p")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
    return p


def dropout(input, p=0.5, training=True, seed=None, *, backend=None):
    """As ``torch.nn.functional.dropout``, returning ``(output, mask)``.

    ``seed``: None (a fresh random seed), an int (the same int always gives the same mask for the
    same shape), or a :class:`Generator` (advanced by each call). Kept elements are scaled by
    ``1/(1-p)``. ``mask`` is a bool array of the input's shape (True = kept). ``p == 0`` or
    ``training=False``: the output is a copy of the input and the mask all True; ``p == 1``:
    ``input * 0`` as torch (zeros of the input's signs; NaN and inf give NaN), the mask all False.
    """
    A = _arrays_for(backend, ("input", input))
    xp = A.xp
    x = A.array(input, "input")
    p = _dropout_p(p)
    if isinstance(seed, Generator):
        gen = seed
    elif seed is None or (isinstance(seed, numbers.Integral) and not isinstance(seed, bool)):
        gen = Generator(seed)
    else:
        raise TypeError(f"seed must be None, an int or a fastconv Generator, got {seed!r}")
    if not training or p == 0.0:
        return x.copy(), xp.ones(x.shape, dtype=bool)
    if p == 1.0:
        gen._take(x.size)
        with np.errstate(invalid="ignore"):  # inf * 0 is NaN, as torch's
            return x * x.dtype.type(0), xp.zeros(x.shape, dtype=bool)
    dtype = _compute_dtype((x, "input"))
    s, off = gen._take(x.size)
    threshold = min(int(round(p * 2.0 ** 32)), 2 ** 32 - 1)
    y = A.empty(x.shape, dtype)
    mask = A.empty(x.shape, np.uint8)
    A.kernel("dropout")(A.c(x, dtype), s, off, threshold, 1.0 / (1.0 - p), y, mask)
    return y.astype(x.dtype, copy=False), mask.view(bool)


def dropout_backward(grad_output, mask, p, *, backend=None):
    """``grad_output * mask / (1 - p)`` (``grad_output * 0`` when p == 1, as torch: NaN and inf give NaN)."""
    A = _arrays_for(backend, ("grad_output", grad_output), ("mask", mask))
    dy = A.array(grad_output, "grad_output")
    m = A.any_array(mask, "mask")
    if m.dtype != bool:
        raise TypeError(f"mask must be a bool array (from dropout), got dtype {m.dtype}")
    _same_shape(dy, "grad_output", m, "mask")
    p = _dropout_p(p)
    if p == 1.0:
        with np.errstate(invalid="ignore"):
            return dy * dy.dtype.type(0)
    dtype = _compute_dtype((dy, "grad_output"))
    dx = A.empty(dy.shape, dtype)
    A.kernel("dropout_backward")(A.c(dy, dtype), A.c(m, bool).view(np.uint8), 1.0 / (1.0 - p), dx)
    return dx.astype(dy.dtype, copy=False)


# ------------------------------------------------------------------- linear
def _linear_args(x, w, in_name="input"):
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got {w.ndim}-D with shape {w.shape}")
    if x.ndim < 1:
        raise ValueError(f"{in_name} must be at least 1-D (..., in_features), got a 0-D array")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"{in_name} has {x.shape[-1]} features (shape {x.shape}) but weight expects "
                         f"{w.shape[1]} (shape {w.shape})")
    I = w.shape[1]
    O = w.shape[0]
    M = math.prod(x.shape[:-1])
    return M, I, O


def linear(input, weight, bias=None, *, backend=None):
    """``input @ weight.T + bias`` as ``torch.nn.functional.linear`` (input (..., in), weight (out, in)),
    on fastconv's GEMM."""
    A = _arrays_for(backend, ("input", input), ("weight", weight), ("bias", bias))
    x = A.array(input, "input")
    w = A.array(weight, "weight")
    b = None if bias is None else A.array(bias, "bias")
    M, I, O = _linear_args(x, w)
    if b is not None and b.shape != (O,):
        raise ValueError(f"bias must have shape ({O},) for weight shape {w.shape}, got {b.shape}")
    dtype = _compute_dtype((x, "input"), (w, "weight"), (b, "bias"))
    y = A.empty(x.shape[:-1] + (O,), dtype)
    A.kernel("linear")(A.c(x, dtype), A.c(w, dtype), A.c(b, dtype), M, I, O, y)
    return y.astype(x.dtype, copy=False)


def linear_backward(grad_output, input, weight, needs=(True, True, True), *, backend=None):
    """``(grad_input, grad_weight, grad_bias)`` of :func:`linear`; entries of ``needs`` that are
    False come back as None (and are not computed)."""
    A = _arrays_for(backend, ("grad_output", grad_output), ("input", input), ("weight", weight))
    x = A.array(input, "input")
    w = A.array(weight, "weight")
    dy = A.array(grad_output, "grad_output")
    M, I, O = _linear_args(x, w)
    if dy.shape != x.shape[:-1] + (O,):
        raise ValueError(f"grad_output must have shape {x.shape[:-1] + (O,)} for input shape {x.shape} and "
                         f"weight shape {w.shape}, got {dy.shape}")
    try:
        nx, nw, nb = (bool(v) for v in needs)
    except (TypeError, ValueError):
        raise TypeError(f"needs must be three booleans, got {needs!r}") from None
    dtype = _compute_dtype((x, "input"), (w, "weight"), (dy, "grad_output"))
    dx = A.empty(x.shape, dtype) if nx else None
    dw = A.empty(w.shape, dtype) if nw else None
    db = A.empty(O, dtype) if nb else None
    if M == 0 or I == 0 or O == 0:  # empty products: gradients of empty sums are zero
        for a in (dx, dw, db):
            if a is not None:
                a[...] = 0
    A.kernel("linear_backward")(A.c(dy, dtype), A.c(x, dtype), A.c(w, dtype), M, I, O, dx, dw, db)
    od = x.dtype
    return tuple(None if a is None else a.astype(od, copy=False) for a in (dx, dw, db))
