"""Broker connections: robust (auto-reconnecting) and retried with backoff on first connect."""

from __future__ import annotations

import logging

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential,
)

from relaybox.common.errors import RelayboxError

log = logging.getLogger(__name__)


class BrokerUnreachableError(RelayboxError):
    """RabbitMQ could not be reached."""


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


async def connect(
    url: str, *, attempts: int | None = None, name: str = "relaybox"
) -> AbstractRobustConnection:
    """Connect with exponential backoff; `attempts=None` retries forever (long-running workers)."""

    retrying = AsyncRetrying(
        retry=retry_if_exception_type((OSError, ConnectionError, aio_pika.exceptions.AMQPError)),
        wait=wait_exponential(multiplier=0.2, max=5),
        stop=stop_after_attempt(attempts) if attempts else stop_never,
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                return await aio_pika.connect_robust(
                    url, client_properties={"connection_name": name}
                )
    except (OSError, ConnectionError, aio_pika.exceptions.AMQPError) as exc:
        raise BrokerUnreachableError(f"cannot connect to RabbitMQ at {redact(url)}: {exc}") from exc
    raise AssertionError("unreachable")  # pragma: no cover
