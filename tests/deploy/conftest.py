"""Session fixtures of the deployment checks: the Compose model as Docker Compose renders it, and one
real service, configured as the CPU variant of docker-compose.yml configures it, scraped by a real Prometheus.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.service import ServiceProcess
from harness.speech import SENTENCES, speak
from tests.deploy.prometheus import PrometheusProcess
from tests.deploy.tools import COMPOSE_FILE, CPU_COMPOSE_FILE, compose_model

# where the container's filesystem and network differ from a test's; ServiceProcess picks these
CONTAINER_ONLY = ("WHISPER_HOST", "WHISPER_PORT", "WHISPER_TMP_DIR", "WHISPER_MODEL_CACHE_DIR")


@pytest.fixture(scope="session")
def gpu_compose() -> dict:
    """`docker compose config` of the default deployment."""
    return compose_model(COMPOSE_FILE)


@pytest.fixture(scope="session")
def cpu_compose() -> dict:
    """`docker compose config` of the CPU variant (docker-compose.cpu.yml over docker-compose.yml)."""
    return compose_model(COMPOSE_FILE, CPU_COMPOSE_FILE)


@pytest.fixture(scope="session")
def live_service(tmp_path_factory: pytest.TempPathFactory, cpu_compose: dict) -> Iterator[ServiceProcess]:
    """The service with the environment the CPU variant's container gets (config/whisper.env and overrides)."""
    environment = {
        name: value
        for name, value in cpu_compose["services"]["whisper"]["environment"].items()
        if name not in CONTAINER_ONLY
    }
    workdir = tmp_path_factory.mktemp("deploy-service")
    process = ServiceProcess(workdir, workdir / "model-cache", **environment).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(SENTENCES[0], tmp_path_factory.mktemp("deploy-audio") / "fox.wav")


@pytest.fixture(scope="session")
def traffic(live_service: ServiceProcess, speech: Path) -> None:
    """One transcription and one unreadable upload, so success and error series both exist."""
    assert live_service.transcribe(speech).status_code == 200
    garbage = speech.with_name("garbage.wav")
    garbage.write_bytes(b"this is not audio" * 64)
    assert live_service.transcribe(garbage).status_code == 415


@pytest.fixture(scope="session")
def exported_names(live_service: ServiceProcess, traffic: None) -> set[str]:
    """Names of the samples /metrics serves after that traffic (whisper_batch_size_bucket, ...)."""
    return {sample.partition("{")[0] for sample in live_service.metric_samples()}


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory, live_service: ServiceProcess) -> Iterator[PrometheusProcess]:
    process = PrometheusProcess(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{live_service.port}").start()
    yield process
    process.stop()
