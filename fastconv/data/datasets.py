"""Datasets: Fashion-MNIST, MNIST, CIFAR-10/100 from their files, and a synthetic one.

A dataset holds all its images in memory as ``uint8`` ``(N, C, H, W)`` (60,000
Fashion-MNIST images are 47 MB that way, four times less than float32) and its
labels as ``int64``; the :class:`~fastconv.data.DataLoader` converts one batch at a
time to float32 in [0, 1].
"""
from __future__ import annotations

import os

import numpy as np

from .formats import read_cifar_batch, read_idx

__all__ = ["ArrayDataset", "DatasetNotFoundError", "fashion_mnist", "mnist", "cifar10", "cifar100", "synthetic",
           "get_dataset", "DATASETS", "DEFAULT_DIRS"]

DEFAULT_DIRS = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",  # Debian's dataset-fashion-mnist package
    "mnist": "/usr/share/datasets/mnist",
    "cifar10": "/usr/share/datasets/cifar10",
    "cifar100": "/usr/share/datasets/cifar100",
}

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# per-channel mean/std of the training sets (for Normalize)
STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "synthetic": ((0.5,), (0.25,)),
}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where we looked; the message says how to get them."""


class ArrayDataset:
    """Images ``(N, C, H, W)`` (uint8 or float) and integer labels ``(N,)`` held in memory."""

    def __init__(self, images, labels, classes=None, name="dataset", mean=None, std=None):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4:
            raise ValueError(f"ArrayDataset: images must be (N, C, H, W) or (N, H, W), got shape {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"ArrayDataset: labels must be (N,) with N = {images.shape[0]} (the number of images), "
                             f"got shape {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"ArrayDataset: labels must be integers, got {labels.dtype}")
        self.images = images
        self.labels = labels.astype(np.int64, copy=False)
        n_cls = int(self.labels.max()) + 1 if self.labels.size else 0
        self.classes = list(classes) if classes is not None else [str(i) for i in range(n_cls)]
        if self.labels.size and (self.labels.min() < 0 or n_cls > len(self.classes)):
            raise ValueError(f"ArrayDataset: labels span [{self.labels.min()}, {n_cls - 1}] but there are "
                             f"{len(self.classes)} classes")
        self.name = name
        st = STATS.get(name, ((0.5,) * images.shape[1], (0.5,) * images.shape[1]))
        self.mean = tuple(mean) if mean is not None else st[0]
        self.std = tuple(std) if std is not None else st[1]

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def image_shape(self):
        return tuple(self.images.shape[1:])

    def __len__(self):
        return int(self.images.shape[0])

    def __getitem__(self, i):
        """``(image float32 (C, H, W) in [0, 1] for uint8 data, label int)``."""
        img = self.images[i]
        img = img.astype(np.float32) * np.float32(1 / 255) if img.dtype == np.uint8 else img.astype(np.float32)
        return img, int(self.labels[i])

    def subset(self, n):
        """The first ``n`` samples (for smoke runs); the same object when n is None or >= len."""
        if n is None or n >= len(self):
            return self
        if n < 0:
            raise ValueError(f"subset: n must be >= 0, got {n}")
        return ArrayDataset(self.images[:n], self.labels[:n], self.classes, self.name, self.mean, self.std)

    def __repr__(self):
        return f"ArrayDataset({self.name!r}, n={len(self)}, image_shape={self.image_shape}, classes={self.num_classes})"


# --------------------------------------------------------------------- MNIST
_IDX_NAMES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find(root, stem):
    """The path of ``stem`` (raw, .gz, or MNIST's 'train-images.idx3-ubyte' spelling) under root."""
    alts = [stem, stem.replace("-idx", ".idx")]
    subdirs = ["", "raw", "FashionMNIST/raw", "MNIST/raw"]
    for sub in subdirs:
        for name in alts:
            for ext in ("", ".gz"):
                p = os.path.join(root, sub, name + ext)
                if os.path.isfile(p):
                    return p
    return None


def _how_to_get(kind, root):
    files = ", ".join(f"{s}.gz" for pair in _IDX_NAMES.values() for s in pair)
    if kind == "fashion-mnist":
        return (f"Fashion-MNIST not found in {root!r} (looked for {files}, gzip or raw). Install it with "
                f"`apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu; files go to "
                f"{DEFAULT_DIRS['fashion-mnist']}), or download the four files from "
                f"https://github.com/zalandoresearch/fashion-mnist (data/fashion) into a folder and pass "
                f"--data-dir FOLDER (data_dir=FOLDER in Python).")
    return (f"MNIST not found in {root!r} (looked for {files}, gzip or raw). Download the four files from "
            f"http://yann.lecun.com/exdb/mnist/ (or a mirror) into a folder and pass --data-dir FOLDER "
            f"(data_dir=FOLDER in Python); the default folder is {DEFAULT_DIRS['mnist']}.")


def _load_idx_pair(kind, root, train):
    root = os.fspath(root) if root is not None else DEFAULT_DIRS[kind]
    img_stem, lab_stem = _IDX_NAMES[bool(train)]
    ip, lp = _find(root, img_stem), _find(root, lab_stem)
    if ip is None or lp is None:
        raise DatasetNotFoundError(_how_to_get(kind, root))
    images = read_idx(ip, expect_ndim=3)
    labels = read_idx(lp, expect_ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(f"{ip} / {lp}: expected unsigned-byte IDX files, got {images.dtype} / {labels.dtype}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{ip} has {images.shape[0]} images but {lp} has {labels.shape[0]} labels")
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{ip}: expected 28x28 images, got {images.shape[1]}x{images.shape[2]}")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{lp}: labels must be 0..9, found {int(labels.max())}")
    return images[:, None], labels


def fashion_mnist(data_dir=None, train=True):
    """Fashion-MNIST (60,000 train / 10,000 test 1x28x28 images, 10 classes) from IDX files."""
    images, labels = _load_idx_pair("fashion-mnist", data_dir, train)
    return ArrayDataset(images, labels, FASHION_CLASSES, "fashion-mnist")


def mnist(data_dir=None, train=True):
    """MNIST digits from IDX files (same layout as Fashion-MNIST)."""
    images, labels = _load_idx_pair("mnist", data_dir, train)
    return ArrayDataset(images, labels, [str(i) for i in range(10)], "mnist")


# --------------------------------------------------------------------- CIFAR
def _cifar_missing(kind, root, looked):
    url = "https://www.cs.toronto.edu/~kriz/cifar.html"
    arch = "cifar-10-binary.tar.gz" if kind == "cifar10" else "cifar-100-binary.tar.gz"
    return DatasetNotFoundError(
        f"{kind.upper()} not found in {root!r} (looked for {', '.join(looked)}). Download the binary version "
        f"({arch}) from {url}, extract it and pass --data-dir pointing at the extracted folder or its parent "
        f"(data_dir=... in Python).")


def cifar10(data_dir=None, train=True):
    """CIFAR-10 from the binary batches (data_batch_1..5.bin, test_batch.bin)."""
    root = os.fspath(data_dir) if data_dir is not None else DEFAULT_DIRS["cifar10"]
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
    for base in (root, os.path.join(root, "cifar-10-batches-bin")):
        if all(os.path.isfile(os.path.join(base, n)) for n in names):
            break
    else:
        raise _cifar_missing("cifar10", root, names)
    parts = [read_cifar_batch(os.path.join(base, n), 1) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1][:, 0] for p in parts])
    if labels.size and labels.max() > 9:
        raise ValueError(f"{base}: CIFAR-10 labels must be 0..9, found {int(labels.max())} "
                         "(is this CIFAR-100? use cifar100)")
    return ArrayDataset(images, labels, CIFAR10_CLASSES, "cifar10")


def cifar100(data_dir=None, train=True, label="fine"):
    """CIFAR-100 from the binary files (train.bin, test.bin); ``label`` 'fine' (100) or 'coarse' (20)."""
    if label not in ("fine", "coarse"):
        raise ValueError(f"cifar100: label must be 'fine' or 'coarse', got {label!r}")
    root = os.fspath(data_dir) if data_dir is not None else DEFAULT_DIRS["cifar100"]
    name = "train.bin" if train else "test.bin"
    for base in (root, os.path.join(root, "cifar-100-binary")):
        if os.path.isfile(os.path.join(base, name)):
            break
    else:
        raise _cifar_missing("cifar100", root, [name])
    images, labels = read_cifar_batch(os.path.join(base, name), 2)
    lab = labels[:, 1] if label == "fine" else labels[:, 0]
    n = 100 if label == "fine" else 20
    if lab.size and lab.max() >= n:
        raise ValueError(f"{base}/{name}: {label} labels must be < {n}, found {int(lab.max())}")
    return ArrayDataset(images, lab, [str(i) for i in range(n)], "cifar100")


# ----------------------------------------------------------------- synthetic
def synthetic(n=1024, image_shape=(1, 28, 28), num_classes=10, seed=0, noise=0.35):
    """A learnable random dataset: each class is a fixed random template plus per-image noise.

    Deterministic for a seed; the train and test splits of :func:`get_dataset` share
    the templates and differ in the noise, so accuracy on it means something.
    """
    if n < 0 or num_classes < 1:
        raise ValueError(f"synthetic: need n >= 0 and num_classes >= 1, got n={n}, num_classes={num_classes}")
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3:
        raise ValueError(f"synthetic: image_shape must be (C, H, W), got {image_shape!r}")
    templates = np.random.default_rng(12345).random((num_classes,) + shape, dtype=np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    imgs = (1 - noise) * templates[labels] + noise * rng.random((n,) + shape, dtype=np.float32)
    images = np.clip(np.rint(imgs * 255), 0, 255).astype(np.uint8)
    return ArrayDataset(images, labels, [str(i) for i in range(num_classes)], "synthetic")


# ---------------------------------------------------------------- dispatcher
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "synthetic")


def get_dataset(name, data_dir=None, train=True, limit=None, image_shape=None, num_classes=10):
    """A dataset by its command-line name; ``limit`` keeps the first N samples (smoke runs)."""
    key = name.lower().replace("_", "-")
    if key in ("fashionmnist", "fmnist"):
        key = "fashion-mnist"
    if key == "fashion-mnist":
        ds = fashion_mnist(data_dir, train)
    elif key == "mnist":
        ds = mnist(data_dir, train)
    elif key in ("cifar10", "cifar-10"):
        ds = cifar10(data_dir, train)
    elif key in ("cifar100", "cifar-100"):
        ds = cifar100(data_dir, train)
    elif key == "synthetic":
        n = limit if limit is not None else (2048 if train else 512)
        ds = synthetic(n, image_shape or (1, 28, 28), num_classes, seed=0 if train else 1)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return ds.subset(limit)
