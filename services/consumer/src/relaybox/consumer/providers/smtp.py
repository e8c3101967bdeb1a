"""SMTP provider (aiosmtplib): 4xx and connection trouble are retryable, 5xx permanent."""

from __future__ import annotations

import asyncio
import random
import re
import sys
import time
from email.message import EmailMessage

import aiosmtplib
from pydantic import BaseModel, Field

from relaybox.consumer.providers.base import OutgoingEmail, PermanentError, RetryableError


class SmtpSettings(BaseModel):
    """An SMTP relay."""

    host: str = "127.0.0.1"
    port: int = 1025
    username: str | None = None
    password: str | None = None
    use_tls: bool = False
    start_tls: bool = False
    timeout_s: float = Field(default=10.0, gt=0)
    pool_size: int = Field(default=4, ge=1, description="SMTP sessions kept open and reused")
    idle_s: float = Field(default=30.0, gt=0, description="reopen a session idle this long")


MESSAGE_ID_DOMAIN = "relaybox"
SMTP_ERRORS = (aiosmtplib.SMTPException, OSError, TimeoutError)


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


def _completed(code: int) -> bool:
    return 200 <= code < 300


def _classify(code: int, message: str) -> RetryableError | PermanentError:
    text = f"SMTP {code}: {message}"
    return RetryableError(text) if 400 <= code < 500 else PermanentError(text)


class SmtpProvider:
    """Sends over a small pool of SMTP sessions that stay open between emails."""

    name = "smtp"

    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._slots = asyncio.Semaphore(settings.pool_size)

    async def prepare(self) -> None:
        """Nothing to do ahead: sessions are opened (and kept) by `send`."""

    async def send(self, email: OutgoingEmail) -> str:
        raw = render_simple(email)
        async with self._slots:
            smtp, reused = await self._checkout()
            try:
                try:
                    await _transmit(smtp, email, raw)
                except aiosmtplib.SMTPServerDisconnected:
                    if not reused:
                        raise
                    # The server dropped an idle session: one more try on a fresh one.
                    smtp.close()
                    smtp, _ = await self._checkout(fresh=True)
                    await _transmit(smtp, email, raw)
            except aiosmtplib.SMTPDataError as exc:
                smtp.close()  # never reuse a session after an unexpected reply
                if not _completed(exc.code):
                    raise _translate(exc) from None
                # Any 2yz reply means "completed" (RFC 5321 4.2.1): the server took the message.
            except SMTP_ERRORS as exc:
                smtp.close()
                raise _translate(exc) from None
            except BaseException:
                smtp.close()  # cancelled mid-session: never reuse it
                raise
            else:
                self._idle.append((smtp, time.monotonic()))
        return message_id_for(email.id)

    async def _checkout(self, *, fresh: bool = False) -> tuple[aiosmtplib.SMTP, bool]:
        """An open session: the most recently used idle one, else a new connection."""
        now = time.monotonic()
        while self._idle and not fresh:
            smtp, last_used = self._idle.pop()
            if smtp.is_connected and now - last_used < self._settings.idle_s:
                return smtp, True
            smtp.close()
        s = self._settings
        smtp = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username,
            password=s.password,
            use_tls=s.use_tls,
            start_tls=s.start_tls,
            timeout=s.timeout_s,
        )
        try:
            await smtp.connect()
        except SMTP_ERRORS as exc:
            smtp.close()
            raise _translate(exc) from None
        return smtp, False

    async def close(self) -> None:
        while self._idle:
            smtp, _ = self._idle.pop()
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                smtp.close()


async def _transmit(smtp: aiosmtplib.SMTP, email: OutgoingEmail, raw: bytes | None) -> None:
    """One mail transaction. The pre-rendered message goes as `send_message` would send it
    (same envelope, BODY=8BITMIME when offered) once the session has greeted; otherwise (or
    outside the simple case) `send_message` builds and sends it, greeting first."""
    if raw is not None and not smtp.is_ehlo_or_helo_needed:
        options = ["BODY=8BITMIME"] if smtp.supports_extension("8BITMIME") else []
        await smtp.sendmail(email.from_, [email.to], raw, mail_options=options)
    else:
        await smtp.send_message(build_message(email))


def _translate(exc: Exception) -> RetryableError | PermanentError:
    """An aiosmtplib or network failure as a provider error."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        first = exc.recipients[0]
        return _classify(first.code, first.message)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _classify(exc.code, exc.message)
    return RetryableError(f"SMTP connection failed: {type(exc).__name__}: {exc}")
