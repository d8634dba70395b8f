"""The Prometheus metrics of the service, in one place, correct across LitServe's processes.

HTTP processes and model workers write to one prometheus_client multiprocess directory, which must
be chosen before prometheus_client is first imported; /metrics aggregates all of them.
"""

from __future__ import annotations

import os
import tempfile

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# children (spawned workers, forked HTTP servers) inherit the directory the first process chose
os.environ.setdefault(MULTIPROC_ENV, tempfile.mkdtemp(prefix="whisper-metrics-"))

from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter(
    "whisper_requests_total",
    "HTTP requests answered, by route and status code.",
    ["route", "status"],
)
REQUEST_SECONDS = Histogram(
    "whisper_request_duration_seconds",
    "Time from request arrival to response.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "whisper_requests_in_flight",
    "Requests received and not yet answered.",
    multiprocess_mode="livesum",
)
ERRORS = Counter("whisper_errors_total", "Requests that failed, by reason.", ["reason"])
DECODE_SECONDS = Histogram(
    "whisper_audio_decode_seconds",
    "ffmpeg decoding time per upload.",
    buckets=LATENCY_BUCKETS,
)

BATCH_SIZE = Histogram("whisper_batch_size", "Requests per model pass.", ["worker"], buckets=COUNT_BUCKETS)
BATCH_WINDOWS = Histogram(
    "whisper_batch_windows",
    "30-second windows per model pass.",
    ["worker"],
    buckets=COUNT_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "whisper_queue_wait_seconds",
    "Time a request waited for its model pass.",
    ["worker"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "whisper_inference_seconds",
    "Wall time of one model pass.",
    ["worker"],
    buckets=LATENCY_BUCKETS,
)
GPU_MEMORY = Gauge(
    "whisper_gpu_memory_bytes",
    "CUDA memory of a model worker: allocated by tensors, reserved by torch's caching allocator.",
    ["worker", "kind"],
    multiprocess_mode="livemax",
)
AUDIO_SECONDS = Counter("whisper_audio_seconds_total", "Seconds of audio transcribed.", ["worker"])


def clear_multiprocess_dir() -> None:
    """Forget values from an earlier run that used the same directory."""
    directory = os.environ[MULTIPROC_ENV]
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.remove(os.path.join(directory, name))


def exposition() -> tuple[bytes, str]:
    """Metrics of every process, in Prometheus' text format."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST
