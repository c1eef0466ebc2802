"""The compiled CUDA backend (``fastconv._cuda``): GPU arrays in, CuPy arrays out.

Available only when all three hold, else :data:`IMPORT_ERROR` says which failed
(``import fastconv`` never needs any of them):

1. the ``_cuda`` module was built (nvcc found at build time) and imports;
2. its ``runtime_info()`` reports at least one usable device (a driver new
   enough for the runtime the module was built with);
3. CuPy is installed (``pip install 'fastconv[cuda]'``): outputs and the
   Wgrad workspace are CuPy arrays, allocated from CuPy's memory pool.

CuPy is imported lazily, on the first kernel call. Every launch goes to
CuPy's *current* stream (``cupy.cuda.get_current_stream()``); to interleave
with torch, run the call under
``cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)``.

The function table is the one of every backend (``supports/fprop/dgrad/wgrad``,
and ``layer_kernel(name)`` for the pooling / layer kernels, with the argument
lists of the CPU module's functions) but its array arguments are CuPy arrays
(``fastconv.ops`` converts objects with ``__cuda_array_interface__`` or a CUDA
DLPack capsule before calling here). The pooling / layer bindings
(``csrc/bindings/cuda_layers.cpp``) read each array's
``__cuda_array_interface__`` (C-contiguous; float32/float64 data, int64
indices and targets, uint8 masks, float64 batch-norm statistics);
``layer_kernel`` adds CuPy's current stream to every call.

Algorithms (kernel families, :data:`KERNEL_OF`):

* ``direct``: Fprop register-tiled (4 output channels x 4 output columns per
  thread) when a group has >= 2 output channels and the output >= 2 columns,
  else one output element per thread; Dgrad a gather, register-tiled (4 input
  channels x 4 same-phase input columns per thread) when a group has >= 2
  input channels, else one input element per thread; Wgrad one weight element
  per block.
* ``im2col``: the implicit GEMM for Fprop, Dgrad as a gather and Wgrad with a
  fixed N*P*Q split; float32 only, float64 runs the direct kernels.
* ``1x1``: a plain GEMM per group on the implicit GEMM's tiled core with 1x1
  loaders (no tap decoding), float32 and float64; Dgrad writes every element
  once (GEMM over the pixels on the stride grid, zero-fill of the others), Wgrad uses the fixed N*P*Q split (workspace of the input's dtype).
* ``separable``: the 1xn / nx1 kernels (groups 1): input segments and weights
  staged in shared memory, 4 channels per thread in registers; Wgrad one block
  per (16 k x 8 c x 8 tap) tile in a fixed order.

The same kernels run on the CPU in tests through the ``"cuda-emu"`` backend.

Status: compiled in CI; not yet run on a GPU by this project.
"""
from __future__ import annotations

import importlib.util

from ._names import LAYER_KERNELS

# the device path of fastconv.ops hands this backend GPU arrays, not NumPy arrays
TAKES_DEVICE_ARRAYS = True

# ops-layer algorithm -> the kernel family of this backend that runs it
KERNEL_OF = {"direct": "direct", "im2col": "im2col", "1x1": "1x1", "separable": "separable"}


def _probe():
    """(module or None, runtime_info dict or None, reason it is unavailable or None)."""
    try:
        from .. import _cuda  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, None, f"the CUDA module fastconv._cuda is not built or does not import ({exc!r})"
    try:
        info = dict(_cuda.runtime_info())
    except Exception as exc:  # noqa: BLE001 - a broken runtime is "unavailable", never an import error
        return _cuda, None, f"the CUDA runtime query failed: {exc!r}"
    if info.get("device_count", 0) <= 0:
        why = info.get("error") or "no CUDA device found"
        return _cuda, info, (f"no usable CUDA device: {why} (runtime {info.get('runtime_version')}, "
                             f"driver {info.get('driver_version')})")
    if importlib.util.find_spec("cupy") is None:
        return _cuda, info, "CuPy is not installed (pip install 'fastconv[cuda]', or a cupy-cudaXX wheel)"
    return _cuda, info, None


_cuda, RUNTIME_INFO, IMPORT_ERROR = _probe()
AVAILABLE = IMPORT_ERROR is None


def _need():
    if not AVAILABLE:
        raise RuntimeError(f"the CUDA backend is not available: {IMPORT_ERROR}")
    return _cuda


def _cupy():
    import cupy  # lazily: only a GPU call needs it

    return cupy


def _kernel(algo):
    try:
        return KERNEL_OF[algo]
    except KeyError:
        raise ValueError(f"cuda: unknown algorithm {algo!r}; known: {sorted(KERNEL_OF)}") from None


def _problem(problem):
    return _cuda.ConvProblem(**problem.kernel_args())


def _stream():
    return _cupy().cuda.get_current_stream().ptr


def supports(algo: str, problem) -> str:
    if algo not in KERNEL_OF:  # e.g. "winograd": a CPU algorithm with no CUDA kernels yet
        return f"the cuda backend has no {algo!r} kernels (it runs {sorted(KERNEL_OF)})"
    return _need().supports(_kernel(algo), _problem(problem))


def fprop(algo, problem, x, w, b, y, relu=False):
    _need().fprop(_kernel(algo), _problem(problem), x, w, b, y, bool(relu), _stream())


def dgrad(algo, problem, dy, w, dx):
    _need().dgrad(_kernel(algo), _problem(problem), dy, w, dx, _stream())


def wgrad(algo, problem, x, dy, dw):
    m = _need()
    kp = _problem(problem)
    kernel = _kernel(algo)
    ws = None
    n = int(m.wgrad_workspace_elems(kernel, kp, int(x.dtype.itemsize)))
    if n:  # split-K partials (im2col float32, 1x1), from CuPy's pool on the current stream
        ws = _cupy().empty(n, dtype=x.dtype)
    m.wgrad(kernel, kp, x, dy, dw, ws, _stream())


_layer_wrappers: dict = {}


def layer_kernel(name):
    """Pooling / layer kernel ``name`` of ``fastconv._cuda`` (see ``fastconv.backends.layer_kernel``),
    launched on CuPy's current stream; None when unavailable."""
    if not AVAILABLE or name not in LAYER_KERNELS:
        return None
    fn = _layer_wrappers.get(name)
    if fn is None:
        raw = getattr(_cuda, name, None)
        if raw is None:
            return None

        def fn(*args, _raw=raw, **kwargs):
            return _raw(*args, stream=_stream(), **kwargs)

        fn.__name__ = fn.__qualname__ = name
        fn.__doc__ = raw.__doc__
        _layer_wrappers[name] = fn
    return fn
