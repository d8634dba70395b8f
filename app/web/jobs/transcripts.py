"""Transcripts as the job store keeps them (JSON), and one job's windows joined into the file's transcript.

Each window is transcribed alone, as a request of its own; its times are moved to the whole file's clock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace

from app.contract import HOP_LENGTH, SAMPLE_RATE, Segment, Transcript, Word


def transcript_to_json(transcript: Transcript) -> str:
    return json.dumps(asdict(transcript))


def transcript_from_json(text: str) -> Transcript:
    fields = json.loads(text)
    segments = [
        Segment(
            **{
                **segment,
                "tokens": tuple(segment["tokens"]),
                "words": tuple(Word(**word) for word in segment["words"]),
            }
        )
        for segment in fields.pop("segments")
    ]
    return Transcript(**fields, segments=segments)


def shifted(transcript: Transcript, offset_samples: int) -> Transcript:
    """A window's transcript with its times moved from the window's start to the file's."""
    seconds = offset_samples / SAMPLE_RATE

    def move(segment: Segment) -> Segment:
        words = tuple(replace(w, start=w.start + seconds, end=w.end + seconds) for w in segment.words)
        return replace(
            segment,
            start=segment.start + seconds,
            end=segment.end + seconds,
            seek=segment.seek + offset_samples // HOP_LENGTH,
            words=words,
        )

    return replace(transcript, segments=[move(segment) for segment in transcript.segments])


def joined(windows: Sequence[Transcript], duration: float) -> Transcript:
    """The whole file's transcript from its windows' (already shifted), joined as the engine joins them."""
    segments = [segment for window in windows for segment in window.segments]
    return Transcript(
        text="".join(segment.text for segment in segments).strip(),
        language=windows[0].language,
        duration=duration,
        segments=segments,
    )
