"""Cutting one decoded window's tokens into segments with whole-file times, as transcribe() does.

The segment shapes themselves are the contract's: every route renders them.
"""

from __future__ import annotations

from whisper.audio import HOP_LENGTH, SAMPLE_RATE
from whisper.decoding import DecodingResult
from whisper.tokenizer import Tokenizer

from app.contract import Segment
from app.worker.windows import Window

# seconds per timestamp token: the encoder halves the mel frame rate
TIME_PRECISION = 2 * HOP_LENGTH / SAMPLE_RATE


def window_segments(result: DecodingResult, window: Window, tokenizer: Tokenizer) -> list[Segment]:
    """Split one window's tokens at timestamp pairs, as transcribe() does, into file-relative segments.

    transcribe() would re-decode from the last timestamp when a window ends mid-segment; our windows
    are cut in pauses and decoded together, so a trailing unfinished segment ends at the window's end.
    """
    tokens = list(result.tokens)
    begin = tokenizer.timestamp_begin

    def segment(piece: list[int], start: float, end: float) -> Segment:
        return Segment(
            start=round(window.offset_seconds + start, 3),
            end=round(window.offset_seconds + min(end, window.duration_seconds), 3),
            text=tokenizer.decode([t for t in piece if t < tokenizer.eot]),
            tokens=tuple(piece),
            temperature=result.temperature,
            avg_logprob=result.avg_logprob,
            compression_ratio=result.compression_ratio,
            no_speech_prob=result.no_speech_prob,
            seek=window.start // HOP_LENGTH,
        )

    is_timestamp = [t >= begin for t in tokens]
    pair_ends = [i + 1 for i in range(len(tokens) - 1) if is_timestamp[i] and is_timestamp[i + 1]]
    if not pair_ends:
        stamps = [t - begin for t in tokens if t >= begin]
        end = stamps[-1] * TIME_PRECISION if stamps and stamps[-1] > 0 else window.duration_seconds
        return [segment(tokens, 0.0, end)] if tokens else []
    segments = []
    last = 0
    for current in pair_ends:
        piece = tokens[last:current]
        segments.append(
            segment(
                piece,
                (piece[0] - begin) * TIME_PRECISION,
                (piece[-1] - begin) * TIME_PRECISION,
            )
        )
        last = current
    tail = tokens[last:]
    if any(t < begin for t in tail):
        start = (tail[0] - begin) * TIME_PRECISION if tail[0] >= begin else segments[-1].end - window.offset_seconds
        # a single closing timestamp ends the segment; without one it runs to the window's end
        end = (tail[-1] - begin) * TIME_PRECISION if tail[-1] >= begin else window.duration_seconds
        segments.append(segment(tail, start, end))
    return [s for s in segments if s.text.strip()]
