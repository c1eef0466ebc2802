"""The convolution vocabulary on the Python side.

A convolution is a :class:`ConvProblem` (CUTLASS names: input N,C,H,W; weight
K,C/groups,R,S; output N,K,P,Q) and :func:`out_size` is the one place the output
size is computed (it mirrors ``fastconv::out_size`` in ``problem.h``; a test
checks that the two agree).  Argument normalization shared by every op lives
here too, so that every op rejects bad input with the same clear messages.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Tuple

import numpy as np

__all__ = ["ConvProblem", "out_size", "make_problem", "pair", "resolve_padding"]


def out_size(in_size: int, pad_lo: int, pad_hi: int, kernel: int, stride: int, dilation: int) -> int:
    """Output length of a convolution/pooling window along one axis.

    ``(in + pad_lo + pad_hi - dilation*(kernel-1) - 1) // stride + 1``; 0 when
    the (dilated) kernel does not fit into the padded input.
    """
    span = in_size + pad_lo + pad_hi - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    return span // stride + 1


def _is_int(v) -> bool:
    if type(v) is int:  # the common case, without the abc checks below (a few us per op call)
        return True
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_int64(v: int, name: str, shown=None) -> int:
    """`v` if it fits the kernels' int64, else ValueError naming `name` (the bindings would raise a
    pybind TypeError dump, numba would wrap; torch says "Overflow when unpacking long long")."""
    if not -2**63 <= v < 2**63:
        raise ValueError(f"{name}={shown if shown is not None else v!r} does not fit in int64")
    return v


def pair(value, name: str, minimum: int = 1) -> Tuple[int, int]:
    """An int or a pair of ints, each >= minimum (TypeError / ValueError otherwise)."""
    if _is_int(value):
        vals = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        vals = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(vals) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    for v in vals:
        check_int64(v, name, value)
    return vals


def resolve_padding(padding, H: int, W: int, R: int, S: int, stride, dilation) -> Tuple[int, int, int, int]:
    """Padding as (top, bottom, left, right).

    ``'valid'`` is no padding. ``'same'`` gives ``P = ceil(H / stride)``: the
    total padding ``max((P-1)*stride + dil*(R-1) + 1 - H, 0)`` is split with the
    extra row/column at the bottom/right (TensorFlow's rule; for stride 1 it is
    exactly torch's ``'same'``, which torch only allows with stride 1).
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            out = []
            for n, k, s, d in ((H, R, stride[0], dilation[0]), (W, S, stride[1], dilation[1])):
                target = -(-n // s)
                total = max((target - 1) * s + d * (k - 1) + 1 - n, 0)
                out += [total // 2, total - total // 2]
            return tuple(out)
        raise ValueError(f"padding must be 'valid', 'same', an int or a pair of ints, got {padding!r}")
    ph, pw = pair(padding, "padding", minimum=0)
    return (ph, ph, pw, pw)


@dataclass(frozen=True)
class ConvProblem:
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    P: int
    Q: int
    pad_h: int  # top
    pad_w: int  # left
    stride_h: int
    stride_w: int
    dil_h: int
    dil_w: int
    groups: int
    pad_bottom: int = 0
    pad_right: int = 0

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self):
        return (self.K, self.C // self.groups, self.R, self.S)

    @property
    def output_shape(self):
        return (self.N, self.K, self.P, self.Q)

    def flops(self) -> float:
        """2 * multiply-adds of one pass (Fprop, Dgrad and Wgrad cost the same)."""
        return 2.0 * self.N * self.K * self.P * self.Q * (self.C // self.groups) * self.R * self.S

    def kernel_args(self) -> dict:
        return dict(N=self.N, C=self.C, H=self.H, W=self.W, K=self.K, R=self.R, S=self.S, P=self.P,
                    Q=self.Q, pad_h=self.pad_h, pad_w=self.pad_w, stride_h=self.stride_h,
                    stride_w=self.stride_w, dil_h=self.dil_h, dil_w=self.dil_w, groups=self.groups)


def _shape(v, name: str, length: int):
    try:
        dims = tuple(v)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of {length} ints, got {v!r}") from None
    if len(dims) != length or not all(_is_int(d) for d in dims):
        raise (TypeError if len(dims) == length else ValueError)(
            f"{name} must be a sequence of {length} ints, got {v!r}")
    if any(int(d) < 0 for d in dims):
        raise ValueError(f"{name} must not contain negative sizes, got {tuple(dims)}")
    return tuple(int(d) for d in dims)


def make_problem(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1,
                 *, input_name="input", weight_name="weight") -> ConvProblem:
    """Validate torch-style conv2d arguments and build the ConvProblem.

    Raises ValueError/TypeError naming the argument and the shapes involved.
    """
    input_shape = _shape(input_shape, input_name, 4)
    weight_shape = _shape(weight_shape, weight_name, 4)
    N, C, H, W = input_shape
    K, Cg, R, S = weight_shape
    stride = pair(stride, "stride")
    dilation = pair(dilation, "dilation")
    if not _is_int(groups):
        raise TypeError(f"groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    check_int64(groups, "groups")
    if min(C, H, W) < 1:
        raise ValueError(f"{input_name} must have non-empty C, H, W dimensions, got shape {input_shape}")
    if min(K, Cg, R, S) < 1:
        raise ValueError(f"{weight_name} must have non-empty dimensions, got shape {weight_shape}")
    if C % groups:
        raise ValueError(f"groups={groups} must divide the input channels: {input_name} shape {input_shape}")
    if K % groups:
        raise ValueError(f"groups={groups} must divide the output channels: {weight_name} shape {weight_shape}")
    if Cg * groups != C:
        raise ValueError(
            f"{weight_name} shape {weight_shape} expects {Cg * groups} input channels (weight.shape[1]={Cg} x "
            f"groups={groups}) but {input_name} has {C}: {input_name} shape {input_shape}")
    if isinstance(padding, str) and padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid', 'same', an int or a pair of ints, got {padding!r}")
    top, bottom, left, right = resolve_padding(padding, H, W, R, S, stride, dilation)
    P = out_size(H, top, bottom, R, stride[0], dilation[0])
    Q = out_size(W, left, right, S, stride[1], dilation[1])
    if P <= 0 or Q <= 0:
        raise ValueError(
            f"kernel larger than the padded input: {weight_name} shape {weight_shape} with dilation {dilation} "
            f"spans {dilation[0] * (R - 1) + 1}x{dilation[1] * (S - 1) + 1} but {input_name} shape {input_shape} "
            f"padded by {padding!r} is only {H + top + bottom}x{W + left + right}")
    return ConvProblem(N, C, H, W, K, R, S, P, Q, top, left, stride[0], stride[1], dilation[0],
                       dilation[1], groups, bottom, right)


def algorithm_rule(algo: str, p: "ConvProblem"):
    """The shape rule of a convolution algorithm: "" when `algo` can take problem `p`, else the
    reason; None for a name that is no algorithm. One copy for every backend (the compiled
    module's can_implement in csrc/ follows the same rules): the ops layer, numba and numba-cuda
    ask here."""
    if algo in ("direct", "im2col"):
        return ""
    if algo == "1x1":
        if p.R != 1 or p.S != 1:
            return f"the 1x1 algorithm needs a 1x1 kernel, got {p.R}x{p.S}"
        if p.pad_h or p.pad_w or p.pad_bottom or p.pad_right:
            return "the 1x1 algorithm needs zero padding"
        return ""
    if algo == "separable":
        if p.groups != 1:
            return f"the separable algorithm needs groups == 1, got groups={p.groups}"
        if p.R != 1 and p.S != 1:
            return f"the separable algorithm needs a 1xn or nx1 kernel, got {p.R}x{p.S}"
        return ""
    if algo == "winograd":
        if (p.R, p.S) != (3, 3):
            return f"the winograd algorithm needs a 3x3 kernel, got {p.R}x{p.S}"
        if (p.stride_h, p.stride_w) != (1, 1):
            return f"the winograd algorithm needs stride 1, got {(p.stride_h, p.stride_w)}"
        if (p.dil_h, p.dil_w) != (1, 1):
            return f"the winograd algorithm needs dilation 1, got {(p.dil_h, p.dil_w)}"
        if p.groups != 1:
            return f"the winograd algorithm needs groups == 1, got groups={p.groups}"
        if max(p.pad_h, p.pad_w) > 2:
            return f"the winograd algorithm needs padding <= 2, got {(p.pad_h, p.pad_w)}"
        return ""
    return None
