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
  python benchmarks/bench_algos.py --layers all --algos im2col,direct   # classic networks' layers

`--layers` replaces the grid with named layers of the classic networks
(NETWORK_LAYERS below: any kernel, stride and padding), the problems the
direct-versus-im2col rules were chosen on.
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

# name: (N, C, H, K, kernel, stride, padding) of square layers, batch as in training. Shapes from the
# papers (LeNet-5, ZFNet's 7x7/s2 and 5x5/s2 first layers, GoogLeNet's 5x5 branches after their
# 1x1 reductions, ResNet-18/-50's ImageNet and CIFAR stems and stride-2 3x3s, ResNet-20's CIFAR
# layers) and from the seed Fashion network.
NETWORK_LAYERS = {
    "lenet_c1": (64, 1, 32, 6, 5, 1, 0),
    "lenet_c3": (64, 6, 14, 16, 5, 1, 0),
    "lenet_c5": (64, 16, 5, 120, 5, 1, 0),
    "fashion_conv1": (64, 1, 28, 16, 5, 1, 2),
    "fashion_conv2": (64, 16, 14, 32, 5, 1, 2),
    "alexnet_conv1": (8, 3, 227, 96, 11, 4, 0),
    "alexnet_conv2": (8, 96, 27, 256, 5, 1, 2),
    "zfnet_conv1": (8, 3, 224, 96, 7, 2, 1),
    "zfnet_conv2": (8, 96, 55, 256, 5, 2, 0),
    "googlenet_3a_5x5": (16, 16, 28, 32, 5, 1, 2),
    "googlenet_4a_5x5": (16, 16, 14, 48, 5, 1, 2),
    "googlenet_5b_5x5": (16, 48, 7, 128, 5, 1, 2),
    "resnet_stem_7x7": (8, 3, 224, 64, 7, 2, 3),
    "resnet_64to128_s2": (16, 64, 56, 128, 3, 2, 1),
    "resnet_128to256_s2": (16, 128, 28, 256, 3, 2, 1),
    "resnet_256to512_s2": (16, 256, 14, 512, 3, 2, 1),
    "cifar_stem_3to16": (128, 3, 32, 16, 3, 1, 1),
    "cifar_stem_3to64": (128, 3, 32, 64, 3, 1, 1),
    "resnet20_16to32_s2": (128, 16, 32, 32, 3, 2, 1),
    "resnet20_32to64_s2": (128, 32, 16, 64, 3, 2, 1),
}


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
    p.add_argument("--layers", default="", help="'all' or comma-separated names of NETWORK_LAYERS "
                   "(replaces the grid; --channels/--maps/--pixels/--kernel/--stride are then ignored)")
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
    cols = "  ".join(f"{s:>9}" for s in algos)
    if a.layers:
        print(f"fastconv {info['version']} ({info['isa']}), {a.threads} threads; layers of classic networks; "
              f"median of up to {a.repeat} interleaved repeats")
        head = f"{'op':5}  {cols}  fastest    auto       auto/fastest  {'N':>5} {'C':>3} {'K':>3} {'H':>3}  kernel     layer"
        print(head)
        print("-" * (len(head) + 12))
    else:
        print(f"fastconv {info['version']} ({info['isa']}), {a.threads} threads; {k}x{k} kernels, stride {stride}, "
              f"padding {pad}, N*H*W = {a.pixels}; median of up to {a.repeat} interleaved repeats")
        head = f"{'N':>5} {'C':>3} {'K':>3} {'H':>3}  {'op':5}  {cols}"
        print(head + "  fastest    auto       auto/fastest")
        print("-" * (len(head) + 41))
    rng = np.random.default_rng(0)
    if a.layers:
        names = list(NETWORK_LAYERS) if a.layers == "all" else [s for s in a.layers.split(",") if s]
        unknown = [n for n in names if n not in NETWORK_LAYERS]
        if unknown:
            raise SystemExit(f"unknown layers {unknown}; known: {', '.join(NETWORK_LAYERS)}")
        for name in names:
            N, C, H, K, k, stride, pad = NETWORK_LAYERS[name]
            compare(ops, algos, rng, N, C, H, K, k, stride, pad, a, label=name)
        return
    for H in maps:
        N = max(1, a.pixels // (H * H))
        for C, K in pairs:
            compare(ops, algos, rng, N, C, H, K, k, stride, pad, a)


def compare(ops, algos, rng, N, C, H, K, k, stride, pad, a, label=""):
    """Time every algorithm of `algos` that takes the problem, per operator, and print a row each."""
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w = (rng.standard_normal((K, C, k, k)) * 0.1).astype(np.float32)
    P = (H + 2 * pad - k) // stride + 1
    g = rng.standard_normal((N, K, P, P), dtype=np.float32)
    shape = f"{N:>5} {C:>3} {K:>3} {H:>3}" + (f"  {k}x{k}/s{stride}p{pad}  {label}" if label else "")
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
        if not names:
            print(f"{shape}  {op:5}  no algorithm of {algos} takes this problem")
            continue
        bad = [n for n, r in zip(names, results) if bc.rel_err(r, results[0]) > bc.RTOL]
        if bad:
            print(f"{shape}  {op:5}  MISMATCH against {names[0]}: {bad}")
            continue
        med, _, _ = bc.time_interleaved(fns, first, a.repeat, a.budget)
        ms = dict(zip(names, (m * 1e3 for m in med)))
        best = min(ms, key=ms.get)
        auto = ops.choose_algo(x.shape, w.shape, stride, pad, op=op, backend="cpu")
        cells = "  ".join(f"{ms[s]:9.3f}" if s in ms else f"{'n/a':>9}" for s in algos)
        ratio = f"{ms[auto] / ms[best]:.2f}" if auto in ms else "-"
        if label:
            print(f"{op:5}  {cells}  {best:9}  {auto:9}  {ratio:>6}  {shape}", flush=True)
        else:
            print(f"{shape}  {op:5}  {cells}  {best:9}  {auto:9}  {ratio:>6}", flush=True)

if __name__ == "__main__":
    main()
