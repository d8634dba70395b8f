"""Packing: speech regions and seek-back remainders in, as few windows of at most 30 s as keep file order out,
and every time in a packed window mapped back to the file exactly."""

from __future__ import annotations

import numpy as np
import torch
from whisper.audio import N_SAMPLES, SAMPLE_RATE
from whisper.decoding import DecodingResult
from whisper.tokenizer import get_tokenizer

from app.contract import TranscriptionOptions
from app.worker.engine import AudioItem
from app.worker.packing import joined, pack_spans, pack_windows
from app.worker.pipeline import PipelineWindow, RequestWindows, settle
from app.worker.segments import window_segments
from app.worker.windows import Window

S = SAMPLE_RATE


def decoded(tokens: list[int]) -> DecodingResult:
    return DecodingResult(
        audio_features=torch.zeros(1), language="en", tokens=tokens, temperature=0.0, avg_logprob=-0.2,
        compression_ratio=1.2, no_speech_prob=0.01,
    )  # fmt: skip


def test_speech_regions_are_packed_into_windows_of_at_most_thirty_seconds() -> None:
    spans = [(0, 10 * S), (40 * S, 55 * S), (70 * S, 80 * S), (100 * S, 128 * S)]
    windows = pack_spans(spans, request_index=2)
    assert windows == [
        Window(2, 0, 55 * S, spans=((0, 10 * S), (40 * S, 55 * S))),
        Window(2, 70 * S, 80 * S),
        Window(2, 100 * S, 128 * S),
    ]
    assert all(w.length <= N_SAMPLES for w in windows)


def test_many_short_regions_share_windows_and_touching_ones_merge() -> None:
    # twelve 4 s utterances 10 s apart: 48 s of speech in two windows, not twelve
    spans = [(10 * i * S, (10 * i + 4) * S) for i in range(12)]
    windows = pack_spans(spans, request_index=0)
    assert [w.length for w in windows] == [28 * S, 20 * S]
    assert [len(w.pieces) for w in windows] == [7, 5]
    # padded spans that touch or overlap become one span
    assert pack_spans([(0, 5 * S), (5 * S, 9 * S), (8 * S, 12 * S)], 0) == [Window(0, 0, 12 * S)]
    # a region longer than a window is cut into windows of 30 s
    assert [w.length for w in pack_spans([(0, 70 * S)], 0)] == [30 * S, 30 * S, 10 * S]


def test_remainders_are_packed_in_file_order() -> None:
    remainders = [
        Window(0, 50 * S, 60 * S),
        Window(0, 20 * S, 30 * S),
        Window(0, 80 * S, 90 * S),
        Window(0, 95 * S, 100 * S),
    ]
    groups = pack_windows(remainders)
    assert groups == [[1, 0, 2], [3]]
    window = joined([remainders[p] for p in groups[0]])
    assert window.pieces == ((20 * S, 30 * S), (50 * S, 60 * S), (80 * S, 90 * S))
    assert window.length == N_SAMPLES


def test_segments_of_a_packed_window_map_back_to_file_times_exactly() -> None:
    tokenizer = get_tokenizer(multilingual=False)
    stamp = tokenizer.timestamp_begin
    window = joined([Window(3, 20 * S, 30 * S), Window(3, 52 * S, 60 * S)])
    hello, world = tokenizer.encode(" hello"), tokenizer.encode(" world")
    # one segment in the first piece (0.0-9.5 s), one in the second (10.0-17.0 s of the window's audio)
    tokens = [stamp, *hello, stamp + 475, stamp + 500, *world, stamp + 850]
    segments = window_segments(decoded(tokens), window, tokenizer)
    assert [(s.start, s.end, s.text) for s in segments] == [(20.0, 29.5, " hello"), (52.0, 59.0, " world")]
    # the junction itself: a start belongs to the later piece, an end to the earlier one
    assert window.file_seconds(10.0, starting=True) == 52.0
    assert window.file_seconds(10.0) == 30.0
    for seconds in (0.0, 3.25, 9.98, 10.02, 17.5):
        assert window.window_seconds(window.file_seconds(seconds, starting=True)) == seconds


def test_a_rounds_remainders_are_packed_once_its_last_window_settles() -> None:
    """Held until the round ends, so the packing is the same whatever order its windows end in."""
    tokenizer = get_tokenizer(multilingual=False)
    stamp = tokenizer.timestamp_begin
    words = tokenizer.encode(" some words")
    waveform = np.zeros(90 * S, dtype=np.float32)
    for ending in ([0, 1, 2], [2, 0, 1]):
        request = RequestWindows(AudioItem(waveform, TranscriptionOptions(language="en")), "en")
        items = [PipelineWindow(request, Window(0, 30 * i * S, 30 * (i + 1) * S), (0, i)) for i in range(3)]
        request.pending = 3
        # each window's decode stops inside an open segment: a whole segment to 25 s, then more words
        tokens = [stamp, *words, stamp + 1250, stamp + 1250, *words]
        released = [settle(items[i], decoded(tokens), tokenizer) for i in ending]
        assert released[0] == [] and released[1] == []
        [follow_up] = released[2]
        assert follow_up.order == (1, 0)
        assert follow_up.window.pieces == tuple((30 * i * S + round(24.8 * S), 30 * (i + 1) * S) for i in range(3))
        assert request.pending == 1 and not request.done
        assert [order for order, _ in sorted(request.decoded, key=lambda pair: pair[0])] == [(0, 0), (0, 1), (0, 2)]
