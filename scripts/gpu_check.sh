#!/usr/bin/env bash
# The one prepared GPU check (issue 11): the `gpu` tests, then `mabe bench` at batch 384, 1024 and
# 4096 with every LSTM precision timed and checked against the fp32 reference. Under 8 minutes on an
# H100/H200. Run it from anywhere on a CUDA machine:
#     bash scripts/gpu_check.sh [OUTDIR]          # default OUTDIR: $OUT if set, else benchmarks/
# It writes OUTDIR/bench_<device>.json, OUTDIR/bench_<device>.txt and OUTDIR/gpu_tests_<device>.txt;
# commit the JSON and put the table in benchmarks/RESULTS.md with the device named.
# Python: $PYTHON, else the first of .venv/bin/python and python3 whose torch sees CUDA (a lent GPU
# machine has a CUDA torch in its system python3 and no network, so nothing is installed here).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks}}
mkdir -p "$out"
py=${PYTHON:-}
if [ -z "$py" ]; then
    for c in .venv/bin/python python3; do
        if "$c" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
            py=$c
            break
        fi
    done
fi
if [ -z "$py" ]; then
    echo "gpu_check: no python with a CUDA-enabled torch found (set PYTHON=...)" >&2
    exit 2
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
dev=$("$py" - <<'PY'
import re, torch
name = torch.cuda.get_device_name().lower()
m = re.search(r"\b([a-z]\d{2,4}[a-z]?)\b", name.replace("nvidia", ""))
print(m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name).strip("-"))
PY
)
echo "gpu_check on $dev with $py ($("$py" -c 'import torch; print(torch.__version__, "cuDNN", torch.backends.cudnn.version())'))"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>/dev/null || true

status=0
# 1. the gpu tests: CUDA graphs (reference dropout included), reseeding, compile under capture,
#    low-precision LSTMs, fp16 storage
timeout 240 "$py" -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests_$dev.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
# 2. reference way vs fast path, same run: ms/step (>= 50 timed steps), same-result check with a clip
#    that acts, each LSTM precision, the batch-size sweep, the 100-epoch projection
timeout 300 "$py" -m mabe bench --batch-sizes 384,1024,4096 --json "$out/bench_$dev.json" 2>&1 | tee "$out/bench_$dev.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "gpu_check: $([ $status -eq 0 ] && echo passed || echo FAILED); results in $out/bench_$dev.json"
exit $status
