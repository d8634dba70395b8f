"""Starting the real service (`python -m app`) on a free port, for tests that talk HTTP to it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

STARTUP_SECONDS = 180.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServiceProcess:
    """One `python -m app` process with its own port, upload dir and metrics dir."""

    def __init__(self, workdir: Path, model_cache_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upload_dir = workdir / "uploads"
        self.log_path = workdir / "service.log"
        metrics_dir = workdir / "metrics"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "WHISPER_PORT": str(self.port),
            "WHISPER_HOST": "127.0.0.1",
            "WHISPER_DEVICE": "cpu",
            "WHISPER_TMP_DIR": str(self.upload_dir),
            "WHISPER_MODEL_CACHE_DIR": str(model_cache_dir),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> ServiceProcess:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app"], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_until_healthy()
        return self

    def wait_until_healthy(self) -> None:
        """Poll /health until the model is loaded; fail early with the log if the process died."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"service not healthy after {STARTUP_SECONDS} s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def metric_samples(self) -> dict[str, float]:
        """The /metrics exposition as {'name{labels}': value}."""
        text = requests.get(f"{self.url}/metrics", timeout=10).text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def transcribe(self, path: Path, field: str = "file", **form: str) -> requests.Response:
        with path.open("rb") as audio:
            return requests.post(f"{self.url}/transcribe", files={field: (path.name, audio)}, data=form, timeout=300)
