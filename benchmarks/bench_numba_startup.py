#!/usr/bin/env python3
"""JIT cost of the Numba CPU backend: cold (empty cache) versus cached start-up.

Each measurement is a fresh Python process (so nothing is compiled in memory)
that imports fastconv and runs, through backend="numba", conv2d /
conv2d_input / conv2d_weight once per algorithm and every pooling / layer op
(forward and backward), timing every first call; a warm second call shows
what the op itself costs. Ops run in the listed order, and a kernel is
compiled (or loaded) once per process and dtype: an op whose kernels an
earlier op already needed (max_pool2d_backward recomputes the argmax with
max_pool2d's kernel) only pays for its own. Run 1 uses an empty
NUMBA_CACHE_DIR (cold: the kernels are compiled), runs 2..N reuse it
(cached: loaded from disk).

  python benchmarks/bench_numba_startup.py [--dtype float32] [--runs 3] [--only all|conv|layers]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r'''
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import fastconv
from fastconv import ops
t_import = time.perf_counter() - t0
dt = np.dtype(sys.argv[1])
which = sys.argv[2]
B = "numba"
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 16, 28, 28)).astype(dt)
w = rng.standard_normal((32, 16, 3, 3)).astype(dt)
g = rng.standard_normal((2, 32, 28, 28)).astype(dt)
cases = []
if which in ("all", "conv"):
    for algo in ("direct", "im2col", "winograd"):
        cases += [
            (algo, "fprop", lambda a=algo: ops.conv2d(x, w, padding=1, algo=a, backend=B)),
            (algo, "dgrad", lambda a=algo: ops.conv2d_input(x.shape, w, g, padding=1, algo=a, backend=B)),
            (algo, "wgrad", lambda a=algo: ops.conv2d_weight(x, w.shape, g, padding=1, algo=a, backend=B))]
if which in ("all", "layers"):
    gp = rng.standard_normal((2, 16, 14, 14)).astype(dt)
    ga = rng.standard_normal((2, 16, 3, 3)).astype(dt)
    z = rng.standard_normal((32, 10)).astype(dt)
    t = rng.integers(0, 10, 32)
    xl = rng.standard_normal((32, 200)).astype(dt)
    wl = rng.standard_normal((100, 200)).astype(dt)
    gl = rng.standard_normal((32, 100)).astype(dt)
    bn = ops.batch_norm_forward_train(x, backend="cpu" if "cpu" in fastconv.backends.available() else B)
    cases += [
        ("pool", "max_pool2d", lambda: ops.max_pool2d(x, 3, 2, 1, return_indices=True, backend=B)),
        ("pool", "max_pool2d_backward", lambda: ops.max_pool2d_backward(gp, x, 3, 2, 1, backend=B)),
        ("pool", "avg_pool2d", lambda: ops.avg_pool2d(x, 3, 2, 1, backend=B)),
        ("pool", "avg_pool2d_backward", lambda: ops.avg_pool2d_backward(gp, x, 3, 2, 1, backend=B)),
        ("pool", "adaptive_avg_pool2d", lambda: ops.adaptive_avg_pool2d(x, 3, backend=B)),
        ("pool", "adaptive_avg_backward", lambda: ops.adaptive_avg_pool2d_backward(ga, x, backend=B)),
        ("norm", "batch_norm_train", lambda: ops.batch_norm_forward_train(x, backend=B)),
        ("norm", "batch_norm_backward", lambda: ops.batch_norm_backward(x, x, None, bn[1], bn[2], backend=B)),
        ("norm", "lrn", lambda: ops.local_response_norm(x, 5, backend=B)),
        ("norm", "lrn_backward", lambda: ops.local_response_norm_backward(x, x, 5, backend=B)),
        ("act", "relu", lambda: ops.relu(x, backend=B)),
        ("act", "relu_backward", lambda: ops.relu_backward(x, x, backend=B)),
        ("act", "softmax", lambda: ops.softmax(z, 1, backend=B)),
        ("act", "softmax_backward", lambda: ops.softmax_backward(z, z, 1, backend=B)),
        ("act", "cross_entropy", lambda: ops.cross_entropy(z, t, backend=B)),
        ("act", "dropout", lambda: ops.dropout(x, 0.5, seed=1, backend=B)),
        ("act", "dropout_backward", lambda: ops.dropout_backward(x, x > 0, 0.5, backend=B)),
        ("linear", "linear", lambda: ops.linear(xl, wl, backend=B)),
        ("linear", "linear_backward", lambda: ops.linear_backward(gl, xl, wl, backend=B))]
rows = []
t_ops = time.perf_counter()
for fam, name, fn in cases:
    t1 = time.perf_counter(); fn(); first = time.perf_counter() - t1
    t1 = time.perf_counter(); fn(); second = time.perf_counter() - t1
    rows.append((fam, name, first, second))
print(json.dumps(dict(import_s=t_import, rows=rows, ops_s=time.perf_counter() - t_ops,
                      total_s=time.perf_counter() - t0)))
'''


def run(cache_dir, dtype, which):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", CHILD, dtype, which], env=env, capture_output=True, text=True,
                         check=True, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--runs", type=int, default=3, help="processes: 1 cold + (runs-1) cached")
    ap.add_argument("--only", default="all", choices=["all", "conv", "layers"],
                    help="conv kernels, pooling/layer kernels, or both")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fastconv_numba_cache_") as cache:
        results = [run(cache, args.dtype, args.only) for _ in range(args.runs)]
    print(f"Numba start-up, {args.dtype}; conv: x(2,16,28,28) w(32,16,3,3) pad 1; layers: the same x "
          f"(pool 3/2/1), logits (32,10), linear (32,200)->100; one process per column")
    hdr = ["family", "op", "cold 1st (s)"] + [f"cached#{i} 1st (s)" for i in range(1, args.runs)] + ["2nd call (ms)"]
    print(" | ".join(f"{h:>16}" for h in hdr))
    for i, (algo, op, _, _) in enumerate(results[0]["rows"]):
        vals = [f"{r['rows'][i][2]:.3f}" for r in results] + [f"{results[-1]['rows'][i][3] * 1e3:.2f}"]
        print(" | ".join(f"{v:>16}" for v in [algo, op] + vals))
    print(" | ".join(f"{v:>16}" for v in ["all first calls", ""] + [f"{r['ops_s']:.3f}" for r in results] + [""]))
    print(" | ".join(f"{v:>16}" for v in ["import fastconv", ""] + [f"{r['import_s']:.3f}" for r in results] + [""]))
    print(" | ".join(f"{v:>16}" for v in ["process total", ""] + [f"{r['total_s']:.3f}" for r in results] + [""]))


if __name__ == "__main__":
    main()
