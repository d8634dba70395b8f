"""What a job is: its status, what the client asked for, and the row the store keeps for it.

Shared by the store backends, the runner and the API, so each reads the same names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema

from app.web.forms import NativeTranscribeForm
from app.web.uploads import Upload


class JobStatus(str, Enum):
    """Where a job is in its life; done, failed and cancelled are final."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
# the owner of jobs created where no API key is configured: everyone who can reach the service
OPEN_OWNER = "open"


# where a done job's result is fetched (GET), as a webhook call names it
RESULT_PATH = "/v1/jobs/{job_id}/result"


def owner_of_key(key: str | None) -> str:
    """Who a job belongs to: a hash of the API key that created it, never the key itself (the store keeps
    only an HMAC of this, keyed with the owner secret)."""
    if not key:
        return OPEN_OWNER
    return hashlib.sha256(key.encode()).hexdigest()


def _url(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


WebhookUrl = Annotated[
    str | None,
    BeforeValidator(_url),
    WithJsonSchema({"type": "string", "format": "uri", "description": "http(s) URL told of the job's end"}),
]


class JobForm(NativeTranscribeForm):
    """POST /v1/jobs: every field of /transcribe, and where to tell of the job's end."""

    webhook_url: WebhookUrl = None


@dataclass(frozen=True)
class JobRequest:
    """What the client sent besides the audio: the form's text fields (options, format) and a webhook."""

    fields: dict[str, str] = field(default_factory=dict)
    webhook_url: str | None = None
    filename: str = ""
    # no longer read: webhooks' result_url comes from WHISPER_PUBLIC_URL, never a request's Host header; the
    # field stays while the submission still fills it and rows written with it must read back
    base_url: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JobRequest:
        return cls(**json.loads(text))

    def form(self) -> JobForm:
        """The fields validated as /transcribe validates them (options and response_format)."""
        form = JobForm.from_upload(Upload(fields=self.fields))
        assert isinstance(form, JobForm)
        return form


@dataclass(frozen=True)
class Job:
    """One row of the store, as read at one moment."""

    id: str
    owner: str
    status: JobStatus
    request: JobRequest
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    # bytes of the kept upload; 0 once it is deleted (the job is over)
    audio_bytes: int = 0
    audio_seconds: float | None = None
    windows_total: int | None = None
    windows_done: int = 0
    seconds_done: float = 0.0
    # the transcript as JSON (see transcripts.py), once done
    result: str | None = None
    error: str | None = None
    attempts: int = 0
    # who holds the job while it runs: a token per claim, so only the current holder may finish it
    lease_token: str | None = None
    lease_until: float | None = None
    # 1 while the webhook call of an ended job is owed (see JobStore.take_owed_webhooks)
    webhook_due: int = 0


@dataclass(frozen=True)
class Claim:
    """A running job held by one runner, until `lease_until` unless renewed."""

    job: Job
    token: str
