#!/usr/bin/env python3
"""Convolution algorithms of the compiled CPU backend against each other, side by side.

The "auto" table in fastconv/ops/conv.py (and its fp32 trades for the
register-blocked direct kernel, `_prefers_vectorized_direct`) rests on
comparisons of algorithms on the same problem. This script makes them
rerunnable: for each 3x3 problem of a grid (channel pairs x map sizes, the
batch chosen so every map size does about the same work) it times each
algorithm that can take the problem, per operator (fprop, dgrad, wgrad), with
the samples interleaved (bench_conv.time_interleaved) so machine noise hits
all alike, checks every algorithm against the first one (relative error
<= 1e-4), and prints

  ms of each algorithm   the fastest   what "auto" picks   auto ms / fastest ms

  python benchmarks/bench_algos.py                         # the 3x3 stride-1 grid, 2 threads
  python benchmarks/bench_algos.py --channels 16:16,64:64 --maps 16,32
  python benchmarks/bench_algos.py --stride 2 --algos im2col,direct
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
import bench_conv as bc  # noqa: E402

DEFAULT_CHANNELS = "16:16,16:32,32:16,24:24,32:32,16:64,64:16,48:48,64:64"
DEFAULT_MAPS = "8,16,32,56"
OPS = ("fprop", "dgrad", "wgrad")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--channels", default=DEFAULT_CHANNELS, help="comma-separated C:K pairs")
    p.add_argument("--maps", default=DEFAULT_MAPS, help="comma-separated square map sizes")
    p.add_argument("--pixels", type=int, default=32768, help="N*H*W of each problem (default 32768)")
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--algos", default="im2col,winograd,direct")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--budget", type=float, default=10.0, help="seconds of timed repeats per row")
    return p.parse_args(argv)


def calls(ops, x, w, g, stride, pad, algo):
    return {"fprop": lambda: ops.conv2d(x, w, None, stride, pad, algo=algo),
            "dgrad": lambda: ops.conv2d_input(x.shape, w, g, stride, pad, algo=algo),
            "wgrad": lambda: ops.conv2d_weight(x, w.shape, g, stride, pad, algo=algo)}


def main(argv=None):
    a = parse_args(argv)
    fc = bc.import_fastconv()
    fc.set_num_threads(a.threads)
    ops = fc.ops
    algos = [s for s in a.algos.split(",") if s]
    pairs = [tuple(int(v) for v in s.split(":")) for s in a.channels.split(",") if s]
    maps = [int(s) for s in a.maps.split(",") if s]
    k, stride, pad = a.kernel, a.stride, a.kernel // 2
    info = fc.info()
    print(f"fastconv {info['version']} ({info['isa']}), {a.threads} threads; {k}x{k} kernels, stride {stride}, "
          f"padding {pad}, N*H*W = {a.pixels}; median of up to {a.repeat} interleaved repeats")
    head = f"{'N':>5} {'C':>3} {'K':>3} {'H':>3}  {'op':5}  " + "  ".join(f"{s:>9}" for s in algos)
    print(head + "  fastest    auto       auto/fastest")
    print("-" * (len(head) + 41))
    rng = np.random.default_rng(0)
    for H in maps:
        N = max(1, a.pixels // (H * H))
        for C, K in pairs:
            x = rng.standard_normal((N, C, H, H), dtype=np.float32)
            w = (rng.standard_normal((K, C, k, k)) * 0.1).astype(np.float32)
            P = (H + 2 * pad - k) // stride + 1
            g = rng.standard_normal((N, K, P, P), dtype=np.float32)
            for op in OPS:
                names, fns, first, results = [], [], [], []
                for algo in algos:
                    if algo not in ops.algorithms_for(x.shape, w.shape, stride, pad):
                        continue
                    fn = calls(ops, x, w, g, stride, pad, algo)[op]
                    t0 = time.perf_counter()
                    results.append(fn())
                    first.append(time.perf_counter() - t0)
                    names.append(algo)
                    fns.append(fn)
                bad = [n for n, r in zip(names, results) if bc.rel_err(r, results[0]) > bc.RTOL]
                if bad:
                    print(f"{N:>5} {C:>3} {K:>3} {H:>3}  {op:5}  MISMATCH against {names[0]}: {bad}")
                    continue
                med, _, _ = bc.time_interleaved(fns, first, a.repeat, a.budget)
                ms = dict(zip(names, (m * 1e3 for m in med)))
                best = min(ms, key=ms.get)
                auto = ops.choose_algo(x.shape, w.shape, stride, pad, op=op, backend="cpu")
                cells = "  ".join(f"{ms[s]:9.3f}" if s in ms else f"{'n/a':>9}" for s in algos)
                ratio = f"{ms[auto] / ms[best]:.2f}" if auto in ms else "-"
                print(f"{N:>5} {C:>3} {K:>3} {H:>3}  {op:5}  {cells}  {best:9}  {auto:9}  {ratio:>6}", flush=True)


if __name__ == "__main__":
    main()
