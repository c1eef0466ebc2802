"""Optimizers (SGD, Adam, AdamW) and learning-rate schedulers with torch's rules."""
from . import lr_scheduler  # noqa: F401
from .lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR, OneCycleLR, StepLR  # noqa: F401
from .optimizer import SGD, Adam, AdamW, Optimizer  # noqa: F401

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler", "LRScheduler", "StepLR", "MultiStepLR",
           "CosineAnnealingLR", "OneCycleLR"]
