"""The /v1/jobs routes: submit an upload as a job, poll it, fetch its result, cancel it, list one's own jobs.

A job belongs to the API key that created it (a hash of it); every route answers only for the caller's jobs.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from app import metrics
from app.config import Settings
from app.contract import ItemError, Reason
from app.web.admission import Admission
from app.web.audio import probe_upload, too_long
from app.web.errors import REFUSALS, RequestError, retry_after
from app.web.jobs.files import JobAudio, budget_full
from app.web.jobs.model import OPEN_OWNER, Job, JobRequest, JobStatus, owner_of_key
from app.web.jobs.runner import JobRunner
from app.web.jobs.store import JobStore
from app.web.jobs.threads import STORE_THREADS, WEBHOOK_THREADS
from app.web.jobs.transcripts import transcript_from_json
from app.web.jobs.webhook import check_webhook_url
from app.web.native_api import error_response
from app.web.routes import STORAGE_FULL_ERRNOS, render
from app.web.security import presented_keys

JOBS_PATH = "/v1/jobs"
DEFAULT_PAGE = 20
MAX_PAGE = 100


@dataclass
class Jobs:
    """Everything the job routes use, made once in the main process and inherited by each HTTP process."""

    settings: Settings
    store: JobStore
    audio: JobAudio
    admission: Admission
    runner: JobRunner
    # the configured API keys; a job's owner is the hash of the one its creator presented
    api_keys: tuple[str, ...] = ()

    def owner(self, request: Request) -> str:
        """The caller's owner id; the key middleware already refused callers without a valid key."""
        offered = presented_keys(request.headers)
        for key in self.api_keys:
            if any(hmac.compare_digest(offer.encode(), key.encode()) for offer in offered):
                return owner_of_key(key)
        return OPEN_OWNER


def iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, timezone.utc).isoformat()


def rendered_result(job: Job) -> Response:
    """The result as /transcribe would have answered with the job's options and response_format."""
    assert job.result is not None
    return render(job.request.form(), transcript_from_json(job.result))


def job_body(job: Job, with_result: bool) -> dict[str, object]:
    now = time.time()
    started = job.started_at
    body: dict[str, object] = {
        "id": job.id,
        "status": job.status.value,
        "filename": job.request.filename,
        "response_format": job.request.fields.get("response_format") or job.request.fields.get("output") or None,
        "created_at": iso(job.created_at),
        "started_at": iso(started),
        "finished_at": iso(job.finished_at),
        "expires_at": iso(job.expires_at),
        "progress": {
            "windows_done": job.windows_done,
            "windows_total": job.windows_total,
            "audio_seconds_done": job.seconds_done,
            "audio_seconds": job.audio_seconds,
        },
        "timings": {
            "queued_seconds": round((started or job.finished_at or now) - job.created_at, 3),
            "running_seconds": None if started is None else round((job.finished_at or now) - started, 3),
        },
        "attempts": job.attempts,
        "error": job.error,
    }
    if with_result and job.status is JobStatus.DONE:
        rendered = rendered_result(job)
        text = bytes(rendered.body).decode()
        body["result"] = json.loads(text) if isinstance(rendered, JSONResponse) else text
    return body


def refusal(failure: ItemError) -> JSONResponse:
    """The native error shape, with Retry-After where waiting helps."""
    response = error_response(failure)
    if (seconds := retry_after(failure)) is not None:
        response.headers["Retry-After"] = str(seconds)
    return response


def error(reason: Reason, message: str) -> JSONResponse:
    return refusal(ItemError(reason, message))


def not_found(job_id: str) -> JSONResponse:
    return error(Reason.JOB_NOT_FOUND, f"no job {job_id!r} for this API key (it may have expired)")


def add_job_routes(app: FastAPI, jobs: Jobs) -> None:
    """POST and GET /v1/jobs, GET and DELETE /v1/jobs/{id}, GET /v1/jobs/{id}/result."""
    settings = jobs.settings

    async def submit(request: Request) -> Response:
        owner = jobs.owner(request)
        job_id = uuid.uuid4().hex
        started = time.monotonic()
        try:
            with jobs.admission.admit():
                job = await asyncio.wait_for(receive(request, owner, job_id), settings.request_timeout)
        except (RequestError, OSError, asyncio.TimeoutError) as failure:
            jobs.audio.delete(job_id)
            problem = item_error(failure, settings.request_timeout)
            metrics.ERRORS.labels(problem.reason.value).inc()
            response = refusal(problem)
        except BaseException:
            jobs.audio.delete(job_id)
            raise
        else:
            jobs.runner.wake()
            location = f"{JOBS_PATH}/{job.id}"
            response = JSONResponse(job_body(job, with_result=False), status_code=202, headers={"Location": location})
        metrics.REQUESTS.labels(JOBS_PATH, str(response.status_code)).inc()
        metrics.REQUEST_SECONDS.labels(JOBS_PATH).observe(time.monotonic() - started)
        return response

    async def receive(request: Request, owner: str, job_id: str) -> Job:
        kept = await STORE_THREADS.run(jobs.store.audio_bytes_kept)
        upload = await jobs.audio.receive(
            request, job_id, int(settings.max_upload_mb * 1e6), max(0, settings.jobs_max_bytes - kept)
        )
        if upload.file_size == 0:
            raise RequestError(Reason.EMPTY_UPLOAD, "the uploaded file is empty")
        fields = dict(upload.fields)
        webhook_url = fields.pop("webhook_url", "").strip() or None
        job_request = JobRequest(fields, webhook_url, upload.file_name, str(request.base_url))
        job_request.form()  # refuses bad options now, with the same 400s as /transcribe
        if webhook_url:
            if settings.webhook_secret is None:
                raise RequestError(
                    Reason.BAD_OPTION,
                    "this server signs no webhooks (WHISPER_WEBHOOK_SECRET is unset), so it sends none",
                    param="webhook_url",
                )
            await WEBHOOK_THREADS.run(check_webhook_url, webhook_url, settings.webhook_allow_private)
        probe = await probe_upload(jobs.audio.path(job_id), settings.request_timeout)
        if probe.duration is not None and probe.duration > settings.max_audio_seconds:
            raise too_long(probe.duration, settings.max_audio_seconds)
        added = await STORE_THREADS.run(
            jobs.store.add, job_id, owner, job_request, upload.file_size, settings.jobs_max_bytes
        )
        if not added:
            raise budget_full(settings.jobs_max_bytes)
        job = await STORE_THREADS.run(jobs.store.get, job_id)
        assert job is not None
        return job

    async def status(job_id: str, request: Request) -> Response:
        job = await STORE_THREADS.run(jobs.store.get, job_id, jobs.owner(request))
        if job is None:
            return not_found(job_id)
        return JSONResponse(job_body(job, with_result=True))

    async def result(job_id: str, request: Request) -> Response:
        job = await STORE_THREADS.run(jobs.store.get, job_id, jobs.owner(request))
        if job is None:
            return not_found(job_id)
        if job.status is not JobStatus.DONE:
            detail = f": {job.error}" if job.error else ""
            return error(Reason.JOB_NOT_DONE, f"job {job_id!r} is {job.status.value}{detail}")
        return rendered_result(job)

    async def cancel(job_id: str, request: Request) -> Response:
        owner = jobs.owner(request)
        before = await STORE_THREADS.run(jobs.store.cancel, job_id, owner, settings.jobs_ttl)
        if before is not None:
            jobs.audio.delete(job_id)
            metrics.JOBS_FINISHED.labels(JobStatus.CANCELLED.value).inc()
            cancelled = await STORE_THREADS.run(jobs.store.get, job_id, owner)
            assert cancelled is not None
            return JSONResponse(job_body(cancelled, with_result=False))
        if await STORE_THREADS.run(jobs.store.delete, job_id, owner):
            return Response(status_code=204)
        return not_found(job_id)

    async def recent(request: Request, limit: int = DEFAULT_PAGE, after: str | None = None) -> Response:
        if not 1 <= limit <= MAX_PAGE:
            return error_response(ItemError(Reason.BAD_OPTION, f"limit must be 1 to {MAX_PAGE}", param="limit"))
        page = await STORE_THREADS.run(jobs.store.recent, jobs.owner(request), limit + 1, after)
        more = len(page) > limit
        page = page[:limit]
        return JSONResponse(
            {
                "jobs": [job_body(job, with_result=False) for job in page],
                "next_after": page[-1].id if more else None,
            }
        )

    missing = documented(Reason.JOB_NOT_FOUND)
    app.add_api_route(JOBS_PATH, submit, methods=["POST"], status_code=202, summary="Submit an upload as a job")
    app.add_api_route(JOBS_PATH, recent, methods=["GET"], summary="The caller's jobs, newest first")
    app.add_api_route(JOBS_PATH + "/{job_id}", status, methods=["GET"], summary="A job", responses=missing)
    app.add_api_route(
        JOBS_PATH + "/{job_id}", cancel, methods=["DELETE"], summary="Cancel or delete a job", responses=missing
    )
    app.add_api_route(
        JOBS_PATH + "/{job_id}/result",
        result,
        methods=["GET"],
        summary="A done job's result, as /transcribe would answer",
        responses=missing | documented(Reason.JOB_NOT_DONE),
    )


def documented(reason: Reason) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI line of one refusal a job route may answer with."""
    refusal = REFUSALS[reason]
    return {refusal.status: {"description": f"reason: {reason.value} ({refusal.meaning})"}}


def item_error(failure: Exception, timeout: float) -> ItemError:
    """What a failed submission tells the client: our own verdicts, a full volume (507), or running out of time."""
    if isinstance(failure, RequestError):
        return failure.error
    if isinstance(failure, OSError):
        if failure.errno not in STORAGE_FULL_ERRNOS:
            raise failure
        return budget_full(0).error
    return ItemError(Reason.TIMEOUT, f"the upload did not arrive within {timeout:g} s")
