"""Renderers against hand-checked files: SRT commas, VTT dots and header, TSV milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.contract import Segment, Transcript, Word
from app.web.formats import TEXT_WRITERS, to_text, verbose_json

EXPECTED = Path(__file__).parent / "data"


def segment(start: float, end: float, text: str, words: tuple[Word, ...] = ()) -> Segment:
    return Segment(start, end, text, (50364, 440), 0.0, -0.25, 1.1, 0.02, seek=int(start * 100), words=words)


@pytest.fixture
def transcript() -> Transcript:
    return Transcript(
        text="The quick brown fox. Jumps --> over the lazy dog. An hour later.",
        language="en",
        duration=3725.0,
        segments=[
            segment(0.0, 3.32, " The quick brown fox.", (Word(" The", 0.0, 0.4, 0.9), Word(" quick", 0.4, 0.8, 0.8))),
            segment(3.32, 7.005, " Jumps --> over the lazy dog."),
            segment(3723.45, 3725.0, " An hour later."),
        ],
    )


@pytest.mark.parametrize("response_format", ["srt", "vtt", "tsv"])
def test_matches_the_hand_checked_file(transcript: Transcript, response_format: str) -> None:
    expected = (EXPECTED / f"expected.{response_format}").read_text()
    assert TEXT_WRITERS[response_format](transcript) == expected


def test_text_is_the_transcript_and_a_newline(transcript: Transcript) -> None:
    assert to_text(transcript) == transcript.text + "\n"


def test_verbose_json_carries_openai_fields(transcript: Transcript) -> None:
    body = verbose_json(transcript, "transcribe", include_words=True)
    assert (body["task"], body["language"], body["duration"]) == ("transcribe", "english", 3725.0)
    first = body["segments"][0]
    assert set(first) == {
        "id",
        "seek",
        "start",
        "end",
        "text",
        "tokens",
        "temperature",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
    }
    assert [s["id"] for s in body["segments"]] == [0, 1, 2]
    assert body["words"] == [{"word": "The", "start": 0.0, "end": 0.4}, {"word": "quick", "start": 0.4, "end": 0.8}]
    assert "words" not in verbose_json(transcript, "transcribe", include_words=False)
