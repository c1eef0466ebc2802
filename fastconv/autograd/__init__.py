"""Reverse-mode autograd over arrays: ``Tensor``, ``Function``, ``no_grad``, ``gradcheck``.

Each :class:`Function` has a ``forward`` and a ``backward`` that call
``fastconv.ops``; the engine records the graph when grad mode is on and an
input requires grad, and ``Tensor.backward`` walks it in topological order.
"""
from .engine import (Function, array_module, enable_grad, is_grad_enabled, no_grad,  # noqa: F401
                     set_grad_enabled)
from .gradcheck import gradcheck  # noqa: F401
from .tensor import Tensor, cat, stack, tensor  # noqa: F401

__all__ = ["Tensor", "Function", "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled", "cat",
           "stack", "tensor", "gradcheck", "array_module"]
