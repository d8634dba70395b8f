"""The Dockerfile without a Docker engine: hadolint, the version pins, and the image's contract
(user, volume, health check, command, context) read from the file itself."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from app.config import Settings
from tests.deploy import dockerfile
from tests.deploy.tools import ROOT, require

# The CUDA release of torch's Linux wheel on PyPI, read from its metadata (torch 2.13.0 requires
# cuda-toolkit==13.0.3). A torch upgrade fails here until its CUDA is looked up and the base matched.
TORCH_CUDA = {"2.13.0": "13.0"}


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [require("hadolint"), "--format", "json", str(dockerfile.DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"line {f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings)


def test_image_ships_the_torch_that_ci_tests_on_a_matching_cuda_base() -> None:
    args = dockerfile.global_args()
    tested = version("torch").partition("+")[0]
    assert args["TORCH_VERSION"] == tested, "the image must install the torch release CI tests"
    cuda_tag = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-base-ubuntu(\S+)", args["CUDA_BASE"])
    assert cuda_tag, f"CUDA_BASE should be an nvidia/cuda base tag, not {args['CUDA_BASE']}"
    assert cuda_tag[1] == TORCH_CUDA[tested], f"torch {tested} is built for CUDA {TORCH_CUDA[tested]}"
    # the venv is built on BASE_IMAGE and runs on CUDA_BASE: one Python only if one Ubuntu
    assert args["BASE_IMAGE"] == f"ubuntu:{cuda_tag[2]}"


def test_flavours_select_existing_stages() -> None:
    names = {stage.name for stage in dockerfile.stages()}
    assert dockerfile.global_args()["FLAVOR"] == "cuda"
    torch_install = " ".join(dockerfile.stage("venv").arguments("RUN"))
    for flavour in ("cuda", "cpu"):
        assert f"base-{flavour}" in names
        assert f"{flavour})" in torch_install, "the venv stage picks each flavour's torch index"


def test_runtime_installs_ffmpeg_and_ca_certificates() -> None:
    installs = " ".join(dockerfile.runtime().arguments("RUN"))
    assert re.search(r"\bffmpeg\b", installs)
    assert re.search(r"\bca-certificates\b", installs), "model downloads need them"


def test_runs_as_a_numeric_non_root_user() -> None:
    (user,) = dockerfile.runtime().arguments("USER")
    uid, _, gid = user.partition(":")
    # numeric, or Kubernetes' runAsNonRoot cannot verify the image
    assert uid.isdigit() and int(uid) != 0
    assert gid.isdigit() and int(gid) != 0


def test_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = dockerfile.runtime().environment()
    whisper = {name: value for name, value in environment.items() if name.startswith("WHISPER_")}
    assert set(whisper) == {
        "WHISPER_HOST",
        "WHISPER_PORT",
        "WHISPER_TMP_DIR",
        "WHISPER_MODEL_CACHE_DIR",
        "WHISPER_JOBS_DB",
        "WHISPER_JOBS_DIR",
    }
    for name, value in whisper.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.host == "0.0.0.0"
    assert not settings.tmp_dir.is_relative_to("/dev/shm"), "/dev/shm is 64 MB in a container"


def test_model_cache_is_a_volume() -> None:
    runtime = dockerfile.runtime()
    (volumes,) = runtime.arguments("VOLUME")
    assert runtime.environment()["WHISPER_MODEL_CACHE_DIR"] in json.loads(volumes)


def test_jobs_live_on_a_volume() -> None:
    runtime = dockerfile.runtime()
    (volumes,) = runtime.arguments("VOLUME")
    environment = runtime.environment()
    assert Path(environment["WHISPER_JOBS_DB"]).parent.as_posix() in json.loads(volumes)
    assert Path(environment["WHISPER_JOBS_DIR"]).is_relative_to(Path(environment["WHISPER_JOBS_DB"]).parent)


def test_healthcheck_asks_health_on_the_service_port() -> None:
    (healthcheck,) = dockerfile.runtime().arguments("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert "--start-period=" in options
    program = " ".join(dockerfile.exec_form(command))
    assert "/health" in program and "WHISPER_PORT" in program


def test_command_starts_the_service() -> None:
    (command,) = dockerfile.runtime().arguments("CMD")
    assert dockerfile.exec_form(command) == ["python", "-m", "app"]
    assert dockerfile.runtime().arguments("ENTRYPOINT") == []


def copied_sources() -> list[str]:
    """What the Dockerfile copies from the build context (COPY --from=stage copies between stages)."""
    sources = []
    for arguments in dockerfile.stage("venv").arguments("COPY"):
        assert not arguments.startswith("--from")
        sources += arguments.split()[:-1]
    return sources


def test_dockerignore_admits_exactly_what_is_copied() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # deny all first: a new file in the repository never reaches the builder by accident
    assert patterns[0] == "*"
    admitted = {pattern[1:] for pattern in patterns if pattern.startswith("!")}
    assert admitted == set(copied_sources())


def test_package_builds_from_the_copied_files_alone(tmp_path: Path) -> None:
    context = tmp_path / "context"
    for source in copied_sources():
        origin = ROOT / source
        target = context / source
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(origin, target)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            str(context),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    assert {"app/__main__.py", "app/server.py"} <= set(zipfile.ZipFile(wheel).namelist())
