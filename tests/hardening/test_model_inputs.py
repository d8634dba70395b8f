"""Inputs the model would fail on: samples no recording holds, and prompts that spell Whisper's special tokens.

Float audio with NaN, infinities or absurd magnitudes is refused with 400 before it is queued, so the requests
batched beside it are untouched; a prompt is text, whatever it spells.
"""

from __future__ import annotations

import struct
import threading
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from harness.service import ServiceProcess
from tests.hardening.conftest import MAX_QUEUE, Part, multipart, post

pytestmark = pytest.mark.integration

SAMPLE_RATE = 16000
WAVE_FORMAT_IEEE_FLOAT = 3


def float_wav(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """A mono 32-bit float WAV holding exactly `samples`, whatever values they are."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", WAVE_FORMAT_IEEE_FLOAT, 1, rate, rate * 4, 4, 32)
    chunks = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(chunks)) + chunks


def speech_samples(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV's samples as floats in [-1, 1], and its rate."""
    with wave.open(str(path)) as recording:
        frames = recording.readframes(recording.getnframes())
        return np.frombuffer(frames, "<i2").astype(np.float32) / 32768, recording.getframerate()


@pytest.fixture(scope="module")
def poisoned(fox_wav: Path) -> dict[str, bytes]:
    """Float WAVs whose samples no recording holds, each a case the first round found failing with 500."""
    speech, rate = speech_samples(fox_wav)
    sprinkled = speech.copy()
    sprinkled[np.linspace(1000, len(speech) - 1000, 5).astype(int)] = np.nan
    tone = np.sin(np.arange(2 * SAMPLE_RATE) * 2 * np.pi * 440 / SAMPLE_RATE).astype(np.float32) * 0.3
    with_inf = tone.copy()
    with_inf[100] = np.inf
    with_inf[200] = -np.inf
    return {
        "all NaN": float_wav(np.full(2 * SAMPLE_RATE, np.nan, np.float32)),
        "a tone with one NaN": float_wav(np.where(np.arange(tone.size) == 500, np.nan, tone)),
        "a tone with +Inf and -Inf": float_wav(with_inf),
        "finite 1e30 samples": float_wav(np.full(2 * SAMPLE_RATE, 1e30, np.float32)),
        "speech with five NaN samples": float_wav(sprinkled, rate),
    }


def send_together(service: ServiceProcess, poisoned: list[bytes], speech: Path) -> list[requests.Response]:
    """The poisoned uploads and one speech clip at once, so they meet in one batch; the answers in that order."""
    barrier = threading.Barrier(len(poisoned) + 1)

    def send(content: bytes | None) -> requests.Response:
        barrier.wait()
        if content is None:
            return service.transcribe(speech)
        return post(service, multipart(Part(b"file", content, b"float.wav")))

    with ThreadPoolExecutor(len(poisoned) + 1) as pool:
        return list(pool.map(send, [*poisoned, None]))


def test_samples_no_recording_holds_are_refused_and_their_batch_neighbours_served(
    hardened: ServiceProcess, poisoned: dict[str, bytes], fox_wav: Path
) -> None:
    refused, served = {}, []
    labels = list(poisoned)
    # rounds of MAX_QUEUE requests, each with one speech clip beside the poisoned ones
    for start in range(0, len(labels), MAX_QUEUE - 1):
        round_labels = labels[start : start + MAX_QUEUE - 1]
        *answers, speech = send_together(hardened, [poisoned[label] for label in round_labels], fox_wav)
        refused.update(zip(round_labels, answers, strict=True))
        served.append(speech)
    for label, response in refused.items():
        print(f"{response.status_code} {label}: {response.text[:120]}")
    assert {label: r.status_code for label, r in refused.items()} == dict.fromkeys(poisoned, 400)
    assert {r.json()["reason"] for r in refused.values()} == {"invalid_samples"}
    # resampling to 16 kHz spreads each NaN over its neighbours: the count is of decoded samples
    assert "NaN or infinite samples" in refused["speech with five NaN samples"].json()["detail"]
    assert "magnitude over" in refused["finite 1e30 samples"].json()["detail"]
    assert {r.status_code for r in served} == {200}, [r.text for r in served]
    assert all("fox" in r.json()["transcription"].lower() for r in served)


SPECIAL_PROMPTS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|startoftranscript|><|en|><|transcribe|><|notimestamps|>",
    "The fox <|endoftext|> and <|nospeech|> jumped",
]


@pytest.mark.parametrize("prompt", SPECIAL_PROMPTS)
@pytest.mark.parametrize("path", ["/transcribe", "/v1/audio/transcriptions"])
def test_a_prompt_spelling_special_tokens_is_text(
    hardened: ServiceProcess, fox_wav: Path, prompt: str, path: str
) -> None:
    response = requests.post(
        f"{hardened.url}{path}",
        files={"file": ("fox.wav", fox_wav.read_bytes())},
        data={"prompt": prompt, "model": "whisper-1"},
        headers=hardened.auth_headers,
        timeout=120,
    )
    assert response.status_code == 200, response.text
    text = response.json()["transcription" if path == "/transcribe" else "text"]
    assert "fox" in text.lower()
