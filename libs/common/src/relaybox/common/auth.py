"""Bearer tokens: the settings and the claim rules every service that authenticates callers
applies (the API through Litestar's JWT middleware, the realtime service on its sockets).

A token is an HS256 JWT with `sub` (the caller), `exp`, a `scopes` list and the tenant in the
configured claim (`sub` by default: each subject is its own tenant).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from pydantic import BaseModel, Field

PLACEHOLDER_SECRET = "dev-insecure-secret-change-me-outside-dev"  # noqa: S105
"""Refused outside dev mode; 32+ bytes so that PyJWT does not warn about the key length in dev."""
ALGORITHM = "HS256"
MAX_TENANT = 255
TICKET_AUDIENCE = "relaybox:chat-stream"
"""The audience of stream tickets (`relaybox.common.chat.tickets`): a token naming it is a
ticket, never a bearer token (a ticket travels in a URL, where logs may keep it)."""
ADMIN_SCOPE = "admin"
USER_SCOPES = (
    "email:send",
    "email:read",
    "meta:read",
    "meta:send",
    "mailing:read",
    "mailing:send",
    "chat:read",
    "chat:write",
)
"""Every scope of a tenant's own rows."""
ALL_SCOPES = (*USER_SCOPES, ADMIN_SCOPE)
"""A dev token's scopes (`relaybox token`, `python -m relaybox.api token`)."""


class AuthSettings(BaseModel):
    """Bearer JWT (HS256), and which claim names the caller's tenant."""

    jwt_secret: str = PLACEHOLDER_SECRET
    token_ttl_s: int = Field(default=86_400, gt=0, description="lifetime of tokens made by `token`")
    tenant_claim: str = Field(
        default="sub",
        min_length=1,
        description="the claim naming the tenant that owns the caller's rows (`sub`: each "
        "subject is its own tenant; e.g. `org` for users sharing an organisation's rows)",
    )


def sign_bearer(
    settings: AuthSettings,
    subject: str,
    scopes: Sequence[str],
    *,
    ttl_s: float,
    tenant: str | None = None,
) -> str:
    """A signed HS256 bearer token (`make token`, `make chat-tail`, tests). `tenant` goes into
    the configured tenant claim (unless that claim is `sub`, the subject); default: `subject`."""
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": subject,
        "iat": int(now.timestamp()),  # the API's JWT middleware wants it
        "exp": int((now + timedelta(seconds=ttl_s)).timestamp()),
        "scopes": list(scopes),
    }
    if settings.tenant_claim != "sub":
        claims[settings.tenant_claim] = tenant or subject
    return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM)


class InvalidTokenError(ValueError):
    """A token that is not a valid caller's (the message says why, safe to show the caller)."""


@dataclass(frozen=True)
class Caller:
    """Who a verified token names."""

    id: str
    tenant: str
    scopes: frozenset[str]


def caller_of(
    sub: str, claims: Mapping[str, Any], tenant_claim: str, *, ticket: bool = False
) -> Caller:
    """The caller of a verified token's claims (its `scopes` list and tenant claim checked).
    A stream ticket is refused unless `ticket` (where a ticket is expected)."""
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if not ticket and TICKET_AUDIENCE in audiences:
        raise InvalidTokenError(
            "Invalid token: this is a stream ticket; send it as ?ticket= to the stream"
        )
    scopes = claims.get("scopes", [])
    if isinstance(scopes, str):
        scopes = scopes.split()
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise InvalidTokenError("Invalid token: 'scopes' must be a list of strings")
    tenant = sub if tenant_claim == "sub" else claims.get(tenant_claim)
    if not isinstance(tenant, str) or not 0 < len(tenant) <= MAX_TENANT:
        raise InvalidTokenError(
            f"Invalid token: the tenant claim {tenant_claim!r} must be a string of 1 to "
            f"{MAX_TENANT} characters"
        )
    return Caller(id=sub, tenant=tenant, scopes=frozenset(scopes))


def verify_bearer(token: str, settings: AuthSettings) -> Caller:
    """The caller of a bearer token, or `InvalidTokenError` (bad signature, expired, claims)."""
    return verify_bearer_until(token, settings)[0]


def verify_bearer_until(token: str, settings: AuthSettings) -> tuple[Caller, float]:
    """The caller of a bearer token and its expiry (a Unix time), or `InvalidTokenError`."""
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[ALGORITHM],
            # Like the API's middleware: an audience is not checked (a ticket's is refused).
            options={"require": ["exp", "sub"], "verify_aud": False},
        )
    except jwt.PyJWTError as exc:
        raise InvalidTokenError(f"Invalid token: {exc}") from None
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub:
        raise InvalidTokenError("Invalid token: 'sub' must be a non-empty string")
    return caller_of(sub, claims, settings.tenant_claim), float(claims["exp"])
