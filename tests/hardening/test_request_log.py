"""Structured logs: one JSON line per request, tied to the response by its X-Request-ID header."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from harness.service import ServiceProcess
from harness.speech import duration_seconds
from tests.hardening.conftest import log_line

pytestmark = pytest.mark.integration

FIELDS = {
    "id",
    "method",
    "route",
    "status",
    "reason",
    "upload_bytes",
    "audio_seconds",
    "decode_ms",
    "queue_ms",
    "inference_ms",
    "batch_size",
    "total_ms",
}


def test_a_transcription_logs_one_json_line_under_the_clients_request_id(
    hardened: ServiceProcess, fox_wav: Path
) -> None:
    with fox_wav.open("rb") as audio:
        response = requests.post(
            f"{hardened.url}/transcribe",
            files={"file": audio},
            headers={"X-Request-ID": "client-7.a:1", **hardened.auth_headers},
            timeout=120,
        )
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "client-7.a:1"
    line = log_line(hardened, "client-7.a:1")
    assert set(line) == FIELDS
    assert line["route"] == "/transcribe" and line["status"] == 200 and line["reason"] is None
    assert line["audio_seconds"] == pytest.approx(duration_seconds(fox_wav), abs=0.05)
    assert line["upload_bytes"] == fox_wav.stat().st_size
    assert 0 < line["decode_ms"] < line["total_ms"]


def test_refusals_are_logged_with_their_reason_and_an_id_of_ours(hardened: ServiceProcess) -> None:
    response = requests.post(
        f"{hardened.url}/transcribe", headers={"X-Request-ID": "not a {tame} id\u00e9".encode()}, timeout=30
    )
    assert response.status_code == 401
    request_id = response.headers["X-Request-ID"]
    assert len(request_id) == 32, "an unusable client id is replaced"
    assert log_line(hardened, request_id)["status"] == 401
    empty = requests.post(
        f"{hardened.url}/transcribe", files={"file": ("a.wav", b"")}, headers=hardened.auth_headers, timeout=30
    )
    assert log_line(hardened, empty.headers["X-Request-ID"])["reason"] == "empty_upload"


def test_health_polls_are_not_logged(hardened: ServiceProcess) -> None:
    health = requests.get(f"{hardened.url}/health", timeout=5).headers["X-Request-ID"]
    # a logged request after it: once its line is there, the poll's would be too
    info = requests.get(f"{hardened.url}/info", headers=hardened.auth_headers, timeout=5).headers["X-Request-ID"]
    log_line(hardened, info)
    assert health not in hardened.log_path.read_text()
