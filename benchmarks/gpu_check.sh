#!/usr/bin/env bash
# One command for a GPU machine: the GPU tests, then both GPU benchmarks.
#
#   benchmarks/gpu_check.sh [--quick] [--out DIR]
#
# Needs fastconv installed with its CUDA module (FASTCONV_REQUIRE_CUDA=1 pip
# install .[test,bench]), CuPy and a CUDA build of torch. Without a usable GPU
# it prints one line saying what is missing and exits 2. Outputs (test log,
# ptxas table, benchmark tables as text/markdown/JSON) go to DIR
# (default ./gpu_check_out). Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
QUICK=()
OUT=$ROOT/gpu_check_out
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=(--quick); shift ;;
    --out) OUT=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
    *) echo "gpu_check: unknown argument $1 (use --quick, --out DIR)" >&2; exit 2 ;;
  esac
done

# the gate (run outside the checkout: its bare sources would shadow the installed package)
why=$(cd / && $PY - <<'PYEOF' 2>&1
try:
    import fastconv
except Exception as e:
    print(f"fastconv does not import ({e!r})"); raise SystemExit
r = fastconv.backends.unavailable_reason("cuda")
if r:
    print(f"fastconv's 'cuda' backend is unavailable: {r}"); raise SystemExit
try:
    import torch
    if not torch.cuda.is_available():
        print(f"torch {torch.__version__} sees no CUDA device")
except ImportError:
    print("torch is not installed (the cuDNN comparison needs a CUDA build of torch)")
PYEOF
)
if [ -n "$why" ]; then
  echo "gpu_check: no usable GPU: $why; nothing run" >&2
  exit 2
fi

mkdir -p "$OUT"
status=0
step() {  # step NAME CMD...: run, tee to $OUT/NAME.txt, remember a failure
  local name=$1; shift
  echo "=== gpu_check: $name"
  "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "=== gpu_check: $name FAILED (exit $rc)"; status=1; }
}
step info bash -c "cd / && $PY -m fastconv info --cuda"
step tests pytest -q -p no:cacheprovider tests/test_cuda_backend.py tests/test_device_layers.py tests/test_cuda_report.py tests/test_cuda_emu.py
step bench_conv $PY benchmarks/bench_conv.py --device cuda "${QUICK[@]}" --markdown "$OUT/bench_conv.md" \
  --json "$OUT/bench_conv.json"
step bench_pool $PY benchmarks/bench_pool.py --device cuda
echo "gpu_check: outputs in $OUT; $([ $status -eq 0 ] && echo all steps passed || echo SOME STEPS FAILED)"
exit $status
