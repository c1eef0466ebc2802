"""The GPU-array path of fastconv.ops: convolution, pooling and layer ops.

A "device array" is an object with ``__cuda_array_interface__`` (CuPy arrays,
torch CUDA tensors, Numba device arrays) or a DLPack tensor whose
``__dlpack_device__()`` is CUDA memory. Such inputs go to the ``"cuda"``
backend when it is available, else to ``"numba-cuda"`` when that one is,
else a ValueError says why neither can run. Inputs are wrapped as CuPy arrays
without copying (``cupy.asarray`` / ``cupy.from_dlpack``), results are CuPy
arrays, and the kernels launch on CuPy's current stream. NumPy arrays
never come here; a host array mixed with GPU arrays is a TypeError naming it,
and so is a NumPy-only backend (``backend="cpu"``...) asked to take GPU arrays.

Semantics follow the NumPy path: the same argument checks and messages,
float32 and float64 compute in their own precision, float16 computes in
float32 and rounds back.

* Convolution: :func:`conv2d`, :func:`conv2d_input`, :func:`conv2d_weight`
  below (``fastconv.ops.conv`` dispatches here). The autotune cache is not
  used for GPU arrays (its host timer cannot see asynchronous kernels); "auto"
  uses the heuristic table.
* Pooling and layer ops (``fastconv.ops.pool``, ``fastconv.ops.layers``) run
  one code path for both kinds of array: :func:`arrays_for` returns the call's
  array context, :class:`HostArrays` (NumPy, ``xp = numpy``) or
  :class:`DeviceArrays` (CuPy, ``xp = cupy``), which converts arguments,
  allocates results with its ``xp`` and looks up the backend's pooling/layer
  kernel (``layer_kernel(name)`` of "cuda" or "numba-cuda"; a GPU backend
  never falls back to a host backend; "numba-cuda" launches on Numba's default
  stream, not CuPy's current one). A few checks need values held on the
  device and copy a scalar back (a synchronization): the range of pooling
  ``indices`` and of cross-entropy ``target``, and the count of non-ignored
  targets that scales the cross-entropy gradient. The cross-entropy loss is a
  0-d (or (N,)) CuPy array.
"""
from __future__ import annotations

import numpy as np

from .. import backends
from ..backends.cpu import empty as _host_empty
from ._arrays import float_array

DEVICE_BACKENDS = ("cuda", "numba-cuda")
# DLPack device types whose memory kernels can read: kDLCUDA, kDLCUDAManaged
_DLPACK_CUDA = (2, 13)


def is_device_array(obj) -> bool:
    """True for GPU arrays: ``__cuda_array_interface__`` or a CUDA ``__dlpack_device__``."""
    if obj is None or type(obj) is np.ndarray or isinstance(obj, (np.generic, int, float)):
        return False  # the NumPy fast path (exact type: a subclass may export device memory)
    try:
        if hasattr(obj, "__cuda_array_interface__"):
            return True
    except Exception:  # noqa: BLE001 - the property exists but refuses (torch: a tensor that requires grad):
        return True     # a GPU array all the same; the conversion then raises the producer's own message
    dev = getattr(obj, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        kind = int(dev()[0])
    except Exception:  # noqa: BLE001 - not a usable DLPack producer
        return False
    return kind in _DLPACK_CUDA


def any_device(*objs) -> bool:
    return any(is_device_array(o) for o in objs)


def _typename(obj) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else t.__qualname__


def device_backend(backend, what: str, obj) -> str:
    """The backend that runs GPU array `obj` (argument `what`), or a clear error."""
    if backend is not None:
        name = backends.resolve(backend)  # unknown / unavailable names raise ValueError here
        if not backends.takes_device_arrays(name):
            raise TypeError(f"{what} is a GPU array ({_typename(obj)}) but backend {name!r} takes NumPy "
                            f"arrays: pass backend=None or 'cuda', or copy it to the host first "
                            f"(cupy.asnumpy / tensor.cpu())")
        return name
    reasons = []
    for name in DEVICE_BACKENDS:
        why = backends.unavailable_reason(name)
        if why is None:
            return name
        reasons.append(f"{name!r}: {why}")
    raise ValueError(f"{what} is a GPU array ({_typename(obj)}) but no GPU backend is available "
                     f"({'; '.join(reasons)}); copy it to the host (cupy.asnumpy / tensor.cpu()) to run "
                     f"on the CPU")


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise ValueError(f"GPU arrays need CuPy, which does not import here ({exc!r}); install "
                         f"'fastconv[cuda]'") from None
    return cupy


def _as_cupy(cp, obj, name):
    """`obj` (a GPU array) as a CuPy array without copying; TypeError for host arrays."""
    if obj is None:
        return None
    if not is_device_array(obj):
        raise TypeError(f"{name} is a host array ({_typename(obj)}) while the other arguments are GPU arrays: "
                        f"all array arguments must live on the same device")
    if isinstance(obj, cp.ndarray):
        arr = obj
    elif hasattr(obj, "__cuda_array_interface__"):
        arr = cp.asarray(obj)  # zero-copy view of the producer's memory
    else:
        arr = cp.from_dlpack(obj)
    if arr.dtype.kind != "f" or arr.dtype.itemsize > 8:
        raise TypeError(f"{name} must be a floating-point array (float16/32/64), got dtype {arr.dtype} "
                        f"with shape {arr.shape}")
    return arr


def _compute_dtype(cp, named):
    dtypes = {a.dtype for a, _ in named}
    if len(dtypes) > 1:
        raise TypeError("dtypes must match: " + ", ".join(f"{n} {a.dtype}" for a, n in named))
    return cp.dtype(cp.float64) if dtypes.pop() == cp.float64 else cp.dtype(cp.float32)


def _prep(cp, arr, dtype):
    return cp.ascontiguousarray(arr.astype(dtype, copy=False))


def conv2d(input, weight, bias, stride, padding, dilation, groups, algo, backend, out, activation):
    from . import conv as c
    from ..problem import make_problem

    name = device_backend(backend, "input" if is_device_array(input) else "weight",
                          input if is_device_array(input) else weight)
    cp = _cupy()
    x = _as_cupy(cp, input, "input")
    w = c._weight4(_as_cupy(cp, weight, "weight"))
    named = [(x, "input"), (w, "weight")]
    b = _as_cupy(cp, bias, "bias")
    if b is not None:
        named.append((b, "bias"))
    dtype = _compute_dtype(cp, named)
    x4, unbatched = c._batched(x, "input")
    p = make_problem(x4.shape, w.shape, stride, padding, dilation, groups)
    if b is not None and b.shape != (p.K,):
        raise ValueError(f"bias must have shape ({p.K},) for weight shape {w.shape}, got {b.shape}")
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    a = c._pick(algo, p, "fprop", name)
    result_shape = p.output_shape[1:] if unbatched else p.output_shape
    if out is not None:
        if not isinstance(out, cp.ndarray):
            raise TypeError(f"out must be a CuPy array for GPU inputs, got {_typename(out)}")
        if out.shape != tuple(result_shape) or out.dtype != x.dtype:
            raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}, the result has shape "
                             f"{tuple(result_shape)} and dtype {x.dtype}")
        if not out.flags.c_contiguous:
            raise ValueError("out must be a C-contiguous array")
    # a separate kernel buffer when the result dtype differs (float16) or `out` may alias an operand
    y = out if out is not None else cp.empty(result_shape, x.dtype)
    aliased = out is not None and any(cp.shares_memory(out, t) for t in (x, w, b) if t is not None)
    yk = y if (y.dtype == dtype and not aliased) else cp.empty(result_shape, dtype)
    if p.N > 0:
        mod = backends.module(name)
        mod.fprop(a, p, _prep(cp, x4, dtype), _prep(cp, w, dtype), None if b is None else _prep(cp, b, dtype),
                  yk.reshape(p.output_shape), activation == "relu")
    if yk is not y:
        y[...] = yk
    return y


def conv2d_input(input_size, weight, grad_output, stride, padding, dilation, groups, algo, backend):
    from . import conv as c
    from ..problem import make_problem

    name = device_backend(backend, "grad_output" if is_device_array(grad_output) else "weight",
                          grad_output if is_device_array(grad_output) else weight)
    cp = _cupy()
    w = c._weight4(_as_cupy(cp, weight, "weight"))
    dy = _as_cupy(cp, grad_output, "grad_output")
    dtype = _compute_dtype(cp, [(w, "weight"), (dy, "grad_output")])
    dy4, unbatched = c._batched(dy, "grad_output")
    size = c._size_arg(input_size, "input_size", dy.ndim)
    if len(size) == 3:
        size = (1,) + size
        unbatched = True
    p = make_problem(size, w.shape, stride, padding, dilation, groups, input_name="input_size")
    if dy4.shape != p.output_shape:
        raise ValueError(f"grad_output has shape {dy.shape}, expected {p.output_shape} for input_size "
                         f"{tuple(input_size)} and weight shape {w.shape}")
    a = c._pick(algo, p, "dgrad", name)
    dx = cp.empty(p.input_shape, dtype)
    if p.N > 0:
        backends.module(name).dgrad(a, p, _prep(cp, dy4, dtype), _prep(cp, w, dtype), dx)
    if unbatched:
        dx = dx[0]
    return dx.astype(dy.dtype, copy=False)


def conv2d_weight(input, weight_size, grad_output, stride, padding, dilation, groups, algo, backend):
    from . import conv as c
    from ..problem import make_problem

    name = device_backend(backend, "input" if is_device_array(input) else "grad_output",
                          input if is_device_array(input) else grad_output)
    cp = _cupy()
    x = _as_cupy(cp, input, "input")
    dy = _as_cupy(cp, grad_output, "grad_output")
    dtype = _compute_dtype(cp, [(x, "input"), (dy, "grad_output")])
    x4, unb_x = c._batched(x, "input")
    dy4, unb_dy = c._batched(dy, "grad_output")
    if unb_x != unb_dy:
        raise ValueError(f"input ({x.ndim}-D, shape {x.shape}) and grad_output ({dy.ndim}-D, shape "
                         f"{dy.shape}) must both be batched or both unbatched")
    wsize = c._size_arg(weight_size, "weight_size", 4)
    if len(wsize) != 4:
        raise ValueError(f"weight_size must have 4 entries, got {wsize}")
    p = make_problem(x4.shape, wsize, stride, padding, dilation, groups, weight_name="weight_size")
    if dy4.shape != p.output_shape:
        raise ValueError(f"grad_output has shape {dy.shape}, expected {p.output_shape} for input shape "
                         f"{x.shape} and weight_size {wsize}")
    a = c._pick(algo, p, "wgrad", name)
    dw = cp.empty(p.weight_shape, dtype)
    if p.N == 0:
        dw[...] = 0
    else:
        backends.module(name).wgrad(a, p, _prep(cp, x4, dtype), _prep(cp, dy4, dtype), dw)
    return dw.astype(x.dtype, copy=False)


# ------------------------------------------- pooling and layer ops: one path, two array modules
def host_backend(backend):
    """resolve() for NumPy arrays: a backend that takes GPU arrays only is a TypeError here."""
    name = backends.resolve(backend)
    if not backends.takes_host_arrays(name):
        raise TypeError(f"backend {name!r} takes GPU arrays (CuPy arrays, __cuda_array_interface__ or CUDA "
                        f"DLPack tensors), got NumPy arrays: move them with cupy.asarray(...) or pick a "
                        f"NumPy backend ({backends.available()})")
    return name


class HostArrays:
    """NumPy arrays in, NumPy arrays out (the fast path: no per-call checks beyond the op's own)."""

    __slots__ = ("backend",)
    xp = np
    on_device = False

    def __init__(self, backend):
        self.backend = backend

    def array(self, value, name):
        """A floating-point argument as an ndarray (lists and scalars are converted)."""
        return float_array(value, name)

    def any_array(self, value, name):
        """An argument of any dtype (targets, indices, masks) as an ndarray."""
        return value if isinstance(value, np.ndarray) else np.asarray(value)

    # results: the compiled module's output-buffer cache (np.empty without it)
    empty = staticmethod(_host_empty)

    def kernel(self, name):
        return backends.layer_kernel(name, self.backend)[0]

    def kernel_and_backend(self, name):
        """(kernel, name of the backend that runs it: per-kernel fallback may pick another one)."""
        return backends.layer_kernel(name, self.backend)

    @staticmethod
    def c(arr, dtype):
        """`arr` C-contiguous in `dtype` (no copy when it already is); None stays None."""
        return None if arr is None else np.ascontiguousarray(arr, dtype=dtype)


_HOST_DEFAULT = HostArrays(None)


class DeviceArrays:
    """GPU arrays in, CuPy arrays out; ``backend`` is "cuda" or "numba-cuda"."""

    __slots__ = ("backend", "xp")
    on_device = True

    def __init__(self, backend, cp):
        self.backend = backend
        self.xp = cp

    def array(self, value, name):
        return _as_cupy(self.xp, value, name)

    def any_array(self, value, name):
        if not is_device_array(value):
            raise TypeError(f"{name} is a host array ({_typename(value)}) while the other arguments are GPU "
                            f"arrays: all array arguments must live on the same device")
        cp = self.xp
        if isinstance(value, cp.ndarray):
            return value
        return cp.asarray(value) if hasattr(value, "__cuda_array_interface__") else cp.from_dlpack(value)

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype)

    def kernel(self, name):
        mod = backends.module(self.backend)
        table = getattr(mod, "layer_kernel", None)
        fn = table(name) if table is not None else None
        if fn is None:  # never a host backend's kernel: it cannot read device memory
            raise ValueError(f"backend {self.backend!r} has no {name} kernel for GPU arrays; copy the arrays "
                             f"to the host (cupy.asnumpy) to run it on the CPU")
        return fn

    def kernel_and_backend(self, name):
        return self.kernel(name), self.backend

    def c(self, arr, dtype):
        return None if arr is None else self.xp.ascontiguousarray(arr.astype(dtype, copy=False))


def arrays_for(backend, *named):
    """The array context of one pooling / layer op call.

    `named`: ``(argument name, value)`` of the call's array arguments. Any GPU array among them
    makes it a :class:`DeviceArrays` on :func:`device_backend`'s choice (the other array arguments
    must then be GPU arrays too: :meth:`DeviceArrays.array` raises TypeError for host ones);
    otherwise a :class:`HostArrays` (a GPU-only backend asked by name is a TypeError).
    """
    for what, value in named:
        if value is not None and type(value) is not np.ndarray and is_device_array(value):
            return DeviceArrays(device_backend(backend, what, value), _cupy())
    if backend is None:
        return _HOST_DEFAULT
    if not backends.takes_host_arrays(backend):
        host_backend(backend)  # raises: unavailable (ValueError) or GPU-only (TypeError)
    return HostArrays(backend)
