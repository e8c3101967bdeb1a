"""SMTP provider (aiosmtplib): 4xx and connection trouble are retryable, 5xx permanent."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib

from relaybox.common.providers.base import OutgoingEmail, PermanentError, RetryableError
from relaybox.common.settings import SmtpSettings

MESSAGE_ID_DOMAIN = "relaybox"


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
    """Sends each email over its own SMTP session."""

    name = "smtp"

    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings

    async def send(self, email: OutgoingEmail) -> str:
        s = self._settings
        try:
            await aiosmtplib.send(
                build_message(email),
                hostname=s.host,
                port=s.port,
                username=s.username,
                password=s.password,
                use_tls=s.use_tls,
                start_tls=s.start_tls,
                timeout=s.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            raise _classify(first.code, first.message) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise _classify(exc.code, exc.message) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise RetryableError(f"SMTP connection failed: {type(exc).__name__}: {exc}") from None
        return message_id_for(email.id)

    async def close(self) -> None:
        return None
