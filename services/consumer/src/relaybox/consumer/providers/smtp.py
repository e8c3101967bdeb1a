"""SMTP provider: 4xx and connection trouble are retryable, 5xx permanent."""

from __future__ import annotations

import asyncio
import random
import re
import sys
import time
from email.message import EmailMessage

from aiosmtplib.email import extract_recipients, extract_sender, flatten_message, parse_address
from pydantic import BaseModel, Field

from relaybox.consumer.providers.base import OutgoingEmail, PermanentError, RetryableError
from relaybox.consumer.providers.smtp_session import (
    SessionLostError,
    SessionSettings,
    SmtpReplyError,
    SmtpSession,
    SmtpSessionError,
)


class SmtpSettings(BaseModel):
    """An SMTP relay."""

    host: str = "127.0.0.1"
    port: int = 1025
    username: str | None = None
    password: str | None = None
    use_tls: bool = False
    start_tls: bool = False
    timeout_s: float = Field(default=10.0, gt=0)
    pool_size: int = Field(
        default=16,
        ge=1,
        description="SMTP sessions at most open at once, kept and reused (each send holds one "
        "for its two round trips: the rate a replica can reach is about pool_size / (2 x the "
        "relay's round trip); Postfix's default for one destination is 20)",
    )
    idle_s: float = Field(default=30.0, gt=0, description="reopen a session idle this long")


MESSAGE_ID_DOMAIN = "relaybox"
SMTP_ERRORS = (SmtpReplyError, SmtpSessionError, OSError, EOFError, TimeoutError)


def message_id_for(email_id: str) -> str:
    """The RFC 5322 Message-ID of an email: stable across retries so receivers can de-duplicate."""
    return f"<{email_id}@{MESSAGE_ID_DOMAIN}>"


def build_message(email: OutgoingEmail) -> EmailMessage:
    """A MIME message: text, html or both (multipart/alternative)."""
    message = EmailMessage()
    message["From"] = email.from_
    message["To"] = email.to
    message["Subject"] = email.subject
    message["Message-ID"] = message_id_for(email.id)
    if email.text is not None:
        message.set_content(email.text)
        if email.html is not None:
            message.add_alternative(email.html, subtype="html")
    else:
        message.set_content(email.html or "", subtype="html")
    return message


# The common case is rendered straight to bytes: exactly what `build_message` flattened for
# SMTP gives (the email package's own output, byte for byte), without its header parsing and
# folding, about a millisecond per message. It covers ASCII headers that need no folding and
# ASCII bodies whose lines fit (7bit); anything else takes the email package's general path.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_SIMPLE_TEXT = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")  # words, single spaces
_SIMPLE_ID = re.compile(r"[A-Za-z0-9-]+")  # a uuid
_MAX_LINE = 78  # email.policy.SMTP.max_line_length: longer lines get folded or encoded
_BOUNDARY_DIGITS = len(repr(sys.maxsize - 1))  # as email.generator makes boundaries


def render_simple(email: OutgoingEmail) -> bytes | None:
    """The message `build_message` describes, as SMTP DATA, or None outside the simple case."""
    headers = (
        ("From", email.from_),
        ("To", email.to),
        ("Subject", email.subject),
        ("Message-ID", message_id_for(email.id)),
    )
    if not (
        _SIMPLE_ADDRESS.fullmatch(email.from_)
        and _SIMPLE_ADDRESS.fullmatch(email.to)
        and _SIMPLE_TEXT.fullmatch(email.subject)
        and "=?" not in email.subject  # would read as an encoded word
        and _SIMPLE_ID.fullmatch(email.id)
        and all(len(name) + 2 + len(value) <= _MAX_LINE for name, value in headers)
    ):
        return None
    bodies = [
        (subtype, _seven_bit(body))
        for subtype, body in (("plain", email.text), ("html", email.html))
        if body is not None
    ]
    parts = [(subtype, body) for subtype, body in bodies if body is not None]
    if not parts or len(parts) != len(bodies):
        return None
    head = "".join(f"{name}: {value}\r\n" for name, value in headers).encode()
    if len(parts) == 1:
        subtype, body = parts[0]
        return head + _part_head(subtype) + b"MIME-Version: 1.0\r\n\r\n" + body
    (_, text), (_, html) = parts
    boundary = _boundary(text + html)
    return b"".join(
        (
            head,
            b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n",
            b' boundary="%s"\r\n\r\n--%s\r\n' % (boundary, boundary),
            _part_head("plain") + b"\r\n" + text,
            b"\r\n--%s\r\n" % boundary,
            _part_head("html") + b"MIME-Version: 1.0\r\n\r\n" + html,
            b"\r\n--%s--\r\n" % boundary,
        )
    )


def _part_head(subtype: str) -> bytes:
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n'
    ).encode()


def _seven_bit(body: str) -> bytes | None:
    """A text part's 7bit payload (CRLF lines), or None when it needs another encoding."""
    if not body.isascii():
        return None
    lines = body.encode().splitlines()
    if any(len(line) > _MAX_LINE for line in lines):
        return None
    return b"\r\n".join(lines) + b"\r\n"


def _boundary(payloads: bytes) -> bytes:
    """A multipart boundary made as email.generator makes one (random, checked the same way)."""
    base = b"=" * 15 + str(random.randrange(sys.maxsize)).zfill(_BOUNDARY_DIGITS).encode() + b"=="
    boundary, counter = base, 0
    while re.search(b"^--" + re.escape(boundary) + b"(--)?$", payloads, re.MULTILINE):
        boundary, counter = b"%s.%d" % (base, counter), counter + 1
    return boundary


def _classify(code: int, message: str) -> RetryableError | PermanentError:
    text = f"SMTP {code}: {message}"
    return RetryableError(text) if 400 <= code < 500 else PermanentError(text)


class SmtpProvider:
    """Sends over a small pool of SMTP sessions that stay open between emails (pipelined
    when the server offers it: `smtp_session`)."""

    name = "smtp"

    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings
        self._session_settings = SessionSettings(
            host=settings.host,
            port=settings.port,
            timeout_s=settings.timeout_s,
            use_tls=settings.use_tls,
            start_tls=settings.start_tls,
            username=settings.username,
            password=settings.password,
        )
        self._idle: list[tuple[SmtpSession, float]] = []
        self._slots = asyncio.Semaphore(settings.pool_size)

    async def prepare(self) -> None:
        """Nothing to do ahead: sessions are opened (and kept) by `send`."""

    async def send(self, email: OutgoingEmail) -> str:
        raw = render_simple(email)
        async with self._slots:
            session, reused = await self._checkout()
            try:
                try:
                    await _transmit(session, email, raw)
                except SessionLostError:
                    if not reused:
                        raise
                    # The server dropped an idle session before taking anything of the
                    # message: one more try on a fresh one.
                    session.close()
                    session, _ = await self._checkout(fresh=True)
                    await _transmit(session, email, raw)
            except SMTP_ERRORS as exc:
                session.close()  # never reuse a session after an unexpected reply
                raise _translate(exc) from None
            except BaseException:
                session.close()  # cancelled mid-session: never reuse it
                raise
            else:
                self._idle.append((session, time.monotonic()))
        return message_id_for(email.id)

    async def _checkout(self, *, fresh: bool = False) -> tuple[SmtpSession, bool]:
        """An open session: the most recently used idle one, else a new connection."""
        now = time.monotonic()
        while self._idle and not fresh:
            session, last_used = self._idle.pop()
            if session.usable and now - last_used < self._settings.idle_s:
                return session, True
            session.close()
        try:
            return await SmtpSession.open(self._session_settings), False
        except SMTP_ERRORS as exc:
            raise _translate(exc) from None

    async def close(self) -> None:
        while self._idle:
            session, _ = self._idle.pop()
            await session.quit()


async def _transmit(session: SmtpSession, email: OutgoingEmail, raw: bytes | None) -> None:
    """One mail transaction, with the envelope and options aiosmtplib's `send_message` would
    use: BODY=8BITMIME when offered, SMTPUTF8 when an address needs it. The pre-rendered
    message goes as it is; otherwise the email package builds and flattens it."""
    options = ["BODY=8BITMIME"] if session.supports("8BITMIME") else []
    if raw is not None:  # simple addresses: nothing to parse out of them
        await session.transaction(email.from_, [email.to], raw, options)
        return
    message = build_message(email)
    sender = extract_sender(message)
    recipients = extract_recipients(message)
    if sender is None or not recipients:
        raise ValueError("the message names no sender or no recipient")
    addresses = [parse_address(a) for a in (sender, *recipients)]
    utf8 = not all(a.isascii() for a in addresses)
    if utf8:
        if not session.supports("SMTPUTF8"):
            raise SmtpSessionError("an address needs SMTPUTF8, which the server does not offer")
        options.append("SMTPUTF8")
    cte_type = "8bit" if session.supports("8BITMIME") else "7bit"
    flat = flatten_message(message, utf8=utf8, cte_type=cte_type)
    await session.transaction(addresses[0], addresses[1:], flat, options)


def _translate(exc: BaseException) -> RetryableError | PermanentError:
    """A negative reply or a network failure as a provider error."""
    if isinstance(exc, SmtpReplyError):
        return _classify(exc.code, exc.text)
    return RetryableError(f"SMTP connection failed: {type(exc).__name__}: {exc}")
