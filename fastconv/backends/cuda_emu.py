"""The CUDA kernels run on the CPU grid emulator (``fastconv._emu``, backend ``"cuda-emu"``).

``csrc/cuda/*.cu`` compiled by g++ against ``csrc/emu/emu.h``: the very kernels
of the GPU module, executed with every block's threads as OS threads and real
barriers, on NumPy arrays. It exists so that tests can run every CUDA kernel
without a GPU and compare it with the C++ CPU path; it is slow by design and
checks results and barrier placement, never speed (see ``emu.h``).

Algorithms (the ops layer passes any of ``direct``/``im2col``/``1x1``/``separable``):

* ``direct``: direct Fprop (bias + ReLU fused), register-tiled (each thread 4
  output channels x 4 output columns of a row) when ``_emu.direct_fprop_tiled``
  says so (>= 2 output channels per group and >= 2 output columns), else one
  output element per thread; tests force either kernel with the test-only
  ``_emu._direct_fprop_variant("naive" | "tiled", ...)``. Dgrad as a gather,
  register-tiled likewise (4 input channels x 4 input columns one stride
  phase apart, ``_emu.direct_dgrad_tiled``; forced with
  ``_emu._direct_dgrad_variant``). Wgrad with one weight element per block.
* ``im2col``: the implicit GEMM for all three operators (64x64 tiles, 8x8 per
  thread, double-buffered shared memory): Fprop, Dgrad as a gather (no
  atomics) and Wgrad with N*P*Q split into a problem-fixed number of chunks
  reduced in chunk order. float32 only: float64 runs the direct kernels.
* ``1x1``: the 1x1 GEMM kernels (csrc/cuda/conv_igemm.cu's tiled core with
  1x1 loaders: no im2col index math; float32 64x64 tiles, float64 32x32): zero
  padding, any stride, groups. Dgrad writes every element once (the GEMM the
  pixels on the stride grid, a zero-fill kernel those the stride skips); Wgrad splits N*P*Q into problem-fixed chunks
  reduced in chunk order (``_emu.conv1x1_wgrad_chunks``).
* ``separable``: the 1xn / nx1 kernels (csrc/cuda/conv_separable.cu), groups 1,
  any stride / padding / dilation whose staged segment fits 48 KiB; float32
  and float64.

Pooling and layer kernels (``csrc/cuda/pool.cu``, ``csrc/cuda/layers.cu``) are
served by :func:`layer_kernel` under the CPU module's names and arguments, so
``fastconv.ops.max_pool2d(x, ..., backend="cuda-emu")`` runs the CUDA kernel.
One difference: the CUDA max/min pooling backward gathers over the windows
containing each input element, so saved indices must be positions of their own
window (every index the forward returns is); others raise ValueError here,
where the CPU module would scatter them anywhere in the plane.
"""
from __future__ import annotations

from ._names import LAYER_KERNELS

try:
    from .. import _emu  # type: ignore[attr-defined]

    AVAILABLE = True
    IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised when the module was not built
    _emu = None
    AVAILABLE = False
    IMPORT_ERROR = repr(exc)

# ops-layer algorithm -> the kernel family of this backend that runs it
KERNEL_OF = {"direct": "direct", "im2col": "im2col", "1x1": "1x1", "separable": "separable"}


def _need():
    if _emu is None:
        raise RuntimeError(f"the CUDA emulator module is not available: {IMPORT_ERROR}")
    return _emu


def _kernel(algo):
    try:
        return KERNEL_OF[algo]
    except KeyError:
        raise ValueError(f"cuda-emu: unknown algorithm {algo!r}; known: {sorted(KERNEL_OF)}") from None


def _problem(problem):
    return _need().ConvProblem(**problem.kernel_args())


def supports(algo: str, problem) -> str:
    if algo not in KERNEL_OF:  # e.g. "winograd": a CPU algorithm with no CUDA kernels yet
        return f"the cuda-emu backend has no {algo!r} kernels (it runs {sorted(KERNEL_OF)})"
    return _need().supports(_kernel(algo), _problem(problem))


def fprop(algo, problem, x, w, b, y, relu=False):
    _need().fprop(_kernel(algo), _problem(problem), x, w, b, y, relu)


def dgrad(algo, problem, dy, w, dx):
    _need().dgrad(_kernel(algo), _problem(problem), dy, w, dx)


def wgrad(algo, problem, x, dy, dw):
    _need().wgrad(_kernel(algo), _problem(problem), x, dy, dw)


def layer_kernel(name):
    """The CUDA pooling / layer kernel ``name`` on the emulator (see ``fastconv.backends.layer_kernel``)."""
    if _emu is None or name not in LAYER_KERNELS:
        return None
    return getattr(_emu, name, None)


def set_schedule(name: str = "random", seed: int = 0x5EEDF00D) -> None:
    """``"random"`` (default: one thread at a time between barriers, seeded random order) or ``"concurrent"``."""
    _need().set_schedule(name, int(seed))


def get_schedule() -> str:
    return _need().get_schedule()
