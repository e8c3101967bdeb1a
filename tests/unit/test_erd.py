"""The messenger's ERD stays in step with the models: its committed graphviz source is what
`python -m relaybox.common.db.erd` (`make erd`) writes from them today."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from relaybox.common.db import erd
from relaybox.common.db.models import Base

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / erd.DOT_PATH


def test_the_committed_source_is_generated_from_the_models() -> None:
    assert COMMITTED.read_text() == erd.dot_source(), (
        f"{erd.DOT_PATH} is out of date with relaybox.common.db.models: run `make erd` and "
        "commit the .dot and the .png"
    )


def test_every_chat_table_is_drawn_with_its_foreign_keys() -> None:
    source = erd.dot_source()
    chat = [name for name in Base.metadata.tables if name.startswith(erd.PREFIX)]
    assert chat
    for name in chat:
        assert f'"{name}" [label=<' in source
        for fk in Base.metadata.tables[name].foreign_keys:
            assert f'"{name}":"{fk.parent.name}.out":e -> "{fk.column.table.name}"' in source


def test_a_reference_without_fk_must_name_real_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = erd.Reference("chat_pushes", "no_such_column", "chat_devices.id", "a test")
    monkeypatch.setattr(erd, "REFERENCES_WITHOUT_FK", (wrong,))
    with pytest.raises(LookupError, match="no_such_column"):
        erd.dot_source()


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
def test_the_source_renders(tmp_path: Path) -> None:
    png = tmp_path / "model.png"
    erd.render(COMMITTED, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
