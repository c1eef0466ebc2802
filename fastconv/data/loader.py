"""``DataLoader``: batches of (float32 images, int64 labels) with seeded shuffling."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["DataLoader"]


class DataLoader:
    """Iterate over ``dataset`` in batches.

    * ``shuffle``: a new permutation every epoch, drawn from ``seed`` and the epoch
      number, so epoch k of a resumed run sees the same order as in an
      uninterrupted one (:meth:`set_epoch`); each ``iter()`` advances the epoch.
    * ``drop_last``: drop the final incomplete batch.
    * ``transform``: a batch transform ``f(x, rng)`` (see :mod:`fastconv.data.transforms`)
      applied to the float32 batch; its randomness comes from the same seeded stream.

    ``dataset`` is an :class:`~fastconv.data.ArrayDataset` (anything with ``images``
    and ``labels`` arrays), whose uint8 images become float32 in [0, 1].
    """

    def __init__(self, dataset, batch_size=64, shuffle=False, seed=0, drop_last=False, transform=None,
                 dtype=np.float32):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if not (hasattr(dataset, "images") and hasattr(dataset, "labels")):
            raise TypeError(f"DataLoader: dataset must have .images and .labels arrays, got {type(dataset).__name__}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.transform = transform
        self.dtype = np.dtype(dtype)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        n = len(self.dataset.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _convert(self, imgs):
        if imgs.dtype == np.uint8:
            return np.multiply(imgs, self.dtype.type(1 / 255), dtype=self.dtype)
        return imgs.astype(self.dtype)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.dataset.labels)
        order = rng.permutation(n) if self.shuffle else None
        images, labels = self.dataset.images, self.dataset.labels
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                x, y = images[lo:hi], labels[lo:hi]
            else:
                idx = order[lo:hi]
                x, y = images[idx], labels[idx]
            x = self._convert(x)
            if self.transform is not None:
                x = np.ascontiguousarray(self.transform(x, rng), dtype=self.dtype)
            yield x, np.asarray(y, np.int64)
