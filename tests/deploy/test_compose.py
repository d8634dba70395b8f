"""docker-compose.yml and its CPU override: the Compose specification's schema, Docker Compose's own
rendering (`docker compose config`, no engine needed), and the service contract in the rendered model."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

from app.config import ENV_PREFIX, Settings
from tests.deploy import dockerfile
from tests.deploy.tools import (
    COMPOSE_FILE,
    CONFIG,
    CPU_COMPOSE_FILE,
    EXIT_SECONDS,
    compose_model,
    largest_request_bytes,
    load_yaml,
    settings_from,
)

ENV_EXAMPLE = CONFIG / "whisper.env.example"
# the first start downloads medium (1.5 GB) before /health turns 200
MODEL_DOWNLOAD_SECONDS = 10 * 60
GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms)")
GO_UNITS = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: `!reset` and `!override` mark a value that merges differently."""


def untagged(loader: ComposeLoader, node: yaml.Node) -> object:
    """The tagged value itself, which is what the schema checks."""
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!reset", untagged)
ComposeLoader.add_constructor("!override", untagged)


def seconds(duration: str) -> float:
    """A Go duration as `docker compose config` writes it ("5m30s") in seconds."""
    assert GO_DURATION.sub("", duration) == "", duration
    return sum(float(amount) * GO_UNITS[unit] for amount, unit in GO_DURATION.findall(duration))


def container_environment(service: dict) -> dict[str, str]:
    """What the service's process sees: the image's ENV under the Compose environment."""
    return {**dockerfile.runtime().environment(), **service["environment"]}


@pytest.mark.parametrize("path", [COMPOSE_FILE, CPU_COMPOSE_FILE], ids=lambda path: path.name)
def test_matches_the_compose_specification(path: Path) -> None:
    schema = json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    document = yaml.load(path.read_text(), Loader=ComposeLoader)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = validator.iter_errors(document)
    assert [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in errors] == []


def test_up_alone_starts_the_service_and_prometheus(gpu_compose: dict) -> None:
    assert set(gpu_compose["services"]) == {"whisper", "prometheus"}
    assert set(compose_model(COMPOSE_FILE, profiles=("dashboard",))["services"]) == {"whisper", "prometheus", "grafana"}


def test_service_reserves_nvidia_gpus(gpu_compose: dict) -> None:
    (device,) = gpu_compose["services"]["whisper"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert device["count"] == -1, "count: all, so WHISPER_DEVICES=auto serves from every GPU of the host"


def test_uploads_live_in_a_bounded_tmpfs(gpu_compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    service = gpu_compose["services"]["whisper"]
    settings = settings_from(container_environment(service), monkeypatch)
    (mount,) = [volume for volume in service["volumes"] if volume["target"] == str(settings.tmp_dir)]
    assert mount["type"] == "tmpfs"
    assert int(mount["tmpfs"]["size"]) >= largest_request_bytes(settings), "one request at both limits must fit"


def test_model_cache_is_a_named_volume(gpu_compose: dict) -> None:
    service = gpu_compose["services"]["whisper"]
    cache_dir = container_environment(service)["WHISPER_MODEL_CACHE_DIR"]
    (mount,) = [volume for volume in service["volumes"] if volume["target"] == cache_dir]
    assert mount["type"] == "volume"
    assert mount["source"] in gpu_compose["volumes"]


def test_healthcheck_is_the_images_with_time_for_the_first_download(gpu_compose: dict) -> None:
    healthcheck = gpu_compose["services"]["whisper"]["healthcheck"]
    # no `test`: Docker keeps the image's HEALTHCHECK command, which test_monitoring runs for real
    assert "test" not in healthcheck
    assert not healthcheck.get("disable")
    assert seconds(healthcheck["start_period"]) >= MODEL_DOWNLOAD_SECONDS


def test_restarts_and_stops_gracefully(gpu_compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    service = gpu_compose["services"]["whisper"]
    assert service["restart"] in {"always", "unless-stopped"}
    assert service["init"] is True
    settings = settings_from(container_environment(service), monkeypatch)
    # Docker kills the container after stop_grace_period: not before the drain is over
    assert seconds(service["stop_grace_period"]) >= settings.shutdown_grace + EXIT_SECONDS


def test_env_files_are_the_example_then_the_operators_own() -> None:
    assert load_yaml(COMPOSE_FILE)["services"]["whisper"]["env_file"] == [
        {"path": "config/whisper.env.example"},
        {"path": "config/whisper.env", "required": False},
    ]


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    mentioned = re.findall(rf"^#?\s*({ENV_PREFIX}[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    expected = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert sorted(mentioned) == sorted(set(mentioned)), "a variable is listed twice"
    assert set(mentioned) == expected


@pytest.mark.parametrize("variant", ["gpu_compose", "cpu_compose"])
def test_service_environment_is_valid_settings(
    variant: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = request.getfixturevalue(variant)["services"]["whisper"]
    unknown = {name for name in service["environment"] if name.startswith(ENV_PREFIX)} - {
        f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields
    }
    assert unknown == set(), "the service ignores unknown variables silently"
    settings_from(container_environment(service), monkeypatch)


def test_cpu_variant_runs_tiny_without_a_gpu(cpu_compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    service = cpu_compose["services"]["whisper"]
    assert "devices" not in service.get("deploy", {}).get("resources", {}).get("reservations", {})
    assert service["build"]["args"]["FLAVOR"] == "cpu"
    settings = settings_from(container_environment(service), monkeypatch)
    assert settings.device == "cpu"
    assert settings.model == "", "empty selects the tiny.en bundled in the image"


def test_prometheus_scrapes_the_service_port(gpu_compose: dict) -> None:
    service = gpu_compose["services"]["whisper"]
    port = int(container_environment(service)["WHISPER_PORT"])
    assert port in {published["target"] for published in service["ports"]}
    config = load_yaml(CONFIG / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": [f"whisper:{port}"]}]


def test_prometheus_mounts_its_config_and_rules(gpu_compose: dict) -> None:
    mounts = {volume["target"]: volume for volume in gpu_compose["services"]["prometheus"]["volumes"]}
    config_path = "/etc/prometheus/prometheus.yml"
    assert Path(mounts[config_path]["source"]) == CONFIG / "prometheus.yml"
    for rule_file in load_yaml(CONFIG / "prometheus.yml")["rule_files"]:
        # relative rule files resolve next to the config file, as `promtool check config` resolves them
        assert Path(mounts[f"/etc/prometheus/{rule_file}"]["source"]) == CONFIG / rule_file
    assert f"--config.file={config_path}" in gpu_compose["services"]["prometheus"]["command"]
