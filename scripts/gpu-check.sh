#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: check that CUDA and TensorRT embeddings agree with the CPU ones
# within 1e-3 and time them (bench/providers.py). NOT RUN YET: no GPU machine was available when
# this was written; bench/README.md has no GPU numbers until someone runs it.
#
#   scripts/gpu-check.sh [--models DIR] [extra bench/providers.py options]
#
# Needs the converted models (facefare models convert, or --models DIR) and, the first time, PyPI
# access to build artifacts/gpu-venv: the project plus onnxruntime-gpu with its CUDA/cuDNN wheels and
# TensorRT 10. Writes artifacts/gpu-check/providers.json and prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${GPU_VENV:-artifacts/gpu-venv}
OUT=${GPU_CHECK_OUT:-artifacts/gpu-check}

command -v nvidia-smi >/dev/null || { echo "gpu-check: no nvidia-smi: this machine has no NVIDIA driver" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e .
    # The GPU build replaces the CPU one (both install the same 'onnxruntime' module).
    "$VENV/bin/python" -m pip uninstall -y -q onnxruntime
    "$VENV/bin/python" -m pip install -q 'onnxruntime-gpu[cuda,cudnn]>=1.20' 'tensorrt-cu12>=10,<11'
fi

# bench/providers.py preloads CUDA/cuDNN from their pip wheels (ort.preload_dlls); TensorRT's libraries
# live in the tensorrt_libs package and must be on the loader path.
trt_libs=$("$VENV/bin/python" -c 'import os, tensorrt_libs; print(os.path.dirname(tensorrt_libs.__file__))' 2>/dev/null || true)
[ -n "$trt_libs" ] && export LD_LIBRARY_PATH="$trt_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$VENV/bin/python" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'

mkdir -p "$OUT"
"$VENV/bin/python" bench/providers.py --providers cpu,cuda,tensorrt --tolerance 1e-3 \
    --trt-cache "$OUT/trt-cache" --json "$OUT/providers.json" "$@" | tee "$OUT/providers.md"
