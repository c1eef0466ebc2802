"""Peak resident memory of one ResNet-18 training step: fastconv vs torch.

Each framework runs in its own fresh subprocess (so neither inherits the other's
allocations): import, build ResNet-18, then one step of forward + cross-entropy +
backward + SGD (momentum, weight decay) at batch 16 on 3x224x224. The child reports
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` before the step (after building the
model and the batch) and after it; the table shows both and the step's increase.
Target (issue 6): fastconv's peak <= 1.5x torch's.

    python benchmarks/bench_memory.py [--batch 16] [--size 224] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
which, batch, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB

rng = np.random.default_rng(0)
x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
y = rng.integers(0, 1000, batch)

if which == "torch":
    import torch
    import torch.nn as tnn

    class Basic(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.relu = tnn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

        def forward(self, x):
            idt = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + idt)

    mod, F = tnn, torch.nn.functional
    opt_mod = torch.optim
    to_t = torch.from_numpy
else:
    import fastconv
    from fastconv import nn as fnn
    fastconv.nn.manual_seed(0)

    class Basic(fnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = fnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = fnn.BatchNorm2d(cout)
            self.conv2 = fnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = fnn.BatchNorm2d(cout)
            self.relu = fnn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = fnn.Sequential(fnn.Conv2d(cin, cout, 1, stride, bias=False), fnn.BatchNorm2d(cout))

        def forward(self, x):
            idt = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + idt)

    mod, F = fnn, fastconv.nn.functional
    opt_mod = fastconv.optim
    to_t = fastconv.Tensor

layers = [mod.Conv2d(3, 64, 7, 2, 3, bias=False), mod.BatchNorm2d(64), mod.ReLU(inplace=True),
          mod.MaxPool2d(3, 2, 1)]
cin = 64
for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
    layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
    cin = cout
layers += [mod.AdaptiveAvgPool2d((1, 1)), mod.Flatten(), mod.Linear(512, 1000)]
model = mod.Sequential(*layers)
opt = opt_mod.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
xt, yt = to_t(x), to_t(y)
before = rss_mb()
t0 = time.perf_counter()
opt.zero_grad()
loss = F.cross_entropy(model(xt), yt)
loss.backward()
opt.step()
dt = time.perf_counter() - t0
print(json.dumps({"which": which, "before_mb": before, "peak_mb": rss_mb(), "seconds": dt,
                  "loss": float(loss.item())}))
"""


def run(which, batch, size, threads):
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    r = subprocess.run([sys.executable, "-c", CHILD, which, str(batch), str(size)], capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        return {"which": which, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    rows = [run(w, a.batch, a.size, a.threads) for w in ("fastconv", "torch")]
    print(f"ResNet-18, one training step (forward + cross-entropy + backward + SGD), batch {a.batch}, "
          f"3x{a.size}x{a.size}, float32; peak RSS = ru_maxrss of a fresh subprocess")
    print(f"{'framework':<10} {'RSS before step MB':>19} {'peak RSS MB':>12} {'step increase MB':>17} "
          f"{'step s':>7} {'loss':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['which']:<10} failed: {r['error']}")
            continue
        print(f"{r['which']:<10} {r['before_mb']:>19.0f} {r['peak_mb']:>12.0f} {r['peak_mb'] - r['before_mb']:>17.0f} "
              f"{r['seconds']:>7.2f} {r['loss']:>8.4f}")
    ok = [r for r in rows if "error" not in r]
    if len(ok) == 2:
        print(f"peak ratio fastconv / torch: {ok[0]['peak_mb'] / ok[1]['peak_mb']:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
