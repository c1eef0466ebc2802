"""2-D convolution ops with ``torch.nn.functional.conv2d`` / ``torch.nn.grad`` semantics.

dtypes: float32 computes in float32 and float64 in float64 (every algorithm
has a float64 instantiation; the GEMM uses its portable micro-kernel for
float64). float16 is computed in float32 and the result rounded back to
float16. Integer, bool and complex arrays raise TypeError (as torch does on the
CPU); input and weight must share a dtype.

inf and NaN: the direct, im2col, 1x1 and separable algorithms give torch's results where an inf
or NaN meets finite values. Where it meets only zero padding they can differ: torch multiplies
the padding (0 * inf = NaN), while the direct and separable kernels (and "auto", which drops
kernel taps that only ever meet padding) skip it, so a non-finite weight on such a tap, or a NaN
in grad_output at a position whose taps reach padding, gives fewer NaNs in the Fprop / Wgrad
than torch's. Winograd's tile transforms subtract neighbouring values, so an inf in the input or
weight gives NaN in the outputs of its tiles where torch gives inf (and its Wgrad spreads a NaN
to more taps); pick another ``algo`` when infinities must survive.

GPU arrays (CuPy arrays, objects with ``__cuda_array_interface__``, CUDA
DLPack tensors) take the device path (:mod:`fastconv.ops._device`): backend
"cuda" (else "numba-cuda"), CuPy arrays out, launched on CuPy's current stream.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import replace

import numpy as np

from .. import backends
from ..problem import ConvProblem, _is_int, algorithm_rule, make_problem
from . import _device
from ..backends.cpu import empty as _empty
from ._arrays import float_array as _array

ALGORITHMS = ("auto", "direct", "im2col", "1x1", "separable", "winograd")
log = logging.getLogger("fastconv")

__all__ = ["conv2d", "conv2d_input", "conv2d_weight", "ALGORITHMS", "algorithms_for", "choose_algo",
           "set_autotune", "autotune_cache"]


# ----------------------------------------------------------------- arguments


def _compute_dtype(*arrays_and_names):
    dtypes = {a.dtype for a, _ in arrays_and_names}
    if len(dtypes) > 1:
        desc = ", ".join(f"{n} {a.dtype}" for a, n in arrays_and_names)
        raise TypeError(f"dtypes must match: {desc}")
    dt = dtypes.pop()
    return np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)


def _prepare(arr, dtype):
    """Contiguous array of the compute dtype (copies only when needed)."""
    return np.ascontiguousarray(arr, dtype=dtype)


def _backend_module(name):
    return backends.module(name)


_host_backend = _device.host_backend  # resolve() for NumPy arrays; GPU-only backends are a TypeError


# ------------------------------------------------------------- algorithms
def _supports(algo, problem) -> str:
    """Empty string when `algo` can take `problem`, else the reason (mirrors the C++ can_implement)."""
    why = algorithm_rule(algo, problem)
    if why is None:
        raise ValueError(f"algo must be one of {ALGORITHMS}, got {algo!r}")
    return why


def algorithms_for(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1):
    """The algorithms (besides "auto") that can run this problem."""
    p = make_problem(input_shape, weight_shape, stride, padding, dilation, groups)
    return [a for a in ALGORITHMS[1:] if not _supports(a, p)]


def _auto(p: ConvProblem, op: str) -> str:
    """The "auto" heuristic table (measured with benchmarks/bench_conv.py on 2 Zen 4 cores).

    ==============================================  =========
    problem                                          algorithm
    ==============================================  =========
    1x1 kernel, no padding                           1x1
    depthwise (groups > 1, one input channel/group)  direct
    1xn / nx1 kernel, groups 1, C >= 32              separable
    3x3, stride 1, dilation 1, groups 1,             winograd
    C >= 16 and K >= 16 (Wgrad: >= 32)
    everything else (incl. 1-channel first layers)   im2col
    ==============================================  =========

    On top of the table, `_pick` trades im2col or Winograd for the register-blocked direct kernel
    for fp32 on the compiled CPU path where that measured faster (_prefers_vectorized_direct).

    Winograd F(2x2, 3x3) does 2.25x fewer multiply-adds; its tile transforms
    cost about as much as that saves below 16 channels (measured, 1 thread:
    Fprop/Dgrad 1.2x faster than im2col at 16 channels, 1.4-2.1x at 64-256;
    Wgrad 1.2-2.0x faster from 64 channels at 2 threads, 0.85x at 16; slower
    with 3-8 channels).

    One-channel first layers (LeNet C1, the Fashion net's conv1) looked like
    direct-convolution territory, but im2col with padded-width columns is 3-30x
    faster there (the direct Wgrad reduces over N*P*Q per filter tap).
    """
    Cg = p.C // p.groups
    if not _supports("1x1", p):
        return "1x1"
    if p.groups > 1 and Cg == 1:
        return "direct"
    if (p.R == 1 or p.S == 1) and Cg >= 32 and not _supports("separable", p):
        return "separable"
    if min(Cg, p.K) >= (32 if op == "wgrad" else 16) and not _supports("winograd", p):
        return "winograd"
    return "im2col"


def choose_algo(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, op="fprop",
                backend=None, dtype="float32"):
    """The algorithm "auto" runs for this problem and operator ("fprop", "dgrad", "wgrad").

    "auto" first drops kernel rows/columns that only ever read padding (a 3x3 kernel with padding 1
    on a 1x1 map is a 1x1 convolution), so this is the pick for the problem that remains. The table
    is the compiled CPU path's; `backend` (a name, or None for the one NumPy arrays get) names the
    backend the call would run on, and a backend without the table's pick (cuda has no winograd)
    reports the algorithm it runs instead. On the compiled CPU path with AVX-512, fp32 problems
    that the register-blocked direct kernel runs faster than im2col get "direct" (see
    _prefers_vectorized_direct); `dtype` is the compute dtype of the call.
    """
    if op not in ("fprop", "dgrad", "wgrad"):
        raise ValueError(f"op must be 'fprop', 'dgrad' or 'wgrad', got {op!r}")
    p = make_problem(input_shape, weight_shape, stride, padding, dilation, groups)
    name = backends.resolve(backend)
    return _pick("auto", _auto_problem("auto", p)[0], op, name, np.dtype(dtype))


# ----------------------------------------------------------------- autotune
# Opt-in (like torch.backends.cudnn.benchmark): the first call of each problem
# times every algorithm that supports it and caches the fastest per
# (problem, operator, dtype, backend, threads). Off by default because the
# first call then runs the convolution several times.
_autotune = {"enabled": os.environ.get("FASTCONV_AUTOTUNE", "0") not in ("", "0"), "cache": {}}


def set_autotune(enabled: bool = True) -> None:
    """Turn the autotune cache on or off (``FASTCONV_AUTOTUNE=1`` turns it on at import)."""
    _autotune["enabled"] = bool(enabled)


def autotune_cache() -> dict:
    """The autotune decisions so far: {(problem, op, dtype, backend, threads): algo}."""
    return dict(_autotune["cache"])


def _tuned(algo, problem, op, dtype, backend, run):
    """Resolve "auto" through the autotune cache; `run(a)` executes algorithm a once."""
    if algo != "auto" or not _autotune["enabled"]:
        return None
    from .. import get_num_threads

    key = (problem, op, np.dtype(dtype).name, backend, get_num_threads())
    best = _autotune["cache"].get(key)
    if best is None:
        times = {}
        for a in ALGORITHMS[1:]:
            if _supports(a, problem) or _backend_module(backend).supports(a, problem):
                continue
            run(a)  # warm-up (first-touch of buffers, packing)
            t0 = time.perf_counter()
            run(a)
            times[a] = time.perf_counter() - t0
        best = min(times, key=times.get)
        _autotune["cache"][key] = best
        log.debug("fastconv autotune: %s %s -> %s (%s)", op, problem, best,
                  ", ".join(f"{a} {t * 1e3:.2f} ms" for a, t in times.items()))
    return best


def _prefers_vectorized_direct(p: ConvProblem, op: str, table: str = "im2col") -> bool:
    """For fp32 on the compiled CPU path with AVX-512: whether "auto" trades the table's pick
    (`table`: im2col or winograd) for the register-blocked direct kernel (csrc/cpu/conv_kvec.h),
    when that kernel takes the problem.

    Measured with both algorithms side by side on 2 Zen 4 cores, `python benchmarks/bench_algos.py
    --layers all --algos im2col,direct` (20 layers of LeNet, the Fashion net, AlexNet, ZFNet,
    GoogLeNet's 5x5 branches, ResNet stems and stride-2 3x3s, CIFAR stems; table in
    benchmarks/RESULTS.md; figures are im2col time / direct time):

    - Fprop: 1.12-1.82x faster than im2col with 16+ output channels per group, except at 1x1
      outputs (LeNet C5, 0.34x: a GEMV per image), 3x3 kernels with more than ~2048 taps per output
      (ResNet 3x3 256->512 s2: 0.58x; 0.75-0.90x in `bench_algos.py --stride 2`) and few taps with
      many output channels (CIFAR stem 3->64, 27 taps: 0.69x, output-write bound). 5x5 and larger
      kernels stay faster past 2048 taps (`bench_algos.py --kernel 5/7 --algos im2col,direct`:
      96->256 and 128->128 5x5 at 13x13-28x28 1.15-1.87x, 256->256 and 512->128 5x5 1.32-1.47x,
      5x5 96->256 stride 2 1.63x, 7x7 64/128 channels 2.0-2.9x).
    - Dgrad (stride 1, 16+ input channels): 1.20-1.77x; not from 1x1 outputs (LeNet C5: 0.17x).
    - Wgrad: 1.12-1.76x for stride-1 5x5 kernels with 4+ input channels per group, not from 1x1
      outputs (LeNet C5: 0.90x); mostly slower with strides (its tiles are then R x S outputs read
      at stride: ZFNet's 7x7/s2 stem 0.45x, ResNet 3x3/s2 0.69-0.93x), which the rule leaves on
      im2col although three strided layers measured faster direct (ResNet-20 16->32 3x3/s2 1.30x,
      ZFNet conv2 5x5/s2 1.16x, AlexNet conv1 11x11/s4 1.04x).
      3x3 kernels (9 taps: few accumulators per tile) only with exactly 16 output channels and 16+
      input channels (1.24-2.00x im2col's speed at 16/32/64 -> 16; 16 -> 32: 0.93-1.16x,
      16 -> 64: 0.76-0.94x, left on im2col).

    Against Winograd (`table` == "winograd": 3x3, stride 1, 16+ channels), measured at 8x8-56x56
    maps with `python benchmarks/bench_algos.py` (which also gives the 3x3 Wgrad figures above;
    table in benchmarks/RESULTS.md): the direct kernel is faster while the smaller channel count is
    below 24 (16->16: 1.18-1.68x; 16->32, 32->16, 64->16: 0.99-1.40x; 16->64 Fprop/Dgrad
    0.98-1.23x), where Winograd's transform-domain GEMMs are too thin to pay for the tile
    transforms; from 24 channels up Winograd mostly wins (24->24: 0.74-0.97x, 32->32: 0.91-1.18x,
    64->64: 0.65-0.86x).
    """
    Cg, Kg = p.C // p.groups, p.K // p.groups
    taps = Cg * p.R * p.S
    stride1 = p.stride_h == 1 and p.stride_w == 1
    if table == "winograd":
        return min(Cg, Kg) < 24
    if op == "fprop":
        return (Kg >= 16 and p.P * p.Q >= 16 and (taps <= 2048 or p.R * p.S >= 25)
                and (taps >= 32 or Kg <= 16))
    if op == "dgrad":
        return stride1 and Cg >= 16 and p.P * p.Q >= 16
    if p.R == 3 and p.S == 3:
        return stride1 and Kg == 16 and Cg >= 16 and p.P * p.Q >= 16
    return stride1 and Kg >= 16 and Cg >= 4 and p.R * p.S >= 25 and p.P * p.Q >= 16


def _pick(algo, problem, op, backend_name=None, dtype=None):
    if not isinstance(algo, str):
        raise TypeError(f"algo must be a string, got {algo!r}")
    if algo == "auto":
        a = _auto(problem, op)
        if (a in ("im2col", "winograd") and backend_name == "cpu" and dtype is not None
                and np.dtype(dtype) == np.float32 and _prefers_vectorized_direct(problem, op, a)
                and backends.cpu.direct_vectorized(op, problem)):
            return "direct"
        # the table is the compiled CPU path's; a backend without that algorithm
        # (cuda, cuda-emu: no winograd; numba-cuda: no separable or winograd) runs im2col
        # instead when it has it, else its direct kernel
        if backend_name is not None and a != "direct":
            mod = _backend_module(backend_name)
            if mod.supports(a, problem):
                return "im2col" if a != "im2col" and not mod.supports("im2col", problem) else "direct"
        return a
    if algo not in ALGORITHMS:
        raise ValueError(f"algo must be one of {ALGORITHMS}, got {algo!r}")
    why = _supports(algo, problem)
    if why:
        raise ValueError(f"algo={algo!r} cannot run this problem (input {problem.input_shape}, weight "
                         f"{problem.weight_shape}, stride {(problem.stride_h, problem.stride_w)}): {why}")
    return algo


# ------------------------------------------------------------ tap pruning
def _tap_range(n_out, stride, pad, dil, size, k):
    """First and last kernel taps that read inside the input for at least one output position."""
    valid = []
    for r in range(k):
        c = r * dil - pad  # input index of output 0 for tap r
        p0 = 0 if c >= 0 else (-c + stride - 1) // stride  # first output whose tap lands at >= 0
        if p0 < n_out and p0 * stride + c < size:
            valid.append(r)
    return (valid[0], valid[-1]) if valid else (0, k - 1)


@functools.lru_cache(maxsize=256)
def _pruned(p):
    """For "auto": the problem without the kernel rows/columns that only ever read padding, plus the
    (row, column) slices of the weight that remain; None when nothing can be dropped.

    A 3x3 convolution with padding 1 on a 1x1 feature map (ResNet-18's last stage on 32x32 images)
    reads only its centre tap: it becomes a 1x1 convolution, 9x fewer multiply-adds. The dropped
    taps multiply zeros in every output, so Fprop and Dgrad are unchanged and their Wgrad is 0.
    """
    r0, r1 = _tap_range(p.P, p.stride_h, p.pad_h, p.dil_h, p.H, p.R)
    s0, s1 = _tap_range(p.Q, p.stride_w, p.pad_w, p.dil_w, p.W, p.S)
    if (r0, r1, s0, s1) == (0, p.R - 1, 0, p.S - 1):
        return None
    ph, pw = p.pad_h - r0 * p.dil_h, p.pad_w - s0 * p.dil_w
    if ph < 0 or pw < 0:
        return None
    R, S = r1 - r0 + 1, s1 - s0 + 1
    pb = max(0, (p.P - 1) * p.stride_h + (R - 1) * p.dil_h + 1 - p.H - ph)
    pr = max(0, (p.Q - 1) * p.stride_w + (S - 1) * p.dil_w + 1 - p.W - pw)
    q = replace(p, R=R, S=S, pad_h=ph, pad_w=pw, pad_bottom=pb, pad_right=pr)
    return q, (slice(r0, r1 + 1), slice(s0, s1 + 1))


def _auto_problem(algo, p, w=None):
    """(problem, weight, taps) to run: pruned for algo "auto", else as given (taps None)."""
    pr = _pruned(p) if algo == "auto" else None
    if pr is None:
        return p, w, None
    q, taps = pr
    return q, (None if w is None else w[:, :, taps[0], taps[1]]), taps


# -------------------------------------------------------------------- ops
def _batched(arr, name, expect_nd=4):
    if arr.ndim == expect_nd:
        return arr, False
    if arr.ndim == expect_nd - 1:
        return arr[None], True
    raise ValueError(f"{name} must be {expect_nd - 1}-D (unbatched) or {expect_nd}-D (batched), "
                     f"got {arr.ndim}-D with shape {arr.shape}")


def _weight4(weight):
    if weight.ndim != 4:
        raise ValueError(f"weight must be 4-D (K, C/groups, R, S), got {weight.ndim}-D with shape {weight.shape}")
    return weight


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algo="auto",
           backend=None, out=None, activation=None):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    ``padding``: int, pair, ``'valid'`` or ``'same'`` (``'same'`` also with stride > 1 and even
    kernels, TF-style: extra padding at the bottom/right). ``algo``: one of :data:`ALGORITHMS`.
    ``out``: optional C-contiguous output buffer of the result's shape and dtype (returned).
    ``activation``: None or ``"relu"`` (fused into the kernel's epilogue).
    GPU arrays in, CuPy array out (see the module doc).
    """
    if _device.any_device(input, weight, bias, out):
        return _device.conv2d(input, weight, bias, stride, padding, dilation, groups, algo, backend, out,
                              activation)
    x = _array(input, "input")
    w = _weight4(_array(weight, "weight"))
    named = [(x, "input"), (w, "weight")]
    b = None
    if bias is not None:
        b = _array(bias, "bias")
        named.append((b, "bias"))
    dtype = _compute_dtype(*named)
    x4, unbatched = _batched(x, "input")
    p = make_problem(x4.shape, w.shape, stride, padding, dilation, groups)
    if b is not None and b.shape != (p.K,):
        raise ValueError(f"bias must have shape ({p.K},) for weight shape {w.shape}, got {b.shape}")
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    name = _host_backend(backend)
    p, w, _ = _auto_problem(algo, p, w)
    a = _pick(algo, p, "fprop", name, dtype)
    _backend_takes(name, a, p)
    result_shape = p.output_shape[1:] if unbatched else p.output_shape
    result_dtype = x.dtype
    y = _output_buffer(out, result_shape, result_dtype, dtype)
    # the kernels read their inputs while writing the output: an `out` that
    # overlaps input/weight/bias is computed into a temporary first
    aliased = out is not None and any(np.may_share_memory(y, a) for a in (x, w, b) if a is not None)
    y_kernel = y if (y.dtype == dtype and not aliased) else _empty(result_shape, dtype)
    if p.N > 0:
        args = (_prepare(x4, dtype), _prepare(w, dtype), None if b is None else _prepare(b, dtype),
                y_kernel.reshape(p.output_shape), activation == "relu")
        mod = _backend_module(name)
        a = _tuned(algo, p, "fprop", dtype, name, lambda alg: mod.fprop(alg, p, *args)) or a
        mod.fprop(a, p, *args)
    if y_kernel is not y:
        y[...] = y_kernel
    return y


def _output_buffer(out, shape, result_dtype, compute_dtype):
    if out is None:
        return _empty(shape, result_dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"out has shape {out.shape}, the result has shape {tuple(shape)}")
    if out.dtype != result_dtype:
        raise ValueError(f"out has dtype {out.dtype}, the result has dtype {result_dtype}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    return out


def _backend_takes(name, algo, p):
    """An empty batch runs no kernel, so the backend's own refusal of an algorithm it lacks would
    not come: check it here (ValueError), as a batch of one would."""
    if p.N == 0:
        why = _backend_module(name).supports(algo, p)
        if why:
            raise ValueError(f"algo={algo!r} cannot run on the {name!r} backend: {why}")


def _size_arg(size, name, like_ndim):
    if isinstance(size, np.ndarray):
        size = size.tolist()
    try:
        dims = tuple(size)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {size!r}") from None
    if not all(_is_int(d) for d in dims):
        raise TypeError(f"{name} must contain ints, got {size!r}")
    if len(dims) not in (like_ndim, 4):
        allowed = "4 entries" if like_ndim == 4 else "3 entries (grad_output is unbatched)"
        raise ValueError(f"{name} must have {allowed}, got {len(dims)}: {tuple(dims)}")
    return tuple(int(d) for d in dims)


def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
                 algo="auto", backend=None):
    """Gradient of conv2d with respect to its input, as ``torch.nn.grad.conv2d_input``."""
    if _device.any_device(weight, grad_output):
        return _device.conv2d_input(input_size, weight, grad_output, stride, padding, dilation, groups, algo,
                                    backend)
    w = _weight4(_array(weight, "weight"))
    dy = _array(grad_output, "grad_output")
    dtype = _compute_dtype((w, "weight"), (dy, "grad_output"))
    dy4, unbatched = _batched(dy, "grad_output")
    size = _size_arg(input_size, "input_size", dy.ndim)
    if unbatched and len(size) == 4:  # torch refuses too; the batch dimension would be dropped
        raise ValueError(f"input_size {tuple(size)} is batched (4 entries) but grad_output is unbatched "
                         f"(3-D, shape {dy.shape}): both must be batched or both unbatched")
    if len(size) == 3:
        size = (1,) + size
        unbatched = True
    p = make_problem(size, w.shape, stride, padding, dilation, groups, input_name="input_size")
    if dy4.shape != p.output_shape:
        raise ValueError(f"grad_output has shape {dy.shape}, expected {p.output_shape} for input_size "
                         f"{tuple(input_size)} and weight shape {w.shape}")
    name = _host_backend(backend)
    p, w, _ = _auto_problem(algo, p, w)
    a = _pick(algo, p, "dgrad", name, dtype)
    _backend_takes(name, a, p)
    dx = _empty(p.input_shape, dtype)
    if p.N > 0:
        args = (_prepare(dy4, dtype), _prepare(w, dtype), dx)
        mod = _backend_module(name)
        a = _tuned(algo, p, "dgrad", dtype, name, lambda alg: mod.dgrad(alg, p, *args)) or a
        mod.dgrad(a, p, *args)
    if unbatched:
        dx = dx[0]
    return dx.astype(dy.dtype, copy=False)


def conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
                  algo="auto", backend=None):
    """Gradient of conv2d with respect to its weight, as ``torch.nn.grad.conv2d_weight``."""
    if _device.any_device(input, grad_output):
        return _device.conv2d_weight(input, weight_size, grad_output, stride, padding, dilation, groups, algo,
                                     backend)
    x = _array(input, "input")
    dy = _array(grad_output, "grad_output")
    dtype = _compute_dtype((x, "input"), (dy, "grad_output"))
    x4, unb_x = _batched(x, "input")
    dy4, unb_dy = _batched(dy, "grad_output")
    if unb_x != unb_dy:
        raise ValueError(f"input ({x.ndim}-D, shape {x.shape}) and grad_output ({dy.ndim}-D, shape "
                         f"{dy.shape}) must both be batched or both unbatched")
    wsize = _size_arg(weight_size, "weight_size", 4)
    if len(wsize) != 4:
        raise ValueError(f"weight_size must have 4 entries, got {wsize}")
    p = make_problem(x4.shape, wsize, stride, padding, dilation, groups, weight_name="weight_size")
    if dy4.shape != p.output_shape:
        raise ValueError(f"grad_output has shape {dy.shape}, expected {p.output_shape} for input shape "
                         f"{x.shape} and weight_size {wsize}")
    name = _host_backend(backend)
    full_shape = p.weight_shape
    p, _, taps = _auto_problem(algo, p)
    a = _pick(algo, p, "wgrad", name, dtype)
    _backend_takes(name, a, p)
    dw = _empty(p.weight_shape, dtype)
    if p.N == 0:
        dw[...] = 0
    else:
        args = (_prepare(x4, dtype), _prepare(dy4, dtype), dw)
        mod = _backend_module(name)
        a = _tuned(algo, p, "wgrad", dtype, name, lambda alg: mod.wgrad(alg, p, *args)) or a
        mod.wgrad(a, p, *args)
    if taps is not None:  # the pruned taps only ever met padding: their gradient is 0
        full = np.zeros(full_shape, dtype)
        full[:, :, taps[0], taps[1]] = dw
        dw = full
    return dw.astype(x.dtype, copy=False)
