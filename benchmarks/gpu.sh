#!/usr/bin/env bash
# The benchmarks at the paper's scale on one GPU (< 10 min on an H100), then the GPU tests.
#
#   bash benchmarks/gpu.sh                 # writes benchmarks/results/gpu.{md,json,png}
#   bash benchmarks/gpu.sh --only scoring  # any bench_gpu.py option passes through
#
# Needs: a CUDA build of torch and intstream's dependencies importable by $PYTHON (default:
# the repo's .venv if it exists, else python3), and the Kodak images in ../shared/data or
# $INTSTREAM_DATA. It stops with a message before using the GPU if one of those is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# The `intstream` CLI the out-of-core section runs as a child lives beside the interpreter.
export PATH="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')"):$PATH"

"$PYTHON" - <<'PY' || exit 2
import importlib
import sys


def ok(name):
    try:
        importlib.import_module(name)
        return True
    except Exception:
        return False
missing = [m for m in ("torch", "numpy", "zarr", "numcodecs", "dask.array", "click", "soundfile", "tifffile", "trimesh",
                       "scipy", "PIL", "safetensors", "skimage", "matplotlib", "intstream.cli") if not ok(m)]
if missing:
    sys.exit(f"gpu.sh: {sys.executable} cannot import {', '.join(missing)}: install intstream ('pip install -e .[dev]', "
             "or carry wheels) into it, or point PYTHON at an environment that has it")
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu.sh: no CUDA device visible to torch {torch.__version__} (CUDA build: {torch.version.cuda}); "
             "run this on a GPU node")
print(f"gpu.sh: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", file=sys.stderr)
PY

PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/bench_gpu.py --device cuda "$@"

# GPU-only tests, when the suite declares a `gpu` marker.
if grep -Eq '^[[:space:]]*"gpu[:"]' pyproject.toml; then
    "$PYTHON" -m pytest -q -m gpu
else
    echo "gpu.sh: no 'gpu' pytest marker in pyproject.toml; no GPU-only tests to run" >&2
fi
echo "results: $(pwd)/benchmarks/results/gpu.md (+ .json, .png)" >&2
