"""Backend registry.

A backend runs the kernels of one kind of array on one kind of machine:

* ``"cpu"``: the compiled C++ module (``fastconv._cpu``), NumPy arrays.
* ``"reference"``: plain NumPy (slow; always available; float64-friendly).

The CUDA, CUDA-emulator and Numba backends join with their issues.
"""
from __future__ import annotations

import logging

from . import reference
from .cpu import CPU_AVAILABLE, CPU_IMPORT_ERROR

log = logging.getLogger("fastconv")

_ORDER = ("cpu", "reference")


def available():
    """Names of the backends usable in this process, fastest first."""
    names = []
    if CPU_AVAILABLE:
        names.append("cpu")
    names.append("reference")
    return names


def resolve(name):
    """Backend name to use for NumPy arrays: ``None`` means the fastest available."""
    if name is None:
        return "cpu" if CPU_AVAILABLE else "reference"
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string or None, got {name!r}")
    if name not in _ORDER and name not in ("cuda", "cuda-emu", "numba", "numba-cuda"):
        raise ValueError(f"backend must be one of {list(_ORDER)} (or None), got {name!r}")
    if name not in available():
        why = f": {CPU_IMPORT_ERROR}" if name == "cpu" and CPU_IMPORT_ERROR else ""
        raise ValueError(f"backend {name!r} is not available in this build{why}; available: {available()}")
    return name


def cuda_built() -> bool:
    try:
        from .. import _cuda  # noqa: F401
    except ImportError:
        return False
    return True
