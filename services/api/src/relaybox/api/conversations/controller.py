"""Conversation endpoints: thin handlers that validate and call the conversation service."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client, requires
from relaybox.api.conversations import service
from relaybox.api.conversations.schemas import (
    ConversationDetail,
    ConversationItem,
    ConversationPage,
    ConversationStatus,
)
from relaybox.api.messages.schemas import Channel

READ = requires("meta:read")
WRITE = requires("meta:send")


class ConversationController(Controller):
    """The Meta-like inbox: list, one thread, and read/archive/close actions."""

    path = "/conversations"
    tags = ["conversations"]

    @get(
        "/",
        opt=READ,
        summary="Conversations, newest activity first",
        description="Archived conversations are hidden unless `archived=true` (only those) or "
        "`include_archived=true` (all).",
    )
    async def list_all(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        page: Annotated[int, QueryParameter(ge=1, le=100_000)] = 1,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        channel: Annotated[Channel | None, QueryParameter()] = None,
        status: Annotated[ConversationStatus | None, QueryParameter()] = None,
        archived: Annotated[bool | None, QueryParameter()] = None,
        include_archived: Annotated[bool, QueryParameter()] = False,
    ) -> ConversationPage:
        query = service.ConversationQuery(
            page=page,
            limit=limit,
            channel=channel,
            status=status,
            archived=archived,
            include_archived=include_archived,
        )
        return await service.list_conversations(db_session, request.user, query)

    @get(
        "/{conversation_id:uuid}",
        opt=READ,
        summary="One conversation with a page of its messages, newest first",
    )
    async def get_one(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        conversation_id: FromPath[uuid.UUID],
        page: Annotated[int, QueryParameter(ge=1, le=100_000)] = 1,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 50,
    ) -> ConversationDetail:
        return await service.get_conversation(
            db_session, request.user, conversation_id, page=page, limit=limit
        )

    @post(
        "/{conversation_id:uuid}/read",
        opt=WRITE,
        status_code=200,
        summary="Mark read: unreadCount = 0, lastReadAt = now",
    )
    async def read(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        conversation_id: FromPath[uuid.UUID],
    ) -> ConversationItem:
        return await service.mark_read(db_session, request.user, conversation_id)

    @post("/{conversation_id:uuid}/archive", opt=WRITE, status_code=200, summary="Archive")
    async def archive(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        conversation_id: FromPath[uuid.UUID],
    ) -> ConversationItem:
        return await service.set_archived(db_session, request.user, conversation_id, archived=True)

    @post("/{conversation_id:uuid}/unarchive", opt=WRITE, status_code=200, summary="Unarchive")
    async def unarchive(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        conversation_id: FromPath[uuid.UUID],
    ) -> ConversationItem:
        return await service.set_archived(db_session, request.user, conversation_id, archived=False)

    @post("/{conversation_id:uuid}/close", opt=WRITE, status_code=200, summary="Close")
    async def close(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        conversation_id: FromPath[uuid.UUID],
    ) -> ConversationItem:
        return await service.set_status(db_session, request.user, conversation_id, "closed")

    @post("/{conversation_id:uuid}/reopen", opt=WRITE, status_code=200, summary="Reopen")
    async def reopen(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        conversation_id: FromPath[uuid.UUID],
    ) -> ConversationItem:
        return await service.set_status(db_session, request.user, conversation_id, "open")
