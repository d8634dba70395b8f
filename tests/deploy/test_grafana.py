"""The Grafana dashboard and its provisioning, read as Grafana would: the panels the operators need, each
with a query on the provisioned datasource, and files where docker-compose.yml mounts them. Whether
the queries run and name exported metrics is checked against a live service in test_monitoring."""

from __future__ import annotations

from pathlib import Path

from tests.deploy import dashboard
from tests.deploy.tools import COMPOSE_FILE, CONFIG, DASHBOARD, compose_model, load_yaml

PROVISIONING = CONFIG / "grafana" / "provisioning"
# what an operator must see, and the metrics that show it
REQUIRED_VIEWS = {
    "request rate": {"whisper_requests_total"},
    "latency percentiles": {"whisper_request_duration_seconds_bucket"},
    "batch size": {"whisper_batch_size_sum", "whisper_batch_size_count"},
    "realtime factor": {"whisper_audio_seconds_total", "whisper_inference_seconds_sum"},
    "queue wait": {"whisper_queue_wait_seconds_bucket"},
    "errors": {"whisper_errors_total"},
    "GPU memory": {"whisper_gpu_memory_bytes"},
}


def datasource() -> dict:
    (only,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    return only


def grafana_mounts() -> dict[str, Path]:
    grafana = compose_model(COMPOSE_FILE, profiles=("dashboard",))["services"]["grafana"]
    return {volume["target"]: Path(volume["source"]) for volume in grafana["volumes"] if volume["type"] == "bind"}


def test_panels_are_well_formed() -> None:
    panels = dashboard.panels()
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["title"] and panel["description"], panel
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]


def test_every_query_uses_the_provisioned_datasource() -> None:
    for panel in dashboard.panels():
        for owner in (panel, *panel["targets"]):
            assert owner["datasource"] == {"type": "prometheus", "uid": datasource()["uid"]}, panel["title"]
    for variable in dashboard.variables().values():
        assert variable["datasource"]["uid"] == datasource()["uid"]


def test_dashboard_shows_every_required_view() -> None:
    for view, metrics in REQUIRED_VIEWS.items():
        assert any(metrics <= dashboard.metric_names(expr) for _, expr in dashboard.queries()), view


def test_queries_use_only_defined_variables() -> None:
    defined = set(dashboard.variables()) | dashboard.BUILTIN_VARIABLES
    for title, expr in dashboard.queries():
        assert set(dashboard.VARIABLE.findall(expr)) <= defined, title


def test_datasource_reaches_the_compose_prometheus() -> None:
    source = datasource()
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in load_yaml(COMPOSE_FILE)["services"]
    # $__rate_interval is at least four of these: it must be Prometheus' real scrape interval
    assert source["jsonData"]["timeInterval"] == load_yaml(CONFIG / "prometheus.yml")["global"]["scrape_interval"]


def test_compose_mounts_provisioning_and_dashboards_where_grafana_reads_them() -> None:
    mounts = grafana_mounts()
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "whisper.yml")["providers"]
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    grafana = load_yaml(COMPOSE_FILE)["services"]["grafana"]
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert mounts[str(home.parent)] / home.name == DASHBOARD


def test_grafana_is_behind_a_profile() -> None:
    assert load_yaml(COMPOSE_FILE)["services"]["grafana"]["profiles"] == ["dashboard"]
