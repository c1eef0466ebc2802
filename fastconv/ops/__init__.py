"""Array-level API: NumPy in, NumPy out, ``torch.nn.functional`` names and semantics."""
from .conv import (ALGORITHMS, algorithms_for, autotune_cache, choose_algo, conv2d, conv2d_input,
                   conv2d_weight, set_autotune)

__all__ = ["ALGORITHMS", "algorithms_for", "autotune_cache", "choose_algo", "conv2d", "conv2d_input",
           "conv2d_weight", "set_autotune"]
