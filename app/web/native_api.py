"""This service's own routes: POST /transcribe and POST /detect-language, their fields and responses.

/transcribe keeps its original JSON as the default and offers every other format on request.
"""

from __future__ import annotations

from fastapi import Response
from fastapi.responses import JSONResponse, PlainTextResponse

from app.errors import ItemError
from app.web.formats import MEDIA_TYPES, RENDER_TEXT, RESPONSE_FORMATS, verbose_json
from app.web.forms import Plan, boolean_field, choice_field, language_field, prompt_field, temperature_field
from app.web.uploads import Upload
from app.worker.engine import TASKS, LanguageDetection, LanguageGuess, TranscriptionOptions
from app.worker.segments import Transcript

TRANSCRIBE_PATH = "/transcribe"
DETECT_LANGUAGE_PATH = "/detect-language"


def transcript_body(transcript: Transcript, include_words: bool) -> dict:
    """The default /transcribe response; words appear inside segments when asked for."""

    def segment(s) -> dict:
        body = {"start": s.start, "end": s.end, "text": s.text.strip()}
        if include_words:
            body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end} for w in s.words]
        return body

    return {
        "transcription": transcript.text,
        "language": transcript.language,
        "duration": transcript.duration,
        "segments": [segment(s) for s in transcript.segments],
    }


def transcribe_plan(upload: Upload) -> Plan:
    fields = upload.fields
    # "output" is the name whisper-asr-webservice clients send
    response_format = choice_field(
        {"response_format": fields.get("response_format") or fields.get("output", "")},
        "response_format",
        ("transcription_json", *RESPONSE_FORMATS),
        "transcription_json",
    )
    options = TranscriptionOptions(
        language=language_field(fields),
        task=choice_field(fields, "task", TASKS, "transcribe"),
        prompt=prompt_field(fields, "prompt", "initial_prompt"),
        temperature=temperature_field(fields),
        word_timestamps=boolean_field(fields, "word_timestamps"),
    )

    def render(transcript: Transcript) -> Response:
        if response_format in RENDER_TEXT:
            return PlainTextResponse(RENDER_TEXT[response_format](transcript), media_type=MEDIA_TYPES[response_format])
        if response_format == "verbose_json":
            return JSONResponse(verbose_json(transcript, options.task, options.word_timestamps))
        if response_format == "json":
            return JSONResponse({"text": transcript.text})
        return JSONResponse(transcript_body(transcript, options.word_timestamps))

    return Plan(options, render)


def detect_language_plan(upload: Upload) -> Plan:
    def render(guess: LanguageGuess) -> Response:
        return JSONResponse(
            {
                "language": guess.language,
                "probability": guess.probability,
                "candidates": [{"language": code, "probability": p} for code, p in guess.candidates],
            }
        )

    return Plan(LanguageDetection(), render)


def error_response(error: ItemError) -> JSONResponse:
    body = {"detail": error.message, "reason": error.reason.value}
    if error.param:
        body["param"] = error.param
    return JSONResponse(body, status_code=error.status)
