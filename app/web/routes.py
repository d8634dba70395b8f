"""The HTTP side: every upload route, run in LitServe's API server processes, and their one lifecycle.

A LitSpec lets us own the route: the upload streams to the tmpfs and is decoded by ffmpeg here,
in parallel across requests, and only a path and options cross the queue to the model worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

import torch
from fastapi import Request, Response
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

from app import metrics
from app.config import Settings
from app.errors import RETRY_AFTER_SECONDS, ItemError, Reason, RequestError
from app.web import native_api, openai_api
from app.web.admission import Admission
from app.web.audio import decode_upload
from app.web.forms import ErrorRenderer, Plan
from app.web.native_api import DETECT_LANGUAGE_PATH, TRANSCRIBE_PATH
from app.web.openai_api import OPENAI_MODEL_NAME, TRANSCRIPTIONS_PATH, TRANSLATIONS_PATH
from app.web.request_log import Reported, RequestRecord, record_of
from app.web.uploads import RequestFiles, Upload, UploadPace, receive_upload
from app.worker.litapi import Outcome, QueuedRequest
from app.worker.loading import default_model_spec, model_display_name

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]
STORAGE_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how often a request waiting for the model worker looks whether the service still lets it wait
PHASE_POLL_SECONDS = 0.2


def served_model_names(settings: Settings) -> tuple[str, ...]:
    """Names a client may ask for: OpenAI's alias and the loaded model's own name."""
    spec = settings.model or default_model_spec(torch.cuda.is_available())
    return (OPENAI_MODEL_NAME, model_display_name(spec))


class TranscriptionRoutes(LitSpec):
    """Routes that receive uploads and hand decoded waveforms to WhisperLitAPI's batches."""

    def __init__(self, settings: Settings, admission: Admission) -> None:
        super().__init__()
        self.settings = settings
        self.admission = admission
        self.api_path = TRANSCRIBE_PATH
        served = served_model_names(settings)
        routes = {
            TRANSCRIBE_PATH: (native_api.transcribe_plan, native_api.error_response),
            DETECT_LANGUAGE_PATH: (native_api.detect_language_plan, native_api.error_response),
            TRANSCRIPTIONS_PATH: (
                partial(openai_api.plan, task="transcribe", served=served),
                openai_api.error_response,
            ),
            TRANSLATIONS_PATH: (partial(openai_api.plan, task="translate", served=served), openai_api.error_response),
        }
        for path, (plan, render_error) in routes.items():
            self.add_endpoint(path, self.endpoint(path, plan, render_error), ["POST"])
        # refusals made before a route runs (a missing API key) answer in that route's own error shape
        self.error_renderers: dict[str, ErrorRenderer] = {path: render for path, (_, render) in routes.items()}
        self._decode_slots: asyncio.Semaphore | None = None

    def endpoint(self, route: str, plan: Callable[[Upload], Plan], render_error: ErrorRenderer) -> Endpoint:
        async def receive(request: Request) -> Response:
            return await self.handle(request, route, plan, render_error)

        return receive

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        # the event-loop semaphore and the route closures live in HTTP processes; workers need neither
        state["_decode_slots"] = None
        state["_endpoints"] = []
        return state

    async def submit(self, request: QueuedRequest, arrived_at: float, record: RequestRecord) -> Outcome:
        """Queue one decoded request for the model worker and wait for its own result.

        The wait ends with 503 as soon as the service may no longer wait (a worker died, a drain ran out).
        """
        uid = uuid.uuid4()
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        # stamped with the arrival time, so a worker drops the item once the whole request is out of time
        self.request_queue.put((self.response_queue_id, uid, arrived_at, request))
        try:
            while not event.is_set():
                self.admission.refuse_unless_serving(waiting=True)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), PHASE_POLL_SECONDS)
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
        if isinstance(response, Reported):
            record.add_timing(response.timing, request.submitted_at)
            return response.outcome
        return response

    async def decode(self, files: RequestFiles, record: RequestRecord) -> None:
        """Probe and decode the upload into its waveform file, then delete the upload."""
        if self._decode_slots is None:
            self._decode_slots = asyncio.Semaphore(self.settings.decode_concurrency)
        async with self._decode_slots:
            began = time.monotonic()
            record.audio_seconds = await decode_upload(
                files.upload, files.waveform, self.settings.request_timeout, self.settings.max_audio_seconds
            )
            elapsed = time.monotonic() - began
        metrics.DECODE_SECONDS.observe(elapsed)
        record.decode_ms = round(elapsed * 1000, 1)
        files.upload.unlink()

    async def handle(
        self, request: Request, route: str, plan: Callable[[Upload], Plan], render_error: ErrorRenderer
    ) -> Response:
        """The life of one upload: receive, validate, admit, probe and decode, queue, answer.

        Temp files are always removed, and all of it happens within WHISPER_REQUEST_TIMEOUT of arrival.
        """
        started = time.monotonic()
        record = record_of(request)
        timeout = self.settings.request_timeout

        async def serve() -> Response | ItemError:
            upload = await receive_upload(
                request,
                files.upload,
                int(self.settings.max_upload_mb * 1e6),
                UploadPace(self.settings.min_upload_rate_kb * 1000, self.settings.upload_grace),
                partial(self.admission.refuse_unless_serving, waiting=True),
            )
            record.upload_bytes = upload.file_size
            planned = plan(upload)
            # a place is taken only once the body is here: a slow client holds its connection, not a place
            with self.admission.admit():
                await self.decode(files, record)
                outcome = await self.submit(
                    QueuedRequest(str(files.waveform), planned.work, time.monotonic()), started, record
                )
            return outcome if isinstance(outcome, ItemError) else planned.render(outcome)

        metrics.IN_FLIGHT.inc()
        files = RequestFiles.create(self.settings.tmp_dir)
        try:
            with self.admission.arrive():
                result = await asyncio.wait_for(serve(), timeout)
        except asyncio.TimeoutError:
            result = ItemError(Reason.TIMEOUT, f"the request did not finish within {timeout:g} s; its work was dropped")
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
            record.reason = result.reason.value
            response = render_error(result)
            if result.reason in RETRY_AFTER_SECONDS:
                response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS[result.reason])
        else:
            response = result
        metrics.REQUESTS.labels(route, str(response.status_code)).inc()
        metrics.REQUEST_SECONDS.labels(route).observe(time.monotonic() - started)
        return response
