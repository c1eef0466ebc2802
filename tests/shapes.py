"""The one shape catalog shared by tests and benchmarks.

Each entry is a ConvSpec: input (N, C, H, W), weight (K, C/groups, R, S) and the
torch.nn.functional.conv2d arguments.  `BENCH_LAYERS` are the layers of the
classic networks named in the foundation issue (full batch); tests run them at
reduced batch through `reduced()`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Tuple, Union

Pad = Union[int, Tuple[int, int], str]


@dataclass(frozen=True)
class ConvSpec:
    name: str
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: Union[int, Tuple[int, int]] = 1
    padding: Pad = 0
    dilation: Union[int, Tuple[int, int]] = 1
    groups: int = 1

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self):
        return (self.K, self.C // self.groups, self.R, self.S)

    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def reduced(self, n: int = 1) -> "ConvSpec":
        return replace(self, N=min(self.N, n))


# Layers of the benchmark (fp32 NCHW), exactly as listed in issue #2.
BENCH_LAYERS = [
    ConvSpec("lenet_c1", 64, 1, 32, 32, 6, 5, 5),
    ConvSpec("lenet_c3", 64, 6, 14, 14, 16, 5, 5),
    ConvSpec("fashion_conv1", 64, 1, 28, 28, 16, 5, 5, padding=2),
    ConvSpec("fashion_conv2", 64, 16, 14, 14, 32, 5, 5, padding=2),
    ConvSpec("alexnet_conv1", 8, 3, 227, 227, 96, 11, 11, stride=4),
    ConvSpec("alexnet_conv2", 8, 96, 27, 27, 256, 5, 5, padding=2),
    ConvSpec("alexnet_conv3", 8, 256, 13, 13, 384, 3, 3, padding=1),
    ConvSpec("vgg16_64@224", 8, 64, 224, 224, 64, 3, 3, padding=1),
    ConvSpec("vgg16_128@112", 8, 128, 112, 112, 128, 3, 3, padding=1),
    ConvSpec("vgg16_256@56", 8, 256, 56, 56, 256, 3, 3, padding=1),
    ConvSpec("vgg16_512@28", 8, 512, 28, 28, 512, 3, 3, padding=1),
    ConvSpec("vgg16_512@14", 8, 512, 14, 14, 512, 3, 3, padding=1),
    ConvSpec("resnet50_conv1", 16, 3, 224, 224, 64, 7, 7, stride=2, padding=3),
    ConvSpec("resnet50_1x1_64@56", 16, 64, 56, 56, 64, 1, 1),
    ConvSpec("resnet50_3x3_64@56", 16, 64, 56, 56, 64, 3, 3, padding=1),
    ConvSpec("resnet50_1x1_64to256@56", 16, 64, 56, 56, 256, 1, 1),
    ConvSpec("resnet50_1x1_256to128@28", 16, 256, 28, 28, 128, 1, 1),
    ConvSpec("resnet50_3x3_512@7", 16, 512, 7, 7, 512, 3, 3, padding=1),
    ConvSpec("inception_1x7@17", 16, 192, 17, 17, 192, 1, 7, padding=(0, 3)),
    ConvSpec("inception_7x1@17", 16, 192, 17, 17, 192, 7, 1, padding=(3, 0)),
    ConvSpec("depthwise_32@112", 16, 32, 112, 112, 32, 3, 3, padding=1, groups=32),
]


# Small correctness problems: tiny and odd sizes, even kernels, dilation, groups,
# depthwise, stride > kernel, 1x1 images, non-square everything, TF-style 'same'
# with strides, 'valid', pair paddings and separable kernels.  Every entry is
# well under 2e6 multiply-adds so the whole matrix (algos x ISAs x ops) stays fast.
TEST_SHAPES = [
    # 1x1 images
    ConvSpec("img1x1_k1x1", 1, 1, 1, 1, 1, 1, 1),
    ConvSpec("img1x1_k1x1_C3K5", 2, 3, 1, 1, 5, 1, 1),
    ConvSpec("img1x1_k3x3_pad1", 2, 3, 1, 1, 4, 3, 3, padding=1),
    ConvSpec("img1x1_same_5x5", 1, 2, 1, 1, 3, 5, 5, padding="same"),
    # tiny / odd, C=1, K=1
    ConvSpec("C1_K1_3x3", 1, 1, 5, 7, 1, 3, 3),
    ConvSpec("C1_K4_5x5_pad2", 2, 1, 6, 9, 4, 5, 5, padding=2),
    ConvSpec("C5_K1_3x3", 3, 5, 7, 4, 1, 3, 3, padding=1),
    ConvSpec("kernel_eq_image", 2, 2, 3, 4, 3, 3, 4),
    ConvSpec("pad_exceeds_kernel_half", 1, 2, 3, 3, 2, 3, 3, padding=3),
    ConvSpec("odd_3x3_pad1", 3, 3, 5, 7, 5, 3, 3, padding=1),
    ConvSpec("odd_5x5_s2", 2, 3, 13, 11, 5, 5, 5, stride=2, padding=1),
    # even kernels
    ConvSpec("even_2x2", 2, 3, 6, 5, 4, 2, 2),
    ConvSpec("even_4x4_pairpad", 1, 2, 9, 8, 3, 4, 4, padding=(1, 2)),
    ConvSpec("even_2x3_pairpad", 2, 3, 7, 6, 2, 2, 3, padding=(1, 0)),
    ConvSpec("even_2x2_s2", 3, 4, 8, 10, 5, 2, 2, stride=2),
    # dilation
    ConvSpec("dil2_3x3", 2, 3, 11, 10, 4, 3, 3, dilation=2, padding=2),
    ConvSpec("dil23_3x2", 1, 4, 12, 13, 3, 3, 2, dilation=(2, 3), padding=(1, 2)),
    ConvSpec("dil3_s2_3x3", 2, 2, 14, 12, 3, 3, 3, stride=2, dilation=3, padding=1),
    # groups / depthwise
    ConvSpec("groups2", 2, 4, 7, 6, 6, 3, 3, padding=1, groups=2),
    ConvSpec("groups3_s12", 1, 6, 8, 9, 9, 3, 2, stride=(1, 2), groups=3),
    ConvSpec("groups3_dil2", 2, 9, 9, 8, 3, 3, 3, dilation=2, padding=1, groups=3),
    ConvSpec("depthwise_3x3", 2, 5, 9, 8, 5, 3, 3, padding=1, groups=5),
    ConvSpec("depthwise_x2_s2", 2, 4, 8, 7, 8, 3, 3, stride=2, padding=1, groups=4),
    ConvSpec("depthwise_5x5_same", 1, 6, 10, 9, 6, 5, 5, padding="same", groups=6),
    # stride > kernel
    ConvSpec("k1x1_s3", 2, 3, 10, 11, 4, 1, 1, stride=3),
    ConvSpec("k2x2_s5", 1, 3, 13, 12, 2, 2, 2, stride=5),
    ConvSpec("k3x3_s4_pad1", 2, 2, 11, 9, 3, 3, 3, stride=4, padding=1),
    # 1x1 kernels
    ConvSpec("k1x1_s2", 3, 5, 9, 8, 7, 1, 1, stride=2),
    ConvSpec("k1x1_plain", 2, 8, 6, 5, 6, 1, 1),
    ConvSpec("k1x1_s23", 1, 6, 9, 10, 4, 1, 1, stride=(2, 3)),
    ConvSpec("k1x1_groups2_dil2", 1, 4, 5, 5, 6, 1, 1, dilation=2, groups=2),
    ConvSpec("k1x1_pad1", 2, 3, 4, 5, 2, 1, 1, padding=1),
    ConvSpec("k1x1_wide", 1, 33, 9, 10, 65, 1, 1),
    # non-square everything
    ConvSpec("nonsquare_all", 3, 3, 9, 14, 4, 3, 5, stride=(2, 3), padding=(1, 2), dilation=(2, 1)),
    ConvSpec("nonsquare_groups", 2, 6, 5, 12, 4, 2, 4, stride=(1, 2), padding=(0, 1), dilation=(1, 2), groups=2),
    # padding 'same' (TF rule with stride > 1 and even kernels) and 'valid'
    ConvSpec("same_s1_3x3", 2, 3, 7, 8, 4, 3, 3, padding="same"),
    ConvSpec("same_s1_4x4", 1, 2, 7, 6, 3, 4, 4, padding="same"),
    ConvSpec("same_s1_2x3_dil2", 2, 2, 6, 7, 3, 2, 3, dilation=2, padding="same"),
    ConvSpec("same_s2_3x3", 2, 3, 9, 8, 4, 3, 3, stride=2, padding="same"),
    ConvSpec("same_s2_2x2", 1, 3, 7, 7, 2, 2, 2, stride=2, padding="same"),
    ConvSpec("same_s3_2x2", 1, 3, 10, 11, 2, 2, 2, stride=3, padding="same"),
    ConvSpec("same_s3_4x4", 2, 2, 8, 13, 3, 4, 4, stride=3, padding="same"),
    ConvSpec("same_s2_4x4_dil2", 1, 2, 11, 9, 3, 4, 4, stride=2, dilation=2, padding="same"),
    ConvSpec("same_s23_2x3", 2, 2, 8, 13, 3, 2, 3, stride=(2, 3), padding="same"),
    ConvSpec("same_k1x1_s2", 1, 3, 7, 6, 2, 1, 1, stride=2, padding="same"),
    ConvSpec("same_s2_groups2", 3, 4, 6, 9, 2, 3, 3, stride=2, padding="same", groups=2),
    ConvSpec("same_s4_small_img", 1, 2, 3, 2, 2, 3, 3, stride=4, padding="same"),
    ConvSpec("valid_3x2", 2, 3, 8, 7, 4, 3, 2, padding="valid"),
    ConvSpec("valid_k1x1_s2", 1, 3, 5, 6, 2, 1, 1, stride=2, padding="valid"),
    # separable shapes
    ConvSpec("sep_1x7", 1, 4, 9, 11, 5, 1, 7, padding=(0, 3)),
    ConvSpec("sep_7x1", 1, 4, 11, 9, 5, 7, 1, padding=(3, 0)),
    ConvSpec("sep_1x3", 2, 3, 6, 9, 4, 1, 3, padding=(0, 1)),
    ConvSpec("sep_3x1", 2, 3, 9, 6, 4, 3, 1, padding=(1, 0)),
    ConvSpec("sep_1x3_s2", 2, 3, 6, 9, 4, 1, 3, stride=2, padding=(0, 1)),
    ConvSpec("sep_3x1_dil2", 2, 3, 9, 6, 4, 3, 1, dilation=2),
    ConvSpec("sep_1x4_same_s2", 1, 3, 7, 10, 2, 1, 4, stride=2, padding="same"),
    ConvSpec("sep_5x1_pad_both", 2, 2, 6, 5, 3, 5, 1, padding=(2, 1)),
    ConvSpec("sep_1x3_groups2", 1, 4, 5, 8, 4, 1, 3, padding=(0, 1), groups=2),
    # N = 3 and moderately sized problems (micro-kernel tails, threading)
    ConvSpec("moderate_3x3", 2, 16, 16, 16, 24, 3, 3, padding=1),
    ConvSpec("moderate_odd_channels", 3, 17, 11, 13, 19, 3, 3, padding=1),
    ConvSpec("moderate_1x1", 3, 37, 14, 15, 29, 1, 1),
    ConvSpec("moderate_1x5", 2, 13, 15, 17, 11, 1, 5, padding=(0, 2)),
]
