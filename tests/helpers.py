"""Helpers shared by the test modules (problem data, reference results, params)."""
from __future__ import annotations

import functools
import zlib
from dataclasses import replace

import numpy as np
import pytest

import reference as ref
from shapes import BENCH_LAYERS, TEST_SHAPES, ConvSpec

ALGOS = ("auto", "direct", "im2col", "1x1", "separable", "winograd")
# Algorithms run under every available ISA (set_isa): the GEMM-based ones switch
# micro-kernel, and the direct kernels follow the same switch (compiled per ISA);
# "auto" picks any of them.
ISA_ALGOS = ("auto", "direct", "im2col", "1x1", "separable", "winograd")
TOL32 = 2e-5
TOL64 = 1e-12
MAX_BENCH_MACS = 6e7  # reduced BENCH_LAYERS above this (~5e7) are skipped ...
CROP_MACS = 1e7  # ... and replaced by a spatially cropped copy of at most this many MACs


def torch_or_skip():
    """import torch, or skip the test visibly (pytest.importorskip)."""
    return pytest.importorskip("torch", reason="torch is not installed: torch oracle comparisons skipped")


def available_isas():
    try:
        from fastconv.backends import cpu

        return list(cpu.available_isas())
    except Exception:  # pragma: no cover - the import errors surface in the tests themselves
        return ["portable"]


def algo_isa_params(algos=ALGOS):
    """(algo, isa) pairs: every algo of ISA_ALGOS under every available ISA."""
    out = []
    for a in algos:
        if a in ISA_ALGOS:
            out += [pytest.param(a, i, id=f"{a}-{i}") for i in available_isas()]
        else:
            out.append(pytest.param(a, None, id=a))
    return out


def pair(v):
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def pads_of(spec: ConvSpec):
    return ref.resolve_padding(spec.padding, (spec.H, spec.W), (spec.R, spec.S), spec.stride, spec.dilation)


def output_shape(spec: ConvSpec):
    return ref.output_shape(spec.input_shape, spec.weight_shape, spec.stride, pads_of(spec), spec.dilation)


def macs(spec: ConvSpec):
    N, K, P, Q = output_shape(spec)
    return N * K * P * Q * (spec.C // spec.groups) * spec.R * spec.S


def ref_kwargs(spec: ConvSpec):
    return dict(stride=spec.stride, pads=pads_of(spec), dilation=spec.dilation, groups=spec.groups)


def expected_algos(spec: ConvSpec):
    """Support rules of the spec; returns (must_have, may_have) sets."""
    must = {"direct", "im2col"}
    may = set()
    if spec.R == 1 and spec.S == 1:
        if isinstance(spec.padding, str):
            # 'valid' is zero padding; 'same' with a 1x1 kernel always resolves to zero
            # padding: accept either reading of "zero padding" there
            (must if spec.padding == "valid" else may).add("1x1")
        elif pair(spec.padding) == (0, 0):
            must.add("1x1")
    if (spec.R == 1 or spec.S == 1) and spec.groups == 1:
        must.add("separable")
    top, _, left, _ = pads_of(spec)
    if ((spec.R, spec.S) == (3, 3) and pair(spec.stride) == (1, 1) and pair(spec.dilation) == (1, 1)
            and spec.groups == 1 and max(top, left) <= 2):
        must.add("winograd")
    return must, may


def seed_of(*parts):
    return zlib.crc32("/".join(map(str, parts)).encode())


@functools.lru_cache(maxsize=64)
def problem(spec: ConvSpec, dtype=np.float32, seed=0):
    """Random (x, w, b, g) in `dtype` plus float64 references computed from those values."""
    rng = np.random.default_rng(seed_of(spec, np.dtype(dtype).name, seed))
    x = rng.standard_normal(spec.input_shape).astype(dtype)
    w = rng.standard_normal(spec.weight_shape).astype(dtype)
    b = rng.standard_normal(spec.K).astype(dtype)
    g = rng.standard_normal(output_shape(spec)).astype(dtype)
    kw = ref_kwargs(spec)
    refs = dict(
        fprop=ref.conv2d(x, w, None, **kw),
        fprop_bias=ref.conv2d(x, w, b, **kw),
        dgrad=ref.conv2d_input(spec.input_shape, w, g, **kw),
        wgrad=ref.conv2d_weight(x, spec.weight_shape, g, **kw),
    )
    for a in (x, w, b, g):
        a.setflags(write=False)
    for a in refs.values():
        a.setflags(write=False)
    return x, w, b, g, refs


def run_op(op, spec, x, w, b, g, **extra):
    from fastconv import ops

    kw = dict(spec.kwargs(), **extra)
    if op == "fprop":
        return ops.conv2d(x, w, None, **kw)
    if op == "fprop_bias":
        return ops.conv2d(x, w, b, **kw)
    if op == "dgrad":
        return ops.conv2d_input(tuple(x.shape), w, g, **kw)
    if op == "wgrad":
        return ops.conv2d_weight(x, tuple(w.shape), g, **kw)
    raise AssertionError(op)


OPS = ("fprop", "fprop_bias", "dgrad", "wgrad")


def check_close(out, refv, tol, dtype, what=""):
    out_arr = np.asarray(out)
    assert isinstance(out, np.ndarray), f"{what}: result is {type(out)}, not an ndarray"
    assert out_arr.shape == refv.shape, f"{what}: shape {out_arr.shape} != expected {refv.shape}"
    assert out_arr.dtype == np.dtype(dtype), f"{what}: dtype {out_arr.dtype} != {np.dtype(dtype)}"
    assert np.all(np.isfinite(out_arr)), f"{what}: non-finite values in the result"
    err = ref.rel_err(out_arr, refv)
    assert err <= tol, f"{what}: max|out-ref|/max|ref| = {err:.3e} > {tol:.1e}"


def _crop(spec: ConvSpec) -> ConvSpec:
    """Same channels / kernel / stride / padding / dilation, smaller image."""
    best = None
    for h in range(1, spec.H + 1):
        cand = replace(spec, H=h, W=min(h, spec.W) if spec.W >= spec.H else max(1, h * spec.W // spec.H))
        try:
            n, k, p, q = output_shape(cand)
        except Exception:
            continue
        if p <= 0 or q <= 0:
            continue
        if macs(cand) <= CROP_MACS:
            best = cand
    assert best is not None
    return replace(best, name=f"{spec.name}_crop{best.H}x{best.W}")


def bench_params(full=False, with_skips=True):
    """BENCH_LAYERS at N=1 (and at full batch where that stays under MAX_BENCH_MACS).  Those above MAX_BENCH_MACS (~5e7) are too slow for the
    suite: with_skips=True lists them as visible skips; either way a spatially
    cropped copy (same C, K, R, S, stride, padding, dilation, groups) is tested
    instead.  full=True: every layer at N=1, no skips (for metadata-only tests)."""
    out = []
    for layer in BENCH_LAYERS:
        s = layer.reduced(1)
        m = macs(s)
        if m <= MAX_BENCH_MACS or full:
            out.append(pytest.param(s, id=s.name))
            if layer.N > 1 and macs(layer) <= MAX_BENCH_MACS:  # cheap enough at full batch too
                fb = replace(layer, name=f"{layer.name}_N{layer.N}")
                out.append(pytest.param(fb, id=fb.name))
            continue
        if with_skips:
            out.append(pytest.param(s, id=s.name, marks=pytest.mark.skip(
                reason=f"{s.name} at N=1 is {m:.2e} MACs > {MAX_BENCH_MACS:.0e}: too slow for the suite; "
                       f"its cropped copy is tested instead")))
        c = _crop(s)
        out.append(pytest.param(c, id=c.name))
    return out


def spec_params(specs=None):
    specs = TEST_SHAPES if specs is None else specs
    return [pytest.param(s, id=s.name) for s in specs]


# ------------------------------------ stand-ins for CuPy and a GPU backend (tests without a GPU)
class FakeDeviceArray(np.ndarray):
    """A NumPy array that exports __cuda_array_interface__ (host memory standing in for device memory)."""

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ctypes.data, False),
                "version": 3, "strides": None}


def dev(a):
    """A copy of `a` as a "GPU array" (None stays None)."""
    return None if a is None else np.array(a).view(FakeDeviceArray)


def fake_cupy():
    """The part of CuPy's API that fastconv.ops uses, on FakeDeviceArray (same names and semantics:
    every function returns a device array, 0-d for reductions, as CuPy does)."""
    import types

    def wrap(f):
        return lambda *a, **k: np.asarray(f(*a, **k)).view(FakeDeviceArray)

    cp = types.SimpleNamespace()
    cp.ndarray = FakeDeviceArray
    cp.dtype = np.dtype
    cp.float16, cp.float32, cp.float64, cp.int64, cp.uint8 = np.float16, np.float32, np.float64, np.int64, np.uint8
    cp.asarray = lambda a: np.asarray(a).view(FakeDeviceArray)
    cp.from_dlpack = lambda a: np.from_dlpack(a).view(FakeDeviceArray)
    cp.ascontiguousarray = lambda a, dtype=None: np.ascontiguousarray(a, dtype=dtype).view(FakeDeviceArray)
    cp.empty = lambda shape, dtype=np.float64: np.empty(shape, dtype).view(FakeDeviceArray)
    cp.shares_memory = np.shares_memory
    for name in ("zeros", "ones", "full", "zeros_like", "sqrt", "abs", "sign", "maximum", "power", "where", "sum",
                 "argmax", "count_nonzero"):
        setattr(cp, name, wrap(getattr(np, name)))
    return cp


def _host_views(name, args, kwargs):
    """The host views of a call's arrays; asserts every array is a C-contiguous "GPU array"."""
    def one(a):
        if isinstance(a, np.ndarray):
            assert isinstance(a, FakeDeviceArray), f"{name} got a host array ({type(a)})"
            assert a.flags.c_contiguous, f"{name} got a non-contiguous array"
            return a.view(np.ndarray)
        assert not isinstance(a, (list, tuple)), f"{name} got {type(a)}"
        return a
    return [one(a) for a in args], {k: one(v) for k, v in kwargs.items()}


def fake_gpu_backend(calls, name):
    """A GPU backend whose kernels (conv and pooling/layer tables) are the compiled CPU ones; asserts
    it only ever receives "CuPy" arrays and records each call in `calls`."""
    import types

    from fastconv import backends

    cpu = backends.module("cpu")

    def host(*arrays):
        for a in arrays:
            assert a is None or isinstance(a, FakeDeviceArray), f"{name} got {type(a)}"
            assert a is None or a.flags.c_contiguous
        return [None if a is None else a.view(np.ndarray) for a in arrays]

    mod = types.ModuleType(f"fake_{name}")
    mod.TAKES_DEVICE_ARRAYS = True
    mod.supports = cpu.supports

    def fprop(algo, p, x, w, b, y, relu=False):
        calls.append(("fprop", algo, x.dtype))
        cpu.fprop(algo, p, *host(x, w, b, y), relu)

    def dgrad(algo, p, dy, w, dx):
        calls.append(("dgrad", algo, dy.dtype))
        cpu.dgrad(algo, p, *host(dy, w, dx))

    def wgrad(algo, p, x, dy, dw):
        calls.append(("wgrad", algo, x.dtype))
        cpu.wgrad(algo, p, *host(x, dy, dw))

    def layer_kernel(kname):
        fn = cpu.layer_kernel(kname)
        if fn is None:
            return None

        def call(*args, **kwargs):
            hargs, hkwargs = _host_views(f"{name}.{kname}", args, kwargs)
            dts = [a.dtype for a in hargs if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
            calls.append((kname, name, dts[0] if dts else None))
            return fn(*hargs, **hkwargs)

        return call

    mod.fprop, mod.dgrad, mod.wgrad, mod.layer_kernel = fprop, dgrad, wgrad, layer_kernel
    return mod
