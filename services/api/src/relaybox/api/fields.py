"""Text rules of request fields: each one regex that the OpenAPI document states (`pattern`) and
the validation applies, so the two cannot disagree.

The patterns are written in the subset that ECMA-262 (JSON Schema's dialect) and Python's `re`
read alike: character classes with `\\xNN`/`\\uNNNN` escapes, no `\\s` (whose members differ),
and they are applied with `fullmatch` (so `$` never accepts a trailing newline).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# What Python's str.isspace() calls whitespace (what `.strip()` removes), as a class body.
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_CONTROL = r"\x00-\x1f\x7f"


@dataclass(frozen=True)
class TextRule:
    """A pattern and what to say when a value does not match it."""

    pattern: str
    message: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def matches(self, value: str) -> bool:
        return self._regex.fullmatch(value) is not None

    def check(self, value: str) -> str:
        """`value`, or a ValueError with the rule's message (pydantic reports it per field)."""
        if not self.matches(value):
            raise ValueError(self.message)
        return value

    def schema(self) -> dict[str, Any]:
        """The rule as JSON Schema keywords (a pydantic `Field(json_schema_extra=...)`)."""
        return {"pattern": self.pattern}


# One line of text: no control characters, not blank (a subject, an identifier).
SINGLE_LINE = TextRule(
    pattern=rf"^[^{_CONTROL}]*[^{_CONTROL}{_SPACE}][^{_CONTROL}]*$",
    message="must be a single line of text, not blank, without control characters",
)
# A body of text: any characters but NUL (PostgreSQL text cannot hold one), not blank.
TEXT = TextRule(
    pattern=rf"^[^\x00]*[^\x00{_SPACE}][^\x00]*$",
    message="must not be blank or contain NUL characters",
)
# Any text without NUL (blank allowed).
NO_NUL = TextRule(pattern=r"^[^\x00]*$", message="must not contain NUL characters")
