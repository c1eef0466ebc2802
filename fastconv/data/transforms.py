"""Batch transforms: each maps a float32 batch ``(N, C, H, W)`` to a new batch.

They act on whole batches (vectorized NumPy) because a per-image Python loop
would cost more than the convolutions on small images. Random transforms draw
from the ``rng`` the loader passes (a ``numpy.random.Generator`` seeded per
epoch), so an epoch's augmentation is reproducible.
"""
from __future__ import annotations

import numpy as np

from ..problem import pair as _pair

__all__ = ["Compose", "Normalize", "Pad", "PadTo", "RandomCrop", "RandomHorizontalFlip", "ToFloat"]


def _batch(x, who):
    x = np.asarray(x)
    if x.ndim == 3:
        return x[None], True
    if x.ndim != 4:
        raise ValueError(f"{who}: expected a batch (N, C, H, W) or one image (C, H, W), got shape {x.shape}")
    return x, False


def _rng(rng):
    return rng if rng is not None else np.random.default_rng()


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x, rng=None):
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self):
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


class ToFloat:
    """uint8 [0, 255] -> float32 [0, 1] (the loader already does this; for standalone use)."""

    def __call__(self, x, rng=None):
        x = np.asarray(x)
        return x.astype(np.float32) * np.float32(1 / 255) if x.dtype == np.uint8 else x.astype(np.float32)

    def __repr__(self):
        return "ToFloat()"


class Normalize:
    """``(x - mean[c]) / std[c]`` per channel (one value broadcasts to every channel)."""

    def __init__(self, mean, std):
        self.mean = np.atleast_1d(np.asarray(mean, np.float32))
        self.std = np.atleast_1d(np.asarray(std, np.float32))
        if self.mean.ndim != 1 or self.std.shape != self.mean.shape and self.std.size != 1:
            raise ValueError(f"Normalize: mean and std must be scalars or 1-D of equal length, got "
                             f"{self.mean.shape} and {self.std.shape}")
        if np.any(self.std == 0):
            raise ValueError(f"Normalize: std must be non-zero, got {self.std.tolist()}")

    def __call__(self, x, rng=None):
        x, single = _batch(x, "Normalize")
        c = x.shape[1]
        if self.mean.size not in (1, c) or self.std.size not in (1, c):
            raise ValueError(f"Normalize: {self.mean.size} means / {self.std.size} stds for {c} channels "
                             f"(batch shape {x.shape})")
        y = (x - self.mean.reshape(1, -1, 1, 1)) * (1 / self.std).reshape(1, -1, 1, 1)
        y = y.astype(np.float32, copy=False)
        return y[0] if single else y

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class Pad:
    """Constant padding ``(top/bottom, left/right)`` (an int pads every side)."""

    def __init__(self, padding, fill=0.0):
        self.padding = _pair(padding, "padding", minimum=0)
        self.fill = float(fill)

    def __call__(self, x, rng=None):
        x, single = _batch(x, "Pad")
        ph, pw = self.padding
        y = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=self.fill)
        return y[0] if single else y

    def __repr__(self):
        return f"Pad({self.padding})"


class PadTo:
    """Center-pad to ``size`` (e.g. 28x28 Fashion-MNIST -> 32x32 for LeNet-5); never crops."""

    def __init__(self, size, fill=0.0):
        self.size = _pair(size, "size")
        self.fill = float(fill)

    def __call__(self, x, rng=None):
        x, single = _batch(x, "PadTo")
        h, w = x.shape[2:]
        th, tw = self.size
        if h > th or w > tw:
            raise ValueError(f"PadTo: images are {h}x{w}, larger than the target {th}x{tw}")
        top, left = (th - h) // 2, (tw - w) // 2
        y = np.pad(x, ((0, 0), (0, 0), (top, th - h - top), (left, tw - w - left)), constant_values=self.fill)
        return y[0] if single else y

    def __repr__(self):
        return f"PadTo({self.size})"


class RandomCrop:
    """Zero-pad by ``padding`` then crop a random ``size`` window per image (the CIFAR/AlexNet jitter)."""

    def __init__(self, size, padding=0, fill=0.0):
        self.size = _pair(size, "size")
        self.padding = _pair(padding, "padding", minimum=0)
        self.fill = float(fill)

    def __call__(self, x, rng=None):
        x, single = _batch(x, "RandomCrop")
        rng = _rng(rng)
        ph, pw = self.padding
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=self.fill)
        n, c, h, w = x.shape
        th, tw = self.size
        if th > h or tw > w:
            raise ValueError(f"RandomCrop: crop {th}x{tw} is larger than the padded image {h}x{w}")
        oy = rng.integers(0, h - th + 1, n)
        ox = rng.integers(0, w - tw + 1, n)
        # gather with broadcast index arrays: one fancy-indexing call for the whole batch
        rows = (oy[:, None] + np.arange(th)[None, :])[:, None, :, None]
        cols = (ox[:, None] + np.arange(tw)[None, :])[:, None, None, :]
        y = x[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]
        return y[0] if single else y

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p=0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, x, rng=None):
        x, single = _batch(x, "RandomHorizontalFlip")
        flip = _rng(rng).random(x.shape[0]) < self.p
        y = x.copy()
        y[flip] = x[flip, :, :, ::-1]
        return y[0] if single else y

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"
