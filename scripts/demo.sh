#!/usr/bin/env bash
# Set everything up, then run the demo on the shipped photos and video. Arguments go to 'facefare demo'.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/facefare demo "$@"
