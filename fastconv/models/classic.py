"""The plain feed-forward networks: LeNet-5, the seed's Fashion-MNIST CNN, AlexNet, ZFNet, VGG.

Each is a :class:`Classifier`: ``features`` (convolutions) then ``classifier``
(``Flatten`` + ``Linear`` layers), the split that :func:`to_fully_convolutional`
and the transfer-learning helpers rely on.
"""
from __future__ import annotations

from collections import OrderedDict

from .. import nn

__all__ = ["Classifier", "lenet5", "simple_cnn", "alexnet", "zfnet", "vgg11", "vgg11_lrn", "vgg13", "vgg16",
           "vgg19", "VGG_CONFIGS"]


class Classifier(nn.Module):
    """``classifier(features(x))``; ``default_input_shape`` is the (C, H, W) the network was designed for."""

    def __init__(self, features, classifier, default_input_shape, name):
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.default_input_shape = tuple(default_input_shape)
        self.arch = name

    def forward(self, x):
        return self.classifier(self.features(x))


def _check(num_classes, in_channels, who):
    for v, n in ((num_classes, "num_classes"), (in_channels, "in_channels")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{who}: {n} must be a positive int, got {v!r}")


def lenet5(num_classes=10, in_channels=1, activation="relu", pool="max"):
    """LeNet-5 (LeCun et al. 1998) on 32x32: C1 6@5x5, S2, C3 16@5x5, S4, C5 120, F6 84, output.

    61,706 parameters for 10 classes. Two deliberate departures from the paper,
    as every modern reimplementation does: C3 connects to all six S2 maps (the
    paper's sparse connection table would give 1,516 weights instead of 2,416),
    and S2/S4 are plain pools (no trainable coefficient and bias) followed by
    ReLU; ``activation='tanh', pool='avg'`` gives the older flavour with the same
    parameter count. The output is a Linear layer instead of the RBF units.
    """
    _check(num_classes, in_channels, "lenet5")
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    Pool = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[pool]
    features = nn.Sequential(OrderedDict([
        ("c1", nn.Conv2d(in_channels, 6, 5)), ("act1", act()), ("s2", Pool(2, 2)),
        ("c3", nn.Conv2d(6, 16, 5)), ("act3", act()), ("s4", Pool(2, 2)),
    ]))
    classifier = nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("c5", nn.Linear(16 * 5 * 5, 120)), ("act5", act()),
        ("f6", nn.Linear(120, 84)), ("act6", act()),
        ("output", nn.Linear(84, num_classes)),
    ]))
    return Classifier(features, classifier, (in_channels, 32, 32), "lenet5")


def simple_cnn(num_classes=10, in_channels=1):
    """The seed's Fashion-MNIST network (29,034 parameters on 1x28x28):
    conv 16 5x5 p2 -> BN -> ReLU -> max pool 2 -> conv 32 5x5 p2 -> BN -> ReLU -> max pool 2 -> FC."""
    _check(num_classes, in_channels, "simple_cnn")
    features = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 16, 5, padding=2)), ("bn1", nn.BatchNorm2d(16)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2, 2)),
        ("conv2", nn.Conv2d(16, 32, 5, padding=2)), ("bn2", nn.BatchNorm2d(32)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2, 2)),
    ]))
    classifier = nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("fc", nn.Linear(32 * 7 * 7, num_classes))]))
    return Classifier(features, classifier, (in_channels, 28, 28), "simple_cnn")


def _fc_head(in_features, num_classes, dropout=0.5, hidden=4096):
    return nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("drop6", nn.Dropout(dropout)), ("fc6", nn.Linear(in_features, hidden)), ("relu6", nn.ReLU(inplace=True)),
        ("drop7", nn.Dropout(dropout)), ("fc7", nn.Linear(hidden, hidden)), ("relu7", nn.ReLU(inplace=True)),
        ("fc8", nn.Linear(hidden, num_classes)),
    ]))


def alexnet(num_classes=1000, in_channels=3, dropout=0.5):
    """AlexNet as in the 2012 paper (Krizhevsky, Sutskever, Hinton) on 3x227x227: 62,378,344 parameters.

    96-256-384-384-256 filters (11x11/4, 5x5, 3x3, 3x3, 3x3), local response
    normalization (n=5, alpha=1e-4, beta=0.75, k=2) after the ReLUs of layers 1
    and 2, overlapping 3x3/2 max pooling after the two LRN layers and layer 5,
    dropout 0.5 before the two 4096-unit layers. The paper's two-GPU split
    (grouped conv2/4/5) is not reproduced: the 62.4M figure is the single-tower
    network, which is the one quoted everywhere (the paper's "60 million").
    The paper says 224x224 input, which does not divide: 227 is what makes 55x55.
    """
    _check(num_classes, in_channels, "alexnet")
    features = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 96, 11, stride=4)), ("relu1", nn.ReLU(inplace=True)),
        ("lrn1", nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)), ("pool1", nn.MaxPool2d(3, 2)),
        ("conv2", nn.Conv2d(96, 256, 5, padding=2)), ("relu2", nn.ReLU(inplace=True)),
        ("lrn2", nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)), ("pool2", nn.MaxPool2d(3, 2)),
        ("conv3", nn.Conv2d(256, 384, 3, padding=1)), ("relu3", nn.ReLU(inplace=True)),
        ("conv4", nn.Conv2d(384, 384, 3, padding=1)), ("relu4", nn.ReLU(inplace=True)),
        ("conv5", nn.Conv2d(384, 256, 3, padding=1)), ("relu5", nn.ReLU(inplace=True)),
        ("pool5", nn.MaxPool2d(3, 2)),
    ]))
    return Classifier(features, _fc_head(256 * 6 * 6, num_classes, dropout), (in_channels, 227, 227), "alexnet")


def zfnet(num_classes=1000, in_channels=3, dropout=0.5):
    """ZFNet (Zeiler & Fergus 2013, their Fig. 3) on 3x224x224: 62,357,608 parameters.

    AlexNet with a 7x7/2 first layer (instead of 11x11/4) and a 5x5/2 second
    layer, so the first maps are 110x110 and 26x26 as in the paper's figure; the
    3x3/2 pools round up (ceil mode) to give the figure's 55x55 and 13x13. The
    paper's contrast normalization across feature maps is LRN here.
    """
    _check(num_classes, in_channels, "zfnet")
    features = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 96, 7, stride=2, padding=1)), ("relu1", nn.ReLU(inplace=True)),
        ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)), ("lrn1", nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)),
        ("conv2", nn.Conv2d(96, 256, 5, stride=2)), ("relu2", nn.ReLU(inplace=True)),
        ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)), ("lrn2", nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)),
        ("conv3", nn.Conv2d(256, 384, 3, padding=1)), ("relu3", nn.ReLU(inplace=True)),
        ("conv4", nn.Conv2d(384, 384, 3, padding=1)), ("relu4", nn.ReLU(inplace=True)),
        ("conv5", nn.Conv2d(384, 256, 3, padding=1)), ("relu5", nn.ReLU(inplace=True)),
        ("pool5", nn.MaxPool2d(3, 2)),
    ]))
    return Classifier(features, _fc_head(256 * 6 * 6, num_classes, dropout), (in_channels, 224, 224), "zfnet")


# Simonyan & Zisserman 2014, Table 1 ("M" = 2x2/2 max pool, "LRN" = local response normalization)
VGG_CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _vgg(cfg, name, num_classes, in_channels, batch_norm=False, dropout=0.5):
    _check(num_classes, in_channels, name)
    layers, c, i, block = OrderedDict(), in_channels, 1, 1
    for v in VGG_CONFIGS[cfg]:
        if v == "M":
            layers[f"pool{block}"] = nn.MaxPool2d(2, 2)
            block, i = block + 1, 1
        elif v == "LRN":  # A-LRN: the paper's LRN uses Krizhevsky's parameters
            layers[f"lrn{block}"] = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
        else:
            layers[f"conv{block}_{i}"] = nn.Conv2d(c, v, 3, padding=1)
            if batch_norm:
                layers[f"bn{block}_{i}"] = nn.BatchNorm2d(v)
            layers[f"relu{block}_{i}"] = nn.ReLU(inplace=True)
            c, i = v, i + 1
    return Classifier(nn.Sequential(layers), _fc_head(512 * 7 * 7, num_classes, dropout), (in_channels, 224, 224),
                      name)


def vgg11(num_classes=1000, in_channels=3, batch_norm=False):
    """VGG configuration A (11 weight layers): 132,863,336 parameters."""
    return _vgg("A", "vgg11", num_classes, in_channels, batch_norm)


def vgg11_lrn(num_classes=1000, in_channels=3):
    """VGG configuration A-LRN: A with LRN after the first layer (no extra parameters)."""
    return _vgg("A-LRN", "vgg11_lrn", num_classes, in_channels)


def vgg13(num_classes=1000, in_channels=3, batch_norm=False):
    """VGG configuration B (13 weight layers): 133,047,848 parameters."""
    return _vgg("B", "vgg13", num_classes, in_channels, batch_norm)


def vgg16(num_classes=1000, in_channels=3, batch_norm=False):
    """VGG configuration D (16 weight layers): 138,357,544 parameters."""
    return _vgg("D", "vgg16", num_classes, in_channels, batch_norm)


def vgg19(num_classes=1000, in_channels=3, batch_norm=False):
    """VGG configuration E (19 weight layers): 143,667,240 parameters."""
    return _vgg("E", "vgg19", num_classes, in_channels, batch_norm)
