"""GoogLeNet / Inception v1 (Szegedy et al. 2014), from the paper's Table 1 (the seed's table).

Follows the paper, not torchvision: the "5x5" branch really is 5x5 (torchvision
uses 3x3 there, a known slip carried over from its first port), there is no
batch normalization (it came a year later; convolutions have biases instead),
and the stem has the paper's two LRN layers. The seed's table agrees with the
paper on every filter count, so nothing here departs from it.
"""
from __future__ import annotations

from collections import OrderedDict

from .. import autograd, nn

__all__ = ["Inception", "InceptionAux", "GoogLeNet", "googlenet", "GOOGLENET_TABLE"]


def _conv_relu(cin, cout, k, stride=1, padding=0):
    return nn.Sequential(OrderedDict([("conv", nn.Conv2d(cin, cout, k, stride=stride, padding=padding)),
                                      ("relu", nn.ReLU(inplace=True))]))


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: 1x1 | 1x1->3x3 | 1x1->5x5 | 3x3 max pool->1x1."""

    def __init__(self, cin, c1, c3r, c3, c5r, c5, pool_proj):
        super().__init__()
        self.branch1 = _conv_relu(cin, c1, 1)
        self.branch2 = nn.Sequential(_conv_relu(cin, c3r, 1), _conv_relu(c3r, c3, 3, padding=1))
        self.branch3 = nn.Sequential(_conv_relu(cin, c5r, 1), _conv_relu(c5r, c5, 5, padding=2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, padding=1), _conv_relu(cin, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj

    def forward(self, x):
        return autograd.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """The paper's auxiliary classifier: 5x5/3 average pool, 1x1 conv 128, FC 1024, dropout 70%, FC."""

    def __init__(self, cin, num_classes, dropout=0.7):
        super().__init__()
        self.pool = nn.AvgPool2d(5, 3)
        self.conv = _conv_relu(cin, 128, 1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.flatten(self.conv(self.pool(x)))
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


# name: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj)
GOOGLENET_TABLE = OrderedDict([
    ("3a", (64, 96, 128, 16, 32, 32)), ("3b", (128, 128, 192, 32, 96, 64)),
    ("4a", (192, 96, 208, 16, 48, 64)), ("4b", (160, 112, 224, 24, 64, 64)), ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)), ("4e", (256, 160, 320, 32, 128, 128)),
    ("5a", (256, 160, 320, 32, 128, 128)), ("5b", (384, 192, 384, 48, 128, 128)),
])


class GoogLeNet(nn.Module):
    """In training with ``aux_logits=True``, forward returns ``(logits, aux1, aux2)`` (aux1 after 4a,
    aux2 after 4d); the trainer adds the auxiliary losses with weight ``aux_loss_weight`` (0.3,
    the paper's). In eval mode it returns the logits only."""

    aux_loss_weight = 0.3

    def __init__(self, num_classes=1000, in_channels=3, aux_logits=True, dropout=0.4, aux_dropout=0.7):
        super().__init__()
        for v, n in ((num_classes, "num_classes"), (in_channels, "in_channels")):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"googlenet: {n} must be a positive int, got {v!r}")
        self.arch = "googlenet"
        self.default_input_shape = (in_channels, 224, 224)
        self.aux_logits = bool(aux_logits)
        self.stem = nn.Sequential(OrderedDict([
            ("conv1", _conv_relu(in_channels, 64, 7, stride=2, padding=3)),
            ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)), ("lrn1", nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)),
            ("conv2_reduce", _conv_relu(64, 64, 1)), ("conv2", _conv_relu(64, 192, 3, padding=1)),
            ("lrn2", nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)), ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
        ]))
        cin = 192
        blocks = {}
        for name, cfg in GOOGLENET_TABLE.items():
            blocks[name] = Inception(cin, *cfg)
            cin = blocks[name].out_channels
        self.inception3a, self.inception3b = blocks["3a"], blocks["3b"]
        self.pool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a, self.inception4b, self.inception4c = blocks["4a"], blocks["4b"], blocks["4c"]
        self.inception4d, self.inception4e = blocks["4d"], blocks["4e"]
        self.pool4 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception5a, self.inception5b = blocks["5a"], blocks["5b"]
        if self.aux_logits:
            self.aux1 = InceptionAux(512, num_classes, aux_dropout)
            self.aux2 = InceptionAux(528, num_classes, aux_dropout)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.pool3(self.inception3b(self.inception3a(self.stem(x))))
        x = self.inception4a(x)
        aux = self.aux_logits and self.training
        a1 = self.aux1(x) if aux else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        a2 = self.aux2(x) if aux else None
        x = self.pool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        logits = self.fc(self.dropout(self.flatten(self.avgpool(x))))
        return (logits, a1, a2) if aux else logits


def googlenet(num_classes=1000, in_channels=3, aux_logits=True):
    """GoogLeNet (Inception v1), 224x224 input: 6,998,552 parameters, 13,378,280 with the auxiliary heads."""
    return GoogLeNet(num_classes, in_channels, aux_logits)
