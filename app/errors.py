"""Per-request failures as values, and the one table that maps each to an HTTP status.

A failed item travels through the batch as an `ItemError`, so one bad upload never fails its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Reason(str, Enum):
    """Why one request failed; the value is the `reason` clients and metrics see."""

    EMPTY_UPLOAD = "empty_upload"
    MISSING_FILE = "missing_file"
    BAD_FORM = "bad_form"
    UNREADABLE_AUDIO = "unreadable_audio"
    NO_AUDIO = "no_audio"
    UNSUPPORTED_FORMAT = "unsupported_format"
    AUDIO_TOO_SHORT = "audio_too_short"
    AUDIO_TOO_LONG = "audio_too_long"
    UPLOAD_TOO_LARGE = "upload_too_large"
    UNAUTHORIZED = "unauthorized"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    BAD_OPTION = "bad_option"
    UNKNOWN_MODEL = "unknown_model"
    TIMEOUT = "timeout"
    STORAGE_FULL = "storage_full"
    INFERENCE_FAILED = "inference_failed"
    JOB_NOT_FOUND = "job_not_found"
    JOB_NOT_DONE = "job_not_done"


STATUS_BY_REASON: dict[Reason, int] = {
    Reason.EMPTY_UPLOAD: 400,
    Reason.MISSING_FILE: 400,
    Reason.BAD_FORM: 400,
    Reason.BAD_OPTION: 400,
    Reason.UNKNOWN_MODEL: 400,
    Reason.UNREADABLE_AUDIO: 415,
    Reason.NO_AUDIO: 415,
    Reason.UNSUPPORTED_FORMAT: 415,
    Reason.AUDIO_TOO_SHORT: 400,
    Reason.AUDIO_TOO_LONG: 413,
    Reason.UPLOAD_TOO_LARGE: 413,
    Reason.UNAUTHORIZED: 401,
    Reason.OVERLOADED: 503,
    Reason.UNAVAILABLE: 503,
    Reason.TIMEOUT: 504,
    Reason.STORAGE_FULL: 507,
    Reason.INFERENCE_FAILED: 500,
    Reason.JOB_NOT_FOUND: 404,
    Reason.JOB_NOT_DONE: 409,
}

# failures that go away by themselves: the response tells the client, in Retry-After, when to try again
RETRY_AFTER_SECONDS: dict[Reason, int] = {
    Reason.OVERLOADED: 2,
    Reason.UNAVAILABLE: 10,
    Reason.STORAGE_FULL: 10,
}


@dataclass(frozen=True)
class ItemError:
    """One request's failure, carried as a result so the rest of its batch is unaffected."""

    reason: Reason
    message: str
    # the request field at fault, where there is one (OpenAI's error shape reports it)
    param: str | None = None

    @property
    def status(self) -> int:
        return STATUS_BY_REASON[self.reason]


class RequestError(Exception):
    """Raised inside one request's own code path; converted to an `ItemError` at its edge."""

    def __init__(self, reason: Reason, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = ItemError(reason, message, param)
