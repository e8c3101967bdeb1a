"""Webhook signatures: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Hub-Signature-256"
DEV_WEBHOOK_SECRET = "dev-mock-meta-webhook-secret"  # noqa: S105 - refused outside dev mode
"""The development signing secret mock-meta signs with and the API checks (`make run`)."""
_PREFIX = "sha256="


def sign(secret: str, body: bytes) -> str:
    """The header value for `body`."""
    return _PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """True if `header` is the signature of `body` (constant-time comparison)."""
    if not header or not header.startswith(_PREFIX):
        return False
    return hmac.compare_digest(sign(secret, body), header)


DEV_PUSH_SERVER_KEY = "dev-mock-push-server-key"
"""The development server key of the push gateway: mock-meta checks it, the consumer sends it."""
