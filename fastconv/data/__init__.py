"""Datasets (Fashion-MNIST, MNIST, CIFAR-10/100, synthetic), a batch loader and batch transforms."""
from . import transforms  # noqa: F401
from .datasets import (DATASETS, DEFAULT_DIRS, STATS, ArrayDataset, DatasetNotFoundError, cifar10,  # noqa: F401
                       cifar100, fashion_mnist, get_dataset, mnist, synthetic)
from .formats import read_cifar_batch, read_idx, write_cifar_batch, write_idx  # noqa: F401
from .loader import DataLoader  # noqa: F401
from .transforms import (Compose, Normalize, Pad, PadTo, RandomCrop, RandomHorizontalFlip,  # noqa: F401
                         ToFloat)

__all__ = ["ArrayDataset", "DatasetNotFoundError", "DataLoader", "DATASETS", "DEFAULT_DIRS", "STATS",
           "fashion_mnist", "mnist", "cifar10", "cifar100", "synthetic", "get_dataset", "read_idx", "write_idx",
           "read_cifar_batch", "write_cifar_batch", "transforms", "Compose", "Normalize", "Pad", "PadTo",
           "RandomCrop", "RandomHorizontalFlip", "ToFloat"]
