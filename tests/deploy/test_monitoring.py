"""The monitoring as it runs: the real service (the CPU variant's configuration) scraped by a real
Prometheus with the shipped scrape configs and alert rules, the dashboard's and the autoscaler's queries
evaluated there, and the image's health check and the liveness probe's premise tried on the live service."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.metrics import MetricWrapperBase

from app import metrics
from harness.service import ServiceProcess, free_port
from harness.speech import long_speech
from tests.deploy import dashboard, dockerfile
from tests.deploy.kubernetes import adapter_rule, container
from tests.deploy.prometheus import KUBERNETES_JOB, POD, PrometheusProcess
from tests.deploy.tools import CONFIG, load_yaml

pytestmark = pytest.mark.integration

# exported only by CUDA workers, so absent from a CPU service: checked against app/metrics.py instead
GPU_ONLY_METRICS = {"whisper_gpu_memory_bytes"}
# audio that keeps the model worker busy for seconds on a CI machine
BUSY_AUDIO_SECONDS = 20


def alert_exprs() -> list[str]:
    return [rule["expr"] for group in load_yaml(CONFIG / "alerts.yml")["groups"] for rule in group["rules"]]


def test_prometheus_scrapes_the_service(prometheus: PrometheusProcess) -> None:
    (target,) = prometheus.wait_for('up{job="whisper"} == 1')
    assert target["metric"]["instance"].startswith("127.0.0.1:")


def test_metrics_are_queryable_after_a_transcription(prometheus: PrometheusProcess, traffic: None) -> None:
    assert prometheus.wait_for('whisper_requests_total{route="/transcribe", status="200"} >= 1')
    assert prometheus.wait_for('whisper_errors_total{reason="unreadable_audio"} >= 1')
    assert prometheus.wait_for("whisper_audio_seconds_total > 0")
    assert prometheus.wait_for("whisper_batch_size_count >= 1")


def test_every_dashboard_query_runs_and_shows_data(prometheus: PrometheusProcess, traffic: None) -> None:
    for title, expr in dashboard.queries():
        # api() fails on any query Prometheus rejects; GPU-only ones parse but have no data here
        if dashboard.metric_names(expr) & GPU_ONLY_METRICS:
            prometheus.query(dashboard.runnable(expr))
            continue
        # a rate needs two scrapes after the traffic
        assert prometheus.wait_for(dashboard.runnable(expr), seconds=10), f"{title}: {expr} has no data"


def test_dashboard_variables_find_their_values(prometheus: PrometheusProcess, traffic: None) -> None:
    for name, variable in dashboard.variables().items():
        selector, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"]).groups()
        assert any(label in series["metric"] for series in prometheus.wait_for(selector)), name


def test_queries_name_only_metrics_the_service_exports(exported_names: set[str]) -> None:
    used = {name for _, expr in dashboard.queries() for name in dashboard.metric_names(expr)}
    used |= {name for expr in alert_exprs() for name in dashboard.metric_names(expr)}
    used |= dashboard.metric_names(adapter_rule()["seriesQuery"])
    assert used - GPU_ONLY_METRICS <= exported_names, sorted(used - GPU_ONLY_METRICS - exported_names)


def test_gpu_only_metrics_are_defined_by_the_service() -> None:
    defined = {
        family.name
        for metric in vars(metrics).values()
        if isinstance(metric, MetricWrapperBase)
        for family in metric.describe()
    }
    assert defined >= GPU_ONLY_METRICS, f"app/metrics.py does not define {sorted(GPU_ONLY_METRICS - defined)}"


def test_alert_rules_load_and_stay_quiet(prometheus: PrometheusProcess) -> None:
    deadline = time.monotonic() + 10
    while True:
        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        if all(rule["health"] == "ok" for rule in rules) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert {rule["name"]: rule["health"] for rule in rules} == {rule["name"]: "ok" for rule in rules}
    assert len(rules) == len(alert_exprs())
    assert [rule["name"] for rule in rules if rule["state"] != "inactive"] == []


def test_kubernetes_job_labels_series_with_their_pod(prometheus: PrometheusProcess) -> None:
    assert prometheus.wait_for(f'up{{job="{KUBERNETES_JOB}", namespace="{POD["namespace"]}", pod="{POD["pod"]}"}} == 1')


def test_adapter_query_gives_the_autoscaler_a_value_per_pod(prometheus: PrometheusProcess) -> None:
    rule = adapter_rule()
    (series,) = dashboard.metric_names(rule["seriesQuery"])
    # what prometheus-adapter sends for `kubectl get --raw .../pods/*/whisper_requests_in_flight`
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", f'namespace="{POD["namespace"]}",pod=~"{POD["pod"]}"')
        .replace("<<.GroupBy>>", "pod")
    )
    assert prometheus.wait_for(rule["seriesQuery"]), "the adapter would discover no series"
    (value,) = prometheus.wait_for(query)
    assert value["metric"] == {"pod": POD["pod"]}
    assert float(value["value"][1]) >= 0


def healthcheck(port: int) -> subprocess.CompletedProcess:
    """The image's HEALTHCHECK command, as Docker runs it inside the container."""
    (instruction,) = dockerfile.runtime().arguments("HEALTHCHECK")
    command = dockerfile.exec_form(instruction.partition(" CMD ")[2])
    assert command[0] == "python"
    return subprocess.run(
        [sys.executable, *command[1:]], env={"WHISPER_PORT": str(port)}, capture_output=True, timeout=30, check=False
    )


def test_image_healthcheck_passes_on_a_ready_service(live_service: ServiceProcess) -> None:
    assert healthcheck(live_service.port).returncode == 0


def test_image_healthcheck_fails_without_a_service() -> None:
    assert healthcheck(free_port()).returncode != 0


def test_health_answers_within_the_liveness_timeout_while_a_worker_is_busy(
    live_service: ServiceProcess, tmp_path: Path
) -> None:
    long_audio = long_speech(tmp_path / "long.wav", minimum_seconds=BUSY_AUDIO_SECONDS)
    timeout = container()["livenessProbe"]["timeoutSeconds"]
    answered: list[requests.Response] = []
    transcription = threading.Thread(target=lambda: answered.append(live_service.transcribe(long_audio)))
    transcription.start()
    latencies = []
    while transcription.is_alive():
        started = time.monotonic()
        assert requests.get(f"{live_service.url}/health", timeout=timeout).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.1)
    transcription.join()
    assert answered[0].status_code == 200
    assert len(latencies) >= 5, "the transcription ended before /health was asked while it ran"
    assert max(latencies) < timeout
