"""Bearer JWT authentication (HS256) and the scope each route requires."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException
from litestar.middleware._utils import should_bypass_middleware
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token
from litestar.types import Receive, Scope, Send
from sqlalchemy import ColumnElement, true
from sqlalchemy.orm import InstrumentedAttribute

from relaybox.api.settings import PLACEHOLDER_SECRET, ApiSettings
from relaybox.common.auth import ADMIN_SCOPE as ADMIN_SCOPE
from relaybox.common.auth import ALL_SCOPES as ALL_SCOPES
from relaybox.common.auth import USER_SCOPES as USER_SCOPES
from relaybox.common.auth import InvalidTokenError, caller_of, sign_bearer
from relaybox.common.errors import RelayboxError
from relaybox.common.signing import DEV_WEBHOOK_SECRET

PUBLIC_PATHS = ["/health", "/ready", "/metrics", "/api", "/schema", "/webhooks/"]
MIN_SECRET_BYTES = 32
SCOPE = "scope"  # opt key: the token scope a route requires
RATE_LIMITED = "rate_limited"  # opt key: the route spends the per-client send budget


class InsecureSecretError(RelayboxError):
    """The JWT secret is the placeholder or too short, outside dev mode."""


@dataclass(frozen=True)
class Client:
    """The authenticated caller: the token's subject, the tenant whose rows it may see and
    change, and its scopes. An `admin` sees every tenant's rows."""

    id: str
    scopes: frozenset[str]
    tenant: str

    @property
    def admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    @property
    def key_owner(self) -> str:
        """Whose Idempotency-Keys these are: the subject *in its tenant* (the same `sub` in
        another organisation is someone else: its keys neither replay nor refuse this one's).
        The subject alone when it is its own tenant (the default claim); else a digest that fits
        the key table's column."""
        if self.tenant == self.id:
            return self.id
        return hashlib.sha256(f"{self.tenant}\x1f{self.id}".encode()).hexdigest()

    @property
    def tenant_filter(self) -> str | None:
        """The tenant the caller's reads are limited to; None for an admin (every tenant)."""
        return None if self.admin else self.tenant


def owned_by(column: InstrumentedAttribute[str], client: Client) -> ColumnElement[bool]:
    """The SQL condition "this row is the caller's to see": its tenant's, or any for an admin.
    Another tenant's row then reads as missing (404), never as forbidden."""
    return true() if client.admin else column == client.tenant


def check_secret(settings: ApiSettings) -> None:
    """Refuse placeholder (or short) secrets unless dev mode is on."""
    secret = settings.auth.jwt_secret
    if settings.dev_mode:
        return
    if secret == PLACEHOLDER_SECRET:
        raise InsecureSecretError(
            "RELAYBOX_AUTH__JWT_SECRET is the development placeholder; set a real secret "
            "or RELAYBOX_DEV_MODE=true"
        )
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise InsecureSecretError(
            f"RELAYBOX_AUTH__JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes"
        )
    for name, webhook_secret in (
        ("RELAYBOX_META__WEBHOOK_SECRET", settings.meta.webhook_secret),
        ("RELAYBOX_PUSH__WEBHOOK_SECRET", settings.push.webhook_secret),
    ):
        if webhook_secret == DEV_WEBHOOK_SECRET:
            raise InsecureSecretError(
                f"{name} is the development default; set the provider's signing secret or "
                "RELAYBOX_DEV_MODE=true"
            )


def client_retriever(
    tenant_claim: str,
) -> Callable[[Token, ASGIConnection[Any, Any, Any, Any]], Awaitable[Client]]:
    """Litestar's `retrieve_user_handler`: the caller of a verified token (else a 401)."""

    async def retrieve(token: Token, _connection: ASGIConnection[Any, Any, Any, Any]) -> Client:
        try:
            caller = caller_of(token.sub, {**token.extras, "aud": token.aud}, tenant_claim)
        except InvalidTokenError as exc:
            raise NotAuthorizedException(str(exc)) from None
        return Client(id=caller.id, scopes=caller.scopes, tenant=caller.tenant)

    return retrieve


class CachingJWTAuthenticationMiddleware(JWTAuthenticationMiddleware):
    """Litestar's JWT middleware that verifies each distinct token once, not on every request.

    A verified token is remembered (by its exact text, signature included) with its client until
    its `exp`; only expiry can turn a verified HS256 token invalid, so a remembered one is
    re-checked for that alone. Anything that fails verification is never remembered.
    """

    max_tokens = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._verified: dict[str, tuple[float, AuthenticationResult]] = {}
        self._header = self.auth_header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request bearing a token verified before (the common case) is let through here,
        from the raw headers; anything else takes Litestar's way (which builds a connection and
        its headers object first, a few percent of a POST /send)."""
        if scope["type"] == ScopeType.HTTP and (known := self._remembered(scope)) is not None:
            if not should_bypass_middleware(
                exclude_http_methods=self.exclude_http_methods,
                exclude_opt_key=self.exclude_opt_key,
                exclude_path_pattern=self.exclude,
                scope=scope,
                scopes=self.scopes,
            ):
                scope["user"] = known.user
                scope["auth"] = known.auth
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def _remembered(self, scope: Scope) -> AuthenticationResult | None:
        """The verification of the request's token if it is remembered and not expired (read
        as Litestar reads it: the first such header, the text after its first space)."""
        for name, value in scope["headers"]:
            if name == self._header:
                token = value.decode("latin-1").partition(" ")[-1]
                known = self._verified.get(token)
                if known is not None and time.time() < known[0]:
                    return known[1]
                return None
        return None

    async def authenticate_token(
        self, encoded_token: str, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        known = self._verified.get(encoded_token)
        if known is not None:
            if time.time() < known[0]:
                return known[1]
            del self._verified[encoded_token]
        result = await super().authenticate_token(encoded_token, connection)
        if len(self._verified) >= self.max_tokens:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[encoded_token] = (result.auth.exp.timestamp(), result)
        return result


def jwt_auth(settings: ApiSettings) -> JWTAuth[Client, Token]:
    """Litestar's JWT middleware config; public paths and webhooks are excluded."""
    return JWTAuth[Client, Token](
        token_secret=settings.auth.jwt_secret,
        retrieve_user_handler=client_retriever(settings.auth.tenant_claim),
        algorithm="HS256",
        exclude=[f"^{p}" for p in PUBLIC_PATHS],
        exclude_opt_key="public",
        authentication_middleware_class=CachingJWTAuthenticationMiddleware,
    )


def requires(scope: str, *, rate_limited: bool = False) -> dict[str, Any]:
    """A route's `opt`: callers need a token with `scope` (else 403) and, with `rate_limited`,
    spend the per-client send budget (else 429). Enforced by
    `relaybox.api.middleware.access_policy_middleware`, after authentication."""
    opt: dict[str, Any] = {SCOPE: scope}
    if rate_limited:
        opt[RATE_LIMITED] = True
    return opt


def issue_token(
    settings: ApiSettings,
    subject: str,
    scopes: tuple[str, ...] = ALL_SCOPES,
    ttl_s: int | None = None,
    tenant: str | None = None,
) -> str:
    """A signed HS256 token (for `make run`'s dev token and for tests). `tenant` goes into the
    configured tenant claim (unless that claim is `sub`, the subject)."""
    return sign_bearer(
        settings.auth, subject, scopes, ttl_s=ttl_s or settings.auth.token_ttl_s, tenant=tenant
    )
