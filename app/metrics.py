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
CONNECTIONS_REFUSED = Counter(
    "whisper_connections_refused_total",
    "Connections closed or refused before a route ran: over the connection limit, headers too slow, large or many.",
    ["reason"],
)
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
# windows per audio minute: 60 * rate(whisper_windows_total) / rate(whisper_audio_seconds_total); each window
# is a whole 30 s encoder pass and decode, so packing shows here
WINDOWS = Counter("whisper_windows_total", "Windows encoded and decoded (seek-back rounds included).", ["worker"])

# the job store's counts, read from the store by each HTTP process's runner: every replica reports the same
# totals for a shared PostgreSQL store, so aggregate them with max, not sum
JOBS = Gauge("whisper_jobs", "Jobs in the store, by status.", ["status"], multiprocess_mode="mostrecent")
JOBS_QUEUE_DEPTH = Gauge(
    "whisper_jobs_queue_depth", "Jobs waiting for a runner (status queued).", multiprocess_mode="mostrecent"
)
JOBS_OLDEST_QUEUED_SECONDS = Gauge(
    "whisper_jobs_oldest_queued_seconds",
    "How long the oldest queued job has waited; 0 with none waiting.",
    multiprocess_mode="mostrecent",
)
JOBS_FINISHED = Counter("whisper_jobs_finished_total", "Jobs this instance ended, by final status.", ["status"])
JOB_SECONDS = Histogram(
    "whisper_job_duration_seconds",
    "Time from a job's submission to its completion or failure.",
    buckets=(*LATENCY_BUCKETS, 1800, 3600, 7200, 14400),
)
WEBHOOK_DELIVERIES = Counter(
    "whisper_webhook_deliveries_total",
    "Webhook attempts by outcome: delivered, retried (a failed attempt with more to come), failed, refused (URL).",
    ["outcome"],
)
JOB_STORE_ERRORS = Counter(
    "whisper_job_store_errors_total",
    "Job store operations that failed (WHISPER_JOBS_DB or WHISPER_JOBS_DIR unreadable, read-only or damaged).",
)
JOB_UPLOADS_SWEPT = Counter(
    "whisper_job_uploads_swept_total", "Job uploads found in WHISPER_JOBS_DIR with no live job, and deleted."
)

REALTIME_SESSIONS = Gauge(
    "whisper_realtime_sessions_open", "Live transcription sessions open (/v1/realtime).", multiprocess_mode="livesum"
)
REALTIME_SESSIONS_TOTAL = Counter(
    "whisper_realtime_sessions_ended_total",
    "Live transcription sessions by how they ended: closed (by the client), idle, refused (over the cap), error.",
    ["outcome"],
)
REALTIME_UTTERANCES = Counter(
    "whisper_realtime_utterances_total",
    "Utterances of live sessions by outcome: completed, failed, abandoned (the client left before the transcript).",
    ["outcome"],
)
REALTIME_LATENCY = Histogram(
    "whisper_realtime_completed_seconds",
    "From the end of an utterance (speech stopped, or the client's commit) to its completed transcript being sent.",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30),
)


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
