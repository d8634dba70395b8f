"""Renderers against hand-checked files: SRT commas, VTT dots and header, TSV milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.contract import Segment, Transcript, Word
from app.web.formats import TEXT_WRITERS, format_timestamp, to_text, verbose_json

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


def test_the_contracts_audio_constants_and_languages_are_openai_whispers() -> None:
    import whisper.audio
    import whisper.tokenizer

    from app import contract

    assert (contract.SAMPLE_RATE, contract.HOP_LENGTH) == (whisper.audio.SAMPLE_RATE, whisper.audio.HOP_LENGTH)
    assert contract.LANGUAGES == whisper.tokenizer.LANGUAGES
    assert contract.TO_LANGUAGE_CODE == whisper.tokenizer.TO_LANGUAGE_CODE


@pytest.mark.parametrize("seconds", [0.0, 0.0005, 1.9995, 59.9999, 3599.9996, 3600.0, 86400.123, 1234.5678])
def test_timestamps_are_written_as_openai_whisper_writes_them(seconds: float) -> None:
    import whisper.utils

    for hours in (True, False):
        for marker in (".", ","):
            assert format_timestamp(seconds, hours, marker) == whisper.utils.format_timestamp(seconds, hours, marker)
