"""OpenAI's audio API over HTTP, driven by the official `openai` client, plus the wire-level error shape."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import requests

from harness.service import ServiceProcess
from tests.integration.test_transcribe import histogram_delta, send_together

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key="not-needed", max_retries=0)


def post(service: ServiceProcess, path: Path, route: str, **form: str) -> requests.Response:
    with path.open("rb") as audio:
        return requests.post(f"{service.url}{route}", files={"file": (path.name, audio)}, data=form, timeout=120)


def fox_words(text: str) -> set[str]:
    return set(text.lower().replace(".", "").replace(",", "").split())


def test_json_and_text(client: openai.OpenAI, fox_wav: Path) -> None:
    create = client.audio.transcriptions.create
    with fox_wav.open("rb") as audio:
        assert {"quick", "brown", "fox"} <= fox_words(create(model="whisper-1", file=audio).text)
    with fox_wav.open("rb") as audio:
        text = create(model="whisper-1", file=audio, response_format="text")
    assert isinstance(text, str) and text.endswith("\n") and "fox" in text.lower()


def test_subtitles(client: openai.OpenAI, fox_wav: Path) -> None:
    create = client.audio.transcriptions.create
    with fox_wav.open("rb") as audio:
        srt = create(model="whisper-1", file=audio, response_format="srt")
    lines = srt.splitlines()
    assert lines[0] == "1" and lines[1].startswith("00:00:00,000 --> 00:00:0") and "," in lines[1][-4:]
    with fox_wav.open("rb") as audio:
        vtt = create(model="whisper-1", file=audio, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:0")


def test_verbose_json_with_words(client: openai.OpenAI, fox_wav: Path) -> None:
    with fox_wav.open("rb") as audio:
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=audio,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert result.language == "english" and result.duration == pytest.approx(3.8, abs=0.3)
    segment = result.segments[0]
    for field in (
        "id",
        "seek",
        "start",
        "end",
        "text",
        "tokens",
        "temperature",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
    ):
        assert getattr(segment, field) is not None, field
    words = result.words
    assert [w.word.lower() for w in words[:4]] == ["the", "quick", "brown", "fox"]
    times = [t for w in words for t in (w.start, w.end)]
    assert times == sorted(times), "word times must be monotonic"
    assert times[0] >= 0 and times[-1] <= result.duration


@pytest.mark.parametrize(
    ("route", "form", "param"),
    [
        ("/v1/audio/translations", {"model": "whisper-1"}, "model"),
        ("/v1/audio/transcriptions", {"model": "whisper-1", "language": "de"}, "language"),
    ],
)
def test_an_english_only_model_refuses_what_it_cannot_do(
    service: ServiceProcess, fox_wav: Path, route: str, form: dict, param: str
) -> None:
    response = post(service, fox_wav, route, **form)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("bad_option", param)
    assert "tiny.en" in error["message"] and "English-only" in error["message"]


def test_streaming_is_refused_not_ignored(client: openai.OpenAI, fox_wav: Path) -> None:
    with fox_wav.open("rb") as audio, pytest.raises(openai.BadRequestError) as raised:
        for _ in client.audio.transcriptions.create(model="whisper-1", file=audio, stream=True):
            pass
    assert raised.value.status_code == 400 and "stream" in str(raised.value)


def test_chunking_strategy_is_accepted(client: openai.OpenAI, fox_wav: Path) -> None:
    for strategy in ("auto", {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 800}):
        with fox_wav.open("rb") as audio:
            text = client.audio.transcriptions.create(model="whisper-1", file=audio, chunking_strategy=strategy).text
        assert {"quick", "brown", "fox"} <= fox_words(text)


def test_the_loaded_models_own_name_is_accepted(client: openai.OpenAI, fox_wav: Path) -> None:
    with fox_wav.open("rb") as audio:
        assert "fox" in client.audio.transcriptions.create(model="tiny.en", file=audio).text.lower()


@pytest.mark.parametrize(
    ("form", "param"),
    [
        ({"model": "gpt-4o"}, "model"),
        ({}, "model"),
        ({"model": "whisper-1", "response_format": "docx"}, "response_format"),
        ({"model": "whisper-1", "temperature": "3"}, "temperature"),
        ({"model": "whisper-1", "language": "klingon"}, "language"),
        ({"model": "whisper-1", "timestamp_granularities[]": "word"}, "timestamp_granularities"),
    ],
)
def test_bad_parameters_get_openais_error_shape(service: ServiceProcess, fox_wav: Path, form: dict, param: str) -> None:
    response = post(service, fox_wav, "/v1/audio/transcriptions", **form)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["message"]


def test_unknown_model_lists_what_is_served(client: openai.OpenAI, fox_wav: Path) -> None:
    with fox_wav.open("rb") as audio, pytest.raises(openai.BadRequestError) as raised:
        client.audio.transcriptions.create(model="whisper-large", file=audio)
    assert "whisper-1" in str(raised.value) and "tiny.en" in str(raised.value)


def test_unreadable_audio_is_a_400_in_openai_shape(service: ServiceProcess, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(b"\x00\xff" * 2000)
    # transcriptions: the English-only test model refuses translations before any audio is read
    response = post(service, garbage, "/v1/audio/transcriptions", model="whisper-1")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unreadable_audio"


@pytest.mark.parametrize("response_format", ["json", "verbose_json", "text", "srt", "vtt", "tsv"])
def test_transcribe_offers_every_format(service: ServiceProcess, fox_wav: Path, response_format: str) -> None:
    response = post(service, fox_wav, "/transcribe", response_format=response_format)
    assert response.status_code == 200, response.text
    if response_format.endswith("json"):
        assert "fox" in response.json()["text"].lower()
    else:
        assert "fox" in response.text.lower()


def test_transcribe_word_timestamps_and_options(service: ServiceProcess, fox_wav: Path) -> None:
    response = post(
        service, fox_wav, "/transcribe", word_timestamps="true", initial_prompt="Quick brown fox.", temperature="0"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    words = [w for s in body["segments"] for w in s["words"]]
    assert "fox" in [w["word"].lower().strip(".") for w in words]
    assert all(0 <= w["start"] <= w["end"] <= body["duration"] for w in words)
    assert post(service, fox_wav, "/transcribe", output="vtt").text.startswith("WEBVTT")
    assert post(service, fox_wav, "/transcribe", word_timestamps="maybe").status_code == 400


def test_detect_language(service: ServiceProcess, fox_wav: Path) -> None:
    response = post(service, fox_wav, "/detect-language")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["language"] == "en" and 0 < body["probability"] <= 1
    assert body["candidates"][0] == {"language": "en", "probability": body["probability"]}
    assert len(body["candidates"]) <= 5


def test_routes_share_batches(service: ServiceProcess, five_second_clips: list[Path]) -> None:
    """OpenAI, /transcribe and /detect-language requests sent together meet in the same model passes."""
    routes = ["/v1/audio/transcriptions", "/transcribe", "/detect-language", "/transcribe"] * 2
    responses: list[requests.Response] = []

    def send() -> None:
        responses.extend(send_together(service, five_second_clips, routes, model="whisper-1"))

    delta = histogram_delta(service, send, "whisper_batch_size")
    assert [r.status_code for r in responses] == [200] * len(routes)
    assert delta["1.0"] < delta["count"], "some model pass must have mixed requests of different routes"
