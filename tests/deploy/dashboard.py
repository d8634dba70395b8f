"""The Grafana dashboard's queries, and the same queries as Prometheus can run them (variables filled in)."""

from __future__ import annotations

import json
import re

from tests.deploy.tools import DASHBOARD

# Grafana fills these in itself; the dashboard defines the rest under `templating`
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range"}
# long enough for two 1 s scrapes, short enough for a test's fresh Prometheus
TEST_RATE_INTERVAL = "1m"
VARIABLE = re.compile(r"\$(\w+)")
METRIC = re.compile(r"\bwhisper_\w+")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return dashboard()["panels"]


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [(panel["title"], target["expr"]) for panel in panels() for target in panel["targets"]]


def variables() -> dict[str, dict]:
    return {variable["name"]: variable for variable in dashboard()["templating"]["list"]}


def runnable(expr: str) -> str:
    """`expr` as Grafana sends it with every variable on All."""
    values = {name: variable["allValue"] for name, variable in variables().items()}
    values["__rate_interval"] = TEST_RATE_INTERVAL
    return VARIABLE.sub(lambda match: values[match[1]], expr)


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr))
