"""deploy/kubernetes/ renders, is valid, and agrees with the services it runs.

No cluster is needed. Each overlay (dev, prod) is rendered with the real kustomize (a
`kustomize` binary, else `kubectl kustomize`; .ci/run installs kubectl when the machine has
none) and every object it renders is validated against the vendored Kubernetes 1.37 "strict"
schemas and the KEDA schemas converted from KEDA's CRDs (tests/schemas/README.md says where
each comes from). Then every container's environment is replayed into its service's settings
class, and ports, probes, termination grace, scaling, Secrets, NetworkPolicies and the Ingress
are checked against what the settings and the running code say. The migration Job's "first" is
checked on a real PostgreSQL: the init containers' wait-for-schema.py waits until the schema is
at head.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # no stubs in the dev group
import pytest
import yaml
from pydantic_settings import BaseSettings
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from relaybox.api.settings import ApiSettings
from relaybox.common.db.migrate import alembic_config, create_database_if_missing, upgrade
from relaybox.common.messaging.topology import ROUTES, Topology
from relaybox.common.settings import ENV_PREFIX, ServiceSettings
from relaybox.consumer.settings import ConsumerSettings
from relaybox.mock_meta.settings import MockMetaSettings
from relaybox.publisher.settings import PublisherSettings
from relaybox.realtime.settings import RealtimeSettings
from tests.support.databases import drop_database
from tests.support.servers import Servers
from tests.unit.test_compose import (
    REQUIRED_VARIABLE_SAMPLE,
    SERVICES,
    dockerfile_instructions,
    duration_s,
    listener,
    replayed_environment,
    unknown_setting,
)

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAYS = ("dev", "prod")
WAIT_SCRIPT = BASE / "wait-for-schema.py"
DEPLOY_README = ROOT / "deploy" / "README.md"
SCHEMAS = ROOT / "tests" / "schemas"
K8S_SCHEMAS = SCHEMAS / "kubernetes" / "v1.37.0-local-strict"
KEDA_SCHEMAS = SCHEMAS / "keda"
SCHEMA_OF = {
    ("v1", "ConfigMap"): K8S_SCHEMAS / "configmap-v1.json",
    ("v1", "Namespace"): K8S_SCHEMAS / "namespace-v1.json",
    ("v1", "Secret"): K8S_SCHEMAS / "secret-v1.json",
    ("v1", "Service"): K8S_SCHEMAS / "service-v1.json",
    ("apps/v1", "Deployment"): K8S_SCHEMAS / "deployment-apps-v1.json",
    ("apps/v1", "StatefulSet"): K8S_SCHEMAS / "statefulset-apps-v1.json",
    ("batch/v1", "Job"): K8S_SCHEMAS / "job-batch-v1.json",
    ("policy/v1", "PodDisruptionBudget"): K8S_SCHEMAS / "poddisruptionbudget-policy-v1.json",
    ("networking.k8s.io/v1", "NetworkPolicy"): K8S_SCHEMAS / "networkpolicy-networking-v1.json",
    ("networking.k8s.io/v1", "Ingress"): K8S_SCHEMAS / "ingress-networking-v1.json",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): (
        K8S_SCHEMAS / "horizontalpodautoscaler-autoscaling-v2.json"
    ),
    ("keda.sh/v1alpha1", "ScaledObject"): KEDA_SCHEMAS / "scaledobject-keda-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): (
        KEDA_SCHEMAS / "triggerauthentication-keda-v1alpha1.json"
    ),
}

SECRET = "relaybox"  # the one Secret every relaybox pod reads (deploy/README.md says how)
# Variables that carry a credential: never a literal value in a manifest.
SECRET_VARIABLE = re.compile(r"SECRET|PASSWORD|TOKEN|_KEY|USERNAME|DATABASE__URL|BROKER__URL")
SECRET_SAMPLES = {  # what the prod Secret's keys stand for when settings are built
    "database-url": "postgresql+asyncpg://relaybox:secret@db.example.com:5432/relaybox",
    "broker-url": "amqps://relaybox:secret@mq.example.com:5671/",
}
POD_NAME_SAMPLE = "relaybox-realtime-7d9f8c6b5-x2x4q"
# The namespaces allowed to reach in (network-policies.yaml): the ingress controller's,
# Prometheus's, and KEDA's (the dev overlay's RabbitMQ).
INGRESS_NAMESPACE, MONITORING_NAMESPACE, KEDA_NAMESPACE = "ingress-nginx", "monitoring", "keda"
NOT_ROUTED = ("/health", "/ready", "/metrics", "/admin/")  # never reachable through the Ingress

# Seconds a process may need after SIGTERM beyond what its settings say (closing connections,
# flushing): the termination grace must cover preStop + the drain + this.
CLOSE_S = 10.0
# The API has no drain setting: uvicorn finishes the requests in flight however long they take.
# Budget for them: a 100 MiB mailing upload at 5 MB/s.
API_REQUEST_BUDGET_S = 20.0


@dataclass(frozen=True)
class Workload:
    """A relaybox Deployment: its compose twin in test_compose.SERVICES and its drain."""

    service: str
    drain_s: Callable[[Any], float]
    overlays: tuple[str, ...] = OVERLAYS


WORKLOADS: dict[str, Workload] = {
    "relaybox-api": Workload("api", lambda s: API_REQUEST_BUDGET_S),
    # the batch in flight waits for its confirms up to publish_timeout_s
    "relaybox-publisher": Workload("publisher", lambda s: s.publish_timeout_s + CLOSE_S),
    # sends in flight may finish for shutdown_grace_s
    "relaybox-consumer": Workload("consumer", lambda s: s.shutdown_grace_s + CLOSE_S),
    # sockets close after the grace; then up to 5 s for the server and 5 s for the held acks
    "relaybox-realtime": Workload("realtime", lambda s: s.realtime.shutdown_grace_s + 5 + 5),
    "relaybox-mock-meta": Workload("mock-meta", lambda s: CLOSE_S, overlays=("dev",)),
}
AUTOSCALED = {"relaybox-api", "relaybox-consumer"}  # an HPA / a ScaledObject owns replicas


# --- rendering -------------------------------------------------------------------------------


def kustomize_command() -> list[str] | None:
    """The real kustomize: a standalone binary, else the one built into kubectl."""
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        probe = subprocess.run(
            [found, "kustomize", "--help"], capture_output=True, check=False, timeout=60
        )
        if probe.returncode == 0:
            return [found, "kustomize"]
    return None


@cache
def _render(overlay: str) -> tuple[str, str]:
    command = kustomize_command()
    if command is None:
        return "", "absent"
    done = subprocess.run(
        [*command, str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, f"kustomize failed on overlays/{overlay}:\n{done.stderr}"
    return done.stdout, "rendered"


def rendered(overlay: str) -> list[dict[str, Any]]:
    """Every object `kustomize build overlays/<overlay>` prints."""
    text, tool = _render(overlay)
    if tool == "absent":
        pytest.skip("neither kustomize nor kubectl is installed (.ci/run installs kubectl)")
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    assert all(isinstance(d, dict) for d in documents)
    return documents


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    found = [o for o in rendered(overlay) if o["kind"] == kind]
    by_name = {o["metadata"]["name"]: o for o in found}
    assert len(by_name) == len(found), f"two {kind}s share a name"
    return by_name


def one(overlay: str, kind: str, name: str) -> dict[str, Any]:
    found = objects(overlay, kind)
    assert name in found, f"overlays/{overlay} renders no {kind} {name}"
    return found[name]


def pod_owners(overlay: str) -> dict[str, dict[str, Any]]:
    """Deployments, StatefulSets and Jobs by name."""
    owners: dict[str, dict[str, Any]] = {}
    for kind in ("Deployment", "StatefulSet", "Job"):
        owners.update(objects(overlay, kind))
    return owners


def pod_spec(owner: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = owner["spec"]["template"]["spec"]
    return spec


def pod_labels(owner: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = owner["spec"]["template"]["metadata"].get("labels", {})
    return labels


def all_containers(owner: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(owner)
    containers: list[dict[str, Any]] = [*spec.get("initContainers", []), *spec["containers"]]
    return containers


def is_relaybox_image(container: dict[str, Any]) -> bool:
    image: str = container["image"]
    return image.rsplit("/", 1)[-1].split(":")[0].split("@")[0] == "relaybox"


def main_container(owner: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(owner)["containers"]
    assert len(containers) == 1, "one container per relaybox pod"
    found: dict[str, Any] = containers[0]
    return found


def deployments(overlay: str) -> dict[str, dict[str, Any]]:
    return objects(overlay, "Deployment")


def expected_workloads(overlay: str) -> list[str]:
    return sorted(name for name, w in WORKLOADS.items() if overlay in w.overlays)


# --- the Secret and the environment ----------------------------------------------------------


def secret_data(overlay: str) -> dict[str, str] | None:
    """The rendered Secret `relaybox` decoded (the dev overlay's), or None (created by hand)."""
    secret = objects(overlay, "Secret").get(SECRET)
    if secret is None:
        return None
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    return data | dict(secret.get("stringData", {}))


def environment(overlay: str, container: dict[str, Any]) -> dict[str, str]:
    """The container's environment: literals, the dev Secret's values (or samples), pod names."""
    assert "envFrom" not in container, "name every variable (env), so the test checks each"
    secret = secret_data(overlay)
    env = {}
    for entry in container.get("env", []):
        source = entry.get("valueFrom", {})
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["name"] == SECRET, f"{entry['name']}: from Secret {ref['name']}"
            if secret is None:
                env[entry["name"]] = SECRET_SAMPLES.get(ref["key"], REQUIRED_VARIABLE_SAMPLE)
            elif ref["key"] in secret:
                env[entry["name"]] = secret[ref["key"]]
            else:
                assert ref.get("optional"), f"{entry['name']}: the dev Secret lacks {ref['key']}"
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[entry["name"]] = POD_NAME_SAMPLE
        else:
            pytest.fail(f"{entry['name']}: a value source the test does not know: {entry}")
    return env


def settings_class(deployment: str) -> type[ServiceSettings]:
    return SERVICES[WORKLOADS[deployment].service].settings


@cache
def settings_of(overlay: str, deployment: str) -> Any:
    """The settings the Deployment's process builds from its environment (read-only)."""
    container = main_container(one(overlay, "Deployment", deployment))
    with replayed_environment(environment(overlay, container)):
        return settings_class(deployment)()


def secret_refs(overlay: str) -> dict[str, bool]:
    """Every key of the Secret that a pod or KEDA reads -> whether it is required."""
    refs: dict[str, bool] = {}
    for owner in pod_owners(overlay).values():
        for container in all_containers(owner):
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    refs[ref["key"]] = refs.get(ref["key"], False) or not ref.get("optional")
    for auth in objects(overlay, "TriggerAuthentication").values():
        for ref in auth["spec"].get("secretTargetRef", []):
            assert ref["name"] == SECRET
            refs[ref["key"]] = True
    return refs


# --- the schemas -----------------------------------------------------------------------------


@cache
def definitions_registry() -> Registry[Any]:
    definitions = json.loads((K8S_SCHEMAS / "_definitions.json").read_text())
    resource = DRAFT202012.create_resource(definitions)
    registry: Registry[Any] = Registry().with_resource(definitions["$id"], resource)
    return registry


@cache
def validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    file = SCHEMA_OF.get((api_version, kind))
    assert file is not None, f"no vendored schema for {api_version} {kind}: vendor it"
    schema = json.loads(file.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=definitions_registry())


def schema_errors(document: dict[str, Any]) -> list[str]:
    found = validator(document["apiVersion"], document["kind"]).iter_errors(document)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found]


def base_object(file: str, kind: str) -> dict[str, Any]:
    """An object of a base file as written (no kustomize needed)."""
    for document in yaml.safe_load_all((BASE / file).read_text()):
        if document and document["kind"] == kind:
            found: dict[str, Any] = json.loads(json.dumps(document))
            return found
    raise AssertionError(f"base/{file} holds no {kind}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_manifests_match_the_schemas(overlay: str) -> None:
    problems = [
        f"{o['kind']} {o['metadata']['name']}: {error}"
        for o in rendered(overlay)
        for error in schema_errors(o)
    ]
    assert problems == []


def test_the_schemas_catch_a_broken_manifest() -> None:
    def errors(file: str, kind: str, mutate: Callable[[dict[str, Any]], None]) -> list[str]:
        document = base_object(file, kind)
        assert schema_errors(document) == [], f"base/{file} {kind} is valid as written"
        mutate(document)
        return schema_errors(document)

    def typo(d: dict[str, Any]) -> None:
        d["spec"]["replica"] = d["spec"].pop("strategy")

    def bad_port(d: dict[str, Any]) -> None:
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "3000"

    def no_probe_port(d: dict[str, Any]) -> None:
        d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].pop("port")

    def keda_typo(d: dict[str, Any]) -> None:
        d["spec"]["minReplicas"] = d["spec"].pop("minReplicaCount")

    def keda_trigger_without_metadata(d: dict[str, Any]) -> None:
        d["spec"]["triggers"][0].pop("metadata")

    def keda_auth_typo(d: dict[str, Any]) -> None:
        d["spec"]["secretTargetRefs"] = d["spec"].pop("secretTargetRef")

    def keda_wrong_kind(d: dict[str, Any]) -> None:
        d["kind"] = "ScaledObjects"

    cases = (
        ("api.yaml", "Deployment", typo, "spec"),
        ("api.yaml", "Deployment", bad_port, "spec/template"),
        ("api.yaml", "Deployment", no_probe_port, "spec/template"),
        ("consumer.yaml", "ScaledObject", keda_typo, "spec"),
        ("consumer.yaml", "ScaledObject", keda_trigger_without_metadata, "spec/triggers/0"),
        ("consumer.yaml", "TriggerAuthentication", keda_auth_typo, "spec"),
        ("consumer.yaml", "ScaledObject", keda_wrong_kind, "kind"),
    )
    for file, kind, mutate, where in cases:
        if mutate is keda_wrong_kind:
            document = base_object(file, kind)
            mutate(document)
            schema = json.loads(SCHEMA_OF[("keda.sh/v1alpha1", "ScaledObject")].read_text())
            found = jsonschema.Draft202012Validator(schema).iter_errors(document)
            problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found]
        else:
            problems = errors(file, kind, mutate)
        assert any(p.startswith(where) for p in problems), (mutate.__name__, problems)


def test_vendored_keda_schemas_are_the_documented_ones() -> None:
    """tests/schemas/README.md names each converted file's sha256: a hand edit shows."""
    readme = (SCHEMAS / "README.md").read_text()
    files = sorted(KEDA_SCHEMAS.glob("*.json"))
    assert [f.name for f in files] == [
        "scaledobject-keda-v1alpha1.json",
        "triggerauthentication-keda-v1alpha1.json",
    ]
    for file in files:
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        assert f"`{file.name}`: sha256 `{digest}`" in readme, file.name


# --- the workloads ---------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_runs_its_module_from_the_image(overlay: str) -> None:
    relaybox = {
        name
        for name, d in deployments(overlay).items()
        if all(is_relaybox_image(c) for c in all_containers(d))
    }
    assert sorted(relaybox) == expected_workloads(overlay)
    for name in expected_workloads(overlay):
        deployment = one(overlay, "Deployment", name)
        service = SERVICES[WORKLOADS[name].service]
        assert main_container(deployment)["command"] == ["python", "-m", service.module], name
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels(deployment).items(), name
        if name in AUTOSCALED:
            assert "replicas" not in deployment["spec"], f"{name}: its autoscaler owns replicas"
        else:
            assert deployment["spec"]["replicas"] >= 1, name
    assert "relaybox-mock-meta" not in deployments("prod"), "mock-meta is for development only"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_environment_names_real_settings_and_builds_them(overlay: str) -> None:
    """Every RELAYBOX_* variable of every relaybox container (init containers and the Job
    included) names a field of its settings class, and the whole builds valid settings."""
    problems = []
    for name, owner in pod_owners(overlay).items():
        for container in all_containers(owner):
            if not is_relaybox_image(container):
                continue
            main = container is main_container(owner) and name in WORKLOADS
            cls = settings_class(name) if main else ServiceSettings
            env = environment(overlay, container)
            for key in env:
                if not key.startswith(ENV_PREFIX):
                    problems.append(f"{name}/{container['name']}: {key} is never read")
                    continue
                problem = unknown_setting(cls, key[len(ENV_PREFIX) :].split("__"))
                if problem:
                    problems.append(f"{name}/{container['name']}: {key}: {problem}")
            with replayed_environment(env):
                cls()  # raises ValidationError on a bad value
    assert problems == []
    realtime = settings_of(overlay, "relaybox-realtime")
    assert realtime.realtime.replica == POD_NAME_SAMPLE, "the replica is named after its pod"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials_come_from_the_secret(overlay: str) -> None:
    for name, owner in pod_owners(overlay).items():
        for container in all_containers(owner):
            for entry in container.get("env", []):
                if entry["name"].startswith(ENV_PREFIX) and SECRET_VARIABLE.search(entry["name"]):
                    ref = entry.get("valueFrom", {}).get("secretKeyRef")
                    assert ref is not None, f"{name}: {entry['name']} is inlined"
                    assert ref["name"] == SECRET
    secrets = objects(overlay, "Secret")
    if overlay == "prod":
        assert secrets == {}, "production Secrets are created by hand, never rendered"
        return
    assert set(secrets) == {SECRET}
    data = secret_data(overlay) or {}
    for key, value in data.items():
        assert "dev-only" in value or "dev-only" in key or "-dev-" in value, (
            f"dev Secret {key}: label the development value as such"
        )
    missing = {key for key, required in secret_refs(overlay).items() if required} - set(data)
    assert missing == set(), f"the dev Secret lacks {missing}"


def test_readme_creates_every_key_production_reads() -> None:
    """deploy/README.md's `kubectl create secret` lists the keys the prod overlay reads."""
    text = DEPLOY_README.read_text()
    match = re.search(r"kubectl -n relaybox create secret generic relaybox.*?\n```", text, re.S)
    assert match, "deploy/README.md shows no `kubectl -n relaybox create secret generic relaybox`"
    listed = set(re.findall(r"--from-literal=([a-z0-9-]+)=", match.group(0)))
    refs = secret_refs("prod")
    required = {key for key, needed in refs.items() if needed}
    assert required <= listed, f"the README does not create {required - listed}"
    assert listed <= set(refs), f"the README creates keys nothing reads: {listed - set(refs)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_realtime_accepts_the_apis_tickets_and_tokens(overlay: str) -> None:
    api, realtime = settings_of(overlay, "relaybox-api"), settings_of(overlay, "relaybox-realtime")
    assert realtime.auth.jwt_secret == api.auth.jwt_secret
    assert realtime.auth.tenant_claim == api.auth.tenant_claim
    assert realtime.dev_mode == api.dev_mode == (overlay == "dev")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_accepts_its_secrets_and_never_gets_the_broker(overlay: str) -> None:
    from relaybox.api.auth import check_secret

    api = settings_of(overlay, "relaybox-api")
    assert isinstance(api, ApiSettings)
    check_secret(api)  # the API would refuse to start otherwise
    env = environment(overlay, main_container(one(overlay, "Deployment", "relaybox-api")))
    assert [key for key in env if key.startswith("RELAYBOX_BROKER__")] == []


# --- ports, probes, Services -----------------------------------------------------------------


@cache
def served_paths(overlay: str, deployment: str) -> frozenset[str]:
    """Which of /health, /ready and /metrics the process answers (asked of the code)."""
    return frozenset(_served_paths(deployment, settings_of(overlay, deployment)))


def _served_paths(deployment: str, settings: BaseSettings) -> set[str]:
    wanted = {"/health", "/ready", "/metrics"}
    service = WORKLOADS[deployment].service
    if service in ("api", "mock-meta"):
        if service == "api":
            from relaybox.api.app import create_app as api_app

            assert isinstance(settings, ApiSettings)
            routes = {route.path for route in api_app(settings).routes}
        else:
            from relaybox.mock_meta.app import create_app as mock_app

            assert isinstance(settings, MockMetaSettings)
            routes = {route.path for route in mock_app(settings).routes}
        return wanted & routes
    if service in ("publisher", "consumer"):
        from relaybox.common.observability.server import health_app

        async def ready() -> bool:
            return True

        return wanted & {route.path for route in health_app(ready).routes}
    return {path for path in wanted if _realtime_answers(settings, path)}


def _realtime_answers(settings: BaseSettings, path: str) -> bool:
    import asyncio

    from websockets.datastructures import Headers
    from websockets.http11 import Request

    from relaybox.common.db.session import dispose
    from relaybox.realtime.server import Replica

    assert isinstance(settings, RealtimeSettings)

    async def ask() -> bool:
        replica = Replica(settings)
        try:
            response = await replica._process_request(None, Request(path, Headers()))  # type: ignore[arg-type]
            return response is not None and response.status_code != 404
        finally:
            await dispose(replica.engine)

    return asyncio.run(ask())


def container_port(container: dict[str, Any], name_or_number: str | int) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
    assert name_or_number in ports, f"{container['name']}: no port named {name_or_number}"
    return int(ports[name_or_number])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_probes_and_services_use_the_settings(overlay: str) -> None:
    services = objects(overlay, "Service")
    for name in expected_workloads(overlay):
        deployment = one(overlay, "Deployment", name)
        container = main_container(deployment)
        settings = settings_of(overlay, name)
        compose_twin = SERVICES[WORKLOADS[name].service]
        assert compose_twin.http is not None
        listeners = {listener(settings, field) for field in compose_twin.listeners}
        assert {host for host, _ in listeners} == {"0.0.0.0"}, f"{name}: bind every interface"
        declared = {int(p["containerPort"]) for p in container["ports"]}
        assert declared == {port for _, port in listeners}, f"{name}: ports {declared}"
        http_port = listener(settings, compose_twin.http)[1]
        served = served_paths(overlay, name)
        ready_path = "/ready" if "/ready" in served else "/health"
        if name != "relaybox-mock-meta":
            assert "/ready" in served, f"{name} serves no /ready"
        ready, alive = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
        assert (ready["path"], alive["path"]) == (ready_path, "/health"), name
        assert "/health" in served, name
        assert container_port(container, ready["port"]) == http_port, name
        assert container_port(container, alive["port"]) == http_port, name
        assert name in services, f"{name} has no Service"
        service = services[name]
        assert service["spec"]["selector"].items() <= pod_labels(deployment).items(), name
        for entry in service["spec"]["ports"]:
            assert container_port(container, entry["targetPort"]) in declared, name
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        if "/metrics" in served:
            assert annotations.get("prometheus.io/scrape") == "true", name
            assert int(annotations["prometheus.io/port"]) == http_port, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_outlasts_the_drain(overlay: str) -> None:
    for name in expected_workloads(overlay):
        deployment = one(overlay, "Deployment", name)
        container = main_container(deployment)
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        command = pre_stop.get("command", [])
        sleep = duration_s(command[1] + "s") if command[:1] == ["sleep"] else 0.0
        drain = WORKLOADS[name].drain_s(settings_of(overlay, name))
        grace = pod_spec(deployment).get("terminationGracePeriodSeconds", 30)
        assert grace > sleep + drain, f"{name}: SIGKILL at {grace}s cuts {sleep}+{drain}s short"


def test_the_drains_come_from_the_settings() -> None:
    """The figures the grace is checked against are the settings' (a changed default shows)."""
    consumer = settings_of("prod", "relaybox-consumer")
    assert isinstance(consumer, ConsumerSettings)
    assert WORKLOADS["relaybox-consumer"].drain_s(consumer) == consumer.shutdown_grace_s + CLOSE_S
    publisher = settings_of("prod", "relaybox-publisher")
    assert isinstance(publisher, PublisherSettings)
    assert publisher.publish_timeout_s > 0


def dockerfile_uid() -> int:
    users = [args for kind, args in dockerfile_instructions() if kind == "USER"]
    assert users, "deploy/Dockerfile sets no USER"
    return int(users[-1].split(":")[0])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_unprivileged(overlay: str) -> None:
    """The namespace enforces the "restricted" Pod Security Standard; every pod meets it, and
    relaybox's run as the image's user with a read-only root file system."""
    namespace = objects(overlay, "Namespace")
    (labels,) = [n["metadata"].get("labels", {}) for n in namespace.values()]
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted"
    for name, owner in pod_owners(overlay).items():
        spec = pod_spec(owner)
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        for container in all_containers(owner):
            where = f"{name}/{container['name']}"
            own = container["securityContext"]
            assert own["allowPrivilegeEscalation"] is False, where
            assert own["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in own["capabilities"], where
            if is_relaybox_image(container):
                assert security["runAsUser"] == dockerfile_uid(), where
                assert own["readOnlyRootFilesystem"] is True, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resources(overlay: str) -> None:
    for name, owner in pod_owners(overlay).items():
        for container in all_containers(owner):
            resources = container.get("resources", {})
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            where = f"{name}/{container['name']}"
            assert {"cpu", "memory"} <= set(requests), f"{where}: request cpu and memory"
            assert "memory" in limits, f"{where}: limit memory"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_long_running_pod_has_a_disruption_budget(overlay: str) -> None:
    budgets = objects(overlay, "PodDisruptionBudget").values()
    for kind in ("Deployment", "StatefulSet"):
        for name, owner in objects(overlay, kind).items():
            matching = [
                b
                for b in budgets
                if b["spec"]["selector"]["matchLabels"].items() <= pod_labels(owner).items()
            ]
            assert len(matching) == 1, f"{name}: {len(matching)} PodDisruptionBudgets"
            # a budget that allows no eviction would block every node drain
            assert matching[0]["spec"].get("maxUnavailable", 0) >= 1, name


# --- the migration runs first ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_migration_job_runs_the_upgrade(overlay: str) -> None:
    job = one(overlay, "Job", "relaybox-migrate")
    container = main_container(job)
    migrate = SERVICES["migrate"]
    assert container["command"] == ["python", "-m", migrate.module, *migrate.args]
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")
    assert job["spec"]["backoffLimit"] >= 1, "retry until PostgreSQL answers"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_database_user_waits_for_the_migration(overlay: str) -> None:
    """The init container runs base/wait-for-schema.py, as committed, against the same URL."""
    config_maps = objects(overlay, "ConfigMap")
    for name in expected_workloads(overlay):
        deployment = one(overlay, "Deployment", name)
        main_env = environment(overlay, main_container(deployment))
        inits = pod_spec(deployment).get("initContainers", [])
        if "RELAYBOX_DATABASE__URL" not in main_env:
            assert inits == [], f"{name} uses no database: nothing to wait for"
            continue
        (init,) = inits
        assert init["image"] == main_container(deployment)["image"], "the same code and migrations"
        assert (
            environment(overlay, init)["RELAYBOX_DATABASE__URL"]
            == (main_env["RELAYBOX_DATABASE__URL"])
        )
        script = Path(init["command"][1])
        assert init["command"] == ["python", str(script)], name
        (mount,) = [m for m in init["volumeMounts"] if m["mountPath"] == str(script.parent)]
        (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
        config_map = config_maps[volume["configMap"]["name"]]
        assert config_map["data"][script.name] == WAIT_SCRIPT.read_text(), name


def wait_for_schema(url: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["RELAYBOX_DATABASE__URL"] = url
    done = subprocess.run(
        [sys.executable, str(WAIT_SCRIPT), "--timeout-s", "0.3", "--interval-s", "0.1"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


def test_wait_for_schema_holds_the_pod_until_the_schema_is_at_head(servers: Servers) -> None:
    """On a real PostgreSQL: no database, no migration, an older revision all wait; head and a
    revision newer than the image (a rollback) let the pod start."""
    import asyncio

    import asyncpg
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import make_url

    from relaybox.common.db.session import asyncpg_dsn

    name = f"relaybox_k8s_wait_{uuid.uuid4().hex[:8]}"
    url = make_url(servers.database_admin_url).set(database=name)
    url_text = url.render_as_string(hide_password=False)
    password = url.password

    async def set_revision(revision: str) -> None:
        conn = await asyncpg.connect(asyncpg_dsn(url_text), timeout=10)
        try:
            await conn.execute("UPDATE alembic_version SET version_num = $1", revision)
        finally:
            await conn.close()

    try:
        code, out = wait_for_schema(url_text)
        assert (code, "not reachable yet" in out) == (1, True), out
        asyncio.run(create_database_if_missing(url_text))
        code, out = wait_for_schema(url_text)
        assert (code, "no migration has run yet" in out) == (1, True), out
        upgrade(url_text)
        code, out = wait_for_schema(url_text)
        assert (code, "schema at head" in out) == (0, True), out
        scripts = ScriptDirectory.from_config(alembic_config(url_text))
        oldest = [r.revision for r in scripts.walk_revisions()][-1]
        asyncio.run(set_revision(oldest))
        code, out = wait_for_schema(url_text)
        assert (code, f"schema at ['{oldest}'], waiting for" in out) == (1, True), out
        asyncio.run(set_revision("f" * 12))
        code, out = wait_for_schema(url_text)
        assert (code, "newer than this image's" in out) == (0, True), out
        if password:
            assert password not in out, "the database password was printed"
    finally:
        drop_database(url_text)


# --- scaling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_consumers_scale_on_the_depth_of_their_work_queues(overlay: str) -> None:
    scaled = one(overlay, "ScaledObject", "relaybox-consumer")["spec"]
    target = scaled["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment", "relaybox-consumer")
    # never zero: the consumer also sweeps, dispatches mailings and drains the DLQs
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    consumer = settings_of(overlay, "relaybox-consumer")
    topology = Topology.from_settings(consumer.broker)
    auths = objects(overlay, "TriggerAuthentication")
    broker_key = next(
        e["valueFrom"]["secretKeyRef"]["key"]
        for e in main_container(one(overlay, "Deployment", "relaybox-consumer"))["env"]
        if e["name"] == "RELAYBOX_BROKER__URL"
    )
    queues = set()
    for trigger in scaled["triggers"]:
        assert trigger["type"] == "rabbitmq"
        metadata = trigger["metadata"]
        assert metadata["mode"] == "QueueLength" and int(metadata["value"]) >= 1
        assert metadata["protocol"] == "amqp"
        auth = auths[trigger["authenticationRef"]["name"]]["spec"]
        (host,) = [ref for ref in auth["secretTargetRef"] if ref["parameter"] == "host"]
        assert (host["name"], host["key"]) == (SECRET, broker_key), "the consumers' own broker"
        queues.add(metadata["queueName"])
    assert queues == {topology.queue(route) for route in ROUTES}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_scales_on_cpu(overlay: str) -> None:
    hpa = one(overlay, "HorizontalPodAutoscaler", "relaybox-api")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "relaybox-api"
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    container = main_container(one(overlay, "Deployment", "relaybox-api"))
    assert "cpu" in container["resources"]["requests"], "utilization is a share of the request"
    if overlay == "prod":
        assert hpa["minReplicas"] >= 2


# --- network: policies and the Ingress -------------------------------------------------------


def reachable_from_outside(overlay: str) -> dict[tuple[str, str], set[int]]:
    """(namespace allowed in, workload) -> ports, from every NetworkPolicy's ingress rules."""
    owners = {n: o for n, o in pod_owners(overlay).items() if o["kind"] != "Job"}
    found: dict[tuple[str, str], set[int]] = {}
    for policy in objects(overlay, "NetworkPolicy").values():
        spec = policy["spec"]
        assert "matchExpressions" not in spec["podSelector"], "matchLabels only (tested here)"
        selected = [
            name
            for name, owner in owners.items()
            if spec["podSelector"].get("matchLabels", {}).items() <= pod_labels(owner).items()
        ]
        for rule in spec.get("ingress", []):
            name = policy["metadata"]["name"]
            assert rule.get("from"), f"{name}: a rule open to every source"
            assert rule.get("ports"), f"{name}: a rule open on every port"
            ports = {int(p["port"]) for p in rule["ports"]}
            for peer in rule["from"]:
                assert "ipBlock" not in peer, f"{name}: an ipBlock"
                if "namespaceSelector" not in peer:
                    continue  # a pod of this namespace
                labels = peer["namespaceSelector"]["matchLabels"]
                assert set(labels) == {"kubernetes.io/metadata.name"}, name
                for workload in selected:
                    key = (labels["kubernetes.io/metadata.name"], workload)
                    found.setdefault(key, set()).update(ports)
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_is_denied_by_default(overlay: str) -> None:
    deny = [
        p
        for p in objects(overlay, "NetworkPolicy").values()
        if p["spec"]["podSelector"] == {}
        and p["spec"]["policyTypes"] == ["Ingress"]
        and not p["spec"].get("ingress")
    ]
    assert len(deny) == 1, "one default-deny ingress policy for the namespace"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_api_and_realtime_are_reachable_from_outside(overlay: str) -> None:
    expected: dict[tuple[str, str], set[int]] = {}
    for name in expected_workloads(overlay):
        settings = settings_of(overlay, name)
        compose_twin = SERVICES[WORKLOADS[name].service]
        assert compose_twin.http is not None
        http_port = listener(settings, compose_twin.http)[1]
        if name in ("relaybox-api", "relaybox-realtime"):
            expected[(INGRESS_NAMESPACE, name)] = {http_port}
        if "/metrics" in served_paths(overlay, name):
            expected[(MONITORING_NAMESPACE, name)] = {http_port}
    if overlay == "dev":
        broker = urlsplit(settings_of(overlay, "relaybox-consumer").broker.url)
        expected[(KEDA_NAMESPACE, "relaybox-rabbitmq")] = {broker.port or 5672}
    assert reachable_from_outside(overlay) == expected


def ingress_backend(overlay: str, path: str) -> tuple[str, str] | None:
    """The (service, port name) the Ingresses send `path` to: Kubernetes' matching rules
    (Exact, then the longest Prefix, element-wise)."""
    best: tuple[int, int, tuple[str, str]] | None = None
    for ingress in objects(overlay, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for entry in rule["http"]["paths"]:
                candidate, kind = entry["path"], entry["pathType"]
                if kind == "Exact":
                    matches = path == candidate
                else:
                    assert kind == "Prefix", kind
                    stem = candidate.rstrip("/")
                    matches = path == stem or path.startswith(stem + "/")
                if not matches:
                    continue
                service = entry["backend"]["service"]
                rank = (len(candidate), 1 if kind == "Exact" else 0)
                target = (service["name"], service["port"]["name"])
                if best is None or rank > best[:2]:
                    best = (*rank, target)
    return None if best is None else best[2]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ingress_routes_the_public_paths_and_nothing_else(overlay: str) -> None:
    """Every API route but /health, /ready, /metrics and /admin/... reaches the API (the
    providers' /webhooks/... included), /chat/stream reaches realtime, the rest nothing."""
    from relaybox.api.app import create_app

    api = settings_of(overlay, "relaybox-api")
    assert isinstance(api, ApiSettings)
    paths = {re.sub(r"\{[^}]*\}", "x", route.path) for route in create_app(api).routes}
    assert any(p.startswith("/webhooks/") for p in paths)
    for path in sorted(paths):
        target = ingress_backend(overlay, path)
        if path.startswith(NOT_ROUTED) or path in NOT_ROUTED:
            assert target is None, f"{path} leaves the cluster"
        else:
            assert target == ("relaybox-api", "http"), f"{path} -> {target}"
    for path in ("/admin/dead-letters", "/metrics", "/health", "/ready"):
        assert ingress_backend(overlay, path) is None, path
    assert ingress_backend(overlay, "/chat/stream") == ("relaybox-realtime", "ws")
    services = objects(overlay, "Service")
    for service, port in (("relaybox-api", "http"), ("relaybox-realtime", "ws")):
        assert port in {p["name"] for p in services[service]["spec"]["ports"]}


# --- the dev overlay: everything in-cluster --------------------------------------------------


def service_address(overlay: str, host: str | None, port: int | None) -> str:
    """Which Service (by name) a client's host:port reaches, or why none."""
    service = objects(overlay, "Service").get(host or "")
    if service is None:
        return f"no Service {host}"
    if port not in {p["port"] for p in service["spec"]["ports"]}:
        return f"Service {host} has no port {port}"
    return str(host)


def test_dev_runs_its_backends_and_providers_in_the_cluster() -> None:
    consumer = settings_of("dev", "relaybox-consumer")
    mock = settings_of("dev", "relaybox-mock-meta")
    api = settings_of("dev", "relaybox-api")
    assert isinstance(consumer, ConsumerSettings) and isinstance(mock, MockMetaSettings)
    assert isinstance(api, ApiSettings)
    database, broker = urlsplit(consumer.database.url), urlsplit(consumer.broker.url)
    assert service_address("dev", database.hostname, database.port) == "relaybox-postgres"
    assert service_address("dev", broker.hostname, broker.port) == "relaybox-rabbitmq"
    data = secret_data("dev") or {}
    assert database.password == data["postgres-password"], "the URL uses PostgreSQL's password"
    assert broker.password == data["rabbitmq-password"], "the URL uses RabbitMQ's password"
    for url in (consumer.meta.base_url, consumer.email_api.base_url, consumer.push.url):
        parts = urlsplit(url)
        assert service_address("dev", parts.hostname, parts.port) == "relaybox-mock-meta", url
    smtp = service_address("dev", consumer.smtp.host, consumer.smtp.port)
    assert smtp == "relaybox-mock-meta" and consumer.smtp.port == mock.smtp_sink.port
    # the credentials both sides of each provider use
    assert consumer.push.server_key.get_secret_value() == mock.push.server_key
    assert consumer.email_api.secret() == mock.email_api.password
    assert consumer.email_api.username == mock.email_api.username
    assert api.meta.webhook_secret == mock.meta.webhook_secret
    assert api.push.webhook_secret == mock.push.webhook_secret
    for url in (mock.meta.webhook_url, mock.push.receipt_url):
        parts = urlsplit(url)
        assert service_address("dev", parts.hostname, parts.port) == "relaybox-api", url
        assert parts.path.startswith("/webhooks/"), url


def test_prod_keeps_no_backend_nor_mock_in_the_cluster() -> None:
    names = {o["metadata"]["name"] for o in rendered("prod")}
    for backend in ("relaybox-postgres", "relaybox-rabbitmq", "relaybox-mock-meta"):
        assert backend not in names
    consumer = settings_of("prod", "relaybox-consumer")
    assert consumer.chat.storage.kind == "s3", "replicas share attachments through S3"
    assert settings_of("prod", "relaybox-api").chat.storage.kind == "s3"


def _iter_rendered() -> Iterator[tuple[str, dict[str, Any]]]:
    for overlay in OVERLAYS:
        for document in rendered(overlay):
            yield overlay, document


def test_every_object_lives_in_the_relaybox_namespace() -> None:
    for overlay, document in _iter_rendered():
        if document["kind"] == "Namespace":
            assert document["metadata"]["name"] == "relaybox"
        else:
            assert document["metadata"].get("namespace") == "relaybox", (overlay, document)
