"""The CUDA kernels (csrc/cuda/*.cu) executed by the CPU grid emulator (backend "cuda-emu").

Every CUDA kernel runs on the shape catalog against the compiled C++ CPU path
(backend "cpu") and against the independent float64 reference, relative error
<= 2e-5 (max|out - ref| / max|ref|).  A variant of the implicit GEMM with its
__syncthreads() removed must come out wrong: the emulator's random schedule
(one thread at a time between barriers, shuffled) has to expose it.

The emulator hands a baton between OS threads at every barrier (~10 us each),
so each (shape, operator) is costed in baton hand-overs first; the few catalog
entries above the budget are skipped visibly (the Wgrad of the moderate_* and
k1x1_wide shapes: one block of >= 32 threads and ~7 barrier phases per weight
element).

The implicit-GEMM Dgrad (a gather) and Wgrad (N*P*Q split into chunks reduced
in a fixed order) run on the catalog, on random shapes, on multi-tile and
multi-chunk shapes, and against a variant with an off-by-one K loop that must
be caught.
"""
import math

import numpy as np
import pytest

from fastconv import ops
from fastconv.backends import cuda_emu

import reference as ref
from helpers import TOL32, TOL64, check_close, expected_algos, output_shape, problem, run_op, spec_params
from shapes import ConvSpec, TEST_SHAPES

pytestmark = pytest.mark.skipif(not cuda_emu.AVAILABLE,
                                reason=f"fastconv._emu not built: {cuda_emu.IMPORT_ERROR}")

BUDGET = 90_000  # baton hand-overs per (shape, op): ~0.9 s


def _cost(spec, op, algo):
    """Hand-overs the random schedule needs: threads x (barrier phases + 1), mirroring the launchers."""
    N, K, P, Q = output_shape(spec)
    g = spec.groups
    Cg, Kg = spec.C // g, K // g
    npq, crs = N * P * Q, Cg * spec.R * spec.S
    if op in ("fprop", "fprop_bias", "fprop_relu"):
        if algo == "im2col":
            return math.ceil(npq / 64) * math.ceil(Kg / 64) * g * 64 * (math.ceil(crs / 8) + 2)
        return math.ceil(N * K * P * Q / 256) * 256
    if op == "dgrad":
        if algo == "im2col":  # one slice per stride phase, each covering the largest phase
            sh, sw = (spec.stride, spec.stride) if isinstance(spec.stride, int) else spec.stride
            cols = spec.N * math.ceil(spec.H / sh) * math.ceil(spec.W / sw)
            return (math.ceil(cols / 64) * math.ceil(Cg / 64) * g * sh * sw * 64
                    * (math.ceil(Kg * spec.R * spec.S / 8) + 2))
        return math.ceil(spec.N * spec.C * spec.H * spec.W / 256) * 256
    if algo == "im2col":  # wgrad: one K walk over N*P*Q in total (split into chunks), plus the reduction
        return math.ceil(Kg / 64) * math.ceil(crs / 64) * g * 64 * (math.ceil(npq / 8) + 2) + K * crs
    nt = 32
    while nt < 256 and nt * 8 < npq:
        nt *= 2
    return K * Cg * spec.R * spec.S * nt * (int(math.log2(nt)) + 2)


def _params(op, algo):
    out = []
    for s in TEST_SHAPES:
        c = _cost(s, op, algo)
        marks = () if c <= BUDGET else pytest.mark.skip(
            reason=f"{s.name} {op}: ~{c} emulator hand-overs > {BUDGET} (too slow for the suite)")
        out.append(pytest.param(s, id=s.name, marks=marks))
    return out


def _cpu(op, spec, x, w, b, g, algo):
    return run_op(op, spec, x, w, b, g, algo=algo, backend="cpu")


@pytest.fixture(autouse=True)
def _random_schedule():
    cuda_emu.set_schedule("random")
    yield
    cuda_emu.set_schedule("random")


# ------------------------------------------------------------ every kernel vs CPU
@pytest.mark.parametrize("algo", ["direct", "im2col"])
@pytest.mark.parametrize("op", ["fprop", "fprop_bias"])
def test_fprop_matches_cpu(op, algo, request):
    # one test per (op, algo) over the catalog keeps pytest overhead low; the
    # failing shape is named in the message
    ran = 0
    for s in TEST_SHAPES:
        if _cost(s, op, algo) > BUDGET:
            continue
        x, w, b, g, refs = problem(s)
        got = run_op(op, s, x, w, b, g, algo=algo, backend="cuda-emu")
        check_close(got, refs[op], TOL32, np.float32, f"cuda-emu {algo} {op} {s.name} vs float64 reference")
        cpu = _cpu(op, s, x, w, b, g, algo)
        check_close(got, cpu.astype(np.float64), TOL32, np.float32, f"cuda-emu {algo} {op} {s.name} vs cpu")
        ran += 1
    assert ran >= len(TEST_SHAPES) - 2, f"only {ran} shapes within the emulator budget"


@pytest.mark.parametrize("spec", _params("dgrad", "direct"))
def test_dgrad_matches_cpu(spec):
    x, w, b, g, refs = problem(spec)
    got = run_op("dgrad", spec, x, w, b, g, algo="direct", backend="cuda-emu")
    check_close(got, refs["dgrad"], TOL32, np.float32, f"cuda-emu dgrad {spec.name} vs reference")
    check_close(got, _cpu("dgrad", spec, x, w, b, g, "direct").astype(np.float64), TOL32, np.float32,
                f"cuda-emu dgrad {spec.name} vs cpu")


@pytest.mark.parametrize("spec", _params("wgrad", "direct"))
def test_wgrad_matches_cpu(spec):
    x, w, b, g, refs = problem(spec)
    got = run_op("wgrad", spec, x, w, b, g, algo="direct", backend="cuda-emu")
    check_close(got, refs["wgrad"], TOL32, np.float32, f"cuda-emu wgrad {spec.name} vs reference")
    check_close(got, _cpu("wgrad", spec, x, w, b, g, "direct").astype(np.float64), TOL32, np.float32,
                f"cuda-emu wgrad {spec.name} vs cpu")


@pytest.mark.parametrize("op", ["dgrad", "wgrad"])
def test_igemm_backward_matches_cpu(op):
    # the implicit-GEMM Dgrad (gather) and Wgrad (chunked N*P*Q) over the catalog
    ran = 0
    for s in TEST_SHAPES:
        if _cost(s, op, "im2col") > BUDGET:
            continue
        x, w, b, g, refs = problem(s)
        got = run_op(op, s, x, w, b, g, algo="im2col", backend="cuda-emu")
        check_close(got, refs[op], TOL32, np.float32, f"cuda-emu im2col {op} {s.name} vs float64 reference")
        cpu = _cpu(op, s, x, w, b, g, "im2col")
        check_close(got, cpu.astype(np.float64), TOL32, np.float32, f"cuda-emu im2col {op} {s.name} vs cpu")
        ran += 1
    assert ran >= len(TEST_SHAPES) - 4, f"only {ran} shapes within the emulator budget"


@pytest.mark.parametrize("algo", ["direct", "im2col"])
@pytest.mark.parametrize("spec", spec_params([TEST_SHAPES[i] for i in (5, 9, 18, 21, 33, 48)]))
def test_fprop_relu_epilogue(spec, algo):
    x, w, b, g, refs = problem(spec)
    got = ops.conv2d(x, w, b, algo=algo, backend="cuda-emu", activation="relu", **spec.kwargs())
    check_close(got, np.maximum(refs["fprop_bias"], 0), TOL32, np.float32, f"relu {algo} {spec.name}")
    cpu = ops.conv2d(x, w, b, algo=algo, backend="cpu", activation="relu", **spec.kwargs())
    check_close(got, cpu.astype(np.float64), TOL32, np.float32, f"relu {algo} {spec.name} vs cpu")
    assert (got >= 0).all() and (got == 0).any()
    xn = x.copy()
    xn[0, 0] = np.nan  # a NaN stays NaN through the epilogue, as through ops.relu and on the CPU
    got = ops.conv2d(xn, w, b, algo=algo, backend="cuda-emu", activation="relu", **spec.kwargs())
    cpu = ops.conv2d(xn, w, b, algo=algo, backend="cpu", activation="relu", **spec.kwargs())
    assert np.isnan(got).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(cpu))


@pytest.mark.parametrize("op", ["fprop_bias", "dgrad", "wgrad"])
@pytest.mark.parametrize("algo", ["direct", "im2col"])
def test_float64(op, algo):
    spec = TEST_SHAPES[9]  # odd_3x3_pad1
    x, w, b, g, refs = problem(spec, np.float64)
    got = run_op(op, spec, x, w, b, g, algo=algo, backend="cuda-emu")
    check_close(got, refs[op], TOL64, np.float64, f"cuda-emu float64 {algo} {op}")


# ------------------------------------------------------- tiles, tails, groups
@pytest.mark.parametrize("spec", [
    # several 64x64 tiles in both GEMM dimensions with ragged edges, and
    # C*R*S not a multiple of the 8-deep K step (21 steps with a tail of 1)
    ConvSpec("igemm_tiles", 1, 19, 12, 11, 70, 3, 3, padding=1),
    # groups (grid.z) with ragged per-group tiles
    ConvSpec("igemm_groups", 2, 6, 9, 10, 66, 3, 1, stride=(2, 1), padding=(1, 0), groups=3),
    # Dgrad stride phases: stride 3x2 with dilation 2 (phases without any tap: their dx is 0),
    # and stride 4 > kernel 2 (rows no window reaches)
    ConvSpec("dgrad_phases", 2, 3, 11, 10, 4, 3, 3, stride=(3, 2), padding=(1, 2), dilation=2),
    ConvSpec("dgrad_stride_gt_kernel", 1, 4, 13, 9, 5, 2, 2, stride=4, padding=1, groups=1),
], ids=lambda s: s.name)
def test_igemm_multi_tile(spec):
    x, w, b, g, refs = problem(spec)
    for op in ("fprop_bias", "dgrad", "wgrad"):
        got = run_op(op, spec, x, w, b, g, algo="im2col", backend="cuda-emu")
        check_close(got, refs[op], TOL32, np.float32, f"igemm {op} {spec.name}")


def _chunks(spec):
    p, emu = _emu_problem(spec)
    return emu.igemm_wgrad_chunks(p)


@pytest.mark.parametrize("spec", [
    # N*P*Q = 4*15*15 = 900 -> 3 chunks of 304 (a ragged last chunk), stride 2, padding
    ConvSpec("wgrad_chunks", 4, 3, 29, 30, 5, 3, 3, stride=2, padding=1),
    # 8*16*16 = 2048 -> 8 chunks, groups 2 (grid.z = group * chunks + chunk), dilation
    ConvSpec("wgrad_chunks_groups", 8, 4, 20, 20, 4, 3, 3, padding=0, dilation=2, groups=2),
], ids=lambda s: s.name)
def test_igemm_wgrad_split(spec):
    assert _chunks(spec) > 1, "the shape must exercise the split-K reduction"
    x, w, b, g, refs = problem(spec)
    got = run_op("wgrad", spec, x, w, b, g, algo="im2col", backend="cuda-emu")
    check_close(got, refs["wgrad"], TOL32, np.float32, f"chunked wgrad {spec.name}")
    check_close(got, _cpu("wgrad", spec, x, w, b, g, "im2col").astype(np.float64), TOL32, np.float32,
                f"chunked wgrad {spec.name} vs cpu")
    # deterministic: the same bits under another schedule (chunks summed in a fixed order)
    cuda_emu.set_schedule("concurrent", 11)
    again = run_op("wgrad", spec, x, w, b, g, algo="im2col", backend="cuda-emu")
    np.testing.assert_array_equal(got, again)


def _random_specs(count, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        R, S = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        sh, sw = int(rng.integers(1, 5)), int(rng.integers(1, 5))  # stride > kernel happens
        dh, dw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        ph, pw = int(rng.integers(0, R)), int(rng.integers(0, S))
        H = int(rng.integers(max(1, dh * (R - 1) + 1 - 2 * ph), 14))
        W = int(rng.integers(max(1, dw * (S - 1) + 1 - 2 * pw), 14))
        g = int(rng.choice([1, 1, 2, 3]))
        C, K = g * int(rng.integers(1, 6)), g * int(rng.integers(1, 6))
        out.append(ConvSpec(f"rand{seed}_{i}", int(rng.integers(1, 4)), C, H, W, K, R, S, stride=(sh, sw),
                            padding=(ph, pw), dilation=(dh, dw), groups=g))
    return out


@pytest.mark.parametrize("spec", _random_specs(8, 2026), ids=lambda s: s.name)
def test_igemm_random_shapes(spec):
    # random odd sizes, strides above the kernel size, dilation, groups, 1x1 images
    x, w, b, g, refs = problem(spec)
    for op in ("fprop_bias", "dgrad", "wgrad"):
        got = run_op(op, spec, x, w, b, g, algo="im2col", backend="cuda-emu")
        check_close(got, refs[op], TOL32, np.float32, f"igemm {op} {spec.name}")


# ------------------------------------------------------- the emulator catches bugs
def _emu_problem(spec):
    from fastconv import _emu
    from fastconv.problem import make_problem

    p = make_problem(spec.input_shape, spec.weight_shape, **spec.kwargs())
    return _emu.ConvProblem(**p.kernel_args()), _emu


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_missing_barrier_is_caught(seed):
    spec = ConvSpec("barrier", 2, 8, 9, 9, 12, 3, 3, padding=1)  # 9 K steps of 8, 3 column tiles
    x, w, b, g, refs = problem(spec)
    p, emu = _emu_problem(spec)
    cuda_emu.set_schedule("random", seed)
    good = np.empty(refs["fprop"].shape, np.float32)
    emu.fprop("im2col", p, x, w, None, good, False)
    check_close(good, refs["fprop"], TOL32, np.float32, "intact implicit GEMM")
    bad = np.empty_like(good)
    emu._igemm_fprop_without_barrier(p, x, w, bad)
    err = ref.rel_err(bad, refs["fprop"])
    assert not (err <= 1e-3), f"the barrier-free implicit GEMM was not caught (seed {seed}): rel err {err:.2e}"


@pytest.mark.parametrize("op", ["fprop", "dgrad", "wgrad"])
def test_off_by_one_is_caught(op):
    # the implicit GEMM of `op` with an off-by-one K loop (its last 8-deep slice
    # never multiplied): the intact kernel passes, the defective one must fail
    spec = ConvSpec("off_by_one", 2, 5, 9, 8, 6, 3, 3, stride=2, padding=1)  # K depths 45, 54 and 50
    x, w, b, g, refs = problem(spec)
    p, emu = _emu_problem(spec)
    a, bb = {"fprop": (x, w), "dgrad": (g, w), "wgrad": (x, g)}[op]
    intact = run_op(op, spec, x, w, b, g, algo="im2col", backend="cuda-emu")
    check_close(intact, refs[op], TOL32, np.float32, f"intact implicit GEMM {op}")
    bad = np.empty(refs[op].shape, np.float32)
    emu._igemm_defective(op, p, a, bb, bad)
    err = ref.rel_err(bad, refs[op])
    assert not (err <= 1e-3), f"the off-by-one {op} kernel was not caught: rel err {err:.2e}"
    with pytest.raises(ValueError, match="op must be"):
        emu._igemm_defective("xgrad", p, a, bb, bad)


def test_concurrent_schedule():
    # all threads of a block at once under the OS scheduler: same results
    cuda_emu.set_schedule("concurrent", 7)
    assert cuda_emu.get_schedule() == "concurrent"
    spec = TEST_SHAPES[18]  # groups2
    x, w, b, g, refs = problem(spec)
    for op in ("fprop_bias", "dgrad", "wgrad"):
        for algo in ("direct", "im2col"):
            got = run_op(op, spec, x, w, b, g, algo=algo, backend="cuda-emu")
            check_close(got, refs[op], TOL32, np.float32, f"concurrent {algo} {op}")


def test_deterministic_across_schedules():
    spec = TEST_SHAPES[10]  # odd_5x5_s2
    x, w, b, g, _ = problem(spec)
    outs = []
    for sched, seed in (("random", 1), ("random", 2), ("concurrent", 3)):
        cuda_emu.set_schedule(sched, seed)
        outs.append([run_op(op, spec, x, w, b, g, algo=a, backend="cuda-emu")
                     for op, a in (("fprop_bias", "im2col"), ("fprop_bias", "direct"), ("dgrad", "direct"),
                                   ("wgrad", "direct"), ("dgrad", "im2col"), ("wgrad", "im2col"))])
    for other in outs[1:]:
        for a, o in zip(outs[0], other):
            np.testing.assert_array_equal(a, o)


# ------------------------------------------------------------- backend plumbing
def test_backend_registry_and_auto():
    import fastconv

    assert "cuda-emu" in fastconv.backends.available()
    spec = TEST_SHAPES[28]  # k1x1_plain: "auto" picks "1x1", which this backend runs with its 1x1 GEMM kernels
    x, w, b, g, refs = problem(spec)
    got = ops.conv2d(x, w, b, backend="cuda-emu", **spec.kwargs())
    check_close(got, refs["fprop_bias"], TOL32, np.float32, "auto through cuda-emu")
    got = ops.conv2d_input(x.shape, w, g, backend="cuda-emu", **spec.kwargs())
    check_close(got, refs["dgrad"], TOL32, np.float32, "auto dgrad through cuda-emu")


def test_supports_and_errors():
    from fastconv import _emu
    from fastconv.problem import make_problem

    p = make_problem((1, 4, 5, 5), (4, 4, 3, 3))
    assert cuda_emu.supports("direct", p) == "" and cuda_emu.supports("im2col", p) == ""
    # one grid z-slice per group: more than 65535 groups cannot launch
    big = _emu.ConvProblem(N=1, C=70000, H=1, W=1, K=70000, R=1, S=1, P=1, Q=1, pad_h=0, pad_w=0,
                           stride_h=1, stride_w=1, dil_h=1, dil_w=1, groups=70000)
    assert "65535" in _emu.supports("im2col", big)
    assert _emu.supports("direct", big) == ""
    # an algorithm without CUDA kernels (the CPU-only winograd, a made-up name) is refused with a reason
    assert "no 'winograd' kernels" in cuda_emu.supports("winograd", p)
    assert "no 'fft' kernels" in cuda_emu.supports("fft", p)
    x = np.zeros((1, 4, 5, 5), np.float32)
    w = np.zeros((4, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match="output"):
        cuda_emu.fprop("direct", p, x, w, None, np.empty((1, 4, 2, 2), np.float32), False)
    with pytest.raises(TypeError, match="dtype"):
        cuda_emu.fprop("direct", p, x, w.astype(np.float64), None, np.empty((1, 4, 3, 3), np.float32), False)
    with pytest.raises(ValueError, match="schedule"):
        cuda_emu.set_schedule("sequential")


# ------------------------------------------- 1x1, separable and tiled direct kernels
# The kernel families of issue #4: "1x1" (a plain GEMM on the implicit GEMM's
# tiled core with 1x1 loaders: float32 64x64 tiles of 64 threads, float64 32x32
# tiles of 32 threads; Dgrad's GEMM covers the pixels on the stride grid, a
# zero-fill kernel the rest), "separable" (1xn / nx1: 128-thread blocks, 32 line
# positions x 16 channels, reduction channels staged in shared memory; Wgrad one
# block per 16x8x8 (k, c, tap) tile), and the register-tiled direct Fprop.
NEW_ALGOS = ("1x1", "separable")


def _new_cost(spec, op, algo, dtype=np.float32):
    """Baton hand-overs of the 1x1 / separable launchers (threads x (barrier phases + 1))."""
    N, K, P, Q = output_shape(spec)
    g = spec.groups
    Cg, Kg = spec.C // g, K // g
    npq = N * P * Q
    if algo == "1x1":
        t = 64 if dtype == np.float32 else 32
        if op in ("fprop", "fprop_bias", "fprop_relu"):
            return math.ceil(npq / t) * math.ceil(Kg / t) * g * t * (math.ceil(Cg / 8) + 2)
        if op == "dgrad":  # the GEMM over N*P*Q pixels, plus the zero-fill of the others
            return (math.ceil(npq / t) * math.ceil(Cg / t) * g * t * (math.ceil(Kg / 8) + 2)
                    + math.ceil(N * spec.C * spec.H * spec.W / 256) * 256)
        return math.ceil(Kg / t) * math.ceil(Cg / t) * g * t * (math.ceil(npq / 8) + 2) + K * Cg
    # separable: the line is W for 1xn (and 1x1), H for nx1
    line_w = spec.R == 1
    taps = spec.S if line_w else spec.R
    in_len, in_cross = (spec.W, spec.H) if line_w else (spec.H, spec.W)
    out_len, out_cross = (Q, P) if line_w else (P, Q)
    if op in ("fprop", "fprop_bias", "fprop_relu"):
        return math.ceil(out_len / 32) * out_cross * N * math.ceil(K / 16) * 128 * (2 * math.ceil(spec.C / 8) + 1)
    if op == "dgrad":
        return math.ceil(in_len / 32) * in_cross * N * math.ceil(spec.C / 16) * 128 * (2 * math.ceil(K / 8) + 1)
    return (math.ceil(K / 16) * math.ceil(spec.C / 8) * math.ceil(taps / 8) * 128
            * (2 * N * out_cross * math.ceil(out_len / 32) + 1))


def _takes(spec, algo):
    from fastconv.ops.conv import _supports
    from fastconv.problem import make_problem

    return _supports(algo, make_problem(spec.input_shape, spec.weight_shape, **spec.kwargs())) == ""


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")])
@pytest.mark.parametrize("algo", NEW_ALGOS)
def test_new_families_match_cpu_on_catalog(algo, dtype):
    # every catalog shape the family takes (expected_algos' rules: 1x1 kernels
    # with zero padding; 1xn / nx1 with groups 1), all three operators, against
    # the float64 reference and the CPU module's own algorithm of that name
    tol = TOL32 if dtype == np.float32 else TOL64
    ran = skipped = 0
    for s in TEST_SHAPES:
        must, may = expected_algos(s)
        if algo not in must | may:
            continue
        assert _takes(s, algo) or algo in may, f"{algo} must take {s.name}"
        if not _takes(s, algo):
            continue
        x, w, b, g, refs = problem(s, dtype)
        for op in ("fprop_bias", "dgrad", "wgrad"):
            if _new_cost(s, op, algo, dtype) > BUDGET:
                skipped += 1
                continue
            got = run_op(op, s, x, w, b, g, algo=algo, backend="cuda-emu")
            check_close(got, refs[op], tol, dtype, f"cuda-emu {algo} {op} {s.name} vs float64 reference")
            cpu = run_op(op, s, x, w, b, g, algo=algo, backend="cpu")
            check_close(got, cpu.astype(np.float64), tol, dtype, f"cuda-emu {algo} {op} {s.name} vs cpu")
            ran += 1
    assert ran >= 30 and skipped <= 4, (ran, skipped)


@pytest.mark.parametrize("algo", NEW_ALGOS)
def test_new_families_relu_epilogue(algo):
    spec = {"1x1": ConvSpec("relu_1x1", 2, 5, 7, 9, 6, 1, 1, stride=2),
            "separable": ConvSpec("relu_1x5", 2, 5, 6, 9, 6, 1, 5, padding=(0, 2))}[algo]
    x, w, b, g, refs = problem(spec)
    got = ops.conv2d(x, w, b, algo=algo, backend="cuda-emu", activation="relu", **spec.kwargs())
    check_close(got, np.maximum(refs["fprop_bias"], 0), TOL32, np.float32, f"relu {algo}")
    assert (got >= 0).all() and (got == 0).any() and (got > 0).any()


def _check_all_ops(spec, algo, dtype=np.float32):
    x, w, b, g, refs = problem(spec, dtype)
    tol = TOL32 if dtype == np.float32 else TOL64
    outs = []
    for op in ("fprop", "fprop_bias", "dgrad", "wgrad"):
        got = run_op(op, spec, x, w, b, g, algo=algo, backend="cuda-emu")
        check_close(got, refs[op], tol, dtype, f"{algo} {op} {spec.name} {np.dtype(dtype).name}")
        outs.append(got)
    return outs


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")])
@pytest.mark.parametrize("spec", [
    # stride 2 with odd H/W (Dgrad: zeros on the skipped rows/columns and the last odd row)
    ConvSpec("c1x1_s2_odd", 2, 3, 9, 7, 5, 1, 1, stride=2),
    # stride 3x2 > kernel, the last input rows/columns read by no output
    ConvSpec("c1x1_s32", 1, 4, 8, 7, 3, 1, 1, stride=(3, 2)),
    # several row and column tiles (float32 64, float64 32) and a K depth tail (C = 19)
    ConvSpec("c1x1_tiles", 1, 19, 9, 8, 70, 1, 1),
    # groups (grid.z) with dilation (no effect on a 1x1 kernel) and stride
    ConvSpec("c1x1_groups3", 2, 6, 5, 7, 9, 1, 1, stride=2, dilation=3, groups=3),
    # 1x1 images
    ConvSpec("c1x1_img1", 3, 5, 1, 1, 4, 1, 1),
], ids=lambda s: s.name)
def test_1x1_targeted(spec, dtype):
    _check_all_ops(spec, "1x1", dtype)


def test_1x1_wgrad_split_deterministic():
    from fastconv import _emu
    from fastconv.problem import make_problem

    # N*P*Q = 6*13*12 = 936 -> 3 chunks (ragged last one); stride 1, groups 2
    spec = ConvSpec("c1x1_chunks", 6, 4, 13, 12, 6, 1, 1, groups=2)
    p = make_problem(spec.input_shape, spec.weight_shape, **spec.kwargs())
    assert _emu.conv1x1_wgrad_chunks(_emu.ConvProblem(**p.kernel_args())) > 1
    for dtype in (np.float32, np.float64):
        x, w, b, g, refs = problem(spec, dtype)
        got = run_op("wgrad", spec, x, w, b, g, algo="1x1", backend="cuda-emu")
        check_close(got, refs["wgrad"], TOL32 if dtype == np.float32 else TOL64, dtype, "chunked 1x1 wgrad")
        cuda_emu.set_schedule("concurrent", 5)
        again = run_op("wgrad", spec, x, w, b, g, algo="1x1", backend="cuda-emu")
        cuda_emu.set_schedule("random", 9)
        np.testing.assert_array_equal(got, again)


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")])
@pytest.mark.parametrize("spec", [
    # Inception's 1x7 / 7x1 with padding 3, plus dilation 2 (and the matching padding) and stride
    ConvSpec("sep_1x7_p3", 2, 3, 5, 12, 4, 1, 7, padding=(0, 3)),
    ConvSpec("sep_7x1_p3", 2, 3, 12, 5, 4, 7, 1, padding=(3, 0)),
    ConvSpec("sep_1x7_dil2", 1, 3, 4, 19, 5, 1, 7, padding=(1, 3), dilation=2),
    ConvSpec("sep_7x1_dil2_s2", 1, 3, 19, 4, 5, 7, 1, stride=2, padding=(3, 1), dilation=(2, 3)),
    # several channel tiles: K = 37 (3 Fprop tiles of 16), C = 19 (Dgrad tiles, 3 stages of 8, Wgrad c tiles)
    ConvSpec("sep_tiles", 1, 19, 3, 9, 37, 1, 3, padding=(1, 1)),
    # lines longer than one 32-position segment, stride 3 > kernel on the line, stride 2 across it
    ConvSpec("sep_long_s3", 1, 2, 5, 70, 3, 1, 2, stride=(2, 3)),
    ConvSpec("sep_long_col", 1, 2, 67, 3, 3, 3, 1, padding=(1, 0)),
    # more than 8 taps (two Wgrad tap blocks) and 'same' padding with stride 2 (asymmetric)
    ConvSpec("sep_1x11_same_s2", 1, 2, 3, 13, 2, 1, 11, stride=2, padding="same"),
    # a stride so large that one window covers the segment: stride 40 on the line
    ConvSpec("sep_stride40", 1, 2, 2, 83, 2, 1, 3, stride=(1, 40)),
    # 1x1 images and 1x1 kernels run as a line too
    ConvSpec("sep_img1", 2, 3, 1, 1, 4, 1, 3, padding=(0, 1)),
    ConvSpec("sep_k1x1", 1, 3, 4, 5, 2, 1, 1, stride=2),
], ids=lambda s: s.name)
def test_separable_targeted(spec, dtype):
    _check_all_ops(spec, "separable", dtype)


def test_separable_deterministic_across_schedules():
    spec = ConvSpec("sep_det", 2, 10, 4, 11, 18, 1, 5, stride=(1, 2), padding=(0, 2))
    x, w, b, g, _ = problem(spec)
    outs = []
    for sched, seed in (("random", 1), ("concurrent", 3)):
        cuda_emu.set_schedule(sched, seed)
        outs.append([run_op(op, spec, x, w, b, g, algo="separable", backend="cuda-emu")
                     for op in ("fprop_bias", "dgrad", "wgrad")])
    for a, o in zip(*outs):
        np.testing.assert_array_equal(a, o)


def test_new_families_supports():
    from fastconv import _emu
    from fastconv.problem import make_problem

    def kp(*args, **kw):
        return _emu.ConvProblem(**make_problem(*args, **kw).kernel_args())

    ok1 = kp((1, 4, 5, 5), (6, 2, 1, 1), stride=2, groups=2)
    assert _emu.supports("1x1", ok1) == ""
    assert "1x1 kernel" in _emu.supports("1x1", kp((1, 4, 5, 5), (4, 4, 3, 3)))
    assert "zero padding" in _emu.supports("1x1", kp((1, 4, 5, 5), (4, 4, 1, 1), padding=1))
    # bottom padding (P = 4 rows at stride 2 on H = 5: the last reads row 6): an output pixel outside the input
    bottom = _emu.ConvProblem(N=1, C=2, H=5, W=5, K=2, R=1, S=1, P=4, Q=3, pad_h=0, pad_w=0, stride_h=2,
                              stride_w=2, dil_h=1, dil_w=1, groups=1)
    assert "inside the input" in _emu.supports("1x1", bottom)
    plane = _emu.ConvProblem(N=1, C=1, H=65536, W=32768, K=1, R=1, S=1, P=65536, Q=32768, pad_h=0, pad_w=0,
                             stride_h=1, stride_w=1, dil_h=1, dil_w=1, groups=1)
    assert "2^31 pixels" in _emu.supports("1x1", plane)
    assert _emu.supports("separable", kp((1, 4, 5, 9), (4, 4, 1, 7), padding=(0, 3))) == ""
    assert "groups == 1" in _emu.supports("separable", kp((1, 4, 5, 9), (4, 2, 1, 3), groups=2))
    assert "1xn or nx1" in _emu.supports("separable", kp((1, 4, 5, 9), (4, 4, 3, 3)))
    # a stride whose 32-window segment cannot be staged in 48 KiB
    huge = kp((1, 1, 1, 400000), (1, 1, 1, 2), stride=(1, 1000))
    assert "48 KiB" in _emu.supports("separable", huge)
    with pytest.raises(ValueError, match="48 KiB"):
        _emu.fprop("separable", huge, np.zeros((1, 1, 1, 400000), np.float32), np.zeros((1, 1, 1, 2), np.float32),
                   None, np.empty((1, 1, 1, 400), np.float32), False)
    # the backend's table runs the new families
    assert cuda_emu.KERNEL_OF["1x1"] == "1x1" and cuda_emu.KERNEL_OF["separable"] == "separable"
    with pytest.raises(ValueError, match="unknown algorithm"):
        _emu.supports("winograd", ok1)


# ------------------------------------ direct Fprop and Dgrad: naive and register-tiled
# (the Dgrad kernels are gathers; the plain "direct" algorithm picks the tiled one when it applies)
def _direct_variant(variant, spec, dtype=np.float32, relu=False):
    x, w, b, g, refs = problem(spec, dtype)
    p, emu = _emu_problem(spec)
    y = np.empty(refs["fprop"].shape, dtype)
    emu._direct_fprop_variant(variant, p, x, w, b, y, relu)
    return y, refs


def _direct_dgrad_variant(variant, spec, dtype=np.float32):
    x, w, b, g, refs = problem(spec, dtype)
    p, emu = _emu_problem(spec)
    dx = np.empty(refs["dgrad"].shape, dtype)
    emu._direct_dgrad_variant(variant, p, g, w, dx)
    return dx, refs


# direction -> (run one forced variant, reference key, the module's "is it tiled" query)
_DIRECT_VARIANTS = {
    "fprop": (_direct_variant, "fprop_bias", "direct_fprop_tiled"),
    "dgrad": (_direct_dgrad_variant, "dgrad", "direct_dgrad_tiled"),
}


@pytest.mark.parametrize("variant", ["naive", "tiled"])
@pytest.mark.parametrize("direction", ["fprop", "dgrad"])
def test_direct_variants_on_catalog(direction, variant):
    # both direct kernels of each direction, forced, on every catalog shape within budget
    run, key, _ = _DIRECT_VARIANTS[direction]
    ran = 0
    for s in TEST_SHAPES:
        if _cost(s, direction, "direct") > BUDGET:
            continue
        out, refs = run(variant, s)
        check_close(out, refs[key], TOL32, np.float32, f"direct {direction} {variant} {s.name}")
        ran += 1
    assert ran >= len(TEST_SHAPES) - 2


@pytest.mark.parametrize("direction,only_naive", [("fprop", "img1x1_k1x1_C3K5"), ("dgrad", "C1_K1_3x3")])
def test_direct_picks_both_variants(direction, only_naive):
    from fastconv import _emu

    is_tiled = getattr(_emu, _DIRECT_VARIANTS[direction][2])
    tiled = [s.name for s in TEST_SHAPES if is_tiled(_emu_problem(s)[0])]
    naive = [s.name for s in TEST_SHAPES if not is_tiled(_emu_problem(s)[0])]
    # the catalog exercises both through the plain "direct" algorithm (test_fprop/dgrad_matches_cpu)
    assert "odd_3x3_pad1" in tiled and "depthwise_3x3" in naive and only_naive in naive
    assert len(tiled) >= 20 and len(naive) >= 8


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")])
@pytest.mark.parametrize("spec", [
    # channel and column tails (Kg = 7 -> tiles of 4 + 3, Q = 9 -> 4 + 4 + 1), groups, stride, dilation
    ConvSpec("tiled_tails_groups", 2, 6, 9, 19, 14, 3, 2, stride=(1, 2), padding=(1, 1), dilation=(1, 2), groups=2),
    # columns partly in the padding on both sides, stride > kernel
    ConvSpec("tiled_pad_stride", 1, 3, 7, 11, 5, 2, 3, stride=3, padding=2),
], ids=lambda s: s.name)
def test_direct_tiled_targeted(spec, dtype):
    tol = TOL32 if dtype == np.float32 else TOL64
    for relu in (False, True):
        for variant in ("naive", "tiled"):
            y, refs = _direct_variant(variant, spec, dtype, relu)
            want = np.maximum(refs["fprop_bias"], 0) if relu else refs["fprop_bias"]
            check_close(y, want, tol, dtype, f"direct {variant} {spec.name} relu={relu}")
    with pytest.raises(ValueError, match="variant"):
        _direct_variant("blocked", spec, dtype)


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")])
@pytest.mark.parametrize("spec", [
    # channel tails (Cg = 7 -> 4 + 3), groups, stride 3 on W (three phases of 7/6/6 columns, tiles of 4 + 3)
    ConvSpec("dtiled_phases", 2, 14, 7, 20, 6, 3, 3, stride=(2, 3), padding=(1, 2), dilation=(1, 2), groups=2),
    # stride 4 > kernel 2 with padding: taps whose columns start left of the image, phases no tap reaches
    ConvSpec("dtiled_stride_gt_kernel", 1, 5, 9, 17, 3, 2, 2, stride=4, padding=1),
    # dilation 3 with stride 2 on both axes, odd sizes
    ConvSpec("dtiled_dil3", 1, 3, 13, 15, 4, 3, 3, stride=2, padding=2, dilation=3),
], ids=lambda s: s.name)
def test_direct_dgrad_tiled_targeted(spec, dtype):
    tol = TOL32 if dtype == np.float32 else TOL64
    for variant in ("naive", "tiled"):
        dx, refs = _direct_dgrad_variant(variant, spec, dtype)
        check_close(dx, refs["dgrad"], tol, dtype, f"direct dgrad {variant} {spec.name}")
    with pytest.raises(ValueError, match="variant"):
        _direct_dgrad_variant("blocked", spec, dtype)


@pytest.mark.parametrize("algo,spec", [
    ("1x1", ConvSpec("nan_1x1_s2", 2, 3, 9, 7, 5, 1, 1, stride=2)),
    ("1x1", ConvSpec("nan_1x1_s32", 1, 4, 8, 7, 3, 1, 1, stride=(3, 2))),
    ("separable", ConvSpec("nan_sep_s2", 1, 3, 7, 9, 4, 1, 3, stride=2, padding=(0, 1))),
    ("separable", ConvSpec("nan_sep_col_s3", 1, 3, 10, 5, 4, 3, 1, stride=(1, 3), padding=(1, 0))),
    ("direct", ConvSpec("nan_direct_s4", 1, 6, 9, 13, 4, 2, 2, stride=4, padding=1)),
    ("im2col", ConvSpec("nan_igemm_s3", 1, 3, 10, 8, 4, 2, 2, stride=3)),
], ids=lambda v: v if isinstance(v, str) else v.name)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_dgrad_writes_every_element(algo, spec, dtype):
    # grad_input starts as NaN: every element, including the pixels the stride skips, must be written
    x, w, b, g, refs = problem(spec, dtype)
    p, emu = _emu_problem(spec)
    dx = np.full(refs["dgrad"].shape, np.nan, dtype)
    emu.dgrad(algo, p, g, w, dx)
    check_close(dx, refs["dgrad"], TOL32 if dtype == np.float32 else TOL64, dtype, f"{algo} dgrad {spec.name}")
    assert (dx == 0).any(), "the shape must have pixels no output reads"
