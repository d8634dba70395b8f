"""Continuous batching (WHISPER_CONTINUOUS_BATCHING=on) on the real server with tiny.en, over HTTP.

Every clip, the minute-long one too, gives the static service's transcript (the same VAD windows and
seek-back follow-ups; tests/integration/test_continuous_engine.py checks the same in process on real
speech), a short request sent beside a long one is answered first, and what the slots do not decode
(language detection, sampling) still works beside them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from harness.service import ServiceProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def continuous(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess(
        tmp_path_factory.mktemp("continuous"),
        model_cache_dir,
        WHISPER_CONTINUOUS_BATCHING="on",
        # three slots: the minute-long upload's windows and the short clips must take turns
        WHISPER_MAX_WINDOWS_PER_PASS="3",
    ) as process:
        yield process


def post(service: ServiceProcess, path: Path, route: str = "/transcribe", **form: str) -> requests.Response:
    with path.open("rb") as audio:
        return requests.post(f"{service.url}{route}", files={"file": (path.name, audio)}, data=form, timeout=300)


def send_timed(service: ServiceProcess, uploads: list[Path]) -> list[tuple[requests.Response, float]]:
    """POST every upload at once; each response with the seconds it took."""

    def send(upload: Path) -> tuple[requests.Response, float]:
        started = time.monotonic()
        response = post(service, upload, language="en")
        return response, time.monotonic() - started

    with ThreadPoolExecutor(len(uploads)) as pool:
        return list(pool.map(send, uploads))


def words_and_times(response: requests.Response) -> list[tuple[float, float, str]]:
    """A transcript's segments without the per-window figures that move in the 7th digit with the batch."""
    return [(s["start"], s["end"], s["text"]) for s in response.json()["segments"]]


def test_same_transcripts_as_the_static_service_and_short_requests_answer_first(
    continuous: ServiceProcess,
    service: ServiceProcess,
    minute_long_wav: Path,
    five_second_clips: list[Path],
) -> None:
    uploads = [minute_long_wav, *five_second_clips[:3]]
    answered = send_timed(continuous, uploads)
    assert [response.status_code for response, _ in answered] == [200] * len(uploads)
    for upload, (response, _) in zip(uploads, answered, strict=True):
        reference = post(service, upload, language="en")
        assert words_and_times(response) == words_and_times(reference), upload.name
    long_seconds = answered[0][1]
    assert all(seconds < long_seconds for _, seconds in answered[1:]), [seconds for _, seconds in answered]


def test_prompt_and_word_timestamps(continuous: ServiceProcess, service: ServiceProcess, fox_wav: Path) -> None:
    form = {"word_timestamps": "true", "initial_prompt": "Quick brown fox.", "language": "en"}
    response = post(continuous, fox_wav, **form)
    assert response.status_code == 200, response.text
    assert response.json() == post(service, fox_wav, **form).json()


def test_requests_outside_the_slots(continuous: ServiceProcess, fox_wav: Path) -> None:
    """Language detection and sampling at a set temperature take the static path beside the slots."""
    detected = post(continuous, fox_wav, "/detect-language")
    assert detected.status_code == 200, detected.text
    assert detected.json()["language"] == "en"
    sampled = post(continuous, fox_wav, temperature="0.5", response_format="verbose_json")
    assert sampled.status_code == 200, sampled.text
    # sampling's words vary from run to run; that it sampled, at the temperature asked, does not
    segments = sampled.json()["segments"]
    assert segments and all(segment["temperature"] == 0.5 for segment in segments)
    assert sampled.json()["text"].strip()
