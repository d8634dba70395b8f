"""Windowing: long waveforms become contiguous windows of at most 30 s, cut in pauses."""

from __future__ import annotations

import itertools

import numpy as np
from whisper.audio import N_SAMPLES, SAMPLE_RATE

from app.worker.windows import BOUNDARY_SEARCH_SECONDS, Window, quietest_sample, split_waveform


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def test_short_audio_is_one_window() -> None:
    [window] = split_waveform(tone(12.5), request_index=3)
    assert (window.request_index, window.start, window.end) == (3, 0, int(12.5 * SAMPLE_RATE))


def test_exactly_thirty_seconds_is_one_window() -> None:
    assert len(split_waveform(tone(30))) == 1


def test_windows_cover_the_waveform_contiguously_and_stay_under_thirty_seconds() -> None:
    waveform = tone(200)
    windows = split_waveform(waveform)
    assert windows[0].start == 0 and windows[-1].end == len(waveform)
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))
    assert all(0 < w.end - w.start <= N_SAMPLES for w in windows)


def test_cuts_land_in_the_pause_before_the_limit() -> None:
    # speech-like tone with a half-second pause at 27.0-27.5 s and 53.0-53.5 s
    waveform = np.concatenate([tone(27), silence(0.5), tone(25.5), silence(0.5), tone(20)])
    windows = split_waveform(waveform)
    cuts = [w.end / SAMPLE_RATE for w in windows[:-1]]
    assert len(cuts) == 2
    assert 27.0 <= cuts[0] <= 27.5
    assert 53.0 <= cuts[1] <= 53.5


def test_without_a_pause_the_cut_stays_within_the_search_region() -> None:
    windows = split_waveform(tone(45))
    assert 30 - BOUNDARY_SEARCH_SECONDS <= windows[0].end / SAMPLE_RATE <= 30


def test_quietest_sample_finds_the_gap() -> None:
    region = np.concatenate([tone(1), silence(0.3), tone(1)])
    assert 1.0 * SAMPLE_RATE <= quietest_sample(region) <= 1.3 * SAMPLE_RATE


def test_a_window_of_joined_spans_maps_its_times_to_the_file() -> None:
    s = SAMPLE_RATE
    window = Window(0, 6 * s, 60 * s, spans=((6 * s, 12 * s), (30 * s, 60 * s)))
    waveform = np.arange(61 * s, dtype=np.float32)
    assert window.length == 36 * s
    assert np.array_equal(window.audio(waveform), np.concatenate([waveform[6 * s : 12 * s], waveform[30 * s : 60 * s]]))
    # 6 s of audio heard is the junction: an end stays in the first span, a start moves to the second
    assert window.file_seconds(6.0) == 12.0
    assert window.file_seconds(6.0, starting=True) == 30.0
    assert window.file_seconds(7.5) == 31.5
    # times past the audio clamp to the window's end, never past it
    assert window.file_seconds(40.0) == 60.0
    assert window.window_seconds(31.5) == 7.5
    assert window.window_seconds(20.0) == 6.0  # in the gap: the junction
    assert window.window_seconds(5.0) == -1.0  # before the window
    assert window.after(7 * s) == Window(0, 31 * s, 60 * s)
    assert window.after(s).spans == ((7 * s, 12 * s), (30 * s, 60 * s))
