"""What one round of pushes means for each recipient copy (no I/O: the rules alone).

A copy is SENT once a push to one of its devices was accepted, one of its devices has a live
realtime socket (the socket delivers it: that device is not pushed), or when it has no device at
all (it waits for a client to fetch it); FAILED when every device failed for good; unfinished
while a device still has a push to make (a retryable failure, or not tried yet). A copy can be
SENT and unfinished at once: another of its devices is still to be pushed.

A round forced to some devices (`deliver_payload(devices=…)`: the socket check, for live sockets
whose copy was not acked in time) pushes those alone, live or not; another device not pushed yet
is left to the message's own rounds (neither handed on nor failed by this one), unless it is live.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from relaybox.common.chat.delivery import RecipientStatus

MAX_REASON = 1000


class Result(StrEnum):
    """What became of one push (the first two are `chat_pushes` statuses)."""

    ACCEPTED = "ACCEPTED"
    FAILED = "FAILED"
    UNREGISTERED = "UNREGISTERED"  # FAILED, and the device is removed
    RETRY = "RETRY"  # not recorded: pushed again by the retry
    LIVE = "LIVE"  # not pushed: a live socket has it (a device's state, never an outcome)
    LEFT = "LEFT"  # not pushed by a round forced to other devices (a state, never an outcome)


FINAL = frozenset({Result.ACCEPTED, Result.FAILED, Result.UNREGISTERED})


@dataclass(frozen=True)
class Device:
    """A device of a recipient as loaded: `token` None when the device is gone (only its push
    row is left); `pushed` the push row's status if this message was pushed to it already;
    `live` when it has a live realtime socket."""

    id: str
    token: str | None
    pushed: str | None = None
    error: str | None = None
    live: bool = False


@dataclass
class Copy:
    """A recipient's copy still PENDING or SENT, with its devices."""

    user_id: str
    status: str
    devices: list[Device] = field(default_factory=list)

    def to_push(self, forced: frozenset[str] | None = None) -> list[Device]:
        """The devices with a token that this message was not pushed to yet: those without a
        live socket, or (`forced`) those of the forced ids, live or not."""
        return [
            d
            for d in self.devices
            if d.token is not None
            and d.pushed is None
            and (not d.live if forced is None else d.id in forced)
        ]


@dataclass(frozen=True)
class Outcome:
    """One push of this round."""

    device_id: str
    user_id: str
    token: str
    result: Result
    provider_id: str | None = None
    error: str | None = None
    retry_after: float | None = None
    rate_limited: bool = False

    @property
    def status(self) -> str:
        """The `chat_pushes` status it is recorded with."""
        return Result.ACCEPTED if self.result is Result.ACCEPTED else Result.FAILED


@dataclass
class Verdict:
    """The round's effect: the pushes to record, the copies to move, the ones to push again."""

    finals: list[Outcome] = field(default_factory=list)  # recorded in chat_pushes
    sent: list[str] = field(default_factory=list)  # PENDING copies → SENT
    failed: dict[str, str] = field(default_factory=dict)  # PENDING copies → FAILED (reason)
    unfinished: list[str] = field(default_factory=list)  # a device still to push
    tried: dict[str, str | None] = field(default_factory=dict)  # pushed now: last retry error
    retry_errors: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> list[Outcome]:
        return [o for o in self.finals if o.result is Result.ACCEPTED]

    @property
    def unregistered(self) -> list[Outcome]:
        return [o for o in self.finals if o.result is Result.UNREGISTERED]

    @property
    def moves(self) -> bool:
        """Whether anything is to be written."""
        return bool(self.finals or self.sent or self.failed or self.tried)


def _state(
    device: Device, now: dict[str, Outcome], forced: frozenset[str] | None
) -> tuple[str, str | None]:
    """A device's push state after this round: ACCEPTED, FAILED, RETRY (to push), LIVE (a
    socket has it) or LEFT (outside a forced round)."""
    outcome = now.get(device.id)
    if outcome is not None:
        state = Result.RETRY if outcome.result is Result.RETRY else outcome.status
        return state, outcome.error
    if device.pushed is not None:
        return device.pushed, device.error
    if forced is None or device.id not in forced:
        if device.live:
            return Result.LIVE, None
        if forced is not None:
            return Result.LEFT, None
    return Result.RETRY, None


HANDED_ON = frozenset({Result.ACCEPTED, Result.LIVE})


def judge(
    copies: list[Copy], outcomes: list[Outcome], forced: frozenset[str] | None = None
) -> Verdict:
    """The verdict of a round of `outcomes` over `copies` (pushes recorded before included);
    `forced`: the device ids a forced round pushes."""
    now = {o.device_id: o for o in outcomes}
    verdict = Verdict(finals=[o for o in outcomes if o.result in FINAL])
    for outcome in outcomes:
        error = outcome.error if outcome.result is Result.RETRY else None
        if error is not None:
            verdict.retry_errors.append(error)
        if verdict.tried.get(outcome.user_id) is None:
            verdict.tried[outcome.user_id] = error
    for copy in copies:
        states = [_state(d, now, forced) for d in copy.devices]
        pending = copy.status == RecipientStatus.PENDING
        if any(s == Result.RETRY for s, _ in states):
            verdict.unfinished.append(copy.user_id)
        if not states or any(s in HANDED_ON for s, _ in states):
            if pending:
                verdict.sent.append(copy.user_id)
        elif pending and all(s == Result.FAILED for s, _ in states):
            errors = "; ".join(sorted({e or "refused" for _, e in states}))
            verdict.failed[copy.user_id] = f"every device failed: {errors}"[:MAX_REASON]
    return verdict


def ran_out(verdict: Verdict, last_error: str) -> dict[str, str]:
    """The FAILED reasons of the unfinished copies not SENT when the attempts have run out
    (a copy already SENT stays so: the status machine refuses the move anyway)."""
    reason = f"attempts ran out: {last_error}"[:MAX_REASON]
    sent = set(verdict.sent)
    return {user: reason for user in verdict.unfinished if user not in sent}
