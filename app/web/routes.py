"""The HTTP side: every upload route, run in LitServe's API server processes, and their one lifecycle.

A request is first received onto the tmpfs (its form validated), then admitted and prepared (decoded by
ffmpeg here, in parallel across requests), then awaited (submitted to the model worker through WorkerClient,
waited for, rendered). Only a waveform path and options cross the queue.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from fastapi import Request, Response

from app import metrics
from app.config import Settings
from app.contract import ItemError, LanguageGuess, QueuedRequest, Reason, Transcript, TranscriptionOptions
from app.litserve_adapter import RoutesSpec, WorkerClient
from app.web import native_api, openai_api
from app.web.admission import Admission
from app.web.audio import decode_upload
from app.web.errors import RequestError, retry_after
from app.web.formats import WRITERS
from app.web.forms import (
    OPENAI_MODEL_NAME,
    DetectLanguageForm,
    NativeTranscribeForm,
    OpenAITranscriptionForm,
    OpenAITranslationForm,
    UploadForm,
)
from app.web.request_log import RequestRecord, record_of
from app.web.speaker_references import decode_known_speakers
from app.web.uploads import RequestFiles, UploadPace, receive_upload

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorRenderer = Callable[[ItemError], Response]
STORAGE_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class Route:
    """One upload route: the form it takes and the shape its errors answer in."""

    path: str
    form: type[UploadForm]
    render_error: ErrorRenderer


ROUTES = (
    Route(native_api.TRANSCRIBE_PATH, NativeTranscribeForm, native_api.error_response),
    Route(native_api.DETECT_LANGUAGE_PATH, DetectLanguageForm, native_api.error_response),
    Route(openai_api.TRANSCRIPTIONS_PATH, OpenAITranscriptionForm, openai_api.error_response),
    Route(openai_api.TRANSLATIONS_PATH, OpenAITranslationForm, openai_api.error_response),
)


@dataclass(frozen=True)
class PreparedUpload:
    """A request ready for the model worker: its decoded waveform on the tmpfs, and what it asked for."""

    form: UploadForm
    job: QueuedRequest


def render(form: UploadForm, outcome: Transcript | LanguageGuess) -> Response:
    if isinstance(outcome, LanguageGuess):
        return native_api.language_response(outcome)
    task = form.work.task if isinstance(form.work, TranscriptionOptions) else "transcribe"
    return WRITERS[form.output_format](outcome, task, form.include_words)


class TranscriptionRoutes(RoutesSpec):
    """Routes that receive uploads and hand decoded waveforms to WhisperLitAPI's batches."""

    def __init__(self, settings: Settings, admission: Admission, model_name: str) -> None:
        super().__init__()
        self.settings = settings
        self.admission = admission
        self.api_path = native_api.TRANSCRIBE_PATH
        # names a client may ask for: OpenAI's alias and the loaded model's own name
        self.served_models: Sequence[str] = (OPENAI_MODEL_NAME, model_name)
        self.worker_client = WorkerClient(self, settings.request_timeout)
        for route in ROUTES:
            self.add_endpoint(route.path, self.endpoint(route), ["POST"])
        # refusals made before a route runs (a missing API key) answer in that route's own error shape
        self.error_renderers: dict[str, ErrorRenderer] = {route.path: route.render_error for route in ROUTES}
        self._decode_slots: asyncio.Semaphore | None = None

    def endpoint(self, route: Route) -> Endpoint:
        async def receive(request: Request) -> Response:
            return await self.handle(request, route)

        return receive

    def __getstate__(self) -> dict[str, object]:
        state = super().__getstate__()
        # the event-loop semaphore lives in HTTP processes; workers need none
        state["_decode_slots"] = None
        return state

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

    async def receive(self, request: Request, route: Route, files: RequestFiles, record: RequestRecord) -> UploadForm:
        """Receive the upload at no less than the minimum pace and validate its form; raises RequestError."""
        upload = await receive_upload(
            request,
            files.upload,
            int(self.settings.max_upload_mb * 1e6),
            UploadPace(self.settings.min_upload_rate_kb * 1000, self.settings.upload_grace),
            still_wanted=lambda: self.admission.refuse_unless_serving(waiting=True),
        )
        record.upload_bytes = upload.file_size
        form = route.form.from_upload(upload, self.served_models)
        if isinstance(form.work, TranscriptionOptions) and form.work.diarization and not self.settings.diarization:
            raise RequestError(Reason.BAD_OPTION, "speaker diarization is turned off here (WHISPER_DIARIZATION)")
        return form

    async def prepare(self, form: UploadForm, files: RequestFiles, record: RequestRecord) -> PreparedUpload:
        """Decode the received upload's audio; raises RequestError for the client's faults."""
        await self.decode(files, record)
        work = form.work
        if isinstance(work, TranscriptionOptions) and form.speaker_clips:
            folder, stem = files.waveform.parent, files.waveform.stem
            timeout = self.settings.request_timeout
            work = await decode_known_speakers(work, form.speaker_clips, folder, stem, timeout)
        return PreparedUpload(form, QueuedRequest(str(files.waveform), work, time.monotonic()))

    async def await_outcome(
        self, prepared: PreparedUpload, arrived_at: float, record: RequestRecord
    ) -> Response | ItemError:
        """Submit the job to the model workers, wait for its own answer and render it."""
        answer = await self.worker_client.run(
            prepared.job, arrived_at, keep_waiting=lambda: self.admission.refuse_unless_serving(waiting=True)
        )
        if isinstance(answer, ItemError):
            return answer
        record.add_timing(answer.timing, prepared.job.submitted_at)
        outcome = answer.outcome
        return outcome if isinstance(outcome, ItemError) else render(prepared.form, outcome)

    async def handle(self, request: Request, route: Route) -> Response:
        """The life of one upload: receive it, take a place, prepare it, await its outcome, answer.

        Temp files are always removed, and all of it happens within WHISPER_REQUEST_TIMEOUT of arrival.
        """
        started = time.monotonic()
        record = record_of(request)
        timeout = self.settings.request_timeout

        async def serve() -> Response | ItemError:
            form = await self.receive(request, route, files, record)
            # a place is taken once the body is here: a slow client holds its connection, never a place
            with self.admission.admit():
                prepared = await self.prepare(form, files, record)
                return await self.await_outcome(prepared, started, record)

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
            response = route.render_error(result)
            if (seconds := retry_after(result)) is not None:
                response.headers["Retry-After"] = str(seconds)
        else:
            response = result
        metrics.REQUESTS.labels(route.path, str(response.status_code)).inc()
        metrics.REQUEST_SECONDS.labels(route.path).observe(time.monotonic() - started)
        return response
