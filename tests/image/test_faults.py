"""Faults the container must survive: a full /uploads tmpfs, `docker stop` during a long transcription, and a
model worker killed inside it (the container exits non-zero, Docker's restart policy brings it back).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.lifecycle import EXIT_PROCESS_DIED
from harness.service import wait_until
from harness.speech import long_speech
from tests.deploy.test_compose import seconds
from tests.deploy.tools import COMPOSE_FILE, CPU_COMPOSE_FILE, compose_model
from tests.hardening.test_shutdown import start_model_pass
from tests.image.conftest import FIGURES
from tests.image.docker import ServiceContainer, docker

pytestmark = pytest.mark.image

# room for the five-second clip and its decoded waveform, not for the minute-long clip's upload
TMPFS_BYTES = 2**20
# run inside the container: LitServe's model workers are the children of `python -m app` started by spawn
FIND_MODEL_WORKERS = """
import os
def read(pid, name):
    with open(f"/proc/{pid}/{name}", "rb") as file:
        return file.read().decode(errors="replace")
pids = [pid for pid in os.listdir("/proc") if pid.isdigit()]
def parent(pid):
    return next(line.split()[1] for line in read(pid, "status").splitlines() if line.startswith("PPid:"))
# its forked children (the HTTP servers) share its command line: the main one is the one not their child
apps = [pid for pid in pids if read(pid, "cmdline").split("\\0")[1:3] == ["-m", "app"]]
(main,) = [pid for pid in apps if parent(pid) not in apps]
print(*[pid for pid in pids if "spawn_main" in read(pid, "cmdline") and parent(pid) == main])
"""


def test_a_full_tmpfs_gives_507_and_the_next_upload_that_fits_is_served(
    image: str, minute_long_wav: Path, fox_wav: Path
) -> None:
    assert minute_long_wav.stat().st_size > TMPFS_BYTES
    small_tmpfs = f"--mount=type=tmpfs,destination=/uploads,tmpfs-size={TMPFS_BYTES}"
    with ServiceContainer(image, "small-tmpfs", small_tmpfs) as container:
        response = container.transcribe(minute_long_wav)
        assert response.status_code == 507, response.text
        assert response.json()["reason"] == "storage_full" and int(response.headers["Retry-After"]) > 0
        assert container.upload_dir_entries() == []
        assert container.transcribe(fox_wav).status_code == 200
        assert container.upload_dir_entries() == []


@pytest.fixture(scope="module")
def half_minute_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Long enough to be in its model pass when `docker stop` comes; short enough to finish within the drain
    (WHISPER_SHUTDOWN_GRACE, 60 s) on a busy 2-core machine, where the minute-long clip does not."""
    return long_speech(tmp_path_factory.mktemp("half-minute") / "speech.wav", minimum_seconds=30)


def test_docker_stop_lets_a_long_transcription_finish_and_exits_0(image: str, half_minute_wav: Path) -> None:
    compose_service = compose_model(COMPOSE_FILE, CPU_COMPOSE_FILE)["services"]["whisper"]
    grace = seconds(compose_service["stop_grace_period"])
    with ServiceContainer(image, "stop") as container, ThreadPoolExecutor(1) as pool:
        long = start_model_pass(container, pool, half_minute_wav)
        stopping = time.monotonic()
        # SIGTERM to the container's init, which forwards it; SIGKILL only after the compose file's grace
        docker("stop", f"--time={grace:.0f}", container.name, timeout=grace + 60)
        stop_seconds = time.monotonic() - stopping
        response = long.result()
        assert response.status_code == 200, response.text
        transcript = response.json()
        assert "fox" in transcript["transcription"].lower()
        assert transcript["segments"][-1]["end"] > transcript["duration"] - 5, "the whole clip was transcribed"
        assert container.state()["ExitCode"] == 0, container.logs()
    assert stop_seconds < grace
    FIGURES["seconds docker stop took, a minute-long transcription in flight"] = f"{stop_seconds:.1f}"


def test_a_killed_model_worker_exits_non_zero_and_the_restart_policy_brings_the_service_back(
    image: str, fox_wav: Path
) -> None:
    since = str(int(time.time()) - 1)
    with ServiceContainer(image, "restart", "--restart=unless-stopped") as container:
        found = container.exec("python", "-c", FIND_MODEL_WORKERS)
        assert found.returncode == 0, found.stderr
        workers = found.stdout.split()
        assert len(workers) == 1, workers
        # no procps in a slim image: the kill comes from Python, as the service's user
        killed = container.exec("python", "-c", f"import os, signal; os.kill({workers[0]}, signal.SIGKILL)")
        assert killed.returncode == 0, killed.stderr
        wait_until(lambda: container.inspect()["RestartCount"] >= 1, 60, "Docker restarts the container")
        until = str(int(time.time()) + 1)
        exits = docker(
            "events",
            f"--since={since}",
            f"--until={until}",
            f"--filter=container={container.name}",
            "--filter=event=die",
            "--format={{.Actor.Attributes.exitCode}}",
        ).split()
        assert exits[0] == str(EXIT_PROCESS_DIED), exits
        container.wait_until_serving()
        response = container.transcribe(fox_wav)
        assert response.status_code == 200, response.text
        assert "fox" in response.json()["transcription"].lower()
