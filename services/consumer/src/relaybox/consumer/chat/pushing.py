"""One round's pushes: every target device pushed once, `max_in_flight` at a time, on slots of
the push gateway's global rate limit.

Slots are booked in blocks (one statement for up to `max_in_flight` slots spanning at most
`BLOCK_SPAN_S`), not one statement per push: a 1,000-device fan-out books about 30 blocks. The
block's first slot is taken with `RateLimiter.wait`, which waits out a pause another replica set
(a 429 anywhere pauses every replica); the others follow it at the limit's pace. A 429 or 503
with Retry-After pauses the gateway for every replica at once, and this replica's pushes not
yet sent take fresh slots after the pause instead of the ones booked before it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from relaybox.consumer import metrics
from relaybox.consumer.chat.store import Message
from relaybox.consumer.chat.verdict import Device, Outcome, Result
from relaybox.consumer.providers.base import PermanentError, RateLimitedError, RetryableError
from relaybox.consumer.providers.push import (
    OutgoingPush,
    PushProvider,
    PushSettings,
    UnregisteredDeviceError,
    preview,
)
from relaybox.consumer.ratelimit import LimiterClosedError, RateLimiter, Slot

log = logging.getLogger(__name__)

BLOCK_SPAN_S = 0.25
"""A block of slots lasts at most this long (how stale its view of a pause can get)."""
STALE_BLOCK_S = 0.1
"""The first slot of a block taken this much later than planned (a pause, a busy process):
the block's other slots are given up and booked again."""
NO_TEXT = "New message"
MAX_TITLE_BYTES = 200

Target = tuple[str, Device]
"""A recipient and one of their devices to push."""


def push_of(message: Message, user_id: str, device: Device) -> OutgoingPush:
    """The push of `message` to `user_id`'s `device` (the contract's data, all strings)."""
    assert device.token is not None
    return OutgoingPush(
        message_id=str(message.id),
        device_id=device.id,
        token=device.token,
        data={
            "messageId": str(message.id),
            "conversationId": message.conversation_id,
            "recipient": user_id,
            "sender": message.sender_id,
            "seq": str(message.seq),
        },
        title=preview(message.title or message.sender_id, MAX_TITLE_BYTES),
        body=preview(message.text) or NO_TEXT,
    )


class Pusher:
    """Pushes rounds through one provider and the global limiter (None: no limit)."""

    def __init__(
        self, provider: PushProvider, limiter: RateLimiter | None, settings: PushSettings
    ) -> None:
        self.provider = provider
        self.limiter = limiter
        self.settings = settings
        self._paused_until = 0.0  # monotonic: a pause this replica set (its own 429)

    def block_size(self) -> int:
        """Slots booked with one statement."""
        span = int(self.settings.rate_per_second * BLOCK_SPAN_S)
        return max(1, min(self.settings.max_in_flight, span))

    async def push_all(
        self, message: Message, targets: list[Target], stopping: asyncio.Event
    ) -> list[Outcome]:
        """Push every target once; stops taking targets when `stopping` is set or the limiter
        closes (those left have no outcome). Pushes under way always finish."""
        outcomes: list[Outcome] = []
        left = deque(targets)
        in_flight = asyncio.Semaphore(self.settings.max_in_flight)
        tasks: set[asyncio.Task[None]] = set()

        async def push(slot: Slot | None, target: Target) -> None:
            try:
                if await self._take(slot):
                    outcomes.append(await self._push(message, *target))
                else:
                    stopping.set()
            finally:
                in_flight.release()

        try:
            while left and not stopping.is_set():
                slots = await self._slots(min(self.block_size(), len(left)))
                if slots is None:
                    stopping.set()
                    break
                for i, slot in enumerate(slots):
                    await in_flight.acquire()
                    if stopping.is_set():
                        in_flight.release()
                        self._release(slots[i:])
                        break
                    task = asyncio.create_task(push(slot, left.popleft()))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            await asyncio.gather(*tasks)
        return outcomes

    async def _slots(self, count: int) -> list[Slot | None] | None:
        """A block of `count` slots, its first one taken (None in the list: nothing left to
        wait for); None when the limiter closed or is out of reach."""
        if self.limiter is None:
            return [None] * count
        try:
            block = await self.limiter.reserve_many(count)
            planned = block[0].wait_s
            waited = await self.limiter.wait(block[0])
        except LimiterClosedError:
            return None
        except Exception:  # the database out of reach: the round records what it has
            log.exception("rate limiter unavailable", extra={"provider": self.provider.name})
            return None
        if waited > planned + STALE_BLOCK_S:  # booked before a pause: book the rest again
            self._release(block[1:])
            return [None]
        return [None, *block[1:]]

    async def _take(self, slot: Slot | None) -> bool:
        """Wait for the push's slot; False when the limiter closed or is out of reach. A slot
        booked before this replica's own pause is not used: a fresh one is taken after it."""
        if self.limiter is None:
            return True
        try:
            if slot is not None:
                await self.limiter.take(slot)
            if time.monotonic() < self._paused_until:
                await self.limiter.acquire()
        except LimiterClosedError:
            return False
        except Exception:
            log.exception("rate limiter unavailable", extra={"provider": self.provider.name})
            return False
        return True

    def _release(self, slots: Sequence[Slot | None]) -> None:
        if self.limiter is not None:
            for slot in slots:
                if slot is not None:
                    self.limiter.release(slot)

    async def _push(self, message: Message, user_id: str, device: Device) -> Outcome:
        """One push; its outcome, whatever happens (an unexpected error is a retryable one)."""
        push = push_of(message, user_id, device)
        started = time.perf_counter()

        def outcome(result: Result, **details: Any) -> Outcome:
            return Outcome(device.id, user_id, push.token, result, **details)

        try:
            name = await self.provider.send(push)
        except UnregisteredDeviceError as exc:
            self._observe(started, "permanent")
            return outcome(Result.UNREGISTERED, error=f"unregistered: {exc}")
        except PermanentError as exc:
            self._observe(started, "permanent")
            return outcome(Result.FAILED, error=str(exc))
        except RetryableError as exc:
            self._observe(started, "retryable")
            await self._pause(exc.retry_after)
            return outcome(
                Result.RETRY,
                error=str(exc),
                retry_after=exc.retry_after,
                rate_limited=isinstance(exc, RateLimitedError),
            )
        except Exception as exc:  # a bug: never lose the other pushes' outcomes to it
            log.exception("push failed unexpectedly", extra={"provider": self.provider.name})
            return outcome(Result.RETRY, error=f"unexpected {type(exc).__name__}")
        self._observe(started, "accepted")
        return outcome(Result.ACCEPTED, provider_id=name)

    async def _pause(self, retry_after: float | None) -> None:
        """A 429 (or 503) with Retry-After pauses the gateway for every replica at once."""
        if self.limiter is None or not retry_after:
            return
        self._paused_until = max(self._paused_until, time.monotonic() + retry_after)
        try:
            await self.limiter.pause(retry_after)
        except Exception:  # best effort: the retry tier's delay still honours it
            log.exception(
                "could not pause the push limiter", extra={"provider": self.provider.name}
            )

    def _observe(self, started: float, result: str) -> None:
        name = self.provider.name
        metrics.SEND_LATENCY.labels(name).observe(time.perf_counter() - started)
        metrics.PROVIDER_RESULTS.labels(name, result).inc()
