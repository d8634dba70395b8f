"""ffmpeg decoding of uploads: formats, durations, and errors that name the problem."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import numpy as np
import pytest
from whisper.audio import SAMPLE_RATE

from app.contract import Reason, read_waveform
from app.web.audio import check_samples, decode_upload, ffmpeg_decode_command
from app.web.errors import RequestError, status_of
from harness.speech import duration_seconds


def decode(source: Path, tmp_path: Path) -> tuple[float, np.ndarray]:
    destination = tmp_path / "out.f32"
    duration = asyncio.run(decode_upload(source, destination, timeout=60))
    return duration, read_waveform(destination)


@pytest.mark.parametrize("fixture", ["fox_wav", "fox_mp3", "fox_ogg"])
def test_formats_decode_to_16khz_mono_float32(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    source = request.getfixturevalue(fixture)
    duration, waveform = decode(source, tmp_path)
    assert waveform.dtype == np.float32
    assert len(waveform) == pytest.approx(duration * SAMPLE_RATE)
    # mp3 and ogg add encoder padding of a few tens of milliseconds
    assert duration == pytest.approx(duration_seconds(source), abs=0.1)
    assert 0.05 < np.abs(waveform).max() <= 1.0


def test_stereo_44k_is_downmixed_and_resampled(fox_wav: Path, tmp_path: Path) -> None:
    stereo = tmp_path / "stereo.wav"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(fox_wav), "-ac", "2", "-ar", "44100", str(stereo)],
        check=True,
    )
    duration, _ = decode(stereo, tmp_path)
    assert duration == pytest.approx(duration_seconds(fox_wav), abs=0.05)


def test_command_asks_ffmpeg_for_raw_16khz_mono(tmp_path: Path) -> None:
    command = ffmpeg_decode_command(tmp_path / "in")
    assert command[0] == "ffmpeg"
    for flag, value in (("-ar", str(SAMPLE_RATE)), ("-ac", "1"), ("-f", "f32le")):
        assert command[command.index(flag) + 1] == value


def expect_error(source: Path, tmp_path: Path) -> RequestError:
    with pytest.raises(RequestError) as raised:
        decode(source, tmp_path)
    assert str(tmp_path) not in raised.value.error.message, "server paths must not reach the client"
    return raised.value


def test_empty_upload(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert expect_error(empty, tmp_path).error.reason is Reason.EMPTY_UPLOAD


def test_random_bytes(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    error = expect_error(garbage, tmp_path).error
    assert error.reason is Reason.UNREADABLE_AUDIO
    assert status_of(error) == 415
    assert "not decodable audio" in error.message


def test_truncated_file(fox_mp3: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(b"RIFF\x24\x08\x00\x00WAVEfmt ")
    assert expect_error(truncated, tmp_path).error.reason is Reason.UNREADABLE_AUDIO


def test_video_without_audio(tmp_path: Path) -> None:
    video = tmp_path / "silent.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=1:size=64x64:rate=5",
            str(video),
        ],
        check=True,
    )
    assert expect_error(video, tmp_path).error.reason is Reason.NO_AUDIO


def test_text_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio at all\n" * 20)
    assert status_of(expect_error(text, tmp_path).error) == 415


@pytest.mark.parametrize(
    ("poison", "words"), [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (1e30, "magnitude over")]
)
def test_samples_no_recording_holds_are_refused(tmp_path: Path, poison: float, words: str) -> None:
    waveform = np.zeros(SAMPLE_RATE, dtype=np.float32)
    waveform[100] = poison
    path = tmp_path / "poisoned.f32"
    waveform.tofile(path)
    with pytest.raises(RequestError) as refused:
        check_samples(path)
    assert refused.value.error.reason is Reason.INVALID_SAMPLES and words in str(refused.value)
    # a little overshoot past full scale is real audio
    np.full(SAMPLE_RATE, 1.5, dtype=np.float32).tofile(path)
    check_samples(path)
