#!/usr/bin/env python3
"""Layer-kernel benchmark: fastconv.ops.layers vs torch (CPU) in the same run.

Batch norm (training forward+backward, and eval) on ResNet-sized tensors, LRN
(AlexNet-sized, size 5) forward+backward, activations, softmax, fused cross
entropy, dropout and linear. Prints ms (median of --repeat interleaved samples,
order flipped every repeat), GB/s (bytes read + written by the op's inputs and
outputs, fwd and bwd added) and speed-up = torch ms / fastconv ms (> 1: fastconv
faster). Both libraries run with --threads threads (fastconv.set_num_threads and
torch.set_num_threads). Every op is checked against torch before it is timed
(max|got-ref|/max|ref| <= 1e-4); a failure is reported and not timed.
fastconv's results come from its output-buffer cache (README, "API"), torch's
from its allocator; --no-buffer-cache times fastconv on fresh memory too.

  python benchmarks/bench_layers.py [--threads 2] [--repeat 5] [--quick] [--markdown PATH] [--no-buffer-cache]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RTOL = 1e-4


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smaller tensors (smoke test)")
    p.add_argument("--only", default="", help="comma-separated substrings of case names to run")
    p.add_argument("--markdown", default=None, help="also write the table as Markdown to this path")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-buffer-cache", action="store_true",
                   help="fastconv results in fresh memory (fastconv.set_buffer_cache_limit(0))")
    return p.parse_args()


def import_fastconv():
    try:
        import fastconv
        from fastconv.ops import layers  # noqa: F401

        fastconv.backends.cpu._need()
        return fastconv
    except Exception:  # not installed: the checkout this script lives in
        for name in [m for m in sys.modules if m == "fastconv" or m.startswith("fastconv.")]:
            del sys.modules[name]
        sys.path.insert(0, REPO)
        import fastconv
        from fastconv.ops import layers  # noqa: F401

        fastconv.backends.cpu._need()
        return fastconv


def time_once(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_interleaved(fns, repeat):
    """Median seconds of each fn; one warm-up each, then samples alternating, order
    flipped every repeat. Calls under 5 ms are looped within one sample."""
    live = [i for i, f in enumerate(fns) if f is not None]
    number = {}
    for i in live:
        t = min(time_once(fns[i]), time_once(fns[i]))
        number[i] = max(1, int(0.02 / max(t, 1e-7)))
    samples = {i: [] for i in live}
    for r in range(repeat):
        for i in (live if r % 2 == 0 else live[::-1]):
            n = number[i]
            t0 = time.perf_counter()
            for _ in range(n):
                fns[i]()
            samples[i].append((time.perf_counter() - t0) / n)
    return [statistics.median(samples[i]) if i in samples else None for i in range(len(fns))]


def rel_err(got, ref):
    import numpy as np

    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def build_cases(fc, torch, quick):
    """(name, shape text, bytes moved, fastconv fn, torch fn, check fn) per case."""
    import numpy as np

    L = fc.ops.layers
    F = torch.nn.functional if torch is not None else None
    rng = np.random.default_rng(0)
    cases = []

    def rnd(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    def tt(a):
        return torch.from_numpy(a)

    bn_shapes = [(16, 64, 112, 112), (16, 256, 56, 56)] if not quick else [(4, 64, 56, 56)]
    for shp in bn_shapes:
        x, dy = rnd(*shp), rnd(*shp)
        C = shp[1]
        w, b = rnd(C), rnd(C)
        nbytes = x.nbytes
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)

        def fc_train(x=x, dy=dy, w=w, b=b):
            y, sm, si = L.batch_norm_forward_train(x, w, b, 1e-5)
            return y, L.batch_norm_backward(dy, x, w, sm, si, training=True)

        def th_train(x=x, dy=dy, w=w, b=b):
            tx, tw, tb, tdy = tt(x), tt(w), tt(b), tt(dy)
            y, sm, si = torch.native_batch_norm(tx, tw, tb, None, None, True, 0.1, 1e-5)
            g = torch.ops.aten.native_batch_norm_backward(tdy, tx, tw, None, None, sm, si, True, 1e-5,
                                                          [True, True, True])
            return y, g

        def chk_train(x=x, dy=dy, w=w, b=b):
            y, (dx, dw, db) = fc_train()
            ty, (tdx, tdw, tdb) = th_train()
            return max(rel_err(y, ty.numpy()), rel_err(dx, tdx.numpy()), rel_err(dw, tdw.numpy()),
                       rel_err(db, tdb.numpy()))

        # fwd: read x twice (stats, normalize) + write y; bwd: read dy, x twice + write dx
        cases.append(("batch_norm train fwd+bwd", shp, nbytes * (2 + 1 + 4 + 1), fc_train,
                      th_train if torch else None, chk_train if torch else None))

        def fc_eval(x=x, w=w, b=b, rm=rm, rv=rv):
            return L.batch_norm(x, rm, rv, w, b, training=False)

        def th_eval(x=x, w=w, b=b, rm=rm, rv=rv):
            return F.batch_norm(tt(x), tt(rm), tt(rv), tt(w), tt(b), training=False)

        cases.append(("batch_norm eval", shp, nbytes * 2, fc_eval, th_eval if torch else None,
                      (lambda f=fc_eval, t=th_eval: rel_err(f(), t().numpy())) if torch else None))

    lrn_shape = (8, 96, 55, 55) if not quick else (2, 96, 27, 27)
    x, dy = rnd(*lrn_shape), rnd(*lrn_shape)

    def fc_lrn(x=x, dy=dy):
        return L.local_response_norm(x, 5), L.local_response_norm_backward(dy, x, 5)

    def th_lrn(x=x, dy=dy):
        tx = tt(x).requires_grad_()
        y = F.local_response_norm(tx, 5)
        y.backward(tt(dy))
        return y.detach(), tx.grad

    def chk_lrn():
        a, b = fc_lrn(), th_lrn()
        return max(rel_err(a[0], b[0].numpy()), rel_err(a[1], b[1].numpy()))

    cases.append(("lrn size5 fwd+bwd", lrn_shape, x.nbytes * (2 + 3), fc_lrn, th_lrn if torch else None,
                  chk_lrn if torch else None))

    act_shape = (16, 64, 112, 112) if not quick else (4, 64, 56, 56)
    x, dy = rnd(*act_shape), rnd(*act_shape)
    for name, f, tf in (("relu", L.relu, "relu"), ("sigmoid", L.sigmoid, "sigmoid"), ("tanh", L.tanh, "tanh")):
        tfn = getattr(torch, tf) if torch else None
        cases.append((f"{name} fwd", act_shape, x.nbytes * 2, (lambda f=f, x=x: f(x)),
                      (lambda tfn=tfn, x=x: tfn(tt(x))) if torch else None,
                      (lambda f=f, tfn=tfn, x=x: rel_err(f(x), tfn(tt(x)).numpy())) if torch else None))
    y = L.relu(x)
    cases.append(("relu bwd", act_shape, x.nbytes * 3, lambda: L.relu_backward(dy, y),
                  (lambda: torch.ops.aten.threshold_backward(tt(dy), tt(y), 0.0)) if torch else None,
                  (lambda: rel_err(L.relu_backward(dy, y),
                                   torch.ops.aten.threshold_backward(tt(dy), tt(y), 0.0).numpy())) if torch else None))

    for shp in ([(256, 1000), (64, 32000)] if not quick else [(64, 1000)]):
        z, g = rnd(*shp), rnd(*shp)
        cases.append(("softmax fwd", shp, z.nbytes * 2, lambda z=z: L.softmax(z, 1),
                      (lambda z=z: torch.softmax(tt(z), 1)) if torch else None,
                      (lambda z=z: rel_err(L.softmax(z, 1), torch.softmax(tt(z), 1).numpy())) if torch else None))
        cases.append(("log_softmax fwd", shp, z.nbytes * 2, lambda z=z: L.log_softmax(z, 1),
                      (lambda z=z: torch.log_softmax(tt(z), 1)) if torch else None,
                      (lambda z=z: rel_err(L.log_softmax(z, 1), torch.log_softmax(tt(z), 1).numpy()))
                      if torch else None))
        ys = L.softmax(z, 1)
        cases.append(("softmax bwd", shp, z.nbytes * 3, lambda g=g, ys=ys: L.softmax_backward(g, ys, 1),
                      (lambda g=g, ys=ys: torch._softmax_backward_data(tt(g), tt(ys), 1, torch.float32))
                      if torch else None,
                      (lambda g=g, ys=ys: rel_err(L.softmax_backward(g, ys, 1), torch._softmax_backward_data(
                          tt(g), tt(ys), 1, torch.float32).numpy())) if torch else None))
        t = rng.integers(0, shp[1], shp[0])

        def fc_ce(z=z, t=t):
            return L.cross_entropy(z, t, label_smoothing=0.1)

        def th_ce(z=z, t=t):
            tz = tt(z).requires_grad_()
            loss = F.cross_entropy(tz, torch.from_numpy(t), label_smoothing=0.1)
            loss.backward()
            return loss.detach(), tz.grad

        def chk_ce(fc_ce=fc_ce, th_ce=th_ce):
            a, b = fc_ce(), th_ce()
            return max(rel_err(a[0], b[0].numpy()), rel_err(a[1], b[1].numpy()))

        cases.append(("cross_entropy fwd+grad", shp, z.nbytes * 2, fc_ce, th_ce if torch else None,
                      chk_ce if torch else None))

    dshape = (256, 4096) if quick else (64, 64, 56, 56)
    x = rnd(*dshape)

    def th_drop(x=x):
        return F.dropout(tt(x), 0.5, training=True)

    # no value check possible across generators: check the scaling and the keep rate instead
    def chk_drop(x=x):
        y, m = L.dropout(x, 0.5, seed=1)
        bad = abs(m.mean() - 0.5) > 0.01 or rel_err(y[m], 2 * x[m]) > 1e-6 or y[~m].any()
        return 1.0 if bad else 0.0

    cases.append(("dropout p=0.5 fwd", dshape, x.nbytes * 2 + x.size, lambda x=x: L.dropout(x, 0.5, seed=1),
                  th_drop if torch else None, chk_drop))

    for M, I, O in ([(64, 4096, 1000), (128, 9216, 4096)] if not quick else [(64, 512, 256)]):
        x, w, b = rnd(M, I), rnd(O, I) * 0.01, rnd(O)
        cases.append(("linear fwd", (M, I, O), x.nbytes + w.nbytes + 4 * M * O, lambda x=x, w=w, b=b: L.linear(x, w, b),
                      (lambda x=x, w=w, b=b: F.linear(tt(x), tt(w), tt(b))) if torch else None,
                      (lambda x=x, w=w, b=b: rel_err(L.linear(x, w, b), F.linear(tt(x), tt(w), tt(b)).numpy()))
                      if torch else None))
    return cases


def main():
    args = parse_args()
    # fastconv's libgomp and torch's bundled OpenMP runtime are two thread pools: with the
    # default (spinning) wait policy, the idle pool's threads busy-wait on the cores the other
    # pool needs, and interleaved samples of both degrade to scheduler time slices (~8 ms).
    # Passive waiting (set before either runtime starts) gives both their real speed.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numpy as np  # noqa: F401

    fc = import_fastconv()
    torch = None
    why = ""
    if not args.no_torch:
        try:
            import torch
            import torch.nn.functional  # noqa: F401
        except Exception as e:  # noqa: BLE001
            torch, why = None, f"torch not available ({type(e).__name__}: {e})"
    else:
        why = "torch disabled by --no-torch"
    fc.set_num_threads(args.threads)
    if args.no_buffer_cache:
        fc.set_buffer_cache_limit(0)
    if torch is not None:
        torch.set_num_threads(args.threads)
    meta = (f"fastconv {fc.__version__} ({fc.backends.cpu.isa()}), threads {args.threads}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
            f"torch {torch.__version__ if torch else '-'}{'' if torch else ' (' + why + ')'}, "
            f"median of {args.repeat} interleaved repeats")
    print(meta)
    hdr = ["op", "shape", "fc ms", "fc GB/s", "torch ms", "torch GB/s", "speed-up", "check"]
    rows = []
    failed = False
    only = [s for s in args.only.split(",") if s]
    for name, shape, nbytes, f_fc, f_th, f_chk in build_cases(fc, torch, args.quick):
        if only and not any(s in name for s in only):
            continue
        check = "-"
        if f_chk is not None:
            err = f_chk()
            check = f"{err:.1e}"
            if err > RTOL:
                failed = True
                rows.append([name, str(shape), "!! FAIL !!", "", "", "", "", check])
                print(" | ".join(rows[-1]), flush=True)
                continue
        t_fc, t_th = time_interleaved([f_fc, f_th], args.repeat)
        row = [name, "x".join(map(str, shape)), f"{t_fc * 1e3:.2f}", f"{nbytes / t_fc / 1e9:.1f}",
               f"{t_th * 1e3:.2f}" if t_th else "-", f"{nbytes / t_th / 1e9:.1f}" if t_th else "-",
               f"{t_th / t_fc:.2f}x" if t_th else "-", check]
        rows.append(row)
        print(" | ".join(row), flush=True)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(hdr)] if rows else [len(h) for h in hdr]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(hdr, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(f"# bench_layers\n\n{meta}\n\n")
            fh.write("| " + " | ".join(hdr) + " |\n|" + "---|" * len(hdr) + "\n")
            for r in rows:
                fh.write("| " + " | ".join(r) + " |\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
