"""The CUDA pooling and layer kernels (csrc/cuda/pool.cu, layers.cu) on the CPU grid emulator.

Every kernel runs through ``backend="cuda-emu"`` (the ops layer looks it up with
``backends.layer_kernel``) and is compared with the independent float64
references (tests/pool_reference.py, tests/layers_reference.py) and with the
compiled CPU backend: relative error <= 2e-5 (max|out - ref| / max|ref|) for
float32, forward and backward with random upstream gradients. Integer outputs
(pooling indices, the dropout mask) must be identical to the CPU module's.

The emulator runs every block's threads as OS threads handing a baton around,
so the configurations are small (tens to a few thousand elements) but cover
odd sizes, stride > kernel, 1x1 inputs, padding, dilation, ceil_mode, global
windows (one block per plane) and multi-tile GEMMs.

A pooling kernel with an off-by-one image bound (built only with
FC_EMU_TEST_HOOKS) must come out wrong where the real one is right.
"""
import zlib

import numpy as np
import pytest

from fastconv import backends, ops
from fastconv.backends import cuda_emu

import layers_reference as lref
import pool_reference as pref

pytestmark = pytest.mark.skipif(not cuda_emu.AVAILABLE, reason=f"fastconv._emu not built: {cuda_emu.IMPORT_ERROR}")

EMU = "cuda-emu"
TOL = 2e-5
KERNELS = ("pool2d_forward", "pool2d_backward", "adaptive_pool2d_forward", "adaptive_pool2d_backward", "bn_stats",
           "bn_apply", "bn_backward", "lrn", "activation", "softmax", "cross_entropy", "dropout", "dropout_backward",
           "linear", "linear_backward")


def close(out, ref, what, tol=TOL):
    out = np.asarray(out)
    assert out.shape == np.shape(ref), f"{what}: shape {out.shape} != {np.shape(ref)}"
    err = lref.rel_err(out, ref)
    assert err <= tol, f"{what}: rel err {err:.2e} > {tol:.0e}"


def _seed(*key):
    return zlib.crc32(repr(key).encode())  # reproducible across processes (unlike hash() of a str)


def rnd(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@pytest.fixture(autouse=True)
def _random_schedule():
    cuda_emu.set_schedule("random")
    yield
    cuda_emu.set_schedule("random")


def test_every_layer_kernel_is_served_by_the_emulator():
    for name in KERNELS:
        fn, who = backends.layer_kernel(name, EMU)
        assert who == EMU, f"{name} fell back to {who}"
        assert fn is getattr(cuda_emu._emu, name)
    assert cuda_emu.layer_kernel("no_such_kernel") is None


# ------------------------------------------------------------------ pooling
# (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
POOL_CASES = [
    (2, 3, 7, 9, 3, 2, 1, 1, False),
    (1, 2, 8, 8, 2, 2, 0, 1, False),
    (2, 1, 11, 6, (3, 2), (2, 1), (1, 0), 1, True),
    (1, 3, 9, 10, 3, 1, 1, 2, False),     # dilation
    (1, 2, 10, 7, 3, 3, 1, (2, 1), True),  # dilation + ceil mode
    (2, 2, 13, 13, 2, 4, 0, 1, False),    # stride > kernel
    (1, 2, 1, 1, 1, 1, 0, 1, False),      # 1x1 input
    (1, 1, 5, 12, (1, 3), (1, 2), (0, 1), 1, True),
    (2, 3, 6, 5, (6, 5), 1, 0, 1, False),  # the whole plane: the global kernel
]


def _pool_id(c):
    return "x".join(map(str, c[:4])) + f"-k{c[4]}s{c[5]}p{c[6]}d{c[7]}{'-ceil' if c[8] else ''}"


@pytest.mark.parametrize("case", POOL_CASES, ids=[_pool_id(c) for c in POOL_CASES])
@pytest.mark.parametrize("kind", ["max", "min"])
def test_maxmin_pool_forward_backward(case, kind):
    N, C, H, W, k, s, p, d, ceil = case
    rng = np.random.default_rng(_seed(case, kind))
    x = rnd(rng, N, C, H, W)
    fwd = ops.max_pool2d if kind == "max" else ops.min_pool2d
    bwd = ops.max_pool2d_backward if kind == "max" else ops.min_pool2d_backward
    y, idx = fwd(x, k, s, p, d, ceil, return_indices=True, backend=EMU)
    ry, ridx = pref.maxmin_pool(x, kind, k, s, p, d, ceil)
    close(y, ry, f"{kind} forward")
    np.testing.assert_array_equal(idx, ridx, err_msg=f"{kind} indices vs reference")
    cy, cidx = fwd(x, k, s, p, d, ceil, return_indices=True, backend="cpu")
    np.testing.assert_array_equal(y, cy)
    np.testing.assert_array_equal(idx, cidx)
    np.testing.assert_array_equal(fwd(x, k, s, p, d, ceil, backend=EMU), y)  # without indices
    g = rnd(rng, *y.shape)
    rdx = pref.maxmin_pool_backward(g, x.shape, ridx)
    dx = bwd(g, x, k, s, p, d, ceil, indices=idx, backend=EMU)
    close(dx, rdx, f"{kind} backward with indices")
    # without indices: every candidate window's argmax is recomputed by the gather
    dx2 = bwd(g, x, k, s, p, d, ceil, indices=None, backend=EMU)
    close(dx2, rdx, f"{kind} backward recomputing the argmax")
    np.testing.assert_array_equal(dx, bwd(g, x, k, s, p, d, ceil, indices=idx, backend="cpu"))


@pytest.mark.parametrize("k,s,p", [(2**20 + 1, 1, 2**19), (2**29, 1, 2**28), (2**20 + 1, 7, 2**19),
                                   ((3, 2**20 + 1), (2**20, 1), (1, 2**19))])
def test_pool_windows_far_larger_than_the_image(k, s, p):
    """Kernels of 2^20 to 2^29 taps over a 5x6 image (valid, and torch runs them): the kernels visit
    only the taps inside the image (forward) or that reach a window (backward gather) — visiting
    every tap took 27 s for one call at 2^20 — with the CPU module's values, indices and gradients."""
    rng = np.random.default_rng(11)
    x = rnd(rng, 1, 2, 5, 6)
    y, idx = ops.max_pool2d(x, k, s, p, return_indices=True, backend=EMU)
    cy, cidx = ops.max_pool2d(x, k, s, p, return_indices=True, backend="cpu")
    np.testing.assert_array_equal(y, cy)
    np.testing.assert_array_equal(idx, cidx)
    g = rnd(rng, *y.shape)
    want = ops.max_pool2d_backward(g, x, k, s, p, indices=cidx, backend="cpu")
    np.testing.assert_array_equal(ops.max_pool2d_backward(g, x, k, s, p, indices=idx, backend=EMU), want)
    np.testing.assert_array_equal(ops.max_pool2d_backward(g, x, k, s, p, backend=EMU), want)
    for cip in (True, False):
        close(ops.avg_pool2d(x, k, s, p, count_include_pad=cip, backend=EMU),
              ops.avg_pool2d(x, k, s, p, count_include_pad=cip, backend="cpu"), "avg forward")
        close(ops.avg_pool2d_backward(g, x, k, s, p, count_include_pad=cip, backend=EMU),
              ops.avg_pool2d_backward(g, x, k, s, p, count_include_pad=cip, backend="cpu"), "avg backward")


AVG_CASES = [c for c in POOL_CASES if c[7] == 1]  # avg pooling has no dilation


@pytest.mark.parametrize("case", AVG_CASES, ids=[_pool_id(c) for c in AVG_CASES])
@pytest.mark.parametrize("cip,div", [(True, None), (False, None), (True, 5)])
def test_avg_pool_forward_backward(case, cip, div):
    N, C, H, W, k, s, p, d, ceil = case
    rng = np.random.default_rng(_seed(case, cip, div))
    x = rnd(rng, N, C, H, W)
    y = ops.avg_pool2d(x, k, s, p, ceil, cip, div, backend=EMU)
    close(y, pref.avg_pool(x, k, s, p, ceil, cip, div), "avg forward")
    close(y, ops.avg_pool2d(x, k, s, p, ceil, cip, div, backend="cpu"), "avg forward vs cpu")
    g = rnd(rng, *y.shape)
    dx = ops.avg_pool2d_backward(g, x, k, s, p, ceil, cip, div, backend=EMU)
    close(dx, pref.avg_pool_backward(g, x.shape, k, s, p, ceil, cip, div), "avg backward")


def test_pool_ties_and_nan_follow_the_cpu_rule():
    # few distinct values: many ties (the first extreme in window order wins), plus NaNs (the last NaN wins)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, (2, 3, 9, 8)).astype(np.float32)
    x[0, 0, 2, 3] = np.nan
    x[1, 2, 4, 4] = x[1, 2, 4, 5] = np.nan
    for args in ((3, 2, 1, 1, False), (2, 1, 0, 2, True), ((9, 8), 1, 0, 1, False)):
        for kind, fwd in (("max", ops.max_pool2d), ("min", ops.min_pool2d)):
            y, idx = fwd(x, *args, return_indices=True, backend=EMU)
            ry, ridx = pref.maxmin_pool(x, kind, *args)
            np.testing.assert_array_equal(idx, ridx, err_msg=f"{kind} {args}")
            np.testing.assert_array_equal(np.isnan(y), np.isnan(ry))
            np.testing.assert_array_equal(y[~np.isnan(y)], ry[~np.isnan(ry)])


def test_global_pool_large_plane_and_float64():
    # a 23x29 plane: 256 threads per plane, each a strided slice, merged by the tree
    rng = np.random.default_rng(11)
    x = rnd(rng, 2, 2, 23, 29, dtype=np.float64)
    x[0, 1, 5, 7] = x[0, 1, 20, 3] = x.max() + 1  # a tie across two thread slices: the first wins
    y, idx = ops.max_pool2d(x, (23, 29), return_indices=True, backend=EMU)
    ry, ridx = pref.maxmin_pool(x, "max", (23, 29))
    np.testing.assert_array_equal(idx, ridx)
    close(y, ry, "global max f64", 1e-12)
    close(ops.avg_pool2d(x, (23, 29), backend=EMU), pref.avg_pool(x, (23, 29)), "global avg f64", 1e-12)
    close(ops.adaptive_avg_pool2d(x, 1, backend=EMU), pref.adaptive_pool(x, (1, 1), "avg")[0], "adaptive global", 1e-12)


ADAPTIVE_CASES = [((2, 3, 7, 9), (3, 4)), ((1, 2, 5, 5), (5, 5)), ((1, 2, 4, 6), (7, 3)), ((2, 2, 6, 5), (1, 1)),
                  ((1, 1, 1, 1), (2, 3))]


@pytest.mark.parametrize("shape,out", ADAPTIVE_CASES, ids=[f"{s}->{o}" for s, o in ADAPTIVE_CASES])
def test_adaptive_pool_forward_backward(shape, out):
    rng = np.random.default_rng(sum(shape) * 31 + sum(out))
    x = rnd(rng, *shape)
    ya = ops.adaptive_avg_pool2d(x, out, backend=EMU)
    close(ya, pref.adaptive_pool(x, out, "avg")[0], "adaptive avg")
    g = rnd(rng, *ya.shape)
    close(ops.adaptive_avg_pool2d_backward(g, x, backend=EMU), pref.adaptive_avg_backward(g, x.shape),
          "adaptive avg backward")
    ym, idx = ops.adaptive_max_pool2d(x, out, return_indices=True, backend=EMU)
    rym, ridx = pref.adaptive_pool(x, out, "max")
    close(ym, rym, "adaptive max")
    np.testing.assert_array_equal(idx, ridx)
    rdx = pref.maxmin_pool_backward(g, x.shape, ridx)
    close(ops.adaptive_max_pool2d_backward(g, x, out, indices=idx, backend=EMU), rdx, "adaptive max backward")
    close(ops.adaptive_max_pool2d_backward(g, x, out, indices=None, backend=EMU), rdx,
          "adaptive max backward recomputing the argmax")


def test_pool_indices_outside_their_window_are_rejected():
    x = np.arange(2 * 6 * 6, dtype=np.float32).reshape(1, 2, 6, 6)
    y, idx = ops.max_pool2d(x, 2, 2, return_indices=True, backend=EMU)
    bad = idx.copy()
    bad[0, 1, 0, 0] = 35  # inside the plane, but in another window
    with pytest.raises(ValueError, match="not a position of its own pooling window"):
        ops.max_pool2d_backward(np.ones_like(y), x, 2, 2, indices=bad, backend=EMU)


# -------------------------------------------------- the deliberately broken variant
def _pool_planes(fn, kind, x4, k, s, p, out_hw, cip=True, div=0):
    planes = np.ascontiguousarray(x4.reshape(-1, *x4.shape[2:]))
    y = np.empty((planes.shape[0], *out_hw), x4.dtype)
    idx = np.empty(y.shape, np.int64) if kind != 2 else None
    fn(kind, planes, y, idx, kh=k, kw=k, sh=s, sw=s, ph=p, pw=p, dh=1, dw=1, count_include_pad=cip,
       divisor_override=div)
    return y.reshape(*x4.shape[:2], *out_hw), idx


def test_off_by_one_pool_kernel_is_caught():
    emu = cuda_emu._emu
    rng = np.random.default_rng(3)
    x = rnd(rng, 2, 3, 7, 9)
    x[:, :, :, -1] = 10.0  # the last column holds every window's maximum where it is covered
    ref_avg = pref.avg_pool(x, 3, 2, 1)
    ref_max, ref_idx = pref.maxmin_pool(x, "max", 3, 2, 1)
    P, Q = ref_avg.shape[2:]
    good_avg, _ = _pool_planes(emu.pool2d_forward, 2, x, 3, 2, 1, (P, Q))
    bad_avg, _ = _pool_planes(emu._pool2d_forward_off_by_one, 2, x, 3, 2, 1, (P, Q))
    close(good_avg, ref_avg, "intact avg kernel")
    assert not lref.rel_err(bad_avg, ref_avg) <= 1e-3, "the off-by-one avg kernel was not caught"
    good_max, good_idx = _pool_planes(emu.pool2d_forward, 0, x, 3, 2, 1, (P, Q))
    bad_max, bad_idx = _pool_planes(emu._pool2d_forward_off_by_one, 0, x, 3, 2, 1, (P, Q))
    close(good_max, ref_max, "intact max kernel")
    np.testing.assert_array_equal(good_idx.reshape(ref_idx.shape), ref_idx)
    assert not lref.rel_err(bad_max, ref_max) <= 1e-3, "the off-by-one max kernel was not caught"
    assert (bad_idx.reshape(ref_idx.shape) != ref_idx).any()


# --------------------------------------------------------------- batch norm
@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (3, 5), (3, 2, 1, 1), (2, 4, 9)])
def test_batch_norm_train_and_backward(shape):
    rng = np.random.default_rng(sum(shape))
    x = (rnd(rng, *shape) * 3 + 5).astype(np.float32)  # |mean| >> std exercises the shifted moments
    C = shape[1]
    w, b = rnd(rng, C), rnd(rng, C)
    y, mean, invstd = ops.batch_norm_forward_train(x, w, b, backend=EMU)
    ry, rmean, rvar = lref.batch_norm_train(x, w, b)
    close(y, ry, "bn train forward")
    close(mean, rmean, "bn mean")
    close(invstd, 1 / np.sqrt(rvar + 1e-5), "bn invstd")
    g = rnd(rng, *shape)
    dx, dw, db = ops.batch_norm_backward(g, x, w, mean, invstd, training=True, backend=EMU)
    rdx, rdw, rdb = lref.batch_norm_train_backward(g, x, w)
    close(dx, rdx, "bn dx")
    close(dw, rdw, "bn dw")
    close(db, rdb, "bn db")


def test_batch_norm_eval_and_backward():
    rng = np.random.default_rng(8)
    x = rnd(rng, 3, 4, 6, 5)
    rm, rv = rnd(rng, 4), rng.uniform(0.5, 2, 4).astype(np.float32)
    w, b = rnd(rng, 4), rnd(rng, 4)
    y = ops.batch_norm(x, rm, rv, w, b, training=False, backend=EMU)
    close(y, lref.batch_norm_eval(x, rm, rv, w, b), "bn eval")
    g = rnd(rng, *x.shape)
    dx, dw, db = ops.batch_norm_backward(g, x, w, training=False, running_mean=rm, running_var=rv, backend=EMU)
    inv = 1 / np.sqrt(rv.astype(np.float64) + 1e-5)
    s = (1, -1, 1, 1)
    close(dx, g * (w * inv).reshape(s), "bn eval dx")
    close(dw, (g * (x - rm.reshape(s)) * inv.reshape(s)).sum(axis=(0, 2, 3)), "bn eval dw")
    close(db, g.astype(np.float64).sum(axis=(0, 2, 3)), "bn eval db")


# --------------------------------------------------------------------- LRN
@pytest.mark.parametrize("size", [1, 3, 4])
def test_lrn_forward_backward(size):
    rng = np.random.default_rng(size)
    x = rnd(rng, 2, 6, 3, 4)
    y = ops.local_response_norm(x, size, 1e-2, 0.75, 2.0, backend=EMU)
    close(y, lref.lrn(x, size, 1e-2, 0.75, 2.0), "lrn forward")
    g = rnd(rng, *x.shape)
    dx = ops.local_response_norm_backward(g, x, size, 1e-2, 0.75, 2.0, backend=EMU)
    close(dx, ops.local_response_norm_backward(g, x, size, 1e-2, 0.75, 2.0, backend="cpu"), "lrn backward vs cpu")
    # independent check: <dx, v> against a central difference of the reference along v (float64 kernel)
    xd, gd = x.astype(np.float64), g.astype(np.float64)
    v = rng.standard_normal(x.shape)
    dxd = ops.local_response_norm_backward(gd, xd, size, 1e-2, 0.75, 2.0, backend=EMU)
    fd = (gd * lref.directional_fd(lambda t: lref.lrn(t, size, 1e-2, 0.75, 2.0), xd, v)).sum()
    assert abs((dxd * v).sum() - fd) <= 1e-6 * max(1.0, abs(fd))
    # beta outside the closed forms goes through pow
    close(ops.local_response_norm(x, size, 1e-2, 0.6, 2.0, backend=EMU), lref.lrn(x, size, 1e-2, 0.6, 2.0),
          "lrn beta=0.6")


# ------------------------------------------------------ activations, softmax
def test_activations_forward_backward():
    rng = np.random.default_rng(4)
    x = (rnd(rng, 3, 5, 7) * 4).astype(np.float32)
    x[0, 0, :3] = [0.0, 40.0, -40.0]
    g = rnd(rng, *x.shape)
    y = ops.relu(x, backend=EMU)
    close(y, lref.relu(x), "relu")
    close(ops.relu_backward(g, y, backend=EMU), np.where(x > 0, g, 0), "relu backward")
    y = ops.sigmoid(x, backend=EMU)
    close(y, lref.sigmoid(x), "sigmoid")
    s = lref.sigmoid(x)
    close(ops.sigmoid_backward(g, y, backend=EMU), g * s * (1 - s), "sigmoid backward")
    y = ops.tanh(x, backend=EMU)
    close(y, lref.tanh(x), "tanh")
    close(ops.tanh_backward(g, y, backend=EMU), g * (1 - np.tanh(x.astype(np.float64)) ** 2), "tanh backward")


@pytest.mark.parametrize("shape,dim", [((5, 13), -1), ((3, 300), 1), ((2, 4, 3, 5), 1), ((2, 3, 7), 2),
                                       ((1, 1), 0), ((4, 6, 2), 0)])
def test_softmax_forward_backward(shape, dim):
    rng = np.random.default_rng(sum(shape) + dim)
    x = (rnd(rng, *shape) * 3).astype(np.float32)
    g = rnd(rng, *shape)
    y = ops.softmax(x, dim, backend=EMU)
    ry = lref.softmax(x, dim)
    close(y, ry, "softmax")
    close(ops.softmax_backward(g, y, dim, backend=EMU), ry * (g - (g * ry).sum(axis=dim, keepdims=True)),
          "softmax backward")
    ly = ops.log_softmax(x, dim, backend=EMU)
    close(ly, lref.log_softmax(x, dim), "log_softmax")
    close(ops.log_softmax_backward(g, ly, dim, backend=EMU), g - ry * g.astype(np.float64).sum(axis=dim, keepdims=True),
          "log_softmax backward")


@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_fused(eps, reduction):
    rng = np.random.default_rng(int(eps * 10) + len(reduction))
    N, C = 9, 37
    z = (rnd(rng, N, C) * 2).astype(np.float32)
    t = rng.integers(0, C, N)
    t[[2, 5]] = -100  # ignored rows
    loss, grad = ops.cross_entropy(z, t, eps, reduction, -100, backend=EMU)
    close(np.asarray(loss), lref.cross_entropy(z, t, eps, reduction, -100), "ce loss")
    # the gradient of the loss: (softmax - target distribution) per counted row, scaled by the reduction
    q = np.full((N, C), eps / C)
    q[np.arange(N), np.where(t >= 0, t, 0)] += 1 - eps
    keep = (t != -100)[:, None]
    rg = (lref.softmax(z, 1) - q) * keep
    if reduction == "mean":
        rg /= keep.sum()
    close(grad, rg, "ce grad")


# ------------------------------------------------------------------ dropout
@pytest.mark.parametrize("n,p", [(1, 0.5), (1000, 0.3), (4099, 0.9)])
def test_dropout_mask_is_the_cpu_generator_bit_for_bit(n, p):
    rng = np.random.default_rng(n)
    x = rnd(rng, n)
    y, mask = ops.dropout(x, p, seed=1234 + n, backend=EMU)
    cy, cmask = ops.dropout(x, p, seed=1234 + n, backend="cpu")
    np.testing.assert_array_equal(mask, cmask)
    np.testing.assert_array_equal(y, cy)
    close(y, np.where(mask, x.astype(np.float64) / (1 - p), 0), "dropout output")
    if n > 100:
        assert abs(1 - mask.mean() - p) < 0.06
    g = rnd(rng, n)
    close(ops.dropout_backward(g, mask, p, backend=EMU), np.where(mask, g / (1 - p), 0), "dropout backward")


def test_dropout_offset_continues_the_stream():
    # a Generator's second call continues at offset n: the same counters as the CPU module
    gen_e, gen_c = ops.Generator(77), ops.Generator(77)
    x = np.ones(300, np.float32)
    for _ in range(2):
        _, me = ops.dropout(x, 0.5, seed=gen_e, backend=EMU)
        _, mc = ops.dropout(x, 0.5, seed=gen_c, backend="cpu")
        np.testing.assert_array_equal(me, mc)


# ------------------------------------------------------------------- linear
@pytest.mark.parametrize("M,I,O", [(5, 7, 3), (70, 37, 65), (1, 1, 1), (3, 130, 2), (66, 16, 130), (4, 0, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_backward(M, I, O, bias):
    rng = np.random.default_rng(M * 1000 + I * 10 + O)
    x, w = rnd(rng, M, I), rnd(rng, O, I)
    b = rnd(rng, O) if bias else None
    y = ops.linear(x, w, b, backend=EMU)
    ry = lref.linear(x, w, b)
    if ry.size and np.abs(ry).max() > 0:
        close(y, ry, "linear")
    else:
        np.testing.assert_array_equal(y, ry)
    g = rnd(rng, M, O)
    dx, dw, db = ops.linear_backward(g, x, w, backend=EMU)
    gd = g.astype(np.float64)
    for got, want, what in ((dx, gd @ w, "dx"), (dw, gd.T @ x, "dw"), (db, gd.sum(0), "db")):
        if want.size and np.abs(want).max() > 0:
            close(got, want, f"linear {what}")
        else:
            np.testing.assert_array_equal(got, want)


def test_linear_float64():
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((33, 70)), rng.standard_normal((65, 70)), rng.standard_normal(65)
    close(ops.linear(x, w, b, backend=EMU), x @ w.T + b, "linear f64", 1e-12)


# ------------------------------------------------------- determinism, errors
def test_reductions_are_identical_across_schedules():
    rng = np.random.default_rng(9)
    x = rnd(rng, 3, 4, 11, 13)
    z = rnd(rng, 5, 300)
    outs = []
    for sched, seed in (("random", 1), ("random", 2), ("concurrent", 3)):
        cuda_emu.set_schedule(sched, seed)
        outs.append((ops.batch_norm_forward_train(x, backend=EMU)[0], ops.max_pool2d(x, (11, 13), backend=EMU),
                     ops.softmax(z, 1, backend=EMU), ops.linear(z, z[:3], backend=EMU)))
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            np.testing.assert_array_equal(a, b)


def test_bad_arguments_raise_clear_errors():
    emu = cuda_emu._emu
    x = np.zeros((2, 5, 5), np.float32)
    y = np.zeros((2, 2, 2), np.float64)
    with pytest.raises(TypeError, match="output: dtype"):
        emu.pool2d_forward(0, x, y, None, kh=2, kw=2, sh=2, sw=2, ph=0, pw=0, dh=1, dw=1, count_include_pad=True,
                           divisor_override=0)
    with pytest.raises(ValueError, match="padding must be at most half"):
        emu.pool2d_forward(0, x, np.zeros((2, 3, 3), np.float32), None, kh=2, kw=2, sh=2, sw=2, ph=2, pw=0, dh=1,
                           dw=1, count_include_pad=True, divisor_override=0)
    with pytest.raises(ValueError, match="adaptive min pooling"):
        emu.adaptive_pool2d_forward(1, x, np.zeros((2, 2, 2), np.float32), None)
    with pytest.raises(ValueError, match=r"target\[1\] = 7 is outside"):
        emu.cross_entropy(np.zeros((2, 3), np.float32), np.array([0, 7]), 2, 3, -100, 0.0, 1.0, np.zeros(2),
                          np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="weight: has 6 elements, the kernel needs 8"):
        emu.linear(np.zeros((3, 4), np.float32), np.zeros((2, 3), np.float32), None, 3, 4, 2,
                   np.zeros((3, 2), np.float32))
