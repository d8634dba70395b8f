"""WHISPER_MAX_UPLOAD_MB and WHISPER_MAX_AUDIO_SECONDS: refused while streaming, and by probing before decoding."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import requests

from harness.service import ServiceProcess
from tests.hardening.conftest import (
    MAX_AUDIO_SECONDS,
    MAX_UPLOAD_MB,
    MULTIPART,
    Part,
    lavfi,
    log_line,
    multipart,
    post,
)

pytestmark = pytest.mark.integration

BODY_BYTES = 10 * MAX_UPLOAD_MB * 10**6
CHUNK_BYTES = 64 * 1024
MB = 1e6
# ffmpeg's MP3 muxer otherwise writes a Xing header that states the true length
NO_LENGTH_HEADER = ("-write_xing", "0", "-id3v2_version", "0")


class PeakSampler:
    """Samples a reading in a background thread while a block runs; keeps the largest."""

    def __init__(self, reading: Callable[[], int]) -> None:
        self.reading = reading
        self.peak = reading()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.reading())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def directory_bytes(directory: Path) -> int:
    total = 0
    for entry in os.scandir(directory):
        try:
            total += entry.stat().st_size
        except FileNotFoundError:
            continue  # removed between listing and stat
    return total


def chunked_body(total: int) -> Iterator[bytes]:
    """A multipart body streamed in chunks without a Content-Length, as a client with a pipe would send it."""
    opening, closing = multipart(Part(b"file", b"\x00", b"big.wav")).split(b"\x00")
    yield opening
    for _ in range(total // CHUNK_BYTES):
        yield os.urandom(CHUNK_BYTES)
    yield closing


@pytest.mark.parametrize("declared", [True, False], ids=["with Content-Length", "chunked"])
def test_a_body_ten_times_the_limit_is_refused_without_being_held(hardened: ServiceProcess, declared: bool) -> None:
    [http] = hardened.http_processes()
    rss_before = http.memory_info().rss
    body = multipart(Part(b"file", os.urandom(BODY_BYTES), b"big.wav")) if declared else chunked_body(BODY_BYTES)
    with (
        PeakSampler(lambda: directory_bytes(hardened.upload_dir)) as disk,
        PeakSampler(lambda: psutil.Process(http.pid).memory_info().rss) as memory,
    ):
        response = requests.post(
            f"{hardened.url}/transcribe",
            data=body,
            headers={"Content-Type": MULTIPART, **hardened.auth_headers},
            timeout=120,
        )
    assert response.status_code == 413
    assert f"{MAX_UPLOAD_MB} MB" in response.json()["detail"]
    growth = memory.peak - rss_before
    print(f"body {BODY_BYTES / MB:.0f} MB: peak disk {disk.peak / MB:.1f} MB, peak HTTP RSS +{growth / MB:.1f} MB")
    assert disk.peak <= MAX_UPLOAD_MB * MB
    assert growth < BODY_BYTES / 4, "the body must never sit in the HTTP process's memory"
    assert list(hardened.upload_dir.iterdir()) == []


def test_a_body_just_under_the_limit_is_read(hardened: ServiceProcess) -> None:
    """The limit is on bytes received, not a guess: an almost-full body of noise reaches the decoder."""
    response = post(hardened, multipart(Part(b"file", os.urandom(MAX_UPLOAD_MB * 10**6 - 1000), b"noise.wav")))
    assert response.status_code == 415


def test_audio_over_the_duration_limit_is_refused_by_the_probe(hardened: ServiceProcess, hour_of_silence: Path) -> None:
    started = time.monotonic()
    response = hardened.transcribe(hour_of_silence)
    elapsed = time.monotonic() - started
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "3600.0 s" in detail and f"at most {MAX_AUDIO_SECONDS} s" in detail
    # an hour of FLAC takes seconds to decode; the probe reads only its header
    assert elapsed < 3.0
    assert log_line(hardened, response.headers["X-Request-ID"])["decode_ms"] is None, "nothing was decoded"


def test_audio_whose_header_understates_its_length_is_stopped_while_decoding(
    hardened: ServiceProcess, tmp_path: Path
) -> None:
    """An MP3 without a length header whose first frames are fat: the probe estimates seconds, it holds minutes."""
    fat = lavfi("sine=f=440:r=16000", tmp_path / "fat.mp3", "-t", "1", "-b:a", "160k", *NO_LENGTH_HEADER)
    thin = lavfi("sine=f=440:r=16000", tmp_path / "thin.mp3", "-t", "60", "-b:a", "8k", *NO_LENGTH_HEADER)
    response = post(hardened, multipart(Part(b"file", fat.read_bytes() + thin.read_bytes(), b"liar.mp3")))
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "the audio is more than" in detail and f"at most {MAX_AUDIO_SECONDS} s" in detail
