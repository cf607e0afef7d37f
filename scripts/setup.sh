#!/usr/bin/env bash
# Set up FaceFare in ./.venv on a fresh Debian machine (as root, with only Python 3.11+ installed):
# Python packages from PyPI, then dlib's models converted into the model cache and verified.
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "FaceFare needs Python 3.11 or newer")'
if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    echo "setup: installing python3-venv with apt-get" >&2
    apt-get update -qq && apt-get install -y -qq python3-venv
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.facefare-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[reference,cloud,dev]'
    # face_recognition is only the reference the parity tests and benchmarks compare against.
    # --no-deps: its 'dlib' requirement would compile dlib; the dlib-bin wheel provides the module.
    .venv/bin/python -m pip install -q --no-deps 'face_recognition>=1.3'
    touch "$stamp"
fi
if ! .venv/bin/facefare models verify >/dev/null 2>&1; then
    .venv/bin/facefare models convert
fi
