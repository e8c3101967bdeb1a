"""The items of a chaos run and how they are submitted: single emails, one mailing, Meta sends
and inbound webhooks (with duplicates and out of order), posted to the API at a steady pace.

Every request is repeated until the API answers it, as a careful client would through a
database restart: the same Idempotency-Key, clientMessageId or webhook body each time, so a
repeat never makes a second item.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from relaybox.common.signing import SIGNATURE_HEADER, sign

HOOK = "/webhooks/mock-meta"
RETRYABLE = frozenset({409, 429})  # an Idempotency-Key still in flight; the per-client limit
# the mailing body carries its token as [[token]], so the harness reads it from the providers
MAILING_BODY = "Welcome aboard. Verify with [[{token}]] to finish signing up."
EVENTS_PER_CONVERSATION = 5
DUPLICATE_RATE = 0.2
OUT_OF_ORDER_RATE = 0.15
SECOND_DUPLICATE_CHANCE = 0.5


@dataclass(frozen=True)
class Counts:
    """How many items of each kind a run submits."""

    emails: int
    mailing_rows: int
    meta_sends: int
    inbound: int

    @property
    def total(self) -> int:
        return self.emails + self.mailing_rows + self.meta_sends + self.inbound


@dataclass(frozen=True)
class InboundEvent:
    """One customer message as the provider posts it."""

    event_id: str
    channel: str
    sender: str
    text: str
    timestamp: datetime

    def body(self) -> bytes:
        stamp = self.timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        event = {
            "eventId": self.event_id,
            "type": "message",
            "channel": self.channel,
            "from": self.sender,
            "text": self.text,
            "timestamp": stamp,
        }
        return json.dumps(event).encode()


@dataclass
class InboundPlan:
    """Distinct events, and the order they are posted in (duplicates and swaps included)."""

    events: list[InboundEvent]
    posts: list[InboundEvent]
    duplicates: int
    out_of_order: int


@dataclass
class Submitted:
    """What the API accepted: the ids it answered, and how the webhooks were answered."""

    emails: list[str] = field(default_factory=list)
    meta: list[str] = field(default_factory=list)
    mailing: str | None = None
    inbound: InboundPlan | None = None
    webhook_answers: dict[str, int] = field(default_factory=dict)
    repeats: int = 0  # requests sent again after a 5xx, 409, 429 or a lost connection
    errors: list[str] = field(default_factory=list)


def plan_inbound(count: int, rng: random.Random, now: datetime) -> InboundPlan:
    """`count` events in conversations of a few each; some posted twice, some swapped."""
    conversations: list[list[InboundEvent]] = []
    base = now.replace(microsecond=0) - timedelta(hours=1)
    for index in range(count):
        if index % EVENTS_PER_CONVERSATION == 0:
            conversations.append([])
        number = index // EVENTS_PER_CONVERSATION
        channel = "whatsapp" if number % 2 == 0 else "instagram"
        sender = f"+1666{number:07d}" if channel == "whatsapp" else f"ig_chaos_{number}"
        position = len(conversations[-1])
        conversations[-1].append(
            InboundEvent(
                event_id=f"evt_chaos_{index}",
                channel=channel,
                sender=sender,
                text=f"inbound {number}.{position}",
                timestamp=base + timedelta(seconds=index),
            )
        )
    streams, out_of_order = zip(*(_swap_some(c, rng) for c in conversations), strict=True)
    posts = _interleave([list(s) for s in streams], rng)
    posts, duplicates = _add_duplicates(posts, rng)
    events = [event for conversation in conversations for event in conversation]
    return InboundPlan(events, posts, duplicates, sum(out_of_order))


def _swap_some(events: list[InboundEvent], rng: random.Random) -> tuple[list[InboundEvent], int]:
    """Post a later message before the earlier one: each adjacent pair swaps at the rate."""
    posted, swaps, index = list(events), 0, 0
    while index < len(posted) - 1:
        if rng.random() < OUT_OF_ORDER_RATE:
            posted[index], posted[index + 1] = posted[index + 1], posted[index]
            swaps += 1
            index += 2
        else:
            index += 1
    return posted, swaps


def _interleave(streams: list[list[Any]], rng: random.Random) -> list[Any]:
    """Merge the streams at random, each one keeping its own order."""
    merged: list[Any] = []
    cursors = [0] * len(streams)
    remaining = sum(len(s) for s in streams)
    while remaining:
        pick = rng.randrange(remaining)
        for index, stream in enumerate(streams):
            left = len(stream) - cursors[index]
            if pick < left:
                merged.append(stream[cursors[index]])
                cursors[index] += 1
                break
            pick -= left
        remaining -= 1
    return merged


def _add_duplicates(
    posts: list[InboundEvent], rng: random.Random
) -> tuple[list[InboundEvent], int]:
    """Re-post a share of the events (once, sometimes twice) somewhere after the original."""
    result = list(posts)
    duplicates = 0
    for event in posts:
        if rng.random() >= DUPLICATE_RATE:
            continue
        copies = 2 if rng.random() < SECOND_DUPLICATE_CHANCE else 1
        for _ in range(copies):
            first = result.index(event)
            result.insert(rng.randint(first + 1, len(result)), event)
            duplicates += 1
    return result, duplicates


def mailing_csv(rows: int) -> bytes:
    return ("email\n" + "".join(f"mailing{i}@example.com\n" for i in range(rows))).encode()


class Submitter:
    """Posts the run's items to the API, each one until it is answered (or the deadline)."""

    def __init__(
        self, client: httpx.AsyncClient, webhook_secret: str, deadline_s: float = 300.0
    ) -> None:
        self._client = client
        self._secret = webhook_secret
        self._deadline_s = deadline_s
        self.result = Submitted()

    async def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST until a non-retryable answer; connection errors and 5xx are retried."""
        deadline = time.monotonic() + self._deadline_s
        delay = 0.2
        while True:
            try:
                response = await self._client.post(path, **kwargs)
                if response.status_code < 500 and response.status_code not in RETRYABLE:
                    return response
                problem = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                problem = type(exc).__name__
            if time.monotonic() > deadline:
                raise RuntimeError(f"POST {path} still failing ({problem}) after the deadline")
            self.result.repeats += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _check(self, response: httpx.Response, path: str) -> dict[str, Any] | None:
        if response.status_code in (200, 201, 202):
            body: dict[str, Any] = response.json()
            return body
        self.result.errors.append(f"POST {path}: {response.status_code} {response.text[:200]}")
        return None

    async def email(self, index: int) -> None:
        body = {"to": f"single{index}@example.com", "subject": f"chaos #{index}", "text": "hi"}
        headers = {"Idempotency-Key": f"chaos-email-{index}"}
        answer = self._check(await self._post("/send", json=body, headers=headers), "/send")
        if answer is not None:
            self.result.emails.append(answer["id"])

    async def meta(self, index: int) -> None:
        body = {
            "channel": "whatsapp" if index % 2 == 0 else "instagram",
            "to": f"+1555{index:07d}",
            "text": f"outbound #{index}",
            "clientMessageId": f"chaos-meta-{index}",
        }
        path = "/messages/send"
        answer = self._check(await self._post(path, json=body), path)
        if answer is not None:
            self.result.meta.append(answer["id"])

    async def mailing(self, rows: int) -> None:
        files = {"file": ("chaos.csv", mailing_csv(rows), "text/csv")}
        data = {"subject": "Complete your registration", "body": MAILING_BODY}
        headers = {"Idempotency-Key": "chaos-mailing"}
        response = await self._post("/mailings", files=files, data=data, headers=headers)
        answer = self._check(response, "/mailings")
        if answer is not None:
            self.result.mailing = answer["id"]

    async def inbound(self, event: InboundEvent) -> None:
        raw = event.body()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self._secret, raw)}
        answer = self._check(await self._post(HOOK, content=raw, headers=headers), HOOK)
        if answer is not None:
            status = str(answer.get("status"))
            self.result.webhook_answers[status] = self.result.webhook_answers.get(status, 0) + 1


Job = Callable[[], Awaitable[None]]


def jobs(submitter: Submitter, counts: Counts, plan: InboundPlan, rng: random.Random) -> list[Job]:
    """Every request of the run, in submission order: the mailing first, the rest mixed."""
    singles: list[Job] = [_bind(submitter.email, i) for i in range(counts.emails)]
    metas: list[Job] = [_bind(submitter.meta, i) for i in range(counts.meta_sends)]
    hooks: list[Job] = [_bind(submitter.inbound, event) for event in plan.posts]
    mixed = _interleave([singles, metas, hooks], rng)
    first: list[Job] = (
        [_bind(submitter.mailing, counts.mailing_rows)] if counts.mailing_rows else []
    )
    return first + mixed


def _bind(method: Callable[[Any], Awaitable[None]], argument: Any) -> Job:
    async def job() -> None:
        await method(argument)

    return job


class Pacer:
    """Starts jobs at most `rate` per second and `concurrency` at once, and only while the
    backlog (items relaybox accepted and has not finished) stays under `max_backlog`: the load
    follows what the machine sustains, so faults land on a bounded backlog on any machine."""

    def __init__(
        self,
        rate: float,
        max_backlog: int,
        backlog: Callable[[], int],
        concurrency: int = 16,
    ) -> None:
        self._interval = 1 / rate
        self._max_backlog = max_backlog
        self._backlog = backlog
        self._gate = asyncio.Semaphore(concurrency)
        self._total = 0
        self._started = 0
        self._moved = asyncio.Event()
        self.failures: list[str] = []

    @property
    def progress(self) -> float:
        """The share of the jobs started so far."""
        return self._started / self._total if self._total else 1.0

    async def reached(self, fraction: float) -> None:
        """Wait until `fraction` of the jobs have started."""
        while self.progress < fraction:
            self._moved.clear()
            await self._moved.wait()

    async def run(self, jobs_: list[Job]) -> None:
        """Start every job when its turn comes; return when all have finished."""
        self._total = len(jobs_)
        tasks: list[asyncio.Task[None]] = []
        next_at = time.monotonic()
        for job in jobs_:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await self._room()
            await self._gate.acquire()
            tasks.append(asyncio.create_task(self._run(job)))
            self._started += 1
            self._moved.set()
            next_at = max(next_at + self._interval, time.monotonic() - 1.0)
        await asyncio.gather(*tasks)

    async def _room(self) -> None:
        """Wait until the backlog (a polled figure) is under its cap."""
        while True:
            if self._backlog() < self._max_backlog:
                return
            await asyncio.sleep(0.1)

    async def _run(self, job: Job) -> None:
        try:
            await job()
        except (RuntimeError, httpx.HTTPError, ValueError, KeyError) as exc:
            self.failures.append(f"a request gave up: {exc!r}"[:300])
        finally:
            self._gate.release()


def now_utc() -> datetime:
    return datetime.now(UTC)
