"""A mailing's states and the conditions on them that the API and the consumer both test."""

from __future__ import annotations

from enum import StrEnum

TOKEN_PLACEHOLDER = "{token}"  # noqa: S105 - the template placeholder, not a secret
"""Where a mailing body gets each recipient's token."""


class MailingStatus(StrEnum):
    """`mailings.status` (its CHECK constraint holds the same list)."""

    PARSING = "PARSING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"


UNPARSED_SQL = "(status = 'PARSING' OR (status = 'PAUSED' AND rows_total = 0))"
"""The mailing's parse has not ended: PARSING, or PAUSED before its parse ended (a PARSING
mailing may be paused: the parse goes on and the mailing stays PAUSED with its counts). A
finished parse always has rows_total > 0 (a file without data rows is FAILED). For a query on
`mailings` (unqualified columns)."""


def unparsed(status: str, rows_total: int) -> bool:
    """`UNPARSED_SQL` for a mailing read into Python."""
    return status == MailingStatus.PARSING or (status == MailingStatus.PAUSED and rows_total == 0)
