"""Parsing of received SMTP messages and the bounded in-memory store that keeps them."""

from __future__ import annotations

import email
import email.policy
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage

import msgspec


class SmtpMessage(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One accepted message as the HTTP API shows it (envelope sender and recipients)."""

    id: int
    message_id: str | None
    from_: str = msgspec.field(name="from")
    to: list[str]
    subject: str | None
    text: str | None
    html: str | None
    received_at: str
    size: int


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A recorded message together with its raw bytes as received."""

    message: SmtpMessage
    raw: bytes


def _header(parsed: EmailMessage, name: str) -> str | None:
    value = parsed.get(name)
    return None if value is None else str(value)


def _body(parsed: EmailMessage, subtype: str) -> str | None:
    part = parsed.get_body(preferencelist=(subtype,))
    if part is None:
        return None
    try:
        content = part.get_content()
    except (LookupError, ValueError):  # unknown charset or a broken transfer encoding
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else None
    return content if isinstance(content, str) else None


def parse_message(seq: int, mail_from: str, rcpt_tos: list[str], raw: bytes) -> StoredMessage:
    """Turn the DATA of one SMTP transaction into a stored record."""
    parsed = email.message_from_bytes(raw, _class=EmailMessage, policy=email.policy.default)
    message = SmtpMessage(
        id=seq,
        message_id=_header(parsed, "Message-ID"),
        from_=mail_from,
        to=list(rcpt_tos),
        subject=_header(parsed, "Subject"),
        text=_body(parsed, "plain"),
        html=_body(parsed, "html"),
        received_at=datetime.now(UTC).isoformat(),
        size=len(raw),
    )
    return StoredMessage(message=message, raw=raw)


def _normalize_message_id(value: str) -> str:
    return value.strip().strip("<>").strip()


def _matches(message: SmtpMessage, to: str | None, message_id: str | None) -> bool:
    if to is not None and to.casefold() not in (rcpt.casefold() for rcpt in message.to):
        return False
    if message_id is None:
        return True
    recorded = message.message_id
    return recorded is not None and (
        _normalize_message_id(recorded) == _normalize_message_id(message_id)
    )


class MessageStore:
    """Ring buffer of received messages keyed by a sequence number (oldest dropped first)."""

    def __init__(self, max_messages: int) -> None:
        self._max = max_messages
        self._messages: OrderedDict[int, StoredMessage] = OrderedDict()
        self._seq = 0

    def __len__(self) -> int:
        return len(self._messages)

    def next_id(self) -> int:
        """Reserve the id of the next message."""
        self._seq += 1
        return self._seq

    def add(self, stored: StoredMessage) -> None:
        """Keep a message, dropping the oldest one beyond the cap."""
        self._messages[stored.message.id] = stored
        while len(self._messages) > self._max:
            self._messages.popitem(last=False)

    def get(self, message_id: int) -> StoredMessage | None:
        """The message with this sequence id, if still kept."""
        return self._messages.get(message_id)

    def find(self, *, to: str | None = None, message_id: str | None = None) -> list[SmtpMessage]:
        """Messages in arrival order, filtered by recipient and/or Message-ID header."""
        return [
            stored.message
            for stored in self._messages.values()
            if _matches(stored.message, to, message_id)
        ]

    def clear(self) -> None:
        """Forget every message (ids keep increasing)."""
        self._messages.clear()
