"""Starting the real service (`python -m app`) on a free port, for tests that talk HTTP to it."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil
import requests

STARTUP_SECONDS = 180.0
POLL_SECONDS = 0.05
# uvicorn's line as each HTTP process starts serving
HTTP_PROCESS_LINE = re.compile(r"Started server process \[(\d+)\]")

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str, poll_seconds: float = POLL_SECONDS) -> T:
    """Poll `condition` until it returns something truthy, and return that; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(poll_seconds)
    raise TimeoutError(f"not within {timeout} s: {what}")


def wait_until_ready(process: subprocess.Popen, url: str, timeout: float, logs: Callable[[], str]) -> None:
    """Poll `url` until it answers 200; fail at once, with the log, if `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service process exited with {process.returncode}:\n{logs()}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            # not listening yet, or too busy loading to answer within the second: both mean not ready
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s:\n{logs()}")


# a label in a metric sample's key, as ServiceProcess.metric_samples gives it: le="1.0"
LABEL = re.compile(r'(\w+)="([^"]*)"')


def sample_name(sample: str) -> str:
    """The metric name of a sample key as ServiceProcess.metric_samples gives it: 'name{a="1"}' -> 'name'."""
    return sample.split("{")[0]


def sample_labels(sample: str) -> dict[str, str]:
    """The labels of a sample key as ServiceProcess.metric_samples gives it: 'name{a="1",b="2"}'."""
    return dict(LABEL.findall(sample))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServiceProcess:
    """One `python -m app` process with its own port, upload dir and metrics dir."""

    def __init__(
        self,
        workdir: Path,
        model_cache_dir: Path,
        startup_seconds: float = STARTUP_SECONDS,
        max_open_files: int | None = None,
        **env: str,
    ) -> None:
        self.startup_seconds = startup_seconds
        # the service's open-file limit (ulimit -n), for tests that exhaust it
        self.max_open_files = max_open_files
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
            # each service its own job store, never the user's default one
            "WHISPER_JOBS_DB": str(workdir / "jobs.db"),
            "WHISPER_JOBS_DIR": str(workdir / "job-uploads"),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.process: subprocess.Popen | None = None
        key = self.env.get("WHISPER_API_KEY")
        self.auth_headers = {"Authorization": f"Bearer {key}"} if key else {}

    def start(self) -> ServiceProcess:
        self.launch()
        try:
            self.wait_until_healthy()
        except BaseException:
            # a service that never became healthy is stopped here: its test never gets it to stop
            self.stop()
            raise
        return self

    def launch(self) -> ServiceProcess:
        """Start the process without waiting for it, so several services load their models at once."""
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self._limit_open_files if self.max_open_files else None,
        )
        return self

    def _limit_open_files(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.max_open_files, self.max_open_files))

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def wait_until_healthy(self) -> None:
        """Poll /health until the model is loaded; fail early with the log if the process died."""
        wait_until_ready(self.process, f"{self.url}/health", self.startup_seconds, self.logs)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def send_signal(self, signum: int) -> None:
        """Signal the main process alone, as `docker stop` or Kubernetes do."""
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit status of the main process, once it has exited."""
        return self.process.wait(timeout=timeout)

    def inference_workers(self) -> list[psutil.Process]:
        """LitServe's model workers: the children it started with multiprocessing's spawn."""
        children = psutil.Process(self.process.pid).children()
        return [child for child in children if any("spawn_main" in part for part in child.cmdline())]

    def http_processes(self) -> list[psutil.Process]:
        """The uvicorn processes serving HTTP, as their start-up lines in the log name them."""
        return [psutil.Process(int(pid)) for pid in HTTP_PROCESS_LINE.findall(self.log_path.read_text())]

    def rss_by_role(self) -> dict[str, int]:
        """Resident memory in bytes of the model workers (spawned) and of every other process of the tree."""
        main = psutil.Process(self.process.pid)
        workers = {worker.pid for worker in self.inference_workers()}
        totals = {"model workers": 0, "main and HTTP": 0}
        for process in [main, *main.children(recursive=True)]:
            totals["model workers" if process.pid in workers else "main and HTTP"] += process.memory_info().rss
        return totals

    def metric_total(self, name: str) -> float:
        """The sum of a metric over all its label values (histograms: pass the _count or _sum series)."""
        return sum(value for sample, value in self.metric_samples().items() if sample_name(sample) == name)

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
        text = requests.get(f"{self.url}/metrics", headers=self.auth_headers, timeout=10).text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def transcribe(self, path: Path, field: str = "file", **form: str) -> requests.Response:
        with path.open("rb") as audio:
            return requests.post(
                f"{self.url}/transcribe",
                files={field: (path.name, audio)},
                data=form,
                headers=self.auth_headers,
                timeout=300,
            )
