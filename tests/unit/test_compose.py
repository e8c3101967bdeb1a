"""docker-compose.yml is valid Compose and agrees with the services' settings, commands and ports.

No Docker engine is needed: the file is validated against the vendored Compose JSON schema and
every relaybox service's environment is replayed into its pydantic-settings class.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # no stubs in the dev group
import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from relaybox.api.settings import ApiSettings
from relaybox.common.settings import ENV_PREFIX, ServiceSettings
from relaybox.consumer.settings import ConsumerSettings
from relaybox.mock_meta.settings import MockMetaSettings
from relaybox.publisher.settings import PublisherSettings
from relaybox.realtime.settings import RealtimeSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "deploy" / "compose-spec.schema.json"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_MOUNT = "/etc/prometheus/prometheus.yml"
GRAFANA_MOUNT = "/etc/grafana/provisioning"
LOOPBACK = "127.0.0.1"
# what `${VAR:?message}` stands for when replaying the environment (the user must set it)
REQUIRED_VARIABLE_SAMPLE = "sample-value-of-a-required-variable-32b+"


def _api_serves_metrics(settings: BaseSettings) -> bool:
    from relaybox.api.app import create_app

    assert isinstance(settings, ApiSettings)
    return "/metrics" in {route.path for route in create_app(settings).routes}


def _mock_meta_serves_metrics(settings: BaseSettings) -> bool:
    from relaybox.mock_meta.app import create_app

    assert isinstance(settings, MockMetaSettings)
    return "/metrics" in {route.path for route in create_app(settings).routes}


def _worker_serves_metrics(settings: BaseSettings) -> bool:
    return True  # relaybox.common.observability.server.health_app always serves /metrics


def _realtime_serves_metrics(settings: BaseSettings) -> bool:
    """Ask the replica's plain-HTTP handler (no server, database or broker is contacted)."""
    import asyncio

    from websockets.datastructures import Headers
    from websockets.http11 import Request

    from relaybox.common.db.session import dispose
    from relaybox.realtime.server import Replica

    assert isinstance(settings, RealtimeSettings)

    async def ask() -> bool:
        replica = Replica(settings)
        try:
            request = Request("/metrics", Headers())
            response = await replica._process_request(None, request)  # type: ignore[arg-type]
            return response is not None and response.status_code == 200
        finally:
            await dispose(replica.engine)

    return asyncio.run(ask())


@dataclass(frozen=True)
class Service:
    """What a relaybox compose service runs and which settings fields are its listeners."""

    module: str
    settings: type[ServiceSettings]
    args: tuple[str, ...] = ()
    http: str | None = None  # the HttpServerSettings field serving /health, /ready, /metrics
    listeners: tuple[str, ...] = ()  # every server sub-model (host + port) the process binds
    serves_metrics: Callable[[BaseSettings], bool] = field(default=lambda _: False)


SERVICES: dict[str, Service] = {
    "migrate": Service("relaybox.common.db", ServiceSettings, args=("upgrade",)),
    "api": Service(
        "relaybox.api",
        ApiSettings,
        http="api",
        listeners=("api",),
        serves_metrics=_api_serves_metrics,
    ),
    "publisher": Service(
        "relaybox.publisher",
        PublisherSettings,
        http="publisher",
        listeners=("publisher",),
        serves_metrics=_worker_serves_metrics,
    ),
    "consumer": Service(
        "relaybox.consumer",
        ConsumerSettings,
        http="consumer",
        listeners=("consumer",),
        serves_metrics=_worker_serves_metrics,
    ),
    "realtime": Service(
        "relaybox.realtime",
        RealtimeSettings,
        http="realtime",
        listeners=("realtime",),
        serves_metrics=_realtime_serves_metrics,
    ),
    "mock-meta": Service(
        "relaybox.mock_meta",
        MockMetaSettings,
        http="mock_meta",
        listeners=("mock_meta", "smtp_sink"),
        serves_metrics=_mock_meta_serves_metrics,
    ),
}

LONG_RUNNING = sorted(set(SERVICES) - {"migrate"})


# --- loading and small parsers ---------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict), "docker-compose.yml is not a mapping"
    return loaded


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


@cache
def load_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path} is not a mapping"
    return loaded


_VARIABLE = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}` and `$$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        unset = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in (":-", "-") and unset:
            return arg
        if op in (":?", "?") and unset:
            return REQUIRED_VARIABLE_SAMPLE
        return current or ""

    return _VARIABLE.sub(replace, value)


def environment(name: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A service's environment as the container sees it (interpolated against `env`)."""
    raw = services()[name].get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    result = {}
    for key, value in raw.items():
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        result[key] = interpolate(text, env or {})
    return result


@dataclass(frozen=True)
class PortMapping:
    host_ip: str | None
    published: int | None
    target: int


def port_mappings(name: str) -> list[PortMapping]:
    """`ports:` in short ([ip:][host:]container[/proto]) or long syntax."""
    mappings = []
    for entry in services()[name].get("ports", []):
        if isinstance(entry, dict):
            published = entry.get("published")
            mappings.append(
                PortMapping(
                    entry.get("host_ip"),
                    int(published) if published is not None else None,
                    int(entry["target"]),
                )
            )
            continue
        parts = interpolate(str(entry), {}).split("/")[0].split(":")
        target = int(parts[-1])
        published_part = parts[-2] if len(parts) >= 2 else None
        host_ip = ":".join(parts[:-2]) if len(parts) >= 3 else None
        mappings.append(
            PortMapping(host_ip, int(published_part) if published_part else None, target)
        )
    return mappings


def container_ports(name: str) -> set[int]:
    """Every port the service's container declares (published targets and `expose`)."""
    exposed = {int(str(port).split("/")[0]) for port in services()[name].get("expose", [])}
    return {mapping.target for mapping in port_mappings(name)} | exposed


def depends_on(name: str) -> dict[str, str]:
    """Dependency -> condition (the short list form means `service_started`)."""
    raw = services()[name].get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {dep: spec.get("condition", "service_started") for dep, spec in raw.items()}


def duration_s(text: str) -> float:
    """A Compose (Go) duration such as `1m30s` in seconds."""
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def bind_mounts(name: str) -> dict[str, Path]:
    """Container path -> host path of every bind mount (named volumes are skipped)."""
    mounts = {}
    for volume in services()[name].get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts[volume["target"]] = ROOT / volume["source"]
            continue
        source, target, *_ = str(volume).split(":")
        if source.startswith((".", "/", "~")):
            mounts[target] = ROOT / source
    return mounts


@contextmanager
def replayed_environment(env: Mapping[str, str]) -> Iterator[None]:
    """Exactly `env` as the process's RELAYBOX_* variables (the caller's own are hidden)."""
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.upper().startswith(ENV_PREFIX):
                patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        yield


def effective_settings(name: str) -> ServiceSettings:
    """The settings the service's process builds from its compose environment."""
    with replayed_environment(environment(name)):
        return SERVICES[name].settings()


def listener(settings: BaseModel, field_name: str) -> tuple[str, int]:
    server = getattr(settings, field_name)
    return server.host, server.port


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (`Model` or `Model | None`), if any."""
    candidates = [annotation, *typing.get_args(annotation)]
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return models[0] if len(models) == 1 else None


def unknown_setting(model: type[BaseModel], path: list[str]) -> str | None:
    """None if `path` names a field of `model` (walking nested models), else what is wrong."""
    head, *rest = (part.lower() for part in path)
    fields = {name.lower(): info for name, info in model.model_fields.items()}
    info = fields.get(head)
    if info is None:
        return f"{model.__name__} has no field {head!r} (it has {sorted(fields)})"
    if not rest:
        return None
    sub = nested_model(info.annotation)
    if sub is None:
        return f"{model.__name__}.{head} is not a nested model, so it has no {rest[0]!r}"
    return unknown_setting(sub, rest)


def command(name: str) -> list[str]:
    raw = services()[name].get("command")
    assert raw is not None, f"{name}: no command (the image's default would run the API)"
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]


def healthcheck_ports(name: str) -> set[int]:
    test = services()[name]["healthcheck"]["test"]
    text = test if isinstance(test, str) else " ".join(test)
    return {int(port) for port in re.findall(r"https?://(?:127\.0\.0\.1|localhost):(\d+)/", text)}


def dockerfile_path() -> Path:
    build = services()["api"]["build"]
    context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    return context / dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical, pending = [], ""
    for line in dockerfile_path().read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped.removesuffix("\\").strip() + " "
        if not stripped.endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    return [(text.split()[0].upper(), text.partition(" ")[2]) for text in logical]


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob (`**` spans directories; `*`, `?` stay within one)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(path: str) -> bool:
    """Whether the build context leaves `path` out: the last matching rule wins, and a rule
    matching a parent directory matches everything under it."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((negate, _dockerignore_regex(pattern)))
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


# --- (a) the Compose schema ------------------------------------------------------------------


@cache
def compose_validator() -> Any:
    """The schema says `http://json-schema.org/draft/2019-09/schema#`; jsonschema registers that
    draft under `https://`, so the draft is chosen here instead of by `validator_for`."""
    schema = json.loads(SCHEMA_FILE.read_text())
    assert re.fullmatch(r"https?://json-schema\.org/draft/2019-09/schema#?", schema["$schema"])
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def schema_errors(document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in compose_validator().iter_errors(document)
    ]


def test_compose_file_matches_the_compose_schema() -> None:
    assert schema_errors(compose()) == []


def test_the_schema_is_strict_enough_to_catch_a_typo() -> None:
    broken = json.loads(json.dumps(compose()))
    broken["services"]["api"]["dependson"] = broken["services"]["api"].pop("depends_on")
    broken["services"]["consumer"]["depends_on"]["migrate"]["condition"] = "service_done"
    errors = schema_errors(broken)
    assert any("services/api" in error for error in errors), errors
    assert any("services/consumer" in error for error in errors), errors


# --- (b) environment and command against the settings classes --------------------------------


def test_every_service_built_from_the_image_is_known() -> None:
    image = services()["api"]["image"]
    built_here = {
        name for name, spec in services().items() if "build" in spec or spec.get("image") == image
    }
    assert built_here == set(SERVICES), (
        "a service runs the relaybox image without an entry in SERVICES (or one is missing)"
    )


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_relaybox_variables_name_real_settings_fields(name: str) -> None:
    settings_class = SERVICES[name].settings
    problems = []
    for key in environment(name):
        if not key.upper().startswith(ENV_PREFIX):
            problems.append(f"{key}: not a {ENV_PREFIX}* variable, the service never reads it")
            continue
        path = key[len(ENV_PREFIX) :].split("__")
        problem = unknown_setting(settings_class, path)
        if problem:
            problems.append(f"{key}: {problem}")
    assert problems == [], f"{name} ({settings_class.__name__}):\n" + "\n".join(problems)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_environment_builds_valid_settings(name: str) -> None:
    effective_settings(name)  # raises ValidationError on a bad value (URL, int, bool, ...)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_command_runs_the_package_of_its_settings_class(name: str) -> None:
    service = SERVICES[name]
    assert command(name) == ["python", "-m", service.module, *service.args]
    package = service.settings.__module__.rpartition(".")[0]
    assert service.module == package or service.module.startswith(package + "."), (
        f"{name}: {service.module} does not belong to {service.settings.__module__}"
    )
    main = importlib.util.find_spec(f"{service.module}.__main__")
    assert main is not None and main.origin is not None, f"{service.module} has no __main__"
    source = Path(main.origin).read_text()
    assert f"{service.settings.__name__}()" in source, (
        f"{service.module}.__main__ does not build {service.settings.__name__}"
    )


def test_api_secret_is_accepted_and_labelled_for_development() -> None:
    from relaybox.api.auth import MIN_SECRET_BYTES, check_secret

    settings = effective_settings("api")
    assert isinstance(settings, ApiSettings)
    check_secret(settings)  # the API would refuse to start otherwise
    assert len(settings.auth.jwt_secret.encode()) >= MIN_SECRET_BYTES
    if settings.dev_mode:
        assert "dev" in settings.auth.jwt_secret, "a dev-mode default secret must say so"


def test_realtime_accepts_the_apis_tickets_and_tokens() -> None:
    """The API signs stream tickets and bearer tokens; realtime must verify them."""
    from relaybox.api.auth import issue_token
    from relaybox.common.auth import Caller, verify_bearer
    from relaybox.common.chat.tickets import issue_ticket, verify_ticket

    api, realtime = effective_settings("api"), effective_settings("realtime")
    assert isinstance(api, ApiSettings) and isinstance(realtime, RealtimeSettings)
    assert realtime.auth.jwt_secret == api.auth.jwt_secret
    assert realtime.auth.tenant_claim == api.auth.tenant_claim
    assert realtime.dev_mode == api.dev_mode
    caller = Caller(id="alice", tenant="dev", scopes=frozenset({"chat:read"}))
    ticket, _ = issue_ticket(api.auth, caller, api.chat.stream_ticket_ttl_s)
    assert verify_ticket(ticket, realtime.auth).caller == caller
    token = issue_token(api, "alice", ("chat:read",), 60, tenant="dev")
    assert verify_bearer(token, realtime.auth) == caller


def test_presence_outlives_two_realtime_heartbeats() -> None:
    """The consumer takes a device as live while its presence row is fresh; realtime refreshes
    it every heartbeat, so a live socket's row must not look stale between two beats."""
    consumer, realtime = effective_settings("consumer"), effective_settings("realtime")
    assert isinstance(consumer, ConsumerSettings) and isinstance(realtime, RealtimeSettings)
    assert consumer.chat.presence_ttl_s > 2 * realtime.realtime.heartbeat_s


def test_api_gets_no_broker_settings() -> None:
    """The API never talks to RabbitMQ: only the publisher publishes what the outbox holds."""
    broker = [key for key in environment("api") if key.upper().startswith("RELAYBOX_BROKER__")]
    assert broker == []
    assert "rabbitmq" not in depends_on("api")


def test_consumer_sends_email_to_mailpit() -> None:
    settings = effective_settings("consumer")
    assert isinstance(settings, ConsumerSettings)
    assert (settings.smtp.host, settings.smtp.port) == ("mailpit", 1025)
    assert settings.smtp.port in container_ports("mailpit")


# --- (c) listeners and ports -----------------------------------------------------------------


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_every_listener_binds_all_interfaces(name: str) -> None:
    settings = effective_settings(name)
    for field_name in SERVICES[name].listeners:
        host, port = listener(settings, field_name)
        assert host == "0.0.0.0", f"{name}: {field_name} binds {host}, unreachable from outside"
        assert port != 0, f"{name}: {field_name} is disabled (port 0)"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_container_ports_are_the_settings_ports(name: str) -> None:
    service, settings = SERVICES[name], effective_settings(name)
    listening = {listener(settings, field_name)[1] for field_name in service.listeners}
    declared = container_ports(name)
    assert declared <= listening, f"{name}: declares {declared - listening}, listens on {listening}"
    assert service.http is not None
    http_port = listener(settings, service.http)[1]
    assert http_port in declared, f"{name}: HTTP port {http_port} is neither published nor exposed"
    for mapping in port_mappings(name):
        assert mapping.published == mapping.target, (
            f"{name}: host port {mapping.published} != container port {mapping.target}"
        )
    assert healthcheck_ports(name) == {http_port}, f"{name}: healthcheck probes another port"


@pytest.mark.parametrize("name", sorted(compose()["services"]))
def test_published_ports_are_bound_to_loopback(name: str) -> None:
    for mapping in port_mappings(name):
        assert mapping.host_ip == LOOPBACK, (
            f"{name}: port {mapping.target} is published on every interface; the stack runs in "
            "dev mode with default passwords, so publish on 127.0.0.1 only"
        )


# --- start-up order and lifecycle ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(compose()["services"]))
def test_dependencies_use_conditions_that_can_be_met(name: str) -> None:
    for dependency, condition in depends_on(name).items():
        assert dependency in services(), f"{name} depends on unknown {dependency}"
        assert condition != "service_started", f"{name}: give {dependency} a real condition"
        if condition == "service_healthy":
            assert "healthcheck" in services()[dependency], f"{dependency} has no healthcheck"
        if condition == "service_completed_successfully":
            assert services()[dependency].get("restart", "no") == "no", dependency


@pytest.mark.parametrize("name", sorted(set(compose()["services"]) - {"migrate"}))
def test_long_running_services_have_healthchecks(name: str) -> None:
    assert "healthcheck" in services()[name]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_clients_reach_compose_services_they_wait_for(name: str) -> None:
    env, settings = environment(name), effective_settings(name)
    targets: list[tuple[str, str | None, int | None]] = []
    for key in ("RELAYBOX_DATABASE__URL", "RELAYBOX_BROKER__URL"):
        if key in env:
            url = urlsplit(env[key])
            targets.append((key, url.hostname, url.port))
    if "RELAYBOX_SMTP__HOST" in env:
        assert isinstance(settings, ConsumerSettings)
        targets.append(("RELAYBOX_SMTP__HOST", settings.smtp.host, settings.smtp.port))
    for key, host, port in targets:
        assert host in services(), f"{name}: {key} points at {host}, not a compose service"
        assert port in container_ports(host), f"{name}: {key} uses port {port} {host} lacks"
        assert depends_on(name).get(host) == "service_healthy", f"{name}: wait for {host}"
    if "RELAYBOX_DATABASE__URL" in env and name != "migrate":
        assert depends_on(name).get("migrate") == "service_completed_successfully"


def shutdown_grace_field(name: str) -> list[str] | None:
    """Where a service's `shutdown_grace_s` lives: top level (consumer) or in its listener's
    sub-model (realtime's `RELAYBOX_REALTIME__SHUTDOWN_GRACE_S`); None without one."""
    service = SERVICES[name]
    if "shutdown_grace_s" in service.settings.model_fields:
        return ["shutdown_grace_s"]
    if service.http is not None:
        sub = nested_model(service.settings.model_fields[service.http].annotation)
        if sub is not None and "shutdown_grace_s" in sub.model_fields:
            return [service.http, "shutdown_grace_s"]
    return None


@pytest.mark.parametrize(
    "name", [name for name in LONG_RUNNING if shutdown_grace_field(name) is not None]
)
def test_stop_grace_period_outlasts_the_shutdown_grace(name: str) -> None:
    value: Any = effective_settings(name).model_dump()
    for part in shutdown_grace_field(name) or []:
        value = value[part]
    grace = float(value)
    stop = duration_s(services()[name].get("stop_grace_period", "10s"))
    assert stop > grace, f"{name}: SIGKILL after {stop}s cuts the {grace}s drain short"


def test_services_with_a_drain_are_checked() -> None:
    assert {"consumer", "realtime"} <= {
        name for name in LONG_RUNNING if shutdown_grace_field(name) is not None
    }


# --- (d) referenced files, the image, Prometheus and Grafana ---------------------------------


@pytest.mark.parametrize("name", sorted(compose()["services"]))
def test_referenced_files_exist(name: str) -> None:
    spec = services()[name]
    if "build" in spec:
        assert dockerfile_path().is_file()
        build = spec["build"]
        assert (ROOT / (build if isinstance(build, str) else build["context"])).is_dir()
    for target, source in bind_mounts(name).items():
        assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_dockerfile_copies_are_in_the_build_context() -> None:
    sources = []
    for instruction, args in dockerfile_instructions():
        words = args.split()
        if instruction in ("COPY", "ADD") and not any(w.startswith("--from") for w in words):
            sources += [w for w in words if not w.startswith("--")][:-1]
    assert sources, "the Dockerfile copies nothing from the build context"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: missing in the repository"
        assert not dockerignore_excludes(source.rstrip("/")), f"COPY {source}: .dockerignored"
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--", *sources],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot list the tracked files")
    dropped = [path for path in listed if dockerignore_excludes(path)]
    assert dropped == [], f".dockerignore drops tracked files the image needs: {dropped[:10]}"


def test_dockerignore_keeps_local_clutter_out() -> None:
    for path in (".venv/bin/python", ".git/HEAD", "libs/common/src/relaybox/__pycache__/x.pyc"):
        assert dockerignore_excludes(path), path


def test_image_syncs_the_lock_and_runs_unprivileged() -> None:
    instructions = dockerfile_instructions()
    final_stage = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    runs = " ".join(args for k, args in instructions if k == "RUN")
    assert "uv sync --frozen --no-dev" in runs
    users = [args for k, args in final_stage if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as root"
    envs = " ".join(args for k, args in final_stage if k == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", envs)


def prometheus_config() -> dict[str, Any]:
    path = bind_mounts("prometheus").get(PROMETHEUS_MOUNT)
    assert path is not None, f"prometheus mounts nothing at {PROMETHEUS_MOUNT}"
    assert path == ROOT / "deploy" / "prometheus" / "prometheus.yml"
    return load_yaml(path)


def scrape_targets() -> dict[str, set[int]]:
    """Compose service -> ports Prometheus scrapes on it (static and DNS discovery)."""
    targets: dict[str, set[int]] = {}
    for job in prometheus_config()["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                targets.setdefault(host, set()).add(int(port))
        for dns in job.get("dns_sd_configs", []):
            for host in dns["names"]:
                targets.setdefault(host, set()).add(int(dns["port"]))
    return targets


def test_prometheus_scrapes_each_metrics_endpoint_at_its_settings_port() -> None:
    targets = scrape_targets()
    for host, ports in targets.items():
        assert host in SERVICES, f"prometheus scrapes {host}, not a relaybox compose service"
        http = SERVICES[host].http
        assert http is not None
        expected = listener(effective_settings(host), http)[1]
        assert ports == {expected}, f"prometheus scrapes {host} on {ports}, it serves {expected}"
    with_metrics = {
        name for name in LONG_RUNNING if SERVICES[name].serves_metrics(effective_settings(name))
    }
    assert {"api", "publisher", "consumer", "realtime"} <= with_metrics
    assert set(targets) == with_metrics, "scrape exactly the services that serve /metrics"


def test_grafana_datasource_is_the_compose_prometheus() -> None:
    provisioning = bind_mounts("grafana").get(GRAFANA_MOUNT)
    assert provisioning == ROOT / "deploy" / "grafana" / "provisioning"
    files = sorted((provisioning / "datasources").glob("*.y*ml"))
    assert files, "no datasource is provisioned"
    urls = [source["url"] for f in files for source in load_yaml(f)["datasources"]]
    assert urls, "no datasource is provisioned"
    for url in urls:
        parsed = urlsplit(url)
        assert parsed.hostname == "prometheus", url
        assert parsed.port in container_ports("prometheus"), url
    assert depends_on("grafana").get("prometheus") == "service_healthy"
