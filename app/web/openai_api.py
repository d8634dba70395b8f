"""OpenAI's audio API: POST /v1/audio/transcriptions and /v1/audio/translations, in OpenAI's wire format.

Fields (app/web/forms.py), formats (app/web/formats.py) and the error shape follow OpenAI's public
reference, so its clients work unchanged; the work itself joins the same batches as every other route.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from app.contract import ItemError
from app.web.errors import status_of

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
TRANSLATIONS_PATH = "/v1/audio/translations"


def error_response(error: ItemError) -> JSONResponse:
    """OpenAI's error envelope: {"error": {"message", "type", "param", "code"}}."""
    # OpenAI answers unreadable audio with 400 where our own routes say 415
    status = 400 if status_of(error) == 415 else status_of(error)
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"message": error.message, "type": kind, "param": error.param, "code": error.reason.value}
    return JSONResponse({"error": body}, status_code=status)
