"""Autograd-aware functions with ``torch.nn.functional``'s names and arguments.

Every function takes Tensors (or plain arrays, treated as constants) and returns
Tensors. Each one is a :class:`~fastconv.autograd.Function` whose forward and
backward call the array ops in ``fastconv.ops``; the pooling and layer ops are
imported when first used, so this module imports even where they are missing.
"""
from __future__ import annotations

import warnings

import numpy as np

from .. import ops as _ops
from ..autograd import Function, Tensor, array_module, is_grad_enabled
from ..problem import check_int64
from ..problem import pair as _pair
from ..problem import resolve_padding as _resolve_padding

__all__ = ["conv2d", "max_pool2d", "min_pool2d", "avg_pool2d", "lp_pool2d", "adaptive_avg_pool2d",
           "adaptive_max_pool2d", "batch_norm", "local_response_norm", "relu", "sigmoid", "tanh", "softmax",
           "log_softmax", "dropout", "linear", "cross_entropy", "mse_loss", "flatten", "pad"]


def _pool():
    from ..ops import pool  # noqa: PLC0415 - optional until the pooling ops land

    return pool


def _layers():
    from ..ops import layers  # noqa: PLC0415 - optional until the layer ops land

    return layers


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def _shape_only(x):
    """A zero-stride stand-in for ``x`` for backward ops that read only its shape and dtype.

    Saving it instead of ``x`` lets the pooled input be freed after the forward pass.
    """
    xp = array_module(x)
    return xp.broadcast_to(xp.zeros((), x.dtype), x.shape)


def _check_tensor(x, name, fn):
    if not isinstance(x, Tensor) and not hasattr(x, "shape"):
        raise TypeError(f"{fn}: {name} must be a Tensor or an array, got {type(x).__name__}")


# ------------------------------------------------------------------ conv
class _Conv2d(Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups):
        ctx.args = (stride, padding, dilation, groups)
        n = ctx.needs_input_grad
        ctx.save_for_backward(x if n[1] else None, w if n[0] else None)
        ctx.xshape, ctx.wshape = x.shape, w.shape
        return _ops.conv2d(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        n = ctx.needs_input_grad
        gx = _ops.conv2d_input(ctx.xshape, w, g, *ctx.args) if n[0] else None
        gw = _ops.conv2d_weight(x, ctx.wshape, g, *ctx.args) if n[1] else None
        gb = g.sum(axis=(0, 2, 3) if g.ndim == 4 else (1, 2)) if n[2] else None
        return gx, gw, gb, None, None, None, None


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (``torch.nn.functional.conv2d``; ``padding`` also 'same'/'valid')."""
    _check_tensor(input, "input", "conv2d")
    return _Conv2d.apply(input, weight, bias, stride, padding, dilation, groups)


# ----------------------------------------------------------------- pooling
class _MaxPool(Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode, is_min):
        p = _pool()
        fwd = p.min_pool2d if is_min else p.max_pool2d
        y, idx = fwd(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
        ctx.args = (kernel_size, stride, padding, dilation, ceil_mode)
        ctx.is_min = is_min
        ctx.xstub = _shape_only(x)  # with the indices, backward needs only x's shape
        # With dilation, a window can miss the image entirely (only padding): its output is -inf and
        # its index torch's initial one, outside the plane; the indices API refuses such indices, so
        # backward recomputes them from x instead (the window then sends no gradient, as it should).
        outside = False
        if dilation not in (1, (1, 1), [1, 1]) and idx.size:
            plane = int(x.shape[-1]) * int(x.shape[-2])
            outside = bool(idx.min() < 0) or bool(idx.max() >= plane)
        ctx.save_for_backward(None if outside else idx, x if outside else None)
        ctx.mark_non_differentiable(idx)
        return y, idx

    @staticmethod
    def backward(ctx, g, _gidx):
        idx, x = ctx.saved_tensors
        p = _pool()
        bwd = p.min_pool2d_backward if ctx.is_min else p.max_pool2d_backward
        if idx is None:
            return (bwd(g, x, *ctx.args, indices=None),) + (None,) * 6
        return (bwd(g, ctx.xstub, *ctx.args, indices=idx),) + (None,) * 6


def _maxmin_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, is_min):
    if not return_indices and not (is_grad_enabled() and isinstance(input, Tensor) and input.requires_grad):
        # no backward will run (inference, no_grad, a constant input): the values-only kernel,
        # which neither computes nor stores the int64 indices (8x faster for 3x3/s2/p1 on 28x28)
        fwd = _pool().min_pool2d if is_min else _pool().max_pool2d
        return Tensor._wrap(fwd(_data(input), kernel_size, stride, padding, dilation, ceil_mode))
    y, idx = _MaxPool.apply(input, kernel_size, stride, padding, dilation, ceil_mode, is_min)
    return (y, idx) if return_indices else y


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    _check_tensor(input, "input", "max_pool2d")
    return _maxmin_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, False)


def min_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Min pooling (max pooling of the negated input, without the negation)."""
    _check_tensor(input, "input", "min_pool2d")
    return _maxmin_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, True)


class _AvgPool(Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        ctx.args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        ctx.xstub = _shape_only(x)
        return _pool().avg_pool2d(x, *ctx.args)

    @staticmethod
    def backward(ctx, g):
        return (_pool().avg_pool2d_backward(g, ctx.xstub, *ctx.args),) + (None,) * 6


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    _check_tensor(input, "input", "avg_pool2d")
    return _AvgPool.apply(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


class _LPPool(Function):
    @staticmethod
    def forward(ctx, x, norm_type, kernel_size, stride, ceil_mode):
        ctx.args = (norm_type, kernel_size, stride, ceil_mode)
        ctx.save_for_backward(x)
        return _pool().lp_pool2d(x, *ctx.args)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return (_pool().lp_pool2d_backward(g, x, *ctx.args),) + (None,) * 4


def lp_pool2d(input, norm_type, kernel_size, stride=None, ceil_mode=False):
    _check_tensor(input, "input", "lp_pool2d")
    return _LPPool.apply(input, norm_type, kernel_size, stride, ceil_mode)


class _AdaptiveAvg(Function):
    @staticmethod
    def forward(ctx, x, output_size):
        ctx.xstub = _shape_only(x)
        return _pool().adaptive_avg_pool2d(x, output_size)

    @staticmethod
    def backward(ctx, g):
        return _pool().adaptive_avg_pool2d_backward(g, ctx.xstub), None


def adaptive_avg_pool2d(input, output_size):
    _check_tensor(input, "input", "adaptive_avg_pool2d")
    return _AdaptiveAvg.apply(input, output_size)


class _AdaptiveMax(Function):
    @staticmethod
    def forward(ctx, x, output_size):
        y, idx = _pool().adaptive_max_pool2d(x, output_size, return_indices=True)
        ctx.output_size = output_size
        ctx.xstub = _shape_only(x)
        ctx.save_for_backward(idx)
        ctx.mark_non_differentiable(idx)
        return y, idx

    @staticmethod
    def backward(ctx, g, _gidx):
        (idx,) = ctx.saved_tensors
        return _pool().adaptive_max_pool2d_backward(g, ctx.xstub, ctx.output_size, indices=idx), None


def adaptive_max_pool2d(input, output_size, return_indices=False):
    _check_tensor(input, "input", "adaptive_max_pool2d")
    y, idx = _AdaptiveMax.apply(input, output_size)
    return (y, idx) if return_indices else y


# ------------------------------------------------------------ normalization
class _BatchNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps):
        L = _layers()
        xp = array_module(x)
        if use_batch_stats:
            y, mean, invstd = L.batch_norm_forward_train(x, weight, bias, eps)
            if running_mean is not None and momentum is not None and x.size:  # empty batch: untouched
                # running stats use the unbiased batch variance, as torch does
                n = x.size // x.shape[1]
                var = (1.0 / (invstd.astype(np.float64) ** 2) - eps) * (n / max(n - 1, 1))
                running_mean *= 1 - momentum
                running_mean += momentum * mean.astype(running_mean.dtype)
                running_var *= 1 - momentum
                running_var += (momentum * var).astype(running_var.dtype)
        else:
            y = L.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)
            mean = running_mean
            invstd = 1.0 / xp.sqrt(running_var.astype(xp.float64) + eps)
        ctx.train = bool(use_batch_stats)
        ctx.save_for_backward(x, weight, mean, invstd)
        return y

    @staticmethod
    def backward(ctx, g):
        x, w, mean, invstd = ctx.saved_tensors
        gx, gw, gb = _layers().batch_norm_backward(g, x, w, mean, invstd, training=ctx.train)
        n = ctx.needs_input_grad
        return (gx if n[0] else None, gw if n[1] else None, gb if n[2] else None) + (None,) * 5


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5):
    """Batch normalization over (N, H, W) per channel; updates the running stats in training."""
    _check_tensor(input, "input", "batch_norm")
    rm, rv = _data(running_mean), _data(running_var)
    if not training and (rm is None or rv is None):
        raise ValueError("batch_norm: running_mean and running_var are required when training=False")
    return _BatchNorm.apply(input, weight, bias, rm, rv, bool(training), momentum, eps)


class _LRN(Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        ctx.args = (size, alpha, beta, k)
        ctx.save_for_backward(x)
        return _layers().local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return (_layers().local_response_norm_backward(g, x, *ctx.args),) + (None,) * 4


def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0):
    _check_tensor(input, "input", "local_response_norm")
    return _LRN.apply(input, size, alpha, beta, k)


# -------------------------------------------------------------- activations
def _output_saving_activation(op):
    """Function class for an elementwise op whose backward needs only its output
    (relu, sigmoid, tanh: `<op>_backward(grad, output)`), so the input can be freed."""

    class _Act(Function):
        @staticmethod
        def forward(ctx, x):
            y = getattr(_layers(), op)(x)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return getattr(_layers(), op + "_backward")(g, y)

    _Act.__name__ = _Act.__qualname__ = "_" + op.capitalize()
    return _Act


_Relu = _output_saving_activation("relu")
_Sigmoid = _output_saving_activation("sigmoid")
_Tanh = _output_saving_activation("tanh")


def relu(input, inplace=False):
    _check_tensor(input, "input", "relu")
    return _Relu.apply(input)


def sigmoid(input):
    _check_tensor(input, "input", "sigmoid")
    return _Sigmoid.apply(input)


def tanh(input):
    _check_tensor(input, "input", "tanh")
    return _Tanh.apply(input)


class _Softmax(Function):
    @staticmethod
    def forward(ctx, x, dim, log):
        L = _layers()
        y = L.log_softmax(x, dim) if log else L.softmax(x, dim)
        ctx.dim, ctx.log = dim, log
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        L = _layers()
        bwd = L.log_softmax_backward if ctx.log else L.softmax_backward
        return bwd(g, y, ctx.dim), None, None


def _dim_arg(dim, x, fn):
    """torch's implicit dim for dim=None (deprecated there, with the same warning): 0 for 0-, 1- and
    3-D inputs, else 1."""
    if dim is None:
        warnings.warn(f"Implicit dimension choice for {fn} has been deprecated (as in torch). Change the call "
                      "to include dim=X as an argument.", UserWarning, stacklevel=3)
        return 0 if len(x.shape) in (0, 1, 3) else 1
    return dim


def softmax(input, dim=None):
    _check_tensor(input, "input", "softmax")
    return _Softmax.apply(input, _dim_arg(dim, input, "softmax"), False)


def log_softmax(input, dim=None):
    _check_tensor(input, "input", "log_softmax")
    return _Softmax.apply(input, _dim_arg(dim, input, "log_softmax"), True)


# ----------------------------------------------------------------- dropout
class _Dropout(Function):
    @staticmethod
    def forward(ctx, x, p, seed):
        y, mask = _layers().dropout(x, p, True, seed)
        ctx.p = p
        ctx.save_for_backward(mask)
        return y

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return _layers().dropout_backward(g, mask, ctx.p), None, None


def dropout(input, p=0.5, training=True, inplace=False, generator=None):
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (training only).

    The mask's seed is drawn from ``generator`` (a numpy Generator) or the default
    generator of :func:`fastconv.nn.manual_seed`, so runs are reproducible.
    """
    _check_tensor(input, "input", "dropout")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0:
        return input if isinstance(input, Tensor) else Tensor(input)
    from .init import _resolve_generator  # noqa: PLC0415

    seed = int(_resolve_generator(generator).integers(0, 2**63 - 1))
    return _Dropout.apply(input, float(p), seed)


# ------------------------------------------------------------------ linear
class _Linear(Function):
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)  # linear_backward reads both for its shape checks
        ctx.has_bias = b is not None
        ctx.xshape, ctx.wshape = x.shape, w.shape
        return _layers().linear(x, w, b)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        n = ctx.needs_input_grad
        needs = (bool(n[0]), bool(n[1]), bool(ctx.has_bias and n[2]))
        gx, gw, gb = _layers().linear_backward(g, x, w, needs=needs)
        return gx, gw, gb


def linear(input, weight, bias=None):
    """``input @ weight.T + bias`` (``torch.nn.functional.linear``)."""
    _check_tensor(input, "input", "linear")
    return _Linear.apply(input, weight, bias)


# ------------------------------------------------------------------- losses
class _CrossEntropy(Function):
    @staticmethod
    def forward(ctx, logits, target, label_smoothing, reduction, ignore_index):
        loss, grad = _layers().cross_entropy(logits, target, label_smoothing=label_smoothing, reduction=reduction,
                                             ignore_index=ignore_index)
        ctx.reduction = reduction
        ctx.save_for_backward(grad)
        xp = array_module(logits)
        return xp.asarray(loss, dtype=logits.dtype)

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        if ctx.reduction == "none":
            # grad holds d loss_i / d logits_i per sample: scale each by its upstream grad
            g = g.reshape(g.shape[:1] + (1,) + g.shape[1:])
        return grad * g, None, None, None, None


def _legacy_reduction(size_average, reduce, reduction):
    """torch's mapping of the deprecated size_average / reduce flags onto ``reduction``."""
    if size_average is None and reduce is None:
        return reduction
    warnings.warn("size_average and reduce are deprecated (as in torch); use reduction", UserWarning, stacklevel=3)
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if not reduce:
        return "none"
    return "mean" if size_average else "sum"


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                  label_smoothing=0.0):
    """Softmax cross-entropy, ``torch.nn.functional.cross_entropy``: arguments in torch's order (the
    legacy ``size_average`` / ``reduce`` map to ``reduction`` as in torch).

    ``input`` is (N, C), (C,) unbatched, or (N, C, d1, ..., dk) with the classes in dim 1;
    ``target`` holds class indices of shape (N,), (), (N, d1, ..., dk), or class probabilities of
    the input's shape (a float array). ``weight`` (C,) rescales each class: with class indices the
    mean divides by the summed weights of the targets that are not ``ignore_index``, with
    probabilities by the number of samples, as torch. Integer targets without class weights run
    the fused kernel (loss and gradient in one pass); weights and probability targets are composed
    from ``log_softmax`` and autograd ops.
    """
    _check_tensor(input, "input", "cross_entropy")
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    x = input if isinstance(input, Tensor) else Tensor(input)
    t = _data(target)
    if not hasattr(t, "dtype") or np.dtype(t.dtype).kind not in "iuf":
        raise TypeError(f"cross_entropy: target must be an integer array of class indices or a float array of "
                        f"class probabilities, got {getattr(t, 'dtype', type(t).__name__)}")
    probs = np.dtype(t.dtype).kind == "f"
    if probs and ignore_index != -100:
        raise ValueError(f"cross_entropy: ignore_index is not supported for class-probability targets (a float "
                         f"target), got ignore_index={ignore_index}")
    if x.ndim == 0:
        raise ValueError("cross_entropy: input must have a class dimension, got a 0-d input")
    unbatched = x.ndim == 1
    if unbatched:
        x, t = x.unsqueeze(0), t[None]
    C, spatial = x.shape[1], tuple(x.shape[2:])
    want = tuple(x.shape) if probs else (x.shape[0],) + spatial
    if tuple(t.shape) != want:
        shown = tuple(want[1:]) if unbatched else want
        raise ValueError(f"cross_entropy: target has shape {tuple(t.shape[1:]) if unbatched else tuple(t.shape)}, "
                         f"expected {shown} ({'class probabilities' if probs else 'class indices'} for input "
                         f"shape {tuple(input.shape)})")
    w = None
    if weight is not None:
        w = _data(weight)
        if not hasattr(w, "shape") or tuple(w.shape) != (C,) or np.dtype(w.dtype).kind not in "iuf":
            raise ValueError(f"cross_entropy: weight must be a real array of shape ({C},) (one per class of input "
                             f"shape {tuple(input.shape)}), got {getattr(w, 'shape', type(w).__name__)}")
        w = array_module(x.data).asarray(w, dtype=x.dtype)
    if x.ndim > 2:  # classes last, then one row per position
        perm = (0,) + tuple(range(2, x.ndim)) + (1,)
        x = x.permute(perm).reshape(-1, C)
        t = t.transpose(perm).reshape(-1, C) if probs else t.reshape(-1)
    if probs:
        loss = _soft_cross_entropy(x, t, w, eps)
        if reduction == "mean":  # no rows: NaN, with zero gradients (torch's)
            return loss.sum() / float(loss.shape[0]) if loss.shape[0] else loss.sum() * 0.0 + float("nan")
    elif w is None:
        loss = _CrossEntropy.apply(x, t, eps, reduction, ignore_index)
    else:
        loss, wsum = _weighted_cross_entropy(x, t, w, eps, ignore_index)
        if reduction == "mean":  # every target ignored: NaN, with zero gradients (torch's)
            return loss.sum() / wsum if wsum else loss.sum() * 0.0 + float("nan")
    if reduction == "sum":
        return loss.sum() if loss.ndim else loss
    if reduction == "none":
        loss = loss.reshape((-1,) + spatial)
        return loss[0] if unbatched else loss
    return loss


def _soft_cross_entropy(x, probs, w, eps):
    """Per-row loss -sum_c w_c * q_c * log_softmax(x)_c, q = probs smoothed toward 1/C (torch)."""
    C = x.shape[1]
    q = probs.astype(x.dtype, copy=False)
    if eps:
        q = q * (1.0 - eps) + eps / C
    if w is not None:
        q = q * w[None, :]
    return -(log_softmax(x, 1) * q).sum(1)


def _weighted_cross_entropy(x, t, w, eps, ignore_index):
    """Per-row loss with class weights (ignored rows 0) and the sum of the targets' weights."""
    xp = array_module(x.data)
    M, C = x.shape
    check_int64(int(ignore_index), "ignore_index")
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= C))
    if bool(bad.any()):
        i = int(xp.argmax(bad))
        raise ValueError(f"cross_entropy: target[{i}] = {int(t[i])} is out of range: class indices must be in "
                         f"[0, {C}) or equal ignore_index={ignore_index}")
    ts = xp.where(valid, t, 0).astype(np.int64)
    wt = w[ts] * valid
    logp = log_softmax(x, 1)
    loss = -(logp[xp.arange(M), ts] * wt) * (1.0 - eps)
    if eps:
        loss = loss - (logp * w[None, :]).sum(1) * (valid * (eps / C)).astype(x.dtype)
    return loss, float(wt.sum())


class _MSE(Function):
    @staticmethod
    def forward(ctx, a, b, reduction):
        d = a - b
        ctx.reduction, ctx.shapes = reduction, (a.shape, b.shape)
        ctx.save_for_backward(d)
        sq = d * d
        xp = array_module(d)
        if reduction == "mean":
            return xp.asarray(sq.mean())
        if reduction == "sum":
            return xp.asarray(sq.sum())
        return sq

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved_tensors
        scale = 2.0 / d.size if ctx.reduction == "mean" else 2.0
        gd = d * (g * scale)
        n = ctx.needs_input_grad
        from ..autograd.tensor import _unbroadcast  # noqa: PLC0415

        return (_unbroadcast(gd, ctx.shapes[0]) if n[0] else None,
                _unbroadcast(-gd, ctx.shapes[1]) if n[1] else None, None)


def mse_loss(input, target, reduction="mean"):
    _check_tensor(input, "input", "mse_loss")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"mse_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not hasattr(_data(target), "shape"):
        raise TypeError(f"mse_loss: target must be a Tensor or an array, got {type(target).__name__}")
    if tuple(input.shape) != tuple(_data(target).shape):
        raise ValueError(f"mse_loss: input shape {tuple(input.shape)} and target shape "
                         f"{tuple(_data(target).shape)} differ")
    return _MSE.apply(input, target, reduction)


# -------------------------------------------------------------- reshaping
def flatten(input, start_dim=0, end_dim=-1):
    t = input if isinstance(input, Tensor) else Tensor(input)
    return t.flatten(start_dim, end_dim)


_PAD_MODES = ("constant", "reflect", "replicate", "circular")


class _Pad(Function):
    @staticmethod
    def forward(ctx, x, pads, mode, value):
        xp = array_module(x)
        width = [(0, 0)] * x.ndim
        for i in range(len(pads) // 2):
            width[x.ndim - 1 - i] = (pads[2 * i], pads[2 * i + 1])
        ctx.width = width
        ctx.mode = mode
        if mode == "constant":
            return xp.pad(x, width, mode="constant", constant_values=value)
        return xp.pad(x, width, mode={"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode])

    @staticmethod
    def backward(ctx, g):
        # fold the padded border back onto the border it copies, one axis at a time
        for ax, (lo, hi) in enumerate(ctx.width):
            if lo == 0 and hi == 0:
                continue
            g = _fold_axis(g, ax, lo, hi, ctx.mode)
        return g, None, None, None


def _take(g, ax, start, stop, step=1):
    sl = [slice(None)] * g.ndim
    sl[ax] = slice(start, stop, step)
    return tuple(sl)


def _fold_axis(g, ax, lo, hi, mode):
    n = g.shape[ax] - lo - hi
    core = g[_take(g, ax, lo, lo + n)].copy()
    if mode == "constant":
        return core
    left = g[_take(g, ax, 0, lo)]
    right = g[_take(g, ax, lo + n, lo + n + hi)]
    xp = array_module(g)
    if mode == "reflect":
        # padded position lo-1-j copies input j+1; padded position lo+n+j copies input n-2-j
        if lo:
            core[_take(core, ax, 1, lo + 1)] += xp.flip(left, axis=ax)
        if hi:
            core[_take(core, ax, n - 1 - hi, n - 1)] += xp.flip(right, axis=ax)
    elif mode == "replicate":
        if lo:
            core[_take(core, ax, 0, 1)] += left.sum(axis=ax, keepdims=True)
        if hi:
            core[_take(core, ax, n - 1, n)] += right.sum(axis=ax, keepdims=True)
    else:  # circular: left pad copies the last lo inputs, right pad the first hi
        if lo:
            core[_take(core, ax, n - lo, n)] += left
        if hi:
            core[_take(core, ax, 0, hi)] += right
    return core


def pad(input, pad, mode="constant", value=0.0):
    """Pad the last len(pad)//2 dims: ``pad = (left, right, top, bottom, ...)`` (torch's order)."""
    _check_tensor(input, "input", "pad")
    if mode not in _PAD_MODES:
        raise ValueError(f"pad: mode must be one of {_PAD_MODES}, got {mode!r}")
    if mode != "constant" and value not in (None, 0, 0.0):
        raise ValueError(f"pad: {mode} padding does not take a value argument (got value={value!r})")
    pads = tuple(pad)
    if len(pads) % 2 or not all(isinstance(p, (int, np.integer)) for p in pads):
        raise ValueError(f"pad: pad must be an even-length sequence of ints, got {pad!r}")
    shape = tuple(input.shape)
    if len(pads) // 2 > len(shape):
        raise ValueError(f"pad: {len(pads)} pad values for a {len(shape)}-D input of shape {shape}")
    for i in range(len(pads) // 2):
        lo, hi, size = pads[2 * i], pads[2 * i + 1], shape[len(shape) - 1 - i]
        if lo < 0 or hi < 0:
            raise ValueError(f"pad: negative padding {pad!r} is not supported")
        if mode == "reflect" and (lo >= size or hi >= size):
            raise ValueError(f"pad: reflect padding {(lo, hi)} must be < the input size {size} "
                             f"(dim {len(shape) - 1 - i} of shape {shape})")
        if mode == "circular" and (lo > size or hi > size):
            raise ValueError(f"pad: circular padding {(lo, hi)} must be <= the input size {size} "
                             f"(dim {len(shape) - 1 - i} of shape {shape})")
        if mode == "replicate" and size == 0 and (lo or hi):
            raise ValueError(f"pad: cannot replicate-pad an empty dim {len(shape) - 1 - i} of shape {shape}")
    return _Pad.apply(input, pads, mode, value)


def conv_padding_amounts(padding, input_hw, kernel_hw, stride, dilation):
    """(top, bottom, left, right) for conv2d's padding argument (used by Conv2d's padding_mode)."""
    return _resolve_padding(padding, input_hw[0], input_hw[1], kernel_hw[0], kernel_hw[1],
                            _pair(stride, "stride"), _pair(dilation, "dilation"))
