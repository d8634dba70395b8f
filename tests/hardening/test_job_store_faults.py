"""The job store failing under a running service, made for real: its volume remounted read-only, the upload
directory alone bound read-only, the SQLite header overwritten, the file deleted; an upload left by a crash;
a damaged store at start.

Each answers in our JSON error shape (503 store_unavailable with Retry-After), counts in metrics, shows on
/health/jobs while /health (transcription) stays up, and recovers when the volume does. The store lives on a
tmpfs this module mounts, which needs CAP_SYS_ADMIN: CI runs as root; elsewhere these tests fail, never skip.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness.jobs_client import STARTUP_SECONDS, jobs_env, submit, submitted, wait_until_over
from harness.service import ServiceProcess, wait_until
from tests.hardening.test_startup import start_up

pytestmark = pytest.mark.integration

# what a crash mid-upload leaves: a kept upload with no job, untouched for longer than any submission may take
ORPHAN = "0123456789abcdef0123456789abcdef.upload"
# one that might still be arriving (written a moment ago): the sweep must leave it alone
ARRIVING = "fedcba9876543210fedcba9876543210.upload"
HOURS_AGO = time.time() - 7200


def mount(*arguments: str) -> None:
    mounted = subprocess.run(["mount", *arguments], capture_output=True)
    assert mounted.returncode == 0, f"mount {' '.join(arguments)}: {mounted.stderr.decode().strip()}"


@pytest.fixture(scope="module")
def store_volume(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    volume = tmp_path_factory.mktemp("store-faults") / "volume"
    volume.mkdir()
    mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(volume))
    yield volume
    subprocess.run(["umount", "--lazy", str(volume)], check=True)


@pytest.fixture(scope="module")
def service(store_volume: Path, model_cache_dir: Path) -> Iterator[ServiceProcess]:
    uploads = store_volume / "job-uploads"
    uploads.mkdir()
    (uploads / ORPHAN).write_bytes(bytes(400_000))
    os.utime(uploads / ORPHAN, (HOURS_AGO, HOURS_AGO))
    (uploads / ARRIVING).write_bytes(bytes(1000))
    env = jobs_env(store_volume / "jobs.db", uploads)
    with ServiceProcess(store_volume.parent / "service", model_cache_dir, STARTUP_SECONDS, **env) as process:
        yield process


def answer_of(response: requests.Response) -> tuple[int, str]:
    """(status, reason) of an answer that must be our JSON error shape."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    return response.status_code, response.json()["reason"]


def jobs_health(service: ServiceProcess) -> requests.Response:
    return requests.get(f"{service.url}/health/jobs", timeout=30)


def test_an_upload_left_by_a_crash_is_swept_at_start(service: ServiceProcess, store_volume: Path) -> None:
    uploads = store_volume / "job-uploads"
    wait_until(lambda: not (uploads / ORPHAN).exists(), 60, "the orphaned upload swept")
    assert (uploads / ARRIVING).exists()
    assert service.metric_total("whisper_job_uploads_swept_total") >= 1


def test_a_read_only_store_volume_answers_503_and_shows_on_health_jobs_until_it_is_writable(
    service: ServiceProcess, store_volume: Path, fox_wav: Path
) -> None:
    assert jobs_health(service).status_code == 200
    errors = service.metric_total("whisper_job_store_errors_total")
    mount("-o", "remount,ro", str(store_volume))
    try:
        refused = submit(service, fox_wav, response_format="text")
        assert answer_of(refused) == (503, "store_unavailable")
        assert int(refused.headers["Retry-After"]) > 0
        assert answer_of(jobs_health(service)) == (503, "store_unavailable")
        # transcription does not need the store: the replica stays in its load balancer
        assert requests.get(f"{service.url}/health", timeout=30).status_code == 200
        assert service.metric_total("whisper_job_store_errors_total") > errors
    finally:
        mount("-o", "remount,rw", str(store_volume))
    assert jobs_health(service).status_code == 200
    job_id = submitted(service, fox_wav, response_format="text")
    assert wait_until_over(service, job_id)["status"] == "done"


def test_a_read_only_upload_directory_alone_answers_503_too(
    service: ServiceProcess, store_volume: Path, fox_wav: Path
) -> None:
    uploads = str(store_volume / "job-uploads")
    mount("--bind", uploads, uploads)
    try:
        mount("-o", "remount,bind,ro", uploads)
        refused = submit(service, fox_wav, response_format="text")
        assert answer_of(refused) == (503, "store_unavailable")
        assert answer_of(jobs_health(service)) == (503, "store_unavailable")
    finally:
        subprocess.run(["umount", uploads], check=True)
    assert jobs_health(service).status_code == 200


def test_an_overwritten_header_then_a_deleted_store_answer_503_and_no_empty_store_appears(
    service: ServiceProcess, store_volume: Path
) -> None:
    database = store_volume / "jobs.db"
    with database.open("r+b") as file:
        file.write(b"this is no longer a SQLite file" * 4)
    listing = requests.get(f"{service.url}/v1/jobs", headers=service.auth_headers, timeout=30)
    assert answer_of(listing) == (503, "store_unavailable")
    assert answer_of(jobs_health(service)) == (503, "store_unavailable")

    for path in store_volume.glob("jobs.db*"):
        path.unlink()
    listing = requests.get(f"{service.url}/v1/jobs", headers=service.auth_headers, timeout=30)
    assert answer_of(listing) == (503, "store_unavailable")
    assert "deleted" in listing.json()["detail"]
    assert not database.exists(), "a new, empty store would silently lose every job"
    assert "Traceback" not in service.logs()


def test_a_damaged_store_stops_start_up_naming_the_setting_and_the_fix(tmp_path: Path) -> None:
    database = tmp_path / "jobs.db"
    database.write_bytes(b"not a database" * 100)
    status, output = start_up(tmp_path, WHISPER_DEVICE="cpu", WHISPER_JOBS_DB=str(database))
    assert status > 0, output[-2000:]
    assert f"WHISPER_JOBS_DB={database}" in output and "move it" in output, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
