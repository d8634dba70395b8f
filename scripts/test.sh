#!/usr/bin/env bash
# Install what is missing, then run lint and the whole test suite (extra pytest arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check app scripts tests
exec .venv/bin/python -m pytest "$@"
