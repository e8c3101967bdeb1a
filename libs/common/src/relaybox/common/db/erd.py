"""The messenger's entity-relationship diagram, drawn from the SQLAlchemy models.

`python -m relaybox.common.db.erd` (`make erd`) writes the graphviz source
`docs/messenger/database-model.dot` from `Base.metadata` (the `chat_*` tables: columns with their
types, primary and foreign keys, unique constraints and unique indexes) and renders it to
`docs/messenger/database-model.png` with graphviz's `dot`. `--check` only compares the committed
source with the models (as `tests/unit/test_erd.py` does). Nothing imports this module at runtime.

A solid edge is a foreign key (crow's foot at the referencing table); a dashed one is a reference
the schema keeps without a foreign key on purpose (`REFERENCES_WITHOUT_FK` says why).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass
from html import escape
from pathlib import Path

from sqlalchemy import Column, Index, MetaData, Table, UniqueConstraint
from sqlalchemy.dialects.postgresql.base import PGDialect

from relaybox.common.db.models import Base

PREFIX = "chat_"
DOT_PATH = Path("docs/messenger/database-model.dot")
PNG_PATH = Path("docs/messenger/database-model.png")
TITLE = "relaybox messenger: the chat_* tables (generated from relaybox.common.db.models)"
LEGEND = (
    "PK primary key, FK foreign key, UQ unique, null: nullable; crow's foot: the many side; "
    "dashed: a reference without a foreign key; users are JWT subjects (no table)"
)


@dataclass(frozen=True)
class Reference:
    """A column that names a row of another table without a foreign key, and why."""

    table: str
    column: str
    target: str  # "table.column"
    why: str


REFERENCES_WITHOUT_FK = (
    Reference(
        "chat_recipients",
        "message_id",
        "chat_messages.id",
        "inserted with the message; a trigger deletes them with it (migration 0013)",
    ),
    Reference(
        "chat_recipients",
        "conversation_id",
        "chat_conversations.id",
        "copied from the message: reads by (user, conversation, seq)",
    ),
    Reference(
        "chat_pushes",
        "device_id",
        "chat_devices.id",
        "a push outlives a removed device",
    ),
)
_DIALECT = PGDialect()  # type: ignore[no-untyped-call]  # the types as PostgreSQL names them
_SHORT_TYPES = {"TIMESTAMP WITH TIME ZONE": "timestamptz"}


def _type(column: Column[object]) -> str:
    compiled = str(column.type.compile(dialect=_DIALECT))
    return _SHORT_TYPES.get(compiled, compiled.lower())


def _marks(column: Column[object], unique: set[str]) -> str:
    marks = []
    if column.primary_key:
        marks.append("PK")
    if column.foreign_keys:
        marks.append("FK")
    if column.name in unique:
        marks.append("UQ")
    if column.computed is not None:
        marks.append("generated")
    elif column.identity is not None:
        marks.append("identity")
    if column.nullable and not column.primary_key:
        marks.append("null")
    return " ".join(marks)


def _uniques(table: Table) -> list[tuple[list[str], object | None]]:
    """Every uniqueness rule of the table (constraints and unique indexes): its columns and
    the partial index's WHERE (None for a whole-table rule), by name."""
    found: list[tuple[list[str], object | None]] = []
    for item in sorted(table.constraints | table.indexes, key=lambda c: str(c.name)):
        if isinstance(item, UniqueConstraint):
            found.append(([c.name for c in item.columns], None))
        elif isinstance(item, Index) and item.unique:
            columns = [str(getattr(e, "name", e)) for e in item.expressions]
            found.append((columns, item.dialect_options["postgresql"]["where"]))
    return found


def _single_unique(table: Table) -> set[str]:
    """The columns unique on their own, over the whole table (marked UQ)."""
    return {cols[0] for cols, where in _uniques(table) if len(cols) == 1 and where is None}


def _unique_keys(table: Table) -> list[str]:
    """Each multi-column or partial uniqueness rule of the table, as one line."""
    return [
        f"UNIQUE ({', '.join(cols)})" + ("" if where is None else f" WHERE {where}")
        for cols, where in _uniques(table)
        if len(cols) > 1 or where is not None
    ]


def _node(table: Table) -> str:
    unique = _single_unique(table)
    rows = [
        f'<tr><td bgcolor="#dde6f3" colspan="3"><b>{escape(table.name)}</b></td></tr>',
    ]
    for column in table.columns:
        name = escape(column.name)
        if column.primary_key:
            name = f"<u>{name}</u>"
        rows.append(
            f'<tr><td align="left" port="{escape(column.name)}">{name}</td>'
            f'<td align="left">{escape(_type(column))}</td>'
            f'<td align="left" port="{escape(column.name)}.out">'
            f"{escape(_marks(column, unique))}</td></tr>"
        )
    for key in _unique_keys(table):
        rows.append(f'<tr><td align="left" colspan="3"><i>{escape(key)}</i></td></tr>')
    body = "\n    ".join(rows)
    return (
        f'  "{table.name}" [label=<\n'
        f'    <table border="0" cellborder="1" cellspacing="0" cellpadding="3">\n'
        f"    {body}\n"
        f"    </table>>];"
    )


def _edges(tables: list[Table]) -> list[str]:
    names = {t.name for t in tables}
    edges = []
    for table in tables:
        for fk in sorted(table.foreign_keys, key=lambda f: (f.parent.name, f.target_fullname)):
            target = fk.column.table.name
            if target not in names:
                continue
            label = f"on delete {fk.ondelete.lower()}" if fk.ondelete else ""
            edges.append(
                f'  "{table.name}":"{fk.parent.name}.out":e -> "{target}":"{fk.column.name}":w '
                f'[arrowtail=crow, arrowhead=tee, dir=both, label="{label}"];'
            )
    return edges


def _references(metadata: MetaData, tables: list[Table]) -> list[str]:
    names = {t.name for t in tables}
    edges = []
    for ref in REFERENCES_WITHOUT_FK:
        target_table, target_column = ref.target.split(".")
        for table, column in ((ref.table, ref.column), (target_table, target_column)):
            if table not in metadata.tables or column not in metadata.tables[table].columns:
                raise LookupError(f"the ERD names {table}.{column}, which the models lack")
        if ref.table in names and target_table in names:
            edges.append(
                f'  "{ref.table}":"{ref.column}.out":e -> "{target_table}":"{target_column}":w '
                f"[arrowtail=crow, arrowhead=tee, dir=both, style=dashed, "
                f'label="no FK: {escape(ref.why)}"];'
            )
    return edges


def dot_source(metadata: MetaData = Base.metadata, prefix: str = PREFIX) -> str:
    """The graphviz source of the tables whose names start with `prefix`, in model order."""
    tables = [t for name, t in metadata.tables.items() if name.startswith(prefix)]
    if not tables:
        raise LookupError(f"no table of the models starts with {prefix!r}")
    lines = [
        "// Generated by `python -m relaybox.common.db.erd` (make erd): do not edit by hand.",
        "digraph messenger {",
        "  graph [rankdir=LR, fontname=Helvetica, fontsize=12, labelloc=t, nodesep=0.4,",
        f'         ranksep=1.0, label="{TITLE}\\n{LEGEND}"];',
        "  node [shape=plain, fontname=Helvetica, fontsize=10];",
        '  edge [fontname=Helvetica, fontsize=9, color="#555555"];',
        *(_node(t) for t in tables),
        *_edges(tables),
        *_references(metadata, tables),
        "}",
    ]
    return "\n".join(lines) + "\n"


def render(dot_file: Path, png_file: Path) -> None:
    """`dot -Tpng`; a clear error when graphviz is not installed."""
    dot = shutil.which("dot")
    if dot is None:
        raise FileNotFoundError(
            "graphviz's `dot` is not installed (Debian: apt-get install -y graphviz)"
        )
    subprocess.run([dot, "-Tpng", "-o", str(png_file), str(dot_file)], check=True)  # noqa: S603 - our own paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relaybox.common.db.erd", description=__doc__)
    parser.add_argument("--dot", type=Path, default=DOT_PATH, help="the graphviz source to write")
    parser.add_argument("--png", type=Path, default=PNG_PATH, help="the image to render")
    parser.add_argument(
        "--check", action="store_true", help="only compare the source with the models"
    )
    args = parser.parse_args(argv)
    source = dot_source()
    if args.check:
        current = args.dot.read_text() if args.dot.exists() else ""
        if current != source:
            print(f"{args.dot} is out of date: run `make erd`", file=sys.stderr)
            return 1
        return 0
    args.dot.parent.mkdir(parents=True, exist_ok=True)
    args.dot.write_text(source)
    try:
        render(args.dot, args.png)
    except FileNotFoundError as exc:
        print(f"wrote {args.dot}; not rendered: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.dot} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
