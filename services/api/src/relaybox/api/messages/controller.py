"""Message endpoints: thin handlers that validate and call the message service."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client, requires
from relaybox.api.idempotency import Idempotency, IdempotencyKey, request_hash, validate_key
from relaybox.api.messages import service
from relaybox.api.messages.schemas import MessageDetail, SendMessageRequest
from relaybox.api.openapi import problems
from relaybox.api.settings import ApiSettings
from relaybox.common.observability.logging import request_id_var


class MessageController(Controller):
    """POST /messages/send, one message, and the retry of a failed one."""

    path = "/messages"
    tags = ["messages"]

    @post(
        "/send",
        opt=requires("meta:send", rate_limited=True),
        status_code=202,
        summary="Send a WhatsApp/Instagram message",
        description="Writes the message (PENDING), its conversation and its outbox row in one "
        "transaction (202). The same `clientMessageId` on the same channel again answers the "
        "stored message as it is now (200) and sends nothing. Honours Idempotency-Key.",
        responses={200: ResponseSpec(MessageDetail, description="Sent before: the stored message")},
    )
    async def send(
        self,
        request: Request[Client, Any, State],
        data: JSONBody[SendMessageRequest],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[MessageDetail]:
        client: Client = request.user
        gateway_tenant = settings.meta.tenant
        if client.tenant != gateway_tenant and not client.admin:
            raise PermissionDeniedException(
                detail="this tenant has no Meta-like provider account to send from "
                "(the gateway's account belongs to RELAYBOX_META__TENANT)"
            )
        key = validate_key(idempotency_key)
        idem = (
            Idempotency(
                client.key_owner,
                service.IDEMPOTENCY_SCOPE,
                key,
                request_hash(data.model_dump(by_alias=True)),
                settings.idempotency_ttl_h,
            )
            if key
            else None
        )
        stored = await service.send_message(
            db_session,
            tenant=gateway_tenant,
            request=data,
            idempotency=idem,
            correlation_id=request_id_var.get(),
        )
        return Response(stored.body, status_code=stored.status_code)  # type: ignore[arg-type]

    @get("/{message_id:uuid}", opt=requires("meta:read"), summary="One message")
    async def get_one(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        message_id: FromPath[uuid.UUID],
    ) -> MessageDetail:
        return await service.get_message(db_session, request.user, message_id)

    @post(
        "/{message_id:uuid}/retry",
        opt=requires("meta:send", rate_limited=True),
        status_code=202,
        summary="Send a FAILED message again",
        description="Sets a FAILED outbound message back to PENDING (attempts 0) and enqueues it "
        "in one transaction; 409 when it is not FAILED.",
        responses=problems(409),
    )
    async def retry(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        message_id: FromPath[uuid.UUID],
    ) -> MessageDetail:
        return await service.retry_message(
            db_session, request.user, message_id, correlation_id=request_id_var.get()
        )
