"""The compiled C++ backend (``fastconv._cpu``)."""
from __future__ import annotations

from ._names import LAYER_KERNELS

try:
    from .. import _cpu  # type: ignore[attr-defined]

    CPU_AVAILABLE = True
    CPU_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised when the build is missing
    _cpu = None
    CPU_AVAILABLE = False
    CPU_IMPORT_ERROR = repr(exc)


def _need():
    if _cpu is None:
        raise RuntimeError(f"the compiled CPU module is not available: {CPU_IMPORT_ERROR}")
    return _cpu


def layer_kernel(name):
    """Pooling / layer kernel ``name`` of the compiled module (see ``fastconv.backends.layer_kernel``)."""
    if _cpu is None or name not in LAYER_KERNELS:
        return None
    return getattr(_cpu, name)


def available_isas():
    """GEMM micro-kernels this CPU can run, slowest first."""
    m = _need()
    isas = ["portable"]
    if m.cpu_has_avx2_fma():
        isas.append("avx2")
    if m.cpu_has_avx512():
        isas.append("avx512")
    return isas


def isa() -> str:
    """The micro-kernel the float32 GEMM dispatches to now."""
    return _need().gemm_isa()


def set_isa(name: str) -> None:
    """Force a micro-kernel (``"portable"``, ``"avx2"``, ``"avx512"``) or ``"auto"``."""
    _need().set_gemm_isa(name)


def measure_peak_gflops(threads: int, seconds: float = 0.5) -> float:
    """Measured fp32 FMA peak (GFLOP/s) of this machine with `threads` threads."""
    return _need().measure_peak_gflops(int(threads), float(seconds))


def gemm(a, b, c=None, beta=0.0, parallel=True):
    """C = beta*C + A @ B with fastconv's packed GEMM (2-D float32/float64, any strides)."""
    import numpy as np

    a = np.asarray(a)
    b = np.asarray(b)
    if c is None:
        c = np.zeros((a.shape[0], b.shape[1]), dtype=a.dtype)
    _need().gemm(a, b, c, float(beta), bool(parallel))
    return c


def supports(algo: str, problem) -> str:
    return _need().supports(algo, _cpu.ConvProblem(**problem.kernel_args()))


def direct_vectorized(op: str, problem) -> bool:
    """Whether algo "direct" runs the register-blocked AVX-512 kernel for this fp32 problem ("fprop",
    "dgrad" or "wgrad"); False without the compiled module."""
    if _cpu is None:
        return False
    return bool(_cpu.direct_vectorized(op, _cpu.ConvProblem(**problem.kernel_args())))


def fprop(algo, problem, x, w, b, y, relu=False):
    _cpu.fprop(algo, _cpu.ConvProblem(**problem.kernel_args()), x, w, b, y, relu)


def dgrad(algo, problem, dy, w, dx):
    _cpu.dgrad(algo, _cpu.ConvProblem(**problem.kernel_args()), dy, w, dx)


def wgrad(algo, problem, x, dy, dw):
    _cpu.wgrad(algo, _cpu.ConvProblem(**problem.kernel_args()), x, dy, dw)


def empty(shape, dtype):
    """An uninitialized array for an op's result. Blocks of 1 MiB and more come from the compiled
    module's output-buffer cache: pages already written by an earlier result that died, so the op
    that fills them takes no page faults (see csrc/bindings/cpu_buffers.cpp). Without the compiled
    module: ``np.empty``."""
    return _cpu.empty(shape, dtype)


if _cpu is None:  # pragma: no cover - exercised when the build is missing
    import numpy as _np

    empty = _np.empty  # noqa: F811
