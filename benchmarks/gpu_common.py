"""Shared pieces of the GPU benchmarks (bench_conv.py / bench_pool.py --device cuda).

* require_gpu(): torch with CUDA, CuPy and fastconv's "cuda" backend, or one
  line saying what is missing and exit status 2 (never a traceback);
* CUDA-event timing on torch's current stream, with fastconv launched on the
  same stream (cupy.cuda.ExternalStream), after warm-up, an L2 flush (a write
  of twice the L2 size) before every timed repeat, median of the repeats;
* the device's FP32 (non-tensor) peak: a table of known parts, else
  SMs x FP32 lanes per SM x 2 x boost clock from the device properties.
"""
from __future__ import annotations

import statistics
import sys

# FP32 non-tensor-core peak, TFLOP/s (vendor data sheets), matched by substring of the device name
KNOWN_FP32_PEAK = [
    ("H200", 67.0), ("H100 SXM", 67.0), ("H100 NVL", 60.0), ("H100 PCIe", 51.2), ("H100", 51.2),
    ("GH200", 67.0), ("A100", 19.5), ("A30", 10.3), ("A10G", 31.2), ("A10", 31.2), ("L40S", 91.6),
    ("L40", 90.5), ("L4", 30.3), ("V100", 15.7), ("T4", 8.1), ("RTX 4090", 82.6), ("RTX 3090", 35.6),
]
# FP32 lanes per SM by compute capability (for parts not in the table)
_LANES = {(7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128, (9, 0): 128}


def require_gpu(script: str):
    """(torch, cupy, fastconv) with a usable GPU on every side, else exit 2 with one line."""
    def bail(msg):
        print(f"{script}: --device cuda needs a GPU: {msg}; not run", file=sys.stderr)
        sys.exit(2)

    try:
        import torch
    except ImportError:
        bail("torch is not installed (the cuDNN comparison needs a CUDA build of torch)")
    if not torch.cuda.is_available():
        bail(f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)")
    try:
        import cupy
    except ImportError:
        bail("CuPy is not installed (pip install 'fastconv[cuda]')")
    try:
        import fastconv
    except ImportError as exc:
        bail(f"fastconv does not import ({exc})")
    why = fastconv.backends.unavailable_reason("cuda")
    if why is not None:
        bail(f"fastconv's 'cuda' backend is unavailable: {why}")
    return torch, cupy, fastconv


def fp32_peak_tflops(torch, cupy):
    """(peak TFLOP/s, how it was obtained) for device 0."""
    name = torch.cuda.get_device_name(0)
    for key, peak in KNOWN_FP32_PEAK:
        if key in name:
            return peak, f"data sheet ({key})"
    props = cupy.cuda.runtime.getDeviceProperties(0)
    cc = (int(props["major"]), int(props["minor"]))
    lanes = _LANES.get(cc, 128)
    peak = props["multiProcessorCount"] * lanes * 2 * props["clockRate"] * 1e3 / 1e12
    return peak, f"{props['multiProcessorCount']} SMs x {lanes} lanes x 2 x {props['clockRate'] / 1e6:.2f} GHz"


class Timer:
    """CUDA-event timing on torch's current stream; fastconv shares the stream."""

    def __init__(self, torch, cupy, warmup=3, repeat=20):
        self.torch, self.cupy = torch, cupy
        self.warmup, self.repeat = warmup, repeat
        l2 = int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or (64 << 20))
        self.flush_buf = torch.empty(max(2 * l2, 64 << 20) // 4, dtype=torch.float32, device="cuda")

    def stream(self):
        """Context manager: CuPy's current stream = torch's current stream."""
        return self.cupy.cuda.ExternalStream(self.torch.cuda.current_stream().cuda_stream)

    def __call__(self, fn):
        """Median ms of fn() over the repeats (each after an L2 flush)."""
        torch = self.torch
        with self.stream():
            for _ in range(self.warmup):
                fn()
            torch.cuda.synchronize()
            times = []
            for _ in range(self.repeat):
                self.flush_buf.zero_()  # evict the operands from L2
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        return statistics.median(times)


def rel_err(got, ref):
    import numpy as np

    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return float(np.max(np.abs(got - ref))) / (scale or 1.0) if ref.size else 0.0


def geomean(xs):
    import math

    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")
