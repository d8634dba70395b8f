"""Word-level timestamps: openai-whisper's cross-attention alignment, on encoder output the batch already has.

whisper.timing re-runs the whole model per window; handing it a stand-in whose call skips the
encoder lets it align against the features computed once for the batch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from whisper.audio import HOP_LENGTH
from whisper.model import Whisper
from whisper.timing import add_word_timestamps
from whisper.tokenizer import Tokenizer

from app.contract import Segment, Word
from app.worker.windows import Window


def seconds(value: float) -> float:
    """whisper.timing returns numpy floats; responses want plain, millisecond-rounded floats."""
    return round(float(value), 3)


class _DecoderOnly:
    """The model as whisper.timing sees it, except that its input is encoder features, not a mel."""

    def __init__(self, model: Whisper) -> None:
        self._model = model

    def __getattr__(self, name: str) -> object:
        return getattr(self._model, name)

    def __call__(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self._model.decoder(tokens, features)


def add_words(
    model: Whisper,
    tokenizer: Tokenizer,
    window: Window,
    features: torch.Tensor,
    segments: list[Segment],
    last_speech: float,
) -> tuple[list[Segment], float]:
    """`segments` of one window with their words timed; returns them and the end of the last speech.

    whisper.timing works in the window's own time (the audio the model heard); times are mapped to the
    file afterwards, so windows that join speech spans (VAD) get file times too.
    """
    if not segments:
        return segments, last_speech
    records: list[dict[str, Any]] = [
        {
            "seek": 0,
            "start": window.window_seconds(s.start),
            "end": window.window_seconds(s.end),
            "tokens": list(s.tokens),
            "text": s.text,
        }
        for s in segments
    ]
    add_word_timestamps(
        segments=records,
        model=_DecoderOnly(model),
        tokenizer=tokenizer,
        mel=features,
        num_frames=window.length // HOP_LENGTH,
        last_speech_timestamp=window.window_seconds(last_speech),
    )

    def file_time(value: float, starting: bool = False) -> float:
        return seconds(window.file_seconds(float(value), starting))

    timed = []
    for segment, record in zip(segments, records, strict=True):
        words = tuple(
            Word(w["word"], file_time(w["start"], True), file_time(w["end"]), float(w["probability"]))
            for w in record["words"]
        )
        # a word's end is never before its start, nor a segment's (rounding and clamping can meet)
        words = tuple(replace(w, end=max(w.end, w.start)) for w in words)
        start = file_time(record["start"], True)
        timed.append(replace(segment, start=start, end=max(file_time(record["end"]), start), words=words))
    ends = [segment.end for segment in timed if segment.words]
    return timed, ends[-1] if ends else last_speech
