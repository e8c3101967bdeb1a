"""Counting at the sink: every copy of every email by its Message-ID, against the ids the
HTTP endpoint accepted (202)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from relaybox.mock_meta.settings import SmtpSinkSettings
from relaybox.mock_meta.smtp.sink import SmtpSink

# relaybox writes `<email id@relaybox>`, the peers `<email id@peers>`.
MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^@>\s]+)@", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Tally:
    """One phase's emails as the sink saw them."""

    accepted: int  # distinct ids answered 202
    delivered: int  # accepted ids that arrived at least once
    lost: int  # accepted ids that never arrived
    duplicates: int  # copies of accepted ids beyond the first
    unexpected: int  # copies of ids that were never accepted (committed, then no 202 came)


def tally(accepted: Iterable[str], copies: Mapping[str, int], others: Iterable[str] = ()) -> Tally:
    """`copies`: how many times the sink received each id. `others`: ids accepted outside this
    phase (probes, earlier phases), which are neither counted nor unexpected here."""
    wanted = set(accepted)
    known = wanted | set(others)
    delivered = sum(1 for email_id in wanted if copies.get(email_id, 0) > 0)
    return Tally(
        accepted=len(wanted),
        delivered=delivered,
        lost=len(wanted) - delivered,
        duplicates=sum(max(copies.get(email_id, 0) - 1, 0) for email_id in wanted),
        unexpected=sum(n for email_id, n in copies.items() if email_id not in known),
    )


class CountingSink(SmtpSink):
    """The project's SMTP sink (aiosmtpd), counting each copy of each email by Message-ID and
    stamping the first with `time.monotonic()`. It accepts without parsing or storing: parsing
    costs about a millisecond of CPU per message on the cores the builds under test share."""

    def __init__(self, settings: SmtpSinkSettings | None = None) -> None:
        super().__init__(settings or SmtpSinkSettings(port=0, max_messages=10))
        self.first: dict[str, float] = {}
        self.copies: Counter[str] = Counter()
        self.unreadable = 0  # messages without a Message-ID of either form
        self.arrived = asyncio.Event()

    def receive(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> str:
        at = time.monotonic()
        found = MESSAGE_ID.search(raw)
        if found is None:
            self.unreadable += 1
        else:
            email_id = found.group(1).decode()
            self.copies[email_id] += 1
            self.first.setdefault(email_id, at)
            self.arrived.set()
        return "250 2.0.0 OK"

    def arrived_between(self, start: float, end: float) -> int:
        """First copies received in [start, end)."""
        return sum(1 for at in self.first.values() if start <= at < end)

    async def wait_for(self, ids: set[str], *, idle_s: float, limit_s: float) -> bool:
        """Until every id arrived (True), or nothing new arrived for `idle_s`, or `limit_s`."""
        deadline = time.monotonic() + limit_s
        last_count, last_change = len(self.first), time.monotonic()
        missing = ids - self.first.keys()
        while missing:
            now = time.monotonic()
            if len(self.first) != last_count:
                last_count, last_change = len(self.first), now
            if now - last_change >= idle_s or now >= deadline:
                return False
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout=0.25)
            missing = {email_id for email_id in missing if email_id not in self.first}
        return True
