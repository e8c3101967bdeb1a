"""The fast MIME path renders the same message the email package builds (or steps aside)."""

from __future__ import annotations

from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP, default

import pytest

from relaybox.consumer.providers.base import OutgoingEmail
from relaybox.consumer.providers.smtp import build_message, render_simple

SIMPLE = [
    OutgoingEmail("e-1", "a@example.com", "r@example.com", "Hello", text="Hi there"),
    OutgoingEmail("e-2", "a@example.com", "r@example.com", "Two lines", text="one\ntwo\n"),
    OutgoingEmail("e-3", "a@example.com", "r@example.com", "Html", html="<p>hi</p>"),
    OutgoingEmail("e-4", "a@example.com", "r@example.com", "Both", text="plain", html="<b>x</b>"),
    OutgoingEmail("e-5", "a@example.com", "r@example.com", "Crlf", text="a\r\nb\r\n\r\nc"),
]
NOT_SIMPLE = [
    OutgoingEmail("e-6", "a@example.com", "r@example.com", "Ünïcode", text="x"),
    OutgoingEmail("e-7", "a@example.com", "r@example.com", "s", text="é"),
    OutgoingEmail("e-8", "a@example.com", "r@example.com", "s", text="x" * 200),
    OutgoingEmail("e-9", "a@example.com", "r@example.com", "=?utf-8?q?x?=", text="x"),
]


def parsed(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=default)
    assert isinstance(message, EmailMessage)
    return message


def body(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body((subtype,))
    return None if part is None else str(part.get_content())


@pytest.mark.parametrize("email", SIMPLE, ids=lambda e: e.id)
def test_the_fast_path_matches_the_email_package(email: OutgoingEmail) -> None:
    fast = render_simple(email)
    assert fast is not None
    reference = parsed(build_message(email).as_bytes(policy=SMTP))
    rendered = parsed(fast)
    for header in ("From", "To", "Subject", "Message-ID", "MIME-Version"):
        assert rendered[header] == reference[header], header
    assert rendered.get_content_type() == reference.get_content_type()
    for subtype in ("plain", "html"):
        assert body(rendered, subtype) == body(reference, subtype), subtype
    assert all(len(line) <= 78 for line in fast.split(b"\r\n"))


@pytest.mark.parametrize("email", NOT_SIMPLE, ids=lambda e: e.id)
def test_anything_else_goes_through_the_email_package(email: OutgoingEmail) -> None:
    assert render_simple(email) is None
