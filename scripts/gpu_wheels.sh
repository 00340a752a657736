#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels the GPU machine lacks for benchmarks/gpu.py: fit()'s import path
# needs hydra-core, omegaconf and antlr4-python3-runtime beyond that machine's packages (Python 3.12, torch,
# Lightning, torchmetrics, numpy, pandas, scikit-learn, nvidia-ml-py, PyYAML, packaging ...: no registry there).
# Versions are the ones .venv has. Then: the device tool's run with carry [".whl"], command `bash scripts/gpu_check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

rm -rf .whl
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)"
# antlr4-python3-runtime 4.9.x (what omegaconf 2.3 and hydra 1.3 pin) is published as a source archive only: build
# its pure-Python wheel (py3-none-any) here
"$PY" -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
ls -l .whl
du -ch .whl/*.whl | tail -1
