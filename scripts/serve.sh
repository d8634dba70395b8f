#!/usr/bin/env bash
# Install what is missing, then start the service on port 8000 (WHISPER_* variables configure it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh cpu-model
exec .venv/bin/python -m app
