"""Reading an HTTP provider's answer: accepted or a typed error, whatever the body holds.

A provider may answer anything its contract allows. Any 2xx is an accepted send, whatever its
body (`{}`, `null`, `"ok"`, `[]`, text that is not JSON, nothing): the provider's id is read when
the body is an object that has it, and left empty when not. Only the status decides between
accepted, retryable and permanent; the body only lends a clearer error text.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from relaybox.consumer.providers.base import (
    PermanentError,
    ProviderError,
    RateLimitedError,
    RetryableError,
)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Statuses worth trying again (RFC 9110: timeout, too early, rate limit, server trouble)."""
MAX_PROVIDER_ID = 255
"""The longest provider id kept (the column's width); a longer one is not an id we can use."""
MAX_RETRY_AFTER_S = 24 * 3600.0
"""A Retry-After further away than this is taken as this (a typo must not park a provider)."""


def accepted(response: httpx.Response) -> bool:
    """Whether the provider took the request: any 2xx."""
    return 200 <= response.status_code < 300


def body_json(response: httpx.Response) -> Any:
    """The body as JSON, or None when it is empty or not JSON."""
    try:
        return response.json()
    except ValueError:  # not JSON, not UTF-8, or empty
        return None


def usable_id(value: object) -> str | None:
    """`value` as a provider id (text or a number, printable, 1-255 characters), else None."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return text if 0 < len(text) <= MAX_PROVIDER_ID and text.isprintable() else None


def provider_id(response: httpx.Response, *names: str) -> str | None:
    """The first usable id among the fields `names` of a JSON object body."""
    data = body_json(response)
    if not isinstance(data, dict):
        return None
    return next((i for name in names if (i := usable_id(data.get(name))) is not None), None)


def retry_after(response: httpx.Response, now: datetime | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP-date), if any."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def error_text(response: httpx.Response, *fields: str) -> str:
    """`HTTP <status>: <text>`, the text from the first string field of a JSON object body
    (a nested `{"error": {"message": ...}}` too), else the reason phrase. Bounded; the body is
    the provider's, never a secret of ours."""
    data = body_json(response)
    text: str | None = None
    if isinstance(data, dict):
        for name in fields:
            value = data.get(name)
            if isinstance(value, dict):
                value = value.get("message")
            elif isinstance(value, list):  # FastAPI-style validation errors: [{"msg": ...}]
                value = "; ".join(str(v.get("msg", v)) for v in value if isinstance(v, dict))
            if isinstance(value, str) and value.strip():
                text = value.strip()
                break
    return f"HTTP {response.status_code}: {text or response.reason_phrase or 'no reason'}"[:500]


def refusal(response: httpx.Response, *fields: str) -> ProviderError:
    """The typed error of an answer that is not a 2xx: 429 flow control, a retryable status,
    or a permanent refusal (any other status: 3xx, 4xx, an unknown 5xx)."""
    text = error_text(response, *fields)
    status = response.status_code
    if status == 429:
        return RateLimitedError(text, retry_after=retry_after(response))
    if status in RETRYABLE_STATUS or status >= 500:
        return RetryableError(text, retry_after=retry_after(response))
    return PermanentError(text)
