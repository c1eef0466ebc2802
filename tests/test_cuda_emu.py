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
from helpers import TOL32, TOL64, check_close, output_shape, problem, run_op, spec_params
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
    spec = TEST_SHAPES[28]  # k1x1_plain: "auto" picks "1x1", which this backend runs as its implicit GEMM
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
