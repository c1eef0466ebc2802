"""bench_pool.py --device cuda: fastconv pooling on CuPy arrays against torch CUDA on one GPU.

The cases of bench_pool.py (max / avg 3x3 s2 p1 and 2x2 s2, global average),
forward and backward. Each fastconv kernel is checked against torch first
(rel err <= 1e-4; FAIL rows are not timed and the script exits 1). When this
build's pooling ops do not take GPU arrays, the row says so (with fastconv's
own error message) and only torch is timed.

Timing as in bench_conv_cuda.py: CUDA events on torch's current stream (fastconv
on the same stream), warm-up, an L2 flush before every sample, median.
Columns: ms, GB/s (forward: input + output; backward: grad_output (+ indices)
+ grad_input), % of the device's DRAM bandwidth (from its properties), torch ms,
speed-up = torch ms / fastconv ms.
"""
from __future__ import annotations

import sys

import numpy as np

import gpu_common as G

RTOL = 1e-4


def dram_gbs(cupy):
    p = cupy.cuda.runtime.getDeviceProperties(0)
    return 2 * p["memoryClockRate"] * 1e3 * p["memoryBusWidth"] / 8 / 1e9  # DDR: two transfers per clock


def _cases():
    out = []
    for shape in [(16, 64, 112, 112), (64, 16, 28, 28)]:
        for kind in ("max", "avg"):
            for k, s, p in ((3, 2, 1), (2, 2, 0)):
                out.append(dict(shape=shape, kind=kind, k=k, s=s, p=p, name=f"{kind} {k}x{k} s{s} p{p}"))
    out.append(dict(shape=(16, 2048, 7, 7), kind="global_avg", name="global avg (adaptive 1x1)"))
    return out


def _build(case, P, torch, cp, rng):
    F, aten = torch.nn.functional, torch.ops.aten
    x = rng.standard_normal(case["shape"], dtype=np.float32)
    tx, cx = torch.from_numpy(x).cuda(), cp.asarray(x)
    kind = case["kind"]
    if kind == "global_avg":
        ty = F.adaptive_avg_pool2d(tx, 1)
        tg = torch.randn_like(ty)
        cg = cp.asarray(tg.cpu().numpy())
        return dict(fc_fwd=lambda: P.adaptive_avg_pool2d(cx, 1), fc_bwd=lambda: P.adaptive_avg_pool2d_backward(cg, cx),
                    t_fwd=lambda: F.adaptive_avg_pool2d(tx, 1),
                    t_bwd=lambda: aten._adaptive_avg_pool2d_backward(tg, tx),
                    b_fwd=4 * (tx.numel() + ty.numel()), b_bwd=4 * (tg.numel() + tx.numel()))
    k, s, p = case["k"], case["s"], case["p"]
    if kind == "max":
        ty, tidx = F.max_pool2d(tx, k, s, p, return_indices=True)
        tg = torch.randn_like(ty)
        cg = cp.asarray(tg.cpu().numpy())
        state = {}

        def fc_fwd():
            y, idx = P.max_pool2d(cx, k, s, p, return_indices=True)
            state["idx"] = idx
            return y

        return dict(fc_fwd=fc_fwd,
                    fc_bwd=lambda: P.max_pool2d_backward(cg, cx, k, s, p, indices=state.get("idx")),
                    t_fwd=lambda: F.max_pool2d(tx, k, s, p),
                    t_bwd=lambda: aten.max_pool2d_with_indices_backward(tg, tx, [k, k], [s, s], [p, p], [1, 1],
                                                                       False, tidx),
                    b_fwd=4 * (tx.numel() + ty.numel()), b_bwd=4 * tg.numel() + 8 * tidx.numel() + 4 * tx.numel())
    ty = F.avg_pool2d(tx, k, s, p)
    tg = torch.randn_like(ty)
    cg = cp.asarray(tg.cpu().numpy())
    return dict(fc_fwd=lambda: P.avg_pool2d(cx, k, s, p), fc_bwd=lambda: P.avg_pool2d_backward(cg, cx, k, s, p),
                t_fwd=lambda: F.avg_pool2d(tx, k, s, p),
                t_bwd=lambda: aten.avg_pool2d_backward(tg, tx, [k, k], [s, s], [p, p], False, True, None),
                b_fwd=4 * (tx.numel() + ty.numel()), b_bwd=4 * (tg.numel() + tx.numel()))


def run(args):
    torch, cp, fc = G.require_gpu("bench_pool")
    from fastconv.ops import pool as P

    timer = G.Timer(torch, cp, warmup=3, repeat=max(args.repeat, 5))
    bw = dram_gbs(cp)
    print(f"device: {torch.cuda.get_device_name(0)}; DRAM bandwidth {bw:.0f} GB/s (from its properties); "
          f"torch {torch.__version__}; speed-up = torch ms / fastconv ms")
    cols = ["case", "dir", "shape", "ms", "GB/s", "%DRAM", "torch ms", "speed-up"]
    print(" | ".join(cols))
    rng = np.random.default_rng(0)
    failed, speedups = False, []
    for case in _cases():
        fns = _build(case, P, torch, cp, rng)
        shape = "x".join(map(str, case["shape"]))
        for d in ("fwd", "bwd"):
            fc_fn, t_fn, nbytes = fns[f"fc_{d}"], fns[f"t_{d}"], fns[f"b_{d}"]
            t_out = t_fn()
            tms = timer(t_fn)
            try:
                if d == "bwd" and case["kind"] == "max":
                    fns["fc_fwd"]()  # the indices the backward consumes
                got = fc_fn()
            except (TypeError, ValueError, NotImplementedError) as exc:
                msg = str(exc).splitlines()[0][:120]
                print(f"{case['name']} | {d} | {shape} | fastconv has no GPU path here ({msg}) | - | - | "
                      f"{tms:.3f} | -")
                continue
            ref = t_out[0] if isinstance(t_out, tuple) else t_out
            err = G.rel_err(cp.asnumpy(got[0] if isinstance(got, tuple) else got), ref.cpu().numpy())
            if not err <= RTOL:
                failed = True
                print(f"{case['name']} | {d} | {shape} | FAIL rel err {err:.1e} (not timed) | | | {tms:.3f} |")
                continue
            ms = timer(fc_fn)
            gbs = nbytes / (ms * 1e-3) / 1e9
            speedups.append(tms / ms)
            print(f"{case['name']} | {d} | {shape} | {ms:.3f} | {gbs:.0f} | {100 * gbs / bw:.0f}% | {tms:.3f} | "
                  f"{tms / ms:.2f}x")
    if speedups:
        print(f"geomean speed-up vs torch over {len(speedups)} rows: {G.geomean(speedups):.2f}x")
    else:
        print("no fastconv GPU pooling rows were timed (the pooling ops of this build do not take GPU arrays)")
    return 1 if failed else 0
