"""SIGTERM drains: requests in flight finish with 200, new ones and /health get 503, then the process exits 0."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.service import ServiceProcess, wait_until

pytestmark = pytest.mark.integration

MODEL_PASSES = "whisper_queue_wait_seconds_count"


@pytest.fixture
def service(tmp_path: Path, model_cache_dir: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(tmp_path, model_cache_dir, WHISPER_SHUTDOWN_GRACE="120").start()
    yield process
    process.stop()


def health_status(service: ServiceProcess) -> int:
    return requests.get(f"{service.url}/health", timeout=5).status_code


def start_model_pass(service: ServiceProcess, pool: ThreadPoolExecutor, upload: Path) -> object:
    """Send `upload` and return its future once its model pass has begun (the worker has taken it)."""
    passes = service.metric_total(MODEL_PASSES)
    future = pool.submit(service.transcribe, upload)
    wait_until(lambda: service.metric_total(MODEL_PASSES) > passes, 60, "the model pass began")
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
