"""Bearer tokens of the email API mock: HS256 JWTs signed with a per-process key, revocable."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

import msgspec

from relaybox.mock_meta.meta.state import Clock

_HEADER = {"alg": "HS256", "typ": "JWT"}


class Claims(msgspec.Struct, frozen=True, kw_only=True):
    """What a token carries; `gen` ties it to the revocation generation it was issued in."""

    sub: str
    iat: float
    exp: float
    jti: str
    gen: int


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if that is its shape."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


class TokenIssuer:
    """Issues and checks tokens; expiry is measured on the injected clock."""

    def __init__(self, clock: Clock, key: bytes | None = None) -> None:
        self._clock = clock
        self._key = key if key is not None else secrets.token_bytes(32)
        self._generation = 0

    def issue(self, subject: str, ttl_s: int) -> str:
        """A new token valid for `ttl_s` seconds from now."""
        now = self._clock()
        claims = Claims(
            sub=subject, iat=now, exp=now + ttl_s, jti=secrets.token_hex(8), gen=self._generation
        )
        signing_input = (
            f"{_b64encode(msgspec.json.encode(_HEADER))}.{_b64encode(msgspec.json.encode(claims))}"
        )
        return f"{signing_input}.{_b64encode(self._sign(signing_input))}"

    def verify(self, token: str | None) -> Claims | None:
        """The claims of a well-signed, unexpired, unrevoked token; None otherwise."""
        if token is None:
            return None
        parts = token.split(".")
        if len(parts) != 3:
            return None
        header, payload, signature = parts
        try:
            given = _b64decode(signature)
            expected = self._sign(f"{header}.{payload}")
            if not hmac.compare_digest(given, expected):
                return None
            if msgspec.json.decode(_b64decode(header)) != _HEADER:
                return None
            claims = msgspec.json.decode(_b64decode(payload), type=Claims)
        except (binascii.Error, ValueError, msgspec.DecodeError):
            return None
        if claims.gen != self._generation or self._clock() >= claims.exp:
            return None
        return claims

    def revoke_all(self) -> None:
        """Invalidate every token issued so far."""
        self._generation += 1

    def _sign(self, signing_input: str) -> bytes:
        return hmac.new(self._key, signing_input.encode("ascii"), hashlib.sha256).digest()
