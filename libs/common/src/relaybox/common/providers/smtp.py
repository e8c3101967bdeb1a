"""SMTP provider (aiosmtplib): 4xx and connection trouble are retryable, 5xx permanent."""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage

import aiosmtplib

from relaybox.common.providers.base import OutgoingEmail, PermanentError, RetryableError
from relaybox.common.settings import SmtpSettings

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

    async def send(self, email: OutgoingEmail) -> str:
        message = build_message(email)
        async with self._slots:
            smtp, reused = await self._checkout()
            try:
                try:
                    await smtp.send_message(message)
                except aiosmtplib.SMTPServerDisconnected:
                    if not reused:
                        raise
                    # The server dropped an idle session: one more try on a fresh one.
                    smtp.close()
                    smtp, _ = await self._checkout(fresh=True)
                    await smtp.send_message(message)
            except SMTP_ERRORS as exc:
                smtp.close()
                raise _translate(exc) from None
            except BaseException:
                smtp.close()  # cancelled mid-session: never reuse it
                raise
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


def _translate(exc: Exception) -> RetryableError | PermanentError:
    """An aiosmtplib or network failure as a provider error."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        first = exc.recipients[0]
        return _classify(first.code, first.message)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _classify(exc.code, exc.message)
    return RetryableError(f"SMTP connection failed: {type(exc).__name__}: {exc}")
