"""Webhooks from the real service: signed calls to a local receiver, a retry after its 500, loopback refused."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from harness.jobs_client import (
    STARTUP_SECONDS,
    WEBHOOK_ATTEMPTS,
    WEBHOOK_SECRET,
    WEBHOOK_TIMEOUT_SECONDS,
    jobs_env,
    submit,
    submitted,
    wait_until_over,
)
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
    # the Host header is the client's to write: the result link comes from WHISPER_PUBLIC_URL instead
    spoofed = {**jobs_service.auth_headers, "Host": "attacker.example"}
    accepted = submit(jobs_service, fox_wav, headers=spoofed, response_format="text", webhook_url=receiver.url)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    assert wait_until_over(jobs_service, job_id)["status"] == "done"
    wait_until(lambda: len(receiver.calls) == 2, 60, "the webhook retried after the receiver's 500")
    for headers, body in receiver.calls:
        assert verified(headers, body)
        assert not verified({**headers, "X-Whisper-Timestamp": "1"}, body)
    payload = json.loads(receiver.calls[-1][1])
    assert (payload["id"], payload["status"]) == (job_id, "done")
    assert payload["result_url"] == f"{jobs_service.url}/v1/jobs/{job_id}/result"
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


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it gets: a refused webhook must make none."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.server.accept()
                self.connections += 1
                connection.close()


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    listening = Listener()
    yield listening
    listening.server.close()


@pytest.mark.parametrize(
    "url",
    [
        # urlsplit reads the host as 1.1.1.1, urllib3 (requests) as 127.0.0.1: one parse, or such URLs refused
        "http://127.0.0.1:{port}\\@1.1.1.1/h",
        "http://127.0.0.1:{port}@1.1.1.1/h",
        "http://1.1.1.1@127.0.0.1:{port}/h",
        # IPv4 inside IPv6: compatible, translated, mapped
        "http://[::7f00:1]:{port}/h",
        "http://[::ffff:0:7f00:1]:{port}/h",
        "http://[::ffff:127.0.0.1]:{port}/h",
        # IPv4 in the forms inet_aton accepts: decimal, octal, hexadecimal, short; and the unspecified address
        "http://2130706433:{port}/h",
        "http://0177.0.0.1:{port}/h",
        "http://0x7f.1:{port}/h",
        "http://127.1:{port}/h",
        "http://0.0.0.0:{port}/h",
    ],
)
def test_every_form_of_a_loopback_webhook_is_refused_and_the_listener_gets_nothing(
    strict_service: ServiceProcess, listener: Listener, fox_wav: Path, url: str
) -> None:
    refused = submit(strict_service, fox_wav, webhook_url=url.format(port=listener.port))
    assert (refused.status_code, refused.json()["param"]) == (400, "webhook_url"), refused.text
    assert listener.connections == 0


@dataclass
class SlowCall:
    job_id: str
    opened: float
    closed: float | None = None


class SlowReceiver:
    """A receiver that reads each call, then answers one header byte every half second, never finishing."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/slow"
        self.calls: list[SlowCall] = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.server.accept()
                threading.Thread(target=self.trickle, args=(connection,), daemon=True).start()

    def trickle(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            received = b""
            while b"\r\n\r\n" not in received:
                received += connection.recv(65536)
            head, _, body = received.partition(b"\r\n\r\n")
            length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
            while len(body) < length:
                body += connection.recv(65536)
            call = SlowCall(json.loads(body)["id"], time.monotonic())
            self.calls.append(call)
            try:
                connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while True:
                    connection.sendall(b"x")
                    time.sleep(0.5)
            finally:
                call.closed = time.monotonic()


@pytest.fixture
def slow_receiver() -> Iterator[SlowReceiver]:
    receiving = SlowReceiver()
    yield receiving
    receiving.server.close()


def test_slow_receivers_hold_neither_submissions_nor_a_delivery_past_its_deadline(
    jobs_service: ServiceProcess, slow_receiver: SlowReceiver, fox_wav: Path
) -> None:
    form = {"response_format": "text", "webhook_url": slow_receiver.url}
    slow_jobs = [submitted(jobs_service, fox_wav, **form) for _ in range(4)]
    for job_id in slow_jobs:
        assert wait_until_over(jobs_service, job_id)["status"] == "done"
    wait_until(lambda: len(slow_receiver.calls) >= len(slow_jobs), 60, "every job's first call under way")
    # URL checks do not wait for threads that deliveries hold (there were 4, all held by these receivers)
    another = submit(jobs_service, fox_wav, **form)
    assert another.status_code == 202, another.text
    every_call = 5 * WEBHOOK_ATTEMPTS
    wait_until(
        lambda: len(slow_receiver.calls) == every_call and all(call.closed for call in slow_receiver.calls),
        300,
        "every attempt of every job's call cut at its deadline",
    )
    for call in slow_receiver.calls:
        # a total deadline per attempt, not a timeout per read that each trickled byte would renew
        assert call.closed - call.opened < WEBHOOK_TIMEOUT_SECONDS + 5, call
    # nobody called again while a call was in flight
    assert sorted(Counter(call.job_id for call in slow_receiver.calls).values()) == [WEBHOOK_ATTEMPTS] * 5
