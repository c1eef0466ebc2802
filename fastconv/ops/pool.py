"""2-D pooling with ``torch.nn.functional`` names, argument order and semantics.

NumPy in, NumPy out; GPU arrays (CuPy arrays, ``__cuda_array_interface__``
objects, CUDA DLPack tensors) in, CuPy arrays out, on backend "cuda" (else
"numba-cuda"; see :mod:`fastconv.ops._device`), with the same checks and
results; indices come back as int64 arrays of the input's kind. NCHW (or
unbatched CHW) input. float32 computes in float32, float64 in float64, float16
in float32 (result rounded back to float16); integer, bool and complex arrays
raise TypeError.

Rules shared by the ops:

* Output size (torch's): ``out = floor((in + 2*pad - dil*(k-1) - 1 + (stride-1 if ceil_mode)) / stride) + 1``;
  with ``ceil_mode`` a last window that would start in the right padding is
  dropped (``if (out-1)*stride >= in + pad: out -= 1``).
* ``padding`` must be at most half the kernel size (``pad <= k // 2``), as torch.
* max / min pooling pad with -inf / +inf (padding never wins). **Ties: the
  first extreme value in row-major window order wins** (its index is
  returned and it alone receives the gradient). A NaN in a window is the
  result (torch's rule; its index is the last NaN in window order).
  Indices are int64 flat positions ``h*W + w`` in the input plane, as torch.
* avg pooling: torch's divisor (``count_include_pad``, ceil-mode windows
  clipped at the padded border, ``divisor_override``).
* adaptive pooling: window ``i`` covers ``[floor(i*in/out), ceil((i+1)*in/out))``;
  ``None`` in ``output_size`` keeps that input dimension.
* Backward passes return ``grad_input`` of the input's shape. They are gathers
  (each input row sums the windows that contain it in a fixed order), so the
  result is bit-identical for any thread count. max/min backward without
  ``indices`` recompute the argmax with the same tie rule.
* Global pooling (a 1x1 output covering the whole plane) runs a vectorized
  plane reduction.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..problem import _is_int, check_int64, out_size
from ._device import arrays_for as _arrays_for

__all__ = [
    "max_pool2d", "min_pool2d", "avg_pool2d", "lp_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
    "max_pool2d_backward", "min_pool2d_backward", "avg_pool2d_backward", "lp_pool2d_backward",
    "adaptive_avg_pool2d_backward", "adaptive_max_pool2d_backward", "pool_output_size",
]

_MAX, _MIN, _AVG = 0, 1, 2


# ----------------------------------------------------------------- arguments
# Every op takes an array context `A` (fastconv.ops._device.arrays_for): A.array converts an
# argument (NumPy, or CuPy for GPU arrays), A.xp allocates, A.kernel(name) is the backend's kernel.


def _compute_dtype(arr):
    return np.dtype(np.float64) if arr.dtype == np.float64 else np.dtype(np.float32)


def _as4d(arr, name):
    if arr.ndim == 4:
        return arr, False
    if arr.ndim == 3:
        return arr[None], True
    raise ValueError(f"{name} must be 3-D (C, H, W) or 4-D (N, C, H, W), got {arr.ndim}-D with shape {arr.shape}")


_INT32_MAX = 2**31 - 1


def _pair(value, name, minimum):
    if _is_int(value):
        vals = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 1 and _is_int(value[0]):
        vals = (int(value[0]), int(value[0]))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        vals = (int(value[0]), int(value[1]))
    elif isinstance(value, (tuple, list)) and len(value) in (1, 2):
        raise TypeError(f"{name} must contain ints, got {value!r}")
    elif isinstance(value, (tuple, list)):
        raise ValueError(f"{name} must be an int or a pair of ints, got {len(value)} values: {tuple(value)!r}")
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(vals) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if max(vals) > _INT32_MAX:  # torch's limit too (it overflows past it); far past any image
        raise ValueError(f"{name} must be < 2^31, got {value!r}")
    return vals


def _stride(stride, kernel):
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        return kernel
    return _pair(stride, "stride", 1)


def _bool(value, name):
    if isinstance(value, (bool, np.bool_)) or (_is_int(value) and int(value) in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r}")


def pool_output_size(in_size, kernel, stride, pad, dilation, ceil_mode):
    """torch's pooling output size along one dimension (<= 0 when nothing fits: callers raise).

    The convolution formula (:func:`fastconv.problem.out_size`, the project's one output-size
    function); ceil mode is stride-1 extra padding at the high end, minus a last window that
    would start inside the right padding (torch's rule).
    """
    out = out_size(in_size, pad, pad + (stride - 1 if ceil_mode else 0), kernel, stride, dilation)
    if ceil_mode and out > 0 and (out - 1) * stride >= in_size + pad:
        out -= 1
    return out


class _Geom:
    """Validated geometry of a fixed-window pooling call."""

    def __init__(self, shape4, kernel_size, stride, padding, dilation, ceil_mode, input_name="input"):
        self.k = _pair(kernel_size, "kernel_size", 1)
        self.s = _stride(stride, self.k)
        self.p = _pair(padding, "padding", 0)
        self.d = _pair(dilation, "dilation", 1)
        self.ceil_mode = _bool(ceil_mode, "ceil_mode")
        N, C, H, W = shape4
        if H <= 0 or W <= 0:
            raise ValueError(f"{input_name} has an empty spatial dimension: shape {tuple(shape4)}")
        for pad, k, axis in ((self.p[0], self.k[0], "height"), (self.p[1], self.k[1], "width")):
            if pad > k // 2:
                raise ValueError(f"padding should be at most half of kernel_size, got padding={self.p} and "
                                 f"kernel_size={self.k} ({axis}: {pad} > {k} // 2)")
        self.P = pool_output_size(H, self.k[0], self.s[0], self.p[0], self.d[0], self.ceil_mode)
        self.Q = pool_output_size(W, self.k[1], self.s[1], self.p[1], self.d[1], self.ceil_mode)
        if self.P <= 0 or self.Q <= 0:
            raise ValueError(f"output size is too small: {input_name} shape {tuple(shape4)} with kernel_size="
                             f"{self.k}, stride={self.s}, padding={self.p}, dilation={self.d} gives "
                             f"{self.P}x{self.Q}")
        self.N, self.C, self.H, self.W = N, C, H, W

    @property
    def out_shape(self):
        return (self.N, self.C, self.P, self.Q)

    def kernel_args(self):
        return dict(kh=self.k[0], kw=self.k[1], sh=self.s[0], sw=self.s[1], ph=self.p[0], pw=self.p[1],
                    dh=self.d[0], dw=self.d[1])


def _divisor(divisor_override):
    if divisor_override is None:
        return 0
    if not _is_int(divisor_override):
        raise TypeError(f"divisor_override must be None or an int, got {divisor_override!r}")
    if int(divisor_override) == 0:
        raise ValueError("divisor_override must be non-zero, got 0")
    return check_int64(int(divisor_override), "divisor_override")


def _planes(A, arr4, dtype):
    N, C, H, W = arr4.shape
    return A.c(arr4, dtype).reshape(N * C, H, W)


def _finish(out, shape4, unbatched, result_dtype):
    out = out.reshape(shape4)
    if unbatched:
        out = out[0]
    return out.astype(result_dtype, copy=False)


def _check_grad(A, grad_output, x, expect_shape4, what):
    """grad_output as an array of the expected shape (batched like `x`)."""
    g = A.array(grad_output, "grad_output")
    expect = tuple(expect_shape4[1:]) if x.ndim == 3 else tuple(expect_shape4)
    if tuple(g.shape) != expect:
        raise ValueError(f"grad_output has shape {tuple(g.shape)}, expected {expect} ({what} of input shape "
                         f"{tuple(x.shape)})")
    if g.dtype != x.dtype:
        raise TypeError(f"dtypes must match: grad_output {g.dtype}, input {x.dtype}")
    return g


def _index_range_error(indices, H, W):
    return ValueError(f"indices must lie in [0, {H * W}) (flat positions in a {H}x{W} input plane), got "
                      f"values in [{int(indices.min())}, {int(indices.max())}]. Max pooling's own indices can "
                      f"lie outside the plane where a window holds no element of the input (possible with "
                      f"dilation): that output is -inf, has no input to send a gradient to, and such a "
                      f"window carries torch's initial index; pass indices=None to recompute instead")


def _check_indices(A, indices, x, expect_shape4, H, W, check_range=True):
    """Indices as (planes, P, Q); `check_range=False` when the kernel counts out-of-range ones itself."""
    if A.on_device:
        indices = A.any_array(indices, "indices")  # TypeError for a host array
    elif not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be an int64 numpy array, got {type(indices).__name__}")
    expect = tuple(expect_shape4[1:]) if x.ndim == 3 else tuple(expect_shape4)
    if indices.dtype != np.int64:
        raise TypeError(f"indices must have dtype int64, got {indices.dtype} with shape {indices.shape}")
    if tuple(indices.shape) != expect:
        raise ValueError(f"indices has shape {tuple(indices.shape)}, expected {expect} for input shape "
                         f"{tuple(x.shape)}")
    if check_range and indices.size and (indices.min() < 0 or indices.max() >= H * W):
        raise _index_range_error(indices, H, W)  # on a GPU: copies two scalars back
    N, C, P, Q = expect_shape4
    return A.c(indices, np.int64).reshape(N * C, P, Q)


# ------------------------------------------------------------- max / min
def _maxmin_forward(kind, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, backend):
    A = _arrays_for(backend, ("input", input))
    x = A.array(input, "input")
    x4, unbatched = _as4d(x, "input")
    g = _Geom(x4.shape, kernel_size, stride, padding, dilation, ceil_mode)
    want_idx = _bool(return_indices, "return_indices")
    dtype = _compute_dtype(x)
    y = A.empty((g.N * g.C, g.P, g.Q), dtype)
    idx = A.empty((g.N * g.C, g.P, g.Q), np.int64) if want_idx else None
    A.kernel("pool2d_forward")(kind, _planes(A, x4, dtype), y, idx, count_include_pad=True, divisor_override=0,
                               **g.kernel_args())
    out = _finish(y, g.out_shape, unbatched, x.dtype)
    if want_idx:
        return out, _finish(idx, g.out_shape, unbatched, np.int64)
    return out


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False,
               *, backend=None):
    """Max pooling, as ``torch.nn.functional.max_pool2d`` (ties: first maximum in row-major window order).

    A window with a NaN gives NaN (with indices: the last NaN's). Without ``return_indices`` the
    compiled CPU kernels reduce windows column by column, so where the tie rule could only show in
    the sign bit (a maximum of -0 and +0, several NaNs of different signs) either value may come
    back; they compare equal (or are both NaN). With indices, and on the other backends, the
    row-major rule holds bit for bit.
    """
    return _maxmin_forward(_MAX, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, backend)


def min_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False,
               *, backend=None):
    """Min pooling (``-max_pool2d(-x)`` up to ties): +inf padding, first minimum in row-major order wins."""
    return _maxmin_forward(_MIN, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, backend)


def _maxmin_backward(kind, grad_output, input, kernel_size, stride, padding, dilation, ceil_mode, indices, backend):
    A = _arrays_for(backend, ("grad_output", grad_output), ("input", input), ("indices", indices))
    x = A.array(input, "input")
    x4, unbatched = _as4d(x, "input")
    geo = _Geom(x4.shape, kernel_size, stride, padding, dilation, ceil_mode)
    gy = _check_grad(A, grad_output, x, geo.out_shape, "pooling output")
    dtype = _compute_dtype(x)
    # the compiled CPU kernel counts out-of-range indices while it scatters
    # (skipping them), which saves two passes over the int64 indices
    kernel, ran_on = A.kernel_and_backend("pool2d_backward")
    in_kernel = ran_on == "cpu"
    idx = None if indices is None else _check_indices(A, indices, x, geo.out_shape, geo.H, geo.W, not in_kernel)
    dx = A.empty((geo.N * geo.C, geo.H, geo.W), dtype)
    gy4 = gy[None] if unbatched else gy
    bad = kernel(kind, _planes(A, gy4, dtype), None if idx is not None else _planes(A, x4, dtype), idx, dx,
                 count_include_pad=True, divisor_override=0, **geo.kernel_args())
    if in_kernel and idx is not None and bad:
        raise _index_range_error(indices, geo.H, geo.W)
    return _finish(dx, x4.shape, unbatched, x.dtype)


def max_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                        indices=None, *, backend=None):
    """grad_input of :func:`max_pool2d` (``indices`` from ``return_indices=True``, or None to recompute).

    Each output's gradient is added at its index, inside its window or not (a scatter, as torch on
    the CPU); the GPU kernels gather over the windows that contain an element, so there an index
    outside its own window drops its gradient (as torch's CUDA kernel).
    """
    return _maxmin_backward(_MAX, grad_output, input, kernel_size, stride, padding, dilation, ceil_mode, indices,
                           backend)


def min_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                        indices=None, *, backend=None):
    """grad_input of :func:`min_pool2d`."""
    return _maxmin_backward(_MIN, grad_output, input, kernel_size, stride, padding, dilation, ceil_mode, indices,
                           backend)


# -------------------------------------------------------------------- avg
def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, *, backend=None):
    """Average pooling, as ``torch.nn.functional.avg_pool2d``."""
    A = _arrays_for(backend, ("input", input))
    x = A.array(input, "input")
    x4, unbatched = _as4d(x, "input")
    g = _Geom(x4.shape, kernel_size, stride, padding, 1, ceil_mode)
    cip = _bool(count_include_pad, "count_include_pad")
    div = _divisor(divisor_override)
    dtype = _compute_dtype(x)
    y = A.empty((g.N * g.C, g.P, g.Q), dtype)
    A.kernel("pool2d_forward")(_AVG, _planes(A, x4, dtype), y, None, count_include_pad=cip, divisor_override=div,
                               **g.kernel_args())
    return _finish(y, g.out_shape, unbatched, x.dtype)


def avg_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None, *, backend=None):
    """grad_input of :func:`avg_pool2d` (``input`` gives the shape and dtype)."""
    A = _arrays_for(backend, ("grad_output", grad_output), ("input", input))
    x = A.array(input, "input")
    x4, unbatched = _as4d(x, "input")
    geo = _Geom(x4.shape, kernel_size, stride, padding, 1, ceil_mode)
    cip = _bool(count_include_pad, "count_include_pad")
    div = _divisor(divisor_override)
    gy = _check_grad(A, grad_output, x, geo.out_shape, "avg_pool2d output")
    dtype = _compute_dtype(x)
    dx = A.empty((geo.N * geo.C, geo.H, geo.W), dtype)
    gy4 = gy[None] if unbatched else gy
    A.kernel("pool2d_backward")(_AVG, _planes(A, gy4, dtype), None, None, dx, count_include_pad=cip,
                                divisor_override=div, **geo.kernel_args())
    return _finish(dx, x4.shape, unbatched, x.dtype)


# --------------------------------------------------------------------- lp
def _norm(norm_type):
    if isinstance(norm_type, (bool, np.bool_)) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"norm_type must be a real number, got {norm_type!r}")
    p = float(norm_type)
    if p == 0 or math.isnan(p):
        raise ValueError(f"norm_type must be non-zero and not NaN, got {norm_type!r}")
    return p


def lp_pool2d(input, norm_type, kernel_size, stride=None, ceil_mode=False, *, backend=None):
    """Power-average pooling, as ``torch.nn.functional.lp_pool2d``.

    Like torch: ``(sign(a) * relu(|a|) * kh*kw) ** (1/p)`` with ``a = avg_pool2d(x**p)``
    (no padding; ceil-mode windows clipped at the border are averaged over their
    clipped size, then scaled by the full kernel area). ``norm_type=inf`` is
    ``max_pool2d(|x|)``, ``-inf`` is ``-max_pool2d(-|x|)``.
    """
    p = _norm(norm_type)
    A = _arrays_for(backend, ("input", input))
    xp = A.xp
    x = A.array(input, "input")
    _as4d(x, "input")
    if math.isinf(p):
        a = xp.abs(x)
        if p > 0:
            return max_pool2d(a, kernel_size, stride, 0, 1, ceil_mode, backend=backend)
        return -max_pool2d(-a, kernel_size, stride, 0, 1, ceil_mode, backend=backend)
    kh, kw = _pair(kernel_size, "kernel_size", 1)
    dtype = _compute_dtype(x)
    xc = x.astype(dtype, copy=False)
    with np.errstate(all="ignore"):  # NumPy's warnings only (CuPy never warns)
        a = avg_pool2d(xp.power(xc, dtype.type(p)), kernel_size, stride, 0, ceil_mode, backend=backend)
        t = xp.sign(a) * xp.maximum(xp.abs(a), dtype.type(0)) * dtype.type(kh * kw)
        y = xp.power(t, dtype.type(1.0 / p))
    return y.astype(x.dtype, copy=False)


def lp_pool2d_backward(grad_output, input, norm_type, kernel_size, stride=None, ceil_mode=False, *, backend=None):
    """grad_input of :func:`lp_pool2d` (zero where a window's sum of powers is zero, as torch documents)."""
    p = _norm(norm_type)
    A = _arrays_for(backend, ("grad_output", grad_output), ("input", input))
    xp = A.xp
    x = A.array(input, "input")
    x4, _ = _as4d(x, "input")
    if math.isinf(p):
        a = xp.abs(x)
        if p > 0:
            g = max_pool2d_backward(grad_output, a, kernel_size, stride, 0, 1, ceil_mode, backend=backend)
        else:
            g = max_pool2d_backward(grad_output, -a, kernel_size, stride, 0, 1, ceil_mode, backend=backend)
        return (g * xp.sign(x)).astype(x.dtype, copy=False)
    kh, kw = _pair(kernel_size, "kernel_size", 1)
    dtype = _compute_dtype(x)
    xc = x.astype(dtype, copy=False)
    with np.errstate(all="ignore"):  # NumPy's warnings only (CuPy never warns)
        x_p = xp.power(xc, dtype.type(p))
        # the geometry avg_pool2d checks, so that grad_output is checked before any kernel runs
        geo = _Geom(x4.shape, kernel_size, stride, 0, 1, ceil_mode)
        gy = _check_grad(A, grad_output, x, geo.out_shape, "lp_pool2d output")
        a = avg_pool2d(x_p, kernel_size, stride, 0, ceil_mode, backend=backend)
        gy = gy.astype(dtype, copy=False)
        kk = dtype.type(kh * kw)
        t = xp.sign(a) * xp.maximum(xp.abs(a), dtype.type(0)) * kk
        e = dtype.type(1.0 / p)
        ga = gy * e * xp.power(t, e - dtype.type(1)) * kk
        ga = xp.where(a != 0, ga, dtype.type(0)).astype(dtype, copy=False)
        gxp = avg_pool2d_backward(ga, x_p, kernel_size, stride, 0, ceil_mode, backend=backend)
        gx = gxp * dtype.type(p) * xp.power(xc, dtype.type(p - 1))
    return gx.astype(x.dtype, copy=False)


# --------------------------------------------------------------- adaptive
def _adaptive_size(output_size, H, W):
    if output_size is None or _is_int(output_size):
        vals = (output_size, output_size)
    elif isinstance(output_size, (tuple, list, np.ndarray)) and np.ndim(output_size) == 1 and len(output_size) == 2:
        vals = tuple(output_size)  # an array([2, 3]) too, as torch
    elif isinstance(output_size, (tuple, list, np.ndarray)) and np.ndim(output_size) == 1:
        raise ValueError(f"output_size must be an int or a pair, got {len(output_size)} values: "
                         f"{tuple(output_size)!r}")
    else:
        raise TypeError(f"output_size must be an int, None or a pair of ints/None, got {output_size!r}")
    out = []
    for v, keep in zip(vals, (H, W)):
        if v is None:
            out.append(keep)
        elif not _is_int(v):
            raise TypeError(f"output_size must contain ints or None, got {output_size!r}")
        elif int(v) <= 0:
            raise ValueError(f"output_size must be positive, got {output_size!r}")
        else:
            out.append(int(v))
    return tuple(out)


def _adaptive_input(A, input):
    x = A.array(input, "input")
    x4, unbatched = _as4d(x, "input")
    if x4.shape[2] <= 0 or x4.shape[3] <= 0:
        raise ValueError(f"input has an empty spatial dimension: shape {tuple(x.shape)}")
    return x, x4, unbatched


def adaptive_avg_pool2d(input, output_size, *, backend=None):
    """Adaptive average pooling, as ``torch.nn.functional.adaptive_avg_pool2d``."""
    A = _arrays_for(backend, ("input", input))
    x, x4, unbatched = _adaptive_input(A, input)
    N, C, H, W = x4.shape
    P, Q = _adaptive_size(output_size, H, W)
    dtype = _compute_dtype(x)
    y = A.empty((N * C, P, Q), dtype)
    A.kernel("adaptive_pool2d_forward")(_AVG, _planes(A, x4, dtype), y, None)
    return _finish(y, (N, C, P, Q), unbatched, x.dtype)


def adaptive_max_pool2d(input, output_size, return_indices=False, *, backend=None):
    """Adaptive max pooling, as ``torch.nn.functional.adaptive_max_pool2d`` (first maximum wins ties)."""
    A = _arrays_for(backend, ("input", input))
    x, x4, unbatched = _adaptive_input(A, input)
    N, C, H, W = x4.shape
    P, Q = _adaptive_size(output_size, H, W)
    want_idx = _bool(return_indices, "return_indices")
    dtype = _compute_dtype(x)
    y = A.empty((N * C, P, Q), dtype)
    idx = A.empty((N * C, P, Q), np.int64) if want_idx else None
    A.kernel("adaptive_pool2d_forward")(_MAX, _planes(A, x4, dtype), y, idx)
    out = _finish(y, (N, C, P, Q), unbatched, x.dtype)
    if want_idx:
        return out, _finish(idx, (N, C, P, Q), unbatched, np.int64)
    return out


def adaptive_avg_pool2d_backward(grad_output, input, *, backend=None):
    """grad_input of :func:`adaptive_avg_pool2d` (the output size is grad_output's)."""
    A = _arrays_for(backend, ("grad_output", grad_output), ("input", input))
    x, x4, unbatched = _adaptive_input(A, input)
    N, C, H, W = x4.shape
    gy = A.array(grad_output, "grad_output")
    if gy.ndim != x.ndim or tuple(gy.shape[:-2]) != tuple(x.shape[:-2]):
        raise ValueError(f"grad_output has shape {tuple(gy.shape)}, expected {tuple(x.shape[:-2])} + (P, Q) "
                         f"for input shape {tuple(x.shape)}")
    if gy.shape[-1] <= 0 or gy.shape[-2] <= 0:
        raise ValueError(f"grad_output has an empty output size: shape {tuple(gy.shape)}")
    if gy.dtype != x.dtype:
        raise TypeError(f"dtypes must match: grad_output {gy.dtype}, input {x.dtype}")
    P, Q = gy.shape[-2:]
    dtype = _compute_dtype(x)
    gy4 = gy[None] if unbatched else gy
    dx = A.empty((N * C, H, W), dtype)
    A.kernel("adaptive_pool2d_backward")(_AVG, _planes(A, gy4, dtype), None, None, dx)
    return _finish(dx, x4.shape, unbatched, x.dtype)


def adaptive_max_pool2d_backward(grad_output, input, output_size, indices=None, *, backend=None):
    """grad_input of :func:`adaptive_max_pool2d` (``indices`` or None to recompute the argmax).

    Each output's gradient is added at its index (flat in the input plane), inside its window or
    not, as torch on the CPU; the GPU kernels gather over the windows that contain an element, so
    there an index outside its own window drops its gradient (as torch's CUDA max-pool backward).
    """
    A = _arrays_for(backend, ("grad_output", grad_output), ("input", input), ("indices", indices))
    x, x4, unbatched = _adaptive_input(A, input)
    N, C, H, W = x4.shape
    P, Q = _adaptive_size(output_size, H, W)
    gy = _check_grad(A, grad_output, x, (N, C, P, Q), "adaptive_max_pool2d output")
    idx = None if indices is None else _check_indices(A, indices, x, (N, C, P, Q), H, W)
    dtype = _compute_dtype(x)
    gy4 = gy[None] if unbatched else gy
    dx = A.empty((N * C, H, W), dtype)
    x_planes = None if idx is not None else _planes(A, x4, dtype)
    A.kernel("adaptive_pool2d_backward")(_MAX, _planes(A, gy4, dtype), x_planes, idx, dx)
    return _finish(dx, x4.shape, unbatched, x.dtype)
