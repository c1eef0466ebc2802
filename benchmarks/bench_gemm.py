#!/usr/bin/env python3
"""GEMM benchmark of fastconv's own packed fp32 GEMM (the engine under im2col /
implicit-GEMM convolutions).

Runs only when the binding fastconv.backends.cpu.gemm(A, B) -> A @ B exists;
otherwise it says so and exits 0. For a few shapes (square ones and the GEMMs
that convolution layers of tests/shapes.py turn into) it prints ms (median),
GFLOP/s (2*M*N*K / time) and % of the fp32 FMA peak measured at startup with
the same thread count, next to numpy's matmul (BLAS) as a correctness
reference (relative tolerance 1e-4) and a point of comparison (samples interleaved).

  python benchmarks/bench_gemm.py [--threads 2] [--repeat 5]
"""
from __future__ import annotations

import argparse
import math
import os
import sys

RTOL = 1e-4

# (label, M, N, K): C[M,N] = A[M,K] @ B[K,N]
SHAPES = [
    ("square 256", 256, 256, 256),
    ("square 512", 512, 512, 512),
    ("square 1024", 1024, 1024, 1024),
    ("square 2048", 2048, 2048, 2048),
    # im2col GEMMs of one image: M = K_out, N = P*Q, K = C*R*S
    ("resnet50_3x3_64@56", 64, 56 * 56, 64 * 9),
    ("resnet50_1x1_64to256@56", 256, 56 * 56, 64),
    ("vgg16_512@14", 512, 14 * 14, 512 * 9),
    ("alexnet_conv1", 96, 55 * 55, 3 * 11 * 11),
]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    return p.parse_args()


def main():
    args = parse_args()
    # numpy's BLAS reads its thread count at import: set it before importing numpy
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    # same import logic and interleaved timing as the conv benchmark
    from bench_conv import import_fastconv, time_call, time_interleaved

    fc = import_fastconv()
    cpu = fc.backends.cpu
    if not hasattr(cpu, "gemm"):
        print("bench_gemm: fastconv.backends.cpu has no gemm(A, B) binding; nothing to do")
        return 0
    fc.set_num_threads(args.threads)
    peak = float(cpu.measure_peak_gflops(args.threads, seconds=0.5))
    print("fastconv " + ", ".join(f"{k}={v}" for k, v in dict(fc.info()).items()))
    print(f"threads: {args.threads}; measured fp32 FMA peak: {peak:.1f} GFLOP/s\n")

    rng = np.random.default_rng(0)
    hdr = f"{'shape':<24}  {'M':>5} {'N':>5} {'K':>5}  {'ms':>9}  {'GFLOP/s':>7}  {'%peak':>5}  " \
          f"{'numpy ms':>9}  {'check':<8}"
    print(hdr)
    print("-" * len(hdr))
    failed = 0
    for label, M, N, K in SHAPES:
        A = rng.standard_normal((M, K), dtype=np.float32)
        B = rng.standard_normal((K, N), dtype=np.float32)
        ref = A @ B
        try:
            got = np.asarray(cpu.gemm(A, B))
            err = (float(np.abs(got - ref).max()) / float(np.abs(ref).max())
                   if got.shape == ref.shape and np.isfinite(got).all() else math.inf)
        except Exception as e:
            print(f"{label:<24}  {M:>5} {N:>5} {K:>5}  !! ERROR: {type(e).__name__}: {e}")
            failed += 1
            continue
        if not err <= RTOL:  # never time a wrong kernel
            print(f"{label:<24}  {M:>5} {N:>5} {K:>5}  !! FAIL: max rel err {err:.1e} > {RTOL:g}")
            failed += 1
            continue
        # fastconv and numpy samples interleaved (first calls above were the warm-up)
        fns = [lambda: cpu.gemm(A, B), lambda: A @ B]
        (t, t_np), _, _ = time_interleaved(fns, [time_call(f) for f in fns], args.repeat, 20.0)
        gf = 2.0 * M * N * K / t / 1e9
        print(f"{label:<24}  {M:>5} {N:>5} {K:>5}  {t * 1e3:>9.3f}  {gf:>7.1f}  "
              f"{100 * gf / peak:>5.1f}  {t_np * 1e3:>9.3f}  ok {err:.0e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
