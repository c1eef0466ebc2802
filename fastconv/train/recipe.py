"""The ``fastconv train`` recipe: dataset + model + loaders + optimizer + scheduler from a few options."""
from __future__ import annotations

import json
import os
import platform
import time

import numpy as np

__all__ = ["build_run", "run_training", "DEFAULTS"]

DEFAULTS = dict(model="simple_cnn", dataset="fashion-mnist", data_dir=None, epochs=1, batch_size=64, optimizer="sgd",
                lr=0.01, momentum=0.9, weight_decay=0.0, seed=0, out=None, metrics_json=None, resume=False,
                limit_train=None, limit_test=None, augment=None, lr_schedule="none", step_size=1, gamma=0.1,
                threads=None, progress=True, test_batch_size=500, input=None, keep_checkpoints=True)


def _transforms(ds, model_shape, augment):
    from ..data import Compose, Normalize, PadTo, RandomCrop, RandomHorizontalFlip  # noqa: PLC0415

    c, h, w = ds.image_shape
    _, mh, mw = model_shape
    base = []
    if (mh, mw) != (h, w):
        if mh < h or mw < w:
            raise ValueError(f"the model expects {mh}x{mw} images, the dataset has larger {h}x{w} ones")
        base.append(PadTo((mh, mw)))  # LeNet-5 on 28x28 digits: the paper pads to 32x32 too
    base.append(Normalize(ds.mean, ds.std))
    train = list(base)
    if augment:
        train = [RandomCrop((h, w), padding=4 if h >= 32 else 2), RandomHorizontalFlip()] + train
    return Compose(train), Compose(base)


def _writable_folder(folder, what):
    """Create ``folder`` if needed; ValueError naming the option ``what`` if it cannot be written."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{what}: cannot create the folder {folder!r} ({e.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{what}: the folder {folder!r} is not writable")


def _check_outputs(out, metrics_json):
    """Fail before training, not after it, on an output path that cannot be written."""
    if out is not None:
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"--out {out!r} is a file, not a folder")
        _writable_folder(out, f"--out {out!r}")
    if metrics_json is not None:
        if os.path.isdir(metrics_json):
            raise ValueError(f"--metrics-json {metrics_json!r} is a folder; give a file name")
        _writable_folder(os.path.dirname(os.path.abspath(metrics_json)), f"--metrics-json {metrics_json!r}")


def build_run(**options):
    """Everything a training run needs: ``(trainer, info)``; ``options`` as in :data:`DEFAULTS`."""
    from .. import data, models, nn, optim  # noqa: PLC0415
    import fastconv  # noqa: PLC0415

    o = dict(DEFAULTS)
    unknown = set(options) - set(o)
    if unknown:
        raise TypeError(f"build_run: unknown options {sorted(unknown)}")
    o.update(options)
    if o["threads"]:
        fastconv.set_num_threads(int(o["threads"]))
    if o["epochs"] < 1 or o["batch_size"] < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {o['epochs']} and {o['batch_size']}")
    factory = models.model_factory(o["model"])
    if int(o["seed"]) < 0:
        raise ValueError(f"seed must be >= 0, got {o['seed']}")
    _check_outputs(o["out"], o["metrics_json"])

    nn.manual_seed(int(o["seed"]))
    if o["dataset"] == "synthetic":
        probe_shape = tuple(o["input"]) if o["input"] else factory().default_input_shape
        nc = 361 if o["model"] == "alphago_policy" else 10
        train_ds = data.get_dataset("synthetic", train=True, limit=o["limit_train"] or 2048, image_shape=probe_shape,
                                    num_classes=nc)
        test_ds = data.get_dataset("synthetic", train=False, limit=o["limit_test"] or 512, image_shape=probe_shape,
                                   num_classes=nc)
        nn.manual_seed(int(o["seed"]))
    else:
        train_ds = data.get_dataset(o["dataset"], o["data_dir"], True, o["limit_train"])
        test_ds = data.get_dataset(o["dataset"], o["data_dir"], False, o["limit_test"])
    c = train_ds.image_shape[0]
    kw = {"num_classes": train_ds.num_classes, "in_channels": c}
    model = factory(**kw)
    augment = o["augment"] if o["augment"] is not None else o["dataset"].startswith("cifar")
    tf_train, tf_test = _transforms(train_ds, model.default_input_shape, augment)
    train_loader = data.DataLoader(train_ds, o["batch_size"], shuffle=True, seed=int(o["seed"]), transform=tf_train)
    test_loader = data.DataLoader(test_ds, o["test_batch_size"], transform=tf_test)

    params = [p for p in model.parameters() if p.requires_grad]
    if o["optimizer"] == "sgd":
        opt = optim.SGD(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
    elif o["optimizer"] == "adam":
        opt = optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"])
    elif o["optimizer"] == "adamw":
        opt = optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"])
    else:
        raise ValueError(f"unknown optimizer {o['optimizer']!r}; choose sgd, adam or adamw")
    interval = "epoch"
    sched = None
    if o["lr_schedule"] == "step":
        sched = optim.StepLR(opt, o["step_size"], o["gamma"])
    elif o["lr_schedule"] == "cosine":
        sched = optim.CosineAnnealingLR(opt, o["epochs"])
    elif o["lr_schedule"] == "onecycle":
        sched = optim.OneCycleLR(opt, o["lr"], epochs=o["epochs"], steps_per_epoch=len(train_loader))
        interval = "batch"
    elif o["lr_schedule"] != "none":
        raise ValueError(f"unknown lr schedule {o['lr_schedule']!r}; choose none, step, cosine or onecycle")

    config = {k: v for k, v in o.items() if k not in ("progress",)}
    config.update(model=o["model"], parameters=int(sum(int(p.data.size) for p in model.parameters())),
                  train_samples=len(train_ds), test_samples=len(test_ds), threads=fastconv.get_num_threads(),
                  fastconv_version=fastconv.__version__, isa=fastconv.info()["isa"], python=platform.python_version(),
                  transforms_train=repr(tf_train), transforms_test=repr(tf_test))
    from .trainer import Trainer  # noqa: PLC0415

    trainer = Trainer(model, opt, train_loader, test_loader, scheduler=sched, scheduler_interval=interval,
                      out_dir=o["out"], progress=o["progress"], class_names=train_ds.classes,
                      keep_checkpoints=o["keep_checkpoints"], config=config)
    return trainer, o


def run_training(log=print, **options):
    """Train as ``fastconv train`` does; returns the metrics dict (also written to ``metrics_json``)."""
    trainer, o = build_run(**options)
    trainer.log = log
    cfg = trainer.config
    log(f"{cfg['model']} ({cfg['parameters']:,} parameters) on {o['dataset']}: {cfg['train_samples']} train / "
        f"{cfg['test_samples']} test images, {o['optimizer']} lr {o['lr']} batch {o['batch_size']}, "
        f"{cfg['threads']} threads, {cfg['isa']}")
    t0 = time.perf_counter()
    hist = trainer.fit(o["epochs"], resume=o["resume"])
    total = time.perf_counter() - t0
    last = hist[-1] if hist else {}
    train_imgs = sum(h["train_images"] for h in hist)
    train_time = sum(h["train_time"] for h in hist)
    metrics = {
        "model": cfg["model"], "dataset": o["dataset"], "epochs": len(hist),
        "test_accuracy": last.get("test_accuracy"), "test_top5_accuracy": last.get("test_top5_accuracy"),
        "test_loss": last.get("test_loss"), "train_accuracy": last.get("train_accuracy"),
        "train_images_per_second": train_imgs / train_time if train_time else None,
        "epoch_times": [h["epoch_time"] for h in hist], "train_times": [h["train_time"] for h in hist],
        "train_losses": [h["train_loss"] for h in hist], "test_losses": [h.get("test_loss") for h in hist],
        "test_accuracies": [h.get("test_accuracy") for h in hist], "lrs": [h["lr"] for h in hist],
        "per_class": last.get("per_class"), "confusion_matrix": last.get("confusion_matrix"),
        "wall_time_this_run": total, "config": cfg,
    }
    if o["metrics_json"]:
        d = os.path.dirname(os.path.abspath(o["metrics_json"]))
        os.makedirs(d, exist_ok=True)
        with open(o["metrics_json"], "w") as f:
            json.dump(metrics, f, indent=1, default=lambda v: v.item() if isinstance(v, np.generic) else str(v))
    return metrics
