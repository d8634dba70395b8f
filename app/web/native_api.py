"""This service's own routes: POST /transcribe and POST /detect-language, their responses and error shape.

/transcribe keeps its original JSON as the default and offers every other format on request.
"""

from __future__ import annotations

from fastapi import Response
from fastapi.responses import JSONResponse

from app.contract import ItemError, LanguageGuess
from app.web.errors import status_of

TRANSCRIBE_PATH = "/transcribe"
DETECT_LANGUAGE_PATH = "/detect-language"


def language_response(guess: LanguageGuess) -> Response:
    return JSONResponse(
        {
            "language": guess.language,
            "probability": guess.probability,
            "candidates": [{"language": code, "probability": p} for code, p in guess.candidates],
        }
    )


def error_response(error: ItemError) -> JSONResponse:
    body = {"detail": error.message, "reason": error.reason.value}
    if error.param:
        body["param"] = error.param
    return JSONResponse(body, status_code=status_of(error))
