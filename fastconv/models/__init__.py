"""The model zoo: classic CNNs built from :mod:`fastconv.nn` modules.

``get_model(name, num_classes=..., in_channels=...)`` builds one by name;
``MODELS`` lists them. Every model has ``default_input_shape`` (C, H, W).
"""
from __future__ import annotations

from .alphago import AlphaGoPolicy, alphago_policy  # noqa: F401
from .classic import (VGG_CONFIGS, Classifier, alexnet, lenet5, simple_cnn, vgg11, vgg11_lrn, vgg13,  # noqa: F401
                      vgg16, vgg19, zfnet)
from .googlenet import GOOGLENET_TABLE, GoogLeNet, googlenet  # noqa: F401
from .inception import InceptionV3, inception_v3  # noqa: F401
from .resnet import (CifarResNet, ResNet, resnet18, resnet20, resnet32, resnet34, resnet44, resnet50,  # noqa: F401
                     resnet56, resnet101, resnet110, resnet152, wide_resnet50_2)
from .utils import (count_parameters, freeze, get_submodule, replace_head, set_submodule,  # noqa: F401
                    to_fully_convolutional, unfreeze)

MODELS = {f.__name__: f for f in (
    lenet5, simple_cnn, alexnet, zfnet, vgg11, vgg11_lrn, vgg13, vgg16, vgg19, googlenet, inception_v3, resnet18,
    resnet34, resnet50, resnet101, resnet152, wide_resnet50_2, resnet20, resnet32, resnet44, resnet56, resnet110,
    alphago_policy)}


def list_models():
    return list(MODELS)


def model_factory(name):
    """The builder of model ``name``: case, ``-`` and ``_`` ignored ("ResNet-18", "wide-resnet-50-2")."""
    key = str(name).lower().replace("-", "_")
    if key not in MODELS:
        loose = {k.replace("_", ""): k for k in MODELS}
        key = loose.get(key.replace("_", ""), key)
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[key]


def get_model(name, **kwargs):
    """Build the model ``name`` (see :data:`MODELS`) with ``num_classes``, ``in_channels``, ..."""
    return model_factory(name)(**kwargs)


__all__ = ["MODELS", "list_models", "get_model", "count_parameters", "freeze", "unfreeze", "replace_head",
           "get_submodule", "set_submodule", "to_fully_convolutional", "AlphaGoPolicy", "Classifier", "GoogLeNet",
           "InceptionV3", "ResNet", "CifarResNet", "VGG_CONFIGS", "GOOGLENET_TABLE"] + list(MODELS)
