"""Slow and idle clients: they hold their own connection, never a place in the queue, and not for long.

A body trickling at 1 byte/s is refused with 408 once WHISPER_UPLOAD_GRACE has passed, and other clients are
served meanwhile; connections that never finish their headers make room for new ones past the per-process cap,
so /health and an authenticated upload get through a server whose open-file limit an attacker has used up.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from harness.service import ServiceProcess, wait_until
from tests.hardening.conftest import MAX_QUEUE, read_answer, trickle

pytestmark = pytest.mark.integration

SLOW_CLIENTS = 2 * MAX_QUEUE
# the service's defaults: WHISPER_UPLOAD_GRACE=10, WHISPER_MIN_UPLOAD_RATE_KB=16
UPLOAD_GRACE_SECONDS = 10
OPEN_FILES = 256
IDLE_CONNECTIONS = 2 * OPEN_FILES
REFUSED = "whisper_connections_refused_total"


def test_slow_bodies_hold_no_place_and_are_refused_while_others_are_served(
    hardened: ServiceProcess, fox_wav: Path
) -> None:
    stop = threading.Event()
    started = [threading.Event() for _ in range(SLOW_CLIENTS)]
    with ThreadPoolExecutor(SLOW_CLIENTS + MAX_QUEUE) as pool:
        slow = [pool.submit(trickle, hardened, event, stop) for event in started]
        try:
            for event in started:
                assert event.wait(30)
            # a full queue's worth at once: their bodies arrive in well under UPLOAD_GRACE_SECONDS
            others = [pool.submit(hardened.transcribe, fox_wav) for _ in range(MAX_QUEUE)]
            still_sending = sum(not future.done() for future in slow)
            served = [future.result() for future in others]
            answers = [future.result(timeout=UPLOAD_GRACE_SECONDS + 60) for future in slow]
        finally:
            stop.set()
    statuses = [r.status_code for r in served]
    print(f"{SLOW_CLIENTS} clients at 1 byte/s; {MAX_QUEUE} others sent beside them: {statuses}")
    assert still_sending == SLOW_CLIENTS, "the others were sent while every slow client was sending"
    assert statuses == [200] * MAX_QUEUE, [r.text for r in served]
    assert [a.status for a in answers] == [408] * SLOW_CLIENTS, answers
    assert {a.json()["reason"] for a in answers} == {"upload_too_slow"}
    assert wait_until(lambda: not list(hardened.upload_dir.iterdir()), 5, "upload dir empty")


def status_of(send: Callable[[], requests.Response]) -> int | str:
    """The answer's status, or the error that came instead."""
    try:
        return send().status_code
    except requests.RequestException as error:
        return type(error).__name__


@pytest.fixture
def few_files(tmp_path: Path, model_cache_dir: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess(
        tmp_path, model_cache_dir, max_open_files=OPEN_FILES, WHISPER_API_KEY="exhaustion-key"
    ).start()
    yield service
    service.stop()


def test_idle_connections_past_the_open_file_limit_leave_room_for_health_and_uploads(
    few_files: ServiceProcess, fox_wav: Path
) -> None:
    idle = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            idle.append(socket.create_connection(("127.0.0.1", few_files.port), timeout=10))
        # queued behind every idle connection in the listen backlog
        health = status_of(lambda: requests.get(f"{few_files.url}/health", timeout=20))
        upload = status_of(
            lambda: requests.post(
                f"{few_files.url}/transcribe",
                files={"file": ("fox.wav", fox_wav.read_bytes())},
                headers=few_files.auth_headers,
                timeout=120,
            )
        )
    finally:
        for connection in idle:
            connection.close()
    print(f"under {IDLE_CONNECTIONS} idle connections: /health {health}, upload {upload}")
    assert (health, upload) == (200, 200)
    samples = few_files.metric_samples()
    evicted = sum(v for k, v in samples.items() if k.startswith(REFUSED) and "evicted_waiting_for_headers" in k)
    print(f"{IDLE_CONNECTIONS} idle connections under ulimit -n {OPEN_FILES}: {evicted:.0f} evicted")
    assert evicted >= IDLE_CONNECTIONS - OPEN_FILES


def test_a_connection_that_never_sends_its_headers_is_closed(hardened: ServiceProcess) -> None:
    with socket.create_connection(("127.0.0.1", hardened.port), timeout=30) as connection:
        connection.sendall(b"POST /transcribe HTTP/1.1\r\nHost: x\r\n")
        began = time.monotonic()
        answer = read_answer(connection, timeout=30)
    closed_after = time.monotonic() - began
    # WHISPER_HEADER_TIMEOUT's default
    assert answer.body == b"" and 9 < closed_after < 15, (answer, closed_after)
