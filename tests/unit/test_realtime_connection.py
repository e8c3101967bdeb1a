"""A socket's sending: written at once while the client keeps up, buffered (in order) when it
does not, closed with 4008 when the buffer is full. A real websockets server and client on
127.0.0.1; no database or broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from relaybox.common.auth import Caller
from relaybox.realtime.connection import TOO_SLOW, Connection

BUFFER = 4


async def received(client: ClientConnection, count: int) -> list[str | bytes]:
    return [await asyncio.wait_for(client.recv(), 10) for _ in range(count)]


async def read_until_closed(client: ClientConnection) -> None:
    while True:
        await asyncio.wait_for(client.recv(), 10)


@contextlib.asynccontextmanager
async def pair() -> AsyncIterator[tuple[Connection, ClientConnection]]:
    """A server-side Connection (its writer not started: whatever it sends at once bypasses the
    buffer) and the client socket it talks to."""
    accepted: asyncio.Queue[ServerConnection] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(socket: ServerConnection) -> None:
        await accepted.put(socket)
        await done.wait()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as client:
            socket = await accepted.get()
            caller = Caller(id="alice", tenant="org", scopes=frozenset())
            try:
                yield Connection(socket, caller, None, send_buffer=BUFFER), client
            finally:
                done.set()


async def test_a_frame_to_a_socket_that_keeps_up_is_written_at_once() -> None:
    async with pair() as (conn, client):
        # the installed websockets has what the direct write uses (an upgrade that drops it
        # fails here; the replica would fall back to the buffer for every frame)
        assert conn._direct
        for n in range(3):
            conn.send_text_now(f'{{"n":{n}}}', "read")
        assert conn._queue.empty()  # nothing waits for the writer (not started)
        assert await received(client, 3) == ['{"n":0}', '{"n":1}', '{"n":2}']


async def test_a_client_that_stops_reading_fills_the_buffer_then_is_closed_with_4008() -> None:
    async with pair() as (conn, client):
        client.transport.pause_reading()  # the kernel's buffers fill, then the transport's
        big = '{"x":"' + "x" * 60_000 + '"}'
        sent = 0
        while not conn.socket.paused:  # written at once until the transport is above its limit
            conn.send_text_now(big, "read")
            sent += 1
            assert sent < 1000, "the transport never reached its write limit"
            await asyncio.sleep(0)  # let the transport try to write
        assert conn._queue.empty()
        for _ in range(BUFFER):  # then buffered, in order, up to the buffer's size
            conn.send_text_now('{"later":true}', "read")
        assert conn._queue.qsize() == BUFFER
        assert not conn.closing
        conn.send_text_now('{"one":"too many"}', "read")
        assert conn.closing
        client.transport.resume_reading()
        with pytest.raises(ConnectionClosed) as closed:
            await read_until_closed(client)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == TOO_SLOW


async def test_buffered_frames_go_first_once_the_writer_runs() -> None:
    async with pair() as (conn, client):
        conn._queue.put_nowait('{"n":0}')  # a frame that had to wait (say, the client was slow)
        await conn.send_text('{"n":1}', "read")  # the frames behind it wait their turn
        conn.send_text_now('{"n":2}', "read")
        assert conn._queue.qsize() == 3
        conn.start_writer()
        try:
            assert await received(client, 3) == ['{"n":0}', '{"n":1}', '{"n":2}']
            await conn.send_text('{"n":3}', "read")  # the buffer is empty again: at once
            assert conn._queue.empty()
            assert await received(client, 1) == ['{"n":3}']
        finally:
            await conn.stop_writer()
