"""The manifests of config/kubernetes, read as the checks need them: by kind, and the one container."""

from __future__ import annotations

from functools import cache

import yaml

from tests.deploy import dockerfile
from tests.deploy.tools import KUBERNETES

KUSTOMIZATION = KUBERNETES / "kustomization.yaml"


def manifests() -> list[str]:
    return sorted(path.name for path in KUBERNETES.glob("*.yaml") if path != KUSTOMIZATION)


@cache
def resource(kind: str) -> dict:
    (found,) = [
        document
        for name in manifests()
        for document in yaml.safe_load_all((KUBERNETES / name).read_text())
        if document["kind"] == kind
    ]
    return found


def container() -> dict:
    (only,) = resource("Deployment")["spec"]["template"]["spec"]["containers"]
    return only


def environment() -> dict[str, str]:
    """What the container's process sees: the image's ENV under the pod's literal env (not Secrets)."""
    literal = {item["name"]: item["value"] for item in container()["env"] if "value" in item}
    return {**dockerfile.runtime().environment(), **literal}


def adapter_rule() -> dict:
    (rule,) = yaml.safe_load(resource("ConfigMap")["data"]["config.yaml"])["rules"]
    return rule
