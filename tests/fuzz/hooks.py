"""schemathesis hooks of the fuzz runs: webhooks signed as the provider signs them.

Loaded by `schemathesis run` through `SCHEMATHESIS_HOOKS=tests.fuzz.hooks` (make fuzz) and
imported by the pytest smoke. The webhook secret comes from `RELAYBOX_FUZZ_WEBHOOK_SECRET`
(else the development default, which `make fuzz` runs the API with).

A generated `X-Hub-Signature-256` that has the documented shape (`sha256=` and 64 hex digits)
is replaced by the real HMAC of the body as sent, so the webhook's own validation is reached;
one without that shape, or no header at all (the negative cases), is sent as generated and must
be refused.
"""

from __future__ import annotations

import os
import re
from typing import Any

import requests
import schemathesis
from schemathesis import Case, HookContext

from relaybox.api.settings import DEV_WEBHOOK_SECRET
from relaybox.common.signing import SIGNATURE_HEADER, sign

SECRET_ENV = "RELAYBOX_FUZZ_WEBHOOK_SECRET"
WEBHOOK_PREFIX = "/webhooks/"
_SHAPE = re.compile(r"^sha256=[0-9a-f]{64}$")


class SignBody(requests.auth.AuthBase):
    """Puts the HMAC of the prepared request's exact body in X-Hub-Signature-256."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body
        raw = body.encode() if isinstance(body, str) else body if isinstance(body, bytes) else b""
        request.headers[SIGNATURE_HEADER] = sign(self.secret, raw)
        return request


def _should_sign(case: Case[Any]) -> bool:
    if case.method.upper() != "POST" or not case.path.startswith(WEBHOOK_PREFIX):
        return False
    value = next(
        (v for k, v in (case.headers or {}).items() if k.lower() == SIGNATURE_HEADER.lower()),
        None,
    )
    return isinstance(value, str) and _SHAPE.match(value) is not None


@schemathesis.hook
def before_call(context: HookContext, case: Case[Any], kwargs: dict[str, Any]) -> None:
    """Sign a webhook call whose generated signature has the documented shape."""
    if _should_sign(case):
        kwargs["auth"] = SignBody(os.environ.get(SECRET_ENV, DEV_WEBHOOK_SECRET))
