"""`chat.deliver`: push a batch of one chat message's recipient copies to their devices.

A round: load the batch's copies still PENDING or SENT with their devices, this message's pushes
and the devices' presence (one query); push every device not pushed yet and without a live
realtime socket (`relaybox.consumer.chat.pushing`: at most `max_in_flight` at once, on slots of
the global rate limit); then record the round in one transaction — the final pushes (ACCEPTED,
or FAILED for good), the dead devices removed, the copies moved forward (SENT: a push accepted,
a live socket, or no device; FAILED: every device failed for good) with their senders'
`message.status` events and, when some device still has a push to make, the retry message (only
those copies) or, once the attempts ran out, those copies FAILED and the message dead-lettered.

A device with a live socket is not pushed (the socket delivers the message and its ack records
DELIVERED); a recipient all of whose devices are live is SENT with no receipt deadline. Such a
round also writes the socket check: a `chat.deliver` with `devices` (the live ones), due
`RELAYBOX_CHAT__SOCKET_ACK_TIMEOUT_S` later. When it comes due, the copies still PENDING or SENT —
no ack, fetch or read came: the socket dropped before the frame reached it, or before its ack,
or its replica died — are pushed to those devices, live or not
(`relaybox.consumer.chat.verdict`); acked copies are final by then and nothing is pushed.

A device is pushed a message once: a round skips every device with a `chat_pushes` row. The one
repeat left is the crash window: a process that dies between the gateway's answer and the
recording (a kill, a power cut) leaves no row, so the redelivery pushes that device again, with
the same `Idempotency-Key` (`<message id>:<device id>`) for a gateway that de-duplicates. An
error there short of a crash never gives a push back: the accepted pushes are recorded alone,
through any database outage.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from relaybox.common.chat.delivery import RecipientStatus, deliver_payload
from relaybox.common.chat.events import Move, record_statuses
from relaybox.common.faults import failpoint
from relaybox.common.messaging.topology import CHAT_DELIVER, Topology
from relaybox.common.outbox import DEAD, enqueue, retry_destination
from relaybox.consumer import metrics
from relaybox.consumer.chat import store
from relaybox.consumer.chat.pushing import Pusher
from relaybox.consumer.chat.verdict import Copy, Outcome, Result, Verdict, judge, ran_out
from relaybox.consumer.errors import GiveBackError, PoisonMessageError, SendNotRecordedError
from relaybox.consumer.providers.push import PushProvider
from relaybox.consumer.ratelimit import RateLimiter
from relaybox.consumer.sending import DatabaseWork, carried_headers, dead_headers
from relaybox.consumer.settings import ConsumerSettings

log = logging.getLogger(__name__)

PUSH_LIMIT_KEY = CHAT_DELIVER  # the push gateway's global limit, named after its route
ATTEMPT_KEY = "attempt"  # payload key of a retry: the attempt it is (1 when absent)
DEVICES_REMOVED = Counter(
    "relaybox_consumer_chat_devices_removed_total",
    "Chat devices removed because the push gateway declared their token dead",
)


def _parse(payload: dict[str, Any]) -> tuple[uuid.UUID, list[str], int]:
    """The message id, the recipients and the attempt number of a `chat.deliver` payload."""
    try:
        message_id = uuid.UUID(str(payload["messageId"]))
    except (KeyError, ValueError):
        raise PoisonMessageError("message has no valid 'messageId'") from None
    users = payload.get("recipients")
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise PoisonMessageError("'recipients' must be a list of user ids")
    attempt = payload.get(ATTEMPT_KEY, 1)
    return message_id, users, attempt if isinstance(attempt, int) and attempt >= 1 else 1


def _live_devices(copies: list[Copy]) -> dict[str, list[str]]:
    """The devices this round left to their live sockets, by recipient."""
    live: dict[str, list[str]] = {}
    for copy in copies:
        devices = [
            d.id for d in copy.devices if d.live and d.token is not None and d.pushed is None
        ]
        if devices:
            live[copy.user_id] = devices
    return live


def _forced(payload: dict[str, Any]) -> frozenset[str] | None:
    """The device ids a forced round pushes (`devices`), None for a round of every device."""
    devices = payload.get("devices")
    if devices is None:
        return None
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise PoisonMessageError("'devices' must be a list of device ids")
    try:
        return frozenset(str(uuid.UUID(d)) for d in devices)
    except ValueError:
        raise PoisonMessageError("'devices' must be a list of device ids") from None


@dataclass(frozen=True)
class Plan:
    """The round's next step: `sent` (nothing left to push), `retried` (a retry message for the
    unfinished copies, `next_attempt` after `delay_ms`) or `dead_lettered` (the attempts ran
    out: `failed` holds the FAILED reason of each unfinished copy, `error` the last error)."""

    outcome: str
    failed: dict[str, str] = field(default_factory=dict)
    error: str = ""
    delay_ms: int = 0
    next_attempt: int = 1
    attempts: int = 0  # the attempts made, when dead-lettered


class ChatDeliverHandler(DatabaseWork):
    """Pushes chat message copies to devices; see the module doc for a round."""

    route = CHAT_DELIVER

    def __init__(
        self,
        engine: AsyncEngine,
        topology: Topology,
        settings: ConsumerSettings,
        provider: PushProvider,
        limiter: RateLimiter | None = None,
    ) -> None:
        super().__init__(engine, settings)
        self.topology = topology
        self.limiter = limiter
        self.pusher = Pusher(provider, limiter, settings.push)

    async def stop(self) -> None:
        """Book no more rate-limit slots (a round under way records what it pushed)."""
        if self.limiter is not None:
            await self.limiter.close()

    async def handle(self, payload: dict[str, Any], headers: dict[str, Any]) -> str:
        """One round for the batch; safe to repeat (see the module doc)."""
        message_id, users, attempt = _parse(payload)
        if payload.get("confirm") is True:
            return await self._confirm(message_id, users)
        forced = _forced(payload)
        ttl_s = self.settings.chat.presence_ttl_s
        message, copies = await self.in_statement(lambda c: store.load(c, message_id, users, ttl_s))
        if message is None:
            return "duplicate"  # every copy is final (or the message is gone)
        stopping = asyncio.Event()
        round_ = asyncio.ensure_future(
            self._round(message, copies, attempt, headers, stopping, forced)
        )
        try:
            return await asyncio.shield(round_)
        except asyncio.CancelledError:
            # The drain's grace ran out: pushes under way finish and are recorded, no new one
            # starts, and the message goes back (the worker requeues it).
            stopping.set()
            await round_
            raise

    async def _round(
        self,
        message: store.Message,
        copies: list[Copy],
        attempt: int,
        headers: dict[str, Any],
        stopping: asyncio.Event,
        forced: frozenset[str] | None = None,
    ) -> str:
        targets = [(copy.user_id, device) for copy in copies for device in copy.to_push(forced)]
        outcomes = await self.pusher.push_all(message, targets, stopping)
        verdict = judge(copies, outcomes, forced)
        interrupted = len(outcomes) < len(targets)
        if not verdict.moves:
            if interrupted:
                raise GiveBackError("the consumer is stopping")
            return "duplicate"
        plan = self._plan(verdict, outcomes, attempt, interrupted)
        live = _live_devices(copies) if forced is None else {}
        try:
            if verdict.accepted:
                failpoint(f"{self.route}.after_send", self.settings.faults)
            await self.in_tx(
                lambda c: self._record(c, message, verdict, plan, headers, forced, live)
            )
        except Exception:
            if not verdict.accepted:
                raise
            log.exception(
                "recording a round failed; recording its accepted pushes alone",
                extra={"route": self.route, "id": str(message.id)},
            )
            await self._record_accepted_alone(message, verdict)
            if len(verdict.accepted) < len(verdict.finals) or verdict.failed or verdict.unfinished:
                raise  # the rest is done again by the redelivery
        self._observe_moves(verdict, plan, attempt)
        if interrupted:
            raise GiveBackError("the consumer is stopping")
        return plan.outcome

    # --- recording ---------------------------------------------------------------------------

    def _plan(
        self, verdict: Verdict, outcomes: list[Outcome], attempt: int, interrupted: bool
    ) -> Plan:
        """What follows the round for its unfinished copies: nothing, a retry, or FAILED."""
        if not verdict.unfinished or interrupted:
            return Plan("sent")
        retries = [o for o in outcomes if o.result is Result.RETRY]
        throttled = bool(retries) and all(o.rate_limited for o in retries)
        last_error = verdict.retry_errors[-1] if verdict.retry_errors else "not pushed"
        if attempt >= self.settings.max_attempts and not throttled:
            failed = ran_out(verdict, last_error)
            return Plan("dead_lettered", failed=failed, error=last_error, attempts=attempt)
        retry_after = max((o.retry_after or 0.0 for o in retries), default=0.0)
        delay = self.topology.retry_delay_for(attempt, retry_after_s=retry_after or None)
        # 429s are flow control, not failed attempts: they do not use up the budget.
        return Plan("retried", delay_ms=delay, next_attempt=attempt if throttled else attempt + 1)

    async def _record(
        self,
        conn: AsyncConnection,
        message: store.Message,
        verdict: Verdict,
        plan: Plan,
        headers: dict[str, Any],
        forced: frozenset[str] | None = None,
        live: dict[str, list[str]] | None = None,
    ) -> None:
        await store.insert_pushes(conn, message.id, verdict.finals)
        await store.delete_devices(conn, verdict.unregistered)
        await store.count_tries(conn, message.id, verdict.tried)
        sent = await store.mark_sent(conn, message.id, verdict.sent)  # before FAILED: SENT wins
        await self._announce(conn, message, RecipientStatus.SENT, sent)
        failed = await store.mark_failed(conn, message.id, {**verdict.failed, **plan.failed})
        await self._announce(conn, message, RecipientStatus.FAILED, failed)
        if verdict.accepted:  # the receipt deadline of what the gateway accepted this round
            await enqueue(
                conn,
                routing_key=self.route,
                payload=deliver_payload(
                    str(message.id),
                    sorted({o.user_id for o in verdict.accepted}),
                    confirm=True,
                ),
                headers=carried_headers(headers),
                delay=timedelta(seconds=self.settings.push.receipt_timeout_s),
            )
        if live:  # the socket check: what the live sockets have not acked by then is pushed
            await enqueue(
                conn,
                routing_key=self.route,
                payload=deliver_payload(
                    str(message.id),
                    sorted(live),
                    devices=sorted(d for devices in live.values() for d in devices),
                ),
                headers=carried_headers(headers),
                delay=timedelta(seconds=self.settings.chat.socket_ack_timeout_s),
            )
        if plan.outcome == "sent":
            return
        devices = None if forced is None else sorted(forced)  # a retry is forced alike
        payload = deliver_payload(str(message.id), verdict.unfinished, devices=devices)
        if plan.outcome == "retried":
            payload[ATTEMPT_KEY] = plan.next_attempt
            destination = retry_destination(plan.delay_ms)
            kept = carried_headers(headers)
        else:
            destination = DEAD
            kept = dead_headers(headers, plan.error, plan.attempts)
        await enqueue(
            conn, routing_key=self.route, payload=payload, destination=destination, headers=kept
        )

    async def _announce(
        self,
        conn: AsyncConnection,
        message: store.Message,
        status: RecipientStatus,
        users: list[str],
    ) -> None:
        """The sender's `message.status` event for the copies of `users` that moved."""
        conversation_id = uuid.UUID(message.conversation_id)
        await record_statuses(
            conn,
            tenant=message.tenant_id,
            status=status.value,
            moves=[Move(message.id, conversation_id, message.sender_id, u) for u in users],
            fanout_batch=self.settings.chat.fanout_batch,
        )

    async def _confirm(self, message_id: uuid.UUID, users: list[str]) -> str:
        """The receipt deadline passed: the copies still SENT (accepted, yet no device
        confirmed, and no fetch) become FAILED with the reason, and their sender is told."""
        timeout_s = self.settings.push.receipt_timeout_s
        reason = f"no device confirmed delivery within {timeout_s:g} s of the push"

        async def fail(conn: AsyncConnection) -> int:
            failed = await store.fail_unconfirmed(conn, message_id, users, reason)
            if failed:
                await record_statuses(
                    conn,
                    tenant=failed[0].tenant_id,
                    status=RecipientStatus.FAILED.value,
                    moves=[
                        Move(message_id, c.conversation_id, c.sender_id, c.user_id) for c in failed
                    ],
                    fanout_batch=self.settings.chat.fanout_batch,
                )
            return len(failed)

        failed = await self.in_tx(fail)
        if not failed:
            return "duplicate"
        metrics.ATTEMPTS.labels(self.route, "FAILED").observe(1)
        log.warning(
            "chat copies unconfirmed past the receipt deadline",
            extra={"route": self.route, "id": str(message_id), "count": failed},
        )
        return "unconfirmed"

    async def _record_accepted_alone(self, message: store.Message, verdict: Verdict) -> None:
        """The accepted pushes and the copies' SENT (with the sender's event), by themselves,
        through any database outage: once the gateway accepted a push nothing gives it back."""

        async def record(conn: AsyncConnection) -> None:
            await store.insert_pushes(conn, message.id, verdict.accepted)
            sent = await store.mark_sent(conn, message.id, verdict.sent)
            await self._announce(conn, message, RecipientStatus.SENT, sent)

        if not await self.through_outages(lambda: self.in_tx(record), f"pushes of {message.id}"):
            raise SendNotRecordedError(f"accepted pushes of chat message {message.id} unrecorded")

    # --- metrics -----------------------------------------------------------------------------

    def _observe_moves(self, verdict: Verdict, plan: Plan, attempt: int) -> None:
        DEVICES_REMOVED.inc(len(verdict.unregistered))
        sent = metrics.ATTEMPTS.labels(self.route, "SENT")
        failed = metrics.ATTEMPTS.labels(self.route, "FAILED")
        for _ in verdict.sent:
            sent.observe(attempt)
        for _ in range(len(verdict.failed) + len(plan.failed)):
            failed.observe(attempt)
        if plan.outcome == "retried":
            metrics.RETRIES.labels(self.route, str(plan.delay_ms)).inc()
        elif plan.outcome == "dead_lettered":
            metrics.DEAD_LETTERED.labels(self.route).inc()
