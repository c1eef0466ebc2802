"""fastconv: hand-written convolution kernels for CNNs in Python.

>>> import numpy as np, fastconv
>>> x = np.random.rand(8, 3, 32, 32).astype(np.float32)
>>> w = np.random.rand(16, 3, 3, 3).astype(np.float32)
>>> fastconv.ops.conv2d(x, w, padding=1).shape
(8, 16, 32, 32)
"""
from __future__ import annotations

import os
import sys

__version__ = "0.1.0"

from . import backends, ops  # noqa: E402
from .backends import cpu as _cpu_backend  # noqa: E402
from .backends import set_backend  # noqa: E402,F401
from .problem import ConvProblem, out_size  # noqa: E402

__all__ = ["ops", "backends", "info", "set_num_threads", "get_num_threads", "set_buffer_cache_limit",
           "buffer_cache_info", "ConvProblem", "out_size", "__version__"]


def set_num_threads(n: int) -> None:
    """Threads used by the CPU kernels: the compiled module (OpenMP) and, once it
    is loaded, Numba (capped at NUMBA_NUM_THREADS). OMP_NUM_THREADS sets the default."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {n!r}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    backends.requested_threads["n"] = n
    # Numba only once fastconv's numba backend is loaded: it picks Numba's threading layer before
    # Numba's first parallel launch, and it applies the count stored above when it loads
    if "fastconv.backends.numba_cpu" in sys.modules:
        sys.modules["fastconv.backends.numba_cpu"].apply_thread_count()
    if _cpu_backend.CPU_AVAILABLE:
        _cpu_backend._cpu.set_num_threads(n)


def set_buffer_cache_limit(nbytes: int) -> None:
    """Idle bytes the output-buffer cache of the compiled CPU ops may keep (default 512 MiB, or
    FASTCONV_BUFFER_CACHE_MB). Results of 1 MiB and more are taken from it and go back to it when
    they die, so repeated calls of the same shapes write memory that is already mapped instead of
    page-faulting fresh memory; 0 keeps nothing."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError(f"set_buffer_cache_limit: nbytes must be an int, got {nbytes!r}")
    if nbytes < 0:
        raise ValueError(f"set_buffer_cache_limit: nbytes must be >= 0, got {nbytes}")
    if _cpu_backend.CPU_AVAILABLE:
        _cpu_backend._cpu.set_buffer_cache_limit(nbytes)


def buffer_cache_info() -> dict:
    """The output-buffer cache: limit_bytes, idle_bytes, idle_blocks, hits, misses (empty dict
    without the compiled module)."""
    return dict(_cpu_backend._cpu.buffer_cache_info()) if _cpu_backend.CPU_AVAILABLE else {}


def get_num_threads() -> int:
    if _cpu_backend.CPU_AVAILABLE:
        return _cpu_backend._cpu.get_num_threads()
    numba = sys.modules.get("numba")
    return numba.get_num_threads() if numba is not None else 1


def info(cuda: bool = False) -> dict:
    """What this build of fastconv is and what it dispatched to.

    ``cuda=True`` adds ``cuda_backend`` ("available" or why not) and
    ``cuda_kernels``: registers, shared memory and spills per kernel and arch
    from the ``-Xptxas -v`` report kept with the build (:mod:`fastconv.cuda_report`),
    or a string saying that this build has none.
    """
    cpu = _cpu_backend.CPU_AVAILABLE
    d = {
        "version": __version__,
        "isa": _cpu_backend.isa() if cpu else "none (compiled CPU module missing)",
        "isas_available": _cpu_backend.available_isas() if cpu else [],
        "threads": get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        # pooling / layer ops smaller than this (elements touched) run on one thread
        "parallel_min_work": _cpu_backend._cpu.parallel_min_work() if cpu else None,
        "buffer_cache_limit_bytes": buffer_cache_info().get("limit_bytes"),
        "backends": backends.available(),
        "default_backend": backends.default_backend(),
        "algorithms": list(ops.ALGORITHMS[1:]),
        "cuda_built": backends.cuda_built(),
    }
    if not cpu:
        d["cpu_import_error"] = _cpu_backend.CPU_IMPORT_ERROR
    if d["cuda_built"]:
        from . import _cuda  # type: ignore[attr-defined]

        d["cuda_runtime"] = _cuda.runtime_info()
    if cuda:
        from . import cuda_report

        why = backends.unavailable_reason("cuda")
        d["cuda_backend"] = "available" if why is None else f"unavailable: {why}"
        entries = cuda_report.load()
        d["cuda_kernels"] = entries if entries is not None else (
            f"no ptxas report in this build ({cuda_report.report_path()} is missing: the CUDA module was not "
            f"built here)")
    return d

from .autograd import Tensor, cat, enable_grad, is_grad_enabled, no_grad, set_grad_enabled  # noqa: E402
from .serialization import save, load  # noqa: E402
from . import nn, optim  # noqa: E402
