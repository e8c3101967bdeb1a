"""Reading, replaying and discarding dead letters.

A replay puts the dead message's domain row back where a retry starts and writes a new outbox
row for it, in one transaction with the dead letter's own move to `replayed`:
- `email.send` / `meta.send`: the email or outbound Meta message, FAILED (or PENDING, or SENDING
  with a lapsed lease: it died before it was recorded) → PENDING with its attempts reset;
- `chat.deliver`: the copies of the payload's recipients that are FAILED or PENDING → PENDING;
- `mailing.parse`: a mailing still PARSING gets its parse job again.
A row already final (SENT, DELIVERED, READ), one being sent right now, or one gone is refused
with the reason; a dead letter already replayed or discarded is refused too. The dead letters
are locked (`FOR UPDATE`) first, so two concurrent replays of one letter send once.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.deadletters.schemas import (
    DeadLetterItem,
    DeadLetterPage,
    DeadLetterStatus,
    DiscardReport,
    PageMeta,
    ReplayReport,
    Result,
    Selection,
    item_of,
)
from relaybox.api.emails.query import parse_bound
from relaybox.api.errors import ConflictError, NotFoundError
from relaybox.api.pagination import newest_first
from relaybox.common.chat.delivery import deliver_payload
from relaybox.common.db.models import DeadLetter
from relaybox.common.messaging.topology import CHAT_DELIVER, EMAIL_SEND, MAILING_PARSE, META_SEND
from relaybox.common.outbox import enqueue, trace_headers

UTC = ZoneInfo("UTC")
REPLAY_HEADER = "x-replay-of"  # the outbox row of a replay names its dead letter


def since_of(value: str | None, field: str = "since") -> datetime | None:
    """A `since` bound: a date (midnight UTC) or a date-time (UTC when it has no offset)."""
    return parse_bound(value, field, UTC, end=False)


def _filtered(route: str | None, status: str | None, since: datetime | None) -> Select[Any]:
    stmt = select(DeadLetter)
    if route is not None:
        stmt = stmt.where(DeadLetter.route == route)
    if status is not None:
        stmt = stmt.where(DeadLetter.status == status)
    if since is not None:
        stmt = stmt.where(DeadLetter.last_seen_at >= since)
    return stmt


async def list_dead_letters(
    session: AsyncSession,
    *,
    route: str | None,
    status: DeadLetterStatus | None,
    since: str | None,
    page: int,
    limit: int,
    cursor: str | None,
) -> DeadLetterPage:
    """Dead letters, the most recent death first (keyset paging with `cursor`)."""
    stmt = _filtered(route, status, since_of(since))
    rows, next_cursor = await newest_first(
        session,
        stmt,
        DeadLetter.last_seen_at,
        DeadLetter.id,
        page=page,
        limit=limit,
        cursor=cursor,
    )
    total = await session.scalar(select(func.count()).select_from(stmt.subquery()))
    return DeadLetterPage(
        data=[item_of(r) for r in rows],
        meta=PageMeta(page=page, limit=limit, total=total or 0, next_cursor=next_cursor),
    )


async def get_dead_letter(session: AsyncSession, letter_id: uuid.UUID) -> DeadLetterItem:
    row = await session.get(DeadLetter, letter_id)
    if row is None:
        raise NotFoundError.of("dead letter", letter_id)
    return item_of(row)


async def _selected(
    session: AsyncSession, selection: Selection
) -> tuple[list[DeadLetter], list[Result], bool]:
    """The selected dead letters, locked; the ids that do not exist; whether a filter matched
    more than its limit."""
    if selection.ids is not None:
        wanted = list(dict.fromkeys(selection.ids))
        stmt = select(DeadLetter).where(DeadLetter.id.in_(wanted)).order_by(DeadLetter.id)
        rows = {r.id: r for r in (await session.scalars(stmt.with_for_update())).all()}
        missing = [
            Result(i, "refused", f"no dead letter with id {i}") for i in wanted if i not in rows
        ]
        return [rows[i] for i in wanted if i in rows], missing, False
    stmt = _filtered(selection.route, "open", since_of(selection.since))
    stmt = stmt.order_by(DeadLetter.last_seen_at, DeadLetter.id).limit(selection.limit + 1)
    rows_list = list((await session.scalars(stmt.with_for_update(skip_locked=True))).all())
    return rows_list[: selection.limit], [], len(rows_list) > selection.limit


def _not_open(letter: DeadLetter) -> str | None:
    if letter.status == "replayed":
        return f"already replayed at {letter.replayed_at:%Y-%m-%dT%H:%M:%SZ}; nothing to do"
    if letter.status == "discarded":
        return f"discarded at {letter.discarded_at:%Y-%m-%dT%H:%M:%SZ}; nothing to replay"
    return None


# --- putting a row back where a retry starts -------------------------------------------------

_RESTART_ROW = """
UPDATE {table} SET status = 'PENDING', attempts = 0, throttled = 0, lease_until = NULL,
    failed_at = NULL, updated_at = now()
WHERE id = :id {extra}
  AND (status IN ('FAILED', 'PENDING') OR (status = 'SENDING' AND lease_until < now()))
RETURNING id
"""
_ROW_STATUS = "SELECT status, lease_until > now() AS leased FROM {table} WHERE id = :id {extra}"
# A mailing's email: not for a cancelled mailing; a completed one is running again.
_MAILING_OF_EMAIL = """
SELECT m.id, m.status FROM mailing_recipients r JOIN mailings m ON m.id = r.mailing_id
WHERE r.email_id = :id FOR UPDATE OF m
"""
_RUN_AGAIN = """
UPDATE mailings SET status = 'RUNNING', finished_at = NULL, updated_at = now()
WHERE id = :id AND status = 'COMPLETED'
"""
_RESTART_COPIES = """
UPDATE chat_recipients SET status = 'PENDING', attempts = 0, failed_at = NULL
WHERE message_id = :id AND user_id = ANY(:users) AND status IN ('FAILED', 'PENDING')
RETURNING user_id
"""
_COPY_STATUSES = """
SELECT status, count(*) AS n FROM chat_recipients
WHERE message_id = :id AND user_id = ANY(:users) GROUP BY status ORDER BY status
"""


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


class Refused(Exception):
    """A dead letter that cannot be replayed, and why."""


async def _restart_row(
    session: AsyncSession, letter: DeadLetter, table: str, what: str, extra: str = ""
) -> dict[str, Any]:
    row_id = _uuid(letter.row_id)
    if row_id is None:
        raise Refused(f"its payload names no {what} id; nothing to put back")
    params = {"id": row_id}
    if table == "emails":
        mailing = (await session.execute(text(_MAILING_OF_EMAIL), params)).first()
        if mailing is not None and mailing.status == "CANCELLED":
            raise Refused(f"{what} {row_id} belongs to mailing {mailing.id}, which was cancelled")
        if mailing is not None:
            await session.execute(text(_RUN_AGAIN), {"id": mailing.id})
    restarted = await session.scalar(text(_RESTART_ROW.format(table=table, extra=extra)), params)
    if restarted is None:
        now = await session.execute(text(_ROW_STATUS.format(table=table, extra=extra)), params)
        row = now.first()
        if row is None:
            raise Refused(f"{what} {row_id} no longer exists")
        if row.status == "SENDING" and row.leased:
            raise Refused(f"{what} {row_id} is being sent right now; nothing to replay")
        raise Refused(f"{what} {row_id} is already {row.status}; nothing to replay")
    return letter.payload


async def _replay_email(session: AsyncSession, letter: DeadLetter) -> dict[str, Any]:
    return await _restart_row(session, letter, "emails", "email")


async def _replay_meta(session: AsyncSession, letter: DeadLetter) -> dict[str, Any]:
    extra = "AND direction = 'outbound'"
    return await _restart_row(session, letter, "messages", "Meta message", extra)


async def _replay_chat(session: AsyncSession, letter: DeadLetter) -> dict[str, Any]:
    message_id = _uuid(letter.row_id)
    users = letter.payload.get("recipients")
    if message_id is None or not isinstance(users, list) or not users:
        raise Refused("its payload names no chat message and recipients; nothing to put back")
    params = {"id": message_id, "users": [str(u) for u in users]}
    moved = list((await session.scalars(text(_RESTART_COPIES), params)).all())
    if not moved:
        states = (await session.execute(text(_COPY_STATUSES), params)).all()
        if not states:
            raise Refused(f"chat message {message_id} has no copies for those recipients")
        said = ", ".join(f"{r.n} {r.status}" for r in states)
        raise Refused(f"the copies of chat message {message_id} are {said}; nothing to replay")
    return deliver_payload(str(message_id), sorted(moved))


async def _replay_parse(session: AsyncSession, letter: DeadLetter) -> dict[str, Any]:
    mailing_id = _uuid(letter.row_id)
    if mailing_id is None:
        raise Refused("its payload names no mailing id; nothing to parse")
    status = await session.scalar(
        text("SELECT status FROM mailings WHERE id = :id FOR UPDATE"), {"id": mailing_id}
    )
    if status is None:
        raise Refused(f"mailing {mailing_id} no longer exists")
    if status != "PARSING":
        raise Refused(f"mailing {mailing_id} is {status}: its file is no longer to be parsed")
    return letter.payload


_REPLAYERS: dict[str, Callable[[AsyncSession, DeadLetter], Awaitable[dict[str, Any]]]] = {
    EMAIL_SEND: _replay_email,
    META_SEND: _replay_meta,
    CHAT_DELIVER: _replay_chat,
    MAILING_PARSE: _replay_parse,
}


async def _replay_one(
    session: AsyncSession, letter: DeadLetter, correlation_id: str | None
) -> Result:
    reason = _not_open(letter)
    replayer = _REPLAYERS.get(letter.route)
    if reason is None and replayer is None:
        reason = f"route {letter.route!r} has no consumer; nothing to replay to"
    if reason is not None or replayer is None:
        return Result(letter.id, "refused", reason)
    try:
        async with session.begin_nested():  # a refusal undoes its own partial changes
            payload = await replayer(session, letter)
    except Refused as exc:
        return Result(letter.id, "refused", str(exc))
    headers = {**trace_headers(correlation_id), REPLAY_HEADER: str(letter.id)}
    await enqueue(session, routing_key=letter.route, payload=payload, headers=headers)
    letter.status = "replayed"
    letter.replayed_at = func.now()
    return Result(letter.id, "replayed")


async def replay(
    session: AsyncSession, selection: Selection, correlation_id: str | None
) -> ReplayReport:
    """Replay the selected dead letters in one transaction; 409 when ids were given and not
    one of them could be replayed."""
    async with session.begin():
        letters, results, more = await _selected(session, selection)
        for letter in letters:
            results.append(await _replay_one(session, letter, correlation_id))
        replayed = sum(r.outcome == "replayed" for r in results)
        report = ReplayReport(replayed=replayed, results=results, more=more)
        if selection.ids is not None and not replayed:  # (the transaction rolls back)
            raise _nothing_done("replayed", report.results)
    return report


async def discard(session: AsyncSession, selection: Selection) -> DiscardReport:
    """Discard the selected open dead letters (kept, marked `discarded`); 409 when ids were
    given and not one of them was open."""
    async with session.begin():
        letters, results, more = await _selected(session, selection)
        for letter in letters:
            if letter.status != "open":
                results.append(Result(letter.id, "refused", f"it is {letter.status} already"))
                continue
            letter.status = "discarded"
            letter.discarded_at = func.now()
            results.append(Result(letter.id, "discarded"))
        discarded = sum(r.outcome == "discarded" for r in results)
        if selection.ids is not None and not discarded:
            raise _nothing_done("discarded", results)
    return DiscardReport(discarded=discarded, results=results, more=more)


def _nothing_done(action: str, results: list[Result]) -> ConflictError:
    reasons = "; ".join(f"{r.id}: {r.reason}" for r in results)
    return ConflictError(
        f"nothing {action}: {reasons}",
        results=[{"id": str(r.id), "outcome": r.outcome, "reason": r.reason} for r in results],
    )
