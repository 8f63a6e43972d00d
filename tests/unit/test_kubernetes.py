"""deploy/kubernetes/: every manifest validates against the Kubernetes schemas (kubernetes-validate ships
them: no network, no cluster), and the manifests agree with each other and with the program: the shard
comes from the pod name, the config in the ConfigMap is valid and finds its secrets and state where the
pods mount them, probes hit the health endpoints, the pods are hardened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mailmirror.config.config_file import load_config
from mailmirror.config.secrets import Secret
from mailmirror.config.service_settings import DaemonConfig
from mailmirror.config.shards import Shard, shard_from_environment
from tests.support import ROOT

DEPLOY = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = kubernetes_validate.latest_version()
NOT_CORE = {"kustomization.yaml", "servicemonitor.yaml"}  # kustomize's file and the Prometheus Operator's CRD


def documents(name: str) -> list[dict[str, Any]]:
    with (DEPLOY / name).open(encoding="utf-8") as stream:
        return [document for document in yaml.safe_load_all(stream) if document]


def manifest(kind: str) -> dict[str, Any]:
    found = [doc for path in sorted(DEPLOY.glob("*.yaml")) for doc in documents(path.name) if doc["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


@pytest.mark.parametrize("name", sorted(path.name for path in DEPLOY.glob("*.yaml") if path.name not in NOT_CORE))
def test_the_manifest_validates_against_the_kubernetes_schema(name: str) -> None:
    for document in documents(name):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)  # raises on any problem


def test_the_kustomization_applies_every_core_manifest() -> None:
    (kustomization,) = documents("kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == {path.name for path in DEPLOY.glob("*.yaml")} - NOT_CORE
    service_monitor = manifest("ServiceMonitor")
    assert service_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert service_monitor["spec"]["endpoints"][0]["port"] == "metrics"


def container() -> dict[str, Any]:
    (only,) = manifest("StatefulSet")["spec"]["template"]["spec"]["containers"]
    return only


def environment() -> dict[str, Any]:
    return {entry["name"]: entry.get("value", entry.get("valueFrom")) for entry in container()["env"]}


def test_the_pods_are_the_shards() -> None:
    statefulset = manifest("StatefulSet")
    env = environment()
    assert int(env["MAILMIRROR_SHARDS"]) == statefulset["spec"]["replicas"]
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    name, replicas = statefulset["metadata"]["name"], statefulset["spec"]["replicas"]
    shards = [shard_from_environment({"MAILMIRROR_SHARDS": env["MAILMIRROR_SHARDS"], "POD_NAME": f"{name}-{k}"})
              for k in range(replicas)]  # fmt: skip
    assert shards == [Shard(k, replicas) for k in range(replicas)]
    assert container()["args"][-1] == "run"


def test_the_config_is_valid_and_finds_its_secrets_and_state_on_the_mounts(tmp_path: Path) -> None:
    config_text = manifest("ConfigMap")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(config_text, encoding="utf-8")
    config = load_config(path)
    mounts = {mount["name"]: mount["mountPath"] for mount in container()["volumeMounts"]}
    args = container()["args"]
    assert args[args.index("-c") + 1] == f"{mounts['config']}/config.yaml"
    assert str(config.state.path.parent) == mounts["state"]
    secret_keys = set(manifest("Secret")["stringData"])
    for account in config.accounts.values():
        assert isinstance(account.password, Secret) and account.password.file is not None
        assert str(account.password.file.parent) == mounts["credentials"]
        assert account.password.file.name in secret_keys
    assert environment()["MAILMIRROR_METRICS_LISTEN"].endswith(":9464")
    assert config.metrics.port == 9464


def test_probes_ports_and_selectors_agree() -> None:
    spec = container()
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert [port["name"] for port in spec["ports"]] == ["metrics"]
    statefulset, service = manifest("StatefulSet"), manifest("Service")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert manifest("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(spec["ports"][0]["containerPort"])
    stop = DaemonConfig().stop_timeout.total_seconds()
    assert statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= stop + 10


def test_the_pods_are_hardened() -> None:
    pod = manifest("StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = container()["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    claims = manifest("StatefulSet")["spec"]["volumeClaimTemplates"]
    assert [claim["metadata"]["name"] for claim in claims] == ["state"]  # a volume per pod for its state
