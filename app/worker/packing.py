"""Packing audio into as few windows as possible: each window costs a whole 30 s encoder pass and a
1,500-frame cross-attention at every token, however little audio it holds.

Speech regions of one request (VAD's spans, seek-back's remainders) are joined in file order into
windows of at most 30 s of audio, as faster-whisper's batched pipeline and WhisperX merge VAD chunks;
the silence between them is left out, and `Window.file_seconds` maps every time back to the file.
"""

from __future__ import annotations

from collections.abc import Sequence

from whisper.audio import N_SAMPLES

from app.worker.windows import Window

Span = tuple[int, int]


def pack_spans(spans: Sequence[Span], request_index: int, window_samples: int = N_SAMPLES) -> list[Window]:
    """Spans of one request (in file order, samples) joined into windows of at most `window_samples`.

    A span longer than a window is cut into pieces of a window each; touching or overlapping spans
    become one span.
    """
    windows: list[Window] = []
    current: list[Span] = []
    for start, end in spans:
        for piece_start in range(start, end, window_samples):
            piece = (piece_start, min(piece_start + window_samples, end))
            if current and heard(current) + piece[1] - piece[0] > window_samples:
                windows.append(joined_window(current, request_index))
                current = []
            if current and piece[0] <= current[-1][1]:
                current[-1] = (current[-1][0], max(current[-1][1], piece[1]))
            else:
                current.append(piece)
    if current:
        windows.append(joined_window(current, request_index))
    return windows


def pack_windows(windows: Sequence[Window], window_samples: int = N_SAMPLES) -> list[list[int]]:
    """Which of one request's `windows` (disjoint, any order) share a window: groups of positions, each
    group's audio at most `window_samples` and in file order; the groups in file order of their first.

    Greedy in file order, the fewest windows any packing that keeps the file order can make.
    """
    order = sorted(range(len(windows)), key=lambda position: windows[position].start)
    groups: list[list[int]] = []
    filled = 0
    for position in order:
        length = windows[position].length
        if groups and filled + length <= window_samples:
            groups[-1].append(position)
            filled += length
        else:
            groups.append([position])
            filled = length
    return groups


def joined(windows: Sequence[Window]) -> Window:
    """One window hearing `windows` (of one request, in file order) one after the other."""
    spans = [piece for window in windows for piece in window.pieces]
    return joined_window(spans, windows[0].request_index)


def heard(spans: Sequence[Span]) -> int:
    return sum(end - start for start, end in spans)


def joined_window(spans: Sequence[Span], request_index: int) -> Window:
    merged: list[Span] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return Window(request_index, merged[0][0], merged[-1][1], tuple(merged) if len(merged) > 1 else ())
