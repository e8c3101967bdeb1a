"""bench.peers' ledger: copies counted at the sink by Message-ID against the accepted ids."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

from bench.peers.ledger import CountingSink, Tally, tally
from bench.peers.mail import message_id
from bench.peers.run import descendants, start_time

from relaybox.consumer.providers.base import OutgoingEmail
from relaybox.consumer.providers.smtp import build_message

REPO = Path(__file__).resolve().parents[2]


def test_tally_counts_lost_duplicates_and_unexpected() -> None:
    copies = Counter({"a": 1, "b": 3, "x": 2, "probe": 1})
    result = tally(["a", "b", "c", "b"], copies, others=["probe"])
    # c never arrived; b arrived three times (two extra copies); x was never accepted anywhere
    # (a request that committed without a 202); the probe belongs to another phase.
    assert result == Tally(accepted=3, delivered=2, lost=1, duplicates=2, unexpected=2)


def test_tally_of_nothing() -> None:
    assert tally([], {}) == Tally(0, 0, 0, 0, 0)


def test_an_id_accepted_but_absent_from_copies_is_lost_not_an_error() -> None:
    assert tally(["a"], {"a": 0}).lost == 1


def peer_message(email_id: str) -> bytes:
    message = EmailMessage()
    message["From"] = "peers@localhost"
    message["To"] = "user@example.com"
    message["Subject"] = "x"
    message["Message-ID"] = message_id(email_id)
    message.set_content("hello")
    return message.as_bytes()


def relaybox_message(email_id: str) -> bytes:
    email = OutgoingEmail(email_id, "a@example.com", "user@example.com", "x", text="hello")
    return build_message(email).as_bytes()


def test_the_sink_counts_every_copy_of_both_builds_message_ids() -> None:
    sink = CountingSink()
    for raw in (
        peer_message("11111111-aaaa"),
        peer_message("11111111-aaaa"),
        relaybox_message("22222222-bbbb"),
        b"Subject: no id\r\n\r\nbody",
    ):
        assert sink.receive("peers@localhost", ["user@example.com"], raw).startswith("250")
    assert sink.copies == Counter({"11111111-aaaa": 2, "22222222-bbbb": 1})
    assert sink.unreadable == 1
    assert set(sink.first) == {"11111111-aaaa", "22222222-bbbb"}
    first = sink.first["11111111-aaaa"]
    assert sink.arrived_between(first, first + 1e-9) == 1
    assert sink.arrived_between(0.0, time.monotonic() + 1) == 2
    assert tally(["11111111-aaaa", "33333333-cccc"], sink.copies, ["22222222-bbbb"]) == Tally(
        accepted=2, delivered=1, lost=1, duplicates=1, unexpected=0
    )


async def test_wait_for_returns_once_all_arrived_or_nothing_more_comes() -> None:
    sink = CountingSink()

    async def deliver_later() -> None:
        await asyncio.sleep(0.05)
        sink.receive("", [], peer_message("a"))
        await asyncio.sleep(0.05)
        sink.receive("", [], peer_message("b"))

    task = asyncio.create_task(deliver_later())
    assert await sink.wait_for({"a", "b"}, idle_s=5, limit_s=10)
    await task
    started = time.monotonic()
    assert not await sink.wait_for({"a", "never"}, idle_s=0.3, limit_s=10)
    assert 0.25 <= time.monotonic() - started < 5


def test_descendants_finds_grandchildren_and_start_time_identifies_them() -> None:
    # a shell that starts a sleeping child: the tree a worker command with its pool makes
    parent = subprocess.Popen(["sh", "-c", "sleep 30 & wait"], stdin=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.monotonic() + 10
        while not (found := descendants(parent.pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(found) == 1
        assert start_time(found[0]) is not None
        assert parent.pid not in found
        assert descendants(found[0]) == []
    finally:
        for pid in [*descendants(parent.pid), parent.pid]:
            subprocess.run(["kill", "-9", str(pid)], check=False)
        parent.wait(10)
    # (Whether the killed grandchild's pid is gone depends on who reaps orphans: a container's
    # PID 1 may leave it a zombie, which still has a start time. Not asserted.)
