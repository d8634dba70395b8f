"""Crashes, timeouts and a full tmpfs on the real server: requests fail cleanly and nothing is left behind.

A dead model worker or HTTP process makes the service answer what waits with 503 and exit non-zero for
the orchestrator to restart it; the restarted service sweeps what a hard crash left in the upload dir.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from app.lifecycle import EXIT_PROCESS_DIED
from harness.service import ServiceProcess, wait_until
from tests.hardening.conftest import MULTIPART, Part, multipart
from tests.hardening.test_shutdown import MODEL_PASSES, PASS_CEILING_SECONDS, start_model_pass

pytestmark = pytest.mark.integration

# long enough for the minute-long clip's model pass (several seconds on CPU) to outlast it
SHORT_TIMEOUT_SECONDS = 2.0
TMPFS_BYTES = 16 * 2**20
# model passes that have ended
PASSES_ENDED = "whisper_inference_seconds_count"


def send_all(service: ServiceProcess, uploads: list[Path]) -> list[requests.Response]:
    """POST the uploads together, so they meet in one batch."""
    barrier = threading.Barrier(len(uploads))

    def send(path: Path) -> requests.Response:
        barrier.wait()
        return service.transcribe(path)

    with ThreadPoolExecutor(len(uploads)) as pool:
        return list(pool.map(send, uploads))


def test_a_worker_killed_mid_batch_fails_its_requests_cleanly_and_exits_non_zero(
    tmp_path: Path, model_cache_dir: Path, minute_long_wav: Path, five_second_clips: list[Path]
) -> None:
    service = ServiceProcess(tmp_path, model_cache_dir, WHISPER_BATCH_TIMEOUT="0.5").start()
    try:
        passes = service.metric_total(MODEL_PASSES)
        with ThreadPoolExecutor(1) as pool:
            batch = pool.submit(send_all, service, [minute_long_wav, *five_second_clips[:3]])
            wait_until(
                lambda: service.metric_total(MODEL_PASSES) > passes, PASS_CEILING_SECONDS, "the batch's pass began"
            )
            [worker] = service.inference_workers()
            worker.kill()
            responses = batch.result()
        assert [r.status_code for r in responses] == [503] * 4, [r.text for r in responses]
        assert all(r.json()["reason"] == "unavailable" and int(r.headers["Retry-After"]) > 0 for r in responses)
        assert "worker stopped unexpectedly" in responses[0].json()["detail"]
        assert service.wait(timeout=60) == EXIT_PROCESS_DIED
        assert list(service.upload_dir.iterdir()) == []
    finally:
        service.stop()


def slow_upload(release: threading.Event) -> Iterator[bytes]:
    """A multipart body whose first 256 KB arrive at once and whose rest waits for `release`."""
    opening, closing = multipart(Part(b"file", b"\x00", b"slow.wav")).split(b"\x00")
    yield opening + bytes(256 * 1024)
    release.wait()
    yield closing


def test_a_hard_crash_leaves_files_that_the_restart_sweeps(
    tmp_path: Path, model_cache_dir: Path, fox_wav: Path
) -> None:
    service = ServiceProcess(tmp_path, model_cache_dir).start()
    release = threading.Event()
    try:
        with ThreadPoolExecutor(1) as pool:
            upload = pool.submit(
                requests.post,
                f"{service.url}/transcribe",
                data=slow_upload(release),
                headers={"Content-Type": MULTIPART},
                timeout=60,
            )
            wait_until(
                lambda: [p for p in service.upload_dir.iterdir() if p.stat().st_size > 0], 30, "upload being written"
            )
            # as the kernel's OOM killer would: no finally block runs
            [http] = service.http_processes()
            http.kill()
            release.set()
            with pytest.raises(requests.ConnectionError):
                upload.result()
        assert service.wait(timeout=60) == EXIT_PROCESS_DIED
        leftovers = list(service.upload_dir.iterdir())
        assert leftovers, "the crash left the partial upload behind"
    finally:
        release.set()
        service.stop()
    foreign = service.upload_dir / "not-ours.txt"
    foreign.write_text("files of other names are left alone")
    restarted = ServiceProcess(tmp_path, model_cache_dir).start()
    try:
        assert list(restarted.upload_dir.iterdir()) == [foreign]
        assert restarted.transcribe(fox_wav).status_code == 200
        assert list(restarted.upload_dir.iterdir()) == [foreign]
    finally:
        restarted.stop()


def test_requests_that_wait_too_long_get_504_and_their_work_is_dropped(
    tmp_path: Path, model_cache_dir: Path, minute_long_wav: Path, five_second_clips: list[Path]
) -> None:
    service = ServiceProcess(tmp_path, model_cache_dir, WHISPER_REQUEST_TIMEOUT=str(SHORT_TIMEOUT_SECONDS)).start()
    try:
        passes = service.metric_total(MODEL_PASSES)
        passes_ended = service.metric_total(PASSES_ENDED)
        with ThreadPoolExecutor(1) as pool:
            long = start_model_pass(service, pool, minute_long_wav)
            waiting = send_all(service, five_second_clips[:2])
            responses = [long.result(), *waiting]
        assert [r.status_code for r in responses] == [504] * 3
        assert all("did not finish within 2 s" in r.json()["detail"] for r in responses)
        assert list(service.upload_dir.iterdir()) == [], "temp files go with the answer"
        # the worker, once its pass over the long clip ends (however long a busy host makes it), finds both
        # clips out of time and drops them without a model pass
        wait_until(lambda: service.metric_total(PASSES_ENDED) > passes_ended, PASS_CEILING_SECONDS, "the pass ended")
        wait_until(lambda: service.logs().count("was waiting in the queue for too long") >= 2, 30, "clips dropped")
        assert service.metric_total(MODEL_PASSES) == passes + 1
        assert requests.get(f"{service.url}/health", timeout=5).status_code == 200
    finally:
        service.stop()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs as the upload dir; needs CAP_SYS_ADMIN, which CI (root) has: without it the test fails."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(uploads)], capture_output=True
    )
    assert mounted.returncode == 0, f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}"
    yield uploads
    subprocess.run(["umount", "--lazy", str(uploads)], check=True)


def fill(directory: Path, leave_free: int) -> Path:
    """Fill the filesystem of `directory` until `leave_free` bytes remain."""
    stats = os.statvfs(directory)
    filler = directory / "filler"
    with filler.open("wb") as file:
        file.truncate(0)
        file.write(bytes(stats.f_bavail * stats.f_frsize - leave_free))
    return filler


def test_a_full_tmpfs_gives_507_and_the_server_recovers_when_space_returns(
    small_tmpfs: Path, model_cache_dir: Path, fox_wav: Path
) -> None:
    service = ServiceProcess(small_tmpfs.parent, model_cache_dir).start()
    try:
        upload_size = fox_wav.stat().st_size
        # no room for the upload itself, then room for the upload but not its decoded waveform
        for room in (upload_size // 2, upload_size + 64 * 1024):
            filler = fill(small_tmpfs, room)
            response = service.transcribe(fox_wav)
            assert response.status_code == 507, (room, response.text)
            assert response.json()["reason"] == "storage_full" and int(response.headers["Retry-After"]) > 0
            assert list(small_tmpfs.iterdir()) == [filler]
            filler.unlink()
        assert service.transcribe(fox_wav).status_code == 200
    finally:
        service.stop()
