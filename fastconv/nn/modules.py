"""Layers mirroring ``torch.nn`` (constructor arguments, attribute and state_dict names)."""
from __future__ import annotations

import math

import numpy as np

from ..autograd import Tensor
from ..problem import pair as _pair
from . import functional as F
from . import init
from .module import Module, Parameter

__all__ = ["Conv2d", "Linear", "BatchNorm2d", "ReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "MaxPool2d",
           "MinPool2d", "AvgPool2d", "LPPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "LocalResponseNorm",
           "Dropout", "Flatten", "Identity", "CrossEntropyLoss", "MSELoss"]


def _check_int(v, name, layer, minimum=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{layer}: {name} must be an int, got {v!r}")
    if v < minimum:
        raise ValueError(f"{layer}: {name} must be >= {minimum}, got {v}")
    return int(v)


def _shape_error(layer, expected, x):
    return ValueError(f"{layer}: expected input of shape {expected}, got shape {tuple(x.shape)}")


def _as_tensor(x):
    return x if isinstance(x, Tensor) else Tensor(x)


class Conv2d(Module):
    """2-D convolution layer; ``padding_mode`` 'zeros', 'reflect', 'replicate' or 'circular'.

    Initialized as torch does: weight ``kaiming_uniform_(a=sqrt(5))``, bias
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, drawn from ``generator`` (a numpy Generator
    or int seed) or the default generator of :func:`fastconv.nn.manual_seed`.
    """

    _MODES = ("zeros", "reflect", "replicate", "circular")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", dtype=np.float32, generator=None):
        super().__init__()
        name = "Conv2d"
        self.in_channels = _check_int(in_channels, "in_channels", name)
        self.out_channels = _check_int(out_channels, "out_channels", name)
        self.groups = _check_int(groups, "groups", name)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                             f"divisible by groups ({groups})")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{name}: padding must be 'same', 'valid', an int or a pair, got {padding!r}")
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding", minimum=0)
        if padding_mode not in self._MODES:
            raise ValueError(f"{name}: padding_mode must be one of {self._MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        kh, kw = self.kernel_size
        self.weight = Parameter(np.empty((self.out_channels, self.in_channels // self.groups, kh, kw), dtype))
        self.bias = Parameter(np.empty((self.out_channels,), dtype)) if bias else None
        if not bias:
            self.register_parameter("bias", None)
        self.reset_parameters(generator)

    def reset_parameters(self, generator=None):
        gen = init._resolve_generator(generator)
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=gen)
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
            init.uniform_(self.bias, -bound, bound, generator=gen)

    def forward(self, x):
        x = _as_tensor(x)
        if x.ndim not in (3, 4) or x.shape[-3] != self.in_channels:
            raise _shape_error(repr(self), f"(N, {self.in_channels}, H, W) or ({self.in_channels}, H, W)", x)
        if self.padding_mode == "zeros":
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        top, bottom, left, right = F.conv_padding_amounts(self.padding, x.shape[-2:], self.kernel_size,
                                                          self.stride, self.dilation)
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        x = F.pad(x, (left, right, top, bottom), mode=mode)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def _mult_adds(self, inputs, out):
        return int(out.data.size) * (self.in_channels // self.groups) * self.kernel_size[0] * self.kernel_size[1]

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):  # torch prints padding=valid too
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class Linear(Module):
    """``y = x @ W.T + b`` with torch's default initialization (see :class:`Conv2d`)."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, generator=None):
        super().__init__()
        self.in_features = _check_int(in_features, "in_features", "Linear", 0)
        self.out_features = _check_int(out_features, "out_features", "Linear", 0)
        self.weight = Parameter(np.empty((self.out_features, self.in_features), dtype))
        if bias:
            self.bias = Parameter(np.empty((self.out_features,), dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters(generator)

    def reset_parameters(self, generator=None):
        gen = init._resolve_generator(generator)
        if self.in_features and self.out_features:
            init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=gen)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features else 0.0
            init.uniform_(self.bias, -bound, bound, generator=gen)

    def forward(self, x):
        x = _as_tensor(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise _shape_error(repr(self), f"(*, {self.in_features})", x)
        return F.linear(x, self.weight, self.bias)

    def _mult_adds(self, inputs, out):
        return int(out.data.size) * self.in_features

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class BatchNorm2d(Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 dtype=np.float32):
        super().__init__()
        self.num_features = _check_int(num_features, "num_features", "BatchNorm2d")
        self.eps, self.momentum, self.affine = float(eps), momentum, bool(affine)
        self.track_running_stats = bool(track_running_stats)
        if self.affine:
            self.weight = Parameter(np.ones((num_features,), dtype))
            self.bias = Parameter(np.zeros((num_features,), dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros((num_features,), dtype))
            self.register_buffer("running_var", np.ones((num_features,), dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def forward(self, x):
        x = _as_tensor(x)
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise _shape_error(repr(self), f"(N, {self.num_features}, H, W)", x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data[...] += 1
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.data)
        use_batch = self.training or not self.track_running_stats
        rm = self.running_mean if (not self.training or self.track_running_stats) else None
        rv = self.running_var if (not self.training or self.track_running_stats) else None
        return F.batch_norm(x, rm, rv, self.weight, self.bias, use_batch, factor, self.eps)

    def _mult_adds(self, inputs, out):
        return int(out.data.size)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class _Activation(Module):
    fn = None

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)

    def forward(self, x):
        return type(self).fn(_as_tensor(x))

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class ReLU(_Activation):
    """ReLU; ``inplace=True`` is accepted (torchvision's models pass it) and only changes summary accounting."""

    fn = staticmethod(F.relu)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(_as_tensor(x))


class Tanh(Module):
    def forward(self, x):
        return F.tanh(_as_tensor(x))


class Softmax(Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(_as_tensor(x), self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    def forward(self, x):
        return F.log_softmax(_as_tensor(x), self.dim)


class _Pool4D(Module):
    def _check(self, x):
        x = _as_tensor(x)
        if x.ndim not in (3, 4):
            raise _shape_error(repr(self), "(N, C, H, W) or (C, H, W)", x)
        return x


class MaxPool2d(_Pool4D):
    _fn = staticmethod(F.max_pool2d)

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride if stride is not None else kernel_size, padding
        self.dilation, self.return_indices, self.ceil_mode = dilation, return_indices, ceil_mode

    def forward(self, x):
        return type(self)._fn(self._check(x), self.kernel_size, self.stride, self.padding, self.dilation,
                              self.ceil_mode, self.return_indices)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class MinPool2d(MaxPool2d):
    _fn = staticmethod(F.min_pool2d)


class AvgPool2d(_Pool4D):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride if stride is not None else kernel_size, padding
        self.ceil_mode, self.count_include_pad, self.divisor_override = ceil_mode, count_include_pad, divisor_override

    def forward(self, x):
        return F.avg_pool2d(self._check(x), self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class LPPool2d(_Pool4D):
    def __init__(self, norm_type, kernel_size, stride=None, ceil_mode=False):
        super().__init__()
        self.norm_type, self.kernel_size, self.stride, self.ceil_mode = norm_type, kernel_size, stride, ceil_mode

    def forward(self, x):
        return F.lp_pool2d(self._check(x), self.norm_type, self.kernel_size, self.stride, self.ceil_mode)

    def extra_repr(self):
        return (f"norm_type={self.norm_type}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"ceil_mode={self.ceil_mode}")


class AdaptiveAvgPool2d(_Pool4D):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(self._check(x), self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(_Pool4D):
    def __init__(self, output_size, return_indices=False):
        super().__init__()
        self.output_size, self.return_indices = output_size, return_indices

    def forward(self, x):
        return F.adaptive_max_pool2d(self._check(x), self.output_size, self.return_indices)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class LocalResponseNorm(_Pool4D):
    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x):
        # any input of 3 or more dims, (N, C, ...) as torch (a 3-D input is (N, C, L), not (C, H, W))
        x = _as_tensor(x)
        if x.ndim < 3:
            raise _shape_error(repr(self), "(N, C, ...) with 3 or more dims", x)
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class Dropout(Module):
    def __init__(self, p=0.5, inplace=False, generator=None):
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p, self.inplace = float(p), False
        self._generator = init._resolve_generator(generator) if generator is not None else None

    def forward(self, x):
        return F.dropout(_as_tensor(x), self.p, self.training, generator=self._generator)

    def extra_repr(self):
        return f"p={self.p}, inplace=False"


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return _as_tensor(x).flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class CrossEntropyLoss(Module):
    """torch's arguments in torch's order (see :func:`fastconv.nn.functional.cross_entropy`: class
    weights, class-index or probability targets, (N, C, d1, ...) inputs); the legacy
    ``size_average`` / ``reduce`` map to ``reduction`` as in torch."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0):
        super().__init__()
        reduction = F._legacy_reduction(size_average, reduce, reduction)
        if weight is None:
            self.weight = None
        else:  # a buffer, as torch (it is in the state_dict)
            self.register_buffer("weight", Tensor(np.array(weight.data if isinstance(weight, Tensor) else weight)))
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
                               label_smoothing=self.label_smoothing)


class MSELoss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)
