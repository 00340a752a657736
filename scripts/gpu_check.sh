#!/usr/bin/env bash
# What the GPU machine runs (the device tool: carry [".whl"], command `bash scripts/gpu_check.sh`), and what
# `make gpu-check` runs here: benchmarks/gpu.py under a 540 s timeout, writing $OUT/gpu.json and its log
# $OUT/gpu_check.log (without $OUT: benchmarks/results/gpu.json, the log in $TMPDIR). On the GPU machine only $OUT
# comes back: copy its gpu.json to benchmarks/results/ here.
# Where the python lacks hydra/omegaconf (the GPU machine), the wheels of .whl/ (scripts/gpu_wheels.sh) are installed
# into /tmp/site first; otherwise (CI, .venv) the python runs as it is.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu_check: $PY lacks hydra/omegaconf and .whl/ has no wheels; run scripts/gpu_wheels.sh here and carry .whl" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
LOG=${OUT:-${TMPDIR:-/tmp}}/gpu_check.log
timeout 540 "$PY" benchmarks/gpu.py --out "$DEST/gpu.json" "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
exit "$rc"
