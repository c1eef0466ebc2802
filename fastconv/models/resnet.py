"""Residual networks (He et al. 2015): ImageNet ResNet-18..152, Wide ResNet-50-2, CIFAR ResNet-20/56.

The ImageNet models follow torchvision's layout and state_dict names (conv1,
bn1, layer1..4, fc), so torchvision checkpoints load with ``load_state_dict``;
their stride-2 sits on the bottleneck's 3x3 (the "v1.5" variant torchvision
ships), which changes no parameter count.
"""
from __future__ import annotations



from .. import nn
from ..nn import functional as F

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "CifarResNet", "resnet18", "resnet34", "resnet50", "resnet101",
           "resnet152", "wide_resnet50_2", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


def _conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, downsample=None, base_width=64):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0))
        self.conv1 = _conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


def _init_resnet(model, zero_init_residual):
    # He et al.'s initialization for the convolutions (torchvision's choice too);
    # BN starts as identity. Linear keeps torch's default.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)


class ResNet(nn.Module):
    """ImageNet-style ResNet: 7x7/2 stem, 3x3/2 max pool, four stages, global average pool, FC."""

    def __init__(self, block, layers, num_classes=1000, in_channels=3, width_per_group=64,
                 zero_init_residual=False, name="resnet"):
        super().__init__()
        for v, n in ((num_classes, "num_classes"), (in_channels, "in_channels")):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: {n} must be a positive int, got {v!r}")
        self.arch = name
        self.default_input_shape = (in_channels, 224, 224)
        self.base_width = width_per_group
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _init_resnet(self, zero_init_residual)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, base_width=self.base_width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.fc(self.flatten(self.avgpool(self.forward_features(x))))


def resnet18(num_classes=1000, in_channels=3, **kw):
    """ResNet-18: 11,689,512 parameters."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, name="resnet18", **kw)


def resnet34(num_classes=1000, in_channels=3, **kw):
    """ResNet-34: 21,797,672 parameters."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels, name="resnet34", **kw)


def resnet50(num_classes=1000, in_channels=3, **kw):
    """ResNet-50: 25,557,032 parameters."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, name="resnet50", **kw)


def resnet101(num_classes=1000, in_channels=3, **kw):
    """ResNet-101: 44,549,160 parameters."""
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, in_channels, name="resnet101", **kw)


def resnet152(num_classes=1000, in_channels=3, **kw):
    """ResNet-152: 60,192,808 parameters."""
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes, in_channels, name="resnet152", **kw)


def wide_resnet50_2(num_classes=1000, in_channels=3, **kw):
    """Wide ResNet-50-2 (Zagoruyko & Komodakis; torchvision's variant: bottleneck width doubled): 68,883,240."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, width_per_group=128,
                  name="wide_resnet50_2", **kw)


# ------------------------------------------------------------------ CIFAR
class _PadShortcut(nn.Module):
    """Option A of the paper: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.extra = cout - cin

    def forward(self, x):
        x = x[:, :, ::2, ::2]
        lo = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.extra - lo))


class _CifarBlock(nn.Module):
    def __init__(self, cin, cout, stride, shortcut):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.shortcut = _PadShortcut(cin, cout)
            else:
                self.shortcut = nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (self.shortcut(x) if self.shortcut is not None else x))


class CifarResNet(nn.Module):
    """The paper's CIFAR-10 networks (section 4.2): 3x3 conv 16, three stages of n blocks
    (16, 32, 64 filters on 32, 16, 8 maps), global average pool, FC; depth = 6n + 2.

    ``shortcut='A'`` (the paper's choice for CIFAR: zero-padding identity shortcuts,
    ResNet-20 has 269,722 parameters) or ``'B'`` (1x1 projections: 272,474).
    """

    def __init__(self, depth, num_classes=10, in_channels=3, shortcut="A", name=None):
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"CifarResNet: depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"CifarResNet: shortcut must be 'A' or 'B', got {shortcut!r}")
        for v, n in ((num_classes, "num_classes"), (in_channels, "in_channels")):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"CifarResNet: {n} must be a positive int, got {v!r}")
        n = (depth - 2) // 6
        self.arch = name or f"resnet{depth}"
        self.default_input_shape = (in_channels, 32, 32)
        self.conv1 = _conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], 16
        for i, c in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(_CifarBlock(cin, c, 2 if (i > 0 and j == 0) else 1, shortcut))
                cin = c
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        _init_resnet(self, False)

    def forward_features(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x):
        return self.fc(self.flatten(self.avgpool(self.forward_features(x))))


def resnet20(num_classes=10, in_channels=3, shortcut="A"):
    return CifarResNet(20, num_classes, in_channels, shortcut)


def resnet32(num_classes=10, in_channels=3, shortcut="A"):
    return CifarResNet(32, num_classes, in_channels, shortcut)


def resnet44(num_classes=10, in_channels=3, shortcut="A"):
    return CifarResNet(44, num_classes, in_channels, shortcut)


def resnet56(num_classes=10, in_channels=3, shortcut="A"):
    return CifarResNet(56, num_classes, in_channels, shortcut)


def resnet110(num_classes=10, in_channels=3, shortcut="A"):
    return CifarResNet(110, num_classes, in_channels, shortcut)


