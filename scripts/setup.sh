#!/usr/bin/env bash
# Shared set-up for serve.sh and test.sh: system packages (as root, when missing), .venv, the package.
# Usage: scripts/setup.sh [pip extra]   e.g. "test" or "cpu-model"
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-cpu-model}"

apt_packages=(ffmpeg)
# postgresql: the jobs tests start their own server from it (tests/postgres.py)
[ "$extra" = "test" ] && apt_packages+=(espeak-ng prometheus postgresql)
# stock Debian/Ubuntu python3 cannot make a venv (no ensurepip) until python3-venv is installed
if [ ! -x .venv/bin/python ] && ! python3 -c "import ensurepip" 2>/dev/null; then
  apt_packages+=(python3-venv)
fi
missing=()
for package in "${apt_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# the CPU wheel keeps CPU installs small; a GPU host installs the CUDA build itself (see Dockerfile)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/pip install -q torch
  else
    .venv/bin/pip install -q torch==2.13.0 || .venv/bin/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
.venv/bin/pip install -q -e ".[$extra]"
