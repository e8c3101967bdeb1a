"""What the consumer files of a dead message: the reason, the attempts, JSON-safe headers, no
secret, and a fingerprint that names the same message alike."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from relaybox.common.messaging.topology import CHAT_DELIVER, EMAIL_SEND
from relaybox.consumer.deadletters import Death, _jsonb, death_of


class Message:
    """The parts of an incoming AMQP message the intake reads."""

    def __init__(self, body: bytes, headers: dict[str, Any], route: str = EMAIL_SEND) -> None:
        self.body = body
        self.headers = headers
        self.routing_key = route
        self.message_id = "m-1"


def test_rabbitmqs_delivery_limit_death_is_said_in_words_with_its_attempts() -> None:
    headers = {
        "x-delivery-count": 5,
        "x-death": [
            {
                "reason": "delivery_limit",
                "queue": "email.send",
                "time": datetime(2026, 11, 29, tzinfo=UTC),
                "routing-keys": [b"email.send"],
                "count": 1,
            }
        ],
    }
    death = death_of(Message(b'{"id": "e-1", "token": "secret"}', headers))  # type: ignore[arg-type]
    assert death.error is not None
    assert death.error.startswith("redelivered past the queue's delivery limit")
    assert "(queue email.send)" in death.error
    assert death.attempts == 6
    assert death.payload == {"id": "e-1"} and death.row_id == "e-1"
    json.dumps(death.headers)  # datetimes and bytes made JSON-safe
    assert death.headers["x-death"][0]["routing-keys"] == ["email.send"]


def test_a_handlers_reason_and_attempts_win() -> None:
    headers = {"x-last-error": "HTTP 500", "x-attempts": 3, "x-delivery-count": 0}
    body = b'{"messageId": "c-1", "recipients": ["bob"]}'
    death = death_of(Message(body, headers, CHAT_DELIVER))  # type: ignore[arg-type]
    assert (death.error, death.attempts, death.row_id) == ("HTTP 500", 3, "c-1")
    poison = death_of(Message(b"\xff not json", {}), "unprocessable: bad")  # type: ignore[arg-type]
    assert poison.error == "unprocessable: bad" and poison.attempts == 1
    assert poison.payload == {"body": "\ufffd not json"} and poison.row_id is None


def test_the_fingerprint_ignores_key_order_and_secrets_and_nul_is_storable() -> None:
    one = Death(EMAIL_SEND, {"a": 1, "b": 2}, {}, None, 1, "x")
    two = Death(EMAIL_SEND, {"b": 2, "a": 1}, {"other": True}, "e", 2, "y")
    assert one.fingerprint == two.fingerprint
    assert Death(CHAT_DELIVER, {"a": 1, "b": 2}, {}, None, 1, "x").fingerprint != one.fingerprint
    scrubbed = death_of(Message(b'{"id": "e", "token": "t"}', {}))  # type: ignore[arg-type]
    assert scrubbed.fingerprint == death_of(Message(b'{"id": "e"}', {})).fingerprint  # type: ignore[arg-type]
    assert "\\u0000" not in _jsonb({"text": "a\x00b"})
