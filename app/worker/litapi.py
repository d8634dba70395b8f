"""WhisperLitAPI: the LitServe hooks that run in a model worker, thin calls into the engine.

Every hook returns values, never raises for one item's fault: LitServe fails a whole batch when
any hook raises, so each request's error travels as an `ItemError` beside its neighbours' results.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import litserve as ls
import torch
from whisper.audio import SAMPLE_RATE

from app import metrics
from app.config import Settings
from app.errors import ItemError, Reason
from app.web.audio import load_waveform
from app.web.request_log import Reported, WorkerTiming
from app.worker.engine import AudioJob, LanguageDetection, LanguageGuess, Transcriber, TranscriptionOptions
from app.worker.loading import default_model_spec, load_model
from app.worker.scheduler import ContinuousScheduler
from app.worker.segments import Transcript
from app.worker.slot_decoding import slots_that_fit

log = logging.getLogger(__name__)


# what the worker hands back for one request
Outcome = Transcript | LanguageGuess | ItemError


@dataclass(frozen=True)
class QueuedRequest:
    """What the HTTP process puts on the worker queue: a path on the tmpfs, never the bytes."""

    waveform_path: str
    work: TranscriptionOptions | LanguageDetection
    submitted_at: float  # time.monotonic(), which is system-wide on Linux


# windows per pass of the static decoder beside the continuous one (sampling, temperature fallback)
STATIC_WINDOWS = 16


def continuous_batching(settings: Settings) -> bool:
    """WHISPER_CONTINUOUS_BATCHING: "auto" is on where the model runs on a GPU."""
    if settings.continuous_batching == "auto":
        return resolve_device(settings.device) == "cuda"
    return settings.continuous_batching == "on"


def resolve_device(setting: str) -> str:
    """`auto` means CUDA when torch sees a GPU."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


class WhisperLitAPI(ls.LitAPI):
    """Batched Whisper transcription behind LitServe.

    >>> server = ls.LitServer(WhisperLitAPI(settings, max_batch_size=16, spec=TranscriptionRoutes(settings, admission)))
    """

    def __init__(self, settings: Settings, **litapi_options: object) -> None:
        super().__init__(**litapi_options)
        self.settings = settings

    def setup(self, device: str) -> None:
        if device.startswith("cuda"):
            # LitServe leaves every worker's current device at cuda:0: without this, a worker on
            # cuda:1 would also hold a CUDA context (and allocator caches) on the first GPU
            torch.cuda.set_device(device)
        spec = self.settings.model or default_model_spec(torch.cuda.is_available())
        model = load_model(spec, device, self.settings.model_cache_dir, self.settings.synthetic_tokens)
        if self.settings.synthetic_tokens_per_second and hasattr(model, "tokens_per_second"):
            model.tokens_per_second = self.settings.synthetic_tokens_per_second
        # LitServe numbers its workers; with several per device the label tells them apart
        self.worker_label = f"{device}/{os.environ.get('LITSERVE_WORKER_ID', '0')}"
        # workers on one GPU start together and each would see the whole card free
        gpu_share = 1.0 / self.settings.workers_per_device
        self.scheduler: ContinuousScheduler | None = None
        if continuous_batching(self.settings):
            # the static decoder only serves what the slots do not (sampling, fallback): it stays small
            self.transcriber = Transcriber(model, min(STATIC_WINDOWS, self.settings.max_windows_per_pass), gpu_share)
            slots = self.settings.max_windows_per_pass
            if model.device.type == "cuda":
                # sized to the memory left once the static decoder holds its share
                slots = slots_that_fit(model, slots, gpu_share)
            self.scheduler = ContinuousScheduler(self.transcriber, slots)
            self.others: list[tuple[str, AudioJob]] = []
        else:
            self.transcriber = Transcriber(model, self.settings.max_windows_per_pass, gpu_share)
        log.info("model %s ready on %s", spec, device)

    @property
    def busy(self) -> bool:
        """Continuous batching: whether any request is in the worker (decoding, waiting, or aside)."""
        return bool(self.others) or self.scheduler.busy

    def submit(self, uid: str, job: AudioJob) -> None:
        """Continuous batching: a request joins the running decode at the next step."""
        if self.scheduler.takes(job):
            self.scheduler.submit(uid, job)
        else:
            self.others.append((uid, job))

    def step(self) -> list[tuple[str, Reported]]:
        """One scheduler step (after any request the slots do not take, run the static way): the answers."""
        started = time.monotonic()
        label = self.worker_label
        answers = []
        if self.others:
            jobs = [job for _, job in self.others]
            for (uid, _), outcome in zip(self.others, self.transcriber.run_isolated(jobs), strict=True):
                answers.append((uid, outcome, started))
            self.others = []
        occupied = self.scheduler.occupied
        for finished in self.scheduler.step():
            answers.append((finished.key, finished.outcome, finished.started_at))
        finished_at = time.monotonic()
        # a "pass" is one step here: its time, the windows in the slots, the requests it answered
        metrics.INFERENCE_SECONDS.labels(label).observe(finished_at - started)
        metrics.BATCH_WINDOWS.labels(label).observe(occupied)
        if answers:
            metrics.BATCH_SIZE.labels(label).observe(len(answers))
        reported = []
        for uid, outcome, began in answers:
            if isinstance(outcome, Transcript):
                metrics.AUDIO_SECONDS.labels(label).inc(outcome.duration)
            reported.append((uid, Reported(outcome, WorkerTiming(began, finished_at - began, occupied))))
        if answers:
            self.record_gpu_memory()
        return reported

    def decode_request(self, request: QueuedRequest) -> AudioJob | ItemError:
        metrics.QUEUE_WAIT.labels(self.worker_label).observe(time.monotonic() - request.submitted_at)
        try:
            return AudioJob(load_waveform(Path(request.waveform_path)), request.work)
        except OSError as error:
            return ItemError(
                Reason.INFERENCE_FAILED,
                f"the decoded audio vanished before inference: {error.strerror}",
            )

    def batch(self, items: list[AudioJob | ItemError]) -> list[AudioJob | ItemError]:
        return items

    def predict(self, items: list[AudioJob | ItemError]) -> list[Reported | ItemError]:
        if not isinstance(items, list):
            # with max_batch_size 1 LitServe runs its unbatched loop, which passes one item alone
            return self.predict([items])[0]
        jobs = [item for item in items if isinstance(item, AudioJob)]
        if not jobs:
            return items
        started = time.monotonic()
        results = iter(self.transcriber.run_isolated(jobs))
        label = self.worker_label
        timing = WorkerTiming(started, time.monotonic() - started, len(jobs))
        metrics.INFERENCE_SECONDS.labels(label).observe(timing.inference_seconds)
        metrics.BATCH_SIZE.labels(label).observe(len(jobs))
        metrics.BATCH_WINDOWS.labels(label).observe(self.transcriber.last_window_count)
        metrics.AUDIO_SECONDS.labels(label).inc(sum(len(job.waveform) for job in jobs) / SAMPLE_RATE)
        self.record_gpu_memory()
        return [Reported(next(results), timing) if isinstance(item, AudioJob) else item for item in items]

    def record_gpu_memory(self) -> None:
        if self.transcriber.device.type == "cuda":
            device = self.transcriber.device
            metrics.GPU_MEMORY.labels(self.worker_label, "allocated").set(torch.cuda.memory_allocated(device))
            metrics.GPU_MEMORY.labels(self.worker_label, "reserved").set(torch.cuda.memory_reserved(device))

    def unbatch(self, results: list[Reported | ItemError]) -> list[Reported | ItemError]:
        return results

    def encode_response(self, result: Reported | ItemError) -> Reported | ItemError:
        return result
