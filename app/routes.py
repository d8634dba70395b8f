"""The HTTP side: every upload route, run in LitServe's API server processes, and their one lifecycle.

A LitSpec lets us own the route: the upload streams to the tmpfs and is decoded by ffmpeg here,
in parallel across requests, and only a path and options cross the queue to the model worker.
"""

from __future__ import annotations

import asyncio
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

from app import metrics, native_api, openai_api
from app.api import Outcome, QueuedRequest
from app.audio import decode_upload
from app.config import Settings
from app.errors import ItemError, Reason, RequestError
from app.forms import ErrorRenderer, Plan
from app.models import default_model_spec, model_display_name
from app.native_api import DETECT_LANGUAGE_PATH, TRANSCRIBE_PATH
from app.openai_api import OPENAI_MODEL_NAME, TRANSCRIPTIONS_PATH, TRANSLATIONS_PATH
from app.uploads import RequestFiles, Upload, receive_upload

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]
STORAGE_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def served_model_names(settings: Settings) -> tuple[str, ...]:
    """Names a client may ask for: OpenAI's alias and the loaded model's own name."""
    spec = settings.model or default_model_spec(torch.cuda.is_available())
    return (OPENAI_MODEL_NAME, model_display_name(spec))


class TranscriptionRoutes(LitSpec):
    """Routes that receive uploads and hand decoded waveforms to WhisperLitAPI's batches."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
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

    async def submit(self, request: QueuedRequest) -> Outcome:
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
        self, request: Request, route: str, plan: Callable[[Upload], Plan], render_error: ErrorRenderer
    ) -> Response:
        """The life of one upload: receive, validate, decode, queue, answer; temp files always removed."""
        started = time.monotonic()
        metrics.IN_FLIGHT.inc()
        files = RequestFiles.create(self.settings.tmp_dir)
        try:
            upload = await receive_upload(request, files.upload)
            planned = plan(upload)
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
