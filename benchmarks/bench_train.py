#!/usr/bin/env python3
"""Training-throughput benchmark: fastconv vs torch (CPU) on the same networks, in the same run.

For each case both libraries train the same architecture (the torch twin is
defined in this file) from the same weights on the same fixed synthetic batch
with SGD (lr 0.01, momentum 0.9): forward, cross-entropy, backward, step. Before
timing, one step's loss is compared (relative difference <= 1e-3, reported).
Each repeat times --steps steps of fastconv and of torch, interleaved, the
order flipped every repeat; the table shows the median images/s and the ratio
fastconv / torch (> 1: fastconv faster). Both use --threads threads.
"misses/step" is fastconv's output-buffer cache misses per timed step (each a
fresh mapping whose pages the kernel writing it faults in; 0 in a steady loop).

  python benchmarks/bench_train.py [--threads N] [--repeat 5] [--steps 5] [--full] [--only lenet5]
                                   [--profile CASE] [--markdown PATH] [--no-torch]

--full adds ResNet-18 at CIFAR size (b128) and at 224x224 (b8); --profile CASE
prints the top cProfile entries of fastconv training steps for that case.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="training steps per timed sample")
    p.add_argument("--full", action="store_true", help="add ResNet-18 (CIFAR b128, 224x224 b8)")
    p.add_argument("--only", default="", help="comma-separated substrings of case names")
    p.add_argument("--profile", default=None, help="cProfile fastconv steps of this case and print the top")
    p.add_argument("--markdown", default=None)
    p.add_argument("--no-torch", action="store_true")
    return p.parse_args(argv)


def import_fastconv():
    try:
        import fastconv

        fastconv.backends.cpu._need()
    except Exception:  # not installed: use the checkout this script lives in
        for name in [m for m in sys.modules if m == "fastconv" or m.startswith("fastconv.")]:
            del sys.modules[name]
        sys.path.insert(0, REPO)
        import fastconv

        fastconv.backends.cpu._need()
    return fastconv


# ------------------------------------------------------------- torch twins
# the torch twins live with the tests, which check them against our models
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from torch_twins import torch_models  # noqa: E402


def _ips(v):
    """images/s: whole numbers, but one or two decimals for the slow 224x224 rows"""
    return f"{v:.0f}" if v >= 100 else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def cases(full):
    c = [("lenet5", 64, (1, 32, 32)), ("lenet5", 256, (1, 32, 32)), ("simple_cnn", 64, (1, 28, 28)),
         ("resnet20", 128, (3, 32, 32))]
    if full:
        c += [("resnet18", 128, (3, 32, 32)), ("resnet18", 8, (3, 224, 224))]
    return c


# ---------------------------------------------------------------- stepping
def fc_stepper(fastconv, name, batch, shape):
    from fastconv import models, optim
    from fastconv.nn import functional as F

    fastconv.nn.manual_seed(0)
    m = models.get_model(name, num_classes=10)
    m.train()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + shape).astype(np.float32)
    y = rng.integers(0, 10, batch)
    opt = optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss = F.cross_entropy(m(fastconv.Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.item())

    return m, x, y, step


def torch_stepper(torch, twin, fc_model, x, y):
    tm = twin()
    src, dst = list(fc_model.state_dict().values()), list(tm.state_dict().values())
    if [tuple(a.shape) for a in src] != [tuple(b.shape) for b in dst]:
        raise RuntimeError("the torch twin's state_dict does not match the fastconv model's")
    with torch.no_grad():
        for a, b in zip(src, dst):
            b.copy_(torch.from_numpy(np.array(a)))
    tm.train()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss = torch.nn.functional.cross_entropy(tm(tx), ty)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.item())

    return step


def timed(step, steps):
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t0


def profile(step, steps=5, top=18):
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(steps):
        step()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    return s.getvalue()


def main(argv=None):
    args = parse_args(argv)
    fastconv = import_fastconv()
    fastconv.set_num_threads(args.threads)
    torch = None
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            print("torch is not installed: fastconv columns only")
    twins = torch_models(torch) if torch is not None else {}
    only = [s for s in args.only.split(",") if s]
    rows = []
    print(f"fastconv {fastconv.__version__} ({fastconv.info()['isa']}), torch "
          f"{torch.__version__ if torch else '-'}; threads {args.threads}; SGD momentum 0.9; "
          f"median of {args.repeat} x {args.steps} steps")
    hdr = (f"{'model':<11}{'batch':>6}  {'input':<10}{'fastconv img/s':>15}{'torch img/s':>13}{'ratio':>7}"
           f"{'misses/step':>12}  loss check")
    print(hdr)
    print("-" * len(hdr))
    for name, batch, shape in cases(args.full):
        label = f"{name}-b{batch}"
        if only and not any(s in label for s in only):
            continue
        m, x, y, fc_step = fc_stepper(fastconv, name, batch, shape)
        t_step = torch_stepper(torch, twins[name], m, x, y) if torch is not None else None
        check = "-"
        l_fc = fc_step()
        if t_step is not None:
            l_t = t_step()
            rel = abs(l_fc - l_t) / max(abs(l_t), 1e-12)
            check = f"{'ok' if rel <= 1e-3 else 'MISMATCH'} ({l_fc:.5f} vs {l_t:.5f})"
            t_step()
        fc_step()
        fc_t, t_t = [], []
        misses0 = fastconv.buffer_cache_info().get("misses", 0)
        for r in range(args.repeat):
            order = [("fc", fc_step), ("t", t_step)] if r % 2 == 0 else [("t", t_step), ("fc", fc_step)]
            for who, st in order:
                if st is None:
                    continue
                (fc_t if who == "fc" else t_t).append(timed(st, args.steps))
        # output-buffer cache misses per timed fastconv step: each is a fresh mapping the kernel
        # writing it page-faults (README, "API"); a loop in steady state should have none
        misses = (fastconv.buffer_cache_info().get("misses", 0) - misses0) / (args.repeat * args.steps)
        fc_ips = batch * args.steps / statistics.median(fc_t)
        t_ips = batch * args.steps / statistics.median(t_t) if t_t else None
        ratio = fc_ips / t_ips if t_ips else None
        shp = "x".join(map(str, shape))
        print(f"{name:<11}{batch:>6}  {shp:<10}{_ips(fc_ips):>15}{(_ips(t_ips) if t_ips else '-'):>13}"
              f"{(f'{ratio:.2f}' if ratio else '-'):>7}{misses:>12.2f}  {check}", flush=True)
        rows.append((name, batch, shp, fc_ips, t_ips, ratio, misses))
        if args.profile and args.profile in label:
            print(f"\ncProfile of {args.steps} fastconv steps, {label} (sorted by own time):")
            print(profile(fc_step, args.steps))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("| model | batch | input | fastconv img/s | torch img/s | fastconv/torch | cache misses/step |\n"
                    "|---|---:|---|---:|---:|---:|---:|\n")
            for name, batch, shp, a, b, r, ms in rows:
                f.write(f"| {name} | {batch} | {shp} | {_ips(a)} | {_ips(b)} | {r:.2f} | {ms:.2f} |\n" if b else
                        f"| {name} | {batch} | {shp} | {_ips(a)} | - | - | {ms:.2f} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
