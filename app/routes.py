"""The HTTP side of transcription: POST /transcribe, run in LitServe's API server processes.

A LitSpec lets us own the route: the upload streams to the tmpfs and is decoded by ffmpeg here,
in parallel across requests, and only a path and options cross the queue to the model worker.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

from app import metrics
from app.api import QueuedRequest
from app.audio import decode_upload
from app.config import Settings
from app.engine import TASKS, Transcript, TranscriptionOptions
from app.errors import ItemError, Reason, RequestError
from app.uploads import RequestFiles, receive_upload

log = logging.getLogger(__name__)

TRANSCRIBE_PATH = "/transcribe"
STORAGE_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def transcription_options(fields: Mapping[str, str]) -> TranscriptionOptions:
    """Validate the optional form fields of /transcribe."""
    task = fields.get("task") or "transcribe"
    if task not in TASKS:
        raise RequestError(Reason.BAD_OPTION, f"task must be one of {', '.join(TASKS)}, not {task!r}")
    language = (fields.get("language") or "").strip().lower() or None
    return TranscriptionOptions(language=language, task=task)


@dataclass(frozen=True)
class Plan:
    """What a route asks of the model worker, and how it turns the result into its response."""

    work: TranscriptionOptions
    render: Callable[[Transcript], Response]


ErrorRenderer = Callable[[ItemError], Response]


def transcribe_plan(fields: Mapping[str, str]) -> Plan:
    return Plan(transcription_options(fields), lambda transcript: JSONResponse(transcript_body(transcript)))


def transcript_body(transcript: Transcript) -> dict:
    return {
        "transcription": transcript.text,
        "language": transcript.language,
        "duration": transcript.duration,
        "segments": [{"start": s.start, "end": s.end, "text": s.text.strip()} for s in transcript.segments],
    }


def error_response(error: ItemError) -> JSONResponse:
    return JSONResponse(
        {"detail": error.message, "reason": error.reason.value},
        status_code=error.status,
    )


class TranscriptionRoutes(LitSpec):
    """Routes that receive uploads and hand decoded waveforms to WhisperLitAPI's batches."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.api_path = TRANSCRIBE_PATH
        self.add_endpoint(TRANSCRIBE_PATH, self.transcribe, ["POST"])
        self._decode_slots: asyncio.Semaphore | None = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_decode_slots"] = None  # belongs to an HTTP process's event loop; never pickled to workers
        return state

    async def submit(self, request: QueuedRequest) -> Transcript | ItemError:
        """Queue one decoded request for the model worker and wait for its own result."""
        uid = uuid.uuid4()
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), request))
        try:
            await event.wait()
            response, status = self.response_buffer[uid].response
        finally:
            self.response_buffer.pop(uid, None)
        if status == LitAPIStatus.ERROR:
            if getattr(response, "status_code", None) == 504:
                return ItemError(
                    Reason.TIMEOUT,
                    f"no model worker was free within {self.settings.request_timeout:g} s",
                )
            log.error("model worker failed a whole batch: %r", response)
            return ItemError(Reason.INFERENCE_FAILED, "inference failed")
        return response

    async def decode(self, files: RequestFiles) -> None:
        if self._decode_slots is None:
            self._decode_slots = asyncio.Semaphore(self.settings.decode_concurrency)
        async with self._decode_slots:
            with metrics.DECODE_SECONDS.time():
                await decode_upload(files.upload, files.waveform, self.settings.request_timeout)
        files.upload.unlink()

    async def handle(
        self, request: Request, route: str, plan: Callable[[Mapping[str, str]], Plan], render_error: ErrorRenderer
    ) -> Response:
        """The life of one upload: receive, validate, decode, queue, answer; temp files always removed."""
        started = time.monotonic()
        metrics.IN_FLIGHT.inc()
        files = RequestFiles.create(self.settings.tmp_dir)
        try:
            upload = await receive_upload(request, files.upload)
            planned = plan(upload.fields)
            await self.decode(files)
            result = await self.submit(QueuedRequest(str(files.waveform), planned.work, time.monotonic()))
        except RequestError as error:
            result = error.error
        except OSError as error:
            if error.errno not in STORAGE_FULL_ERRNOS:
                raise
            log.error("request storage is full: %s", error)
            result = ItemError(Reason.STORAGE_FULL, "the server could not store the upload; try again later")
        finally:
            files.remove()
            metrics.IN_FLIGHT.dec()
        if isinstance(result, ItemError):
            metrics.ERRORS.labels(result.reason.value).inc()
            response = render_error(result)
        else:
            response = planned.render(result)
        metrics.REQUESTS.labels(route, str(response.status_code)).inc()
        metrics.REQUEST_SECONDS.labels(route).observe(time.monotonic() - started)
        return response

    async def transcribe(self, request: Request) -> Response:
        return await self.handle(request, TRANSCRIBE_PATH, transcribe_plan, error_response)
