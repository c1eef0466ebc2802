"""AlphaGo's policy network (Silver et al. 2016, "Methods: Neural network architecture")."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import nn

__all__ = ["AlphaGoPolicy", "alphago_policy"]


class AlphaGoPolicy(nn.Module):
    """19x19x48 feature planes -> 5x5 conv (k filters) -> eleven 3x3 convs (k filters), ReLUs ->
    1x1 conv to one plane with a separate bias for each board position -> 361 move logits.

    The softmax over moves is left to the loss (cross-entropy takes logits);
    :meth:`move_probabilities` applies it. k = 192 as in the match version:
    3,882,793 parameters.
    """

    def __init__(self, in_channels=48, filters=192, board_size=19, num_layers=13):
        super().__init__()
        if num_layers < 3:
            raise ValueError(f"alphago_policy: num_layers must be >= 3, got {num_layers}")
        self.arch = "alphago_policy"
        self.board_size = board_size
        self.default_input_shape = (in_channels, board_size, board_size)
        layers = OrderedDict([("conv1", nn.Conv2d(in_channels, filters, 5, padding=2)), ("relu1", nn.ReLU())])
        for i in range(2, num_layers):
            layers[f"conv{i}"] = nn.Conv2d(filters, filters, 3, padding=1)
            layers[f"relu{i}"] = nn.ReLU()
        self.features = nn.Sequential(layers)
        self.head = nn.Conv2d(filters, 1, 1, bias=False)
        self.position_bias = nn.Parameter(np.zeros((1, board_size, board_size), np.float32))
        self.flatten = nn.Flatten()

    def forward(self, x):
        return self.flatten(self.head(self.features(x)) + self.position_bias)

    def move_probabilities(self, x):
        return nn.functional.softmax(self(x), 1)


def alphago_policy(num_classes=361, in_channels=48, filters=192, board_size=None):
    """``num_classes`` is the number of board points (361 for 19x19); ``board_size`` is derived from it."""
    size = board_size if board_size is not None else int(round(num_classes ** 0.5))
    if size * size != num_classes:
        raise ValueError(f"alphago_policy: num_classes must be board_size**2 (361 for 19x19), got {num_classes}")
    return AlphaGoPolicy(in_channels, filters, size)
