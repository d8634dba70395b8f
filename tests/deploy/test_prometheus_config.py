"""promtool on the shipped Prometheus configuration and alert rules, and the rules' unit tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.deploy.prometheus import discovered_pod
from tests.deploy.tools import CONFIG, load_yaml, require, run

ALERTS = CONFIG / "alerts.yml"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yml")


def test_compose_prometheus_config_is_valid() -> None:
    output = run(require("promtool"), "check", "config", str(CONFIG / "prometheus.yml"))
    assert "1 rule files found" in output


def test_kubernetes_prometheus_config_is_valid(tmp_path: Path) -> None:
    # Debian's promtool is built without Kubernetes discovery: check everything else, on a static target
    config = load_yaml(CONFIG / "prometheus-kubernetes.yml")
    (job,) = config["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = discovered_pod("10.0.0.1:8000")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    for rule_file in config["rule_files"]:
        shutil.copy(CONFIG / rule_file, tmp_path / rule_file)
    run(require("promtool"), "check", "config", str(tmp_path / "prometheus.yml"))


def test_alert_rules_are_valid() -> None:
    assert "6 rules found" in run(require("promtool"), "check", "rules", str(ALERTS))


def test_alert_rules_pass_their_unit_tests() -> None:
    run(require("promtool"), "test", "rules", str(ALERT_TESTS))


def test_every_alert_is_shown_firing_in_a_unit_test() -> None:
    alerts = {rule["alert"] for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]}
    fired = {
        case["alertname"]
        for test in load_yaml(ALERT_TESTS)["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert alerts == fired
    assert {"WhisperDown", "WhisperErrorRatioHigh", "WhisperLatencyP95High", "WhisperQueueWaitHigh"} <= alerts
