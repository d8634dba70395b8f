"""Who spoke when, through the real server: a conversation of two real voices, on both protocols and in subtitles."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import openai
import pytest
import requests
import srt
import webvtt

from harness.accuracy import DEFAULT_CACHE
from harness.conversations import Conversation, dialogue, label_map, speaker_voices
from harness.service import ServiceProcess
from harness.speech_corpus import write_wav

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def voices() -> dict[str, list[np.ndarray]]:
    return speaker_voices(DEFAULT_CACHE)


@pytest.fixture(scope="module")
def talk(voices: dict[str, list[np.ndarray]]) -> Conversation:
    """About 25 s: the Dickens and Austen readers taking five turns, half a second apart."""
    dickens, austen = voices["dickens_reader"], voices["austen_reader"]
    lines = [
        ("dickens_reader", dickens[0:2]),
        ("austen_reader", austen[0:1]),
        ("dickens_reader", dickens[2:5]),
        ("austen_reader", austen[1:2]),
        ("dickens_reader", dickens[5:7]),
    ]
    return dialogue("two", lines, gap_seconds=0.5)


@pytest.fixture(scope="module")
def talk_wav(talk: Conversation, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wav(tmp_path_factory.mktemp("diarization") / "two.wav", talk.waveform)


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key="not-needed", max_retries=0)


def data_url(waveform: np.ndarray, folder: Path) -> str:
    path = write_wav(folder / "reference.wav", waveform)
    return "data:audio/wav;base64," + base64.b64encode(path.read_bytes()).decode()


def test_diarized_json_through_the_openai_client(client: openai.OpenAI, talk: Conversation, talk_wav: Path) -> None:
    with talk_wav.open("rb") as audio:
        result = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="diarized_json", chunking_strategy="auto"
        )
    segments = [(s.speaker, s.start, s.end) for s in result.segments]
    assert {s.type for s in result.segments} == {"transcript.text.segment"}
    assert {label for label, *_ in segments} == {"A", "B"}
    label_map(talk, segments)
    # every turn of the reference is heard: some segment of the right speaker overlaps it
    assert result.text and result.duration == pytest.approx(talk.seconds, abs=0.1)


def test_known_speakers_name_the_voices(
    client: openai.OpenAI, talk: Conversation, talk_wav: Path, voices: dict[str, list[np.ndarray]], tmp_path: Path
) -> None:
    # clips of each reader that the conversation does not contain
    dickens = np.concatenate(voices["dickens_reader"][8:11])
    austen = voices["austen_reader"][3]
    with talk_wav.open("rb") as audio:
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=audio,
            response_format="diarized_json",
            chunking_strategy="auto",
            extra_body={
                "known_speaker_names": ["dickens_reader", "austen_reader"],
                "known_speaker_references": [data_url(dickens, tmp_path), data_url(austen, tmp_path)],
            },
        )
    found = label_map(talk, [(s.speaker, s.start, s.end) for s in result.segments])
    assert all(label == speaker for label, speaker in found.items()), found


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (
            {"known_speaker_names[]": ["a", "b"], "known_speaker_references[]": ["data:audio/wav;base64,AAAA"]},
            "2 names",
        ),
        ({"known_speaker_names[]": ["a"], "known_speaker_references[]": ["https://example.com/a.wav"]}, "data URL"),
        (
            {"known_speaker_names[]": ["a"], "known_speaker_references[]": ["data:audio/wav;base64,aGVsbG8gd29ybGQ="]},
            "[0]: not usable audio",
        ),
    ],
)
def test_bad_references_are_refused(service: ServiceProcess, fox_wav: Path, fields: dict, words: str) -> None:
    with fox_wav.open("rb") as audio:
        answer = requests.post(
            f"{service.url}/v1/audio/transcriptions",
            files={"file": ("fox.wav", audio)},
            data={"model": "whisper-1", "response_format": "diarized_json", **fields},
            timeout=120,
        )
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"]["message"]


def test_too_short_reference_is_refused(service: ServiceProcess, fox_wav: Path, voices, tmp_path: Path) -> None:
    short = voices["austen_reader"][0][:16000]
    with fox_wav.open("rb") as audio:
        answer = requests.post(
            f"{service.url}/v1/audio/transcriptions",
            files={"file": ("fox.wav", audio)},
            data={
                "model": "whisper-1",
                "response_format": "diarized_json",
                "known_speaker_names[]": ["austen"],
                "known_speaker_references[]": [data_url(short, tmp_path)],
            },
            timeout=120,
        )
    assert answer.status_code == 400 and "2 to 10 s" in answer.json()["error"]["message"], answer.text


def transcribe(service: ServiceProcess, path: Path, **form: str) -> requests.Response:
    with path.open("rb") as audio:
        answer = requests.post(f"{service.url}/transcribe", files={"file": (path.name, audio)}, data=form, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer


def test_native_json_srt_and_vtt_carry_speakers(service: ServiceProcess, talk: Conversation, talk_wav: Path) -> None:
    body = transcribe(service, talk_wav, diarize="true", speakers="2").json()
    segments = [(s["speaker"], s["start"], s["end"]) for s in body["segments"]]
    found = label_map(talk, segments)
    cues = list(srt.parse(transcribe(service, talk_wav, diarize="true", response_format="srt").text))
    srt_segments = [(cue.content.split(": ", 1)[0], cue.start.total_seconds(), cue.end.total_seconds()) for cue in cues]
    assert label_map(talk, srt_segments) == found
    captions = webvtt.from_buffer(
        io.StringIO(transcribe(service, talk_wav, diarize="true", response_format="vtt").text)
    )
    vtt_segments = [(c.voice, c.start_in_seconds, c.end_in_seconds) for c in captions]
    assert label_map(talk, vtt_segments) == found
