"""The call ledger of a mock provider: every call per item key, and when each was accepted.

Each mock keys its calls by the idempotency key the caller sends with an item (the SMTP
Message-ID, the email API's `Idempotency-Key`, Meta's `clientMessageId`), de-duplication or not,
so a chaos run can count from the provider's side how many times each item got through.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec


class LedgerEntry(msgspec.Struct, kw_only=True, rename="camel"):
    """One item's calls, and the moments (epoch seconds) the provider accepted it."""

    calls: int = 0
    accepted_at: list[float] = msgspec.field(default_factory=list)


class LedgerView(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A copy of one ledger: entries by key, and the calls that carried no key."""

    entries: dict[str, LedgerEntry]
    unkeyed_calls: int


class CallLedger:
    """Calls per item key since start or the last `clear()`; never capped, never de-duplicated."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._entries: dict[str, LedgerEntry] = {}
        self._unkeyed = 0

    def record(self, key: str | None, *, accepted: bool) -> None:
        """Count one call of `key` (None: the call carried no key); `accepted` stamps it."""
        if not key:
            self._unkeyed += 1
            return
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = LedgerEntry()
        entry.calls += 1
        if accepted:
            entry.accepted_at.append(self._clock())

    def view(self) -> LedgerView:
        """A snapshot that later calls do not change."""
        entries = {
            key: LedgerEntry(calls=entry.calls, accepted_at=list(entry.accepted_at))
            for key, entry in self._entries.items()
        }
        return LedgerView(entries=entries, unkeyed_calls=self._unkeyed)

    def clear(self) -> None:
        """Forget every call."""
        self._entries.clear()
        self._unkeyed = 0
