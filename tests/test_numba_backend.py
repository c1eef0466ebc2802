"""The Numba CPU backend (fastconv/backends/numba_cpu.py) on the shared shape
catalog, against the independent float64 reference in tests/reference.py.

Same problems as tests/test_conv.py, through backend="numba": every supported
algorithm, Fprop (with and without bias), Dgrad and Wgrad, float32 and float64.
Skipped visibly when numba is not installed. The first run pays the JIT
compile (~1 min on 2 cores); cache=True makes later runs fast.
"""
import numpy as np
import pytest

from fastconv import backends, ops

from helpers import OPS, TOL32, TOL64, bench_params, check_close, problem, run_op, spec_params
from shapes import TEST_SHAPES

pytestmark = pytest.mark.skipif("numba" not in backends.available(),
                                reason="numba is not installed: numba backend unavailable")
ALGOS = ("auto", "direct", "im2col", "1x1", "separable", "winograd")


def _supported(spec):
    return ops.algorithms_for(spec.input_shape, spec.weight_shape, **spec.kwargs())


def _run(spec, op, algo, dtype, tol):
    x, w, b, g, refs = problem(spec, dtype)
    if algo != "auto" and algo not in _supported(spec):
        with pytest.raises(ValueError, match=algo):
            run_op(op, spec, x, w, b, g, algo=algo, backend="numba")
        return
    out = run_op(op, spec, x, w, b, g, algo=algo, backend="numba")
    check_close(out, refs[op], tol, dtype, f"numba {spec.name} {op} algo={algo}")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("spec", spec_params())
def test_test_shapes_float32(spec, algo, op):
    _run(spec, op, algo, np.float32, TOL32)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("spec", spec_params())
def test_test_shapes_float64(spec, algo, op):
    _run(spec, op, algo, np.float64, TOL64)


# BENCH_LAYERS at batch 1 (cropped where large). "auto" everywhere; the direct
# kernel only where it is quick (its scalar Wgrad reduction is slow on big layers).
_BENCH = [p for p in bench_params(with_skips=False) if not p.id.endswith(("_N64", "_N8", "_N16"))]
DIRECT_MAX_MACS = 3e6


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("algo", ["auto", "im2col", "direct", "winograd"])
@pytest.mark.parametrize("spec", _BENCH)
def test_bench_layers_float32(spec, algo, op):
    from helpers import macs

    if algo == "direct" and macs(spec) > DIRECT_MAX_MACS:
        pytest.skip(f"direct on {spec.name} ({macs(spec):.1e} MACs) is slow in the suite; "
                    f"direct is covered by the TEST_SHAPES matrix")
    _run(spec, op, algo, np.float32, TOL32)


@pytest.mark.parametrize("spec", spec_params([s for s in TEST_SHAPES if s.name.startswith(("moderate", "groups"))]))
def test_bench_style_float64_im2col(spec):
    for op in OPS:
        _run(spec, op, "im2col", np.float64, TOL64)


def test_supports_mirrors_ops_rules():
    from fastconv.backends import numba_cpu
    from fastconv.problem import make_problem

    for spec in TEST_SHAPES:
        p = make_problem(spec.input_shape, spec.weight_shape, **spec.kwargs())
        for a in ALGOS[1:]:
            assert (numba_cpu.supports(a, p) == "") == (a in _supported(spec)), (spec.name, a)
    assert "unknown algorithm" in numba_cpu.supports("fft", p)


@pytest.mark.parametrize("algo", ["direct", "im2col", "winograd"])
@pytest.mark.parametrize("spec", spec_params([s for s in TEST_SHAPES if s.name in (
    "moderate_3x3", "moderate_odd_channels", "groups3_dil2", "nonsquare_all")]))
def test_bit_identical_across_thread_counts(spec, algo):
    import numba

    x, w, b, g, _ = problem(spec, np.float32)
    if algo not in _supported(spec):  # e.g. winograd on a dilated, grouped problem: refused
        with pytest.raises(ValueError, match=algo):
            run_op(OPS[0], spec, x, w, b, g, algo=algo, backend="numba")
        return
    before = numba.get_num_threads()
    outs = []
    try:
        for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(n)
            outs.append([run_op(op, spec, x, w, b, g, algo=algo, backend="numba") for op in OPS])
    finally:
        numba.set_num_threads(before)
    for a, c in zip(outs[0], outs[-1]):
        assert np.array_equal(a, c)


def test_relu_epilogue_and_out_buffer():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 5, 9, 7)).astype(np.float32)
    w = rng.standard_normal((7, 5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    import reference as ref

    want = np.maximum(ref.conv2d(x, w, b, pads=(1, 1, 1, 1)), 0)
    for algo in ("direct", "im2col"):
        out = np.full((2, 7, 9, 7), np.nan, np.float32)
        got = ops.conv2d(x, w, b, padding=1, algo=algo, backend="numba", out=out, activation="relu")
        assert got is out
        check_close(got, want, TOL32, np.float32, f"relu {algo}")
        assert (got == 0).any() and (got > 0).any()


def test_large_reduction_chunks():
    """Wgrad P*Q beyond one reduction chunk and Dgrad beyond one channel chunk."""
    from fastconv.backends import numba_cpu
    import reference as ref

    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 3, 50, 60))
    w = rng.standard_normal((4, 3, 3, 3))
    g = rng.standard_normal((1, 4, 50, 60))
    assert 50 * 60 > numba_cpu.PQ_CHUNK
    kw = dict(pads=(1, 1, 1, 1))
    dw = ops.conv2d_weight(x, w.shape, g, padding=1, algo="im2col", backend="numba")
    check_close(dw, ref.conv2d_weight(x, w.shape, g, **kw), TOL64, np.float64, "wgrad chunks")
    old = numba_cpu.DCOL_MAX_ELEMS
    numba_cpu.DCOL_MAX_ELEMS = 9 * 50 * 60  # one channel per chunk
    try:
        dx = ops.conv2d_input(x.shape, w, g, padding=1, algo="im2col", backend="numba")
    finally:
        numba_cpu.DCOL_MAX_ELEMS = old
    check_close(dx, ref.conv2d_input(x.shape, w, g, **kw), TOL64, np.float64, "dgrad chunks")


@pytest.mark.parametrize("algo", ["im2col", "1x1"])
def test_wgrad_slots_bit_identical_and_exact(algo):
    # one column panel and one row block: the (image, chunk) pairs are split into slots summed at
    # the end; the result must match the float64 reference and not depend on the thread count
    import numba

    from fastconv.backends import numba_cpu

    assert numba_cpu.WGRAD_TASKS > 1
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 16, 40, 33)).astype(np.float32)
    go = rng.standard_normal((3, 8, 40, 33)).astype(np.float32)
    ref_w = np.einsum("nkpq,ncpq->kc", go.astype(np.float64), x.astype(np.float64))[:, :, None, None]
    before = numba.get_num_threads()
    outs = []
    try:
        for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(n)
            outs.append(ops.conv2d_weight(x, (8, 16, 1, 1), go, algo=algo, backend="numba"))
    finally:
        numba.set_num_threads(before)
    assert np.abs(outs[0] - ref_w).max() <= 2e-5 * np.abs(ref_w).max()
    assert np.array_equal(outs[0], outs[-1])


@pytest.mark.parametrize("chunk", [256, 7])
@pytest.mark.parametrize("pad", [0, 1, 2])
def test_winograd_many_tile_blocks_and_chunks(pad, chunk, monkeypatch):
    # odd output sizes (partial tiles), more tiles than one NR block (Fprop/Dgrad) and than one
    # Wgrad chunk, two images; channel counts that are not multiples of the panel sizes
    import numba

    from fastconv.backends import numba_cpu
    import reference as ref

    monkeypatch.setattr(numba_cpu, "WINO_CHUNK", chunk)
    rng = np.random.default_rng(pad)
    x = rng.standard_normal((2, 5, 31, 27))
    w = rng.standard_normal((9, 5, 3, 3))
    b = rng.standard_normal(9)
    pads = (pad,) * 4
    y_ref = ref.conv2d(x, w, b, pads=pads)
    g = rng.standard_normal(y_ref.shape)
    refs = {"fprop": y_ref, "dgrad": ref.conv2d_input(x.shape, w, g, pads=pads),
            "wgrad": ref.conv2d_weight(x, w.shape, g, pads=pads)}
    assert x.shape[0] * ((y_ref.shape[2] + 1) // 2) * ((y_ref.shape[3] + 1) // 2) > max(numba_cpu.NR, chunk)
    before = numba.get_num_threads()
    try:
        for dt, tol in ((np.float32, TOL32), (np.float64, TOL64)):
            outs = []
            for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
                numba.set_num_threads(n)
                kw = dict(padding=pad, algo="winograd", backend="numba")
                got = {"fprop": ops.conv2d(x.astype(dt), w.astype(dt), b.astype(dt), **kw),
                       "dgrad": ops.conv2d_input(x.shape, w.astype(dt), g.astype(dt), **kw),
                       "wgrad": ops.conv2d_weight(x.astype(dt), w.shape, g.astype(dt), **kw)}
                for op, v in got.items():
                    check_close(v, refs[op], tol, dt, f"numba winograd {op} pad {pad}")
                outs.append(got)
            for op in outs[0]:
                assert np.array_equal(outs[0][op], outs[-1][op]), op
    finally:
        numba.set_num_threads(before)
