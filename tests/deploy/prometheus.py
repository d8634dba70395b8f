"""A real Prometheus (Debian's binary) running the shipped scrape configs against a test service.

config/prometheus.yml changes only where a container sees differently: the target's address, and a 1 s
scrape interval so a test does not wait 15 s a scrape. The job of config/prometheus-kubernetes.yml runs
beside it, its pod discovery replaced by one static target carrying the labels that Kubernetes discovery
would give a pod of config/kubernetes/deployment.yaml (Debian's Prometheus has no Kubernetes discovery).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import requests
import yaml

from harness.service import free_port, wait_until_ready
from tests.deploy.tools import CONFIG, KUBERNETES, load_yaml, require

SCRAPE_INTERVAL = "1s"
STARTUP_SECONDS = 30.0
# job names are unique within one Prometheus; in a cluster this job is called whisper
KUBERNETES_JOB = "kubernetes-whisper"
POD = {"namespace": "whisper-test", "pod": "whisper-5f7d8c9b6-x2k4q"}


def meta_name(name: str) -> str:
    """A Kubernetes label or annotation name as Prometheus' discovery spells it (app_kubernetes_io_name)."""
    return "".join(character if character.isalnum() else "_" for character in name)


def discovered_pod(target: str) -> list[dict]:
    """static_configs standing in for `role: pod` discovery of one pod of the Deployment."""
    template = load_yaml(KUBERNETES / "deployment.yaml")["spec"]["template"]
    labels = {
        "__meta_kubernetes_namespace": POD["namespace"],
        "__meta_kubernetes_pod_name": POD["pod"],
        **{f"__meta_kubernetes_pod_label_{meta_name(k)}": v for k, v in template["metadata"]["labels"].items()},
        **{
            f"__meta_kubernetes_pod_annotation_{meta_name(k)}": v
            for k, v in template["metadata"]["annotations"].items()
        },
    }
    (container,) = template["spec"]["containers"]
    # discovery yields one target per container port; only the service's is reachable here
    return [
        {"targets": [target], "labels": {**labels, "__meta_kubernetes_pod_container_port_name": port["name"]}}
        for port in container["ports"]
    ]


def kubernetes_job(target: str) -> dict:
    (job,) = load_yaml(CONFIG / "prometheus-kubernetes.yml")["scrape_configs"]
    del job["kubernetes_sd_configs"]
    return {**job, "job_name": KUBERNETES_JOB, "static_configs": discovered_pod(target)}


class PrometheusProcess:
    """`prometheus` with the shipped scrape config and alert rules, scraping `target` (host:port)."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        self.storage = workdir / "data"
        self._write_config(target)
        self.process: subprocess.Popen | None = None

    def _write_config(self, target: str) -> None:
        config = load_yaml(CONFIG / "prometheus.yml")
        config["global"].update(scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL)
        (job,) = config["scrape_configs"]
        (static,) = job["static_configs"]
        static["targets"] = [target]
        config["scrape_configs"].append(kubernetes_job(target))
        self.config_path.write_text(yaml.safe_dump(config))
        # rule_files are relative to the config file, as in the container
        for rule_file in config["rule_files"]:
            shutil.copy(CONFIG / rule_file, self.config_path.parent / rule_file)

    def start(self) -> PrometheusProcess:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                require("prometheus"),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.storage}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until_ready(self.process, f"{self.url}/-/ready", STARTUP_SECONDS, self.logs)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def api(self, path: str, **params: str) -> dict | list:
        """The `data` of a successful API answer; an error (a bad query, say) fails with Prometheus' message."""
        body = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert body["status"] == "success", f"{path} {params}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant query: one {'metric': labels, 'value': [time, text]} per series."""
        return self.api("query", query=expr)["result"]

    def wait_for(self, expr: str, seconds: float = 20.0) -> list[dict]:
        """The result of `expr` once it has any series (scrapes and rule evaluations take a moment)."""
        deadline = time.monotonic() + seconds
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.25)
