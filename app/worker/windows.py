"""Cutting long waveforms into windows of at most 30 s, at the quietest point near each boundary.

Windows of every request in a batch are decoded together; cutting in a pause keeps words whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from whisper.audio import N_SAMPLES, SAMPLE_RATE

# how far before the 30 s limit we look for a pause to cut at
BOUNDARY_SEARCH_SECONDS = 5.0
# energy is compared over frames this long; shorter frames find gaps between words, not inside them
QUIET_FRAME_SECONDS = 0.1
QUIET_HOP_SECONDS = 0.02


@dataclass(frozen=True)
class Window:
    """A slice `[start, end)` of one request's waveform, in samples."""

    request_index: int
    start: int
    end: int

    @property
    def offset_seconds(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def duration_seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


def quietest_sample(region: np.ndarray) -> int:
    """Index of the centre of the lowest-energy frame in `region`; the latest one on ties."""
    frame = int(QUIET_FRAME_SECONDS * SAMPLE_RATE)
    hop = int(QUIET_HOP_SECONDS * SAMPLE_RATE)
    if len(region) <= frame:
        return len(region)
    squares = np.concatenate(([0.0], np.cumsum(region.astype(np.float64) ** 2)))
    starts = np.arange(0, len(region) - frame + 1, hop)
    energies = squares[starts + frame] - squares[starts]
    latest_minimum = len(energies) - 1 - int(np.argmin(energies[::-1]))
    return int(starts[latest_minimum] + frame // 2)


def split_waveform(waveform: np.ndarray, request_index: int = 0) -> list[Window]:
    """Cover `waveform` with consecutive windows of at most 30 s, cut at quiet points."""
    search = int(BOUNDARY_SEARCH_SECONDS * SAMPLE_RATE)
    windows: list[Window] = []
    start = 0
    while len(waveform) - start > N_SAMPLES:
        limit = start + N_SAMPLES
        cut = limit - search + quietest_sample(waveform[limit - search : limit])
        windows.append(Window(request_index, start, cut))
        start = cut
    windows.append(Window(request_index, start, len(waveform)))
    return windows
