"""docs/cloud-architecture.md and its diagram's source stay in step with docker-compose.yml:
every compose service is a node of docs/cloud-architecture.dot (its id is the service's name)
and a row of the document's component table; the source renders (when graphviz's `dot` is
installed: `make cloud-diagram`) and the committed PNG the document shows exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOT = ROOT / "docs" / "cloud-architecture.dot"
DOC = ROOT / "docs" / "cloud-architecture.md"
PNG = ROOT / "docs" / "cloud-architecture.png"
# A node statement: `name [` or `"name" [` at the start of a line (not graph/node/edge defaults).
NODE = re.compile(r'^\s*(?:"([^"]+)"|([A-Za-z_][\w]*))\s*\[', re.MULTILINE)
KEYWORDS = {"graph", "node", "edge"}


def compose_services() -> list[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return sorted(compose["services"])


def diagram_nodes() -> set[str]:
    source = re.sub(r"//[^\n]*", "", DOT.read_text())  # comments name services too
    return {quoted or bare for quoted, bare in NODE.findall(source)} - KEYWORDS


def test_every_compose_service_is_a_node_of_the_diagram() -> None:
    services = compose_services()
    assert len(services) >= 5, services
    missing = sorted(set(services) - diagram_nodes())
    assert not missing, f"docker-compose.yml services missing from {DOT.name}: {missing}"


def test_every_compose_service_has_a_row_in_the_component_table() -> None:
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| `")]
    named = {m for row in rows for m in re.findall(r"^\| `([^`]+)`", row)}
    missing = sorted(set(compose_services()) - named)
    assert not missing, f"{DOC.name}'s component table has no row for {missing}"


def test_the_document_shows_the_committed_png() -> None:
    assert f"]({PNG.name})" in DOC.read_text()
    assert PNG.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
def test_the_source_renders(tmp_path: Path) -> None:
    out = tmp_path / "cloud.png"
    run = subprocess.run(
        ["dot", "-Tpng", str(DOT), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "Warning" not in run.stderr, run.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
