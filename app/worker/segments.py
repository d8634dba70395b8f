"""Cutting one decoded window's tokens into segments with whole-file times, as transcribe() does.

The segment shapes themselves are the contract's: every route renders them.
"""

from __future__ import annotations

from dataclasses import replace

from whisper.audio import HOP_LENGTH, SAMPLE_RATE
from whisper.decoding import DecodingResult
from whisper.tokenizer import Tokenizer

from app.contract import Segment
from app.worker.windows import Window

# seconds per timestamp token: the encoder halves the mel frame rate
TIME_PRECISION = 2 * HOP_LENGTH / SAMPLE_RATE


def window_segments(result: DecodingResult, window: Window, tokenizer: Tokenizer) -> list[Segment]:
    """Split one window's tokens at timestamp pairs, as transcribe() does, into file-relative segments.

    A trailing segment without a closing timestamp ends at the window's end; the engine passes only
    whole segments when it decodes the rest of the window again (app/worker/seek.py).
    Every segment has start <= end, both inside the window's audio.
    """
    tokens = list(result.tokens)
    begin = tokenizer.timestamp_begin

    def segment(piece: list[int], start: float, end: float) -> Segment:
        start = min(max(start, 0.0), window.duration_seconds)
        end = min(max(end, start), window.duration_seconds)
        return Segment(
            start=round(window.file_seconds(start, starting=True), 3),
            end=round(window.file_seconds(end), 3),
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
    last_end = 0.0
    for current in pair_ends:
        piece = tokens[last:current]
        last_end = (piece[-1] - begin) * TIME_PRECISION
        segments.append(segment(piece, (piece[0] - begin) * TIME_PRECISION, last_end))
        last = current
    tail = tokens[last:]
    if any(t < begin for t in tail):
        start = (tail[0] - begin) * TIME_PRECISION if tail[0] >= begin else last_end
        # a single closing timestamp ends the segment; without one it runs to the window's end
        end = (tail[-1] - begin) * TIME_PRECISION if tail[-1] >= begin else window.duration_seconds
        segments.append(segment(tail, start, end))
    return [s for s in segments if s.text.strip()]


def in_order(segments: list[Segment], duration: float) -> list[Segment]:
    """Segments sorted by start, every time inside [0, duration], no end before its start, none overlapping.

    Windows and their follow-ups finish in any order, and word alignment may nudge a time past the
    audio's end; responses (SRT, VTT) need monotone, well-formed times.
    """

    def clamp(value: float, low: float = 0.0) -> float:
        return round(min(max(value, low), duration), 3)

    tidy = []
    # words never go back in time, across segments too: a follow-up window starts a little before the
    # timestamp it continues from (FOLLOW_UP_LEAD_SECONDS), and its first word may be timed in that overlap
    floor = 0.0
    for segment in sorted(segments, key=lambda s: (s.start, s.end)):
        start = clamp(segment.start)
        words = []
        for word in segment.words:
            word_start = clamp(word.start, floor)
            floor = clamp(word.end, word_start)
            words.append(replace(word, start=word_start, end=floor))
        end = clamp(segment.end, max(start, words[-1].end if words else start))
        tidy.append(replace(segment, start=start, end=end, words=tuple(words)))
    return without_overlaps(tidy)


def without_overlaps(segments: list[Segment]) -> list[Segment]:
    """Sorted segments with each one ending no later than the next begins (its words cut there too).

    A segment left open at its window's end runs to that end (window_segments), while the next window, or the
    follow-up that decodes the rest, starts where speech does: the earlier end is the guess, so it gives way.
    """
    cut = []
    for index, segment in enumerate(segments):
        following = segments[index + 1] if index + 1 < len(segments) else None
        if following is None or segment.end <= following.start:
            cut.append(segment)
            continue
        end = max(segment.start, following.start)
        words = tuple(replace(w, start=min(w.start, end), end=min(w.end, end)) for w in segment.words)
        cut.append(replace(segment, end=end, words=words))
    return cut
