"""Word-level timestamps: openai-whisper's cross-attention alignment, on encoder output the batch already has.

whisper.timing re-runs the whole model per window; handing it a stand-in whose call skips the
encoder lets it align against the features computed once for the batch.
"""

from __future__ import annotations

from dataclasses import replace

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
    """`segments` of one window with their words timed; returns them and the end of the last speech."""
    if not segments:
        return segments, last_speech
    records = [
        {"seek": window.start // HOP_LENGTH, "start": s.start, "end": s.end, "tokens": list(s.tokens), "text": s.text}
        for s in segments
    ]
    add_word_timestamps(
        segments=records,
        model=_DecoderOnly(model),
        tokenizer=tokenizer,
        mel=features,
        num_frames=(window.end - window.start) // HOP_LENGTH,
        last_speech_timestamp=last_speech,
    )
    timed = [
        replace(
            segment,
            start=seconds(record["start"]),
            end=seconds(record["end"]),
            words=tuple(
                Word(w["word"], seconds(w["start"]), seconds(w["end"]), float(w["probability"]))
                for w in record["words"]
            ),
        )
        for segment, record in zip(segments, records, strict=True)
    ]
    ends = [segment.end for segment in timed if segment.words]
    return timed, ends[-1] if ends else last_speech
