"""The hardened service the hardening tests attack (key, small limits, a short queue), and what they send it.

Each test that kills or stops a service starts its own; this one serves every test that leaves it running.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from harness.service import ServiceProcess, wait_until

API_KEY = "hardening-test-key-5f1c9e"
MAX_UPLOAD_MB = 4
MAX_AUDIO_SECONDS = 30
MAX_QUEUE = 4


@dataclass(frozen=True)
class Part:
    """One part of a hand-made multipart body; bytes names allow what no HTTP client would send."""

    name: bytes
    content: bytes
    filename: bytes | None = None


BOUNDARY = b"hardening-boundary-7d2a"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY.decode()}"


def multipart(*parts: Part) -> bytes:
    """A multipart/form-data body of `parts`, byte for byte as given."""
    body = b""
    for part in parts:
        disposition = b'form-data; name="' + part.name + b'"'
        if part.filename is not None:
            disposition += b'; filename="' + part.filename + b'"'
        body += b"--" + BOUNDARY + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + part.content + b"\r\n"
    return body + b"--" + BOUNDARY + b"--\r\n"


def post(service: ServiceProcess, body: bytes, path: str = "/transcribe", **headers: str) -> requests.Response:
    """POST a hand-made multipart body with the service's key."""
    return requests.post(
        f"{service.url}{path}",
        data=body,
        headers={"Content-Type": MULTIPART, **service.auth_headers, **headers},
        timeout=60,
    )


@dataclass(frozen=True)
class RawAnswer:
    """An HTTP answer read off a raw socket; status None when the server closed without one."""

    status: int | None
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def request_head(service: ServiceProcess, path: str, headers: dict[str, str], body_bytes: int | None = None) -> bytes:
    """The request line and headers of a POST with the service's key, byte for byte; the body is the caller's."""
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{service.port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in {**service.auth_headers, **headers}.items()]
    if body_bytes is not None:
        lines.append(f"Content-Length: {body_bytes}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_answer(connection: socket.socket, timeout: float) -> RawAnswer:
    """Read until the server closes (every request here says Connection: close) or `timeout` passes."""
    received = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([connection], [], [], left)[0]:
            break
        try:
            chunk = connection.recv(65536)
        except ConnectionError:
            break
        if not chunk:
            break
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        return RawAnswer(None, received)
    return RawAnswer(int(head.split()[1]), body)


def trickle(
    service: ServiceProcess, started: threading.Event, stop: threading.Event, path: str = "/transcribe"
) -> RawAnswer:
    """Send an upload to `path` one byte a second until the server answers (or `stop` is set); its answer."""
    body = multipart(Part(b"file", bytes(1000), b"slow.wav"))
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as connection:
        connection.sendall(request_head(service, path, {"Content-Type": MULTIPART}, len(body)))
        started.set()
        for byte in body:
            if stop.is_set() or select.select([connection], [], [], 1.0)[0]:
                break
            with contextlib.suppress(ConnectionError):
                connection.sendall(bytes([byte]))
        return read_answer(connection, timeout=30)


def send_raw(service: ServiceProcess, payload: bytes, timeout: float = 60) -> RawAnswer:
    """Send `payload` (a whole request, well formed or not) on a new connection and read the answer."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=timeout) as connection:
        # the server may answer and close before the rest is sent; its answer may still be readable
        with contextlib.suppress(ConnectionError):
            connection.sendall(payload)
        return read_answer(connection, timeout)


def upload_dir_files(service: ServiceProcess) -> list[Path]:
    return list(service.upload_dir.iterdir())


def log_line(service: ServiceProcess, request_id: str) -> dict:
    """The service's JSON log line for one request; written once the response has gone, so polled for."""

    def find() -> dict | None:
        lines = [json.loads(line) for line in service.log_path.read_text().splitlines() if line.startswith("{")]
        return next((line for line in lines if line["id"] == request_id), None)

    return wait_until(find, 5, f"a log line for request {request_id}")


@pytest.fixture(scope="session")
def hardened(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        tmp_path_factory.mktemp("hardened"),
        model_cache_dir,
        WHISPER_API_KEY=API_KEY,
        WHISPER_MAX_UPLOAD_MB=str(MAX_UPLOAD_MB),
        WHISPER_MAX_AUDIO_SECONDS=str(MAX_AUDIO_SECONDS),
        WHISPER_MAX_QUEUE=str(MAX_QUEUE),
        WHISPER_MAX_BATCH_SIZE=str(MAX_QUEUE),
        WHISPER_BATCH_TIMEOUT="0.2",
    ).start()
    yield process
    process.stop()


def lavfi(source: str, destination: Path, *ffmpeg_args: str) -> Path:
    """Render one of ffmpeg's generated sources (tones, silence, test pictures) to `destination`."""
    command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, *ffmpeg_args]
    subprocess.run([*command, str(destination)], check=True)
    return destination


@pytest.fixture(scope="session")
def hour_of_silence(audio_dir: Path) -> Path:
    """An hour of 16 kHz silence as FLAC: under a megabyte to upload, 3600 s to decode."""
    return lavfi("anullsrc=r=16000:cl=mono", audio_dir / "hour.flac", "-t", "3600", "-c:a", "flac")
