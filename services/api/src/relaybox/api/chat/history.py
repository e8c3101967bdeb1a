"""Reading messages: a conversation's history newest first, search, one message, and the
DELIVERED mark a fetch gives the caller's own copies. Every query filters with the history
rule (`relaybox.common.chat.visibility.visible_message`).

A fetch is one autocommitted statement that also says, per message, whether the caller's copy
may still become DELIVERED. Usually none may (the common case costs that one round trip); when
some may, one transaction moves them (forward only, locked in key order) and writes the
`message.status` DELIVERED events of the copies that did move, so no move commits without its
event. A copy that only a concurrent fetch, receipt or read moved on is left to that one.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

from sqlalchemy import (
    ARRAY,
    UUID,
    ColumnElement,
    Integer,
    Row,
    Select,
    String,
    Update,
    any_,
    bindparam,
    exists,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client
from relaybox.api.chat.access import seat
from relaybox.api.chat.schemas import MessagePage, MessageView, SearchPage
from relaybox.api.chat.views import message_columns, message_views, reader
from relaybox.api.errors import NotFoundError
from relaybox.api.pagination import decode_cursor, encode_cursor
from relaybox.common.chat.delivery import RecipientStatus, may_become
from relaybox.common.chat.events import Move, record_statuses
from relaybox.common.chat.visibility import visible_message
from relaybox.common.db.models import ChatMessage, ChatRecipient

SEARCH_CONFIG = "simple"  # language-neutral: words as written, lower-cased


TENANT = bindparam("tenant", type_=String)
USER = bindparam("user", type_=String)
LIMIT = bindparam("limit", type_=Integer)  # the page's size plus one (is there more?)


def _marking(user: str, ids: list[uuid.UUID]) -> Update:
    """`user`'s client has the messages `ids`: their copies become DELIVERED (forward only),
    locked in key order (two fetches, or a fetch and a receipt, sharing copies wait for each
    other instead of deadlocking); the ids of the copies that moved come back."""
    r = ChatRecipient
    movable = may_become(r.status, RecipientStatus.DELIVERED)
    locked = (
        select(r.message_id)
        .where(
            r.message_id == any_(bindparam("ids", ids, type_=ARRAY(UUID))),
            r.user_id == user,
            movable,
        )
        .order_by(r.message_id)
        .with_for_update()
        .cte("locked")
    )
    return (
        update(r)
        .where(r.message_id == locked.c.message_id, r.user_id == user, movable)
        .values(
            status=RecipientStatus.DELIVERED.value,
            delivered_at=func.coalesce(r.delivered_at, func.now()),
        )
        .returning(r.message_id)
    )


def _undelivered(found: Any) -> ColumnElement[bool]:
    """Whether the caller's copy of a found message may still become DELIVERED."""
    return (
        exists()
        .where(
            ChatRecipient.message_id == found.c.id,
            ChatRecipient.user_id == USER,
            may_become(ChatRecipient.status, RecipientStatus.DELIVERED),
        )
        .label("undelivered")
    )


def _fetching(stmt: Select[Any], *order: str) -> Select[Any]:
    """`stmt` (`message_columns`, ordered) as a page of `LIMIT` rows ordered by the columns
    `order` names, each with `undelivered` (the caller's copy is still to mark DELIVERED)."""
    found = stmt.limit(LIMIT).cte("found")
    ordering = [found.c[name].desc() for name in order]
    return select(found, _undelivered(found)).order_by(*ordering)


def _matching(stmt: Select[Any]) -> Select[Any]:
    """`stmt` limited to messages matching the search `q` (web-search syntax)."""
    query = func.websearch_to_tsquery(SEARCH_CONFIG, bindparam("q", type_=String))
    return stmt.where(ChatMessage.search.op("@@")(query))


# The read statements are built once per shape and reused: building and hashing a statement
# costs more CPU than running it (the parameters travel as bind values).


@functools.cache
def _page_statement(before: bool, after: bool, search: bool) -> Select[Any]:
    stmt = select(*message_columns()).where(
        ChatMessage.conversation_id == bindparam("conversation"),
        visible_message(TENANT, USER),
    )
    if before:
        stmt = stmt.where(ChatMessage.seq < bindparam("before"))
    if after:
        stmt = stmt.where(ChatMessage.seq > bindparam("after"))
    if search:
        stmt = _matching(stmt)
    return _fetching(stmt.order_by(ChatMessage.seq.desc()), "seq")


@functools.cache
def _search_statement(cursor: bool) -> Select[Any]:
    stmt = select(*message_columns()).where(visible_message(TENANT, USER))
    if cursor:
        key = tuple_(ChatMessage.created_at, ChatMessage.id)
        stmt = stmt.where(key < tuple_(bindparam("after_at"), bindparam("after_id")))
    stmt = _matching(stmt.order_by(ChatMessage.created_at.desc(), ChatMessage.id.desc()))
    return _fetching(stmt, "created_at", "id")


@functools.cache
def _one_statement() -> Select[Any]:
    stmt = select(*message_columns()).where(
        ChatMessage.id == bindparam("message"), visible_message(TENANT, USER)
    )
    return _fetching(stmt, "seq")


async def _fetched(
    session: AsyncSession, client: Client, stmt: Select[Any], limit: int, **values: Any
) -> tuple[list[Row[Any]], list[MessageView], bool]:
    """Up to `limit` rows of the page statement `stmt`, their views, and whether more follow;
    the caller's copies of those rows are DELIVERED after it."""
    conn = await reader(session)
    params = {"tenant": client.tenant, "user": client.id, "limit": limit + 1, **values}
    rows = list((await conn.execute(stmt, params)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    views = await message_views(conn, rows)
    await _deliver(session, client, rows)
    return rows, views, more


async def _deliver(session: AsyncSession, client: Client, rows: list[Row[Any]]) -> None:
    """The caller's copies of the fetched `rows` still to mark DELIVERED become so, with the
    senders' `message.status` events, in one transaction (none to mark: nothing is done)."""
    due = {row.id: row for row in rows if row.undelivered}
    if not due:
        return
    await session.commit()  # the read's autocommitted connection goes back to the pool
    async with session.begin():
        moved = (await session.scalars(_marking(client.id, sorted(due)))).all()
        await record_statuses(
            session,
            tenant=client.tenant,
            status=RecipientStatus.DELIVERED.value,
            moves=[
                Move(m, due[m].conversation_id, due[m].sender_id, client.id) for m in sorted(moved)
            ],
        )


async def page(
    session: AsyncSession,
    client: Client,
    conversation_id: uuid.UUID,
    *,
    q: str | None,
    before: int | None,
    after: int | None,
    limit: int,
) -> MessagePage:
    """A conversation's messages the caller may see, newest first (keyset on the sequence).

    An empty page asks whether the caller may see the conversation at all (else 404); a page
    with rows needs no such check: the history rule let them through."""
    stmt = _page_statement(before is not None, after is not None, q is not None)
    values = {"conversation": conversation_id, "before": before, "after": after, "q": q}
    given = {name: value for name, value in values.items() if value is not None}
    rows, views, more = await _fetched(session, client, stmt, limit, **given)
    if not rows:
        await seat(session, client, conversation_id)  # 404 unless they may see it
    return MessagePage(data=views, next_before=rows[-1].seq if more else None)


async def search(
    session: AsyncSession, client: Client, *, q: str, cursor: str | None, limit: int
) -> SearchPage:
    """Matches in every conversation the caller may see, newest first (keyset on time, id)."""
    values: dict[str, Any] = {"q": q}
    if cursor is not None:
        values["after_at"], values["after_id"] = decode_cursor(cursor)
    stmt = _search_statement(cursor is not None)
    rows, views, more = await _fetched(session, client, stmt, limit, **values)
    if not more:
        return SearchPage(data=views, next_cursor=None)
    last = rows[-1]
    return SearchPage(data=views, next_cursor=encode_cursor(last.created_at, last.id))


async def visible(session: AsyncSession, client: Client, message_id: uuid.UUID) -> ChatMessage:
    """The message if the caller may see it, else 404."""
    message = await session.scalar(
        select(ChatMessage).where(
            ChatMessage.id == message_id, visible_message(client.tenant, client.id)
        )
    )
    if message is None:
        raise NotFoundError.of("message", message_id)
    return message


async def one(session: AsyncSession, client: Client, message_id: uuid.UUID) -> MessageView:
    rows, views, _ = await _fetched(session, client, _one_statement(), 1, message=message_id)
    if not rows:
        raise NotFoundError.of("message", message_id)
    return views[0]
