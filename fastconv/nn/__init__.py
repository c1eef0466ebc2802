"""Layers, containers and functions mirroring ``torch.nn`` on top of :mod:`fastconv.autograd`."""
from . import functional, init  # noqa: F401
from .init import manual_seed  # noqa: F401
from .module import Module, ModuleList, Parameter, Sequential, StateDictError, Summary  # noqa: F401
from .modules import (AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm2d, Conv2d,  # noqa: F401
                      CrossEntropyLoss, Dropout, Flatten, Identity, Linear, LocalResponseNorm, LogSoftmax,
                      LPPool2d, MaxPool2d, MinPool2d, MSELoss, ReLU, Sigmoid, Softmax, Tanh)

__all__ = ["functional", "init", "manual_seed", "Module", "ModuleList", "Parameter", "Sequential",
           "StateDictError", "Summary", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "BatchNorm2d",
           "Conv2d", "CrossEntropyLoss", "Dropout", "Flatten", "Identity", "Linear", "LocalResponseNorm",
           "LogSoftmax", "LPPool2d", "MaxPool2d", "MinPool2d", "MSELoss", "ReLU", "Sigmoid", "Softmax", "Tanh"]
