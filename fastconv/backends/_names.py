"""The pooling / layer kernel table: the names every backend's ``layer_kernel(name)`` answers for,
with the argument lists of the compiled CPU module's functions (``csrc/bindings/cpu_pool.cpp``,
``cpu_layers.cpp``)."""

LAYER_KERNELS = frozenset((
    "pool2d_forward", "pool2d_backward", "adaptive_pool2d_forward", "adaptive_pool2d_backward",
    "bn_stats", "bn_apply", "bn_backward", "lrn", "activation", "softmax", "cross_entropy",
    "dropout", "dropout_backward", "linear", "linear_backward"))
