#!/usr/bin/env bash
# Create .venv and install dlpipe with its test tools. Used by the README and by .ci/run.
#   bash scripts/setup.sh            # CPU-only machine -> CPU torch wheel; NVIDIA GPU -> CUDA wheel
#   TORCH_VERSION=2.13.0 TORCH_INDEX_URL=... bash scripts/setup.sh   # override the choice
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
VENV=${VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"

if "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
    echo "setup: torch $TORCH_VERSION already installed"
elif [ -n "${TORCH_INDEX_URL:-}" ]; then
    $PIP install "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    # PyPI's default Linux wheel is the CUDA build.
    echo "setup: NVIDIA GPU found -> CUDA build of torch $TORCH_VERSION"
    $PIP install "torch==$TORCH_VERSION"
else
    # No GPU: never pull the multi-GB CUDA build. The CPU index's '+cpu' wheel sorts above
    # PyPI's, and a local wheelhouse (PIP_FIND_LINKS) serves it offline; --retries 0 keeps an
    # unreachable CPU index from stalling the install.
    echo "setup: no GPU -> CPU build of torch $TORCH_VERSION"
    $PIP install --retries 0 "torch==$TORCH_VERSION" --extra-index-url https://download.pytorch.org/whl/cpu
fi

$PIP install -e ".[dev]"
"$VENV/bin/python" -c "import torch; print('setup: torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
