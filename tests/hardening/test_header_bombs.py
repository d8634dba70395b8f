"""Header bombs: request headers past WHISPER_MAX_HEADER_KB or WHISPER_MAX_HEADERS are refused as they arrive.

The first round sent 64-128 MB of headers without a key: all of it was read before the 401, the HTTP process
grew by hundreds of MB and /health stalled. Now the refusal comes after the limit's worth of bytes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import psutil
import pytest
import requests

from harness.service import ServiceProcess
from tests.hardening.conftest import read_answer, send_raw

pytestmark = pytest.mark.integration

BOMB_BYTES = 64 * 2**20
LINE_BYTES = 64 * 1024
# what kernel buffers on both sides may swallow before the server's close stops the sender
BUFFERED_BYTES = 8 * 2**20
# the server's default limits (WHISPER_MAX_HEADER_KB=32, WHISPER_MAX_HEADERS=100)
MAX_HEADER_BYTES = 32_000
MAX_HEADERS = 100


def header_bomb(service: ServiceProcess, line: bytes) -> tuple[int, float, int | None]:
    """Send up to BOMB_BYTES of header lines without a key; (bytes the server took, seconds, status if any)."""
    started = time.monotonic()
    sent = 0
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as connection:
        connection.sendall(b"POST /transcribe HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(ConnectionError, TimeoutError):
            while sent < BOMB_BYTES:
                connection.sendall(line)
                sent += len(line)
        answer = read_answer(connection, timeout=10)
    return sent, time.monotonic() - started, answer.status


def health_seconds(service: ServiceProcess) -> float:
    started = time.monotonic()
    assert requests.get(f"{service.url}/health", timeout=30).status_code == 200
    return time.monotonic() - started


@pytest.mark.parametrize(
    "line",
    [b"X-Bomb: " + b"a" * (LINE_BYTES - 10) + b"\r\n", b"X-B: 1\r\n" * (LINE_BYTES // 8)],
    ids=["64 KB header lines", "8-byte header lines"],
)
def test_a_64_mb_header_bomb_is_refused_after_the_limit(hardened: ServiceProcess, line: bytes) -> None:
    [http] = hardened.http_processes()
    rss_before = http.memory_info().rss
    health: list[float] = []
    bombing = threading.Event()
    bombing.set()

    def probe_health() -> None:
        while bombing.is_set():
            health.append(health_seconds(hardened))

    prober = threading.Thread(target=probe_health)
    prober.start()
    try:
        sent, seconds, status = header_bomb(hardened, line)
    finally:
        bombing.clear()
        prober.join()
    growth = psutil.Process(http.pid).memory_info().rss - rss_before
    print(f"sent {sent / 2**20:.1f} MB in {seconds:.2f} s, answer {status}, HTTP RSS +{growth / 2**20:.1f} MiB")
    print(f"/health: slowest of {len(health)} answers {max(health):.2f} s")
    assert sent < BUFFERED_BYTES, "the server kept reading headers past its limit"
    assert seconds < 5
    assert status in (431, None), "a 431, or a reset that overtook it"
    assert growth < 20 * 2**20
    assert max(health) < 2, "/health stayed responsive"


def test_a_content_type_of_8_mb_is_refused_as_it_arrives(hardened: ServiceProcess) -> None:
    started = time.monotonic()
    sent = 0
    with socket.create_connection(("127.0.0.1", hardened.port), timeout=30) as connection:
        connection.sendall(b"POST /transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=")
        with contextlib.suppress(ConnectionError, TimeoutError):
            while sent < 8 * 2**20:
                connection.sendall(b"m" * LINE_BYTES)
                sent += LINE_BYTES
        answer = read_answer(connection, timeout=10)
    assert time.monotonic() - started < 5
    assert sent < BUFFERED_BYTES
    assert answer.status in (431, None)


def test_headers_past_the_limit_in_one_piece_are_refused_in_our_shape(hardened: ServiceProcess) -> None:
    """Sent whole, a 40 KB header block is complete before h11 measures it; the middleware does."""
    head = b"POST /transcribe HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: " + b"m" * 40_000
    answer = send_raw(hardened, head + b"\r\n\r\n")
    assert answer.status == 431
    assert answer.json()["reason"] == "headers_too_large"
    assert f"{MAX_HEADER_BYTES / 1000:g} KB" in answer.json()["detail"]


def test_too_many_headers_are_refused_before_the_key_is_checked(hardened: ServiceProcess) -> None:
    refused = hardened.metric_total("whisper_connections_refused_total")
    many = "".join(f"X-H{i}: {i}\r\n" for i in range(MAX_HEADERS + 1)).encode()
    head = b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    answer = send_raw(hardened, head + many + b"\r\n")
    assert answer.status == 431
    assert answer.json()["error"]["code"] == "headers_too_large", "OpenAI routes refuse in OpenAI's shape"
    assert hardened.metric_total("whisper_connections_refused_total") == refused + 1
