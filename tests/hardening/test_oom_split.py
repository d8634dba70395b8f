"""A batch that runs out of GPU memory is split and retried, so no request fails for its neighbours' size."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from whisper.audio import SAMPLE_RATE
from whisper.model import Whisper

from app.contract import ItemError, PassStatistics, Reason, Transcript
from app.worker.engine import AudioItem, PassResult, Transcriber

# the simulated GPU holds this many seconds of audio in one pass
GPU_SECONDS = 60


class SimulatedGpu:
    """Stands in for Transcriber.run_batch: out of memory past GPU_SECONDS, one transcript per job otherwise."""

    def __init__(self) -> None:
        self.passes: list[int] = []
        self.cache_emptied = 0

    def run_batch(self, jobs: Sequence[AudioItem]) -> PassResult:
        seconds = sum(len(job.waveform) for job in jobs) / SAMPLE_RATE
        if seconds > GPU_SECONDS:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {seconds:g} s of audio in one pass")
        self.passes.append(len(jobs))
        transcripts = [Transcript(f"{len(job.waveform) // SAMPLE_RATE} s", language="en", duration=0.0) for job in jobs]
        return PassResult(list(transcripts), PassStatistics(len(jobs), seconds))

    def empty_cache(self) -> None:
        self.cache_emptied += 1


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> SimulatedGpu:
    simulated = SimulatedGpu()
    monkeypatch.setattr(Transcriber, "run_batch", lambda _, jobs: simulated.run_batch(jobs))
    monkeypatch.setattr(torch.cuda, "empty_cache", simulated.empty_cache)
    return simulated


def jobs_of(*seconds: int) -> list[AudioItem]:
    return [AudioItem(np.zeros(s * SAMPLE_RATE, dtype=np.float32)) for s in seconds]


def test_a_batch_too_large_for_the_gpu_is_split_until_every_job_fits(tiny_en_model: Whisper, gpu: SimulatedGpu) -> None:
    # 8 requests of 20 s and one of 50 s: together 210 s, far over the 60 s the GPU holds
    seconds = (20, 20, 50, 20, 20, 20, 20, 20, 20)
    passed = Transcriber(tiny_en_model).run_isolated(jobs_of(*seconds))
    results = passed.outcomes
    assert [r.text for r in results] == [f"{s} s" for s in seconds], "every request answered, in order"
    assert passed.statistics.windows == len(seconds), "the statistics add up over the halves"
    assert sum(gpu.passes) == len(seconds) and max(gpu.passes) > 1, "split only as far as needed"
    assert gpu.cache_emptied >= 1, "the allocator's cache is released before each retry"


def test_only_a_job_too_large_on_its_own_fails(tiny_en_model: Whisper, gpu: SimulatedGpu) -> None:
    results = Transcriber(tiny_en_model).run_isolated(jobs_of(10, 90, 10, 10)).outcomes
    assert [type(r) for r in results] == [Transcript, ItemError, Transcript, Transcript]
    assert results[1].reason is Reason.INFERENCE_FAILED
    assert "OutOfMemoryError" in results[1].message
