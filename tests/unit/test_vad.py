"""Voice activity detection: our batched network equals Silero's own model, and speech spans become windows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from whisper.audio import SAMPLE_RATE

from app.contract import TranscriptionOptions, VadParameters
from app.worker import vad
from app.worker.engine import AudioItem
from app.worker.vad import CHUNK_SAMPLES, SpeechDetector, VadSplitter, speech_spans


@pytest.fixture(scope="module")
def detector() -> SpeechDetector:
    return SpeechDetector("cpu")


def silero_reference(waveform: np.ndarray) -> np.ndarray:
    """Silero's own TorchScript model, stepped chunk by chunk as its get_speech_timestamps does."""
    spec = importlib.util.find_spec("silero_vad")
    assert spec is not None and spec.origin is not None
    model = torch.jit.load(str(Path(spec.origin).parent / "data" / "silero_vad.jit"), map_location="cpu")
    audio = torch.from_numpy(np.pad(waveform, (0, -len(waveform) % CHUNK_SAMPLES)))
    with torch.inference_mode():
        return np.array(
            [float(model(audio[None, i : i + CHUNK_SAMPLES], SAMPLE_RATE)) for i in range(0, len(audio), 512)]
        )


def test_the_batched_network_gives_silero_s_probabilities(detector: SpeechDetector, fox_wav: Path) -> None:
    speech = whisper.load_audio(str(fox_wav))[: 3 * SAMPLE_RATE]
    [ours] = detector.probabilities([speech])
    reference = silero_reference(speech)
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    assert ours.max() > 0.9  # it is speech


def test_rows_of_a_long_waveform_join_seamlessly(detector: SpeechDetector, fox_wav: Path, monkeypatch) -> None:
    # short rows, so a 3 s clip crosses several: each row warms up on the audio before it
    monkeypatch.setattr(vad, "ROW_CHUNKS", 24)
    monkeypatch.setattr(vad, "WARM_UP_CHUNKS", 16)
    speech = whisper.load_audio(str(fox_wav))[: 3 * SAMPLE_RATE]
    [rows] = detector.probabilities([speech])
    reference = silero_reference(speech)
    assert rows.shape == reference.shape
    # decisions agree everywhere; probabilities closely (the recurrent state restarts 16 chunks early)
    assert np.array_equal(rows > 0.5, reference > 0.5)
    assert np.abs(rows - reference).mean() < 0.02


def test_speech_spans_are_padded_and_short_bursts_ignored() -> None:
    chunks_per_second = SAMPLE_RATE / CHUNK_SAMPLES
    probabilities = np.zeros(int(20 * chunks_per_second))
    probabilities[int(2 * chunks_per_second) : int(5 * chunks_per_second)] = 0.95  # 3 s of speech
    probabilities[int(10 * chunks_per_second)] = 0.95  # a 32 ms click
    [(start, end)] = speech_spans(probabilities, 20 * SAMPLE_RATE, VadParameters(speech_pad_ms=400))
    assert start == pytest.approx(1.6 * SAMPLE_RATE, abs=CHUNK_SAMPLES)
    assert end == pytest.approx(5.4 * SAMPLE_RATE, abs=CHUNK_SAMPLES)


def test_silence_gives_no_window_and_speech_keeps_its_place(detector: SpeechDetector, fox_wav: Path) -> None:
    speech = whisper.load_audio(str(fox_wav))
    silence = np.zeros(40 * SAMPLE_RATE, dtype=np.float32)
    late_speech = np.concatenate([silence, speech])
    splitter = VadSplitter("cpu")
    splitter.detector = detector
    off = TranscriptionOptions(vad=False)
    windows = splitter([AudioItem(silence), AudioItem(late_speech), AudioItem(silence, off)])
    by_job = {i: [w for w in windows if w.request_index == i] for i in range(3)}
    assert by_job[0] == []
    [heard] = by_job[1]
    # the speech 40 s into the file, padded; nothing of the silence before it
    assert 39 * SAMPLE_RATE < heard.start < 40 * SAMPLE_RATE and heard.end == len(late_speech)
    # vad=false: the whole file, in plain windows
    plain = by_job[2]
    assert len(plain) == 2 and plain[0].start == 0 and plain[-1].end == len(silence) and not plain[0].spans
