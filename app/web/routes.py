"""The HTTP side: every upload route, run in LitServe's API server processes, and their one lifecycle.

Each is received by the one intake (app/web/intake.py: paced onto the tmpfs, form validated, admitted), then
prepared (decoded by ffmpeg here, in parallel across requests), then awaited (submitted to the model worker
through WorkerClient, waited for, rendered). Only a waveform path and options cross the queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request, Response

from app import metrics
from app.config import Settings
from app.contract import ItemError, LanguageGuess, QueuedRequest, Reason, Transcript, TranscriptionOptions
from app.litserve_adapter import RoutesSpec, WorkerClient
from app.web import native_api, openai_api
from app.web.admission import Admission
from app.web.audio import decode_upload
from app.web.errors import RequestError
from app.web.formats import WRITERS
from app.web.forms import (
    DetectLanguageForm,
    NativeTranscribeForm,
    OpenAITranscriptionForm,
    OpenAITranslationForm,
    ServedModel,
    UploadForm,
)
from app.web.intake import ErrorRenderer, Intake, Received, UploadRoute
from app.web.request_log import RequestRecord
from app.web.speaker_references import decode_known_speakers
from app.web.uploads import RequestFiles

Endpoint = Callable[[Request], Awaitable[Response]]

ROUTES = (
    UploadRoute(native_api.TRANSCRIBE_PATH, NativeTranscribeForm, native_api.error_response),
    UploadRoute(native_api.DETECT_LANGUAGE_PATH, DetectLanguageForm, native_api.error_response),
    UploadRoute(openai_api.TRANSCRIPTIONS_PATH, OpenAITranscriptionForm, openai_api.error_response),
    UploadRoute(openai_api.TRANSLATIONS_PATH, OpenAITranslationForm, openai_api.error_response),
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

    def __init__(self, settings: Settings, admission: Admission, model: ServedModel) -> None:
        super().__init__()
        self.settings = settings
        self.admission = admission
        self.api_path = native_api.TRANSCRIBE_PATH
        self.intake = Intake(settings, admission, model)
        self.worker_client = WorkerClient(self, settings.request_timeout)
        for route in ROUTES:
            self.add_endpoint(route.path, self.endpoint(route), ["POST"])
        # refusals made before a route runs (a missing API key) answer in that route's own error shape
        self.error_renderers: dict[str, ErrorRenderer] = {route.path: route.render_error for route in ROUTES}
        self._decode_slots: asyncio.Semaphore | None = None

    def endpoint(self, route: UploadRoute) -> Endpoint:
        async def receive(request: Request) -> Response:
            return await self.intake.serve(request, route, self.transcribe)

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

    async def prepare(self, received: Received) -> PreparedUpload:
        """Decode the received upload's audio; raises RequestError for the client's faults."""
        work = received.form.work
        if isinstance(work, TranscriptionOptions) and work.diarization and not self.settings.diarization:
            raise RequestError(Reason.BAD_OPTION, "speaker diarization is turned off here (WHISPER_DIARIZATION)")
        files = received.files
        await self.decode(files, received.record)
        if isinstance(work, TranscriptionOptions) and received.form.speaker_clips:
            folder, stem = files.waveform.parent, files.waveform.stem
            timeout = self.settings.request_timeout
            work = await decode_known_speakers(work, received.form.speaker_clips, folder, stem, timeout)
        return PreparedUpload(received.form, QueuedRequest(str(files.waveform), work, time.monotonic()))

    async def await_outcome(
        self, prepared: PreparedUpload, arrived_at: float, record: RequestRecord
    ) -> Response | ItemError:
        """Submit the request to the model workers, wait for its own answer and render it."""
        answer = await self.worker_client.run(
            prepared.job, arrived_at, keep_waiting=lambda: self.admission.refuse_unless_serving(waiting=True)
        )
        if isinstance(answer, ItemError):
            return answer
        record.add_timing(answer.timing, prepared.job.submitted_at)
        outcome = answer.outcome
        return outcome if isinstance(outcome, ItemError) else render(prepared.form, outcome)

    async def transcribe(self, received: Received) -> Response | ItemError:
        """The synchronous routes' handler: decode the upload, await the model worker's outcome, render it."""
        prepared = await self.prepare(received)
        return await self.await_outcome(prepared, received.arrived_at, received.record)
