"""Windowing: long waveforms become contiguous windows of at most 30 s, cut in pauses."""

from __future__ import annotations

import itertools

import numpy as np
from whisper.audio import N_SAMPLES, SAMPLE_RATE

from app.worker.windows import BOUNDARY_SEARCH_SECONDS, quietest_sample, split_waveform


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
