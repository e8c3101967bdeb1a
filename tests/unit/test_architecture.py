"""The tree keeps its architecture: a service imports relaybox.common, never another service,
and a rule two services apply is written once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "api": "relaybox.api",
    "publisher": "relaybox.publisher",
    "consumer": "relaybox.consumer",
    "mock-meta": "relaybox.mock_meta",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_service_never_imports_another_service(service: str) -> None:
    own = SERVICES[service]
    others = [pkg for name, pkg in SERVICES.items() if name != service]
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in (ROOT / "services" / service / "src").rglob("*.py")
        for module in imported_modules(path)
        if any(module == o or module.startswith(o + ".") for o in others)
    ]
    assert not offenders, offenders
    assert (ROOT / "services" / service / "src" / own.replace(".", "/") / "__main__.py").exists()


# The command-line client (clients/cli) is not a service: it talks to the API over HTTP and
# never to the database or the broker. Of relaybox it may import itself, the token signer and
# its settings (`relaybox token` signs locally, as `python -m relaybox.api token` does), and the
# realtime service's stream client and its one-line printer: `relaybox chat tail` is that
# client (reconnect, resume, de-duplication), not a second one, so relaybox-cli depends on
# relaybox-realtime for these two modules only.
CLI_MAY_IMPORT = (
    "relaybox.cli",
    "relaybox.common.auth",
    "relaybox.common.settings",
    "relaybox.realtime.client",
    "relaybox.realtime.tail",
)
CLI_NEVER_IMPORTS = ("sqlalchemy", "asyncpg", "aio_pika", "aiormq", "alembic", "litestar")


def test_the_cli_talks_to_the_api_over_http_only() -> None:
    sources = sorted((ROOT / "clients" / "cli" / "src").rglob("*.py"))
    assert sources
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sources
        for module in imported_modules(path)
        if (
            module.startswith("relaybox.")
            and not any(module == m or module.startswith(m + ".") for m in CLI_MAY_IMPORT)
        )
        or module.split(".")[0] in CLI_NEVER_IMPORTS
    ]
    assert not offenders, offenders


def test_common_imports_no_service() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in (ROOT / "libs" / "common" / "src").rglob("*.py")
        for module in imported_modules(path)
        if any(module.startswith(pkg) for pkg in SERVICES.values())
    ]
    assert not offenders, offenders


def test_relaybox_is_a_namespace_package() -> None:
    for src in [
        ROOT / "libs/common/src",
        *(ROOT / "services").glob("*/src"),
        *(ROOT / "clients").glob("*/src"),
    ]:
        assert not (src / "relaybox" / "__init__.py").exists(), src


def test_every_module_says_what_it_owns() -> None:
    missing = [
        str(path.relative_to(ROOT))
        for base in (ROOT / "libs", ROOT / "services", ROOT / "clients")
        for path in base.rglob("*.py")
        if "migrations/versions" not in str(path)
        and not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert not missing, missing


def _definitions(path: Path) -> dict[str, str]:
    """Top-level functions (and methods) and module constants of a module, each as the dump of
    its body without its name or docstring; trivial ones (a line or two, a number, a word) are
    left out."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body[1:] if ast.get_docstring(node) else node.body
            if sum(1 for _ in ast.walk(ast.Module(body=body, type_ignores=[]))) >= MIN_NODES:
                found[f"{node.name}()"] = ast.dump(ast.Module(body=body, type_ignores=[]))
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node in tree.body:
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            if isinstance(target, ast.Name) and node.value is not None and _worth(node.value):
                found[target.id] = ast.dump(node.value)
    return found


MIN_NODES = 25  # about three short statements


def _worth(value: ast.expr) -> bool:
    """A constant whose repetition is a copied rule: a string of a few characters or more, or a
    collection of several items (not a number, a name or a call)."""
    if isinstance(value, ast.Constant):
        return isinstance(value.value, str | bytes) and len(value.value) >= 4
    if isinstance(value, ast.Tuple | ast.List | ast.Set | ast.Dict):
        return len(ast.dump(value)) > 80
    return False


# Equal values that are not one rule: the same word meaning two things.
COINCIDENCES = {
    frozenset({"MESSAGE_ID_DOMAIN", "DEV_EMAIL_API_USERNAME"}),  # "relaybox": a domain, a login
}


def test_no_rule_is_written_in_two_services() -> None:
    """A function or constant with the same body in two services is one rule copied: it belongs
    once in relaybox.common.<domain>."""
    seen: dict[str, tuple[str, str, str]] = {}
    copies = []
    for service in sorted(SERVICES):
        for path in sorted((ROOT / "services" / service / "src").rglob("*.py")):
            for name, body in _definitions(path).items():
                where = f"{path.relative_to(ROOT)}:{name}"
                first = seen.setdefault(body, (service, name, where))
                if first[0] != service and frozenset({first[1], name}) not in COINCIDENCES:
                    copies.append(f"{first[2]} == {where}")
    assert not copies, copies
