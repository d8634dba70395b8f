#!/usr/bin/env bash
# The image tier: builds the CPU image from the real Dockerfile on a real Docker engine, then runs tests/image
# against it (container, compose stack with Prometheus, faults). Extra arguments go to pytest.
#
# With no engine reachable it starts its own dockerd (as root; Debian's docker.io) with vfs storage and host
# networking only. No registry is reachable here, so the base image is Debian bookworm made with debootstrap.
# Everything slow (the base image, layers, the torch wheels) is cached under WHISPER_IMAGE_CACHE between runs.
#
# Environment: WHISPER_IMAGE_CACHE (default /var/cache/whisper-image), PYTHON (default: .venv, made by setup.sh),
# DOCKER_HOST (an engine to use instead of starting one), WHISPER_IMAGE_PHASE: `build` (the images only, into the
# cache), `test` (the tests only, on images an earlier `build` left), or `all` (the default: both).
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${WHISPER_IMAGE_CACHE:-/var/cache/whisper-image}"
base_image=whisper-test/debian:bookworm
service_image=whisper-service:cpu
prometheus_image=whisper-test/prometheus:bookworm
torch_version=$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)
started=$SECONDS
phase="${WHISPER_IMAGE_PHASE:-all}"
case "$phase" in all | build | test) ;; *) echo "WHISPER_IMAGE_PHASE must be all, build or test" >&2; exit 2 ;; esac

if [ -z "${PYTHON:-}" ]; then
  scripts/setup.sh test
  PYTHON=.venv/bin/python
fi

log() { echo "test-image: $*" >&2; }

cleanup_pids=()
cleanup() {
  for pid in "${cleanup_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

install_missing() {
  local missing=()
  for package in "$@"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" -ne 0 ]; then
    log "missing system packages: ${missing[*]} (run as root, or install them)"
    exit 1
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
}

# An engine already reachable (DOCKER_HOST or the default socket) is used as it is; otherwise our own dockerd,
# without bridge or iptables (a sandboxed machine has neither: containers use the host network). overlay2 where
# the kernel mounts it; vfs, which copies every layer whole and is several times slower, where it does not.
start_engine() {
  if docker info >/dev/null 2>&1; then
    log "using the engine at ${DOCKER_HOST:-the default socket}"
    return
  fi
  install_missing docker.io
  export DOCKER_HOST="unix://$cache/docker.sock"
  if docker info >/dev/null 2>&1; then
    log "using the dockerd already serving $DOCKER_HOST"
    return
  fi
  mkdir -p "$cache/docker" "$cache/exec"
  for driver in overlay2 vfs; do
    dockerd --storage-driver "$driver" --iptables=false --ip6tables=false --bridge=none \
      --data-root "$cache/docker" --exec-root "$cache/exec" --pidfile "$cache/dockerd.pid" \
      -H "$DOCKER_HOST" >"$cache/dockerd-$driver.log" 2>&1 &
    local pid=$!
    for _ in $(seq 300); do
      if docker info >/dev/null 2>&1; then
        cleanup_pids+=("$pid")
        log "started dockerd ($driver, data in $cache/docker)"
        return
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    log "dockerd with $driver did not start: $(tail -1 "$cache/dockerd-$driver.log")"
  done
  exit 1
}

# Debian bookworm from its archive, imported once. It carries the host's CA bundle, so pip in the build
# trusts what the host trusts (this network's egress re-signs TLS; a corporate base image does the same).
make_base_image() {
  docker image inspect "$base_image" >/dev/null 2>&1 && return
  install_missing debootstrap
  local rootfs="$cache/rootfs"
  rm -rf "$rootfs"
  log "debootstrap bookworm into $rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$cache/debootstrap.log"
  mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/usr/local/share/ca-certificates"
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
  find /usr/local/share/ca-certificates -name '*.crt' -exec cp {} "$rootfs/usr/local/share/ca-certificates/" \;
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import - "$base_image" >/dev/null
  rm -rf "$rootfs"
}

# The CPU build of torch: its own index when reachable; otherwise a local index of the same wheels, from what
# pip on this host can get (here: the +cpu wheel its config finds, and PyPI for torch's dependencies),
# served on 127.0.0.1 where the build's --network host reaches it. Sets torch_index_url ("" = the default).
torch_index_url=""
serve_torch_index() {
  if curl -sf --max-time 20 -o /dev/null https://download.pytorch.org/whl/cpu/torch/; then
    log "download.pytorch.org is reachable: the Dockerfile's own CPU index"
    return
  fi
  local index="$cache/torch-index" python_version=3.11 # bookworm's python3
  if [ ! -f "$index/complete-$torch_version-$python_version" ]; then
    log "download.pytorch.org unreachable: a local index of torch==$torch_version+cpu for Python $python_version"
    rm -rf "$index"
    mkdir -p "$index/files"
    if ! "$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$index/files" --only-binary=:all: \
      --python-version "$python_version" --platform manylinux_2_28_x86_64 "torch==$torch_version+cpu" \
      >"$cache/torch-download.log" 2>&1; then
      tail -20 "$cache/torch-download.log" >&2
      exit 1
    fi
    # one directory per project under its normalised name: a PEP 503 index as http.server lists it
    for wheel in "$index"/files/*.whl; do
      local project
      project=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
      mkdir -p "$index/simple/$project"
      mv "$wheel" "$index/simple/$project/"
    done
    touch "$index/complete-$torch_version-$python_version"
  fi
  # a fixed address: the build argument is part of the layer cache's key, so a new port would rebuild the venv
  local port="${WHISPER_TORCH_INDEX_PORT:-38471}"
  "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$index/simple" "$port" >"$cache/torch-index.log" 2>&1 &
  cleanup_pids+=($!)
  torch_index_url="http://127.0.0.1:$port/"
  for _ in $(seq 100); do
    curl -sf -o /dev/null "$torch_index_url" && return
    sleep 0.1
  done
  log "the local torch index did not start"
  exit 1
}

mkdir -p "$cache"
start_engine
if [ "$phase" = test ]; then
  for image in "$service_image" "$prometheus_image"; do
    docker image inspect "$image" >/dev/null 2>&1 || { log "no $image: run the build phase first"; exit 1; }
  done
else
  make_base_image
  serve_torch_index
fi

# the classic builder (BuildKit would fetch its Dockerfile frontend from a registry) builds every stage, the
# CUDA runtime's base included: the stand-in stands for it, so nothing is pulled. The runtime is base-cpu.
build() {
  local tag=$1
  shift
  log "building $tag"
  if ! DOCKER_BUILDKIT=0 docker build --network host --tag "$tag" "$@" >"$cache/build-${tag//[\/:]/-}.log" 2>&1; then
    tail -40 "$cache/build-${tag//[\/:]/-}.log" >&2
    exit 1
  fi
}
build_seconds=0
if [ "$phase" != test ]; then
  build_started=$SECONDS
  build "$service_image" --build-arg FLAVOR=cpu --build-arg BASE_IMAGE="$base_image" \
    --build-arg CUDA_BASE="$base_image" --build-arg TORCH_INDEX_URL="$torch_index_url" .
  build_seconds=$((SECONDS - build_started))
  build "$prometheus_image" --build-arg BASE_IMAGE="$base_image" - <tests/image/prometheus.Dockerfile
fi

image_bytes=$(docker image inspect --format '{{.Size}}' "$service_image")
log "$service_image built in ${build_seconds} s; size $((image_bytes / 1000000)) MB"
if [ "$phase" = build ]; then
  log "build phase took $((SECONDS - started)) s"
  exit 0
fi

export WHISPER_TEST_IMAGE="$service_image" WHISPER_TEST_PROMETHEUS_IMAGE="$prometheus_image"
export DOCKER_HOST="${DOCKER_HOST:-}"
status=0
"$PYTHON" -m pytest -m image tests/image "$@" || status=$?
log "tier took $((SECONDS - started)) s (image build ${build_seconds} s, size $((image_bytes / 1000000)) MB)"
exit $status
