"""The OpenAPI description of the upload routes, which FastAPI cannot infer from their raw-Request handlers.

/openapi.json then tells clients and schema-driven testers (schemathesis) every multipart field each
route reads, the error statuses it may answer with, and how to present the API key.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.errors import STATUS_BY_REASON
from app.web.formats import RESPONSE_FORMATS
from app.web.native_api import DETECT_LANGUAGE_PATH, TRANSCRIBE_PATH
from app.web.openai_api import GRANULARITIES, TRANSCRIPTIONS_PATH, TRANSLATIONS_PATH
from app.worker.engine import TASKS

FILE = {"type": "string", "format": "binary", "description": "audio or video; its content, not its name, decides"}
LANGUAGE = {"type": "string", "description": "ISO-639-1 code such as 'en'; empty detects it"}
PROMPT = {"type": "string", "description": "text that sets the style or vocabulary of the transcript"}
TEMPERATURE = {"type": "number", "minimum": 0, "maximum": 1, "description": "0 decodes greedily"}
OPENAI_FORMAT = {"type": "string", "enum": list(RESPONSE_FORMATS)}
NATIVE_FORMAT = {"type": "string", "enum": ["transcription_json", *RESPONSE_FORMATS]}

UPLOAD_FORMS: dict[str, dict[str, dict]] = {
    TRANSCRIBE_PATH: {
        "file": FILE,
        "language": LANGUAGE,
        "task": {"type": "string", "enum": list(TASKS)},
        "prompt": PROMPT,
        "initial_prompt": PROMPT,
        "temperature": TEMPERATURE,
        "word_timestamps": {"type": "boolean"},
        "response_format": NATIVE_FORMAT,
        "output": NATIVE_FORMAT,
    },
    DETECT_LANGUAGE_PATH: {"file": FILE},
    TRANSCRIPTIONS_PATH: {
        "file": FILE,
        "model": {"type": "string", "description": "'whisper-1' or the served model's name"},
        "language": LANGUAGE,
        "prompt": PROMPT,
        "response_format": OPENAI_FORMAT,
        "temperature": TEMPERATURE,
        "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": list(GRANULARITIES)}},
    },
    TRANSLATIONS_PATH: {
        "file": FILE,
        "model": {"type": "string"},
        "prompt": PROMPT,
        "response_format": OPENAI_FORMAT,
        "temperature": TEMPERATURE,
    },
}


def error_responses() -> dict[str, dict]:
    """Every status an upload may fail with, each described by the reasons that produce it."""
    reasons: dict[int, list[str]] = {}
    for reason, status in STATUS_BY_REASON.items():
        reasons.setdefault(status, []).append(reason.value)
    return {str(status): {"description": "reason: " + ", ".join(names)} for status, names in sorted(reasons.items())}


def upload_operation(operation: dict, form: dict[str, dict]) -> None:
    operation["requestBody"] = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": form, "required": ["file"]},
            }
        },
    }
    operation["responses"].update(error_responses())


def describe_uploads(app: FastAPI, open_paths: frozenset[str] | None) -> Callable[[], dict]:
    """A replacement for `app.openapi` that adds the upload forms, and the API key unless `open_paths` is None."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.web.routes)
            for path, form in UPLOAD_FORMS.items():
                upload_operation(document["paths"][path]["post"], form)
            if open_paths is not None:
                document.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                }
                document["security"] = [{"bearer": []}, {"apiKey": []}]
                for path in open_paths & document["paths"].keys():
                    for operation in document["paths"][path].values():
                        operation["security"] = []
            app.openapi_schema = document
        return app.openapi_schema

    return openapi
