"""What a job is: its status, what the client asked for, and the row the store keeps for it.

Shared by the store backends, the runner and the API, so each reads the same names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema

from app.contract import DiarizationOptions, TranscriptionOptions, VadParameters
from app.web.formats import TRANSCRIPTION_JSON
from app.web.forms import NativeTranscribeForm, ServedModel, bad_option
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


def _not_streamed(value: object) -> bool:
    if isinstance(value, str) and value.strip().lower() not in ("", "0", "false", "no", "off"):
        raise bad_option("stream", "a job is not streamed: it answers with its id at once; poll GET /v1/jobs/{id}")
    return False


def _no_includes(value: object) -> tuple[str, ...]:
    if value:
        message = (
            "include[] is not supported on jobs: openai-whisper's batched decode gives no per-token "
            "log-probabilities; leave it out"
        )
        raise bad_option("include", message)
    return ()


WebhookUrl = Annotated[
    str | None,
    BeforeValidator(_url),
    WithJsonSchema({"type": "string", "format": "uri", "description": "http(s) URL told of the job's end"}),
]
NotStreamed = Annotated[
    bool,
    BeforeValidator(_not_streamed),
    WithJsonSchema({"type": "boolean", "description": "must be false: a job answers with its id, then is polled"}),
]
NoIncludes = Annotated[
    tuple[str, ...],
    BeforeValidator(_no_includes),
    WithJsonSchema({"type": "array", "items": {"type": "string"}, "maxItems": 0}),
]


class JobForm(NativeTranscribeForm):
    """POST /v1/jobs: every field of /transcribe, and where to tell of the job's end.

    What a job cannot do is refused, never ignored: streaming (stream=true) and log-probabilities (include[]).
    """

    webhook_url: WebhookUrl = None
    stream: NotStreamed = False
    include: NoIncludes = Field((), alias="include[]")


@dataclass(frozen=True)
class JobRequest:
    """What the client asked of a job, validated once at submission and stored typed."""

    options: TranscriptionOptions = field(default_factory=TranscriptionOptions)
    response_format: str = TRANSCRIPTION_JSON
    webhook_url: str | None = None
    # the name the client gave its file, for its own reference
    filename: str = ""
    # no longer read: webhooks' result_url comes from WHISPER_PUBLIC_URL, never a request's Host header; the
    # field stays while the submission still fills it and rows written with it must read back
    base_url: str = ""

    @classmethod
    def of(cls, form: JobForm, filename: str, base_url: str) -> JobRequest:
        options = form.work
        assert isinstance(options, TranscriptionOptions)
        return cls(options, form.response_format, form.webhook_url, filename, base_url)

    @property
    def include_words(self) -> bool:
        return self.options.word_timestamps

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JobRequest:
        stored: dict[str, Any] = json.loads(text)
        if "fields" in stored:
            # a row stored before options were typed: its raw fields, validated once more as they were then
            form = JobForm.from_upload(Upload(fields=stored.pop("fields")), ServedModel())
            assert isinstance(form, JobForm)
            legacy = cls.of(form, stored.get("filename", ""), stored.get("base_url", ""))
            return replace(legacy, webhook_url=stored.get("webhook_url"))
        options: dict[str, Any] = stored.pop("options")
        vad = options.pop("vad_parameters")
        # nested options come back from JSON as dicts: typed again here (a job names no known speakers)
        speakers = options.pop("diarization", None)
        typed = TranscriptionOptions(
            **options,
            vad_parameters=None if vad is None else VadParameters(**vad),
            diarization=None if speakers is None else DiarizationOptions(**{**speakers, "known_speakers": ()}),
        )
        return cls(typed, **stored)


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
