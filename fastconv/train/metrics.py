"""Classification metrics from logits and labels (NumPy only)."""
from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "topk_correct", "per_class_report", "MetricAccumulator"]


def confusion_matrix(y_true, y_pred, num_classes):
    """``cm[i, j]`` = number of samples of true class i predicted as j (int64)."""
    y_true = np.asarray(y_true, np.int64).ravel()
    y_pred = np.asarray(y_pred, np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"confusion_matrix: y_true has {y_true.size} labels, y_pred {y_pred.size}")
    for a, n in ((y_true, "y_true"), (y_pred, "y_pred")):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {n} has values outside [0, {num_classes})")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def topk_correct(logits, y, k):
    """How many rows have their label among the k largest logits (ties broken toward lower index)."""
    logits = np.asarray(logits)
    k = min(int(k), logits.shape[1])
    if k == logits.shape[1]:
        return int(len(y))
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return int((top == np.asarray(y)[:, None]).any(1).sum())


def per_class_report(cm, class_names=None):
    """Per-class precision, recall, F1 and support from a confusion matrix (0 where undefined)."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    pred, support = cm.sum(0), cm.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred > 0, tp / pred, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(cm))]
    return {"classes": names, "precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": support.astype(np.int64).tolist(), "macro_f1": float(f1.mean()) if len(f1) else 0.0}


class MetricAccumulator:
    """Running loss / accuracy / top-5 / confusion matrix over batches."""

    def __init__(self, num_classes, topk=5):
        self.num_classes, self.topk = int(num_classes), topk
        self.cm = np.zeros((num_classes, num_classes), np.int64)
        self.loss_sum = 0.0
        self.n = 0
        self.topk_hits = 0

    def update(self, logits, y, loss=None):
        logits = np.asarray(logits)
        y = np.asarray(y, np.int64)
        pred = logits.argmax(1)
        self.cm += confusion_matrix(y, pred, self.num_classes)
        self.topk_hits += topk_correct(logits, y, self.topk)
        if loss is not None:
            self.loss_sum += float(loss) * len(y)
        self.n += len(y)

    @property
    def accuracy(self):
        return float(np.trace(self.cm) / self.n) if self.n else 0.0

    @property
    def loss(self):
        return self.loss_sum / self.n if self.n else float("nan")

    def compute(self, class_names=None):
        return {"loss": self.loss, "accuracy": self.accuracy,
                f"top{self.topk}_accuracy": self.topk_hits / self.n if self.n else 0.0,
                "n": self.n, "per_class": per_class_report(self.cm, class_names),
                "confusion_matrix": self.cm.tolist()}
