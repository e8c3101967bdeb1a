"""Conversations and membership intervals: create, join, leave, add, kick, change a role.

Every change takes the conversation row's lock first (`access.seat(lock=True)`) and stamps the
interval with the conversation's `last_seq` read under it: a message posted before the change
has a sequence at or below it, one posted after has a higher one. A post racing a join or a
kick is therefore on one side of the interval's edge, never on it.

Each change that happens writes its event in the same transaction (`relaybox.common.chat.events`):
`conversation.created` to the first members; `member.joined` / `member.left` / `member.kicked` /
`member.role` (`{conversationId, userId, role, by}`) to the members after the change and the
user concerned (so a user who left or was kicked learns it). A call that changes nothing (already
a member, the same role, the pair's existing direct conversation) writes none.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client
from relaybox.api.chat.access import (
    Seat,
    current_member,
    forbidden,
    require_manager,
    require_member,
    seat,
)
from relaybox.api.chat.schemas import CreateConversationRequest, Role
from relaybox.api.errors import ApiError, ConflictError, NotFoundError
from relaybox.common.chat.events import (
    CONVERSATION_CREATED,
    MEMBER_JOINED,
    MEMBER_KICKED,
    MEMBER_LEFT,
    MEMBER_ROLE,
    record,
)
from relaybox.common.db.models import ChatConversation, ChatMember


def direct_key(a: str, b: str) -> str:
    """The one key of a pair, whichever of them asks (ids are single-line: `\\n` separates)."""
    return "\n".join(sorted((a, b)))


async def _add_interval(
    session: AsyncSession,
    conversation: ChatConversation,
    users: list[str],
    *,
    role: str,
    added_by: str | None,
) -> None:
    if users:
        await session.execute(
            pg_insert(ChatMember).values(
                [
                    {
                        "conversation_id": conversation.id,
                        "tenant_id": conversation.tenant_id,
                        "user_id": user,
                        "role": role,
                        "joined_seq": conversation.last_seq,
                        "read_seq": conversation.last_seq,
                        "added_by": added_by,
                    }
                    for user in users
                ]
            )
        )


async def _members_now(session: AsyncSession, conversation_id: uuid.UUID) -> list[str]:
    """The conversation's current members, in the order they joined."""
    return list(
        (
            await session.scalars(
                select(ChatMember.user_id)
                .where(ChatMember.conversation_id == conversation_id, ChatMember.left_seq.is_(None))
                .order_by(ChatMember.id)
            )
        ).all()
    )


async def _announce(
    session: AsyncSession,
    conversation: ChatConversation,
    kind: str,
    *,
    user: str,
    role: str,
    by: str,
    fanout_batch: int,
) -> None:
    """A membership event for the members after the change and the user concerned."""
    audience = [*await _members_now(session, conversation.id), user]
    await record(
        session,
        tenant=conversation.tenant_id,
        kind=kind,
        data={"conversationId": str(conversation.id), "userId": user, "role": role, "by": by},
        audience=audience,
        conversation_id=conversation.id,
        fanout_batch=fanout_batch,
    )


async def _announce_created(
    session: AsyncSession, conversation: ChatConversation, members: list[str], fanout_batch: int
) -> None:
    await record(
        session,
        tenant=conversation.tenant_id,
        kind=CONVERSATION_CREATED,
        data={
            "conversationId": str(conversation.id),
            "kind": conversation.kind,
            "title": conversation.title,
            "createdBy": conversation.created_by,
        },
        audience=members,
        conversation_id=conversation.id,
        fanout_batch=fanout_batch,
    )


async def create(
    session: AsyncSession,
    client: Client,
    request: CreateConversationRequest,
    *,
    fanout_batch: int,
) -> tuple[ChatConversation, bool]:
    """A new conversation (True), or the pair's existing direct one (False)."""
    others = [user for user in request.members if user != client.id]
    async with session.begin():
        if request.kind == "direct":
            if len(others) != 1:
                raise ApiError(
                    "a direct conversation is with another user: name them in `members`",
                    field="members",
                )
            key = direct_key(client.id, others[0])
            conversation = await session.scalar(
                pg_insert(ChatConversation)
                .values(
                    id=uuid.uuid4(),
                    tenant_id=client.tenant,
                    kind="direct",
                    direct_key=key,
                    created_by=client.id,
                )
                .on_conflict_do_nothing(
                    index_elements=[ChatConversation.tenant_id, ChatConversation.direct_key]
                )
                .returning(ChatConversation)
            )
            if conversation is None:
                existing = await session.scalar(
                    select(ChatConversation).where(
                        ChatConversation.tenant_id == client.tenant,
                        ChatConversation.direct_key == key,
                    )
                )
                assert existing is not None  # the conflicting row is committed, hence visible
                return existing, False
            await _add_interval(
                session, conversation, [client.id, others[0]], role="member", added_by=None
            )
            await _announce_created(session, conversation, [client.id, others[0]], fanout_batch)
            return conversation, True
        conversation = await session.scalar(
            pg_insert(ChatConversation)
            .values(
                id=uuid.uuid4(),
                tenant_id=client.tenant,
                kind=request.kind,
                title=request.title,
                created_by=client.id,
            )
            .returning(ChatConversation)
        )
        assert conversation is not None
        await _add_interval(session, conversation, [client.id], role="owner", added_by=None)
        await _add_interval(session, conversation, others, role="member", added_by=client.id)
        await _announce_created(session, conversation, [client.id, *others], fanout_batch)
    return conversation, True


async def _latest_end(session: AsyncSession, conversation_id: uuid.UUID, user: str) -> str | None:
    """How the user's latest membership ended ('left', 'kicked'), None if they never had one."""
    return await session.scalar(
        select(ChatMember.ended_by)
        .where(ChatMember.conversation_id == conversation_id, ChatMember.user_id == user)
        .order_by(ChatMember.id.desc())
        .limit(1)
    )


async def _end(session: AsyncSession, found: Seat, member: ChatMember, ended_by: str) -> None:
    await session.execute(
        update(ChatMember)
        .where(ChatMember.id == member.id)
        .values(left_seq=found.conversation.last_seq, ended_by=ended_by, left_at=func.now())
    )


async def _owners(session: AsyncSession, conversation_id: uuid.UUID) -> int:
    return (
        await session.scalar(
            select(func.count()).where(
                ChatMember.conversation_id == conversation_id,
                ChatMember.left_seq.is_(None),
                ChatMember.role == "owner",
            )
        )
        or 0
    )


async def _members(session: AsyncSession, conversation_id: uuid.UUID) -> int:
    return (
        await session.scalar(
            select(func.count()).where(
                ChatMember.conversation_id == conversation_id, ChatMember.left_seq.is_(None)
            )
        )
        or 0
    )


def _not_direct(found: Seat, action: str) -> None:
    if found.conversation.kind == "direct":
        raise forbidden(f"a direct conversation's two members are fixed: nobody can {action}")


async def join(
    session: AsyncSession, client: Client, conversation_id: uuid.UUID, *, fanout_batch: int
) -> bool:
    """Join a channel, or re-join a group one left (True); False when already a member.

    A group is otherwise joined by being added; a kicked user joins again only when re-added.
    """
    async with session.begin():
        found = await seat(session, client, conversation_id, lock=True)
        _not_direct(found, "join it")
        if found.member is not None:
            return False
        ended = await _latest_end(session, conversation_id, client.id)
        if ended == "kicked":
            raise forbidden("you were removed from this conversation: an admin must add you back")
        if found.conversation.kind == "group" and ended != "left":
            raise forbidden("a group is joined by being added by its owner or an admin")
        await _add_interval(session, found.conversation, [client.id], role="member", added_by=None)
        await _announce(
            session,
            found.conversation,
            MEMBER_JOINED,
            user=client.id,
            role="member",
            by=client.id,
            fanout_batch=fanout_batch,
        )
    return True


async def leave(
    session: AsyncSession, client: Client, conversation_id: uuid.UUID, *, fanout_batch: int
) -> None:
    async with session.begin():
        found = await seat(session, client, conversation_id, lock=True)
        _not_direct(found, "leave it")
        await _leave(session, found, require_member(found, "leave"), fanout_batch)


async def _leave(session: AsyncSession, found: Seat, member: ChatMember, fanout_batch: int) -> None:
    conversation_id = found.conversation.id
    if (
        member.role == "owner"
        and await _owners(session, conversation_id) == 1
        and await _members(session, conversation_id) > 1
    ):
        raise ConflictError("you are the only owner: make another member an owner before leaving")
    await _end(session, found, member, "left")
    await _announce(
        session,
        found.conversation,
        MEMBER_LEFT,
        user=member.user_id,
        role=member.role,
        by=member.user_id,
        fanout_batch=fanout_batch,
    )


async def add(
    session: AsyncSession,
    client: Client,
    conversation_id: uuid.UUID,
    user: str,
    role: Role,
    *,
    fanout_batch: int,
) -> tuple[ChatMember, bool]:
    """Add `user` (True), or find them already a member (False: their role is unchanged)."""
    async with session.begin():
        found = await seat(session, client, conversation_id, lock=True)
        _not_direct(found, "be added")
        me = require_manager(found, "add members")
        if role != "member" and me.role != "owner":
            raise forbidden("only an owner may add admins or owners")
        existing = await current_member(session, conversation_id, user)
        if existing is not None:
            return existing, False
        await _add_interval(session, found.conversation, [user], role=role, added_by=client.id)
        added = await current_member(session, conversation_id, user)
        assert added is not None
        await _announce(
            session,
            found.conversation,
            MEMBER_JOINED,
            user=user,
            role=role,
            by=client.id,
            fanout_batch=fanout_batch,
        )
        return added, True


async def kick(
    session: AsyncSession,
    client: Client,
    conversation_id: uuid.UUID,
    user: str,
    *,
    fanout_batch: int,
) -> None:
    async with session.begin():
        found = await seat(session, client, conversation_id, lock=True)
        _not_direct(found, "be removed")
        if user == client.id:  # removing yourself is leaving
            await _leave(session, found, require_member(found, "leave"), fanout_batch)
            return
        me = require_manager(found, "remove members")
        target = await current_member(session, conversation_id, user)
        if target is None:
            raise NotFoundError(f"{user!r} is not a member of conversation {conversation_id}")
        if target.role != "member" and me.role != "owner":
            raise forbidden("only an owner may remove an admin or an owner")
        await _end(session, found, target, "kicked")
        await _announce(
            session,
            found.conversation,
            MEMBER_KICKED,
            user=user,
            role=target.role,
            by=client.id,
            fanout_batch=fanout_batch,
        )


async def change_role(
    session: AsyncSession,
    client: Client,
    conversation_id: uuid.UUID,
    user: str,
    role: Role,
    *,
    fanout_batch: int,
) -> ChatMember:
    async with session.begin():
        found = await seat(session, client, conversation_id, lock=True)
        _not_direct(found, "have roles")
        me = require_member(found, "change roles")
        if me.role != "owner":
            raise forbidden("only an owner may change roles")
        target = await current_member(session, conversation_id, user)
        if target is None:
            raise NotFoundError(f"{user!r} is not a member of conversation {conversation_id}")
        if (
            target.role == "owner"
            and role != "owner"
            and await _owners(session, conversation_id) == 1
        ):
            raise ConflictError("the conversation needs an owner: make another one first")
        before = target.role
        changed = await session.scalar(
            update(ChatMember)
            .where(ChatMember.id == target.id)
            .values(role=role)
            .returning(ChatMember)
            .execution_options(populate_existing=True)
        )
        assert changed is not None
        if changed.role != before:
            await _announce(
                session,
                found.conversation,
                MEMBER_ROLE,
                user=user,
                role=role,
                by=client.id,
                fanout_batch=fanout_batch,
            )
        return changed
