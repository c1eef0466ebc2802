"""Training: ``Trainer`` / ``fit``, metrics, a progress bar, and the ``fastconv train`` recipe."""
from .metrics import MetricAccumulator, confusion_matrix, per_class_report, topk_correct  # noqa: F401
from .progress import TextBar, progress_bar  # noqa: F401
from .recipe import build_run, run_training  # noqa: F401
from .trainer import Trainer, classification_loss, fit  # noqa: F401

__all__ = ["Trainer", "fit", "classification_loss", "MetricAccumulator", "confusion_matrix", "per_class_report",
           "topk_correct", "progress_bar", "TextBar", "build_run", "run_training"]
