"""WhisperLitAPI: the LitServe hooks that run in a model worker, thin calls into the engine.

Every hook returns values, never raises for one item's fault: LitServe fails a whole batch when
any hook raises, so each request's error travels as an `ItemError` beside its neighbours' results.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import litserve as ls
import torch

from app import metrics
from app.config import ConfigurationError, Settings
from app.contract import ItemError, PassStatistics, QueuedJob, Reason, Reported, WorkerTiming, read_waveform
from app.worker.engine import AudioJob, Transcriber
from app.worker.loading import load_model, model_display_name
from app.worker.vad import VadSplitter

log = logging.getLogger(__name__)


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
        model = load_model(self.model_spec, device, settings.model_cache_dir, settings.synthetic_tokens)
        # LitServe numbers its workers; with several per device the label tells them apart
        self.worker_label = f"{device}/{os.environ.get('LITSERVE_WORKER_ID', '0')}"
        # workers on one GPU start together and each would see the whole card free
        gpu_share = 1.0 / settings.workers_per_device
        self.transcriber = Transcriber(
            model,
            settings.max_windows_per_pass,
            gpu_share,
            splitter=VadSplitter(model.device, enabled=settings.vad),
            model_name=model_display_name(self.model_spec),
        )
        log.info("model %s ready on %s", self.model_spec, device)

    def decode_request(self, request: QueuedJob) -> AudioJob | ItemError:
        metrics.QUEUE_WAIT.labels(self.worker_label).observe(time.monotonic() - request.submitted_at)
        try:
            return AudioJob(read_waveform(Path(request.waveform_path)), request.work)
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
            return items  # type: ignore[return-value]
        started = time.monotonic()
        result = self.transcriber.run_isolated(jobs)
        timing = WorkerTiming(started, time.monotonic() - started, len(jobs))
        self.record(timing, result.statistics)
        outcomes = iter(result.outcomes)
        return [Reported(next(outcomes), timing) if isinstance(item, AudioJob) else item for item in items]

    def record(self, timing: WorkerTiming, statistics: PassStatistics) -> None:
        label = self.worker_label
        metrics.INFERENCE_SECONDS.labels(label).observe(timing.inference_seconds)
        metrics.BATCH_SIZE.labels(label).observe(timing.batch_size)
        metrics.BATCH_WINDOWS.labels(label).observe(statistics.windows)
        metrics.AUDIO_SECONDS.labels(label).inc(statistics.audio_seconds)
        if self.transcriber.device.type == "cuda":
            device = self.transcriber.device
            metrics.GPU_MEMORY.labels(label, "allocated").set(torch.cuda.memory_allocated(device))
            metrics.GPU_MEMORY.labels(label, "reserved").set(torch.cuda.memory_reserved(device))

    def unbatch(self, results: list[Reported | ItemError]) -> list[Reported | ItemError]:
        return results

    def encode_response(self, result: Reported | ItemError) -> Reported | ItemError:
        return result
