"""bench_conv.py --device cuda: fastconv's CUDA kernels against cuDNN (torch) on one GPU.

For every layer of tests/shapes.py BENCH_LAYERS (full batch, or --quick: batch 1):

  fwd  ops.conv2d on CuPy arrays                 vs torch conv2d (cuDNN)
  bwd  ops.conv2d_input + ops.conv2d_weight      vs aten.convolution_backward (dx and dw)

torch runs with torch.backends.cudnn.benchmark = True and TF32 off (true
FP32, the comparison the speed-up is computed against), plus a TF32 row
(allow_tf32 on: tensor cores, lower precision) for reference. Every kernel is
checked against torch FP32 first (max |got - ref| / max |ref| <= 1e-4); a
failing row says FAIL, is not timed, and the script exits 1.

Timing: CUDA events on torch's current stream (fastconv launches on the same
stream), 3 warm-up calls, then --repeat samples each after an L2 flush,
median. TFLOP/s = 2*N*K*P*Q*C/groups*R*S per pass (bwd: 2 passes) / time;
%peak = against the device's FP32 non-tensor peak (gpu_common.py);
speed-up = cuDNN FP32 ms / fastconv ms (> 1: fastconv faster).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

import gpu_common as G


def _pads(spec):
    import reference as ref  # tests/reference.py (bench_conv.py puts tests/ on sys.path)

    return ref.resolve_padding(spec.padding, (spec.H, spec.W), (spec.R, spec.S), spec.stride, spec.dilation)


def _pair(v):
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def run(args, specs, flops_per_pass, rtol):
    torch, cp, fc = G.require_gpu("bench_conv")
    F = torch.nn.functional
    torch.backends.cudnn.benchmark = True
    peak, peak_how = G.fp32_peak_tflops(torch, cp)
    timer = G.Timer(torch, cp, warmup=3, repeat=max(args.repeat, 5))
    dev = torch.cuda.get_device_name(0)
    print(f"device: {dev}; FP32 peak {peak:.1f} TFLOP/s ({peak_how}); torch {torch.__version__}, "
          f"cuDNN {torch.backends.cudnn.version()}; fastconv backend 'cuda', algo {args.algo}")
    print("speed-up = cuDNN FP32 ms / fastconv ms; the TF32 column is cuDNN with tensor cores (reference only)")
    directions = ["fwd", "bwd"] if args.direction == "both" else [args.direction]
    hdr = ("layer", "dir", "fastconv ms", "TFLOP/s", "%peak", "cuDNN ms", "cuDNN TFLOP/s", "speed-up",
           "cuDNN TF32 ms", "vs TF32")
    print(" | ".join(hdr))
    rows, failed = [], False
    rng = np.random.default_rng(0)
    for spec in specs:
        top, bottom, left, right = _pads(spec)
        stride, dil = _pair(spec.stride), _pair(spec.dilation)
        x = rng.standard_normal(spec.input_shape, dtype=np.float32)
        w = rng.standard_normal(spec.weight_shape, dtype=np.float32) / np.sqrt(np.prod(spec.weight_shape[1:]))
        tx, tw = torch.from_numpy(x).cuda(), torch.from_numpy(w).cuda()
        txp = F.pad(tx, (left, right, top, bottom))  # torch takes symmetric padding only: pre-pad
        cx, cw = cp.asarray(x), cp.asarray(w)
        kw = spec.kwargs()

        def t_fwd():
            return F.conv2d(txp, tw, None, stride, 0, dil, spec.groups)

        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        ty = t_fwd()
        tg = torch.randn_like(ty)
        cg = cp.asarray(tg.cpu().numpy())

        def t_bwd():
            return torch.ops.aten.convolution_backward(tg, txp, tw, None, list(stride), [0, 0], list(dil), False,
                                                       [0, 0], spec.groups, [True, True, False])

        for d in directions:
            flops = flops_per_pass(spec) * (1 if d == "fwd" else 2)
            if d == "fwd":
                def fc_fn():
                    return fc.ops.conv2d(cx, cw, algo=args.algo, **kw)

                got = [cp.asnumpy(fc_fn())]
                want = [ty.cpu().numpy()]
                t_fn = t_fwd
            else:
                def fc_fn():
                    return (fc.ops.conv2d_input(x.shape, cw, cg, algo=args.algo, **kw),
                            fc.ops.conv2d_weight(cx, w.shape, cg, algo=args.algo, **kw))

                dxp, dw, _ = t_bwd()
                got = [cp.asnumpy(a) for a in fc_fn()]
                want = [dxp[:, :, top:top + spec.H, left:left + spec.W].cpu().numpy(), dw.cpu().numpy()]
                t_fn = t_bwd
            err = max(G.rel_err(a, b) for a, b in zip(got, want))
            row = dict(layer=spec.name, dir=d, rel_err=err)
            if not err <= rtol:
                failed = True
                row["status"] = "FAIL"
                print(f"{spec.name} | {d} | FAIL: rel err {err:.2e} > {rtol:g} vs cuDNN FP32 (not timed)")
                rows.append(row)
                continue
            torch.backends.cudnn.allow_tf32 = False
            fc_ms = timer(fc_fn)
            th_ms = timer(t_fn)
            torch.backends.cudnn.allow_tf32 = True
            tf32_ms = timer(t_fn)
            torch.backends.cudnn.allow_tf32 = False
            tflops = flops / (fc_ms * 1e-3) / 1e12
            row.update(status="ok", fc_ms=fc_ms, tflops=tflops, pct_peak=100 * tflops / peak, cudnn_ms=th_ms,
                       cudnn_tflops=flops / (th_ms * 1e-3) / 1e12, speedup=th_ms / fc_ms, cudnn_tf32_ms=tf32_ms,
                       vs_tf32=tf32_ms / fc_ms)
            rows.append(row)
            print(f"{spec.name} | {d} | {fc_ms:.3f} | {tflops:.2f} | {row['pct_peak']:.0f}% | {th_ms:.3f} | "
                  f"{row['cudnn_tflops']:.2f} | {row['speedup']:.2f}x | {tf32_ms:.3f} | {row['vs_tf32']:.2f}x")
    ok = [r for r in rows if r.get("status") == "ok"]
    gm = G.geomean([r["speedup"] for r in ok])
    print(f"geomean speed-up vs cuDNN FP32 over {len(ok)} rows: {gm:.2f}x (target >= 0.9x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=dev, peak_tflops=peak, peak_source=peak_how, rows=rows, geomean=gm), f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"Device: {dev}, FP32 peak {peak:.1f} TFLOP/s ({peak_how})\n\n| " + " | ".join(hdr) + " |\n|"
                    + "---|" * len(hdr) + "\n")
            for r in ok:
                f.write(f"| {r['layer']} | {r['dir']} | {r['fc_ms']:.3f} | {r['tflops']:.2f} | {r['pct_peak']:.0f}% "
                        f"| {r['cudnn_ms']:.3f} | {r['cudnn_tflops']:.2f} | {r['speedup']:.2f}x "
                        f"| {r['cudnn_tf32_ms']:.3f} | {r['vs_tf32']:.2f}x |\n")
            f.write(f"\ngeomean speed-up vs cuDNN FP32: {gm:.2f}x\n")
    return 1 if failed else 0
