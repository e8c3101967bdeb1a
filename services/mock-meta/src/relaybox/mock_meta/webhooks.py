"""Signed webhook POSTs with retries, and the background tasks that run them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from relaybox.common.signing import SIGNATURE_HEADER, sign
from relaybox.mock_meta.settings import WebhookDeliverySettings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PostResult:
    """How one delivery ended: `ok` after `retries` extra attempts."""

    ok: bool
    retries: int


class WebhookSender:
    """Posts raw JSON bodies signed with `X-Hub-Signature-256`; retries non-2xx and errors."""

    def __init__(self, settings: WebhookDeliverySettings) -> None:
        self._secret = settings.webhook_secret
        self._timeout_s = settings.webhook_timeout_s
        self._attempts = settings.webhook_attempts
        self._backoff_s = settings.webhook_backoff_s
        self._client: httpx.AsyncClient | None = None

    @property
    def running(self) -> bool:
        """Whether the HTTP client is open."""
        return self._client is not None

    async def start(self) -> None:
        """Open the HTTP client; a no-op when open."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s)

    async def stop(self) -> None:
        """Close the HTTP client; a no-op when closed."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def post(self, url: str, body: bytes) -> PostResult:
        """Deliver `body` to `url`, retrying with doubling backoff up to the attempt limit."""
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self._secret, body)}
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
            if await self._attempt(url, body, headers, attempt):
                return PostResult(ok=True, retries=attempt)
        log.warning("webhook delivery gave up", extra={"url": url, "attempts": self._attempts})
        return PostResult(ok=False, retries=self._attempts - 1)

    async def _attempt(self, url: str, body: bytes, headers: dict[str, str], attempt: int) -> bool:
        if self._client is None:
            raise RuntimeError("the webhook sender is not running")
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.info(
                "webhook attempt failed",
                extra={"url": url, "attempt": attempt + 1, "error": type(exc).__name__},
            )
            return False
        if response.is_success:
            return True
        log.info(
            "webhook attempt refused",
            extra={"url": url, "attempt": attempt + 1, "status": response.status_code},
        )
        return False


class BackgroundTasks:
    """Tasks that outlive the request that started them: tracked, drainable, cancellable."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run `coro` in the background, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    async def drain(self) -> None:
        """Wait until no task is left (tasks may spawn more while waiting)."""
        while pending := [task for task in self._tasks if not task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def cancel(self) -> None:
        """Cancel every task and wait for them to end."""
        while pending := [task for task in self._tasks if not task.done()]:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook task crashed", exc_info=task.exception())
