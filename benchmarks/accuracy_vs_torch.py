#!/usr/bin/env python3
"""Test accuracy per epoch of fastconv and torch trained side by side: same model, same initial
weights, same batches in the same order, same SGD recipe.

The fastconv side is exactly `fastconv train MODEL` (its recipe builds the data pipeline, the
model and the optimizer); the torch twin (tests/torch_twins.py) gets a copy of the initial
weights and every batch the fastconv loader yields. What differs is only the arithmetic (kernel
summation orders), so the two columns show whether an accuracy figure is the engine's or the
recipe's.

  python benchmarks/accuracy_vs_torch.py simple_cnn --epochs 5 [--seed 0] [--threads 2]
                                         [--limit-train N] [--limit-test N] [--data-dir D]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", choices=["simple_cnn", "lenet5"])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr-schedule", choices=("none", "onecycle"), default="none",
                    help="onecycle: both sides step a OneCycleLR (peak --lr) after every batch")
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--limit-test", type=int, default=None)
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args(argv)

    import torch

    from fastconv import Tensor, no_grad
    from fastconv.nn import functional as F
    from fastconv.train.recipe import build_run
    from torch_twins import torch_models

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    trainer, _ = build_run(model=a.model, dataset="fashion-mnist", data_dir=a.data_dir, epochs=a.epochs,
                           batch_size=a.batch_size, lr=a.lr, momentum=a.momentum, seed=a.seed, threads=a.threads,
                           limit_train=a.limit_train, limit_test=a.limit_test, progress=False,
                           lr_schedule=a.lr_schedule)
    fm, fopt = trainer.model, trainer.optimizer
    tm = torch_models(torch)[a.model]()
    src, dst = list(fm.state_dict().values()), list(tm.state_dict().values())
    if len(src) != len(dst) or any(tuple(s.shape) != tuple(d.shape) for s, d in zip(src, dst)):
        raise SystemExit("the torch twin's state_dict does not match the fastconv model's")
    with torch.no_grad():
        for s, d in zip(src, dst):
            d.copy_(torch.from_numpy(np.asarray(s.data if hasattr(s, "data") else s)))
    topt = torch.optim.SGD(tm.parameters(), lr=a.lr, momentum=a.momentum)
    fsched = trainer.scheduler if a.lr_schedule == "onecycle" else None
    tsched = (torch.optim.lr_scheduler.OneCycleLR(topt, a.lr, epochs=a.epochs, steps_per_epoch=len(trainer.train_loader))
              if a.lr_schedule == "onecycle" else None)

    def evaluate():
        fm.eval()
        tm.eval()
        fc = tc = n = 0
        with no_grad(), torch.no_grad():
            for x, y in trainer.test_loader:
                fc += int((fm(Tensor(x)).data.argmax(1) == y).sum())
                tc += int((tm(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
                n += len(y)
        fm.train()
        tm.train()
        return fc / n, tc / n

    sched = ", one-cycle schedule (peak lr)" if a.lr_schedule == "onecycle" else ""
    print(f"{a.model} on Fashion-MNIST: SGD lr {a.lr}{sched} momentum {a.momentum}, batch {a.batch_size}, seed {a.seed}, "
          f"{a.threads} threads; same initial weights and batches for both")
    print(f"{'epoch':>5} {'fastconv acc':>13} {'torch acc':>10} {'fastconv loss':>14} {'torch loss':>11} "
          f"{'fastconv s':>11} {'torch s':>8}")
    loader = trainer.train_loader
    for epoch in range(a.epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        fl = tl = 0.0
        ft = tt = 0.0
        seen = 0
        for x, y in loader:
            t0 = time.perf_counter()
            loss = F.cross_entropy(fm(Tensor(x)), y)
            fopt.zero_grad()
            loss.backward()
            fopt.step()
            if fsched is not None:
                fsched.step()
            t1 = time.perf_counter()
            tloss = torch.nn.functional.cross_entropy(tm(torch.from_numpy(x)), torch.from_numpy(y.astype(np.int64)))
            topt.zero_grad()
            tloss.backward()
            topt.step()
            if tsched is not None:
                tsched.step()
            t2 = time.perf_counter()
            ft += t1 - t0
            tt += t2 - t1
            fl += float(loss.item()) * len(y)
            tl += float(tloss.item()) * len(y)
            seen += len(y)
        fa, ta = evaluate()
        print(f"{epoch + 1:>5} {fa:>13.4f} {ta:>10.4f} {fl / seen:>14.4f} {tl / seen:>11.4f} {ft:>11.1f} {tt:>8.1f}",
              flush=True)


if __name__ == "__main__":
    main()
