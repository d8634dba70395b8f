"""SIGTERM drains: requests in flight finish with 200, new ones and /health get 503, then the process exits 0.

Whatever clients do: one stalled mid-upload is answered 503 when the grace ends, and the exit follows within
SHUTDOWN_OVERHEAD_SECONDS, which the orchestrators' grace periods outlast.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from app.config import Settings
from app.lifecycle import SHUTDOWN_OVERHEAD_SECONDS
from app.web.jobs.wiring import OWNER_SECRET_FILE
from harness.service import ServiceProcess, wait_until
from tests.hardening.conftest import MULTIPART, Part, multipart, read_answer, request_head

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

MODEL_PASSES = "whisper_queue_wait_seconds_count"
# how long a model pass over a minute of audio may take: seconds on an idle CPU, minutes on a busy CI host
PASS_CEILING_SECONDS = 600


@pytest.fixture
def service(tmp_path: Path, model_cache_dir: Path) -> Iterator[ServiceProcess]:
    # a ceiling, not a wait: the drain ends as soon as the transcription does, which a busy host slows a lot
    process = ServiceProcess(tmp_path, model_cache_dir, WHISPER_SHUTDOWN_GRACE=str(PASS_CEILING_SECONDS)).start()
    yield process
    process.stop()


def health_status(service: ServiceProcess) -> int:
    return requests.get(f"{service.url}/health", timeout=5).status_code


def start_model_pass(service: ServiceProcess, pool: ThreadPoolExecutor, upload: Path) -> Future[requests.Response]:
    """Send `upload` and return its future once its model pass has begun (the worker has taken it)."""
    passes = service.metric_total(MODEL_PASSES)
    future = pool.submit(service.transcribe, upload)
    wait_until(
        lambda: service.metric_total(MODEL_PASSES) > passes or future.done(), PASS_CEILING_SECONDS, "pass or answer"
    )
    assert service.metric_total(MODEL_PASSES) > passes, f"answered before its model pass began: {future.result().text}"
    return future


def test_sigterm_during_a_long_transcription_lets_it_finish(
    service: ServiceProcess, minute_long_wav: Path, fox_wav: Path
) -> None:
    with ThreadPoolExecutor(1) as pool:
        long = start_model_pass(service, pool, minute_long_wav)
        service.send_signal(signal.SIGTERM)
        wait_until(lambda: health_status(service) == 503, 5, "/health turns 503 while draining")
        refused = service.transcribe(fox_wav)
        assert not long.done(), "the drain was seen while the long request was still running"
        response = long.result()
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
    assert "shutting down" in refused.json()["detail"]
    assert response.status_code == 200, response.text
    text = response.json()["transcription"].lower()
    assert "fox" in text and "cat" in text, "the whole minute was transcribed"
    assert service.wait(timeout=60) == 0
    assert list(service.upload_dir.iterdir()) == []


STALLED_GRACE_SECONDS = 3


def test_sigterm_with_clients_stalled_mid_upload_exits_within_the_grace_and_answers_them_503(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    """One client stalled mid-upload on /transcribe, one on /v1/jobs: the one intake drains both alike."""
    service = ServiceProcess(tmp_path, model_cache_dir, WHISPER_SHUTDOWN_GRACE=str(STALLED_GRACE_SECONDS)).start()
    body = multipart(Part(b"file", bytes(100_000), b"stalled.wav"))
    paths = ("/transcribe", "/v1/jobs")
    try:
        with contextlib.ExitStack() as connections:
            stalled = []
            for path in paths:
                connection = connections.enter_context(socket.create_connection(("127.0.0.1", service.port), 60))
                connection.sendall(request_head(service, path, {"Content-Type": MULTIPART}, len(body)))
                connection.sendall(body[:50_000])
                stalled.append(connection)
            wait_until(lambda: len(list(service.upload_dir.iterdir())) == 2, 30, "both uploads are being written")
            signalled = time.monotonic()
            service.send_signal(signal.SIGTERM)
            answers = [read_answer(c, timeout=STALLED_GRACE_SECONDS + SHUTDOWN_OVERHEAD_SECONDS) for c in stalled]
            status = service.wait(timeout=STALLED_GRACE_SECONDS + SHUTDOWN_OVERHEAD_SECONDS + 60)
        exited_after = time.monotonic() - signalled
    finally:
        service.stop()
    print(f"grace {STALLED_GRACE_SECONDS} s: exit {status} after {exited_after:.1f} s, stalled clients got {answers}")
    for path, answer in zip(paths, answers, strict=True):
        assert answer.status == 503 and answer.json()["reason"] == "unavailable", (path, answer)
    assert status == 0
    assert exited_after < STALLED_GRACE_SECONDS + SHUTDOWN_OVERHEAD_SECONDS
    assert list(service.upload_dir.iterdir()) == [], "the partial uploads were deleted"
    kept = [path for path in (tmp_path / "job-uploads").iterdir() if path.name != OWNER_SECRET_FILE]
    assert kept == [], "no job upload was kept"


def test_orchestrators_wait_longer_than_the_service_can_take_to_stop() -> None:
    """Docker and Kubernetes kill after their grace period: it must outlast the drain plus the real overhead."""
    bound = Settings().shutdown_grace + SHUTDOWN_OVERHEAD_SECONDS
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["whisper"]
    stop_grace = compose["stop_grace_period"]
    assert stop_grace.endswith("s") and float(stop_grace[:-1]) > bound, (stop_grace, bound)
    [pod] = [d for d in yaml.safe_load_all((ROOT / "config/kubernetes/deployment.yaml").read_text())]
    spec = pod["spec"]["template"]["spec"]
    [container] = spec["containers"]
    pause = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] > pause + bound, (spec["terminationGracePeriodSeconds"], bound)
