"""The push gateway's delivery receipts (`POST /webhooks/push`): each receipt moves its chat
message copy to DELIVERED, forward only, at the earliest `deliveredAt` seen.

The contract is `docs/messenger/push-gateway.md`. Signed like every provider webhook (the
signature is always required); all receipts of a request are applied in one statement, and a
receipt for an unknown message or recipient is acknowledged and ignored (the gateway must not
retry it forever). Repeats and late receipts are harmless: the status only moves forward and
`delivered_at` only moves earlier. The copies a request moves to DELIVERED are announced to their
messages' senders (`message.status` events) in the same transaction.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIMediaType, RequestBody, Schema
from litestar.params import HeaderParameter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import DateTime, Row, String, and_, bindparam, case, func, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from relaybox.api.fields import SINGLE_LINE
from relaybox.api.messages.schemas import MAX_ID
from relaybox.api.openapi import PUBLIC, READS_BODY, problems, to_schema
from relaybox.api.settings import ApiSettings
from relaybox.api.webhooks.controller import SignedEventOperation
from relaybox.api.webhooks.schemas import ProviderTimestamp, invalid_body, json_object
from relaybox.api.webhooks.service import WEBHOOK_EVENTS, require_signature
from relaybox.common.chat.delivery import RecipientStatus, may_become
from relaybox.common.chat.events import Move, record_statuses
from relaybox.common.db.models import ChatMessage, ChatRecipient
from relaybox.common.db.session import connection
from relaybox.common.signing import SIGNATURE_HEADER

PROVIDER = "push"
MAX_RECEIPTS = 1000
MAX_USER_ID = 255


class ReceiptData(BaseModel):
    """The pushed data, echoed: which copy was delivered (other keys are ignored)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    message_id: str = Field(alias="messageId", min_length=1, max_length=MAX_ID)
    recipient: str = Field(min_length=1, max_length=MAX_USER_ID)


class PushReceipt(BaseModel):
    """A device got a push: `{id, name, token, data, deliveredAt}`."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    id: str = Field(min_length=1, max_length=MAX_ID, json_schema_extra=SINGLE_LINE.schema())
    name: str | None = None
    token: str | None = None
    data: ReceiptData
    delivered_at: ProviderTimestamp = Field(alias="deliveredAt")


class PushReceipts(BaseModel):
    """The body of one receipt POST."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    receipts: list[PushReceipt] = Field(max_length=MAX_RECEIPTS)


class PushReceiptAck(msgspec.Struct, rename="camel"):
    """`received` receipts, of which `applied` changed a copy (a repeat, a later receipt or an
    unknown copy changes nothing)."""

    received: int
    applied: int


def _inlined(node: Any, definitions: dict[str, Any]) -> Any:
    """A JSON Schema with every local `$ref` replaced by its definition."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inlined(definitions[node["$ref"].rsplit("/", 1)[-1]], definitions)
        return {k: _inlined(v, definitions) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inlined(v, definitions) for v in node]
    return node


def receipts_schema() -> Schema:
    """The JSON Schema pydantic validates the body by, nested models inlined."""
    document = PushReceipts.model_json_schema(by_alias=True, mode="validation")
    schema = to_schema(_inlined(document, document.get("$defs", {})))
    assert isinstance(schema, Schema)
    return schema


class ReceiptsOperation(SignedEventOperation):
    """POST /webhooks/push as documented: the receipts' schema and the required signature."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=receipts_schema())},
            required=True,
        )
        for parameter in self.parameters or []:
            if getattr(parameter, "name", None) == SIGNATURE_HEADER:
                parameter.description = (
                    "sha256=<hex HMAC-SHA256 of the raw body with RELAYBOX_PUSH__WEBHOOK_SECRET>"
                )


def parse_receipts(body: bytes) -> PushReceipts:
    """The validated receipts; an ApiError (400) naming the field at fault."""
    try:
        return PushReceipts.model_validate(json_object(body))
    except ValidationError as exc:
        raise invalid_body(exc) from None


def _copies(receipts: PushReceipts) -> list[tuple[uuid.UUID, str, datetime]]:
    """(message id, recipient, deliveredAt) of each receipt that can name a copy: one whose
    messageId is not a UUID, or whose recipient holds a NUL, names none (it is ignored)."""
    copies = []
    for receipt in receipts.receipts:
        try:
            message_id = uuid.UUID(receipt.data.message_id)
        except ValueError:
            continue
        if "\x00" not in receipt.data.recipient:
            copies.append((message_id, receipt.data.recipient, receipt.delivered_at))
    return copies


def deliver_statement(copies: list[tuple[uuid.UUID, str, datetime]]) -> Any:
    """One UPDATE for every receipt: DELIVERED where the status may move there, delivered_at the
    earliest time seen; only the copies it changes come back, each with `moved` (its status
    became DELIVERED, not only its time earlier) and its message's tenant, conversation and
    sender. Rows are locked in key order (two requests sharing copies wait for each other
    instead of deadlocking)."""
    received = select(
        func.unnest(_array([c[0] for c in copies], UUID())).label("message_id"),
        func.unnest(_array([c[1] for c in copies], String())).label("user_id"),
        func.unnest(_array([c[2] for c in copies], DateTime(timezone=True))).label("at"),
    ).subquery()
    earliest = (
        select(received.c.message_id, received.c.user_id, func.min(received.c.at).label("at"))
        .group_by(received.c.message_id, received.c.user_id)
        .cte("earliest")
    )
    r = ChatRecipient
    same_copy = and_(r.message_id == earliest.c.message_id, r.user_id == earliest.c.user_id)
    m = ChatMessage
    locked = (
        select(
            r.message_id,
            r.user_id,
            r.status.label("was"),
            m.tenant_id,
            m.conversation_id,
            m.sender_id,
        )
        .join(earliest, same_copy)
        .join(m, m.id == r.message_id)
        .order_by(r.message_id, r.user_id)
        .with_for_update(of=r)
        .cte("locked")
    )
    moves = may_become(r.status, RecipientStatus.DELIVERED)
    moved = may_become(locked.c.was, RecipientStatus.DELIVERED)
    return (
        update(r)
        .where(
            same_copy,
            r.message_id == locked.c.message_id,
            r.user_id == locked.c.user_id,
            or_(moves, r.delivered_at.is_(None), r.delivered_at > earliest.c.at),
        )
        .values(
            status=case((moves, RecipientStatus.DELIVERED.value), else_=r.status),
            delivered_at=func.least(func.coalesce(r.delivered_at, earliest.c.at), earliest.c.at),
        )
        .returning(
            r.message_id,
            r.user_id,
            moved.label("moved"),
            locked.c.tenant_id,
            locked.c.conversation_id,
            locked.c.sender_id,
        )
    )


def _array(values: list[Any], item: Any) -> Any:
    return bindparam(None, values, type_=ARRAY(item))


@dataclass(frozen=True)
class ReceiptIntake:
    """Checks, parses and applies one receipt POST."""

    engine: AsyncEngine
    secret: str
    fanout_batch: int = 250

    async def receive(self, body: bytes, signature: str | None) -> PushReceiptAck:
        require_signature(self.secret, body, signature)
        receipts = parse_receipts(body)
        copies = _copies(receipts)
        applied = 0
        if copies:
            async with connection(self.engine) as conn, conn.begin():
                changed = (await conn.execute(deliver_statement(copies))).all()
                await self._announce(conn, [row for row in changed if row.moved])
            applied = len(changed)
        received = len(receipts.receipts)
        WEBHOOK_EVENTS.labels(PROVIDER, "receipt", "processed").inc(applied)
        WEBHOOK_EVENTS.labels(PROVIDER, "receipt", "duplicate").inc(received - applied)
        return PushReceiptAck(received=received, applied=applied)

    async def _announce(self, conn: AsyncConnection, moved: list[Row[Any]]) -> None:
        """`message.status` DELIVERED for the copies that moved (per tenant, then per sender
        and conversation)."""
        tenants: dict[str, list[Move]] = defaultdict(list)
        for row in moved:
            tenants[row.tenant_id].append(
                Move(row.message_id, row.conversation_id, row.sender_id, row.user_id)
            )
        for tenant, moves in tenants.items():
            await record_statuses(
                conn,
                tenant=tenant,
                status=RecipientStatus.DELIVERED.value,
                moves=moves,
                fanout_batch=self.fanout_batch,
            )


class PushWebhookController(Controller):
    """POST receipts at /webhooks/push (no bearer token: the signature authenticates)."""

    path = "/webhooks/push"
    tags = ["webhooks"]
    opt = {PUBLIC: True}

    @post(
        "/",
        status_code=200,
        summary="Receive push delivery receipts",
        description="Body: `{receipts: [{id, name, token, data: {messageId, recipient, ...}, "
        "deliveredAt}]}` (docs/messenger/push-gateway.md). Each receipt moves its recipient's "
        "copy to DELIVERED (forward only) at the earliest `deliveredAt` seen; unknown messages "
        "or recipients are acknowledged and ignored. Signed with `X-Hub-Signature-256: "
        "sha256=<hex HMAC-SHA256 of the raw body>`.",
        opt={READS_BODY: True},
        responses=problems(401),
        operation_class=ReceiptsOperation,
    )
    async def receive(
        self,
        request: Request[Any, Any, State],
        settings: NamedDependency[ApiSettings],
        signature: Annotated[
            str | None, HeaderParameter(name=SIGNATURE_HEADER, required=False)
        ] = None,
    ) -> PushReceiptAck:
        intake = ReceiptIntake(
            request.app.state.engine, settings.push.webhook_secret, settings.chat.fanout_batch
        )
        return await intake.receive(await request.body(), signature)
