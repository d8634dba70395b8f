"""Real server: no text from audio without speech, and well-formed times in every format (real SRT/VTT parsers)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import srt
import webvtt

from harness.service import ServiceProcess
from tests.nonspeech import write_non_speech

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def non_speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_non_speech(tmp_path_factory.mktemp("non-speech"))


def test_no_text_from_audio_without_speech(service: ServiceProcess, non_speech: dict[str, Path]) -> None:
    with ThreadPoolExecutor(len(non_speech)) as pool:
        responses = dict(zip(non_speech, pool.map(service.transcribe, non_speech.values()), strict=True))
    assert {name: r.status_code for name, r in responses.items()} == dict.fromkeys(non_speech, 200)
    texts = {name: r.json()["transcription"] for name, r in responses.items()}
    assert texts == dict.fromkeys(non_speech, "")
    assert all(r.json()["segments"] == [] for r in responses.values())


def seconds(timestamp: object) -> float:
    return timestamp.total_seconds() if hasattr(timestamp, "total_seconds") else float(timestamp)


def assert_ordered(spans: list[tuple[float, float]], duration: float, what: str) -> None:
    assert spans, what
    assert all(0 <= start <= end <= duration + 0.001 for start, end in spans), (what, spans)
    starts = [start for start, _ in spans]
    assert starts == sorted(starts), (what, spans)


def test_times_are_inside_the_audio_and_in_order(service: ServiceProcess, minute_long_wav: Path) -> None:
    body = service.transcribe(minute_long_wav, word_timestamps="true").json()
    duration = body["duration"]
    assert_ordered([(s["start"], s["end"]) for s in body["segments"]], duration, "segments")
    words = [(w["start"], w["end"]) for s in body["segments"] for w in s["words"]]
    assert_ordered(words, duration, "words")

    subtitles = service.transcribe(minute_long_wav, response_format="srt").text
    cues = list(srt.parse(subtitles))
    assert_ordered([(seconds(c.start), seconds(c.end)) for c in cues], duration, "srt")
    captions = webvtt.from_buffer(io.StringIO(service.transcribe(minute_long_wav, response_format="vtt").text))
    assert_ordered([(c.start_in_seconds, c.end_in_seconds) for c in captions], duration, "vtt")


def test_concurrent_requests_equal_one_at_a_time(
    service: ServiceProcess, minute_long_wav: Path, five_second_clips: list[Path]
) -> None:
    clips = [minute_long_wav, *five_second_clips[:3]]

    def text(path: Path) -> str:
        response = service.transcribe(path)
        assert response.status_code == 200, response.text
        return response.json()["transcription"]

    with ThreadPoolExecutor(len(clips)) as pool:
        together = list(pool.map(text, clips))
    assert together == [text(path) for path in clips]


def test_vad_off_still_transcribes(service: ServiceProcess, fox_wav: Path) -> None:
    response = service.transcribe(fox_wav, vad="false")
    assert response.status_code == 200 and "fox" in response.json()["transcription"].lower()
    assert requests.codes.bad_request == service.transcribe(fox_wav, vad="sometimes").status_code
