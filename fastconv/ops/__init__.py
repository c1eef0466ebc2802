"""Array-level API: NumPy in, NumPy out; GPU arrays in, CuPy out; ``torch.nn.functional`` names and semantics.

Every op (convolution, pooling, layer kernels) takes GPU arrays (CuPy,
``__cuda_array_interface__``, CUDA DLPack) too: see :mod:`fastconv.ops._device`.

* convolution: :mod:`fastconv.ops.conv` (``conv2d``, ``conv2d_input``, ``conv2d_weight``)
* pooling: :mod:`fastconv.ops.pool` (max/min/avg/lp/adaptive pooling and their backwards)
* layer kernels: :mod:`fastconv.ops.layers` (batch norm, LRN, activations, softmax,
  cross-entropy, dropout, linear, and their backwards)
"""
from . import conv, layers, pool
from .conv import (ALGORITHMS, algorithms_for, autotune_cache, choose_algo, conv2d, conv2d_input,
                   conv2d_weight, set_autotune)
from .layers import *  # noqa: F401,F403
from .pool import *  # noqa: F401,F403

__all__ = ["ALGORITHMS", "algorithms_for", "autotune_cache", "choose_algo", "conv2d", "conv2d_input",
           "conv2d_weight", "set_autotune"] + list(layers.__all__) + list(pool.__all__)
