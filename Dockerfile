# syntax=docker/dockerfile:1
# The service image, in two flavours built from one recipe (--build-arg FLAVOR=cuda|cpu):
#   cuda (default): NVIDIA GPUs; the pinned model (medium) downloads into /models on first start.
#   cpu: no GPU; the bundled tiny.en model, nothing to download.
#
# Why these versions: torch 2.13.0 is the release CI tests against (tests/deploy checks the pin).
# Its Linux wheel on PyPI is the CUDA 13.0 build: cuBLAS, cuDNN 9 and NCCL arrive as pip wheels
# (cuda-toolkit==13.0.3, nvidia-cudnn-cu13), so the base is nvidia/cuda's 13.0 "base" flavour,
# not "runtime" or "cudnn-runtime", which would ship those libraries a second time (~3 GB).
# The base still matters: it sets NVIDIA_REQUIRE_CUDA=cuda>=13.0, so the NVIDIA container toolkit
# refuses to start on a driver too old for CUDA 13 (older than 580) rather than failing at the first
# request, and NVIDIA_DRIVER_CAPABILITIES=compute,utility. Another CUDA needs both arguments changed
# together: CUDA_BASE and a TORCH_INDEX_URL serving that CUDA build of torch.
ARG FLAVOR=cuda
ARG UBUNTU_IMAGE=ubuntu:24.04
ARG CUDA_BASE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG TORCH_VERSION=2.13.0

# Every stage is Ubuntu 24.04, so the venv's /usr/bin/python3 (3.12) exists as-is in the runtime.
FROM ${UBUNTU_IMAGE} AS python-build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv

# torch goes in its own layer, before the code, so code changes do not download it again
FROM python-build AS torch-cuda
ARG TORCH_VERSION
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

FROM python-build AS torch-cpu
ARG TORCH_VERSION
RUN /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

# the stage named by FLAVOR; hadolint cannot resolve the variable and takes it for an untagged image
# hadolint ignore=DL3006
FROM torch-${FLAVOR} AS venv
COPY pyproject.toml README.md /src/
COPY app /src/app
# cpu-model bundles tiny.en (75 MB), so even the CUDA image serves offline on a host without a GPU.
# triton (~1 GB) only compiles CUDA kernels: openai-whisper pulls it in, a CPU-only torch never uses it.
RUN /opt/venv/bin/pip install "/src[cpu-model]" \
    && if /opt/venv/bin/python -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then \
        /opt/venv/bin/pip uninstall -y triton; \
    fi

FROM ${CUDA_BASE} AS base-cuda
FROM ${UBUNTU_IMAGE} AS base-cpu

# hadolint ignore=DL3006
FROM base-${FLAVOR} AS runtime
# Ubuntu's packages are not pinned: the archive drops superseded versions, and security fixes should land.
# ca-certificates: named models download over HTTPS, and --no-install-recommends would leave it out.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ffmpeg ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A numeric UID, so Kubernetes' runAsNonRoot can verify it; /models and /uploads belong to it, so a fresh
# named volume or an unmounted run is writable.
RUN groupadd --system --gid 10001 whisper \
    && useradd --system --uid 10001 --gid whisper --create-home --home-dir /home/whisper whisper \
    && mkdir -p /models /uploads /jobs \
    && chown whisper:whisper /models /uploads /jobs
COPY --from=venv /opt/venv /opt/venv
# /uploads is a tmpfs in docker-compose.yml and an emptyDir (medium Memory) in Kubernetes; the service's
# own default, /dev/shm, is only 64 MB in a container.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WHISPER_HOST=0.0.0.0 \
    WHISPER_PORT=8000 \
    WHISPER_TMP_DIR=/uploads \
    WHISPER_MODEL_CACHE_DIR=/models \
    WHISPER_JOBS_DB=/jobs/jobs.db \
    WHISPER_JOBS_DIR=/jobs/uploads
# downloaded and converted weights: a volume, so they are fetched once, not on every new container
# jobs (their store and kept uploads) too: they outlive the container
VOLUME ["/models", "/jobs"]
USER 10001:10001
WORKDIR /home/whisper
EXPOSE 8000
# /health is 200 once every model worker is loaded; the start period covers a first download of medium.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('WHISPER_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "app"]
