"""How each failure reason reaches a client: one table of status, Retry-After and meaning per reason.

A failed item travels as the contract's `ItemError`; this table turns its reason into HTTP for both
wire protocols, the metrics, the request log and the OpenAPI description.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.contract import ItemError, Reason


@dataclass(frozen=True)
class Refusal:
    """How one failure reason is answered."""

    status: int
    # what the reason means, for the OpenAPI description of every status
    meaning: str
    # seconds a client should wait before trying again, for failures that go away by themselves
    retry_after: int | None = None


REFUSALS: dict[Reason, Refusal] = {
    Reason.EMPTY_UPLOAD: Refusal(400, "the uploaded file is empty"),
    Reason.MISSING_FILE: Refusal(400, "the form has no audio file"),
    Reason.BAD_FORM: Refusal(400, "the body is not a well-formed multipart form"),
    Reason.BAD_OPTION: Refusal(400, "a form field has a value the route does not accept"),
    Reason.UNKNOWN_MODEL: Refusal(400, "the request names a model this server does not serve"),
    Reason.AUDIO_TOO_SHORT: Refusal(400, "under 0.1 s of audio"),
    Reason.INVALID_SAMPLES: Refusal(400, "the audio holds NaN, infinite or far-past-full-scale samples"),
    Reason.BAD_REQUEST: Refusal(400, "the bytes are not HTTP/1.1 (refused before routing)"),
    Reason.UNAUTHORIZED: Refusal(401, "no API key, or the wrong one"),
    Reason.UPLOAD_TOO_SLOW: Refusal(408, "the body arrives slower than WHISPER_MIN_UPLOAD_RATE_KB"),
    Reason.AUDIO_TOO_LONG: Refusal(413, "the audio is longer than WHISPER_MAX_AUDIO_SECONDS"),
    Reason.UPLOAD_TOO_LARGE: Refusal(413, "the body is larger than WHISPER_MAX_UPLOAD_MB"),
    Reason.UNREADABLE_AUDIO: Refusal(415, "ffmpeg cannot decode the upload"),
    Reason.NO_AUDIO: Refusal(415, "the upload has no audio stream"),
    Reason.UNSUPPORTED_FORMAT: Refusal(415, "the upload is not an audio or video container this server accepts"),
    Reason.HEADERS_TOO_LARGE: Refusal(431, "headers past WHISPER_MAX_HEADER_KB or WHISPER_MAX_HEADERS"),
    Reason.INFERENCE_FAILED: Refusal(500, "the model failed on this request (its batch neighbours are unaffected)"),
    Reason.OVERLOADED: Refusal(503, "WHISPER_MAX_QUEUE uploads are already held", retry_after=2),
    Reason.UNAVAILABLE: Refusal(503, "the server is draining or restarting", retry_after=10),
    Reason.TIMEOUT: Refusal(504, "the request outlived WHISPER_REQUEST_TIMEOUT"),
    Reason.STORAGE_FULL: Refusal(
        507, "the upload directory (tmpfs) is full, or job uploads fill WHISPER_JOBS_MAX_BYTES", retry_after=10
    ),
    Reason.JOB_NOT_FOUND: Refusal(404, "no job of that id for this API key, or it expired"),
    Reason.JOB_NOT_DONE: Refusal(409, "the job has no result: it is queued, running, failed or cancelled"),
    Reason.STORE_UNAVAILABLE: Refusal(
        503, "the job store (WHISPER_JOBS_DB or WHISPER_JOBS_DIR) cannot be read or written", retry_after=30
    ),
}


# answered by the /v1/jobs routes about a stored job, never by an upload
JOB_REASONS = frozenset({Reason.JOB_NOT_FOUND, Reason.JOB_NOT_DONE, Reason.STORE_UNAVAILABLE})


def status_of(error: ItemError) -> int:
    return REFUSALS[error.reason].status


def retry_after(error: ItemError) -> int | None:
    return REFUSALS[error.reason].retry_after


class RequestError(Exception):
    """Raised inside one request's own code path; converted to an `ItemError` at its edge."""

    def __init__(self, reason: Reason, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = ItemError(reason, message, param)
