"""Bad input must raise ValueError (bad values) or TypeError (bad types) with a
message naming the argument (and the shapes involved where relevant); never a
crash or a silently wrong shape."""
import re

import numpy as np
import pytest

from fastconv import ops

F32 = np.float32


def _x(*shape, dtype=F32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def _readonly(a):
    a.setflags(write=False)
    return a


X = _x(2, 6, 9, 8)          # input
Wt = _x(4, 6, 3, 3)         # weight -> output (2, 4, 7, 6)
G = _x(2, 4, 7, 6)          # grad_output
B = _x(4)                   # bias


def check(exc, fn, names, numbers=()):
    """fn() raises `exc`; the message names one of `names` and contains every number."""
    with pytest.raises(exc) as ei:
        fn()
    msg = str(ei.value)
    names = (names,) if isinstance(names, str) else names
    assert any(re.search(n, msg, re.IGNORECASE) for n in names), f"message {msg!r} names none of {names}"
    for n in numbers:
        assert re.search(rf"(?<![\d.]){n}(?![\d.])", msg), f"message {msg!r} does not show {n}"


_EXTRA = {}  # extra keyword arguments for every call (the backend, in test_bad_input_every_backend)


def conv(*a, **k):
    return ops.conv2d(*a, **{**_EXTRA, **k})


def dgrad(*a, **k):
    return ops.conv2d_input(*a, **{**_EXTRA, **k})


def wgrad(*a, **k):
    return ops.conv2d_weight(*a, **{**_EXTRA, **k})


EITHER = (ValueError, TypeError)

CASES = [
    # ---- channels / groups
    ("channel_mismatch", ValueError, lambda: conv(_x(2, 7, 9, 8), _x(4, 5, 3, 3)), ("weight", "input", "channel"), (7, 5)),
    ("channel_mismatch_groups", ValueError, lambda: conv(X, _x(4, 4, 3, 3), groups=2), ("weight", "input", "groups", "channel"), (6, 4)),
    ("groups_not_dividing_C", ValueError, lambda: conv(_x(2, 7, 9, 8), _x(3, 2, 3, 3), groups=3), ("groups", "weight", "input"), (7,)),
    ("groups_not_dividing_K", ValueError, lambda: conv(X, _x(5, 2, 3, 3), groups=3), ("groups",), (5,)),
    ("groups_zero", ValueError, lambda: conv(X, Wt, groups=0), "groups", ()),
    ("groups_negative", ValueError, lambda: conv(X, Wt, groups=-1), "groups", ()),
    ("groups_float", TypeError, lambda: conv(X, Wt, groups=1.5), "groups", ()),
    ("groups_str", TypeError, lambda: conv(X, Wt, groups="1"), "groups", ()),
    # ---- stride / dilation
    ("stride_zero", ValueError, lambda: conv(X, Wt, stride=0), "stride", ()),
    ("stride_negative", ValueError, lambda: conv(X, Wt, stride=-2), "stride", ()),
    ("stride_pair_zero", ValueError, lambda: conv(X, Wt, stride=(1, 0)), "stride", ()),
    ("stride_float", TypeError, lambda: conv(X, Wt, stride=1.5), "stride", ()),
    ("stride_pair_float", TypeError, lambda: conv(X, Wt, stride=(1, 1.5)), "stride", ()),
    ("stride_triple", EITHER, lambda: conv(X, Wt, stride=(1, 1, 1)), "stride", ()),
    ("stride_none", TypeError, lambda: conv(X, Wt, stride=None), "stride", ()),
    ("dilation_zero", ValueError, lambda: conv(X, Wt, dilation=0), "dilation", ()),
    ("dilation_negative", ValueError, lambda: conv(X, Wt, dilation=(-1, 1)), "dilation", ()),
    ("dilation_float", TypeError, lambda: conv(X, Wt, dilation=2.0), "dilation", ()),
    # ---- padding
    ("padding_negative", ValueError, lambda: conv(X, Wt, padding=-1), "padding", ()),
    ("padding_pair_negative", ValueError, lambda: conv(X, Wt, padding=(0, -1)), "padding", ()),
    ("padding_float", TypeError, lambda: conv(X, Wt, padding=1.5), "padding", ()),
    ("padding_pair_float", TypeError, lambda: conv(X, Wt, padding=(1, 0.5)), "padding", ()),
    ("padding_unknown_string", ValueError, lambda: conv(X, Wt, padding="full"), "padding", ()),
    ("padding_same_as_tuple", EITHER, lambda: conv(X, Wt, padding=("same", "same")), "padding", ()),
    ("padding_same_as_bytes", EITHER, lambda: conv(X, Wt, padding=b"same"), "padding", ()),
    ("padding_none", EITHER, lambda: conv(X, Wt, padding=None), "padding", ()),
    ("padding_triple", EITHER, lambda: conv(X, Wt, padding=(1, 1, 1)), "padding", ()),
    # ---- kernel does not fit
    ("kernel_larger_than_input", ValueError, lambda: conv(_x(1, 2, 3, 4), _x(2, 2, 5, 5)),
     ("input", "weight", "kernel", "output"), (5,)),
    ("kernel_larger_than_input_valid", ValueError, lambda: conv(_x(1, 2, 3, 4), _x(2, 2, 5, 5), padding="valid"),
     ("input", "weight", "kernel", "output"), (5,)),
    ("kernel_larger_with_padding", ValueError, lambda: conv(_x(1, 2, 3, 3), _x(2, 2, 6, 6), padding=1),
     ("input", "weight", "kernel", "output", "padding"), (6,)),
    ("dilated_kernel_too_large", ValueError, lambda: conv(_x(1, 2, 5, 5), _x(2, 2, 3, 3), dilation=3),
     ("input", "weight", "kernel", "output", "dilation"), ()),
    # ---- ndim
    ("input_2d", ValueError, lambda: conv(_x(9, 8), Wt), "input", ()),
    ("input_5d", ValueError, lambda: conv(_x(1, 2, 6, 9, 8), Wt), "input", ()),
    ("input_0d", ValueError, lambda: conv(np.float32(1.0), Wt), "input", ()),
    ("weight_3d", ValueError, lambda: conv(X, _x(4, 6, 3)), "weight", ()),
    ("weight_5d", ValueError, lambda: conv(X, _x(4, 6, 3, 3, 1)), "weight", ()),
    # ---- bias
    ("bias_wrong_length", ValueError, lambda: conv(X, Wt, _x(5)), "bias", (5, 4)),
    ("bias_2d", ValueError, lambda: conv(X, Wt, _x(1, 4)), "bias", ()),
    ("bias_scalar", ValueError, lambda: conv(X, Wt, np.float32(1.0)), "bias", ()),
    # ---- dtypes
    ("dtype_int32", TypeError, lambda: conv(X.astype(np.int32), Wt.astype(np.int32)), "int32", ()),
    ("dtype_int64_weight", TypeError, lambda: conv(X, Wt.astype(np.int64)), "int64", ()),
    ("dtype_bool", TypeError, lambda: conv(X > 0, Wt > 0), "bool", ()),
    ("dtype_complex", TypeError, lambda: conv(X.astype(np.complex64), Wt.astype(np.complex64)), "complex", ()),
    ("dtype_uint8", TypeError, lambda: conv(X.astype(np.uint8), Wt.astype(np.uint8)), "uint8", ()),
    ("dtype_mismatch", TypeError, lambda: conv(X, Wt.astype(np.float64)), ("float64",), ()),
    ("dtype_mismatch_16_32", TypeError, lambda: conv(X.astype(np.float16), Wt), ("float16",), ()),
    ("dgrad_int_grad", TypeError, lambda: dgrad(X.shape, Wt, G.astype(np.int32)), ("int32",), ()),
    ("wgrad_int_input", TypeError, lambda: wgrad(X.astype(np.int64), Wt.shape, G.astype(np.int64)), ("int64",), ()),
    # ---- non-arrays
    ("input_none", EITHER, lambda: conv(None, Wt), "input", ()),
    ("input_string", EITHER, lambda: conv("abc", Wt), "input", ()),
    ("input_ragged", EITHER, lambda: conv([[[[1.0, 2.0], [3.0]]]], Wt), "input", ()),
    ("weight_object", EITHER, lambda: conv(X, object()), "weight", ()),
    ("grad_output_none", EITHER, lambda: dgrad(X.shape, Wt, None), "grad_output", ()),
    # ---- algo / backend
    ("algo_unknown", ValueError, lambda: conv(X, Wt, algo="fft"), "algo", ()),
    ("algo_unknown_dgrad", ValueError, lambda: dgrad(X.shape, Wt, G, algo="fft"), "algo", ()),
    ("algo_unknown_wgrad", ValueError, lambda: wgrad(X, Wt.shape, G, algo="gemm"), "algo", ()),
    ("algo_1x1_on_3x3", ValueError, lambda: conv(X, Wt, algo="1x1"), (r"kernel|weight|R\b|S\b|3x3|size",), ()),
    ("algo_1x1_with_padding", ValueError, lambda: conv(X, _x(4, 6, 1, 1), padding=1, algo="1x1"), "padding", ()),
    ("algo_separable_on_3x3", ValueError, lambda: conv(X, Wt, algo="separable"), (r"kernel|weight|R\b|S\b|3x3|size",), ()),
    ("algo_separable_groups", ValueError, lambda: conv(X, _x(4, 3, 1, 3), groups=2, algo="separable"), "groups", ()),
    ("algo_1x1_dgrad", ValueError, lambda: dgrad(X.shape, Wt, G, algo="1x1"), "1x1", ()),
    ("algo_separable_wgrad", ValueError, lambda: wgrad(X, Wt.shape, G, algo="separable"), "separable", ()),
    ("backend_unknown", ValueError, lambda: conv(X, Wt, backend="tpu"), "backend", ()),
    ("backend_unknown_dgrad", ValueError, lambda: dgrad(X.shape, Wt, G, backend="numba-tpu"), "backend", ()),
    ("backend_unknown_wgrad", ValueError, lambda: wgrad(X, Wt.shape, G, backend="gpu0"), "backend", ()),
    # ---- out=
    ("out_wrong_shape", ValueError, lambda: conv(X, Wt, out=np.empty((2, 4, 7, 7), F32)), "out", ()),
    ("out_wrong_dtype", ValueError, lambda: conv(X, Wt, out=np.empty((2, 4, 7, 6), np.float64)), "out", ()),
    ("out_fortran", ValueError, lambda: conv(X, Wt, out=np.empty((2, 4, 7, 6), F32, order="F")), "out", ()),
    ("out_strided", ValueError, lambda: conv(X, Wt, out=np.empty((2, 4, 7, 12), F32)[..., ::2]), "out", ()),
    ("out_readonly", EITHER, lambda: conv(X, Wt, out=_readonly(np.empty((2, 4, 7, 6), F32))), "out", ()),
    ("out_unbatched_shape", ValueError, lambda: conv(X[0], Wt, out=np.empty((1, 4, 7, 6), F32)), "out", ()),
    # ---- conv2d_input
    ("dgrad_grad_output_wrong_P", ValueError, lambda: dgrad(X.shape, Wt, _x(2, 4, 8, 6)), "grad_output", (8,)),
    ("dgrad_grad_output_wrong_K", ValueError, lambda: dgrad(X.shape, Wt, _x(2, 5, 7, 6)), "grad_output", (5,)),
    ("dgrad_grad_output_wrong_N", ValueError, lambda: dgrad(X.shape, Wt, _x(3, 4, 7, 6)), ("grad_output", "input_size"), (3,)),
    ("dgrad_grad_output_3d", ValueError, lambda: dgrad(X.shape, Wt, _x(4, 7, 6)), "grad_output", ()),
    ("dgrad_input_size_len2", ValueError, lambda: dgrad((9, 8), Wt, G), "input_size", ()),
    ("dgrad_input_size_len5", ValueError, lambda: dgrad((2, 6, 9, 8, 1), Wt, G), "input_size", ()),
    ("dgrad_input_size_channels", ValueError, lambda: dgrad((2, 5, 9, 8), Wt, G), ("input_size", "weight"), (5,)),
    ("dgrad_input_size_inconsistent", ValueError, lambda: dgrad((2, 6, 12, 8), Wt, G), ("grad_output", "input_size"), ()),
    ("dgrad_input_size_inconsistent_stride", ValueError,
     lambda: dgrad((2, 6, 9, 8), Wt, _x(2, 4, 3, 3), stride=2), ("grad_output", "input_size"), ()),
    ("dgrad_input_size_float", TypeError, lambda: dgrad((2, 6, 9.5, 8), Wt, G), "input_size", ()),
    ("dgrad_input_size_negative", ValueError, lambda: dgrad((2, 6, -9, 8), Wt, G), "input_size", ()),
    ("dgrad_input_size_none", TypeError, lambda: dgrad(None, Wt, G), "input_size", ()),
    ("dgrad_weight_3d", ValueError, lambda: dgrad(X.shape, _x(4, 6, 3), G), "weight", ()),
    ("dgrad_stride_zero", ValueError, lambda: dgrad(X.shape, Wt, G, stride=0), "stride", ()),
    ("dgrad_padding_bad", ValueError, lambda: dgrad(X.shape, Wt, G, padding="full"), "padding", ()),
    ("dgrad_groups_bad", ValueError, lambda: dgrad(X.shape, Wt, G, groups=4), ("groups", "weight", "input_size"), ()),
    # ---- conv2d_weight
    ("wgrad_grad_output_wrong_Q", ValueError, lambda: wgrad(X, Wt.shape, _x(2, 4, 7, 5)), "grad_output", (5,)),
    ("wgrad_grad_output_wrong_K", ValueError, lambda: wgrad(X, Wt.shape, _x(2, 3, 7, 6)), ("grad_output", "weight_size"), (3,)),
    ("wgrad_grad_output_wrong_N", ValueError, lambda: wgrad(X, Wt.shape, _x(1, 4, 7, 6)), ("grad_output", "input"), ()),
    ("wgrad_grad_output_5d", ValueError, lambda: wgrad(X, Wt.shape, _x(2, 4, 7, 6, 1)), "grad_output", ()),
    ("wgrad_weight_size_len3", ValueError, lambda: wgrad(X, (4, 6, 3), G), "weight_size", ()),
    ("wgrad_weight_size_len5", ValueError, lambda: wgrad(X, (4, 6, 3, 3, 1), G), "weight_size", ()),
    ("wgrad_weight_size_channels", ValueError, lambda: wgrad(X, (4, 5, 3, 3), G), ("weight_size", "input"), (5,)),
    ("wgrad_weight_size_kernel", ValueError, lambda: wgrad(X, (4, 6, 2, 3), G), ("weight_size", "grad_output"), ()),
    ("wgrad_weight_size_float", TypeError, lambda: wgrad(X, (4, 6, 3.0, 3), G), "weight_size", ()),
    ("wgrad_weight_size_zero", ValueError, lambda: wgrad(X, (4, 6, 0, 3), G), "weight_size", ()),
    ("wgrad_input_2d", ValueError, lambda: wgrad(_x(6, 9), Wt.shape, G), "input", ()),
    ("wgrad_dilation_bad", ValueError, lambda: wgrad(X, Wt.shape, G, dilation=0), "dilation", ()),
    ("wgrad_groups_float", TypeError, lambda: wgrad(X, Wt.shape, G, groups=1.0), "groups", ()),
]


@pytest.mark.parametrize("exc,fn,names,numbers", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input(exc, fn, names, numbers):
    check(exc, fn, names, numbers)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("exc,fn,names,numbers", [pytest.param(*c[1:], id=c[0]) for c in CASES
                                                  if not c[0].startswith(("algo", "backend"))])
def test_bad_input_every_backend(exc, fn, names, numbers, backend):
    # the same validation whatever the backend
    _EXTRA["backend"] = backend
    try:
        check(exc, fn, names, numbers)
    finally:
        _EXTRA.clear()


def test_valid_calls_work():
    # the base problem used above is itself valid (so the errors come from the one bad value)
    y = conv(X, Wt, B)
    assert y.shape == (2, 4, 7, 6)
    assert dgrad(X.shape, Wt, G).shape == X.shape
    assert wgrad(X, Wt.shape, G).shape == Wt.shape
    assert dgrad((2, 6, 9, 8), Wt, _x(2, 4, 4, 3), stride=2).shape == X.shape
    assert dgrad((2, 6, 10, 9), Wt, _x(2, 4, 4, 4), stride=2).shape == (2, 6, 10, 9)
    assert conv(X, _x(4, 3, 1, 3), groups=2, algo="direct").shape == (2, 4, 9, 6)
    assert conv(X, _x(4, 6, 1, 1), padding=1, algo="separable").shape == (2, 4, 11, 10)
    assert conv(X, Wt, stride=np.int64(2), padding=np.int32(1), groups=np.int8(1)).shape == (2, 4, 5, 4)
    assert conv(_x(1, 2, 3, 4), _x(2, 2, 5, 5), padding="same").shape == (1, 2, 3, 4)
    assert conv(_x(1, 2, 3, 3), _x(2, 2, 5, 5), padding=1).shape == (1, 2, 1, 1)  # fits exactly
    assert wgrad(X[:0], Wt.shape, G[:0]).shape == Wt.shape
    assert wgrad(X, tuple(np.array(Wt.shape)), G).shape == Wt.shape


def test_errors_do_not_corrupt_state():
    # after many failures, results are still right
    for c in CASES:
        try:
            c[2]()
        except (ValueError, TypeError):
            pass
    y = conv(X.astype(np.float64), Wt.astype(np.float64))
    xd, wd = X.astype(np.float64), Wt.astype(np.float64)
    manual = np.zeros((2, 4, 7, 6))
    for r in range(3):
        for s in range(3):
            manual += np.einsum("nchw,kc->nkhw", xd[:, :, r:r + 7, s:s + 6], wd[:, :, r, s])
    np.testing.assert_allclose(y, manual, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arg", ["stride", "padding", "dilation"])
def test_parameters_past_int64_name_the_argument(arg):
    """2^63 and up: a ValueError naming the argument (the compiled backends' int64 problem raised a
    pybind TypeError dump listing the whole constructor signature)."""
    kw = dict(stride=1, padding=0, dilation=1)
    kw[arg] = 2**63 if arg != "padding" else (0, 2**63)
    for backend in ("cpu", "numba"):
        with pytest.raises(ValueError, match=f"{arg}=.*does not fit in int64"):
            ops.conv2d(_x(1, 1, 3, 3), _x(1, 1, 2, 2), None, backend=backend, **kw)


def test_gradient_shape_arguments_must_agree_with_grad_output():
    """conv2d_input with a 4-entry input_size and a 3-D (unbatched) grad_output raised nothing and
    dropped the batch dimension; torch refuses. weight_size is always 4 entries."""
    with pytest.raises(ValueError, match=r"input_size \(1, 3, 5, 4\) is batched .* grad_output is unbatched"):
        ops.conv2d_input((1, 3, 5, 4), _x(2, 3, 2, 2), _x(2, 4, 3))
    assert ops.conv2d_input((3, 5, 4), _x(2, 3, 2, 2), _x(2, 4, 3)).shape == (3, 5, 4)
    with pytest.raises(ValueError, match=r"weight_size must have 4 entries, got 3"):
        ops.conv2d_weight(_x(1, 3, 5, 5), (3, 3, 3), _x(1, 3, 3, 3))


@pytest.mark.parametrize("op", ["fprop", "dgrad", "wgrad"])
def test_algorithm_a_backend_lacks_is_refused_on_an_empty_batch(op):
    """With N = 0 no kernel runs, so the backend's own refusal never came: winograd on cuda-emu
    returned an empty result for N = 0 and raised for N = 1. Both raise now."""
    from fastconv import backends
    if "cuda-emu" not in backends.available():
        pytest.skip("the cuda-emu backend is not built")
    for n in (0, 1):
        x, w = np.zeros((n, 3, 5, 6)), np.zeros((3, 3, 3, 3))
        g = np.zeros((n, 3, 3, 4))
        call = {"fprop": lambda: ops.conv2d(x, w, algo="winograd", backend="cuda-emu"),
                "dgrad": lambda: ops.conv2d_input(x.shape, w, g, algo="winograd", backend="cuda-emu"),
                "wgrad": lambda: ops.conv2d_weight(x, w.shape, g, algo="winograd", backend="cuda-emu")}[op]
        with pytest.raises(ValueError, match="winograd"):
            call()
