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
        return math.ceil(spec.N * spec.C * spec.H * spec.W / 256) * 256
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
], ids=lambda s: s.name)
def test_igemm_multi_tile(spec):
    x, w, b, g, refs = problem(spec)
    got = run_op("fprop_bias", spec, x, w, b, g, algo="im2col", backend="cuda-emu")
    check_close(got, refs["fprop_bias"], TOL32, np.float32, f"igemm {spec.name}")


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
                                   ("wgrad", "direct"))])
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
    with pytest.raises(ValueError, match="unknown algorithm"):
        cuda_emu.supports("winograd", p)
    x = np.zeros((1, 4, 5, 5), np.float32)
    w = np.zeros((4, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match="output"):
        cuda_emu.fprop("direct", p, x, w, None, np.empty((1, 4, 2, 2), np.float32), False)
    with pytest.raises(TypeError, match="dtype"):
        cuda_emu.fprop("direct", p, x, w.astype(np.float64), None, np.empty((1, 4, 3, 3), np.float32), False)
    with pytest.raises(ValueError, match="schedule"):
        cuda_emu.set_schedule("sequential")
