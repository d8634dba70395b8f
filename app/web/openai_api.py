"""OpenAI's audio API: POST /v1/audio/transcriptions and /v1/audio/translations, in OpenAI's wire format.

Fields, formats and the error shape follow OpenAI's public reference, so its clients work unchanged;
the work itself joins the same batches as every other route.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import Response
from fastapi.responses import JSONResponse, PlainTextResponse

from app.errors import ItemError, Reason, RequestError
from app.web.formats import MEDIA_TYPES, RENDER_TEXT, RESPONSE_FORMATS, verbose_json
from app.web.forms import Plan, bad_option, choice_field, language_field, prompt_field, temperature_field
from app.web.uploads import Upload
from app.worker.engine import TranscriptionOptions
from app.worker.segments import Transcript

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
TRANSLATIONS_PATH = "/v1/audio/translations"
# the name OpenAI clients send; any of them maps to the one model this service has loaded
OPENAI_MODEL_NAME = "whisper-1"
GRANULARITIES = ("segment", "word")


def _model_field(upload: Upload, served: Sequence[str]) -> None:
    model = (upload.fields.get("model") or "").strip()
    if not model:
        raise bad_option("model", "you must provide a model parameter")
    if model not in served:
        raise RequestError(
            Reason.UNKNOWN_MODEL, f"model {model!r} is not served here; use one of: {', '.join(served)}", "model"
        )


def _granularities(upload: Upload, response_format: str) -> set[str]:
    asked = set(upload.lists.get("timestamp_granularities", [])) or {"segment"}
    if unknown := asked - set(GRANULARITIES):
        raise bad_option(
            "timestamp_granularities", f"timestamp_granularities must be among segment, word, not {sorted(unknown)}"
        )
    if "word" in asked and response_format != "verbose_json":
        raise bad_option("timestamp_granularities", "timestamp_granularities requires response_format=verbose_json")
    return asked


def plan(upload: Upload, task: str, served: Sequence[str]) -> Plan:
    """A transcription (task="transcribe") or translation request, validated as OpenAI validates it."""
    _model_field(upload, served)
    fields = upload.fields
    response_format = choice_field(fields, "response_format", RESPONSE_FORMATS, "json")
    words = "word" in _granularities(upload, response_format)
    options = TranscriptionOptions(
        language=language_field(fields) if task == "transcribe" else None,
        task=task,
        prompt=prompt_field(fields, "prompt"),
        temperature=temperature_field(fields),
        word_timestamps=words,
    )

    def render(transcript: Transcript) -> Response:
        if response_format in RENDER_TEXT:
            return PlainTextResponse(RENDER_TEXT[response_format](transcript), media_type=MEDIA_TYPES[response_format])
        if response_format == "verbose_json":
            return JSONResponse(verbose_json(transcript, task, include_words=words))
        return JSONResponse({"text": transcript.text})

    return Plan(options, render)


def error_response(error: ItemError) -> JSONResponse:
    """OpenAI's error envelope: {"error": {"message", "type", "param", "code"}}."""
    # OpenAI answers unreadable audio with 400 where our own routes say 415
    status = 400 if error.status == 415 else error.status
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"message": error.message, "type": kind, "param": error.param, "code": error.reason.value}
    return JSONResponse({"error": body}, status_code=status)
