"""Several model workers behind one port: each batches on its own, and all of them receive work."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.service import ServiceProcess, sample_labels, sample_name
from tests.integration.test_transcribe import send_together

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Iterator[ServiceProcess]:
    # on a CPU LitServe has one device, so two workers per device is how one machine tests WHISPER_DEVICES=2
    with ServiceProcess(
        tmp_path_factory.mktemp("two-workers"),
        model_cache_dir,
        WHISPER_WORKERS_PER_DEVICE="2",
        WHISPER_MAX_BATCH_SIZE="4",
        WHISPER_BATCH_TIMEOUT="0.5",
    ) as process:
        yield process


def test_both_workers_serve_one_port(two_workers: ServiceProcess, five_second_clips: list[Path]) -> None:
    responses = send_together(two_workers, five_second_clips)
    assert [r.status_code for r in responses] == [200] * len(five_second_clips)
    samples = two_workers.metric_samples()
    passes = {
        sample_labels(sample)["worker"]: value
        for sample, value in samples.items()
        if sample_name(sample) == "whisper_batch_size_count"
    }
    assert set(passes) == {"cpu/0", "cpu/1"}, passes
    assert all(count > 0 for count in passes.values())
    requests_per_worker = {
        sample: value for sample, value in samples.items() if sample_name(sample) == "whisper_batch_size_sum"
    }
    assert sum(requests_per_worker.values()) == len(five_second_clips), "per-worker series must add up to the total"
