"""WHISPER_API_KEY: every route but /health (and /metrics unless told) needs the key; it never reaches the logs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import requests

from app.config import Settings
from app.server import build_server
from harness.service import ServiceProcess
from tests.hardening.conftest import API_KEY

pytestmark = pytest.mark.integration

GUARDED = [
    ("POST", "/transcribe"),
    ("POST", "/detect-language"),
    ("POST", "/v1/audio/transcriptions"),
    ("POST", "/v1/audio/translations"),
    ("GET", "/openapi.json"),
    ("GET", "/info"),
    ("GET", "/docs"),
    ("GET", "/"),
]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": API_KEY}, {"X-API-Key": ""}],
    ids=["none", "wrong bearer", "wrong X-API-Key", "key without Bearer", "empty X-API-Key"],
)
def test_requests_without_the_key_get_401_everywhere_but_health_and_metrics(
    hardened: ServiceProcess, fox_wav: Path, headers: dict[str, str]
) -> None:
    for method, path in GUARDED:
        response = requests.request(
            method, f"{hardened.url}{path}", headers=headers, files={"file": fox_wav.open("rb")}, timeout=30
        )
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"] == "Bearer"
    openai = requests.post(f"{hardened.url}/v1/audio/transcriptions", headers=headers, timeout=30)
    assert openai.json()["error"]["code"] == "unauthorized", "OpenAI routes refuse in OpenAI's shape"
    assert requests.get(f"{hardened.url}/health", headers=headers, timeout=5).status_code == 200
    assert requests.get(f"{hardened.url}/metrics", headers=headers, timeout=5).status_code == 200


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_the_key_opens_every_route(hardened: ServiceProcess, fox_wav: Path, header: str) -> None:
    value = f"Bearer {API_KEY}" if header == "Authorization" else API_KEY
    response = requests.post(
        f"{hardened.url}/transcribe", headers={header: value}, files={"file": fox_wav.open("rb")}, timeout=120
    )
    assert response.status_code == 200, response.text
    for _, path in GUARDED[4:]:
        assert requests.get(f"{hardened.url}{path}", headers={header: value}, timeout=30).status_code == 200, path


def test_the_key_never_appears_in_the_logs(hardened: ServiceProcess, fox_wav: Path) -> None:
    assert hardened.transcribe(fox_wav).status_code == 200
    requests.get(f"{hardened.url}/info", headers={"Authorization": f"Bearer {API_KEY}x"}, timeout=5)
    assert API_KEY not in hardened.log_path.read_text(errors="replace")


def status_of(app: object, path: str, headers: dict[str, str]) -> int:
    """Call an ASGI app in-process with a GET; the status it answers with."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "http_version": "1.1",
        "server": ("test", 80),
        "client": ("test", 1),
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
    }
    started: list[int] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            started.append(message["status"])

    asyncio.run(app(scope, receive, send))
    return started[0]


def test_metrics_need_the_key_when_told(tmp_path: Path) -> None:
    settings = Settings(api_key="metrics-key", metrics_require_key=True, tmp_dir=tmp_path / "uploads", device="cpu")
    app = build_server(settings)[0].app
    assert status_of(app, "/metrics", {}) == 401
    assert status_of(app, "/metrics", {"Authorization": "Bearer metrics-key"}) == 200
