"""Correctness of fastconv.ops.conv2d / conv2d_input / conv2d_weight against the
independent float64 reference (tests/reference.py).

Every TEST_SHAPES entry and every BENCH_LAYERS entry at N=1 (the ones above ~5e7
multiply-adds are skipped, visibly, and replaced by a spatially cropped copy) runs
through every algorithm of ops.ALGORITHMS: the ones that algorithms_for() lists
must match the reference, the others must raise ValueError.  GEMM-based
algorithms run under every available ISA.
"""
import numpy as np
import pytest

import fastconv
from fastconv import backends, ops
from fastconv.problem import make_problem

import reference as ref
from helpers import (ALGOS, OPS, TOL32, TOL64, algo_isa_params, bench_params, check_close,
                     expected_algos, output_shape, problem, run_op, spec_params)
from shapes import ConvSpec, TEST_SHAPES


def _supported(spec):
    return ops.algorithms_for(spec.input_shape, spec.weight_shape, **spec.kwargs())


# ------------------------------------------------------------------ algorithm lists
def test_algorithms_constant():
    assert tuple(ops.ALGORITHMS) == ALGOS


@pytest.mark.parametrize("spec", spec_params() + bench_params(full=True))
def test_algorithms_for_follows_rules(spec):
    got = _supported(spec)
    assert isinstance(got, list)
    assert all(isinstance(a, str) for a in got)
    assert len(set(got)) == len(got), got
    assert "auto" not in got
    must, may = expected_algos(spec)
    assert must <= set(got) <= must | may, f"algorithms_for -> {got}, expected {sorted(must)} (+ maybe {sorted(may)})"


def test_algorithms_for_accepts_spec_forms():
    # numpy integers and tuples are fine everywhere
    got = ops.algorithms_for((np.int64(1), 3, 8, 8), (4, 3, np.int32(1), 1), stride=np.int64(2))
    assert set(got) == {"direct", "im2col", "1x1", "separable"}
    got = ops.algorithms_for((1, 4, 8, 8), (4, 2, 1, 3), padding=(0, 1), groups=2)
    assert set(got) == {"direct", "im2col"}
    got = ops.algorithms_for((1, 4, 8, 8), (4, 4, 1, 1), padding=1)
    assert set(got) == {"direct", "im2col", "separable"}
    got = ops.algorithms_for((1, 4, 8, 8), (4, 4, 3, 3), padding="same")
    assert set(got) == {"direct", "im2col", "winograd"}
    assert "winograd" not in ops.algorithms_for((1, 4, 8, 8), (4, 4, 3, 3), padding=3)


# ------------------------------------------------------------------ main matrix
def _unsupported(spec, algo, op="fprop", dtype=np.float32):
    """True (after checking that it raises ValueError) when `algo` cannot run `spec`."""
    if algo == "auto" or algo in _supported(spec):
        return False
    x, w, b, g, _ = problem(spec, dtype)
    with pytest.raises(ValueError, match=algo):
        run_op(op, spec, x, w, b, g, algo=algo)
    return True


def _check_matrix(spec, op, algo, dtype, tol):
    x, w, b, g, refs = problem(spec, dtype)
    if _unsupported(spec, algo, op, dtype):
        return
    out = run_op(op, spec, x, w, b, g, algo=algo)
    check_close(out, refs[op], tol, dtype, f"{spec.name} {op} algo={algo}")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("algo,isa", algo_isa_params(), indirect=["isa"])
@pytest.mark.parametrize("spec", spec_params())
def test_test_shapes_float32(spec, algo, isa, op):
    _check_matrix(spec, op, algo, np.float32, TOL32)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("algo,isa", algo_isa_params(), indirect=["isa"])
@pytest.mark.parametrize("spec", bench_params(with_skips=False))
def test_bench_layers_float32(spec, algo, isa, op):
    _check_matrix(spec, op, algo, np.float32, TOL32)


@pytest.mark.parametrize("spec", [p for p in bench_params() if p.marks])
def test_bench_layers_full_size(spec):
    # only reached if MAX_BENCH_MACS is raised: the full layer at N=1, auto algo
    _check_matrix(spec, "fprop_bias", "auto", np.float32, TOL32)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("algo,isa", algo_isa_params(), indirect=["isa"])
@pytest.mark.parametrize("spec", spec_params())
def test_test_shapes_float64(spec, algo, isa, op):
    _check_matrix(spec, op, algo, np.float64, TOL64)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("spec", spec_params(TEST_SHAPES[::3]))
def test_backend_cpu_is_default(spec, op):
    x, w, b, g, _ = problem(spec)
    a = run_op(op, spec, x, w, b, g)
    c = run_op(op, spec, x, w, b, g, backend="cpu")
    np.testing.assert_array_equal(a, c)


# ------------------------------------------------------------------ float16
def _check_fp16(out, refv, what):
    assert isinstance(out, np.ndarray) and out.dtype == np.float16, f"{what}: dtype {getattr(out, 'dtype', None)}"
    assert out.shape == refv.shape
    o = out.astype(np.float64)
    # computed in float32 (<= 2e-5 relative to the max), then rounded once to float16
    # (<= 2^-11 relative); float16 arithmetic throughout would be far worse
    bound = 2.0 ** -11 * np.abs(refv) * 1.001 + TOL32 * np.max(np.abs(refv), initial=0) + 2.0 ** -24
    bad = np.abs(o - refv) > bound
    assert not bad.any(), f"{what}: {bad.sum()} elements off; worst {np.max(np.abs(o - refv) - bound):.3e} over bound"


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("algo,isa", algo_isa_params(("auto", "direct", "im2col", "1x1", "separable", "winograd")),
                         indirect=["isa"])
@pytest.mark.parametrize("spec", spec_params([s for s in TEST_SHAPES if s.name.startswith(
    ("moderate", "odd_", "depthwise", "k1x1", "sep_1x7", "same_s2", "dil2"))]))
def test_float16_round_trip(spec, algo, isa, op):
    x, w, b, g, refs = problem(spec, np.float16)
    if _unsupported(spec, algo, op, np.float16):
        return
    out = run_op(op, spec, x, w, b, g, algo=algo)
    _check_fp16(out, refs[op], f"{spec.name} {op} {algo}")


def test_float16_accumulates_in_float32():
    # a long reduction (C*R*S = 4096) of values whose float16 partial sums would
    # lose many bits: the result must still be within one float16 rounding
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 256, 6, 6)).astype(np.float16)
    w = rng.standard_normal((8, 256, 4, 4)).astype(np.float16)
    out = ops.conv2d(x, w)
    _check_fp16(out, ref.conv2d(x, w), "fp16 long reduction")


# ------------------------------------------------------------------ unbatched, N=0
@pytest.mark.parametrize("algo,isa", algo_isa_params(), indirect=["isa"])
@pytest.mark.parametrize("spec", spec_params(TEST_SHAPES[::2]))
def test_unbatched(spec, algo, isa):
    x, w, b, g, refs = problem(spec)
    if _unsupported(spec, algo):
        return
    out = ops.conv2d(x[0], w, b, algo=algo, **spec.kwargs())
    check_close(out, refs["fprop_bias"][0], TOL32, np.float32, f"unbatched {spec.name}")
    out = ops.conv2d(x[-1], w, None, algo=algo, **spec.kwargs())
    check_close(out, refs["fprop"][-1], TOL32, np.float32, f"unbatched {spec.name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algo,isa", algo_isa_params(), indirect=["isa"])
@pytest.mark.parametrize("spec", spec_params(TEST_SHAPES[::3]))
def test_empty_batch(spec, algo, isa, dtype):
    x, w, b, g, _ = problem(spec, dtype)
    if _unsupported(spec, algo):
        return
    x0 = np.zeros((0,) + x.shape[1:], dtype)
    g0 = np.zeros((0,) + g.shape[1:], dtype)
    kw = dict(spec.kwargs(), algo=algo)
    y = ops.conv2d(x0, w, b, **kw)
    assert isinstance(y, np.ndarray) and y.shape == (0,) + g.shape[1:] and y.dtype == dtype
    dx = ops.conv2d_input((0,) + x.shape[1:], w, g0, **kw)
    assert isinstance(dx, np.ndarray) and dx.shape == x0.shape and dx.dtype == dtype
    dw = ops.conv2d_weight(x0, w.shape, g0, **kw)
    assert isinstance(dw, np.ndarray) and dw.shape == w.shape and dw.dtype == dtype
    np.testing.assert_array_equal(dw, np.zeros(w.shape, dtype))


def test_empty_batch_weight_grad_is_zero_not_garbage():
    # run something first so that recycled buffers would hold non-zeros
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    for algo in ("direct", "im2col", "auto"):
        ops.conv2d_weight(x, w.shape, ops.conv2d(x, w, algo=algo), algo=algo)
        dw = ops.conv2d_weight(x[:0], w.shape, np.zeros((0, 4, 7, 7), np.float32), algo=algo)
        np.testing.assert_array_equal(dw, np.zeros(w.shape, np.float32))


# ------------------------------------------------------------------ memory layouts
def _layout(a, how, rng):
    """A view of a copy of `a` with the given memory layout (same values)."""
    if how == "contiguous":
        return np.ascontiguousarray(a)
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "slice":  # every other element of a larger, noisy buffer
        big = rng.standard_normal(tuple(2 * n + 1 for n in a.shape)).astype(a.dtype)
        idx = tuple(slice(1, 1 + 2 * n, 2) for n in a.shape)
        big[idx] = a
        return big[idx]
    if how == "negative":  # reversed along every axis, viewed back
        rev = np.ascontiguousarray(a[(slice(None, None, -1),) * a.ndim])
        return rev[(slice(None, None, -1),) * a.ndim]
    if how == "transposed":  # C-contiguous in reversed axis order
        t = np.ascontiguousarray(a.transpose(tuple(range(a.ndim))[::-1]))
        return t.transpose(tuple(range(a.ndim))[::-1])
    raise AssertionError(how)


LAYOUT_SPECS = [s for s in TEST_SHAPES if s.name in (
    "odd_3x3_pad1", "groups2", "depthwise_x2_s2", "k1x1_s2", "sep_1x7", "same_s2_3x3",
    "nonsquare_all", "moderate_odd_channels", "k1x1_plain", "even_2x3_pairpad")]


@pytest.mark.parametrize("how", ["fortran", "slice", "negative", "transposed"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("algo,isa", algo_isa_params(), indirect=["isa"])
@pytest.mark.parametrize("spec", spec_params(LAYOUT_SPECS))
def test_any_strides(spec, algo, isa, op, how, rng):
    x, w, b, g, refs = problem(spec)
    if _unsupported(spec, algo):
        return
    xs, ws, bs, gs = (_layout(a, how, rng) for a in (x, w, b, g))
    for a, c in ((xs, x), (ws, w), (bs, b), (gs, g)):
        np.testing.assert_array_equal(a, c)
    assert not xs.flags.c_contiguous
    expected = run_op(op, spec, x, w, b, g, algo=algo)
    got = run_op(op, spec, xs, ws, bs, gs, algo=algo)
    check_close(got, refs[op], TOL32, np.float32, f"{spec.name} {op} {algo} {how}")
    np.testing.assert_array_equal(got, expected, err_msg=f"{how} layout differs from the contiguous copy")
    # the inputs are not modified
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ws, w)
    np.testing.assert_array_equal(gs, g)


def test_inputs_not_modified_and_readonly_ok():
    x, w, b, g, refs = problem(TEST_SHAPES[10])  # read-only arrays
    spec = TEST_SHAPES[10]
    for op in OPS:
        check_close(run_op(op, spec, x, w, b, g), refs[op], TOL32, np.float32, op)


def test_list_inputs_are_converted():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 4, 4))
    w = rng.standard_normal((3, 2, 2, 2))
    out = ops.conv2d(x.tolist(), w.tolist(), [1.0, 2.0, 3.0])
    check_close(out, ref.conv2d(x, w, [1.0, 2.0, 3.0]), TOL64, np.float64, "list inputs")


# ------------------------------------------------------------------ out=
@pytest.mark.parametrize("dtype,tol", [(np.float32, TOL32), (np.float64, TOL64)])
@pytest.mark.parametrize("algo,isa", algo_isa_params(), indirect=["isa"])
@pytest.mark.parametrize("spec", spec_params(LAYOUT_SPECS))
def test_out_reuse(spec, algo, isa, dtype, tol):
    x, w, b, g, refs = problem(spec, dtype)
    x2, w2, b2, g2, refs2 = problem(spec, dtype, seed=1)
    if _unsupported(spec, algo):
        return
    out = np.full(output_shape(spec), np.nan, dtype)
    res = ops.conv2d(x, w, b, out=out, algo=algo, **spec.kwargs())
    assert res is out
    check_close(out, refs["fprop_bias"], tol, dtype, "out= first call")
    res = ops.conv2d(x2, w2, None, out=out, algo=algo, **spec.kwargs())  # overwritten, not accumulated
    assert res is out
    check_close(out, refs2["fprop"], tol, dtype, "out= reused")
    res = ops.conv2d(x2, w2, b2, out=out, algo=algo, **spec.kwargs())
    assert res is out
    check_close(out, refs2["fprop_bias"], tol, dtype, "out= reused with bias")


def test_out_empty_batch():
    spec = TEST_SHAPES[3]
    x, w, b, g, refs = problem(spec)
    out = np.empty((0,) + refs["fprop"].shape[1:], np.float32)
    assert ops.conv2d(x[:0], w, b, out=out, **spec.kwargs()) is out


def test_out_unbatched():
    x, w, b, g, refs = problem(TEST_SHAPES[3])
    spec = TEST_SHAPES[3]
    out = np.full(refs["fprop"].shape[1:], np.nan, np.float32)
    assert ops.conv2d(x[0], w, b, out=out, **spec.kwargs()) is out
    check_close(out, refs["fprop_bias"][0], TOL32, np.float32, "unbatched out=")


# ------------------------------------------------------------------ threads
THREAD_SPECS = [s for s in TEST_SHAPES if s.name.startswith("moderate")] + [
    s for s in TEST_SHAPES if s.name in ("depthwise_x2_s2", "sep_7x1", "k1x1_wide", "groups3_dil2")]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("algo,isa", algo_isa_params(), indirect=["isa"])
@pytest.mark.parametrize("spec", spec_params(THREAD_SPECS))
def test_threads_bit_identical(spec, algo, isa, op, threads):
    x, w, b, g, refs = problem(spec)
    if _unsupported(spec, algo):
        return
    fastconv.set_num_threads(1)
    assert fastconv.get_num_threads() == 1
    one = run_op(op, spec, x, w, b, g, algo=algo)
    fastconv.set_num_threads(2)
    assert fastconv.get_num_threads() == 2
    two = run_op(op, spec, x, w, b, g, algo=algo)
    check_close(two, refs[op], TOL32, np.float32, "2 threads")
    np.testing.assert_array_equal(one, two, err_msg="1 and 2 threads differ")
    fastconv.set_num_threads(3)  # the README promises bit-identical results for any count
    np.testing.assert_array_equal(run_op(op, spec, x, w, b, g, algo=algo), one, err_msg="1 and 3 threads differ")
    fastconv.set_num_threads(2)
    np.testing.assert_array_equal(run_op(op, spec, x, w, b, g, algo=algo), two, err_msg="not deterministic")


# ------------------------------------------------------------------ reference backend
def test_backends_available():
    av = fastconv.backends.available()
    assert "cpu" in av and "reference" in av


@pytest.mark.parametrize("dtype,tol", [(np.float32, TOL32), (np.float64, TOL64)])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("spec", spec_params())
def test_reference_backend(spec, op, dtype, tol):
    x, w, b, g, refs = problem(spec, dtype)
    out = run_op(op, spec, x, w, b, g, backend="reference")
    check_close(out, refs[op], tol, dtype, f"reference backend {spec.name} {op}")


@pytest.mark.parametrize("spec", spec_params(TEST_SHAPES[::4]))
def test_reference_backend_extras(spec):
    x, w, b, g, refs = problem(spec)
    # unbatched, N=0 and float16 through the reference backend too
    out = ops.conv2d(x[0], w, b, backend="reference", **spec.kwargs())
    check_close(out, refs["fprop_bias"][0], TOL32, np.float32, "reference unbatched")
    y0 = ops.conv2d(x[:0], w, b, backend="reference", **spec.kwargs())
    assert y0.shape == (0,) + refs["fprop"].shape[1:]
    dw0 = ops.conv2d_weight(x[:0], w.shape, g[:0], backend="reference", **spec.kwargs())
    np.testing.assert_array_equal(dw0, np.zeros(w.shape, np.float32))
    x16, w16, b16, g16, refs16 = problem(spec, np.float16)
    out = ops.conv2d(x16, w16, b16, backend="reference", **spec.kwargs())
    _check_fp16(out, refs16["fprop_bias"], "reference fp16")


# ------------------------------------------------------------------ misc semantics
@pytest.mark.parametrize("spec", spec_params([s for s in TEST_SHAPES if s.padding == "same"]))
def test_same_padding_output_size(spec):
    # TF rule: P = ceil(H / stride), Q = ceil(W / stride)
    x, w, b, g, refs = problem(spec)
    sh, sw = (spec.stride, spec.stride) if isinstance(spec.stride, int) else spec.stride
    y = ops.conv2d(x, w, **spec.kwargs())
    assert y.shape == (spec.N, spec.K, -(-spec.H // sh), -(-spec.W // sw))


def test_same_equals_explicit_asymmetric_padding():
    # 'same' with stride 2 and an even kernel == zero-padding by hand then 'valid'
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 10))
    w = rng.standard_normal((4, 3, 4, 2))
    t, bo, l, r = ref.resolve_padding("same", (9, 10), (4, 2), 2, 1)
    assert (t, bo) != (bo, t) or (l, r) != (r, l)  # genuinely asymmetric
    xp = np.pad(x, ((0, 0), (0, 0), (t, bo), (l, r)))
    np.testing.assert_allclose(ops.conv2d(x, w, stride=2, padding="same"),
                               ops.conv2d(xp, w, stride=2, padding="valid"), rtol=1e-13, atol=1e-13)


def test_integer_like_arguments():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 4, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    y = ops.conv2d(x, w, stride=np.int64(2), padding=(np.int32(1), 1), dilation=np.int16(1), groups=np.int64(2))
    check_close(y, ref.conv2d(x, w, stride=2, pads=(1, 1, 1, 1), groups=2), TOL32, np.float32, "numpy ints")
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx = ops.conv2d_input(tuple(np.array([1, 4, 9, 9])), w, g, stride=(2, np.int64(2)), padding=1, groups=2)
    check_close(dx, ref.conv2d_input(x.shape, w, g, stride=2, pads=(1, 1, 1, 1), groups=2), TOL32, np.float32, "")
    dw = ops.conv2d_weight(x, [np.int64(4), 2, 3, 3], g, stride=2, padding=1, groups=2)
    check_close(dw, ref.conv2d_weight(x, w.shape, g, stride=2, pads=(1, 1, 1, 1), groups=2), TOL32, np.float32, "")


def test_bias_gradient_is_sum():
    # documented: bias gradient = grad_output.sum((0, 2, 3)); check forward bias consistency
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 6, 6))
    w = rng.standard_normal((5, 3, 3, 3))
    b = rng.standard_normal(5)
    g = rng.standard_normal((2, 5, 4, 4))
    db = rng.standard_normal(5)
    lhs = np.vdot(ops.conv2d(x, w, b + db), g) - np.vdot(ops.conv2d(x, w, b), g)
    assert lhs == pytest.approx(np.vdot(g.sum((0, 2, 3)), db), rel=1e-10)


@pytest.mark.parametrize("algo,isa", algo_isa_params(), indirect=["isa"])
def test_results_independent_of_previous_calls(algo, isa):
    # a big call followed by a small one must not leak stale workspace data
    rng = np.random.default_rng(4)
    big = [s for s in TEST_SHAPES if s.name == "moderate_3x3"][0]
    small = [s for s in TEST_SHAPES if s.name == "k1x1_s2"][0]
    for spec in (big, small, big, small):
        x, w, b, g, refs = problem(spec)
        if _unsupported(spec, algo):
            continue
        for op in OPS:
            check_close(run_op(op, spec, x, w, b, g, algo=algo), refs[op], TOL32, np.float32, f"{spec.name} {op}")
    del rng


# ------------------------------------------------------------------ untouched positions
@pytest.mark.parametrize("algo,isa", algo_isa_params(), indirect=["isa"])
@pytest.mark.parametrize("spec", spec_params([s for s in TEST_SHAPES if s.name in (
    "k1x1_s3", "k2x2_s5", "k3x3_s4_pad1", "k1x1_s2", "k1x1_s23", "valid_k1x1_s2")]))
def test_dgrad_positions_no_tap_reads_are_exactly_zero(spec, algo, isa):
    # with stride > kernel some input pixels feed no output: their gradient is 0.0
    # exactly (not left-over workspace data), and so is the rest of the reference
    x, w, b, g, refs = problem(spec)
    if _unsupported(spec, algo, "dgrad"):
        return
    # a first call with NaN-filled data, so any reused workspace holds NaNs
    ops.conv2d_input(x.shape, w, np.full_like(g, np.nan), algo=algo, **spec.kwargs())
    dx = ops.conv2d_input(x.shape, w, g, algo=algo, **spec.kwargs())
    untouched = refs["dgrad"] == 0
    assert untouched.any()
    np.testing.assert_array_equal(dx[untouched], 0.0)
    check_close(dx, refs["dgrad"], TOL32, np.float32, "dgrad")


# ------------------------------------------------------------------ long reductions / many tiles
# C/groups*R*S >= 65536: im2col's 16 MiB column tiles shrink to their 64-column
# minimum, so these cheap problems (few outputs) still cross several tile and
# KC-block boundaries in Fprop, Dgrad and Wgrad.
LONG_REDUCTION = [
    ConvSpec("crs65536_tiles", 1, 4096, 16, 14, 3, 4, 4, padding=(1, 0)),
    ConvSpec("crs73728_groups2_N2", 2, 4096, 14, 14, 2, 6, 6, padding=1, groups=2),
    ConvSpec("crs36864_same_s2", 1, 4096, 15, 13, 2, 3, 3, stride=2, padding="same"),
]


@pytest.mark.parametrize("dtype,tol", [(np.float32, TOL32), (np.float64, TOL64)])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("algo,isa", algo_isa_params(("auto", "direct", "im2col")), indirect=["isa"])
@pytest.mark.parametrize("spec", spec_params(LONG_REDUCTION))
def test_long_reductions(spec, algo, isa, op, dtype, tol):
    _check_matrix(spec, op, algo, dtype, tol)


@pytest.mark.parametrize("algo", ["direct", "im2col", "1x1", "separable"])
def test_out_aliasing_the_input_is_still_correct(algo):
    """out= may be the input itself (same shape when K == C and 1x1): no silent corruption."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((3, 3, 1, 1)).astype(np.float32)
    expected = ops.conv2d(x, w, algo=algo)
    xa = x.copy()
    got = ops.conv2d(xa, w, out=xa, algo=algo)
    assert got is xa
    np.testing.assert_allclose(xa, expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ winograd blocking
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("shape", [(9, 64, 48, 21, 19), (4, 96, 192, 17, 15)], ids=["small_dU", "large_dU"])
def test_winograd_many_tile_blocks(padding, shape):
    """Enough tiles for several tile blocks (parallel over blocks at 2 threads, serial blocks with
    parallel GEMMs at 3; Wgrad: chunked reduction for a small dU, the 16 positions split over the
    threads for a large one) and ragged last tiles (odd output sizes): float64 reference, and
    bit-identical for 1, 2 and 3 threads."""
    rng = np.random.default_rng(5 + padding)
    N, C, K, H, W = shape  # small_dU: 990 tiles, 5 blocks of 198; large_dU: 16*K*C*4 > 1 MiB, 2 Wgrad blocks
    pads = (padding,) * 4
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, 3, 3)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    y_ref = ref.conv2d(x64, w64, b64, pads=pads)
    g = rng.standard_normal(y_ref.shape).astype(np.float32)
    want = {"fprop": y_ref, "dgrad": ref.conv2d_input(x.shape, w64, g.astype(np.float64), pads=pads),
            "wgrad": ref.conv2d_weight(x64, w.shape, g.astype(np.float64), pads=pads)}
    runs = {"fprop": lambda: ops.conv2d(x, w, b, padding=padding, algo="winograd"),
            "dgrad": lambda: ops.conv2d_input(x.shape, w, g, padding=padding, algo="winograd"),
            "wgrad": lambda: ops.conv2d_weight(x, w.shape, g, padding=padding, algo="winograd")}
    before = fastconv.get_num_threads()
    try:
        for op, run in runs.items():
            fastconv.set_num_threads(1)
            one = run()
            check_close(one, want[op], TOL32, np.float32, f"winograd {op} padding {padding}")
            for t in (2, 3):
                fastconv.set_num_threads(t)
                np.testing.assert_array_equal(run(), one, err_msg=f"winograd {op}: 1 and {t} threads differ")
    finally:
        fastconv.set_num_threads(before)


# ------------------------------------------------------------------ tap pruning ("auto")
def _small_map_cases():
    rng = np.random.default_rng(77)
    cases = [((2, 8, 1, 1), (6, 8, 3, 3), dict(padding=1)),                 # ResNet-18 stage 4 on 32x32
             ((2, 4, 2, 2), (6, 4, 3, 3), dict(padding=1, stride=2)),       # its stride-2 entry: taps 1..2
             ((1, 3, 1, 5), (2, 3, 3, 3), dict(padding=1)),                 # rows pruned, columns kept
             ((2, 4, 3, 2), (4, 2, 5, 3), dict(padding=(2, 1), groups=2)),  # 5-row kernel on 3 rows
             ((1, 2, 1, 1), (3, 2, 3, 3), dict(padding=2, dilation=2))]     # dilated: only the centre
    for _ in range(12):
        k = int(rng.integers(1, 6))
        d = int(rng.integers(1, 3))
        pad = int(rng.integers(0, (k - 1) * d + 1))
        h, w_ = (int(v) for v in rng.integers(1, 4, 2))
        s = int(rng.integers(1, 4))
        if h + 2 * pad < (k - 1) * d + 1 or w_ + 2 * pad < (k - 1) * d + 1:
            continue
        cases.append(((2, 3, h, w_), (4, 3, k, k), dict(padding=pad, dilation=d, stride=s)))
    return cases


@pytest.mark.parametrize("xs,ws,kw", _small_map_cases())
def test_auto_prunes_padding_only_taps(xs, ws, kw):
    """"auto" drops the kernel taps that only read padding (e.g. 3x3/p1 on a 1x1 map runs as 1x1): the
    three ops still match the float64 reference, and Wgrad is exactly 0 on the dropped taps."""
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x = rng.standard_normal(xs)
    w = rng.standard_normal(ws)
    b = rng.standard_normal(ws[0])
    p = make_problem(xs, ws, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1), kw.get("groups", 1))
    pads = (p.pad_h, p.pad_bottom, p.pad_w, p.pad_right)
    rk = dict(stride=kw.get("stride", 1), pads=pads, dilation=kw.get("dilation", 1), groups=kw.get("groups", 1))
    y_ref = ref.conv2d(x, w, b, **rk)
    g = rng.standard_normal(y_ref.shape)
    for dt, tol in ((np.float32, TOL32), (np.float64, TOL64)):
        check_close(ops.conv2d(x.astype(dt), w.astype(dt), b.astype(dt), **kw), y_ref, tol, dt, "fprop")
        check_close(ops.conv2d_input(xs, w.astype(dt), g.astype(dt), **kw), ref.conv2d_input(xs, w, g, **rk),
                    tol, dt, "dgrad")
        dw = ops.conv2d_weight(x.astype(dt), ws, g.astype(dt), **kw)
        dw_ref = ref.conv2d_weight(x, ws, g, **rk)
        check_close(dw, dw_ref, tol, dt, "wgrad")
        assert np.array_equal(dw[dw_ref == 0], dw_ref[dw_ref == 0]), "taps that never meet the input: grad 0"


def test_auto_pruning_picks_1x1_for_a_1x1_map():
    assert ops.choose_algo((8, 512, 1, 1), (512, 512, 3, 3), padding=1) == "1x1"
    assert ops.choose_algo((8, 256, 2, 2), (512, 256, 3, 3), padding=1, stride=2) == "im2col"
    assert ops.choose_algo((8, 64, 8, 8), (64, 64, 3, 3), padding=1) == "winograd"


@pytest.mark.skipif("cuda-emu" not in fastconv.backends.available(), reason="cuda-emu module not built")
def test_choose_algo_reports_what_the_backend_runs():
    # cuda-emu has no winograd: auto runs im2col there, and choose_algo must say so (the benchmarks'
    # algo columns and bench_conv's Wgrad check use it)
    shape = ((2, 64, 8, 8), (64, 64, 3, 3))
    for op in ("fprop", "dgrad", "wgrad"):
        assert ops.choose_algo(*shape, padding=1, op=op, backend="cuda-emu") == "im2col"
        assert ops.choose_algo(*shape, padding=1, op=op, backend="reference") == "winograd"
        if "numba" in fastconv.backends.available():
            assert ops.choose_algo(*shape, padding=1, op=op, backend="numba") == "winograd"
    assert ops.choose_algo((2, 64, 9, 9), (32, 64, 1, 1), backend="cuda-emu") == "1x1"
    x = np.random.default_rng(0).standard_normal(shape[0])
    w = np.random.default_rng(1).standard_normal(shape[1])
    # the reported pick is what runs: forcing it gives the auto result bit for bit
    a = ops.choose_algo(*shape, padding=1, backend="cuda-emu")
    assert np.array_equal(ops.conv2d(x, w, padding=1, backend="cuda-emu"),
                          ops.conv2d(x, w, padding=1, backend="cuda-emu", algo=a))


@pytest.mark.parametrize("backend", [b for b in ("cpu", "numba", "cuda-emu") if b in backends.available()])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_values_reach_only_their_own_taps(backend, dtype):
    """An inf and a NaN in the input reach exactly the outputs and weight-gradient taps that read
    them, as torch and the float64 reference: the compiled im2col Wgrad's padded-width columns
    multiplied the zero gap columns of grad_output with the pixels straddling two rows (0 * inf =
    NaN in a tap that never reads that pixel). ReLU keeps a NaN (numba's im2col, 1x1 and separable
    epilogue turned it into 0)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5, 6)).astype(dtype)
    x[0, 1, 0, 5] = np.inf   # the last column: read by the last tap column only
    x[1, 2, 3, 0] = np.nan   # the first column
    g = rng.standard_normal((2, 4, 4, 4)).astype(dtype)
    want = ref.conv2d_weight(x, (4, 3, 2, 3), g)
    for algo in ("im2col", "direct", "auto"):
        got = ops.conv2d_weight(x, (4, 3, 2, 3), g, algo=algo, backend=backend)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{algo}: NaN taps")
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"{algo}: inf taps")
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], rtol=1e-4 if dtype == np.float32 else 1e-10,
                                   atol=1e-4 if dtype == np.float32 else 1e-10)
    # ReLU epilogue with a NaN input pixel, every algorithm that takes the kernel
    xn = rng.standard_normal((1, 4, 4, 5)).astype(dtype)
    xn[0, 0, 1, 2] = np.nan
    for kshape, algo in (((3, 4, 1, 1), "1x1"), ((3, 4, 1, 3), "separable"), ((3, 4, 2, 2), "im2col"),
                         ((3, 4, 2, 2), "direct")):
        w = rng.standard_normal(kshape).astype(dtype)
        b = rng.standard_normal(3).astype(dtype)
        y = ops.conv2d(xn, w, b, algo=algo, backend=backend, activation="relu")
        lin = ref.conv2d(xn, w, b)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(lin), err_msg=f"{algo}: NaN outputs")
        np.testing.assert_allclose(y[~np.isnan(y)], np.maximum(lin, 0)[~np.isnan(lin)], rtol=1e-4, atol=1e-5)
