"""schemathesis hooks of the fuzz runs: webhooks signed as the provider signs them, and the few
failures no schema can prevent.

Loaded by `schemathesis run` through `SCHEMATHESIS_HOOKS=tests.fuzz.hooks` (`python -m
tests.fuzz`: make fuzz and the pytest smoke). The webhook secret comes from
`RELAYBOX_FUZZ_WEBHOOK_SECRET` (else the development default).

A generated `X-Hub-Signature-256` that has the documented shape (`sha256=` and 64 hex digits)
is replaced by the real HMAC of the body as sent, so the webhook's own validation is reached;
one without that shape, or no header at all (the negative cases), is sent as generated and must
be refused.

`filter_failure` drops a "schema-valid request rejected" (positive_data_acceptance) failure only
where validity depends on something a JSON Schema cannot state, each named by the problem's
`field` or `detail`:
- `cursor` (400): an opaque keyset cursor is valid only if the API issued it;
- `file` of POST /mailings (400, 415): a CSV's content (an `email` column, text not binary);
- 422 for an `Idempotency-Key` reused with another body: the key's earlier use is server state.
Every other check, and every other status of these operations, still counts.

It also drops a "schema-violating request accepted" (negative_data_rejection) failure whose only
negated part is the body when that body, as sent, is valid against the operation's schema:
schemathesis's generator negates one branch of an `anyOf`/`not` and takes the result as invalid
though another branch accepts it, and it takes an array in a multipart form for a wrong type
though the form sends it as that field repeated (an empty array: no field at all) — the API
accepting a valid body is right.

`map_body` turns half of the generated mailing files into small CSV lists of addresses (the rest
stay as generated, binary included), so the fuzzer also reaches what lies past the file check
(202 and 200 answers, idempotency, the mailing's own routes).

`RELAYBOX_FUZZ_FILTER_LOG=<file>` appends one line per dropped failure (the reason, the operation
and the status), for counting what the filters took.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import requests
import schemathesis
from schemathesis import Case, HookContext, Response
from schemathesis.core.failures import AcceptedNegativeData, Failure
from schemathesis.core.jsonschema import make_validator
from schemathesis.core.parameters import ParameterLocation
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.transport.serialization import Binary

from relaybox.common.signing import DEV_WEBHOOK_SECRET, SIGNATURE_HEADER, sign

SECRET_ENV = "RELAYBOX_FUZZ_WEBHOOK_SECRET"
FILTER_LOG_ENV = "RELAYBOX_FUZZ_FILTER_LOG"
MAILINGS = "/mailings"
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


def _problem(response: Response) -> dict[str, Any]:
    try:
        body = json.loads(response.content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def state_or_content_decides(case: Case[Any], response: Response) -> str | None:
    """Why no request schema could have prevented this rejection, if so (see the module doc)."""
    problem = _problem(response)
    field, status = problem.get("field"), response.status_code
    if status == 400 and field == "cursor":
        return "opaque cursor"
    if case.method.upper() == "POST" and case.path == MAILINGS and field == "file":
        return "file content" if status in (400, 415) else None
    if status == 422 and "Idempotency-Key" in str(problem.get("detail", "")):
        return "Idempotency-Key reused"
    return None


def _dropped(reason: str, case: Case[Any], response: Response) -> bool:
    if path := os.environ.get(FILTER_LOG_ENV):
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"{reason}\t{case.method.upper()} {case.path}\t{response.status_code}\n")
    return False


def _as_sent(media_type: str, body: Any) -> Any:
    """The body as the API receives it. A multipart form has no arrays: a list is the same field
    sent once per item, so an empty list sends no field at all and a one-item list one plain
    value; a file part (`Binary`) is a string of bytes (JSON Schema's `format: binary`)."""
    if not media_type.startswith("multipart/") or not isinstance(body, dict):
        return body
    sent: dict[str, Any] = {}
    for name, value in body.items():
        parts = value if isinstance(value, list) else [value]
        parts = ["<bytes>" if isinstance(part, Binary) else part for part in parts]
        if parts:
            sent[name] = parts[0] if len(parts) == 1 else parts
    return sent


def valid_body_taken_for_invalid(case: Case[Any]) -> bool:
    """The case's only negated part is its body, and that body, as sent, is valid after all."""
    meta = case.meta
    if meta is None or case.media_type is None:
        return False
    negated = {loc for loc, info in meta.components.items() if info.mode.is_negative}
    if negated != {ParameterLocation.BODY}:
        return False
    alternative = case.operation.get_body_for_media_type(case.media_type)
    if alternative is None:
        return False
    validator_cls = case.operation.schema.adapter.jsonschema_validator_cls
    validator = make_validator(alternative.optimized_schema, validator_cls)
    return bool(validator.is_valid(_as_sent(case.media_type, case.body)))


@schemathesis.hook
def filter_failure(
    context: HookContext, failure: Failure, case: Case[Any], response: Response
) -> bool:
    """Keep every failure but those the module doc names."""
    if isinstance(failure, RejectedPositiveData):
        reason = state_or_content_decides(case, response)
        return _dropped(reason, case, response) if reason else True
    if isinstance(failure, AcceptedNegativeData) and valid_body_taken_for_invalid(case):
        return _dropped("valid body taken for invalid", case, response)
    return True


@schemathesis.hook
def map_body(context: HookContext, body: Any) -> Any:
    """Half of the generated mailing files become small CSV lists (see the module doc)."""
    operation = context.operation
    if operation is None or operation.method.upper() != "POST" or operation.path != MAILINGS:
        return body
    file = body.get("file") if isinstance(body, dict) else None
    data = file.data if isinstance(file, Binary) else file
    if not isinstance(data, bytes):
        return body
    digest = hashlib.sha256(data).hexdigest()
    if int(digest[0], 16) % 2:
        return body
    addresses = "".join(f"user{digest[i : i + 6]}@example.com\n" for i in range(0, 18, 6))
    return {**body, "file": Binary(f"email\n{addresses}".encode())}
