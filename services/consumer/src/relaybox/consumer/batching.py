"""Group commit for the hot transitions: the claims (or SENT records) asked for while one
statement runs go together in the next one.

A consumer handles up to `prefetch` messages at once, and the messages of one publisher batch
arrive together, so their claims (and, a few milliseconds later, their SENT records) would be
as many single-row statements, each a round trip and a commit. A `Coalescer` runs the first
request at once and, while its statement runs, gathers the requests that arrive into the next
one: no waiting is added when the consumer is idle, and the busier it is, the more rows each
statement moves (the group commit of a database log).

Each request keeps its own outcome: the statement answers per row, and a statement that fails
for anything but a lost database (a bad id in one message, say) is run again for each request
alone, so one message's error is its own and never another's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
R = TypeVar("R")

log = logging.getLogger(__name__)

MAX_BATCH = 256
"""Requests per statement at most (a statement's arrays stay small)."""


class Coalescer(Generic[K, R]):
    """Runs `many(requests)` for the requests gathered while the previous call ran, one call at
    a time; `many` answers one result per request, in order. A batch of one, or a batch whose
    call failed with an error that is not `shared` by all, runs `one(request)` per request."""

    def __init__(
        self,
        many: Callable[[Sequence[K]], Awaitable[Sequence[R]]],
        one: Callable[[K], Awaitable[R]],
        *,
        shared: Callable[[BaseException], bool] = lambda _exc: False,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._many = many
        self._one = one
        self._shared = shared  # e.g. a lost database: every request of the batch fails with it
        self._max_batch = max_batch
        self._waiting: list[tuple[K, asyncio.Future[R]]] = []
        self._running: asyncio.Task[None] | None = None

    async def submit(self, request: K) -> R:
        """The result of `request`, run with the others gathered meanwhile."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._running is None:
            self._running = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                # A request whose caller gave up before its statement ran is not run.
                batch = [(request, future) for request, future in batch if not future.done()]
                if batch:
                    await self._run(batch)
        finally:
            self._running = None
            for _, future in self._waiting:  # left only if the drain was cancelled
                future.cancel()
            self._waiting.clear()

    async def _run(self, batch: list[tuple[K, asyncio.Future[R]]]) -> None:
        try:
            if len(batch) > 1:
                try:
                    results = await self._many([request for request, _ in batch])
                except Exception as exc:  # noqa: BLE001 - shared, or each alone below
                    if self._shared(exc):
                        for _, future in batch:
                            _settle(future, error=exc)
                        return
                    # One request's error must stay its own: each runs alone.
                    log.debug("a batched statement failed; running its requests one by one")
                else:
                    for (_, future), result in zip(batch, results, strict=True):
                        _settle(future, result=result)
                    return
            await asyncio.gather(*(self._alone(request, future) for request, future in batch))
        except BaseException:  # cancelled (the loop is closing): no caller waits forever
            for _, future in batch:
                if not future.done():
                    future.cancel()
            raise

    async def _alone(self, request: K, future: asyncio.Future[R]) -> None:
        try:
            result = await self._one(request)
        except Exception as exc:  # noqa: BLE001 - handed to the request's caller
            _settle(future, error=exc)
        else:
            _settle(future, result=result)


def _settle(
    future: asyncio.Future[R], *, result: R | None = None, error: BaseException | None = None
) -> None:
    if future.done():  # its caller was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
