"""/chat/messages: post, history and search, one message, read receipts."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client, requires
from relaybox.api.chat import history, posting, reads
from relaybox.api.chat.schemas import (
    MessagePage,
    MessageView,
    PostMessageRequest,
    ReadResult,
    Receipts,
    SearchPage,
)
from relaybox.api.fields import NO_NUL
from relaybox.api.idempotency import Idempotency, IdempotencyKey, request_hash, validate_key
from relaybox.api.openapi import problems
from relaybox.api.settings import ApiSettings
from relaybox.common.observability.logging import request_id_var

Seq = Annotated[
    int | None,
    QueryParameter(
        ge=0,
        le=2**62,
        description="a message sequence number",
        schema_extra={"minimum": 0},  # (Litestar drops a falsy ge from the document)
    ),
]
Query = Annotated[str | None, QueryParameter(min_length=1, max_length=256, pattern=NO_NUL.pattern)]
Limit = Annotated[int, QueryParameter(ge=1, le=100)]


class SearchController(Controller):
    """/chat/search: full-text search in every conversation the caller may see."""

    path = "/search"
    tags = ["chat"]

    @get(
        "/",
        opt=requires("chat:read"),
        summary="Search every conversation",
        description='Messages matching `q` (words, "phrases", -exclusions) in every '
        "conversation the caller may see, under the history rule, newest first; page with "
        "`cursor` (the `nextCursor` of the previous page).",
    )
    async def search(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        q: Annotated[str, QueryParameter(min_length=1, max_length=256, pattern=NO_NUL.pattern)],
        cursor: Annotated[
            str | None,
            QueryParameter(max_length=512, description="the `nextCursor` of the previous page"),
        ] = None,
        limit: Limit = 50,
    ) -> SearchPage:
        return await history.search(db_session, request.user, q=q, cursor=cursor, limit=limit)


class ChatMessageController(Controller):
    """Messages of the internal messenger."""

    path = "/messages"
    tags = ["chat"]

    @post(
        "/",
        opt=requires("chat:write", rate_limited=True),
        status_code=202,
        summary="Post a message",
        description="Commits the message, one copy per other current member (PENDING) and the "
        "outbox rows that push them, in one transaction (202). A repeated `clientMessageId` of "
        "the same sender answers the stored message (200) and posts nothing. 403 unless the "
        "caller is a current member; 404 when they may not see the conversation.",
        responses={
            200: ResponseSpec(MessageView, description="Posted before: the stored message"),
            **problems(404),
        },
    )
    async def post_message(
        self,
        request: Request[Client, Any, State],
        data: JSONBody[PostMessageRequest],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[MessageView]:
        client: Client = request.user
        key = validate_key(idempotency_key)
        idem = (
            Idempotency(
                client.key_owner,
                posting.IDEMPOTENCY_SCOPE,
                key,
                request_hash(data.model_dump(mode="json", by_alias=True)),
                settings.idempotency_ttl_h,
            )
            if key
            else None
        )
        stored = await posting.post(
            db_session,
            client,
            data,
            fanout_batch=settings.chat.fanout_batch,
            idempotency=idem,
            correlation_id=request_id_var.get(),
        )
        return Response(stored.body, status_code=stored.status_code)  # type: ignore[arg-type]

    @get(
        "/",
        opt=requires("chat:read"),
        summary="A conversation's history, and search in it",
        description="Newest first: the messages of `conversationId` the caller may see (the "
        "history rule: those posted while they were a member, or all of a channel), paged with "
        "`before` (the `nextBefore` of the previous page) and `after` (sequence numbers). `q` "
        'keeps those matching a full-text search (words, "phrases", -exclusions). Fetching '
        "marks the caller's own copies DELIVERED. `GET /chat/search` searches every "
        "conversation.",
        responses=problems(404),
    )
    async def list_messages(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        conversation_id: Annotated[uuid.UUID, QueryParameter(name="conversationId")],
        q: Query = None,
        before: Seq = None,
        after: Seq = None,
        limit: Limit = 50,
    ) -> MessagePage:
        return await history.page(
            db_session,
            request.user,
            conversation_id,
            q=q,
            before=before,
            after=after,
            limit=limit,
        )

    @get("/{message_id:uuid}", opt=requires("chat:read"), summary="One message")
    async def get_one(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        message_id: FromPath[uuid.UUID],
    ) -> MessageView:
        return await history.one(db_session, request.user, message_id)

    @post(
        "/{message_id:uuid}/read",
        opt=requires("chat:write"),
        status_code=200,
        summary="Mark read up to this message",
        description="Records the caller's read time on their copy of this message and every "
        "earlier one of the conversation (the first read time is kept) and moves their read "
        "watermark forward (never back). Idempotent. The senders of the copies it moves to READ "
        "get a `message.status` event, the caller's realtime clients a `read` event when the "
        "watermark moved.",
    )
    async def read(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        message_id: FromPath[uuid.UUID],
    ) -> ReadResult:
        return await reads.read(
            db_session, request.user, message_id, fanout_batch=settings.chat.fanout_batch
        )

    @get(
        "/{message_id:uuid}/receipts",
        opt=requires("chat:read"),
        summary="Per-recipient delivery and read status",
        description="For the sender, the conversation's owners and admins, and platform "
        "admins: each recipient's status with its timestamps, and the count per status.",
    )
    async def receipts(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        message_id: FromPath[uuid.UUID],
    ) -> Receipts:
        return await reads.receipts(db_session, request.user, message_id)
