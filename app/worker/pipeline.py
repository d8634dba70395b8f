"""The window pipeline, one for the static engine and the continuous scheduler: a request's windows from
the split to its stitched transcript.

split -> encode -> language -> plan -> decode (the caller's: a static pass or the slots) -> settle ->
seek-back -> pack -> stitch. Both callers hold requests as `RequestWindows` and windows as
`PipelineWindow`, and a decoded window goes through `settle`, the one point where its segments become
final and its seek-back remainder is made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from whisper.audio import SAMPLE_RATE
from whisper.decoding import DecodingResult, detect_language
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer

from app.contract import NORMAL_PRIORITY, TranscriptionOptions
from app.worker.packing import joined, pack_windows
from app.worker.seek import SeekBack, seek_back
from app.worker.segments import TIME_PRECISION
from app.worker.windows import Window

if TYPE_CHECKING:
    from app.worker.engine import AudioItem

# openai-whisper transcribe()'s thresholds, so a window falls back exactly when transcribe() would
COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
# rounds of follow-up windows after the first decode; transcribe() has no limit, but a model that stops
# early again and again must not hold the batch (each round is one more encoder pass and decode)
MAX_FOLLOW_UP_ROUNDS = 8
# a rest of a window shorter than this is not decoded again: too short to hold a word, and whisper
# tends to invent one ("you") in near-empty windows
MIN_FOLLOW_UP_SECONDS = 0.5
# a follow-up starts this much before the timestamp it seeks back to: transcribe() conditions the next
# window on the text before it, which a batched decode cannot, and without that context the model's
# timestamp often falls just after a word's onset and the word ("He might...") is lost
FOLLOW_UP_LEAD_SECONDS = 0.2

# where (round, index of the first window it continues) puts a window in the transcript's order
Order = tuple[int, int]
# cuts every request's waveform into windows of at most 30 s (a request's position is its windows' request_index)
WindowSplitter = Callable[[Sequence["AudioItem"]], list[Window]]


@dataclass(frozen=True)
class DecodedWindow:
    """What a transcript keeps of one window: its final decode and, for word timestamps, its encoder features."""

    window: Window
    result: DecodingResult
    features: torch.Tensor | None = None


@dataclass
class RequestWindows:
    """One request on its way through the pipeline: its language, the windows it kept, those in flight."""

    job: AudioItem
    # asked for, English on an English-only model, or (None until then) detected from the first window
    language: str | None = None
    decoded: list[tuple[Order, DecodedWindow]] = field(default_factory=list)
    # windows of the current round not yet settled; the request is done when none is left and none is held
    pending: int = 0
    # the current round's seek-back remainders, held until its last window settles, then packed together
    held: list[tuple[Order, Window]] = field(default_factory=list)
    # windows it took so far, every round's (each is a whole encoder pass and decode)
    windows: int = 0
    # QueuedRequest.priority: the windows of live speech wait ahead of those already waiting
    priority: int = NORMAL_PRIORITY

    @property
    def options(self) -> TranscriptionOptions:
        return transcription_options(self.job)

    @property
    def done(self) -> bool:
        return self.pending == 0 and not self.held


@dataclass
class PipelineWindow:
    """One window of a request on its way through the encoder and a decoder."""

    request: RequestWindows
    window: Window
    order: Order
    features: torch.Tensor | None = None

    def audio(self) -> np.ndarray:
        return self.window.audio(self.request.job.waveform)


def transcription_options(job: AudioItem) -> TranscriptionOptions:
    if not isinstance(job.options, TranscriptionOptions):
        raise TypeError(f"a transcription pass got {type(job.options).__name__}")
    return job.options


def known_language(job: AudioItem, multilingual: bool) -> str | None:
    """The language before any audio is heard: English-only models know only English."""
    return transcription_options(job).language if multilingual else "en"


def split(requests: Sequence[RequestWindows], splitter: WindowSplitter) -> list[PipelineWindow]:
    """Every request's first windows, from the splitter in one call (VAD where it is on)."""
    windows = splitter([request.job for request in requests]) if requests else []
    items = []
    for window in windows:
        request = requests[window.request_index]
        items.append(PipelineWindow(request, window, (0, request.pending)))
        request.pending += 1
        request.windows += 1
    return items


def detect_languages(model: Whisper, items: Sequence[PipelineWindow], features: torch.Tensor) -> None:
    """A request without a language takes the one detected in its first window (features[i] is items[i]'s)."""
    rows = [row for row, item in enumerate(items) if item.request.language is None and item.order == (0, 0)]
    if not rows:
        return
    with torch.inference_mode():
        _, probabilities = detect_language(model, features[rows])
    for row, distribution in zip(rows, probabilities, strict=True):
        items[row].request.language = max(distribution, key=distribution.get)


def needs_fallback(result: DecodingResult) -> bool:
    """transcribe()'s rule: too repetitive or too improbable, unless the window is silence."""
    silent = result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob < LOGPROB_THRESHOLD
    poor = result.compression_ratio > COMPRESSION_RATIO_THRESHOLD or result.avg_logprob < LOGPROB_THRESHOLD
    return poor and not silent


def is_silence(result: DecodingResult) -> bool:
    """transcribe() skips windows the model thinks hold no speech, unless its text is confident."""
    return result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob <= LOGPROB_THRESHOLD


def rest_of_window(window: Window, back: SeekBack | None) -> Window | None:
    """The follow-up window transcribe() would decode after seeking back, or None when the window is done.

    A seek that does not move forward, or leaves too little audio, ends the window (no endless loop).
    """
    if back is None:
        return None
    heard = round((back.resume_at * TIME_PRECISION - FOLLOW_UP_LEAD_SECONDS) * SAMPLE_RATE)
    if heard <= 0 or window.length - heard < MIN_FOLLOW_UP_SECONDS * SAMPLE_RATE:
        return None
    return window.after(heard)


def settle_window(
    result: DecodingResult, window: Window, tokenizer: Tokenizer, round_number: int
) -> tuple[DecodingResult | None, Window | None]:
    """transcribe()'s handling of one window's final decode (fallback done).

    Returns what the transcript keeps of it (None for silence; else the result cut to whole segments
    where the decode stopped early) and the follow-up window for the rest of its audio (None when the
    window is done or it was the last round).
    """
    if is_silence(result):
        return None, None
    back = seek_back(result.tokens, tokenizer.timestamp_begin)
    follow_up = rest_of_window(window, back) if round_number < MAX_FOLLOW_UP_ROUNDS else None
    if follow_up is None or back is None:
        return result, None
    return replace(result, tokens=result.tokens[: back.keep]), follow_up


def settle(item: PipelineWindow, result: DecodingResult, tokenizer: Tokenizer) -> list[PipelineWindow]:
    """The settle point: `item`'s final decode (fallback done) becomes the segments its request keeps.

    Returns the request's next round: empty until the last window of this round settles, then its
    seek-back remainders packed into as few windows as fit (app/worker/packing.py). Holding them so
    makes the packing the same whatever order the round's windows end in, so the static engine and
    the scheduler decode the same windows.
    """
    request = item.request
    request.pending -= 1
    round_number, first = item.order
    kept, follow_up = settle_window(result, item.window, tokenizer, round_number)
    if kept is not None:
        words_from = item.features if request.options.word_timestamps else None
        request.decoded.append((item.order, DecodedWindow(item.window, kept, words_from)))
    item.features = None
    if follow_up is not None:
        request.held.append(((round_number + 1, first), follow_up))
    if request.pending or not request.held:
        return []
    held, request.held = request.held, []
    remainders = [window for _, window in held]
    next_round = []
    for group in pack_windows(remainders):
        order = min(held[position][0] for position in group)
        next_round.append(PipelineWindow(request, joined([remainders[position] for position in group]), order))
    request.pending = len(next_round)
    request.windows += len(next_round)
    return next_round


def stitched_order(request: RequestWindows) -> list[DecodedWindow]:
    """The request's kept windows in the transcript's order: rounds, then the windows they continue."""
    return [window for _, window in sorted(request.decoded, key=lambda pair: pair[0])]
