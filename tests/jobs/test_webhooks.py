"""Webhooks from the real service: signed calls to a local receiver, a retry after its 500, loopback refused."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from harness.jobs_client import STARTUP_SECONDS, WEBHOOK_SECRET, jobs_env, submit, submitted, wait_until_over
from harness.service import ServiceProcess, wait_until

pytestmark = pytest.mark.integration


@dataclass
class Receiver:
    """A webhook receiver on this host: answers each call with the next scripted status, records what came."""

    statuses: list[int]
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    received = Receiver(statuses=[500, 200])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.calls.append((dict(self.headers), body))
            status = received.statuses[min(len(received.calls), len(received.statuses)) - 1]
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/whisper"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield received
    server.shutdown()


def verified(headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: recompute the HMAC over "<timestamp>.<body>" and compare in constant time."""
    signed = headers["X-Whisper-Timestamp"].encode() + b"." + body
    expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-Whisper-Signature"])


def test_the_webhook_is_signed_and_retried_after_a_500(
    jobs_service: ServiceProcess, receiver: Receiver, fox_wav: Path
) -> None:
    job_id = submitted(jobs_service, fox_wav, response_format="text", webhook_url=receiver.url)
    assert wait_until_over(jobs_service, job_id)["status"] == "done"
    wait_until(lambda: len(receiver.calls) == 2, 60, "the webhook retried after the receiver's 500")
    for headers, body in receiver.calls:
        assert verified(headers, body)
        assert not verified({**headers, "X-Whisper-Timestamp": "1"}, body)
    payload = json.loads(receiver.calls[-1][1])
    assert (payload["id"], payload["status"]) == (job_id, "done")
    result = requests.get(payload["result_url"], headers=jobs_service.auth_headers, timeout=30)
    assert result.status_code == 200 and result.text.strip()
    assert jobs_service.metric_samples()['whisper_webhook_deliveries_total{outcome="retried"}'] >= 1
    assert jobs_service.metric_samples()['whisper_webhook_deliveries_total{outcome="delivered"}'] >= 1


@pytest.fixture(scope="module")
def strict_service(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Iterator[ServiceProcess]:
    """A service with webhooks signed but WHISPER_WEBHOOK_ALLOW_PRIVATE left at its default."""
    workdir = tmp_path_factory.mktemp("strict-webhooks")
    env = jobs_env(workdir / "jobs.db", workdir / "job-uploads")
    with ServiceProcess(workdir, model_cache_dir, STARTUP_SECONDS, **env) as process:
        yield process


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "ftp://example.com/hook",
        "file:///etc/passwd",
    ],
)
def test_webhooks_to_private_addresses_or_other_schemes_are_refused(
    strict_service: ServiceProcess, fox_wav: Path, url: str
) -> None:
    refused = submit(strict_service, fox_wav, webhook_url=url)
    assert (refused.status_code, refused.json()["param"]) == (400, "webhook_url"), refused.text
    assert list((strict_service.upload_dir.parent / "job-uploads").iterdir()) == []
