"""The compose stack for real: docker-compose.yml with docker-compose.cpu.yml, only the images (and the network)
swapped for what the test engine has. Prometheus scrapes the service and counts a transcription; `down` ends it.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness.service import wait_until
from tests.deploy.tools import COMPOSE_FILE, CPU_COMPOSE_FILE, ROOT, docker_compose, load_yaml
from tests.image.docker import STARTUP_SECONDS, answers_health, docker

pytestmark = pytest.mark.image

TEST_OVERRIDE = Path(__file__).with_name("docker-compose.test.yml")
PROJECT = load_yaml(COMPOSE_FILE)["name"]
# the ports docker-compose.yml publishes, which the host network makes the host's own
SERVICE_URL = "http://127.0.0.1:8000"
PROMETHEUS_URL = "http://127.0.0.1:9090"
# Prometheus scrapes every 15 s (config/prometheus.yml); a few rounds on a busy machine
SCRAPE_SECONDS = 90


def compose(*arguments: str, timeout: float = 300) -> str:
    """Docker Compose on the three files; a failure fails the test with everything it said."""
    files = [f"--file={path}" for path in (COMPOSE_FILE, CPU_COMPOSE_FILE, TEST_OVERRIDE)]
    command = [docker_compose(), *files, *arguments]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"docker compose {' '.join(arguments)} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def project_containers() -> list[str]:
    return docker("ps", "--all", "--quiet", f"--filter=label=com.docker.compose.project={PROJECT}").split()


def prometheus_query(expression: str) -> list[dict]:
    answer = requests.get(f"{PROMETHEUS_URL}/api/v1/query", params={"query": expression}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.fixture(scope="module")
def stack(image: str, prometheus_image: str) -> Iterator[None]:
    """`docker compose up -d` of the CPU variant; `down --volumes` afterwards, whatever the tests did."""
    compose("down", "--volumes")
    busy = [port for port in (8000, 9090) if not port_is_free(port)]
    assert busy == [], f"the stack's ports are taken on this machine: {busy}"
    compose("up", "--detach", "--no-build", "--pull=never")
    try:
        wait_until(lambda: answers_health(SERVICE_URL), STARTUP_SECONDS, "the service answers /health")
        yield
    finally:
        compose("down", "--volumes")


def test_prometheus_scrapes_the_service_and_counts_a_transcription(stack: None, fox_wav: Path) -> None:
    with fox_wav.open("rb") as audio:
        response = requests.post(f"{SERVICE_URL}/transcribe", files={"file": (fox_wav.name, audio)}, timeout=300)
    assert response.status_code == 200, response.text

    def whisper_target() -> dict | None:
        targets = requests.get(f"{PROMETHEUS_URL}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        found = [target for target in targets if target["labels"]["job"] == "whisper"]
        return found[0] if found and found[0]["health"] == "up" else None

    target = wait_until(whisper_target, SCRAPE_SECONDS, "Prometheus reports the whisper target up")
    assert target["scrapeUrl"] == "http://whisper:8000/metrics"

    def transcriptions() -> float:
        result = prometheus_query('sum(whisper_requests_total{route="/transcribe", status="200"})')
        return float(result[0]["value"][1]) if result else 0.0

    assert wait_until(transcriptions, SCRAPE_SECONDS, "Prometheus has the transcription") == 1.0


def test_down_leaves_nothing_running(stack: None) -> None:
    assert len(project_containers()) == 2
    compose("down", "--volumes")
    assert project_containers() == []
    assert docker("volume", "ls", "--quiet", f"--filter=label=com.docker.compose.project={PROJECT}").split() == []
    assert port_is_free(8000) and port_is_free(9090)
