"""The tree keeps its architecture: a service imports relaybox.common, never another service."""

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


def test_common_imports_no_service() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in (ROOT / "libs" / "common" / "src").rglob("*.py")
        for module in imported_modules(path)
        if any(module.startswith(pkg) for pkg in SERVICES.values())
    ]
    assert not offenders, offenders


def test_relaybox_is_a_namespace_package() -> None:
    for src in [ROOT / "libs/common/src", *(ROOT / "services").glob("*/src")]:
        assert not (src / "relaybox" / "__init__.py").exists(), src


def test_every_module_says_what_it_owns() -> None:
    missing = [
        str(path.relative_to(ROOT))
        for base in (ROOT / "libs", ROOT / "services")
        for path in base.rglob("*.py")
        if "migrations/versions" not in str(path)
        and not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert not missing, missing
