"""Transfer learning and the FC <-> convolution equivalence."""
from __future__ import annotations

import copy

import numpy as np

from .. import nn
from ..autograd import no_grad

__all__ = ["count_parameters", "get_submodule", "set_submodule", "freeze", "unfreeze", "replace_head",
           "to_fully_convolutional"]


def count_parameters(model, trainable_only=False):
    return sum(int(p.data.size) for p in model.parameters() if p.requires_grad or not trainable_only)


def get_submodule(model, name):
    m = model
    for part in filter(None, name.split(".")):
        sub = m._modules.get(part) if isinstance(m, nn.Module) else None
        if sub is None:
            raise KeyError(f"{type(model).__name__} has no submodule {name!r} (stopped at {part!r})")
        m = sub
    return m


def set_submodule(model, name, module):
    parent, _, last = name.rpartition(".")
    p = get_submodule(model, parent)
    if last not in p._modules:
        raise KeyError(f"{type(model).__name__} has no submodule {name!r}")
    setattr(p, last, module)


def _matches(pname, prefixes):
    return any(pname == q or pname.startswith(q + ".") for q in prefixes)


def _set_requires_grad(model, names, flag):
    prefixes = [names] if isinstance(names, str) else list(names) if names is not None else None
    hit = 0
    for pname, p in model.named_parameters():
        if prefixes is None or _matches(pname, prefixes):
            p.requires_grad_(flag)
            hit += 1
    if prefixes is not None and not hit:
        raise KeyError(f"no parameter of {type(model).__name__} is under {prefixes}; "
                       f"top-level modules are {list(model._modules)}")
    return hit


def freeze(model, names=None):
    """Stop gradients for the parameters under the given module names (all when None); returns how many."""
    return _set_requires_grad(model, names, False)


def unfreeze(model, names=None):
    return _set_requires_grad(model, names, True)


def _last_linear(model):
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    if name is None:
        raise ValueError(f"{type(model).__name__} has no Linear layer to replace")
    return name


def replace_head(model, num_classes, name=None):
    """Swap the classifier (the last Linear, or the module ``name``) for a fresh one with
    ``num_classes`` outputs; returns the new layer (trainable even if the rest is frozen)."""
    name = name or _last_linear(model)
    old = get_submodule(model, name)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    elif isinstance(old, nn.Conv2d):
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding)
    else:
        raise TypeError(f"replace_head: {name!r} is a {type(old).__name__}, not a Linear or Conv2d")
    set_submodule(model, name, new)
    return new


def _linear_as_conv(lin, c, h, w):
    conv = nn.Conv2d(c, lin.out_features, (h, w), bias=lin.bias is not None)
    with no_grad():
        # Flatten orders features (C, H, W): the weight's rows reshape to filters directly
        conv.weight.data[...] = lin.weight.data.reshape(lin.out_features, c, h, w)
        if lin.bias is not None:
            conv.bias.data[...] = lin.bias.data
    conv.weight.requires_grad_(lin.weight.requires_grad)
    return conv


def to_fully_convolutional(model, input_shape=None):
    """A copy of ``model`` whose trailing ``Linear`` layers are convolutions, so it accepts larger
    images and returns a class score map ``(N, classes, h, w)`` (the seed's FC <-> conv equivalence).

    * ``features`` + ``classifier`` models (LeNet, simple_cnn, AlexNet, ZFNet, VGG): the first
      Linear becomes a conv whose kernel covers the whole feature map at the training size,
      the following ones 1x1 convs. At ``input_shape`` (the design size by default) the map is
      1x1 and holds the original logits exactly.
    * global-average-pool models with an ``fc`` (ResNets): the pool is dropped and ``fc``
      becomes a 1x1 conv; the map's spatial mean equals the original logits.
    """
    shape = tuple(input_shape or getattr(model, "default_input_shape", ()) or ())
    m = copy.deepcopy(model)
    if hasattr(m, "features") and isinstance(getattr(m, "classifier", None), nn.Sequential):
        if len(shape) != 3:
            raise ValueError("to_fully_convolutional: give input_shape=(C, H, W), the size the model was trained on")
        seen = {}
        h = m.features.register_forward_hook(lambda mod, inp, out: seen.setdefault("shape", tuple(out.shape)))
        was = m.training
        m.eval()
        try:
            with no_grad():
                m.features(np.zeros((1,) + shape, np.float32))
        finally:
            h.remove()
            m.train(was)
        _, c, hh, ww = seen["shape"]
        layers, first = [], True
        for sub in m.classifier:
            if isinstance(sub, nn.Flatten):
                continue
            if isinstance(sub, nn.Linear):
                if first:
                    if sub.in_features != c * hh * ww:
                        raise ValueError(f"to_fully_convolutional: features give {c}x{hh}x{ww} = {c * hh * ww} "
                                         f"values at input {shape}, the first Linear takes {sub.in_features}")
                    sub = _linear_as_conv(sub, c, hh, ww)
                    c, first = sub.out_channels, False
                else:
                    sub = _linear_as_conv(sub, sub.in_features, 1, 1)
            layers.append(sub)
        fc = nn.Sequential(*layers)
        out = nn.Sequential(m.features, fc)
    elif isinstance(getattr(m, "fc", None), nn.Linear) and hasattr(m, "forward_features"):
        out = _GapFCN(m)
    else:
        raise TypeError(f"to_fully_convolutional: {type(model).__name__} has neither features + classifier "
                        "nor forward_features + fc")
    out.default_input_shape = shape or getattr(model, "default_input_shape", None)
    return out


class _GapFCN(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.body = m
        self.head = _linear_as_conv(m.fc, m.fc.in_features, 1, 1)

    def forward(self, x):
        return self.head(self.body.forward_features(x))
