"""The /v1/jobs routes: submit an upload as a job, poll it, fetch its result, cancel it, list one's own jobs.

A job's upload comes in through the same intake as /transcribe's (pace, tmpfs, typed form, admission after the
body, drain): a job differs only in where its outcome goes. It belongs to the API key that created it (a hash
of it); every route answers only for the caller's jobs.
"""

from __future__ import annotations

import hmac
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse

from app import metrics
from app.config import Settings
from app.contract import ItemError, Reason
from app.web.audio import probe_upload, too_long
from app.web.errors import REFUSALS, RequestError, retry_after
from app.web.formats import BODY_WRITERS, response_of
from app.web.intake import Intake, Received, UploadRoute
from app.web.jobs.files import JobAudio, budget_full
from app.web.jobs.model import OPEN_OWNER, Job, JobForm, JobRequest, JobStatus, owner_of_key
from app.web.jobs.runner import JobRunner
from app.web.jobs.store import JobStore
from app.web.jobs.threads import STORE_THREADS, WEBHOOK_THREADS
from app.web.jobs.transcripts import transcript_from_json
from app.web.jobs.webhook import check_webhook_url
from app.web.native_api import error_response
from app.web.security import presented_keys

JOBS_PATH = "/v1/jobs"
JOB_ROUTE = UploadRoute(JOBS_PATH, JobForm, error_response)
DEFAULT_PAGE = 20
MAX_PAGE = 100
# what a job id looks like (uuid4 hex): a paging cursor must be one
JOB_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Jobs:
    """Everything the job routes use, made once in the main process and inherited by each HTTP process."""

    settings: Settings
    store: JobStore
    audio: JobAudio
    intake: Intake
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


def result_body(job: Job) -> tuple[str, dict[str, object] | str]:
    """The done job's response format and its result in it, as /transcribe would have answered."""
    assert job.result is not None
    asked = job.request
    body = BODY_WRITERS[asked.response_format](
        transcript_from_json(job.result), asked.options.task, asked.include_words
    )
    return asked.response_format, body


def job_body(job: Job, with_result: bool) -> dict[str, object]:
    now = time.time()
    started = job.started_at
    body: dict[str, object] = {
        "id": job.id,
        "status": job.status.value,
        "filename": job.request.filename,
        "response_format": job.request.response_format,
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
        body["result"] = result_body(job)[1]
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
        async def accept(received: Received) -> Response:
            return await accepted(request, received)

        return await jobs.intake.serve(request, JOB_ROUTE, accept)

    async def accepted(request: Request, received: Received) -> Response:
        """Keep a received upload as a queued job; raises RequestError where it cannot become one."""
        form = received.form
        assert isinstance(form, JobForm)
        if form.webhook_url:
            if settings.webhook_secret is None:
                raise RequestError(
                    Reason.BAD_OPTION,
                    "this server signs no webhooks (WHISPER_WEBHOOK_SECRET is unset), so it sends none",
                    param="webhook_url",
                )
            await WEBHOOK_THREADS.run(check_webhook_url, form.webhook_url, settings.webhook_allow_private)
        probe = await probe_upload(received.files.upload, settings.request_timeout)
        if probe.duration is not None and probe.duration > settings.max_audio_seconds:
            raise too_long(probe.duration, settings.max_audio_seconds)
        size = received.upload.file_size
        # checked before the upload is copied to the volume; the store's add decides, atomically, below
        if await STORE_THREADS.run(jobs.store.audio_bytes_kept) + size > settings.jobs_max_bytes:
            raise budget_full(settings.jobs_max_bytes)
        job_id = uuid.uuid4().hex
        asked = JobRequest.of(form, received.upload.file_name, str(request.base_url))
        # the file is in place before the job is queued, so a runner never claims a job without its audio
        await jobs.audio.keep(received.files.upload, job_id)
        try:
            added = await STORE_THREADS.run(
                jobs.store.add, job_id, jobs.owner(request), asked, size, settings.jobs_max_bytes
            )
            if not added:
                raise budget_full(settings.jobs_max_bytes)
        except BaseException:
            jobs.audio.delete(job_id)
            raise
        jobs.runner.wake()
        job = await STORE_THREADS.run(jobs.store.get, job_id)
        assert job is not None
        return JSONResponse(
            job_body(job, with_result=False), status_code=202, headers={"Location": f"{JOBS_PATH}/{job.id}"}
        )

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
        response_format, body = result_body(job)
        return response_of(response_format, body)

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

    async def recent(
        request: Request,
        limit: str | None = Query(None, description=f"jobs per page, 1 to {MAX_PAGE} (default {DEFAULT_PAGE})"),
        after: str | None = Query(None, description="next_after of the previous page"),
    ) -> Response:
        try:
            size = page_size(limit)
            cursor = page_cursor(after)
        except RequestError as failure:
            return refusal(failure.error)
        page = await STORE_THREADS.run(jobs.store.recent, jobs.owner(request), size + 1, cursor)
        more = len(page) > size
        page = page[:size]
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


def page_size(limit: str | None) -> int:
    """?limit= as a number of jobs: a whole number from 1 to MAX_PAGE; raises RequestError naming it."""
    text = (limit or "").strip()
    if not text:
        return DEFAULT_PAGE
    # compared as text first: int() of 4,000 digits is slow, and anything that long is out of range anyway
    if not (text.isascii() and text.isdigit() and len(text) <= 3 and 1 <= int(text) <= MAX_PAGE):
        raise RequestError(
            Reason.BAD_OPTION, f"limit must be a whole number from 1 to {MAX_PAGE}, not {text[:40]!r}", param="limit"
        )
    return int(text)


def page_cursor(after: str | None) -> str | None:
    """?after= as a job id (the next_after of the previous page); raises RequestError naming it."""
    if after is None or not after.strip():
        return None
    if not JOB_ID.fullmatch(after.strip()):
        raise RequestError(
            Reason.BAD_OPTION, f"after must be a job id (the previous page's next_after), not {after[:40]!r}", "after"
        )
    return after.strip()
