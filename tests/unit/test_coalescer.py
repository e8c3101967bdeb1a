"""The consumer's group commit (`relaybox.consumer.batching.Coalescer`): requests that arrive
while a statement runs go together in the next one, each keeps its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from relaybox.consumer.batching import Coalescer


class Recorder:
    """A `many`/`one` pair that records its calls; `many` waits on `gate` when it is set."""

    def __init__(self) -> None:
        self.many_calls: list[list[int]] = []
        self.one_calls: list[int] = []
        self.gate: asyncio.Event | None = None
        self.fail_many: Exception | None = None

    async def many(self, requests: Sequence[int]) -> list[int]:
        self.many_calls.append(list(requests))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_many is not None:
            raise self.fail_many
        return [r * 10 for r in requests]

    async def one(self, request: int) -> int:
        self.one_calls.append(request)
        if self.gate is not None:
            await self.gate.wait()
        if request < 0:
            raise ValueError(f"bad request {request}")
        return request * 10


async def test_a_lone_request_runs_alone_at_once() -> None:
    calls = Recorder()
    coalescer = Coalescer(calls.many, calls.one)
    assert await coalescer.submit(3) == 30
    assert calls.one_calls == [3]
    assert calls.many_calls == []


async def test_requests_arriving_together_share_one_call() -> None:
    calls = Recorder()
    coalescer = Coalescer(calls.many, calls.one)
    assert await asyncio.gather(*(coalescer.submit(i) for i in range(1, 6))) == [
        10,
        20,
        30,
        40,
        50,
    ]
    assert calls.many_calls == [[1, 2, 3, 4, 5]]


async def test_requests_arriving_while_a_call_runs_go_in_the_next_one() -> None:
    calls = Recorder()
    calls.gate = asyncio.Event()
    coalescer = Coalescer(calls.many, calls.one)
    first = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0.01)  # the first call is running (held by the gate)
    later = [asyncio.create_task(coalescer.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0.01)
    assert calls.one_calls == [1]
    assert calls.many_calls == []  # nothing else runs while the first call does
    calls.gate.set()
    assert await first == 10
    assert [await task for task in later] == [20, 30, 40]
    assert calls.many_calls == [[2, 3, 4]]


async def test_the_batch_size_is_bounded() -> None:
    calls = Recorder()
    coalescer = Coalescer(calls.many, calls.one, max_batch=2)
    assert await asyncio.gather(*(coalescer.submit(i) for i in range(1, 6))) == [
        10,
        20,
        30,
        40,
        50,
    ]
    assert calls.many_calls == [[1, 2], [3, 4]]
    assert calls.one_calls == [5]


async def test_a_failed_batch_runs_each_request_alone_so_an_error_stays_its_own() -> None:
    calls = Recorder()
    calls.fail_many = ValueError("one bad id spoils the statement")
    coalescer = Coalescer(calls.many, calls.one)
    results = await asyncio.gather(
        *(coalescer.submit(i) for i in (1, -2, 3)), return_exceptions=True
    )
    assert results[0] == 10
    assert isinstance(results[1], ValueError)
    assert "bad request -2" in str(results[1])
    assert results[2] == 30
    assert calls.one_calls == [1, -2, 3]


async def test_a_shared_error_fails_the_whole_batch_without_running_each() -> None:
    calls = Recorder()
    calls.fail_many = ConnectionResetError("the database went away")
    coalescer = Coalescer(
        calls.many, calls.one, shared=lambda exc: isinstance(exc, ConnectionError)
    )
    results = await asyncio.gather(
        *(coalescer.submit(i) for i in (1, 2, 3)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionResetError) for r in results)
    assert calls.one_calls == []


async def test_a_request_given_up_before_its_call_is_not_run() -> None:
    calls = Recorder()
    calls.gate = asyncio.Event()
    coalescer = Coalescer(calls.many, calls.one)
    first = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0.01)
    abandoned = asyncio.create_task(coalescer.submit(2))
    kept = asyncio.create_task(coalescer.submit(3))
    await asyncio.sleep(0.01)
    abandoned.cancel()
    calls.gate.set()
    assert await first == 10
    assert await kept == 30
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    assert calls.one_calls == [1, 3]  # 2 never ran: its caller was gone


async def test_a_caller_cancelled_during_its_call_leaves_the_others_their_results() -> None:
    calls = Recorder()
    calls.gate = asyncio.Event()
    coalescer = Coalescer(calls.many, calls.one)
    first = asyncio.create_task(coalescer.submit(1))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(coalescer.submit(2))
    third = asyncio.create_task(coalescer.submit(3))
    await asyncio.sleep(0)
    calls.gate.set()
    await first
    await asyncio.sleep(0)  # the batch [2, 3] is running
    second.cancel()
    assert await third == 30
    with pytest.raises(asyncio.CancelledError):
        await second


async def test_it_serves_again_after_going_idle() -> None:
    calls = Recorder()
    coalescer = Coalescer(calls.many, calls.one)
    for i in range(3):
        assert await coalescer.submit(i) == i * 10
    assert calls.one_calls == [0, 1, 2]
