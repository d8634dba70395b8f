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
    """A slice `[start, end)` of one request's waveform, in samples, or speech spans of it joined together."""

    request_index: int
    start: int
    end: int
    # VAD joins speech that lies apart in the file into one window: the (start, end) spans, in file samples,
    # whose concatenation the model hears; empty means the one span [start, end)
    spans: tuple[tuple[int, int], ...] = ()

    @property
    def pieces(self) -> tuple[tuple[int, int], ...]:
        return self.spans or ((self.start, self.end),)

    @property
    def length(self) -> int:
        """Samples of audio the model hears."""
        return sum(end - start for start, end in self.pieces)

    @property
    def offset_seconds(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def duration_seconds(self) -> float:
        return self.length / SAMPLE_RATE

    def audio(self, waveform: np.ndarray) -> np.ndarray:
        if not self.spans:
            return waveform[self.start : self.end]
        return np.concatenate([waveform[start:end] for start, end in self.spans])

    def file_seconds(self, seconds: float, starting: bool = False) -> float:
        """A time in the window's audio as a time in the file, clamped to the window's audio.

        At the junction of two spans a start belongs to the later span, an end to the earlier one.
        """
        position = min(max(seconds * SAMPLE_RATE, 0.0), self.length)
        for start, end in self.pieces:
            if position < end - start or (position == end - start and not starting):
                return (start + position) / SAMPLE_RATE
            position -= end - start
        return self.end / SAMPLE_RATE

    def window_seconds(self, file_seconds: float) -> float:
        """The inverse of `file_seconds`: a file time as a time in the window's audio (negative before it)."""
        position = file_seconds * SAMPLE_RATE
        heard = 0
        for start, end in self.pieces:
            if position < start:
                # before the first span: negative; in a gap between spans: the junction
                return (heard + (position - start if heard == 0 else 0)) / SAMPLE_RATE
            if position <= end:
                return (heard + position - start) / SAMPLE_RATE
            heard += end - start
        return (heard + position - self.end) / SAMPLE_RATE

    def after(self, heard: int) -> Window:
        """The rest of the window from `heard` samples into its audio: what a follow-up decode hears."""
        spans = []
        for start, end in self.pieces:
            if heard < end - start:
                spans.append((start + max(heard, 0), end))
            heard -= end - start
        return Window(self.request_index, spans[0][0], spans[-1][1], tuple(spans) if len(spans) > 1 else ())


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


def split_waveform(waveform: np.ndarray, request_index: int = 0, window_samples: int = N_SAMPLES) -> list[Window]:
    """Cover `waveform` with consecutive windows of at most `window_samples` (30 s), cut at quiet points."""
    search = int(BOUNDARY_SEARCH_SECONDS * SAMPLE_RATE)
    windows: list[Window] = []
    start = 0
    while len(waveform) - start > window_samples:
        limit = start + window_samples
        cut = limit - search + quietest_sample(waveform[limit - search : limit])
        windows.append(Window(request_index, start, cut))
        start = cut
    windows.append(Window(request_index, start, len(waveform)))
    return windows
