"""The provider interface: send returns (the accepted id, if any) or raises a typed error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from relaybox.common.errors import RelayboxError


class ProviderError(RelayboxError):
    """A provider refused or failed a send. `str()` never contains a secret."""


class RetryableError(ProviderError):
    """Try again later (429, 5xx, timeouts, connection errors, SMTP 4xx)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(RetryableError):
    """The provider's rate limit (429): flow control, not a failed attempt."""


class PermanentError(ProviderError):
    """Retrying cannot help (other 4xx, SMTP 5xx, invalid recipient)."""


@dataclass(frozen=True)
class OutgoingEmail:
    """An email ready for a provider; `id` is the stable idempotency key."""

    id: str
    to: str
    from_: str
    subject: str
    text: str | None = None
    html: str | None = None


class EmailProvider(Protocol):
    """Anything that can send an email."""

    name: str

    async def prepare(self) -> None:
        """Be ready to send without delay (a fresh token, ...); called before a rate-limit
        slot is booked."""
        ...

    async def send(self, email: OutgoingEmail) -> str | None:
        """Send once; return the provider's id of the accepted send, None when it gave none.
        Returns normally exactly when the provider accepted the send."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
