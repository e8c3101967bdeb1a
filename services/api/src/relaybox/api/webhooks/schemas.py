"""The Meta-like webhook events, parsed from the raw (signed) body, and the webhook's answers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from relaybox.api.errors import ApiError
from relaybox.api.fields import SINGLE_LINE, TEXT
from relaybox.api.messages.schemas import MAX_ID, Channel, message_text, single_line
from relaybox.common.gateway.timestamps import parse_provider_timestamp

MAX_INBOUND_TEXT = 65_536  # generous: a provider's message is never refused for its length
_VALUE_ERROR_PREFIX = "Value error, "
_REPLACEMENT = "\ufffd"
# The instants a Python datetime holds, as Unix seconds (parse_provider_timestamp's range).
_FIRST_S, _LAST_S = -62_135_596_800, 253_402_300_799

ProviderTimestamp = Annotated[
    datetime,
    BeforeValidator(parse_provider_timestamp),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "number", "minimum": _FIRST_S, "maximum": _LAST_S},
                {"type": "string", "pattern": "^[0-9]{1,11}(\\.[0-9]{1,9})?$"},
            ],
            "description": "ISO 8601 (RFC 3339), or Unix seconds as a number or a string of digits",
        }
    ),
]


class _Event(BaseModel):
    """Fields of every event. Unknown fields are ignored (providers add fields over time)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    event_id: str = Field(
        alias="eventId", min_length=1, max_length=MAX_ID, json_schema_extra=SINGLE_LINE.schema()
    )
    channel: Channel
    timestamp: ProviderTimestamp

    @field_validator("event_id")
    @classmethod
    def _event_id(cls, value: str) -> str:
        return single_line(value)


class InboundMessageEvent(_Event):
    """A customer wrote in: `{eventId, type?: "message", channel, from, text, timestamp}`."""

    type: Literal["message"] = "message"
    from_: str = Field(
        alias="from", min_length=1, max_length=MAX_ID, json_schema_extra=SINGLE_LINE.schema()
    )
    text: str = Field(min_length=1, max_length=MAX_INBOUND_TEXT, json_schema_extra=TEXT.schema())

    @field_validator("from_")
    @classmethod
    def _sender(cls, value: str) -> str:
        return single_line(value)

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        return message_text(value)


class StatusEvent(_Event):
    """An outbound message moved on:
    `{eventId, type: "status", channel, providerMessageId, status, timestamp}`."""

    type: Literal["status"]
    provider_message_id: str = Field(
        alias="providerMessageId",
        min_length=1,
        max_length=MAX_ID,
        json_schema_extra=SINGLE_LINE.schema(),
    )
    status: Literal["sent", "delivered", "read"]

    @field_validator("provider_message_id")
    @classmethod
    def _provider_id(cls, value: str) -> str:
        return single_line(value)


WebhookEvent = InboundMessageEvent | StatusEvent
_MODELS: dict[str, type[InboundMessageEvent] | type[StatusEvent]] = {
    "message": InboundMessageEvent,
    "status": StatusEvent,
}


class WebhookAck(msgspec.Struct, rename="camel"):
    """The answer to the provider: `processed`, `duplicate` (seen before: nothing changed),
    `pending` (a status event for a message not recorded as sent yet: applied when it is) or
    `expired` (an inbound message older than `RELAYBOX_WEBHOOK_EVENT_RETENTION_H`, the window in
    which events are remembered: not stored, as it may be one already processed)."""

    status: Literal["processed", "duplicate", "pending", "expired"]
    event_id: str


def _without_nul(value: Any) -> Any:
    """The payload with every U+0000 replaced (PostgreSQL's jsonb cannot hold one, not even in a
    field we ignore; the fields we read refuse it, so only ignored ones change)."""
    if isinstance(value, str):
        return value.replace("\x00", _REPLACEMENT)
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def invalid_body(exc: ValidationError) -> ApiError:
    """A 400 naming every field at fault, shaped like the API's other validation problems."""
    errors = [
        {
            "field": ".".join(str(part) for part in error["loc"]) or "body",
            "message": error["msg"].removeprefix(_VALUE_ERROR_PREFIX),
        }
        for error in exc.errors()
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return ApiError(detail, field=errors[0]["field"], errors=errors)


def json_object(body: bytes) -> dict[str, Any]:
    """The raw body as a JSON object; an ApiError (400) when it is not one."""
    try:
        payload = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ApiError(f"the request body is not valid JSON: {exc}", field="body") from None
    if not isinstance(payload, dict):
        raise ApiError("the request body must be a JSON object", field="body")
    return payload


def parse_event(body: bytes) -> tuple[WebhookEvent, dict[str, Any]]:
    """The validated event and the JSON object to store; an ApiError (400) naming the field."""
    payload = json_object(body)
    kind = payload.get("type", "message")
    model = _MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ApiError("type: must be 'message' or 'status'", field="type")
    try:
        event = model.model_validate(payload)
    except ValidationError as exc:
        raise invalid_body(exc) from None
    return event, _without_nul(payload)
