"""/chat/conversations and /chat/channels: thin handlers over `membership` and `views`."""

from __future__ import annotations

import functools
import uuid
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, PathParameter, QueryParameter
from sqlalchemy import Integer, Select, String, bindparam, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client, requires
from relaybox.api.chat import membership
from relaybox.api.chat.access import seat
from relaybox.api.chat.schemas import (
    MAX_ID,
    AddMemberRequest,
    ChangeRoleRequest,
    ConversationDetail,
    ConversationPage,
    CreateConversationRequest,
    MemberView,
)
from relaybox.api.chat.views import conversation_views, conversations_query, reader
from relaybox.api.fields import SINGLE_LINE
from relaybox.api.openapi import problems
from relaybox.api.pagination import decode_cursor, encode_cursor
from relaybox.api.settings import ApiSettings
from relaybox.common.db.models import ChatConversation, ChatMember

Limit = Annotated[int, QueryParameter(ge=1, le=200, description="conversations per page")]
Cursor = Annotated[
    str | None, QueryParameter(description="the `nextCursor` of the previous page", max_length=512)
]
# A member's user id in a path: the rule of `userId` bodies (a NUL reached PostgreSQL: a 500).
UserId = Annotated[str, PathParameter(min_length=1, max_length=MAX_ID, pattern=SINGLE_LINE.pattern)]


def _member_view(row: ChatMember) -> MemberView:
    return MemberView(
        user_id=row.user_id,
        role=row.role,  # type: ignore[arg-type]
        joined_at=row.joined_at,
        added_by=row.added_by,
    )


TENANT = bindparam("tenant", type_=String)
USER = bindparam("user", type_=String)


@functools.cache
def _list_statement(channels: bool, cursor: bool) -> Select[Any]:
    """The caller's conversations (or the tenant's channels), most recent activity first,
    `limit` rows after the `cursor` position: built once per shape, run with bind values."""
    stmt = conversations_query(TENANT, USER)
    if channels:
        stmt = stmt.where(ChatConversation.kind == "channel")
    else:
        stmt = stmt.where(
            ChatConversation.id.in_(
                select(ChatMember.conversation_id).where(
                    ChatMember.tenant_id == TENANT,
                    ChatMember.user_id == USER,
                    ChatMember.left_seq.is_(None),
                )
            )
        )
    if cursor:
        key = tuple_(ChatConversation.last_activity_at, ChatConversation.id)
        stmt = stmt.where(key < tuple_(bindparam("after_at"), bindparam("after_id")))
    order = (ChatConversation.last_activity_at.desc(), ChatConversation.id.desc())
    return stmt.order_by(*order).limit(bindparam("limit", type_=Integer))


async def _listed(
    session: AsyncSession, client: Client, *, channels: bool, limit: int, cursor: str | None
) -> ConversationPage:
    """A page of conversations, most recent activity first (keyset on activity time and id)."""
    params: dict[str, Any] = {"tenant": client.tenant, "user": client.id, "limit": limit + 1}
    if cursor:
        params["after_at"], params["after_id"] = decode_cursor(cursor)
    stmt = _list_statement(channels, bool(cursor))
    views = await conversation_views(await reader(session), stmt, params)
    if len(views) <= limit:
        return ConversationPage(data=views, next_cursor=None)
    views = views[:limit]
    last = views[-1]
    assert last.last_activity_at is not None  # listed: the caller's or a channel
    return ConversationPage(data=views, next_cursor=encode_cursor(last.last_activity_at, last.id))


async def detail(
    session: AsyncSession, client: Client, conversation_id: uuid.UUID
) -> ConversationDetail:
    async with session.begin():
        await seat(session, client, conversation_id)  # 404 unless they may see it
        (view,) = await conversation_views(
            session,
            conversations_query(client.tenant, client.id).where(
                ChatConversation.id == conversation_id
            ),
        )
        members: list[ChatMember] = []
        if view.member_count is not None:  # shown: a member's or a channel's
            members = list(
                await session.scalars(
                    select(ChatMember)
                    .where(
                        ChatMember.conversation_id == conversation_id,
                        ChatMember.left_seq.is_(None),
                    )
                    .order_by(ChatMember.joined_at, ChatMember.id)
                )
            )
    return ConversationDetail(
        **{f: getattr(view, f) for f in view.__struct_fields__},
        members=[_member_view(m) for m in members],
    )


class ConversationController(Controller):
    """Direct, group and channel conversations and their members."""

    path = "/conversations"
    tags = ["chat"]

    @post(
        "/",
        opt=requires("chat:write"),
        status_code=201,
        summary="Start a conversation",
        description="`direct`: with exactly one other user; asking again (either of the two) "
        "answers the existing one (200). `group`: the caller is its owner, `members` join as "
        "members. `channel`: public to the tenant; needs a `title`.",
        responses={200: ResponseSpec(ConversationDetail, description="The pair's direct one")},
    )
    async def create(
        self,
        request: Request[Client, Any, State],
        data: JSONBody[CreateConversationRequest],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
    ) -> Response[ConversationDetail]:
        conversation, created = await membership.create(
            db_session, request.user, data, fanout_batch=settings.chat.fanout_batch
        )
        body = await detail(db_session, request.user, conversation.id)
        return Response(body, status_code=201 if created else 200)

    @get(
        "/",
        opt=requires("chat:read"),
        summary="My conversations",
        description="The conversations the caller is a member of, most recent activity first, "
        "each with its `unreadCount` and the last message.",
    )
    async def mine(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> ConversationPage:
        return await _listed(db_session, request.user, channels=False, limit=limit, cursor=cursor)

    @get("/{conversation_id:uuid}", opt=requires("chat:read"), summary="One conversation")
    async def get_one(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        conversation_id: FromPath[uuid.UUID],
    ) -> ConversationDetail:
        return await detail(db_session, request.user, conversation_id)

    @post(
        "/{conversation_id:uuid}/join",
        opt=requires("chat:write"),
        status_code=201,
        summary="Join a channel (or re-join a group you left)",
        description="A new membership interval starts after the conversation's latest message: "
        "what was posted while you were away stays hidden. 200 when already a member. A kicked "
        "user joins again only when an admin adds them.",
        responses={200: ResponseSpec(ConversationDetail, description="Already a member")},
    )
    async def join(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        conversation_id: FromPath[uuid.UUID],
    ) -> Response[ConversationDetail]:
        joined = await membership.join(
            db_session, request.user, conversation_id, fanout_batch=settings.chat.fanout_batch
        )
        body = await detail(db_session, request.user, conversation_id)
        return Response(body, status_code=201 if joined else 200)

    @post(
        "/{conversation_id:uuid}/leave",
        opt=requires("chat:write"),
        status_code=204,
        summary="Leave a group or channel",
        description="Ends the caller's membership interval; they keep what they saw while a "
        "member. 409 for the only owner of a conversation with other members.",
        responses=problems(409),
    )
    async def leave(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        conversation_id: FromPath[uuid.UUID],
    ) -> None:
        await membership.leave(
            db_session, request.user, conversation_id, fanout_batch=settings.chat.fanout_batch
        )

    @post(
        "/{conversation_id:uuid}/members",
        opt=requires("chat:write"),
        status_code=201,
        summary="Add a member (owners and admins)",
        description="Admins add members; owners add any role. 200 when already a member.",
        responses={200: ResponseSpec(MemberView, description="Already a member")},
    )
    async def add_member(
        self,
        request: Request[Client, Any, State],
        data: JSONBody[AddMemberRequest],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        conversation_id: FromPath[uuid.UUID],
    ) -> Response[MemberView]:
        row, added = await membership.add(
            db_session,
            request.user,
            conversation_id,
            data.user_id,
            data.role,
            fanout_batch=settings.chat.fanout_batch,
        )
        return Response(_member_view(row), status_code=201 if added else 200)

    @delete(
        "/{conversation_id:uuid}/members/{user_id:str}",
        opt=requires("chat:write"),
        summary="Remove (kick) a member (owners and admins)",
        description="Ends the member's interval; they cannot re-join until added again. Only an "
        "owner removes an admin or owner. Removing yourself is leaving (409 for the only owner "
        "of a conversation with other members).",
        responses=problems(409),
    )
    async def kick(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        conversation_id: FromPath[uuid.UUID],
        user_id: UserId,
    ) -> None:
        await membership.kick(
            db_session,
            request.user,
            conversation_id,
            user_id,
            fanout_batch=settings.chat.fanout_batch,
        )

    @patch(
        "/{conversation_id:uuid}/members/{user_id:str}",
        opt=requires("chat:write"),
        summary="Change a member's role (owners)",
        responses=problems(409),
    )
    async def change_role(
        self,
        request: Request[Client, Any, State],
        data: JSONBody[ChangeRoleRequest],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        conversation_id: FromPath[uuid.UUID],
        user_id: UserId,
    ) -> MemberView:
        row = await membership.change_role(
            db_session,
            request.user,
            conversation_id,
            user_id,
            data.role,
            fanout_batch=settings.chat.fanout_batch,
        )
        return _member_view(row)


class ChannelController(Controller):
    """/chat/channels: discover the tenant's public channels."""

    path = "/channels"
    tags = ["chat"]

    @get(
        "/",
        opt=requires("chat:read"),
        summary="The tenant's channels",
        description="Every channel of the caller's tenant, joined or not (`role` null when not "
        "a member), most recent activity first.",
    )
    async def channels(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> ConversationPage:
        return await _listed(db_session, request.user, channels=True, limit=limit, cursor=cursor)
