"""Fixtures for the jobs tests: a PostgreSQL server for the session, and a store on each backend."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.jobs_client import BUDGET_BYTES, STARTUP_SECONDS, WEBHOOK_ATTEMPTS, WEBHOOK_TIMEOUT_SECONDS, jobs_env
from harness.service import ServiceProcess
from harness.speech import looped
from tests.postgres import postgres_server


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> str:
    """A new, empty database on the session's server, so each test starts without jobs."""
    import psycopg

    name = f"jobs_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def jobs_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """WHISPER_JOBS_DB for each backend: a SQLite file, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.sqlite3")
    return request.getfixturevalue("fresh_postgres_url")


@pytest.fixture(scope="session")
def few_minutes_speech(minute_long_wav: Path) -> Path:
    """About three minutes of speech (4 job windows of 60 s): long enough to cancel or interrupt a job part way."""
    return looped(minute_long_wav, 3, minute_long_wav.parent / "three-minutes.ogg")


@pytest.fixture(scope="session")
def jobs_service(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Iterator[ServiceProcess]:
    """A service on SQLite with a key, a small upload budget and webhooks allowed to reach this host."""
    workdir = tmp_path_factory.mktemp("jobs-service")
    service = ServiceProcess(
        workdir,
        model_cache_dir,
        STARTUP_SECONDS,
        **jobs_env(workdir / "jobs.db", workdir / "job-uploads"),
        WHISPER_JOBS_MAX_BYTES=str(BUDGET_BYTES),
        WHISPER_WEBHOOK_ALLOW_PRIVATE="1",
        WHISPER_WEBHOOK_ATTEMPTS=str(WEBHOOK_ATTEMPTS),
        WHISPER_WEBHOOK_BACKOFF="0.2",
        WHISPER_WEBHOOK_TIMEOUT=str(WEBHOOK_TIMEOUT_SECONDS),
    )
    # where its clients reach it, for webhooks' result_url (the port is only known once the process is made)
    service.env["WHISPER_PUBLIC_URL"] = service.url
    with service as process:
        yield process
