"""config/kubernetes against the Kubernetes API schemas, and against the service it runs: probes, GPU,
memory-backed uploads, grace period and autoscaling agree with Settings and the image."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from app.config import ENV_PREFIX, Settings
from tests.deploy import dockerfile
from tests.deploy.kubernetes import KUSTOMIZATION, adapter_rule, container, environment, manifests, resource
from tests.deploy.tools import EXIT_SECONDS, KUBERNETES, largest_request_bytes, load_yaml, settings_from

# the oldest Kubernetes still commonly run, and the newest schemas kubernetes-validate has
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
GPU = "nvidia.com/gpu"
# the first start downloads medium (1.5 GB) before /health turns 200
MODEL_DOWNLOAD_SECONDS = 10 * 60
# a liveness probe must tolerate this long an unanswered /health before it restarts the pod
LIVENESS_PATIENCE_SECONDS = 60
QUANTITY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    return settings_from(environment(), monkeypatch)


def bytes_of(quantity: str) -> int:
    for suffix, factor in QUANTITY_UNITS.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def mounted_volume(path: str) -> dict:
    """The pod volume mounted at `path` in the container."""
    (mount,) = [mount for mount in container()["volumeMounts"] if mount["mountPath"] == path]
    (volume,) = [v for v in resource("Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    return volume


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", manifests())
def test_manifest_matches_the_kubernetes_schema(name: str, version: str) -> None:
    for document in yaml.safe_load_all((KUBERNETES / name).read_text()):
        kubernetes_validate.validate(document, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(KUSTOMIZATION)
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == manifests()


def test_kustomization_image_override_names_the_deployments_image() -> None:
    (image,) = load_yaml(KUSTOMIZATION)["images"]
    assert container()["image"].partition(":")[0] == image["name"], "a mismatch makes `images:` a silent no-op"


def test_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {item["name"] for item in container()["env"]}
    assert names <= {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields}
    settings(monkeypatch)


def test_requests_the_gpus_it_serves_from(monkeypatch: pytest.MonkeyPatch) -> None:
    resources = container()["resources"]
    gpus = resources["limits"][GPU]
    assert gpus >= 1
    assert resources["requests"].get(GPU, gpus) == gpus, "extended resources need requests equal to limits"
    configured = settings(monkeypatch)
    assert configured.device == "cuda", "a pod scheduled without its GPU must fail, not serve from the CPU"
    assert configured.devices in {"auto", str(gpus)}


def test_api_key_comes_from_a_secret() -> None:
    (item,) = [item for item in container()["env"] if item["name"] == f"{ENV_PREFIX}API_KEY"]
    assert "value" not in item, "a key written in the manifest is a key in git"
    assert item["valueFrom"]["secretKeyRef"]["name"]


def test_uploads_live_in_a_bounded_memory_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    configured = settings(monkeypatch)
    volume = mounted_volume(str(configured.tmp_dir))
    assert volume["emptyDir"]["medium"] == "Memory"
    size = bytes_of(volume["emptyDir"]["sizeLimit"])
    assert size >= largest_request_bytes(configured), "one request at both limits must fit"
    # a memory-backed emptyDir is charged to the container: a full one must not get it OOM-killed
    memory = container()["resources"]
    assert bytes_of(memory["limits"]["memory"]) >= bytes_of(memory["requests"]["memory"]) + size


def test_model_cache_is_a_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "emptyDir" in mounted_volume(str(settings(monkeypatch).model_cache_dir))


def test_probes_ask_health_on_the_service_port(monkeypatch: pytest.MonkeyPatch) -> None:
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = container()[probe]["httpGet"]
        assert check["path"] == "/health"
        assert ports.get(check["port"], check["port"]) == settings(monkeypatch).port


def window(probe: dict) -> int:
    """Seconds of consecutive failures before the probe acts."""
    return probe["periodSeconds"] * probe["failureThreshold"]


def test_startup_allows_the_first_model_download() -> None:
    assert window(container()["startupProbe"]) >= MODEL_DOWNLOAD_SECONDS


def test_liveness_is_more_patient_than_readiness(monkeypatch: pytest.MonkeyPatch) -> None:
    liveness, readiness = container()["livenessProbe"], container()["readinessProbe"]
    # readiness only takes the pod out of the Service; liveness restarts it, losing every request in flight
    assert window(liveness) >= LIVENESS_PATIENCE_SECONDS
    # /health answers 503 while the service drains: that must not get a draining pod killed
    assert window(liveness) > settings(monkeypatch).shutdown_grace
    assert window(liveness) > window(readiness)
    assert liveness["timeoutSeconds"] >= readiness["timeoutSeconds"]


def test_grace_period_outlasts_the_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pod = resource("Deployment")["spec"]["template"]["spec"]
    drain = settings(monkeypatch).shutdown_grace
    assert pod["terminationGracePeriodSeconds"] >= int(command[1]) + drain + EXIT_SECONDS


def test_runs_as_the_images_non_root_user() -> None:
    pod = resource("Deployment")["spec"]["template"]["spec"]["securityContext"]
    uid, _, gid = dockerfile.runtime().arguments("USER")[0].partition(":")
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid))
    assert container()["securityContext"]["allowPrivilegeEscalation"] is False
    assert container()["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_service_and_budget_select_the_pods() -> None:
    labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert resource("Service")["spec"]["selector"].items() <= labels.items()
    assert resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {port["name"] for port in container()["ports"]}
    assert {port["targetPort"] for port in resource("Service")["spec"]["ports"]} <= port_names


def test_pods_carry_prometheus_scrape_annotations(monkeypatch: pytest.MonkeyPatch) -> None:
    annotations = resource("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings(monkeypatch).port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_autoscaler_scales_the_deployment_on_the_adapters_metric() -> None:
    autoscaler = resource("HorizontalPodAutoscaler")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": resource("Deployment")["metadata"]["name"],
    }
    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == adapter_rule()["name"]["as"]
    assert autoscaler["spec"]["minReplicas"] >= 2, "one replica has no one to take over during a disruption"


def test_autoscaler_target_is_one_full_batch_per_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    configured = settings(monkeypatch)
    (metric,) = resource("HorizontalPodAutoscaler")["spec"]["metrics"]
    batch_slots = configured.max_batch_size * configured.workers_per_device * container()["resources"]["limits"][GPU]
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": str(batch_slots)}


def test_adapter_rule_serves_pods_from_the_in_flight_gauge() -> None:
    rule = adapter_rule()
    assert rule["seriesQuery"].startswith("whisper_requests_in_flight{")
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]
