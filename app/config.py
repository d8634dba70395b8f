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
    # windows join and leave the running decode at every token step (GPU); "auto": on with CUDA
    continuous_batching: Literal["auto", "on", "off"] = "auto"
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
