#!/usr/bin/env python3
"""Convolution benchmark of fastconv against PyTorch (CPU, fp32, NCHW).

For every layer of tests/shapes.py BENCH_LAYERS this script times

  fwd  ops.conv2d (writing into a preallocated out= buffer)
  bwd  ops.conv2d_input + ops.conv2d_weight, timed together as one pass
       (so its FLOP count is 2 passes)

and, in the same run, torch.nn.functional.conv2d / torch.nn.grad.conv2d_input +
conv2d_weight, interleaving the fastconv and torch samples so that machine
noise (frequency changes, a neighbour on the host) hits both sides alike.

Every kernel is checked before it is timed: its result is compared with torch
(or, without torch, on a batch-1 slice with fastconv's "reference" backend, or
tests/reference.py when fastconv has no such backend) at
a relative tolerance of 1e-4 (max |got - ref| / max |ref|). A wrong kernel is
never timed: its row says FAIL and the script exits with status 1.

Numbers reported:
  ms        median over the timed repeats of one call (one fwd or one bwd pass)
  GFLOP/s   FLOPs / time, FLOPs of one pass = 2*N*K*P*Q*(C/groups)*R*S
            (bwd = 2 passes: dgrad + wgrad)
  %peak     GFLOP/s / the fp32 FMA peak measured at startup with the same
            thread count (fastconv.backends.cpu.measure_peak_gflops)
  speed-up  torch ms / fastconv ms  (> 1: fastconv is faster)

Examples:
  python benchmarks/bench_conv.py                       # all layers, 2 threads
  python benchmarks/bench_conv.py --quick               # batch 1 smoke test
  python benchmarks/bench_conv.py --layers vgg,resnet50_conv1 --direction fwd
  python benchmarks/bench_conv.py --algo im2col --markdown /tmp/res.md --json /tmp/res.json
  python benchmarks/bench_conv.py --device cuda         # GPU: fastconv CUDA vs cuDNN (bench_conv_cuda.py)

Only the standard library and numpy are required; torch is optional.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# The layer catalog is shared with the tests: tests/shapes.py (no .pyc left there).
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(REPO, "tests"))
from shapes import BENCH_LAYERS  # noqa: E402

RTOL = 1e-4            # correctness tolerance (relative to max |reference|)
MIN_SAMPLE_S = 0.02    # a timed sample loops a fast kernel until it lasts >= this
BIG_CALL_S = 1.0       # first call slower than this: skip the second warm-up
NOISY_SPREAD = 0.25    # flag a row whose samples spread more than this around the median


# --------------------------------------------------------------------------- #
# imports                                                                     #
# --------------------------------------------------------------------------- #
def _fastconv_usable():
    """True when an importable fastconv with ops.conv2d is found (an empty
    namespace package, e.g. a checkout without a build, does not count)."""
    try:
        import fastconv
        import fastconv.ops
    except ImportError:
        return False
    return hasattr(fastconv.ops, "conv2d") and hasattr(fastconv, "set_num_threads")


def import_fastconv():
    """Import fastconv (installed, or else from the repository checkout)."""
    if not _fastconv_usable():
        # Not installed: try the checkout this script lives in.
        for name in [m for m in sys.modules if m == "fastconv" or m.startswith("fastconv.")]:
            del sys.modules[name]
        sys.path.insert(0, REPO)
        if not _fastconv_usable():
            sys.exit("bench_conv: cannot import a built fastconv (fastconv.ops.conv2d); "
                     "build/install fastconv first")
    import fastconv
    import fastconv.backends.cpu  # noqa: F401
    return fastconv


def import_torch(disabled):
    """Return (torch module or None, a sentence saying why torch is absent)."""
    if disabled:
        return None, "torch disabled by --no-torch"
    try:
        import torch
        import torch.nn.functional  # noqa: F401
        import torch.nn.grad  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return None, f"torch not available ({type(e).__name__}: {e})"
    return torch, ""


# --------------------------------------------------------------------------- #
# shapes and FLOPs                                                            #
# --------------------------------------------------------------------------- #
def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def output_hw(spec):
    """(P, Q) of a ConvSpec, with the same conventions as fastconv's problem.h."""
    sh, sw = pair(spec.stride)
    dh, dw = pair(spec.dilation)
    if spec.padding == "same":  # extra row/column goes bottom/right: ceil(H / stride)
        return -(-spec.H // sh), -(-spec.W // sw)
    ph, pw = (0, 0) if spec.padding == "valid" else pair(spec.padding)
    P = (spec.H + 2 * ph - dh * (spec.R - 1) - 1) // sh + 1
    Q = (spec.W + 2 * pw - dw * (spec.S - 1) - 1) // sw + 1
    return P, Q


def flops_per_pass(spec):
    P, Q = output_hw(spec)
    return 2.0 * spec.N * spec.K * P * Q * (spec.C // spec.groups) * spec.R * spec.S


def shape_summary(spec):
    """'N C H W -> K RxS s p' (plus d / g when not 1)."""
    def fmt(v):
        v = pair(v) if not isinstance(v, str) else v
        if isinstance(v, str):
            return v
        return str(v[0]) if v[0] == v[1] else f"{v[0]},{v[1]}"

    s = (f"{spec.N} {spec.C} {spec.H} {spec.W} -> {spec.K} {spec.R}x{spec.S} "
         f"s{fmt(spec.stride)} p{fmt(spec.padding)}")
    if pair(spec.dilation) != (1, 1):
        s += f" d{fmt(spec.dilation)}"
    if spec.groups != 1:
        s += f" g{spec.groups}"
    return s


# --------------------------------------------------------------------------- #
# correctness                                                                 #
# --------------------------------------------------------------------------- #
def rel_err(got, ref):
    """max |got - ref| / max |ref|; inf for NaN/Inf or a shape mismatch."""
    got = np.asarray(got, dtype=np.float32)
    ref = np.asarray(ref, dtype=np.float32)
    if got.shape != ref.shape:
        return math.inf
    if not np.isfinite(got).all():
        return math.inf
    denom = float(np.abs(ref).max()) if ref.size else 0.0
    diff = float(np.abs(got - ref).max()) if ref.size else 0.0
    return diff / max(denom, np.finfo(np.float32).tiny)


# --------------------------------------------------------------------------- #
# timing                                                                      #
# --------------------------------------------------------------------------- #
def time_call(fn, number=1):
    """Seconds per call of fn(), averaged over `number` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def time_interleaved(fns, first_times, repeat, budget_s):
    """Median seconds per call of each fn in `fns` (a list; None entries skipped).

    The functions have each been called once already (`first_times`, the
    correctness run = warm-up 1). A second warm-up is done unless a call is
    slow; then the number of repeats is reduced (never below 3) so that one
    layer/direction stays within `budget_s`. Samples alternate between the
    functions, and the order flips every repeat, so that slow drifts of the
    machine affect every function alike. A fast kernel is looped `number`
    times per sample so that one sample lasts >= MIN_SAMPLE_S.
    Returns (medians, per-sample lists, repeats used).
    """
    live = [i for i, f in enumerate(fns) if f is not None]
    est = {}
    for i in live:
        t = first_times[i]
        if t < BIG_CALL_S:          # warm-up 2 (cheap), also a better estimate
            t = time_call(fns[i])
        est[i] = t
    number = {i: max(1, math.ceil(MIN_SAMPLE_S / max(est[i], 1e-9))) for i in live}
    per_repeat = sum(est[i] * number[i] for i in live)
    reps = repeat
    if reps * per_repeat > budget_s:
        reps = max(3, int(budget_s / per_repeat))
    samples = {i: [] for i in live}
    for r in range(reps):
        order = live if r % 2 == 0 else live[::-1]
        for i in order:
            # an untimed call first: fastconv and torch each run their own
            # OpenMP pool, whose idle threads spin for a while after a parallel
            # region; this keeps the other library's spin tail out of the sample
            if est[i] < BIG_CALL_S:
                fns[i]()
            samples[i].append(time_call(fns[i], number[i]))
    medians = [statistics.median(samples[i]) if i in samples else None for i in range(len(fns))]
    return medians, [samples.get(i) for i in range(len(fns))], reps


def geomean(xs):
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


# --------------------------------------------------------------------------- #
# one layer, one direction                                                    #
# --------------------------------------------------------------------------- #
class Bench:
    def __init__(self, fc, torch, args, peak):
        self.fc, self.ops, self.torch, self.args, self.peak = fc, fc.ops, torch, args, peak

    # -- algorithm names ---------------------------------------------------- #
    def algo_names(self, spec, direction):
        """What the table shows in 'algo' (the auto pick unless --algo forces one)."""
        if self.args.algo != "auto":
            return self.args.algo
        ops_ = ("fprop",) if direction == "fwd" else ("dgrad", "wgrad")
        try:
            picks = [self.ops.choose_algo(spec.input_shape, spec.weight_shape, spec.stride,
                                          spec.padding, spec.dilation, spec.groups, op=o,
                                          backend=self.args.backend)
                     for o in ops_]
        except Exception as e:  # choose_algo missing or failing must not stop the run
            return f"auto(?{type(e).__name__})"
        return "/".join(str(p) for p in picks)

    def forced_algo_supported(self, spec):
        if self.args.algo == "auto":
            return True
        try:
            ok = self.ops.algorithms_for(spec.input_shape, spec.weight_shape, spec.stride,
                                         spec.padding, spec.dilation, spec.groups)
        except Exception:
            return True  # let the op itself decide (and report its error)
        return self.args.algo in ok

    # -- data --------------------------------------------------------------- #
    @staticmethod
    def data(spec, direction):
        """Random x, w and (bwd only) grad_output, seeded by layer name and
        direction so a layer gets the same data whatever --layers selects."""
        rng = np.random.default_rng(zlib.crc32(f"{spec.name}/{direction}".encode()))
        x = rng.standard_normal(spec.input_shape, dtype=np.float32)
        w = rng.standard_normal(spec.weight_shape, dtype=np.float32)
        go = None
        if direction == "bwd":
            go = rng.standard_normal((spec.N, spec.K) + output_hw(spec), dtype=np.float32)
        return x, w, go

    # -- the run ------------------------------------------------------------ #
    def run(self, spec, direction):
        a, ops, th = self.args, self.ops, self.torch
        kw = spec.kwargs()
        st, pd, dl, g = spec.stride, spec.padding, spec.dilation, spec.groups
        P, Q = output_hw(spec)
        flops = flops_per_pass(spec) * (1 if direction == "fwd" else 2)
        row = dict(layer=spec.name, shape=shape_summary(spec), direction=direction,
                   N=spec.N, C=spec.C, H=spec.H, W=spec.W, K=spec.K, R=spec.R, S=spec.S,
                   P=P, Q=Q, stride=spec.stride, padding=spec.padding,
                   dilation=spec.dilation, groups=spec.groups,
                   algo=self.algo_names(spec, direction), flops=flops,
                   status="ok", message="", rel_err=None, check_against=None,
                   ms=None, gflops=None, pct_peak=None, torch_ms=None, speedup=None,
                   repeats=None, samples_ms=None, torch_samples_ms=None, spread=None)

        if not self.forced_algo_supported(spec):
            row.update(status="n/a", message=f"{a.algo} does not support this layer")
            return row

        x, w, go = self.data(spec, direction)   # go: grad_output (bwd only)
        fkw = dict(algo=a.algo, backend=a.backend)

        # fastconv / torch callables; each returns its result(s) as numpy-able arrays
        if direction == "fwd":
            out = np.empty((spec.N, spec.K, P, Q), dtype=np.float32)   # reused every call

            def fc_fn():
                return (ops.conv2d(x, w, None, st, pd, dl, g, out=out, **fkw),)
        else:
            def fc_fn():
                return (ops.conv2d_input(spec.input_shape, w, go, st, pd, dl, g, **fkw),
                        ops.conv2d_weight(x, spec.weight_shape, go, st, pd, dl, g, **fkw))

        th_fn = None   # stays None without torch
        if th is not None:
            # torch works on the very same memory (from_numpy does not copy)
            tx, tw = th.from_numpy(x), th.from_numpy(w)
            tgo = th.from_numpy(go) if go is not None else None

            def th_fwd():
                with th.no_grad():
                    return (th.nn.functional.conv2d(tx, tw, None, **kw),)

            def th_bwd():
                with th.no_grad():
                    return (th.nn.grad.conv2d_input(spec.input_shape, tw, tgo, **kw),
                            th.nn.grad.conv2d_weight(tx, spec.weight_shape, tgo, **kw))

            th_fn = th_fwd if direction == "fwd" else th_bwd

        # 1) first call of each side = warm-up 1 + correctness check
        try:
            t0 = time.perf_counter()
            got = fc_fn()
            t_fc_first = time.perf_counter() - t0
            if direction == "fwd" and got[0] is not out and np.asarray(got[0]).ctypes.data != out.ctypes.data:
                # out= was not honoured: still correct maybe, but say so
                row["message"] = "out= buffer not written in place"
        except Exception as e:
            row.update(status="ERROR", message=f"fastconv: {type(e).__name__}: {e}")
            return row

        t_th_first, ref = None, None
        if th_fn is not None:
            try:
                t0 = time.perf_counter()
                ref = th_fn()
                t_th_first = time.perf_counter() - t0
                ref = [r.numpy() for r in ref]
            except Exception as e:
                th_fn, ref = None, None
                row["message"] = f"torch failed: {type(e).__name__}: {e}"

        try:
            if ref is not None:
                err = max(rel_err(gv, rv) for gv, rv in zip(got, ref))
                row["check_against"] = "torch"
            else:
                err, oracle = self.check_vs_reference(spec, direction, x, w, go, got)
                row["check_against"] = f"{oracle} (batch-1 slice)"
        except Exception as e:
            row.update(status="ERROR", message=f"correctness check: {type(e).__name__}: {e}")
            return row
        row["rel_err"] = err
        del got, ref
        if not err <= RTOL:
            # Never time a wrong kernel.
            row.update(status="FAIL", message=f"max rel err {err:.2e} > {RTOL:g}")
            return row

        # 2) timing, fastconv and torch interleaved
        try:
            (t_fc, t_th), (s_fc, s_th), reps = time_interleaved(
                [fc_fn, th_fn], [t_fc_first, t_th_first], a.repeat, a.budget)
        except Exception as e:
            row.update(status="ERROR", message=f"during timing: {type(e).__name__}: {e}")
            return row
        row.update(ms=t_fc * 1e3, gflops=flops / t_fc / 1e9, repeats=reps,
                   samples_ms=[s * 1e3 for s in s_fc],
                   spread=(max(s_fc) - min(s_fc)) / t_fc)  # (max - min) / median
        row["pct_peak"] = 100.0 * row["gflops"] / self.peak if self.peak else None
        if t_th is not None:
            row.update(torch_ms=t_th * 1e3, speedup=t_th / t_fc,
                       torch_samples_ms=[s * 1e3 for s in s_th])
        return row

    def oracle(self):
        """The no-torch oracle: (name, fwd, dgrad, wgrad), each f(spec, ...) -> array.

        fastconv's own "reference" backend when it has one, else the independent
        float64 reference of the test suite (tests/reference.py)."""
        if getattr(self, "_oracle", None) is not None:
            return self._oracle
        ops = self.ops
        try:  # does fastconv have a "reference" backend?
            ops.conv2d(np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 2, 2), np.float32),
                       backend="reference")
            rk = dict(algo="auto", backend="reference")
            self._oracle = (
                "fastconv reference backend",
                lambda sp, x, w: ops.conv2d(x, w, None, **sp.kwargs(), **rk),
                lambda sp, shp, w, go: ops.conv2d_input(shp, w, go, sp.stride, sp.padding,
                                                        sp.dilation, sp.groups, **rk),
                lambda sp, x, wshp, go: ops.conv2d_weight(x, wshp, go, sp.stride, sp.padding,
                                                          sp.dilation, sp.groups, **rk))
        except Exception:
            import reference as ref  # tests/reference.py (float64, numpy only)

            def kw(sp):
                pads = ref.resolve_padding(sp.padding, (sp.H, sp.W), (sp.R, sp.S),
                                           sp.stride, sp.dilation)
                return dict(stride=sp.stride, pads=pads, dilation=sp.dilation, groups=sp.groups)
            self._oracle = (
                "tests/reference.py (float64)",
                lambda sp, x, w: ref.conv2d(x, w, None, **kw(sp)),
                lambda sp, shp, w, go: ref.conv2d_input(shp, w, go, **kw(sp)),
                lambda sp, x, wshp, go: ref.conv2d_weight(x, wshp, go, **kw(sp)))
        return self._oracle

    def check_vs_reference(self, spec, direction, x, w, go, got):
        """Without torch: compare with the oracle on image 0 (a batch-1 slice).

        fwd / dgrad: image 0 of the full-batch result that was just computed.
        wgrad sums over the batch, so it is recomputed by the benchmarked path
        on the batch-1 slice (same algo) and compared on that slice.
        Returns (max rel err, oracle name).
        """
        name, o_fwd, o_dgrad, o_wgrad = self.oracle()
        st, pd, dl, g = spec.stride, spec.padding, spec.dilation, spec.groups
        x1 = x[:1]
        if direction == "fwd":
            return rel_err(np.asarray(got[0])[:1], o_fwd(spec, x1, w)), name
        go1 = go[:1]
        in1 = (1,) + tuple(spec.input_shape[1:])
        e_d = rel_err(np.asarray(got[0])[:1], o_dgrad(spec, in1, w, go1))
        algo = self.args.algo
        if algo == "auto":
            pick = self.algo_names(spec, "bwd").split("/")
            algo = pick[1] if len(pick) == 2 and "?" not in pick[1] else "auto"
        mine = self.ops.conv2d_weight(x1, spec.weight_shape, go1, st, pd, dl, g,
                                      algo=algo, backend=self.args.backend)
        e_w = rel_err(mine, o_wgrad(spec, x1, spec.weight_shape, go1))
        return max(e_d, e_w), name


# --------------------------------------------------------------------------- #
# output                                                                      #
# --------------------------------------------------------------------------- #
def fmt_num(v, spec):
    return "-" if v is None else format(v, spec)


def table_cells(r, with_torch):
    """The cells of one row (strings), in column order."""
    if r["status"] == "ok":
        check = f"ok {r['rel_err']:.0e}"
    elif r["status"] == "FAIL":
        check = f"!! FAIL {r['rel_err']:.1e} !!"
    elif r["status"] == "ERROR":
        check = "!! ERROR !!"
    else:
        check = r["status"]
    cells = [r["layer"], r["shape"], r["direction"], r["algo"],
             fmt_num(r["ms"], ".3f"), fmt_num(r["gflops"], ".1f"), fmt_num(r["pct_peak"], ".1f")]
    if with_torch:
        cells += [fmt_num(r["torch_ms"], ".3f"),
                  "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"]
    cells.append(check)
    return cells


def headers(with_torch):
    h = ["layer", "N C H W -> K RxS s p", "dir", "algo", "ms", "GFLOP/s", "%peak"]
    if with_torch:
        h += ["torch ms", "speed-up"]
    return h + ["check"]


NUMERIC = {"ms", "GFLOP/s", "%peak", "torch ms", "speed-up"}


def summarize(rows, with_torch, directions):
    """Per direction: geomean speed-up, min speed-up (+ layer), geomean %peak."""
    out = {}
    for d in directions:
        ok = [r for r in rows if r["direction"] == d and r["status"] == "ok"]
        s = dict(n=len(ok), geomean_pct_peak=geomean([r["pct_peak"] for r in ok]),
                 geomean_gflops=geomean([r["gflops"] for r in ok]))
        if with_torch:
            sp = [r for r in ok if r["speedup"] is not None]
            s["geomean_speedup"] = geomean([r["speedup"] for r in sp])
            if sp:
                worst = min(sp, key=lambda r: r["speedup"])
                s["min_speedup"], s["min_speedup_layer"] = worst["speedup"], worst["layer"]
        out[d] = s
    return out


def summary_lines(summary, with_torch):
    lines = []
    for d, s in summary.items():
        parts = [f"{d}: {s['n']} layers"]
        if with_torch:
            g = s.get("geomean_speedup")
            parts.append("geomean speed-up " + ("-" if g is None else f"{g:.2f}x"))
            if "min_speedup" in s:
                parts.append(f"min speed-up {s['min_speedup']:.2f}x ({s['min_speedup_layer']})")
        g = s.get("geomean_pct_peak")
        parts.append("geomean %peak " + ("-" if g is None else f"{g:.1f}%"))
        parts.append("geomean GFLOP/s " + fmt_num(s.get("geomean_gflops"), ".1f"))
        lines.append(", ".join(parts))
    return lines


class TextTable:
    """Fixed-width table printed row by row (widths fixed up front)."""

    def __init__(self, hdr, widths):
        self.hdr, self.widths = hdr, widths

    def line(self, cells):
        out = []
        for h, c, wdt in zip(self.hdr, cells, self.widths):
            out.append(c.rjust(wdt) if h in NUMERIC else c.ljust(wdt))
        return "  ".join(out).rstrip()

    def print_header(self):
        print(self.line(self.hdr))
        print(self.line(["-" * wdt for wdt in self.widths]))
        sys.stdout.flush()

    def print_row(self, cells):
        print(self.line(cells))
        sys.stdout.flush()


def markdown(meta, rows, summary, with_torch):
    hdr = headers(with_torch)
    md = [f"### fastconv conv benchmark — {meta['date']}", "",
          "```", meta["command"], "```", ""]
    md.append(f"- machine: {meta['cpu']}, {os.cpu_count()} logical CPUs ({meta['platform']}), "
              "load average at start " + " ".join(f"{v:.2f}" for v in meta["loadavg_start"]))
    md.append("- fastconv.info(): " + ", ".join(f"{k}={v}" for k, v in meta["fastconv_info"].items()))
    md.append(f"- threads: {meta['threads']}, measured fp32 FMA peak: {meta['peak_gflops']:.1f} GFLOP/s")
    md.append(f"- torch: {meta['torch']}")
    md.append(f"- fp32 NCHW, median of up to {meta['repeat']} repeats (>= 3; interleaved with torch), "
              f"algo={meta['algo']}, backend={meta['backend']}, tolerance {RTOL:g}")
    md += ["", "| " + " | ".join(hdr) + " |",
           "|" + "|".join("---:" if h in NUMERIC else "---" for h in hdr) + "|"]
    for r in rows:
        cells = [c.replace("|", "\\|") for c in table_cells(r, with_torch)]
        if r["status"] == "ok":
            cells[-1] = "ok"
        md.append("| " + " | ".join(cells) + " |")
    md.append("")
    md += [f"- {l}" for l in summary_lines(summary, with_torch)]
    bad = [r for r in rows if r["status"] in ("FAIL", "ERROR")]
    for r in bad:
        md.append(f"- **{r['status']}** {r['layer']} {r['direction']}: {r['message']}")
    return "\n".join(md) + "\n"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------- #
# main                                                                        #
# --------------------------------------------------------------------------- #
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default="",
                   help="comma-separated substrings; run the layers whose name contains any")
    p.add_argument("--direction", choices=("fwd", "bwd", "both"), default="both")
    p.add_argument("--threads", type=int, default=2, help="threads for fastconv AND torch (default 2)")
    p.add_argument("--repeat", type=int, default=5,
                   help="timed repeats (median reported; reduced to >= 3 for slow layers, default 5)")
    p.add_argument("--budget", type=float, default=20.0,
                   help="seconds of timed repeats per layer/direction before --repeat is cut (default 20)")
    p.add_argument("--algo", default="auto", help="force one algorithm (default: auto)")
    p.add_argument("--backend", default=None, help="backend passed to fastconv ops (default None)")
    p.add_argument("--no-torch", action="store_true", help="do not compare with torch")
    p.add_argument("--quick", action="store_true", help="batch reduced to 1 (smoke test / CI)")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as GitHub markdown")
    p.add_argument("--json", metavar="PATH", help="also write the raw numbers as JSON")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (default): NumPy arrays vs torch CPU; cuda: CuPy arrays on the GPU vs cuDNN "
                        "(see bench_conv_cuda.py); without a GPU it exits 2 with one line")
    a = p.parse_args(argv)
    if a.threads < 1:
        p.error("--threads must be >= 1")
    if a.repeat < 1:
        p.error("--repeat must be >= 1")
    return a


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda":
        sys.path.insert(0, HERE)
        import bench_conv_cuda

        wanted = [s.strip() for s in args.layers.split(",") if s.strip()]
        specs = [s for s in BENCH_LAYERS if not wanted or any(w in s.name for w in wanted)]
        if not specs:
            sys.exit(f"bench_conv: no layer matches --layers {args.layers!r}")
        if args.quick:
            specs = [s.reduced(1) for s in specs]
        return bench_conv_cuda.run(args, specs, flops_per_pass, RTOL)
    fc = import_fastconv()
    torch, why_no_torch = import_torch(args.no_torch)

    # threads: the same count for fastconv, torch and the peak measurement
    fc.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    info = dict(fc.info())

    algos = list(getattr(fc.ops, "ALGORITHMS", []))
    if args.algo != "auto" and algos and args.algo not in algos:
        sys.exit(f"bench_conv: unknown --algo {args.algo!r}; fastconv.ops.ALGORITHMS = {algos}")

    # layers
    wanted = [s.strip() for s in args.layers.split(",") if s.strip()]
    specs = [s for s in BENCH_LAYERS if not wanted or any(w in s.name for w in wanted)]
    if not specs:
        sys.exit(f"bench_conv: no layer matches --layers {args.layers!r}; "
                 f"known: {', '.join(s.name for s in BENCH_LAYERS)}")
    if args.quick:
        specs = [s.reduced(1) for s in specs]
    directions = ["fwd", "bwd"] if args.direction == "both" else [args.direction]

    peak = float(fc.backends.cpu.measure_peak_gflops(args.threads, seconds=0.5))
    with_torch = torch is not None
    torch_desc = (f"{torch.__version__} ({torch.get_num_threads()} threads)" if with_torch
                  else why_no_torch)
    meta = dict(
        command="python " + shlex.join([os.path.relpath(sys.argv[0], os.getcwd())] + sys.argv[1:]),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu=cpu_name(), platform=platform.platform(), python=platform.python_version(),
        numpy=np.__version__, fastconv_info=info, threads=args.threads, peak_gflops=peak,
        torch=torch_desc, repeat=args.repeat, algo=args.algo, backend=args.backend,
        quick=args.quick, rtol=RTOL, loadavg_start=os.getloadavg())

    bench = Bench(fc, torch, args, peak)
    print("fastconv " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"cpu: {meta['cpu']} ({os.cpu_count()} logical CPUs, load average "
          + " ".join(f"{v:.2f}" for v in meta["loadavg_start"]) + f"); threads: {args.threads}; "
          f"measured fp32 FMA peak: {peak:.1f} GFLOP/s")
    if with_torch:
        print(f"torch {torch_desc}; speed-up = torch ms / fastconv ms")
    else:
        print(f"NOTE: {why_no_torch}: torch columns omitted; correctness is checked "
              f"against {bench.oracle()[0]} on a batch-1 slice")
    if args.quick:
        print("--quick: batch reduced to 1")
    if meta["loadavg_start"][0] > 0.5 * (os.cpu_count() or 1):
        print(f"WARNING: load average {meta['loadavg_start'][0]:.2f} on {os.cpu_count()} CPUs: "
              "other processes are running, timings (and the peak) will be unreliable")
    if info.get("threads") not in (None, args.threads):
        print(f"WARNING: fastconv.info() reports {info.get('threads')} threads, asked for {args.threads}")
    print()

    hdr = headers(with_torch)
    # fixed column widths, from the cells known before timing
    widths = [len(h) for h in hdr]
    widths[0] = max(widths[0], max(len(s.name) for s in specs))
    widths[1] = max(widths[1], max(len(shape_summary(s)) for s in specs))
    widths[2] = max(widths[2], 3)
    widths[3] = max([widths[3]] + [len(bench.algo_names(s, d)) for s in specs for d in directions])
    for i, h in enumerate(hdr[4:], start=4):
        widths[i] = max(widths[i], {"ms": 9, "GFLOP/s": 7, "%peak": 5, "torch ms": 9,
                                    "speed-up": 7, "check": 7}[h])
    table = TextTable(hdr, widths)
    table.print_header()

    rows = []
    for spec in specs:
        for d in directions:
            r = bench.run(spec, d)
            rows.append(r)
            table.print_row(table_cells(r, with_torch))
            if r["status"] in ("FAIL", "ERROR"):
                print(f"    !!! {r['status']}: {spec.name} {d}: {r['message']}")
            elif r["message"]:
                print(f"    note: {r['message']}")

    summary = summarize(rows, with_torch, directions)
    print()
    for line in summary_lines(summary, with_torch):
        print(line)
    noisy = [r for r in rows if r["spread"] is not None and r["spread"] > NOISY_SPREAD]
    if noisy:
        worst = sorted(noisy, key=lambda r: -r["spread"])[:5]
        print(f"\nNOTE: noisy timings in {len(noisy)} of {len(rows)} rows "
              f"((max - min) / median of the samples > {NOISY_SPREAD:.0%}; worst: "
              + ", ".join(f"{r['layer']} {r['direction']} {r['spread']:.0%}" for r in worst)
              + "); the machine may be busy: load average now "
              + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    bad = [r for r in rows if r["status"] in ("FAIL", "ERROR")]
    if bad:
        print()
        print(f"!!! {len(bad)} case(s) FAILED correctness or errored (not timed, not in the geomeans):")
        for r in bad:
            print(f"!!!   {r['layer']} {r['direction']} [{r['algo']}]: {r['status']}: {r['message']}")

    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(meta, rows, summary, with_torch))
        print(f"\nmarkdown written to {args.markdown}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, summary=summary, results=rows), f, indent=1, default=str)
        print(f"json written to {args.json}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
