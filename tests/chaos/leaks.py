"""Grep a run's captured logs for every secret it used: tokens, passwords, signing keys, the
per-recipient tokens, and anything shaped like a JWT (the email API's bearer tokens)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from tests.chaos.ledger import LeakTally

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
WORD = re.compile(r"[A-Za-z0-9_-]{16,}")
EXAMPLES = 10


def find_leaks(files: Iterable[Path], named: dict[str, str], tokens: Iterable[str]) -> LeakTally:
    """Lines holding a named secret (substring), a token (a whole word) or a JWT.

    `named` maps a kind ("JWT secret", "email API password", ...) to its value; `tokens` are
    many word-shaped secrets (per-recipient tokens), looked up by word so the grep stays linear.
    """
    token_set = set(tokens)
    tally = LeakTally(secrets=len(named) + len(token_set))
    for path in files:
        tally.files += 1
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                tally.lines += 1
                kind = _leak(line, named, token_set)
                if kind is not None:
                    tally.leaking_lines += 1
                    if len(tally.examples) < EXAMPLES:
                        tally.examples.append(f"{path.name}:{number}: {kind}")
    return tally


def _leak(line: str, named: dict[str, str], tokens: set[str]) -> str | None:
    for kind, value in named.items():
        if value and value in line:
            return kind
    if tokens and any(word in tokens for word in WORD.findall(line)):
        return "per-recipient token"
    if JWT.search(line):
        return "a JWT (bearer token)"
    return None
