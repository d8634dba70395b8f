"""Rendering a transcript as json, verbose_json, text, srt, vtt or tsv: every wire format in one place.

SRT writes a comma before milliseconds, VTT a dot and a WEBVTT header; both always carry hours.
"""

from __future__ import annotations

from whisper.tokenizer import LANGUAGES
from whisper.utils import format_timestamp

from app.worker.segments import Segment, Transcript

TEXT_FORMATS = ("text", "srt", "vtt", "tsv")
JSON_FORMATS = ("json", "verbose_json")
RESPONSE_FORMATS = (*JSON_FORMATS, *TEXT_FORMATS)
MEDIA_TYPES = {
    "text": "text/plain",
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
    "tsv": "text/tab-separated-values",
}


def _cue_text(segment: Segment) -> str:
    # a literal arrow inside a cue would read as a timing line
    return segment.text.strip().replace("-->", "->")


def to_text(transcript: Transcript) -> str:
    return transcript.text + "\n"


def to_srt(transcript: Transcript) -> str:
    cues = [
        f"{number}\n{format_timestamp(s.start, True, ',')} --> {format_timestamp(s.end, True, ',')}\n{_cue_text(s)}\n"
        for number, s in enumerate(transcript.segments, start=1)
    ]
    return "\n".join(cues)


def to_vtt(transcript: Transcript) -> str:
    cues = [
        f"{format_timestamp(s.start, True)} --> {format_timestamp(s.end, True)}\n{_cue_text(s)}\n"
        for s in transcript.segments
    ]
    return "\n".join(["WEBVTT\n", *cues])


def to_tsv(transcript: Transcript) -> str:
    """openai-whisper's TSV: integer milliseconds, so spreadsheets keep full precision."""
    rows = [
        f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{_cue_text(s).replace(chr(9), ' ')}"
        for s in transcript.segments
    ]
    return "start\tend\ttext\n" + "".join(row + "\n" for row in rows)


RENDER_TEXT = {"text": to_text, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv}


def language_name(code: str) -> str:
    """OpenAI's verbose_json names the language ("english"), not its code."""
    return LANGUAGES.get(code, code)


def verbose_json(transcript: Transcript, task: str, include_words: bool) -> dict:
    body: dict = {
        "task": task,
        "language": language_name(transcript.language),
        "duration": transcript.duration,
        "text": transcript.text,
        "segments": [
            {
                "id": number,
                "seek": s.seek,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            for number, s in enumerate(transcript.segments)
        ],
    }
    if include_words:
        body["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end} for s in transcript.segments for w in s.words
        ]
    return body
