#!/usr/bin/env python3
"""JIT cost of the Numba CPU backend: cold (empty cache) versus cached start-up.

Each measurement is a fresh Python process (so nothing is compiled in memory)
that imports fastconv and runs conv2d / conv2d_input / conv2d_weight once per
algorithm through backend="numba", timing every first call; a warm second call
shows what the op itself costs. Run 1 uses an empty NUMBA_CACHE_DIR (cold: the
kernels are compiled), runs 2..N reuse it (cached: loaded from disk).

  python benchmarks/bench_numba_startup.py [--dtype float32] [--runs 3]
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
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 16, 28, 28)).astype(dt)
w = rng.standard_normal((32, 16, 3, 3)).astype(dt)
g = rng.standard_normal((2, 32, 28, 28)).astype(dt)
rows = []
for algo in ("direct", "im2col"):
    for name, fn in (("fprop", lambda: ops.conv2d(x, w, padding=1, algo=algo, backend="numba")),
                     ("dgrad", lambda: ops.conv2d_input(x.shape, w, g, padding=1, algo=algo, backend="numba")),
                     ("wgrad", lambda: ops.conv2d_weight(x, w.shape, g, padding=1, algo=algo, backend="numba"))):
        t = time.perf_counter(); fn(); first = time.perf_counter() - t
        t = time.perf_counter(); fn(); second = time.perf_counter() - t
        rows.append((algo, name, first, second))
print(json.dumps(dict(import_s=t_import, rows=rows, total_s=time.perf_counter() - t0)))
'''


def run(cache_dir, dtype):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", CHILD, dtype], env=env, capture_output=True, text=True,
                         check=True, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--runs", type=int, default=3, help="processes: 1 cold + (runs-1) cached")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fastconv_numba_cache_") as cache:
        results = [run(cache, args.dtype) for _ in range(args.runs)]
    print(f"Numba start-up, {args.dtype}, problem x(2,16,28,28) w(32,16,3,3) pad 1; one process per column")
    hdr = ["algo", "op", "cold 1st (s)"] + [f"cached#{i} 1st (s)" for i in range(1, args.runs)] + ["2nd call (ms)"]
    print(" | ".join(f"{h:>16}" for h in hdr))
    for i, (algo, op, _, _) in enumerate(results[0]["rows"]):
        vals = [f"{r['rows'][i][2]:.3f}" for r in results] + [f"{results[-1]['rows'][i][3] * 1e3:.2f}"]
        print(" | ".join(f"{v:>16}" for v in [algo, op] + vals))
    print(" | ".join(f"{v:>16}" for v in ["import fastconv", ""] + [f"{r['import_s']:.3f}" for r in results] + [""]))
    print(" | ".join(f"{v:>16}" for v in ["process total", ""] + [f"{r['total_s']:.3f}" for r in results] + [""]))


if __name__ == "__main__":
    main()
