"""Who may do what in a conversation: locking it, the caller's membership, and the 404/403
answers every chat route gives alike."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from litestar.exceptions import PermissionDeniedException
from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client
from relaybox.api.errors import NotFoundError
from relaybox.common.db.models import ChatConversation, ChatMember

MANAGERS = ("owner", "admin")


@dataclass(frozen=True)
class Seat:
    """The caller in one conversation: the conversation, their current membership (None when
    not a member) and whether they were ever one (a former member keeps what they saw)."""

    conversation: ChatConversation
    member: ChatMember | None
    ever_member: bool

    @property
    def visible(self) -> bool:
        """The caller may see the conversation at all."""
        return self.ever_member or self.conversation.kind == "channel"

    @property
    def manager(self) -> bool:
        return self.member is not None and self.member.role in MANAGERS


async def current_member(
    session: AsyncSession, conversation_id: uuid.UUID, user: str
) -> ChatMember | None:
    return await session.scalar(
        select(ChatMember).where(
            ChatMember.conversation_id == conversation_id,
            ChatMember.user_id == user,
            ChatMember.left_seq.is_(None),
        )
    )


async def seat(
    session: AsyncSession, client: Client, conversation_id: uuid.UUID, *, lock: bool = False
) -> Seat:
    """The caller's seat in a conversation of their tenant; 404 when they may not see it.

    With `lock`, the conversation row is locked first (`FOR UPDATE`), and the membership is
    read by a later statement, so it sees every join, leave and kick committed before the lock
    was granted: posts, joins, leaves and kicks of one conversation happen one at a time.
    """
    stmt = select(ChatConversation).where(
        ChatConversation.id == conversation_id, ChatConversation.tenant_id == client.tenant
    )
    conversation = await session.scalar(stmt.with_for_update() if lock else stmt)
    if conversation is None:
        raise NotFoundError.of("conversation", conversation_id)
    member = await current_member(session, conversation_id, client.id)
    ever = member is not None or bool(
        await session.scalar(
            select(
                exists().where(
                    ChatMember.conversation_id == conversation_id,
                    ChatMember.user_id == client.id,
                )
            )
        )
    )
    found = Seat(conversation, member, ever)
    if not found.visible:
        raise NotFoundError.of("conversation", conversation_id)
    return found


def forbidden(detail: str) -> PermissionDeniedException:
    return PermissionDeniedException(detail=detail)


def require_member(found: Seat, action: str) -> ChatMember:
    if found.member is None:
        raise forbidden(f"only a current member may {action}")
    return found.member


def require_manager(found: Seat, action: str) -> ChatMember:
    member = require_member(found, action)
    if member.role not in MANAGERS:
        raise forbidden(f"only the conversation's owner or an admin may {action}")
    return member
