"""Rendering a transcript in every response format, one writer per format, shared by both wire protocols.

SRT writes a comma before milliseconds, VTT a dot and a WEBVTT header; both always carry hours.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Response
from fastapi.responses import JSONResponse, PlainTextResponse

from app.contract import LANGUAGES, Segment, Transcript

# /transcribe's own default: {"transcription", "language", "duration", "segments"}
TRANSCRIPTION_JSON = "transcription_json"
TEXT_FORMATS = ("text", "srt", "vtt", "tsv")
JSON_FORMATS = ("json", "verbose_json", "diarized_json")
RESPONSE_FORMATS = (*JSON_FORMATS, *TEXT_FORMATS)
MEDIA_TYPES = {
    "text": "text/plain",
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
    "tsv": "text/tab-separated-values",
}


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    """`[HH:]MM:SS.mmm`, as openai-whisper's writers print a time (rounded to the millisecond)."""
    milliseconds = round(seconds * 1000.0)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    whole_seconds, milliseconds = divmod(milliseconds, 1_000)
    hours_marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_marker}{minutes:02d}:{whole_seconds:02d}{decimal_marker}{milliseconds:03d}"


def _cue_text(segment: Segment) -> str:
    # a literal arrow inside a cue would read as a timing line
    return segment.text.strip().replace("-->", "->")


def _srt_cue_text(segment: Segment) -> str:
    return f"{segment.speaker}: {_cue_text(segment)}" if segment.speaker else _cue_text(segment)


def _vtt_cue_text(segment: Segment) -> str:
    """WebVTT's voice span names the speaker; `>` and `&` would end or escape the tag's annotation."""
    if not segment.speaker:
        return _cue_text(segment)
    voice = segment.speaker.replace("&", "&amp;").replace(">", "&gt;")
    return f"<v {voice}>{_cue_text(segment)}"


def to_text(transcript: Transcript) -> str:
    return transcript.text + "\n"


def to_srt(transcript: Transcript) -> str:
    cues = [
        f"{number}\n{format_timestamp(s.start, True, ',')} --> {format_timestamp(s.end, True, ',')}\n"
        f"{_srt_cue_text(s)}\n"
        for number, s in enumerate(transcript.segments, start=1)
    ]
    return "\n".join(cues)


def to_vtt(transcript: Transcript) -> str:
    cues = [
        f"{format_timestamp(s.start, True)} --> {format_timestamp(s.end, True)}\n{_vtt_cue_text(s)}\n"
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


TEXT_WRITERS: dict[str, Callable[[Transcript], str]] = {"text": to_text, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv}


def language_name(code: str) -> str:
    """OpenAI's verbose_json names the language ("english"), not its code."""
    return LANGUAGES.get(code, code)


def verbose_json(transcript: Transcript, task: str, include_words: bool) -> dict[str, object]:
    body: dict[str, object] = {
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
                **({"speaker": s.speaker} if s.speaker else {}),
            }
            for number, s in enumerate(transcript.segments)
        ],
    }
    if include_words:
        body["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end} for s in transcript.segments for w in s.words
        ]
    return body


def transcription_json(transcript: Transcript, include_words: bool) -> dict[str, object]:
    """The default /transcribe response; words appear inside segments when asked for."""

    def segment(s: Segment) -> dict[str, object]:
        body: dict[str, object] = {"start": s.start, "end": s.end, "text": s.text.strip()}
        if s.speaker:
            body["speaker"] = s.speaker
        if include_words:
            body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end} for w in s.words]
        return body

    return {
        "transcription": transcript.text,
        "language": transcript.language,
        "duration": transcript.duration,
        "segments": [segment(s) for s in transcript.segments],
    }


def diarized_json(transcript: Transcript) -> dict[str, object]:
    """OpenAI's diarized_json: segments of type transcript.text.segment, each with its speaker."""
    return {
        "task": "transcribe",
        "duration": transcript.duration,
        "text": transcript.text,
        "segments": [
            {
                "type": "transcript.text.segment",
                "id": f"seg_{number}",
                "start": s.start,
                "end": s.end,
                "text": s.text.strip(),
                "speaker": s.speaker or "A",
            }
            for number, s in enumerate(transcript.segments)
        ],
        "usage": {"type": "duration", "seconds": transcript.duration},
    }


# a response's content: a JSON object, or the text of a text format
Body = dict[str, object] | str
# (transcript, task, include_words) -> the body of one response format
BodyWriter = Callable[[Transcript, str, bool], Body]


def text_body(write: Callable[[Transcript], str]) -> BodyWriter:
    return lambda transcript, task, include_words: write(transcript)


# one writer per response format; both protocols use them, and a job's status embeds the body
BODY_WRITERS: dict[str, BodyWriter] = {
    TRANSCRIPTION_JSON: lambda transcript, task, words: transcription_json(transcript, words),
    "json": lambda transcript, task, words: {"text": transcript.text},
    "verbose_json": verbose_json,
    "diarized_json": lambda transcript, task, words: diarized_json(transcript),
    **{name: text_body(write) for name, write in TEXT_WRITERS.items()},
}


def response_of(response_format: str, body: Body) -> Response:
    """A written body as the HTTP response of its format."""
    if isinstance(body, str):
        return PlainTextResponse(body, media_type=MEDIA_TYPES[response_format])
    return JSONResponse(body)


Writer = Callable[[Transcript, str, bool], Response]


def writer(response_format: str) -> Writer:
    write = BODY_WRITERS[response_format]
    return lambda transcript, task, words: response_of(response_format, write(transcript, task, words))


# (transcript, task, include_words) -> the response of one format
WRITERS: dict[str, Writer] = {name: writer(name) for name in BODY_WRITERS}
