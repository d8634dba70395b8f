"""Live audio on the web side: frames decoded, resampled in pieces exactly as a whole, and server VAD's turns."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from app.silero import CHUNK_SAMPLES
from app.web.realtime.audio import ALAW_TABLE, SAMPLE_RATE, ULAW_TABLE, Resampler, decode_frame, lowpass, resample
from app.web.realtime.protocol import PCM16, ProtocolError, ServerVad
from app.web.realtime.vad import TurnDetector


@pytest.mark.parametrize("rate", [24_000, 8_000])
def test_frames_of_any_size_resample_to_what_the_whole_stream_gives(rate: int) -> None:
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(rate).astype(np.float32)
    resampler = Resampler(rate)
    pieces, start = [], 0
    while start < len(signal):
        size = int(rng.integers(1, 900))
        pieces.append(resampler.push(signal[start : start + size]))
        start += size
    streamed = np.concatenate(pieces)
    silence = np.zeros(resampler.margin, dtype=np.float32)
    whole = resample(
        np.concatenate([silence, signal]), resampler.up, resampler.down, lowpass(resampler.up, resampler.down)
    )
    whole = whole[resampler.margin * resampler.up // resampler.down :]
    # all but the held-back millisecond has come out, sample for sample
    assert SAMPLE_RATE - len(streamed) <= 2 * resampler.margin
    np.testing.assert_allclose(streamed, whole[: len(streamed)], atol=1e-6)


def test_g711_expands_as_the_reference_tables() -> None:
    # ITU-T G.711's reference values: u-law 0xFF and 0x7F are the two zeros, 0x00 the most negative
    assert ULAW_TABLE[0xFF] == 0 and ULAW_TABLE[0x7F] == 0
    assert ULAW_TABLE[0x00] * 32768 == -32124 and ULAW_TABLE[0x80] * 32768 == 32124
    # A-law 0xD5 is the smallest positive step, 0x55 the smallest negative, 0xAA the largest
    assert ALAW_TABLE[0xD5] * 32768 == 8 and ALAW_TABLE[0x55] * 32768 == -8
    assert ALAW_TABLE[0xAA] * 32768 == 32256


def test_frames_that_are_not_base64_or_not_whole_samples_are_refused() -> None:
    with pytest.raises(ProtocolError, match="base64"):
        decode_frame("not base64!", PCM16)
    with pytest.raises(ProtocolError, match="odd"):
        decode_frame(base64.b64encode(b"\x00\x01\x02").decode(), PCM16)
    assert decode_frame(base64.b64encode(b"\x00\x80\xff\x7f").decode(), PCM16).tolist() == [-1.0, 32767 / 32768]


def test_turns_follow_threshold_hysteresis_and_silence_duration() -> None:
    detector = TurnDetector(ServerVad(threshold=0.5, silence_duration_ms=96))  # three chunks of silence
    speech = np.array([0.1, 0.9, 0.9, 0.4, 0.9, 0.2, 0.2, 0.2, 0.1])
    turns = detector.feed(speech, 1000)
    # starts at the first chunk over 0.5; 0.4 is above 0.5 - 0.15, so no silence; stops after three quiet chunks
    assert [(turn.started, turn.position) for turn in turns] == [
        (True, 1000 + CHUNK_SAMPLES),
        (False, 1000 + 8 * CHUNK_SAMPLES),
    ]
