"""The CPU image in a container: its user and what that user may write, its HEALTHCHECK, real transcriptions over
multipart and the OpenAI client, and uploads that live on the tmpfs and leave nothing behind.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import openai
import pytest
import requests

from harness.service import wait_until
from tests.image.conftest import FIGURES
from tests.image.docker import ServiceContainer

pytestmark = pytest.mark.image

SERVICE_UID = 10001
# where the service may write; everything else in the image belongs to root
# /jobs: the job store and the uploads of unfinished jobs, a volume like /models
WRITABLE = {"/uploads", "/models", "/jobs", "/tmp"}
# the image's HEALTHCHECK probes every 30 s: the first probe comes 30 s after the start, then retries follow
HEALTHY_SECONDS = 180


def started_at(container: ServiceContainer) -> float:
    """The container's start as a Unix time (Docker writes nanoseconds, which fromisoformat does not read)."""
    stamp = container.state()["StartedAt"]
    return datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00").timestamp()


def test_runs_as_the_unprivileged_user(service: ServiceContainer) -> None:
    assert service.inspect()["Config"]["User"] == f"{SERVICE_UID}:{SERVICE_UID}"
    # every process of the service, not only what `docker exec` starts
    owners = service.exec("sh", "-c", "for status in /proc/[0-9]*/status; do grep '^Uid:' $status; done")
    uids = {line.split()[1] for line in owners.stdout.splitlines()}
    assert uids == {str(SERVICE_UID)}, owners.stdout


def test_writes_only_to_uploads_models_and_tmp(service: ServiceContainer) -> None:
    # find's -writable asks the kernel (access(2)) as the service's user; the kernel's own trees are not the image
    found = service.exec(
        "find",
        "/",
        "(",
        "-path",
        "/proc",
        "-o",
        "-path",
        "/sys",
        "-o",
        "-path",
        "/dev",
        ")",
        "-prune",
        "-o",
        "-writable",
        "-print",
    )
    writable = found.stdout.split()
    assert writable, found.stderr
    outside = [path for path in writable if not any(path == root or path.startswith(f"{root}/") for root in WRITABLE)]
    assert outside == []
    assert set(writable) >= WRITABLE


def test_the_images_healthcheck_turns_healthy(service: ServiceContainer) -> None:
    def health() -> str:
        return service.state()["Health"]["Status"] == "healthy"

    wait_until(health, HEALTHY_SECONDS, "docker reports the container healthy")
    FIGURES["seconds from start to healthy (HEALTHCHECK, 30 s interval)"] = f"{time.time() - started_at(service):.1f}"
    probes = service.state()["Health"]["Log"]
    assert probes[-1]["ExitCode"] == 0, probes
    assert requests.get(f"{service.url}/health", timeout=5).status_code == 200


def test_transcribes_speech_sent_as_multipart(service: ServiceContainer, fox_wav: Path) -> None:
    response = service.transcribe(fox_wav)
    assert response.status_code == 200, response.text
    assert {"quick", "brown", "fox"} <= set(response.json()["transcription"].lower().replace(".", "").split())


def test_answers_the_openai_client(service: ServiceContainer, fox_wav: Path) -> None:
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="not-needed", max_retries=0)
    with fox_wav.open("rb") as audio:
        text = client.audio.transcriptions.create(model="whisper-1", file=audio).text
    assert "fox" in text.lower()


def test_uploads_live_on_the_tmpfs_and_leave_nothing(service: ServiceContainer, fox_wav: Path, tmp_path: Path) -> None:
    mounts = service.exec("cat", "/proc/mounts").stdout.splitlines()
    assert [line.split()[2] for line in mounts if line.split()[1] == "/uploads"] == ["tmpfs"]
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"this is not audio" * 64)
    refused = service.transcribe(corrupt)
    assert refused.status_code == 415, refused.text
    assert service.upload_dir_entries() == []
    assert service.transcribe(fox_wav).status_code == 200
    assert service.upload_dir_entries() == []
