"""Stream tickets: how a browser, which cannot set headers on a WebSocket, authenticates one.

`POST /chat/stream-tickets` (the API) signs a short-lived JWT for the caller with the same secret
as bearer tokens, but with its own audience, so a ticket is never accepted as a bearer token
(a token without an audience is never accepted as a ticket). The realtime service verifies it and
records its `jti` (`chat_stream_tickets`, `INSERT … ON CONFLICT DO NOTHING`): a ticket connects
once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from relaybox.common.auth import (
    ALGORITHM,
    TICKET_AUDIENCE,
    AuthSettings,
    Caller,
    InvalidTokenError,
    caller_of,
)

AUDIENCE = TICKET_AUDIENCE


@dataclass(frozen=True)
class Ticket:
    """A verified ticket: its caller, and the id and expiry that make it single-use."""

    caller: Caller
    jti: str
    expires_at: datetime


def issue_ticket(settings: AuthSettings, caller: Caller, ttl_s: float) -> tuple[str, datetime]:
    """A signed ticket for `caller` and when it expires."""
    now = datetime.now(UTC)
    expires_at = now + timedelta(seconds=ttl_s)
    claims = {
        "sub": caller.id,
        "aud": AUDIENCE,
        "jti": uuid.uuid4().hex,
        "iat": int(now.timestamp()),
        "exp": expires_at,
        "scopes": sorted(caller.scopes),
    }
    if settings.tenant_claim != "sub":
        claims[settings.tenant_claim] = caller.tenant
    return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM), expires_at


def verify_ticket(ticket: str, settings: AuthSettings) -> Ticket:
    """The verified ticket, or `InvalidTokenError` (bad signature, expired, not a ticket)."""
    try:
        claims = jwt.decode(
            ticket,
            settings.jwt_secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["exp", "sub", "jti", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidTokenError("the ticket expired: get a new one") from None
    except jwt.PyJWTError as exc:
        raise InvalidTokenError(f"invalid ticket: {exc}") from None
    sub, jti = claims["sub"], claims["jti"]
    if not isinstance(sub, str) or not sub or not isinstance(jti, str) or len(jti) > 64:
        raise InvalidTokenError("invalid ticket: bad 'sub' or 'jti'")
    return Ticket(
        caller=caller_of(sub, claims, settings.tenant_claim, ticket=True),
        jti=jti,
        expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
    )
