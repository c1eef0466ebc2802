"""``Trainer`` / ``fit``: the training loop with evaluation, checkpoints, resume, history and plots."""
from __future__ import annotations

import json
import os
import time

import numpy as np

from .. import nn
from ..autograd import Tensor, no_grad
from ..nn import functional as F
from ..serialization import load, save
from .metrics import MetricAccumulator
from .progress import progress_bar

__all__ = ["Trainer", "fit", "classification_loss"]

CHECKPOINT = "last.safetensors"


def classification_loss(output, target, aux_weight=0.3):
    """Cross-entropy; a tuple ``(logits, aux1, ...)`` (GoogLeNet, Inception v3 in training) adds the
    auxiliary heads' losses times ``aux_weight`` (0.3 in the GoogLeNet paper)."""
    if isinstance(output, tuple):
        loss = F.cross_entropy(output[0], target)
        for aux in output[1:]:
            if aux is not None:
                loss = loss + aux_weight * F.cross_entropy(aux, target)
        return loss
    return F.cross_entropy(output, target)


def _main_logits(output):
    return output[0] if isinstance(output, tuple) else output


class Trainer:
    """Train ``model`` with ``optimizer`` on ``train_loader``, evaluating on ``test_loader`` every epoch.

    * ``scheduler``: a :mod:`fastconv.optim` scheduler stepped every epoch, or every batch when
      ``scheduler_interval='batch'`` (OneCycleLR).
    * ``out_dir``: where ``last.safetensors`` (and ``epoch_NNN.safetensors`` when
      ``keep_checkpoints``), ``history.json`` and ``curves.png`` go; nothing is written without it.
    * ``resume=True`` in :meth:`fit` continues from ``out_dir/last.safetensors``: model, optimizer,
      scheduler, epoch, history and the default random generator (dropout masks), and the loader
      reshuffles as the uninterrupted run would (its order depends on seed and epoch only).
    """

    def __init__(self, model, optimizer, train_loader, test_loader=None, scheduler=None, scheduler_interval="epoch",
                 loss_fn=None, out_dir=None, progress=True, class_names=None, log=print, keep_checkpoints=True,
                 config=None):
        if scheduler_interval not in ("epoch", "batch"):
            raise ValueError(f"Trainer: scheduler_interval must be 'epoch' or 'batch', got {scheduler_interval!r}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        self.train_loader, self.test_loader = train_loader, test_loader
        aux_w = getattr(model, "aux_loss_weight", 0.3)
        self.loss_fn = loss_fn or (lambda out, y: classification_loss(out, y, aux_w))
        self.out_dir = os.fspath(out_dir) if out_dir is not None else None
        self.progress = progress
        ds = getattr(train_loader, "dataset", None)
        self.class_names = class_names or getattr(ds, "classes", None)
        self.num_classes = len(self.class_names) if self.class_names else None
        self.log = log or (lambda *a, **k: None)
        self.keep_checkpoints = keep_checkpoints
        self.config = dict(config or {})
        self.history = []
        self.epoch = 0  # epochs completed

    # ------------------------------------------------------------ one epoch
    def train_epoch(self):
        model, opt = self.model, self.optimizer
        model.train()
        loader = self.train_loader
        if hasattr(loader, "set_epoch"):  # the shuffle order depends on (seed, epoch) only: resumable
            loader.set_epoch(self.epoch)
        bar = progress_bar(len(loader), f"epoch {self.epoch + 1} train", disable=not self.progress)
        loss_sum, correct, seen = 0.0, 0, 0
        t0 = time.perf_counter()
        try:
            for x, y in loader:
                out = model(Tensor(x))
                loss = self.loss_fn(out, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if self.scheduler is not None and self.scheduler_interval == "batch":
                    self.scheduler.step()
                lv = float(loss.item())
                if not np.isfinite(lv):
                    raise FloatingPointError(f"training loss became {lv} at epoch {self.epoch + 1}, "
                                             f"batch {bar.n + 1}: lower the learning rate")
                n = len(y)
                loss_sum += lv * n
                correct += int((_main_logits(out).data.argmax(1) == y).sum())
                seen += n
                done = bar.n + 1
                if hasattr(bar, "set_postfix") and (done % 10 == 0 or done == len(loader) or done == 1):
                    el = time.perf_counter() - t0  # before update(), so the line drawn shows this batch
                    bar.set_postfix(loss=loss_sum / seen, acc=correct / seen, img_s=int(seen / el) if el else 0,
                                    refresh=False)
                bar.update(1)
        finally:
            bar.close()
        dt = time.perf_counter() - t0
        return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                "train_time": dt, "train_images": seen, "train_images_per_second": seen / dt if dt else 0.0}

    def evaluate(self, loader=None, num_classes=None):
        """Loss, accuracy, top-5, per-class precision/recall/F1 and the confusion matrix on ``loader``."""
        loader = loader or self.test_loader
        model = self.model
        was = model.training
        model.eval()
        k = num_classes or self.num_classes
        acc = None
        t0 = time.perf_counter()
        bar = progress_bar(len(loader), "  eval", disable=not self.progress)
        try:
            with no_grad():
                for x, y in loader:
                    out = _main_logits(model(Tensor(x)))
                    if acc is None:
                        acc = MetricAccumulator(k or out.shape[1])
                    acc.update(out.data, y, float(F.cross_entropy(out, y).item()))
                    bar.update(1)
        finally:
            bar.close()
            model.train(was)
        if acc is None:
            raise ValueError("evaluate: the loader yielded no batches")
        r = acc.compute(self.class_names)
        r["time"] = time.perf_counter() - t0
        r["images_per_second"] = r["n"] / r["time"] if r["time"] else 0.0
        return r

    # ---------------------------------------------------------------- fit
    def fit(self, epochs, resume=False):
        if resume:
            self.load_checkpoint()
            if self.epoch >= epochs:
                self.log(f"checkpoint is at epoch {self.epoch}, nothing to do for --epochs {epochs}")
        while self.epoch < epochs:
            t0 = time.perf_counter()
            rec = {"epoch": self.epoch + 1, "lr": float(self.optimizer.param_groups[0]["lr"])}
            rec.update(self.train_epoch())
            if self.test_loader is not None:
                ev = self.evaluate()
                rec.update({"test_loss": ev["loss"], "test_accuracy": ev["accuracy"],
                            "test_top5_accuracy": ev["top5_accuracy"], "eval_time": ev["time"],
                            "per_class": ev["per_class"], "confusion_matrix": ev["confusion_matrix"]})
            if self.scheduler is not None and self.scheduler_interval == "epoch":
                self.scheduler.step()
            self.epoch += 1
            rec["epoch_time"] = time.perf_counter() - t0
            self.history.append(rec)
            msg = (f"epoch {rec['epoch']}/{epochs}: train loss {rec['train_loss']:.4f} acc {rec['train_accuracy']:.4f}"
                   f" ({rec['train_images_per_second']:.0f} img/s)")
            if "test_accuracy" in rec:
                msg += f" | test loss {rec['test_loss']:.4f} acc {rec['test_accuracy']:.4f} top5 " \
                       f"{rec['test_top5_accuracy']:.4f}"
            self.log(msg + f" | {rec['epoch_time']:.1f}s")
            if self.out_dir:
                self.save_checkpoint()
                self.write_history()
        if self.out_dir:
            self.plot()
        return self.history

    # -------------------------------------------------------- persistence
    def _state(self):
        st = {"model": dict(self.model.state_dict()), "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
              "history_json": json.dumps(self.history),
              "rng": json.dumps(nn.init.default_generator().bit_generator.state)}
        if self.scheduler is not None:
            st["scheduler_json"] = json.dumps(self.scheduler.state_dict(), default=float)
        return st

    def save_checkpoint(self):
        os.makedirs(self.out_dir, exist_ok=True)
        st = self._state()
        meta = {"arch": str(getattr(self.model, "arch", type(self.model).__name__)), "epoch": str(self.epoch)}
        if self.keep_checkpoints:
            save(st, os.path.join(self.out_dir, f"epoch_{self.epoch:03d}.safetensors"), metadata=meta)
        save(st, os.path.join(self.out_dir, CHECKPOINT), metadata=meta)

    def load_checkpoint(self, path=None):
        path = path or (os.path.join(self.out_dir, CHECKPOINT) if self.out_dir else None)
        if path is None or not os.path.isfile(path):
            raise FileNotFoundError(f"resume: no checkpoint at {path!r} (train once with --out DIR first)")
        st = load(path)
        self.model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        if self.scheduler is not None and "scheduler_json" in st:
            saved = json.loads(st["scheduler_json"])
            for key in ("total_steps", "T_max"):  # a schedule's length: the saved one would replace this run's
                if key in saved and getattr(self.scheduler, key, saved[key]) != saved[key]:
                    raise ValueError(
                        f"resume: the checkpoint's {type(self.scheduler).__name__} was built with {key}="
                        f"{saved[key]}, this run's with {key}={getattr(self.scheduler, key)} (another --epochs): "
                        "resume with the run's original --epochs, or start a new run to train longer")
            self.scheduler.load_state_dict(saved)
        self.epoch = int(st["epoch"])
        self.history = json.loads(st["history_json"])
        nn.init.default_generator().bit_generator.state = json.loads(st["rng"])
        self.log(f"resumed from {path} at epoch {self.epoch}")

    def write_history(self, path=None):
        path = path or os.path.join(self.out_dir, "history.json")
        with open(path, "w") as f:
            json.dump({"config": self.config, "epochs": self.history}, f, indent=1)

    def plot(self, path=None):
        """Loss and accuracy curves as a PNG (skipped, with a message, without matplotlib)."""
        path = path or os.path.join(self.out_dir, "curves.png")
        try:
            import matplotlib  # noqa: PLC0415 - optional

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt  # noqa: PLC0415
        except ImportError:
            self.log(f"matplotlib is not installed: skipped {path} (pip install matplotlib for the plot)")
            return None
        ep = [h["epoch"] for h in self.history]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        a1.plot(ep, [h["train_loss"] for h in self.history], "o-", label="train")
        a2.plot(ep, [h["train_accuracy"] for h in self.history], "o-", label="train")
        if self.history and "test_loss" in self.history[0]:
            a1.plot(ep, [h["test_loss"] for h in self.history], "o-", label="test")
            a2.plot(ep, [h["test_accuracy"] for h in self.history], "o-", label="test")
        for a, t in ((a1, "loss"), (a2, "accuracy")):
            a.set_xlabel("epoch")
            a.set_title(t)
            a.legend()
            a.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def fit(model, train_loader, test_loader=None, epochs=1, optimizer=None, lr=0.01, momentum=0.9, weight_decay=0.0,
        scheduler=None, out_dir=None, resume=False, progress=True, log=print, **kw):
    """Build a Trainer (SGD with ``lr``/``momentum``/``weight_decay`` unless ``optimizer`` is given),
    train for ``epochs`` and return it (its ``history`` holds the per-epoch records)."""
    from .. import optim  # noqa: PLC0415

    if optimizer is None:
        optimizer = optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                              weight_decay=weight_decay)
    t = Trainer(model, optimizer, train_loader, test_loader, scheduler=scheduler, out_dir=out_dir, progress=progress,
                log=log, **kw)
    t.fit(epochs, resume=resume)
    return t
