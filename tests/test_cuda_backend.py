"""The "cuda" backend and the GPU-array path of fastconv.ops.

Here (no GPU, no CuPy) this file checks what can run without a device:
* the backend reports itself unavailable with the reason, and ``import
  fastconv`` works without CuPy or a driver;
* array-type dispatch: GPU arrays (``__cuda_array_interface__`` or a CUDA
  ``__dlpack_device__``) never reach a NumPy backend; with no GPU backend they
  raise a clear ValueError, mixed host/GPU arguments a TypeError;
* the whole device path (conversion, argument checks, unbatched inputs,
  float16, ``out=``, fallback to "numba-cuda") end to end, with a NumPy-backed
  stand-in for CuPy and a stand-in backend that runs the CPU kernels, compared
  with the float64 reference.

The tests marked "gpu" need the real thing (``_cuda`` built, a device, CuPy);
they skip here with the backend's own reason and compare every kernel with the
CPU path on a GPU machine (benchmarks/gpu_check.sh runs them).
"""
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import backends, ops
from fastconv.backends import cuda as cuda_backend
from fastconv.ops import _device

import reference as ref
from helpers import TOL32, TOL64, FakeDeviceArray, check_close, dev, fake_cupy, fake_gpu_backend, problem, run_op
from shapes import ConvSpec, TEST_SHAPES

GPU = cuda_backend.AVAILABLE
need_gpu = pytest.mark.skipif(not GPU, reason=f"needs a GPU: the 'cuda' backend is unavailable here "
                                              f"({cuda_backend.IMPORT_ERROR})")


class FakeCAI:
    """Looks like a GPU array to the dispatcher; its memory cannot be touched."""

    def __init__(self, shape=(1, 2, 5, 5), typestr="<f4"):
        self.shape = shape
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0xDEAD0000, False),
                                         "version": 3, "strides": None}


class FakeDLPack:
    def __init__(self, device_type):
        self.device_type = device_type

    def __dlpack_device__(self):
        return (self.device_type, 0)


# ----------------------------------------------------------- availability
def test_unavailable_reason_reported():
    why = backends.unavailable_reason("cuda")
    if GPU:
        assert why is None and "cuda" in backends.available()
        return
    assert isinstance(why, str) and why, "an unavailable backend must say why"
    assert why == cuda_backend.IMPORT_ERROR
    # one of the three documented causes, named
    assert any(s in why for s in ("not built", "no usable CUDA device", "CuPy is not installed", "runtime query"))
    assert "cuda" not in backends.available()
    with pytest.raises(ValueError, match="'cuda' is not available"):
        backends.resolve("cuda")
    assert backends.unavailable_reason("numba-cuda")  # known name, not registered in this build
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.unavailable_reason("tpu")


def test_runtime_info_when_built():
    if cuda_backend._cuda is None:
        pytest.skip(f"fastconv._cuda not built here: {cuda_backend.IMPORT_ERROR}")
    info = cuda_backend.RUNTIME_INFO
    assert set(info) >= {"runtime_version", "driver_version", "device_count", "error"}
    assert (info["device_count"] > 0) == (info["error"] == "")


def test_import_without_cupy_or_driver():
    # a fresh interpreter where importing cupy fails: fastconv still imports,
    # the NumPy path works and the backend is unavailable with a reason
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import numpy as np, fastconv\n"
            "y = fastconv.ops.conv2d(np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 2, 2), np.float32))\n"
            "assert float(y.sum()) == 16.0\n"
            "from fastconv.backends import cuda\n"
            "assert not cuda.AVAILABLE or 'cupy' in sys.modules\n"
            "print('reason:', fastconv.backends.unavailable_reason('cuda'))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "reason:" in res.stdout


def test_backend_calls_without_device_raise():
    if GPU:
        pytest.skip("a GPU is available")
    from fastconv.problem import make_problem

    with pytest.raises(RuntimeError, match="not available"):
        cuda_backend.supports("im2col", make_problem((1, 1, 3, 3), (1, 1, 2, 2)))


# --------------------------------------------------------------- dispatch
def test_is_device_array():
    assert not _device.is_device_array(np.zeros(3))
    assert not _device.is_device_array(np.float32(1))
    assert not _device.is_device_array([1.0, 2.0])
    assert not _device.is_device_array(None)
    assert _device.is_device_array(FakeCAI())
    assert _device.is_device_array(FakeDLPack(2))       # kDLCUDA
    assert _device.is_device_array(FakeDLPack(13))      # kDLCUDAManaged
    assert not _device.is_device_array(FakeDLPack(1))   # kDLCPU
    torch = pytest.importorskip("torch", reason="torch is not installed: torch CPU tensor check skipped")
    assert not _device.is_device_array(torch.zeros(2))


@pytest.mark.skipif(GPU, reason="checks the no-GPU-backend error; a GPU backend is available here")
def test_gpu_array_without_gpu_backend_is_a_clear_error():
    x, w, dy = FakeCAI((1, 2, 5, 5)), FakeCAI((3, 2, 3, 3)), FakeCAI((1, 3, 3, 3))
    for call in (lambda: ops.conv2d(x, w),
                 lambda: ops.conv2d(np.zeros((1, 2, 5, 5), np.float32), w),
                 lambda: ops.conv2d_input((1, 2, 5, 5), w, dy),
                 lambda: ops.conv2d_weight(x, (3, 2, 3, 3), dy)):
        with pytest.raises(ValueError, match="GPU array .* no GPU backend is available") as ei:
            call()
        assert "'cuda': " + cuda_backend.IMPORT_ERROR in str(ei.value)
        assert "'numba-cuda'" in str(ei.value)
    # a NumPy backend asked to take a GPU array: TypeError naming both
    with pytest.raises(TypeError, match="backend 'cpu' takes NumPy arrays"):
        ops.conv2d(x, w, backend="cpu")
    # the GPU backend asked by name: its own unavailability
    with pytest.raises(ValueError, match="'cuda' is not available"):
        ops.conv2d(x, w, backend="cuda")
    with pytest.raises(ValueError, match="'cuda' is not available"):
        ops.conv2d(np.zeros((1, 2, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32), backend="cuda")


# ------------------------------------ the device path, with stand-ins for CuPy and the GPU
# (FakeDeviceArray, fake_cupy, fake_gpu_backend: tests/helpers.py, shared with test_device_layers.py)
_dev = dev
_fake_cupy = fake_cupy
_fake_gpu_backend = fake_gpu_backend


@pytest.fixture
def fake_gpu(monkeypatch):
    if "cpu" not in backends.available():
        pytest.skip("the stand-in GPU backend runs the compiled CPU kernels, which are not built")
    calls = []
    monkeypatch.setattr(_device, "_cupy", _fake_cupy)
    monkeypatch.setitem(backends._cache, "cuda", (_fake_gpu_backend(calls, "cuda"), None))
    return calls


@pytest.mark.parametrize("spec", [TEST_SHAPES[i] for i in (5, 9, 10, 18, 28)], ids=lambda s: s.name)
@pytest.mark.parametrize("algo", ["auto", "direct", "im2col"])
def test_device_path_matches_reference(fake_gpu, spec, algo):
    x, w, b, g, refs = problem(spec)
    for op in ("fprop_bias", "dgrad", "wgrad"):
        got = run_op(op, spec, _dev(x), _dev(w), _dev(b), _dev(g), algo=algo)
        assert type(got) is FakeDeviceArray, f"{op}: the device path must return the GPU array type"
        check_close(got.view(np.ndarray), refs[op], TOL32, np.float32, f"device path {op} {algo} {spec.name}")
    assert [c[0] for c in fake_gpu] == ["fprop", "dgrad", "wgrad"]
    if algo != "auto":
        assert all(c[1] == algo for c in fake_gpu)


def test_device_path_options(fake_gpu):
    spec = ConvSpec("opts", 2, 4, 7, 6, 6, 3, 2, stride=(2, 1), padding="same", dilation=1, groups=2)
    x, w, b, g, refs = problem(spec)
    kw = spec.kwargs()
    # relu epilogue and out=
    out = _dev(np.empty(refs["fprop_bias"].shape, np.float32))
    got = ops.conv2d(_dev(x), _dev(w), _dev(b), activation="relu", out=out, **kw)
    assert got is out
    check_close(out.view(np.ndarray), np.maximum(refs["fprop_bias"], 0), TOL32, np.float32, "relu out=")
    # unbatched input
    got = ops.conv2d(_dev(x[0]), _dev(w), _dev(b), **kw)
    check_close(got.view(np.ndarray), refs["fprop_bias"][0], TOL32, np.float32, "unbatched fprop")
    got = ops.conv2d_input(x.shape[1:], _dev(w), _dev(g[0]), **kw)
    check_close(got.view(np.ndarray), refs["dgrad"][0], TOL32, np.float32, "unbatched dgrad")
    # float64 end to end, float16 computed in float32 and rounded back
    x64, w64, b64, g64, r64 = problem(spec, np.float64)
    got = ops.conv2d_weight(_dev(x64), w64.shape, _dev(g64), **kw)
    assert got.dtype == np.float64
    check_close(got.view(np.ndarray), r64["wgrad"], TOL64, np.float64, "float64 wgrad")
    assert fake_gpu[-1][2] == np.float64
    got = ops.conv2d(_dev(x.astype(np.float16)), _dev(w.astype(np.float16)), **kw)
    assert got.dtype == np.float16 and fake_gpu[-1][2] == np.float32
    want = ref.conv2d(x.astype(np.float16).astype(np.float64), w.astype(np.float16).astype(np.float64), None,
                      stride=spec.stride, pads=ref.resolve_padding("same", (7, 6), (3, 2), spec.stride, 1),
                      dilation=1, groups=2)
    assert ref.rel_err(got.view(np.ndarray).astype(np.float64), want) < 2e-3
    # batch 0
    got = ops.conv2d_weight(_dev(np.zeros((0, 4, 7, 6), np.float32)), w.shape,
                            _dev(np.zeros((0, 6, 4, 6), np.float32)), **kw)
    assert got.shape == w.shape and not got.view(np.ndarray).any()


def test_device_path_errors(fake_gpu):
    x, w = _dev(np.zeros((1, 2, 5, 5), np.float32)), _dev(np.zeros((3, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match="bias is a host array .* same device"):
        ops.conv2d(x, w, np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="weight is a host array"):
        ops.conv2d(x, np.zeros((3, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match="dtypes must match"):
        ops.conv2d(x, w.astype(np.float64))
    with pytest.raises(TypeError, match="floating-point"):
        ops.conv2d(x.astype(np.int32), w)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.conv2d(x, w, _dev(np.zeros(4, np.float32)))
    with pytest.raises(ValueError, match="channels|groups|weight"):
        ops.conv2d(x, _dev(np.zeros((3, 3, 3, 3), np.float32)))
    with pytest.raises(ValueError, match="out has shape"):
        ops.conv2d(x, w, out=_dev(np.zeros((1, 3, 2, 2), np.float32)))
    with pytest.raises(TypeError, match="out must be a CuPy array"):
        ops.conv2d(x, w, out=[0])
    with pytest.raises(ValueError, match="grad_output has shape"):
        ops.conv2d_input((1, 2, 5, 5), w, _dev(np.zeros((1, 3, 2, 2), np.float32)))
    # NumPy arrays sent to the GPU backend by name
    with pytest.raises(TypeError, match="backend 'cuda' takes GPU arrays"):
        ops.conv2d(np.zeros((1, 2, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32), backend="cuda")
    assert not fake_gpu, "no kernel may run on bad arguments"


def test_falls_back_to_numba_cuda(monkeypatch):
    if "cpu" not in backends.available():
        pytest.skip("the stand-in GPU backend runs the compiled CPU kernels, which are not built")
    calls = []
    monkeypatch.setattr(_device, "_cupy", _fake_cupy)
    monkeypatch.setitem(backends._cache, "cuda", (None, "no usable CUDA device: test"))
    monkeypatch.setitem(backends._REGISTRY, "numba-cuda", ".numba_cuda")
    monkeypatch.setitem(backends._cache, "numba-cuda", (_fake_gpu_backend(calls, "numba-cuda"), None))
    spec = TEST_SHAPES[9]
    x, w, b, g, refs = problem(spec)
    got = ops.conv2d(_dev(x), _dev(w), _dev(b), **spec.kwargs())
    check_close(got.view(np.ndarray), refs["fprop_bias"], TOL32, np.float32, "numba-cuda fallback")
    assert calls and calls[0][0] == "fprop"


# ------------------------------------------------------------ on a GPU
def _cp():
    import cupy

    return cupy


GPU_SHAPES = [s for s in TEST_SHAPES if s.N * s.C * s.H * s.W <= 200_000]


@need_gpu
@pytest.mark.parametrize("algo", ["direct", "im2col", "auto"])
def test_gpu_matches_cpu(algo):
    # one test per algorithm over the catalog; the failing shape is named in the message
    cp = _cp()
    for spec, op in ((s, o) for s in GPU_SHAPES for o in ("fprop_bias", "dgrad", "wgrad")):
        x, w, b, g, refs = problem(spec)
        got = run_op(op, spec, cp.asarray(x), cp.asarray(w), cp.asarray(b), cp.asarray(g), algo=algo)
        assert isinstance(got, cp.ndarray)
        cpu = run_op(op, spec, x, w, b, g, algo="direct", backend="cpu")
        check_close(cp.asnumpy(got), refs[op], TOL32, np.float32, f"gpu {algo} {op} {spec.name}")
        check_close(cp.asnumpy(got), cpu.astype(np.float64), TOL32, np.float32, f"gpu {algo} {op} vs cpu")


@need_gpu
@pytest.mark.parametrize("op", ["fprop_bias", "dgrad", "wgrad"])
def test_gpu_float64_and_chunked_wgrad(op):
    cp = _cp()
    for spec, dt, tol in ((TEST_SHAPES[9], np.float64, TOL64),
                          (ConvSpec("chunks", 8, 4, 20, 20, 4, 3, 3, dilation=2, groups=2), np.float32, TOL32)):
        x, w, b, g, refs = problem(spec, dt)
        got = run_op(op, spec, cp.asarray(x), cp.asarray(w), cp.asarray(b), cp.asarray(g), algo="im2col")
        check_close(cp.asnumpy(got), refs[op], tol, dt, f"gpu {op} {spec.name} {np.dtype(dt).name}")
        again = run_op(op, spec, cp.asarray(x), cp.asarray(w), cp.asarray(b), cp.asarray(g), algo="im2col")
        np.testing.assert_array_equal(cp.asnumpy(got), cp.asnumpy(again))  # deterministic


@need_gpu
@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("algo", ["1x1", "separable"])
def test_gpu_new_families(algo, dt):
    # the 1x1 GEMM and separable kernels on every catalog shape they take, float32 and float64,
    # plus a 1x1 Wgrad split into chunks (workspace of the input's dtype): deterministic
    from fastconv.ops.conv import _supports
    from fastconv.problem import make_problem

    cp = _cp()
    tol = TOL32 if dt == np.float32 else TOL64
    specs = [s for s in GPU_SHAPES if not _supports(algo, make_problem(s.input_shape, s.weight_shape, **s.kwargs()))]
    if algo == "1x1":
        specs.append(ConvSpec("c1x1_chunks", 6, 4, 13, 12, 6, 1, 1, groups=2))
    assert len(specs) >= 10
    for spec, op in ((s, o) for s in specs for o in ("fprop_bias", "dgrad", "wgrad")):
        x, w, b, g, refs = problem(spec, dt)
        args = (cp.asarray(x), cp.asarray(w), cp.asarray(b), cp.asarray(g))
        got = run_op(op, spec, *args, algo=algo)
        check_close(cp.asnumpy(got), refs[op], tol, dt, f"gpu {algo} {op} {spec.name} {np.dtype(dt).name}")
        np.testing.assert_array_equal(cp.asnumpy(got), cp.asnumpy(run_op(op, spec, *args, algo=algo)))


def test_wgrad_workspace_follows_family_and_dtype(monkeypatch):
    # cuda.wgrad asks the module how much workspace the family needs for the input's dtype and
    # passes a CuPy array of that dtype (the 1x1 split also runs in float64), or None
    import types

    seen = []
    stub = types.SimpleNamespace(
        ConvProblem=lambda **kw: kw,
        wgrad_workspace_elems=lambda kernel, p, itemsize: {"1x1": 12, "im2col": 8 if itemsize == 4 else 0}.get(
            kernel, 0),
        wgrad=lambda kernel, p, x, dy, dw, ws, stream: seen.append((kernel, None if ws is None else (ws.dtype,
                                                                                               ws.size))),
    )
    fake = fake_cupy()
    fake.cuda = types.SimpleNamespace(get_current_stream=lambda: types.SimpleNamespace(ptr=0))
    monkeypatch.setattr(cuda_backend, "_cuda", stub)
    monkeypatch.setattr(cuda_backend, "AVAILABLE", True)
    monkeypatch.setattr(cuda_backend, "_cupy", lambda: fake)
    from fastconv.problem import make_problem

    p = make_problem((2, 4, 5, 5), (6, 4, 1, 1))
    for algo, dt in (("1x1", np.float64), ("1x1", np.float32), ("separable", np.float64), ("im2col", np.float32),
                     ("im2col", np.float64)):
        x = np.zeros((2, 4, 5, 5), dt)
        cuda_backend.wgrad(algo, p, x, None, None)
    assert seen == [("1x1", (np.float64, 12)), ("1x1", (np.float32, 12)), ("separable", None),
                    ("im2col", (np.float32, 8)), ("im2col", None)]
    assert cuda_backend.KERNEL_OF == {"direct": "direct", "im2col": "im2col", "1x1": "1x1", "separable": "separable"}


@need_gpu
def test_gpu_current_stream_and_torch_interop():
    cp = _cp()
    spec = TEST_SHAPES[10]
    x, w, b, g, refs = problem(spec)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        y = ops.conv2d(cp.asarray(x), cp.asarray(w), cp.asarray(b), **spec.kwargs())
    s.synchronize()
    check_close(cp.asnumpy(y), refs["fprop_bias"], TOL32, np.float32, "non-default stream")
    torch = pytest.importorskip("torch", reason="torch is not installed: torch interop skipped")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    tx, tw = torch.from_numpy(np.array(x)).cuda(), torch.from_numpy(np.array(w)).cuda()
    torch.cuda.synchronize()
    y = ops.conv2d(tx, tw, **spec.kwargs())  # __cuda_array_interface__, zero copy
    check_close(cp.asnumpy(y), refs["fprop"], TOL32, np.float32, "torch CUDA tensor in")


@need_gpu
def test_gpu_bad_input_raises():
    cp = _cp()
    x, w = cp.zeros((1, 2, 5, 5), cp.float32), cp.zeros((3, 2, 3, 3), cp.float32)
    with pytest.raises(TypeError, match="host array"):
        ops.conv2d(x, np.zeros((3, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match="dtypes must match"):
        ops.conv2d(x, w.astype(cp.float64))


# ----------------------------------------------- the GPU benchmarks without a GPU
@pytest.mark.parametrize("cmd", [["bench_conv.py", "--device", "cuda"], ["bench_pool.py", "--device", "cuda"],
                                 ["gpu_check.sh"]])
def test_gpu_benchmarks_exit_cleanly_without_gpu(cmd, tmp_path):
    import os

    torch_cuda = False
    try:
        import torch

        torch_cuda = torch.cuda.is_available()
    except ImportError:
        pass
    if GPU and torch_cuda:
        pytest.skip("a GPU is available: gpu_check.sh runs these for real")
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    argv = (["bash"] if cmd[0].endswith(".sh") else [sys.executable]) + [os.path.join(bench, cmd[0])] + cmd[1:]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), PYTHON=sys.executable)
    res = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, lines
    assert "GPU" in lines[0] and "not run" in lines[0] or "nothing run" in lines[0]
