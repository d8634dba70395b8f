#!/usr/bin/env bash
# Install what is missing, then lint, type-check and run the whole test suite (extra pytest arguments pass through).
#   scripts/test.sh -m unit     the fast in-process tier alone (also: integration, hardening, deploy)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check app harness scripts tests
.venv/bin/ruff format --check app harness scripts tests
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
