"""Backend registry: default choice, set_backend, FASTCONV_BACKEND, and the
fallback to numba when the compiled module cannot be imported.

The fallback test runs in a subprocess whose sitecustomize installs a meta-path
hook that makes ``import fastconv._cpu`` raise ImportError, so the compiled
module is hidden exactly as a broken wheel would hide it.
"""
import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastconv
from fastconv import backends, ops

import reference as ref

HAS_NUMBA = "numba" in backends.available()
need_numba = pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed: numba backend unavailable")

_HIDE = textwrap.dedent('''
    import sys
    class _HideCompiled:
        def find_spec(self, name, path=None, target=None):
            if name == "fastconv._cpu":
                raise ImportError("fastconv._cpu hidden by the test (simulated broken build)")
            return None
    sys.meta_path.insert(0, _HideCompiled())
''')

_CHILD = textwrap.dedent('''
    import json, warnings, logging, io
    import numpy as np
    log_buf = io.StringIO()
    h = logging.StreamHandler(log_buf); h.setLevel(logging.DEBUG)
    lg = logging.getLogger("fastconv"); lg.addHandler(h); lg.setLevel(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import fastconv
        import fastconv.ops
        import fastconv as again  # a second import must not warn again
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 8)); w = rng.standard_normal((4, 3, 3, 3)); b = rng.standard_normal(4)
    y = fastconv.ops.conv2d(x, w, b, padding=1, stride=(2, 1))
    dx = fastconv.ops.conv2d_input(x.shape, w, y, padding=1, stride=(2, 1))
    dw = fastconv.ops.conv2d_weight(x, w.shape, y, padding=1, stride=(2, 1))
    info = fastconv.info()
    np.save(OUT + "/y.npy", y); np.save(OUT + "/dx.npy", dx); np.save(OUT + "/dw.npy", dw)
    json.dump(dict(
        warnings=[str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)],
        default=info["default_backend"], backends=info["backends"],
        cpu_import_error=info.get("cpu_import_error"), log=log_buf.getvalue()), open(OUT + "/r.json", "w"))
''')


def _pythonpath():
    import fastconv as fc

    root = os.path.dirname(os.path.dirname(os.path.abspath(fc.__file__)))
    return os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


@need_numba
def test_hidden_compiled_module_falls_back_to_numba(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_HIDE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), _pythonpath()]))
    env.pop("FASTCONV_BACKEND", None)
    code = f"OUT = {str(tmp_path)!r}\n" + _CHILD
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["default"] == "numba", r
    assert "cpu" not in r["backends"] and "numba" in r["backends"], r
    assert "hidden by the test" in (r["cpu_import_error"] or ""), r
    # exactly one warning, naming the import error and the backend used instead
    assert len(r["warnings"]) == 1, r["warnings"]
    assert "hidden by the test" in r["warnings"][0] and "numba" in r["warnings"][0], r["warnings"]
    assert "default backend 'numba'" in r["log"], r["log"]
    # and the numbers are right
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    kw = dict(stride=(2, 1), pads=(1, 1, 1, 1))
    y = ref.conv2d(x, w, b, **kw)
    assert ref.rel_err(np.load(tmp_path / "y.npy"), y) <= 1e-12
    assert ref.rel_err(np.load(tmp_path / "dx.npy"), ref.conv2d_input(x.shape, w, y, **kw)) <= 1e-12
    assert ref.rel_err(np.load(tmp_path / "dw.npy"), ref.conv2d_weight(x, w.shape, y, **kw)) <= 1e-12


def test_compiled_present_means_no_warning_and_cpu_default():
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    env.pop("FASTCONV_BACKEND", None)
    code = ("import warnings\nwarnings.simplefilter('error')\nimport fastconv\n"
            "print(fastconv.info()['default_backend'])")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    assert res.returncode == 0, res.stderr[-3000:]
    expect = "cpu" if "cpu" in backends.available() else res.stdout.strip()
    assert res.stdout.strip() == expect


@pytest.fixture
def restore_backend(monkeypatch):
    monkeypatch.delenv("FASTCONV_BACKEND", raising=False)
    try:
        yield
    finally:
        fastconv.set_backend(None)


def test_set_backend_changes_default_and_info(restore_backend, caplog):
    auto = backends.resolve(None)
    fastconv.set_backend("reference")
    assert backends.resolve(None) == "reference"
    assert fastconv.info()["default_backend"] == "reference"
    fastconv.set_backend(None)
    assert backends.resolve(None) == auto
    with pytest.raises(ValueError, match="backend must be one of"):
        fastconv.set_backend("nope")
    with pytest.raises(TypeError, match="backend must be a string"):
        fastconv.set_backend(3)
    assert backends.resolve(None) == auto  # a rejected name leaves the default alone


def test_set_backend_routes_ops(restore_backend, monkeypatch):
    """backend=None follows set_backend: spy on the chosen module's fprop."""
    calls = []
    mod = backends.module("reference")
    real = mod.fprop
    monkeypatch.setattr(mod, "fprop", lambda *a, **k: (calls.append(a[0]), real(*a, **k)))
    x = np.ones((1, 2, 5, 5))
    w = np.ones((3, 2, 3, 3))
    fastconv.set_backend("reference")
    y = ops.conv2d(x, w, algo="direct")
    assert calls == ["direct"]
    np.testing.assert_allclose(y, ref.conv2d(x, w))


def test_env_variable_sets_default(restore_backend, monkeypatch):
    monkeypatch.setenv("FASTCONV_BACKEND", "reference")
    assert backends.resolve(None) == "reference"
    assert fastconv.info()["default_backend"] == "reference"
    fastconv.set_backend(backends.available()[0])  # set_backend wins over the environment
    assert backends.resolve(None) == backends.available()[0]
    fastconv.set_backend(None)
    monkeypatch.setenv("FASTCONV_BACKEND", "bogus")
    with pytest.raises(ValueError, match="FASTCONV_BACKEND='bogus'"):
        ops.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)))


def test_choice_is_logged(restore_backend, caplog):
    backends._logged.discard(("reference", "set_backend()"))
    fastconv.set_backend("reference")
    with caplog.at_level(logging.DEBUG, logger="fastconv"):
        backends.resolve(None)
        backends.resolve(None)
    msgs = [r.getMessage() for r in caplog.records if "default backend 'reference'" in r.getMessage()]
    assert len(msgs) == 1, msgs  # once per distinct choice, not once per op call
    assert "set_backend()" in msgs[0]


# ----------------------------------------------- pooling / layer kernel table
def test_layer_ops_take_backend_and_fall_back_per_kernel(caplog):
    """Every pooling / layer op takes ``backend=``; a backend without a kernel runs it elsewhere, logged."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6))
    want = ops.max_pool2d(x, 3, 2, 1)
    # "reference" has no pooling kernels of its own: the kernel falls back to the fastest that has it
    kernel, runs_on = backends.layer_kernel("pool2d_forward", "reference")
    assert runs_on != "reference" and callable(kernel)
    backends._logged.discard(("reference", "pool2d_forward"))  # logged once per process and cached: forget it
    backends._kernel_cache.pop(("reference", "pool2d_forward"), None)
    with caplog.at_level(logging.DEBUG, logger="fastconv"):
        got = ops.max_pool2d(x, 3, 2, 1, backend="reference")
    np.testing.assert_array_equal(got, want)
    assert any("has no pool2d_forward kernel" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.relu(x, backend="tpu")
    with pytest.raises(TypeError, match="backend must be a string"):
        ops.softmax(x, 1, backend=3)


def test_every_public_layer_op_has_a_backend_keyword():
    import inspect

    from fastconv.ops import layers, pool
    names = [n for n in pool.__all__ + layers.__all__ if n not in ("pool_output_size", "Generator")]
    missing = [n for n in names if "backend" not in inspect.signature(getattr(ops, n)).parameters]
    assert not missing, f"ops without backend=: {missing}"
