"""fastconv.info(), thread control, ISA selection and the command line."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import ops
from fastconv.backends import cpu

import reference as ref


def test_info_keys_and_types():
    info = fastconv.info()
    assert isinstance(info, dict)
    assert {"version", "isa", "threads", "backends", "algorithms", "cuda_built"} <= set(info)
    assert isinstance(info["version"], str) and info["version"]
    assert isinstance(info["isa"], str) and info["isa"]
    assert isinstance(info["threads"], int) and not isinstance(info["threads"], bool) and info["threads"] >= 1
    assert isinstance(info["backends"], (list, tuple)) and all(isinstance(b, str) for b in info["backends"])
    assert {"cpu", "reference"} <= set(info["backends"])
    assert list(info["backends"]) == list(fastconv.backends.available())
    # with or without "auto"
    assert set(info["algorithms"]) - {"auto"} == set(ops.ALGORITHMS) - {"auto"}
    assert isinstance(info["cuda_built"], bool)


def test_info_version_matches_package():
    v = fastconv.info()["version"]
    if hasattr(fastconv, "__version__"):
        assert v == fastconv.__version__
    assert v[0].isdigit()


def test_info_threads_follow_setting(threads):
    fastconv.set_num_threads(1)
    assert fastconv.info()["threads"] == 1
    fastconv.set_num_threads(2)
    assert fastconv.info()["threads"] == 2


def test_num_threads_round_trip(threads):
    n0 = fastconv.get_num_threads()
    assert isinstance(n0, int) and n0 >= 1
    for n in (1, 2, 3, 1):
        fastconv.set_num_threads(n)
        assert fastconv.get_num_threads() == n
    fastconv.set_num_threads(n0)
    assert fastconv.get_num_threads() == n0


def test_num_threads_results_unchanged(threads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    outs = []
    for n in (1, 2, 3):
        fastconv.set_num_threads(n)
        outs.append(ops.conv2d(x, w, padding=1))
    for o in outs:
        assert ref.rel_err(o, ref.conv2d(x, w, pads=(1, 1, 1, 1))) <= 2e-5
    np.testing.assert_array_equal(outs[1], outs[0])  # 1 and 2 threads: bit-identical


def test_isas():
    isas = list(cpu.available_isas())
    assert "portable" in isas
    assert len(set(isas)) == len(isas)
    assert all(isinstance(i, str) and i for i in isas)


def test_set_isa_each_and_auto():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 5, 9, 7)).astype(np.float32)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    expected = ref.conv2d(x, w)
    try:
        for name in cpu.available_isas():
            cpu.set_isa(name)
            assert ref.rel_err(ops.conv2d(x, w, algo="im2col"), expected) <= 2e-5
    finally:
        cpu.set_isa("auto")
    assert ref.rel_err(ops.conv2d(x, w, algo="im2col"), expected) <= 2e-5


def test_set_isa_unknown_raises():
    with pytest.raises(ValueError):
        cpu.set_isa("no-such-isa")


def test_cli_info(tmp_path):
    # run outside the source tree (cwd would shadow the built package with the
    # bare sources) but import the same fastconv this process imported
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_root] + [p for p in [env.get("PYTHONPATH")] if p])
    p = subprocess.run([sys.executable, "-m", "fastconv", "info"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    isa = fastconv.info()["isa"]
    assert isa in p.stdout, p.stdout
    assert fastconv.info()["version"] in p.stdout


def test_numba_run_keeps_the_thread_count(threads):
    """Numba's OpenMP threading layer used to reset the compiled kernels' thread count."""
    if "numba" not in fastconv.backends.available():
        pytest.skip("numba backend not available")
    fastconv.set_num_threads(1)
    x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    w = np.random.default_rng(1).random((4, 3, 3, 3)).astype(np.float32)
    ops.conv2d(x, w, backend="numba")
    assert fastconv.get_num_threads() == 1
    fastconv.set_num_threads(2)
    ops.conv2d(x, w, backend="numba")
    assert fastconv.get_num_threads() == 2


@pytest.mark.skipif("numba" not in fastconv.backends.available(), reason="numba not installed")
@pytest.mark.parametrize("layer", ["default", "omp", "workqueue"])
def test_thread_count_reaches_numba_loaded_later(tmp_path, layer):
    # set_num_threads before the numba backend is loaded (a fresh process): the count must reach
    # Numba when it loads; and Numba's own launches (its omp layer calls omp_set_num_threads) must
    # not change the count of the compiled kernels
    code = (
        "import numpy as np, fastconv, numba\n"
        "fastconv.set_num_threads(1)\n"
        "x = np.ones((1, 3, 6, 6), np.float32); w = np.ones((2, 3, 3, 3), np.float32)\n"
        "fastconv.ops.conv2d(x, w, backend='numba')\n"
        "print(numba.get_num_threads(), fastconv.get_num_threads())\n"
        "numba.set_num_threads(2)\n"
        "fastconv.ops.conv2d(x, w, backend='numba')\n"
        "print(numba.get_num_threads(), fastconv.get_num_threads())\n"
        "fastconv.set_num_threads(2)\n"
        "fastconv.ops.conv2d(x, w, backend='numba')\n"
        "print(numba.get_num_threads(), fastconv.get_num_threads())\n")
    env = dict(os.environ, NUMBA_NUM_THREADS="2", NUMBA_THREADING_LAYER=layer)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_root] + [p for p in [env.get("PYTHONPATH")] if p])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300, cwd=tmp_path)
    if out.returncode != 0 and "threading layer" in out.stderr.lower():
        pytest.skip(f"numba has no {layer!r} threading layer here")
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.strip().split("\n")]
    assert lines == [["1", "1"], ["2", "1"], ["2", "2"]]


@pytest.mark.skipif(not cpu.CPU_AVAILABLE, reason="compiled CPU module missing")
@pytest.mark.parametrize("policy,want", [(None, 1 << 15), ("passive", 1 << 19), ("PASSIVE", 1 << 19),
                                         ("active", 1 << 15)])
def test_parallel_threshold_follows_wait_policy(tmp_path, policy, want):
    # under OMP_WAIT_POLICY=passive a fork is a futex wake-up, so the pooling and layer ops stay on
    # one thread up to 2^19 elements touched: info() says so, and the results (softmax, its
    # backward, relu, cross entropy, pooling between the two thresholds) are bit-identical to
    # this process's two-thread ones
    rng = np.random.default_rng(3)
    arrays = dict(z=rng.standard_normal((256, 1000)).astype(np.float32),
                  g=rng.standard_normal((256, 1000)).astype(np.float32),
                  x=rng.standard_normal((8, 16, 28, 28)).astype(np.float32),
                  t=rng.integers(0, 1000, 256))
    np.savez(tmp_path / "in.npz", **arrays)
    code = (
        "import sys, numpy as np, fastconv\n"
        "from fastconv import ops\n"
        "fastconv.set_num_threads(2)\n"
        "a = np.load(sys.argv[1])\n"
        "y = ops.softmax(a['z'], 1)\n"
        "out = dict(y=y, dy=ops.softmax_backward(a['g'], y, 1), r=ops.relu(a['z']),\n"
        "           ce=ops.cross_entropy(a['z'], a['t'])[1], p=ops.max_pool2d(a['x'], 3, 2, 1),\n"
        "           q=ops.avg_pool2d_backward(ops.avg_pool2d(a['x'], 2), a['x'], 2))\n"
        "np.savez(sys.argv[2], **out)\n"
        "print(fastconv.info()['parallel_min_work'])\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_root] + [p for p in [env.get("PYTHONPATH")] if p])
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout.strip().splitlines()[-1]) == want
    got = np.load(tmp_path / "out.npz")
    fastconv.set_num_threads(2)
    y = ops.softmax(arrays["z"], 1)
    np.testing.assert_array_equal(got["y"], y)
    np.testing.assert_array_equal(got["dy"], ops.softmax_backward(arrays["g"], y, 1))
    np.testing.assert_array_equal(got["r"], ops.relu(arrays["z"]))
    np.testing.assert_array_equal(got["ce"], ops.cross_entropy(arrays["z"], arrays["t"])[1])
    np.testing.assert_array_equal(got["p"], ops.max_pool2d(arrays["x"], 3, 2, 1))
    x = arrays["x"]
    np.testing.assert_array_equal(got["q"], ops.avg_pool2d_backward(ops.avg_pool2d(x, 2), x, 2))
