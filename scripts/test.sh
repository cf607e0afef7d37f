#!/usr/bin/env bash
# Set everything up, then run the linter and the whole test suite. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-servers.sh
./scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
