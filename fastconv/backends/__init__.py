"""Backend registry.

A backend runs the kernels of one kind of array on one kind of machine. Each
is a Python module with the same function table (needle-style), so ops never
care which one they call:

    supports(algo, problem) -> "" or the reason it cannot
    fprop(algo, problem, x, w, b, y, relu)     dgrad(algo, problem, dy, w, dx)
    wgrad(algo, problem, x, dy, dw)

Pooling and the layer kernels (``fastconv.ops.pool`` / ``fastconv.ops.layers``)
use a second table, looked up per kernel by :func:`layer_kernel`: a backend
module that has them defines ``layer_kernel(name) -> callable or None`` with
the names and argument lists of the compiled module's functions
(``pool2d_forward``, ``pool2d_backward``, ``adaptive_pool2d_forward``,
``adaptive_pool2d_backward``, ``bn_stats``, ``bn_apply``, ``bn_backward``,
``lrn``, ``activation``, ``softmax``, ``cross_entropy``, ``dropout``,
``dropout_backward``, ``linear``, ``linear_backward``; see
``csrc/bindings/cpu_pool.cpp`` and ``cpu_layers.cpp`` for the arguments).
A backend that lacks a kernel falls back, for that kernel only, to the
fastest available backend that has it (logged once at DEBUG level). This
fallback is for NumPy arrays only: GPU arrays get the kernel of their GPU
backend or a ValueError (``fastconv.ops._device.DeviceArrays.kernel``).

* ``"cpu"``: the compiled C++ module (``fastconv._cpu``), NumPy arrays.
* ``"cuda-emu"``: the CUDA sources compiled for the CPU grid emulator (tests).
* ``"numba"``: Numba ``@njit(parallel=True)`` kernels (the fallback).
* ``"numba-cuda"``: Numba ``@cuda.jit`` kernels; available with a GPU
  (``numba.cuda.is_available()``) or under Numba's CUDA simulator
  (``NUMBA_ENABLE_CUDASIM=1`` before numba is imported). Never the automatic
  default: only ``backend="numba-cuda"`` / ``set_backend("numba-cuda")`` pick it.
* ``"reference"``: plain NumPy (slow; always available; the in-package oracle).
* ``"cuda"``: the compiled CUDA module (``fastconv._cuda``) on GPU arrays: CuPy
  arrays, ``__cuda_array_interface__`` objects or CUDA DLPack tensors in, CuPy
  arrays out. A backend that takes GPU arrays sets ``TAKES_DEVICE_ARRAYS = True``
  and receives CuPy arrays in its function table; ``fastconv.ops`` sends GPU
  arrays to ``"cuda"``, else to ``"numba-cuda"`` when one is available
  (``backend=None``; ``set_backend``/``FASTCONV_BACKEND`` choose among the
  NumPy backends only).

A backend whose module is missing or fails to import is simply unavailable;
``available()`` says which ones this process can use.

The default for NumPy arrays (``backend=None``) is, in order: the name given to
``set_backend(name)``, else the ``FASTCONV_BACKEND`` environment variable, else
the fastest available (compiled CPU, then numba, then reference). The choice
is logged once at DEBUG level on the ``"fastconv"`` logger and shown by
``fastconv.info()["default_backend"]``. When the compiled module fails to
import, importing fastconv warns once, naming the import error, and runs on
numba.
"""
from __future__ import annotations

import importlib
import logging
import os
import warnings

from .cpu import CPU_AVAILABLE, CPU_IMPORT_ERROR

log = logging.getLogger("fastconv")

# name -> module path (relative to this package), fastest first for NumPy arrays
_REGISTRY = {
    "cpu": ".cpu",
    "cuda-emu": ".cuda_emu",
    "numba": ".numba_cpu",
    # never automatic (not in _automatic / _FALLBACK_ORDER): chosen by name only
    "numba-cuda": ".numba_cuda",
    "reference": ".reference",
    # takes GPU arrays only: last, so it is never the automatic NumPy default
    "cuda": ".cuda",
}
_KNOWN = tuple(dict.fromkeys(tuple(_REGISTRY) + ("cuda",)))  # "cuda" is in the registry already
_cache: dict = {}


def _load(name):
    if name not in _cache:
        try:
            mod = importlib.import_module(_REGISTRY[name], __name__)
            # cpu.py names its flags CPU_AVAILABLE / CPU_IMPORT_ERROR
            ok = getattr(mod, "AVAILABLE", getattr(mod, "CPU_AVAILABLE", True))
            why = getattr(mod, "IMPORT_ERROR", getattr(mod, "CPU_IMPORT_ERROR", None))
        except ImportError as exc:
            mod, ok, why = None, False, repr(exc)
        _cache[name] = (mod if ok else None, why)
    return _cache[name]


def available():
    """Names of the backends usable in this process, fastest first."""
    return [n for n in _REGISTRY if _load(n)[0] is not None]


def module(name):
    """The function table of an available backend."""
    mod, why = _load(name)
    if mod is None:
        raise ValueError(f"backend {name!r} is not available in this build: {why}; available: {available()}")
    return mod


# fastconv.set_num_threads(n): the count, kept for the numba backend, which may load later
requested_threads = {"n": None}
_default = {"name": None}  # set_backend(); None: FASTCONV_BACKEND, else automatic
_logged: set = set()


def _automatic():
    return "cpu" if CPU_AVAILABLE else ("numba" if _load("numba")[0] is not None else "reference")


def set_backend(name=None):
    """Default backend for NumPy arrays (``None``: back to FASTCONV_BACKEND / automatic).

    The name is checked now: an unknown or unavailable backend raises ValueError.
    """
    if name is not None:
        resolve(name)
    _default["name"] = name


def default_backend() -> str:
    """The backend ``backend=None`` resolves to now."""
    return resolve(None)


def resolve(name):
    """Backend name to use for NumPy arrays: ``None`` means the default (see the module doc)."""
    if name is None:
        if _default["name"] is not None:
            name, why = _default["name"], "set_backend()"
        elif os.environ.get("FASTCONV_BACKEND"):
            name, why = os.environ["FASTCONV_BACKEND"], "FASTCONV_BACKEND"
            try:
                resolve(name)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"environment variable FASTCONV_BACKEND={name!r}: {exc}") from None
        else:
            name, why = _automatic(), "automatic: fastest available"
        if (name, why) not in _logged:
            _logged.add((name, why))
            # available() probes every backend ("cuda" initializes the CUDA driver): only when logged
            if log.isEnabledFor(logging.DEBUG):
                log.debug("fastconv: default backend %r (%s; available: %s)", name, why, available())
        return name
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string or None, got {name!r}")
    if name not in _KNOWN:
        raise ValueError(f"backend must be one of {list(_KNOWN)} (or None), got {name!r}")
    if name not in _REGISTRY or _load(name)[0] is None:
        why = _load(name)[1] if name in _REGISTRY else "not part of this build yet"
        if name == "cpu" and CPU_IMPORT_ERROR:
            why = CPU_IMPORT_ERROR
        raise ValueError(f"backend {name!r} is not available: {why}; available: {available()}")
    return name


_FALLBACK_ORDER = ("cpu", "numba", "reference")
_kernel_cache: dict = {}  # (backend, kernel name) -> (callable, backend that runs it); backends never change


def unavailable_reason(name: str):
    """None when backend ``name`` is usable in this process, else why not (a string)."""
    if name not in _KNOWN:
        raise ValueError(f"backend must be one of {list(_KNOWN)}, got {name!r}")
    if name not in _REGISTRY:
        return "not part of this build yet"
    mod, why = _load(name)
    return None if mod is not None else (why or "unavailable")


def takes_device_arrays(name: str) -> bool:
    """True for the backends whose kernels take GPU arrays (``"cuda"``, ``"numba-cuda"``)."""
    return name in ("cuda", "numba-cuda")


def takes_host_arrays(name: str) -> bool:
    """False for the backends that take GPU arrays only (``"cuda"``); ``"numba-cuda"`` takes
    NumPy arrays too (copied to the device and back per call)."""
    return name != "cuda"


def layer_kernel(name: str, backend=None):
    """The pooling / layer kernel ``name`` of ``backend`` (None: the default), with per-kernel fallback.

    Returns ``(callable, backend_name_that_runs_it)``.
    """
    chosen = resolve(backend)
    hit = _kernel_cache.get((chosen, name))
    if hit is not None:  # ~1 us instead of ~10: the small ops (softmax 256x1000: ~100 us) feel it
        return hit
    for cand in (chosen,) + tuple(b for b in _FALLBACK_ORDER if b != chosen):
        mod = _load(cand)[0] if cand in _REGISTRY else None
        fn = getattr(mod, "layer_kernel", None) if mod is not None else None
        kernel = fn(name) if fn is not None else None
        if kernel is not None:
            if cand != chosen and (chosen, name) not in _logged:
                _logged.add((chosen, name))
                log.debug("fastconv: backend %r has no %s kernel; running it on %r", chosen, name, cand)
            _kernel_cache[(chosen, name)] = (kernel, cand)
            return kernel, cand
    raise ValueError(f"no available backend has the {name} kernel (asked for {chosen!r}; available: {available()})")


def _warn_if_compiled_missing():
    # One warning per process (this module runs once): without it a broken
    # wheel would silently run 3-30x slower on the fallback.
    if CPU_AVAILABLE:
        return
    fallback = _automatic()
    warnings.warn(f"fastconv: the compiled CPU module failed to import ({CPU_IMPORT_ERROR}); "
                  f"running on the {fallback!r} backend", RuntimeWarning, stacklevel=3)


_warn_if_compiled_missing()


def cuda_built() -> bool:
    try:
        from .. import _cuda  # noqa: F401
    except ImportError:
        return False
    return True
