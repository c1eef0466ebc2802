#!/usr/bin/env python3
"""Convolution speed of one fastconv backend against another, side by side.

Issue #5 sets the Numba CPU fallback a target relative to the compiled CPU
path ("within 3x, geomean"). bench_conv.py --backend numba prints absolute
numbers; this script times both backends in one run on the same arrays, with
the samples interleaved (bench_conv.time_interleaved) so that machine noise
hits both alike, and prints per layer and direction

  ms (backend)   ms (peer)   slowdown = backend ms / peer ms   algo of each

plus the geomean slowdown per direction. Both results are compared with each
other before timing (relative error <= 1e-4, as bench_conv.py); a mismatch is
reported and the row is not timed.

  python benchmarks/bench_backends.py                       # numba vs cpu, BENCH_LAYERS, 2 threads
  python benchmarks/bench_backends.py --quick --repeat 3    # batch 1
  python benchmarks/bench_backends.py --backend numba --peer cpu --layers vgg,resnet50
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
import bench_conv as bc  # noqa: E402  (also puts tests/ on sys.path for shapes.py)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="numba", help="backend under test (default numba)")
    p.add_argument("--peer", default="cpu", help="backend it is compared with (default cpu)")
    p.add_argument("--layers", default="", help="comma-separated substrings of layer names")
    p.add_argument("--direction", choices=("fwd", "bwd", "both"), default="both")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timed repeats per row")
    p.add_argument("--quick", action="store_true", help="batch reduced to 1")
    return p.parse_args(argv)


def callables(ops, spec, direction, backend, algo):
    x, w, go = bc.Bench.data(spec, direction)
    st, pd, dl, g = spec.stride, spec.padding, spec.dilation, spec.groups
    if direction == "fwd":
        out = np.empty((spec.N, spec.K) + bc.output_hw(spec), np.float32)
        return lambda: (ops.conv2d(x, w, None, st, pd, dl, g, out=out, backend=backend, algo=algo),)
    return lambda: (ops.conv2d_input(spec.input_shape, w, go, st, pd, dl, g, backend=backend, algo=algo),
                    ops.conv2d_weight(x, spec.weight_shape, go, st, pd, dl, g, backend=backend, algo=algo))


def picks(ops, spec, direction, backend):
    names = ("fprop",) if direction == "fwd" else ("dgrad", "wgrad")
    return "/".join(ops.choose_algo(spec.input_shape, spec.weight_shape, spec.stride, spec.padding,
                                    spec.dilation, spec.groups, op=o, backend=backend) for o in names)


def main(argv=None):
    a = parse_args(argv)
    fc = bc.import_fastconv()
    fc.set_num_threads(a.threads)
    for name in (a.backend, a.peer):
        if name not in fc.backends.available():
            sys.exit(f"bench_backends: backend {name!r} is not available here ({fc.backends.available()})")
    if a.backend.startswith("numba") or a.peer.startswith("numba"):
        import numba
        numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    wanted = [s.strip() for s in a.layers.split(",") if s.strip()]
    specs = [s for s in bc.BENCH_LAYERS if not wanted or any(w in s.name for w in wanted)]
    if a.quick:
        specs = [s.reduced(1) for s in specs]
    dirs = ["fwd", "bwd"] if a.direction == "both" else [a.direction]
    print(f"{a.backend} vs {a.peer}, {a.threads} threads, median of {a.repeat} interleaved repeats; "
          f"slowdown = {a.backend} ms / {a.peer} ms; load average "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    hdr = (f"{'layer':26s} {'shape':34s} {'dir':3s} {a.backend + ' algo':>20s} {a.peer + ' algo':>20s} "
           f"{a.backend + ' ms':>11s} {a.peer + ' ms':>11s} {'slowdown':>8s}")
    print(hdr)
    print("-" * len(hdr))
    ratios = {d: [] for d in dirs}
    failed = 0
    for spec in specs:
        for d in dirs:
            fns, firsts, results = [], [], []
            for name in (a.backend, a.peer):
                fn = callables(fc.ops, spec, d, name, "auto")
                t0 = time.perf_counter()
                results.append([np.array(r) for r in fn()])
                firsts.append(time.perf_counter() - t0)
                fns.append(fn)
            err = max(bc.rel_err(g, r) for g, r in zip(*results))
            head = (f"{spec.name:26s} {bc.shape_summary(spec):34s} {d:3s} "
                    f"{picks(fc.ops, spec, d, a.backend):>20s} {picks(fc.ops, spec, d, a.peer):>20s}")
            if not err <= bc.RTOL:
                failed += 1
                print(f"{head}  MISMATCH: max rel err {err:.1e} > {bc.RTOL:g} (not timed)")
                continue
            (t_b, t_p), _, _ = bc.time_interleaved(fns, firsts, a.repeat, a.budget)
            ratios[d].append(t_b / t_p)
            print(f"{head} {t_b * 1e3:11.3f} {t_p * 1e3:11.3f} {t_b / t_p:8.2f}", flush=True)
    print()
    for d in dirs:
        if ratios[d]:
            print(f"{d}: geomean slowdown {a.backend}/{a.peer} = {bc.geomean(ratios[d]):.2f}x over "
                  f"{len(ratios[d])} layers (max {max(ratios[d]):.2f}x, min {min(ratios[d]):.2f}x)")
    allr = [r for d in dirs for r in ratios[d]]
    if allr:
        print(f"all: geomean slowdown {bc.geomean(allr):.2f}x over {len(allr)} rows")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
