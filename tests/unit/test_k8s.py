"""The Kubernetes manifests in deploy/k8s/ are valid and agree with the service they run.

No cluster is needed: every manifest is validated against the vendored Kubernetes 1.37 schemas
("strict": an unknown field is an error; tests/schemas/README.md says where they come from), and
the realtime Deployment's environment is replayed into the service's settings class.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # no stubs in the dev group
import pytest
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from relaybox.common.settings import ENV_PREFIX
from relaybox.realtime.settings import RealtimeSettings
from tests.unit.test_compose import (
    REQUIRED_VARIABLE_SAMPLE,
    duration_s,
    effective_settings,
    replayed_environment,
    unknown_setting,
)

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "k8s"
SCHEMAS = ROOT / "tests" / "schemas" / "kubernetes" / "v1.37.0-local-strict"
SCHEMA_OF = {
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
    ("v1", "Service"): "service-v1.json",
}
DOCKERFILE_USER = 10001  # deploy/Dockerfile's `USER 10001:10001`
REALTIME = "relaybox-realtime"
REALTIME_MODULE = "relaybox.realtime"
# What the Secret `relaybox` holds: never a literal value in a manifest.
SECRET_SETTINGS = {"RELAYBOX_DATABASE__URL", "RELAYBOX_BROKER__URL", "RELAYBOX_AUTH__JWT_SECRET"}
SECRET_SAMPLES = {
    "RELAYBOX_DATABASE__URL": "postgresql+asyncpg://relaybox:secret@postgres:5432/relaybox",
    "RELAYBOX_BROKER__URL": "amqp://relaybox:secret@rabbitmq:5672/",
}


# --- loading ---------------------------------------------------------------------------------


@cache
def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) of every object in deploy/k8s/*.yaml."""
    found = []
    for path in sorted(MANIFESTS.glob("*.y*ml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                assert isinstance(document, dict), f"{path.name}: not a mapping"
                found.append((path.name, document))
    assert found, "deploy/k8s holds no manifest"
    return found


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [o for _, o in manifests() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{len(matches)} {kind} named {name}"
    return matches[0]


def deployment() -> dict[str, Any]:
    return find("Deployment", REALTIME)


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = deployment()["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


@cache
def definitions_registry() -> Registry[Any]:
    definitions = json.loads((SCHEMAS / "_definitions.json").read_text())
    resource = DRAFT202012.create_resource(definitions)
    registry: Registry[Any] = Registry().with_resource(definitions["$id"], resource)
    return registry


def validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    file = SCHEMA_OF.get((api_version, kind))
    assert file is not None, f"no vendored schema for {api_version} {kind}: vendor it"
    schema = json.loads((SCHEMAS / file).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=definitions_registry())


def schema_errors(document: dict[str, Any]) -> list[str]:
    found = validator(document["apiVersion"], document["kind"]).iter_errors(document)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found]


def environment() -> dict[str, str]:
    """The container's environment: literal values, and samples for secrets and field refs."""
    env = {}
    for entry in container()["env"]:
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            env[entry["name"]] = SECRET_SAMPLES.get(entry["name"], REQUIRED_VARIABLE_SAMPLE)
        elif "fieldRef" in entry.get("valueFrom", {}):
            env[entry["name"]] = "relaybox-realtime-7d9f8c6b5-x2x4q"  # a pod name
        else:
            pytest.fail(f"{entry['name']}: a value source the test does not know")
    return env


def settings() -> RealtimeSettings:
    with replayed_environment(environment()):
        return RealtimeSettings()


def named_port(name_or_number: str | int) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    assert name_or_number in ports, f"no container port named {name_or_number}"
    return int(ports[name_or_number])


# --- (a) the Kubernetes schemas --------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(manifests())))
def test_manifest_matches_the_kubernetes_schema(index: int) -> None:
    file, document = manifests()[index]
    assert schema_errors(document) == [], file


def _broken(mutate: Callable[[dict[str, Any]], None]) -> list[str]:
    document = json.loads(json.dumps(deployment()))
    mutate(document)
    return schema_errors(document)


def test_the_schema_catches_a_broken_manifest() -> None:
    def typo(d: dict[str, Any]) -> None:
        d["spec"]["replica"] = d["spec"].pop("replicas")

    def bad_port(d: dict[str, Any]) -> None:
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "3100"

    def no_probe_port(d: dict[str, Any]) -> None:
        d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].pop("port")

    for mutate, where in (
        (typo, "spec"),
        (bad_port, "spec/template"),
        (no_probe_port, "spec/template"),
    ):
        errors = _broken(mutate)
        assert any(error.startswith(where) for error in errors), (mutate.__name__, errors)


# --- (b) the realtime Deployment and Service -------------------------------------------------


def test_deployment_runs_the_realtime_service_replicated() -> None:
    assert deployment()["spec"]["replicas"] == 2
    assert container()["command"] == ["python", "-m", REALTIME_MODULE]
    assert container()["image"].split("/")[-1].split(":")[0] == "relaybox"
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    selector = deployment()["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()


def test_environment_names_real_settings_and_builds_them() -> None:
    problems = []
    for key in environment():
        assert key.startswith(ENV_PREFIX), f"{key}: the service never reads it"
        problem = unknown_setting(RealtimeSettings, key[len(ENV_PREFIX) :].split("__"))
        if problem:
            problems.append(f"{key}: {problem}")
    assert problems == []
    built = settings()
    assert built.realtime.host == "0.0.0.0"
    assert built.realtime.replica == environment()["RELAYBOX_REALTIME__REPLICA"]


def test_secrets_come_from_a_secret() -> None:
    by_name = {entry["name"]: entry for entry in container()["env"]}
    for key in SECRET_SETTINGS:
        assert key in by_name, f"{key} is not set"
        assert "secretKeyRef" in by_name[key].get("valueFrom", {}), f"{key}: not from a Secret"


def test_the_secret_and_tenant_claim_agree_with_the_api() -> None:
    """Tokens and tickets from an API configured like compose's verify here."""
    api = effective_settings("api").model_dump()
    assert settings().auth.tenant_claim == api["auth"]["tenant_claim"]


def test_ports_probes_and_service_use_the_settings_port() -> None:
    port = settings().realtime.port
    declared = {int(p["containerPort"]) for p in container()["ports"]}
    assert declared == {port}
    ready, alive = container()["readinessProbe"], container()["livenessProbe"]
    assert ready["httpGet"]["path"] == "/ready"
    assert alive["httpGet"]["path"] == "/health"
    assert named_port(ready["httpGet"]["port"]) == port
    assert named_port(alive["httpGet"]["port"]) == port
    service = find("Service", REALTIME)
    pod_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for entry in service["spec"]["ports"]:
        assert named_port(entry["targetPort"]) == port
    annotations = deployment()["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in annotations:
        assert int(annotations["prometheus.io/port"]) == port


def test_termination_grace_outlasts_the_drain() -> None:
    grace = settings().realtime.shutdown_grace_s
    pre_stop = container().get("lifecycle", {}).get("preStop", {}).get("exec", {})
    command = pre_stop.get("command", [])
    sleep = duration_s(command[1] + "s") if command[:1] == ["sleep"] else 0.0
    # after the grace: closing the sockets and writing the held acks take up to 5 s each
    needed = sleep + grace + 10
    assert pod_spec()["terminationGracePeriodSeconds"] > needed


def test_runs_unprivileged_as_the_image_user() -> None:
    security = pod_spec()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == DOCKERFILE_USER
    assert container()["securityContext"]["allowPrivilegeEscalation"] is False
