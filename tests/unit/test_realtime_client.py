"""The realtime stream's client (`relaybox.realtime.client`) and `tail`, against a scripted fake
stream server (`websockets.asyncio.server.serve`): credentials, reconnect and resume, duplicate
events, batched acks, refusals, backoff."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from relaybox.common.auth import AuthSettings, verify_bearer
from relaybox.realtime.client import (
    ACK_BATCH,
    MAX_QUERY_CURSOR,
    Seen,
    StreamClient,
    StreamRefused,
    backoff_delays,
    ticket_source,
    with_query,
)
from relaybox.realtime.tail import dev_token, line, printer, summary, tail
from tests.support.serving import free_port

BEARER = Subprotocol("bearer")
SECRET = "unit-test-secret-that-is-long-enough-for-hs256"

Frame = dict[str, Any]


@dataclass
class Session:
    """One connection to the fake server, as its script sees it."""

    index: int
    socket: ServerConnection
    query: dict[str, str]
    received: list[Frame]

    async def send(self, *frames: Frame) -> None:
        for frame in frames:
            await self.socket.send(json.dumps(frame))

    async def hello(self, cursor: str = "c0") -> None:
        await self.send({"type": "hello", "connectionId": f"conn-{self.index}", "cursor": cursor})

    async def close(self, code: int, reason: str = "") -> None:
        await self.socket.close(code, reason)

    async def frame(self, kind: str, timeout_s: float = 5.0) -> Frame:
        """The next client frame of `kind` (waiting for it)."""
        async with asyncio.timeout(timeout_s):
            while True:
                for found in self.received:
                    if found.get("type") == kind:
                        self.received.remove(found)
                        return found
                await asyncio.sleep(0.005)


Script = Callable[[Session], Awaitable[None]]


@dataclass
class FakeStream:
    """A stand-in for the realtime server: each connection runs `script`; `refuse` answers
    the first attempts with an HTTP status instead of an upgrade."""

    script: Script
    refuse: list[int] = field(default_factory=list)
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)  # every client frame, in order

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.requests.append(request)
        if self.refuse:
            status = self.refuse.pop(0)
            body = json.dumps({"error": f"refused with {status}"})
            return connection.respond(status, body)
        return None

    async def handler(self, socket: ServerConnection) -> None:
        assert socket.request is not None
        query = {k: v[0] for k, v in parse_qs(urlsplit(socket.request.path).query).items()}
        session = Session(len(self.sessions), socket, query, [])
        self.sessions.append(session)

        async def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for raw in socket:
                    frame = json.loads(raw)
                    self.frames.append(frame)
                    if frame.get("type") == "ping":
                        await socket.send('{"type":"pong"}')
                    else:
                        session.received.append(frame)

        reader = asyncio.create_task(read())
        try:
            await self.script(session)
            await socket.wait_closed()
        finally:
            reader.cancel()

    def subprotocols(self, index: int) -> str | None:
        return self.requests[index].headers.get("Sec-WebSocket-Protocol")


@contextlib.asynccontextmanager
async def fake_stream(
    script: Script, refuse: list[int] | None = None, port: int = 0
) -> AsyncIterator[FakeStream]:
    fake = FakeStream(script, list(refuse or []))
    async with serve(
        fake.handler,
        "127.0.0.1",
        port,
        process_request=fake.process_request,
        select_subprotocol=lambda _c, offered: BEARER if BEARER in offered else None,
        compression=None,
    ) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        fake.url = f"ws://127.0.0.1:{bound}/chat/stream"
        yield fake


def fast_client(url: str | list[str], **options: Any) -> StreamClient:
    """A client that retries within milliseconds."""
    return StreamClient(url, base_backoff_s=0.01, max_backoff_s=0.05, **options)


def event(n: int, kind: str = "read", **data: Any) -> Frame:
    return {"type": kind, "eventId": n, "cursor": f"c{n}", "data": data}


def message(n: int, sender: str = "bob") -> Frame:
    return event(n, "message.created", id=str(uuid.UUID(int=n)), senderId=sender, text=f"m{n}")


def token(sub: str = "alice") -> str:
    return dev_token(sub, "org", auth=AuthSettings(jwt_secret=SECRET, tenant_claim="org"))


async def take(client: StreamClient, count: int, *, control: bool = False) -> list[Frame]:
    found: list[Frame] = []
    async with asyncio.timeout(5):
        async for frame in client.events(control=control):
            found.append(frame)
            if len(found) == count:
                return found
    return found


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `check` (another party's state) until it holds."""
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - the state is the fake server's or the client's
            await asyncio.sleep(0.01)


async def idle(session: Session) -> None:
    """Greet, then keep the socket open."""
    await session.hello()


# -- credentials ----------------------------------------------------------------------------


async def test_a_bearer_token_is_offered_as_the_subprotocols_bearer_and_the_token() -> None:
    async with (
        fake_stream(idle) as fake,
        StreamClient(fake.url, token=token(), auto_ack=False) as client,
    ):
        assert fake.subprotocols(0) == f"bearer, {token()}"
        assert client.subprotocol == "bearer"
        assert "ticket" not in fake.sessions[0].query
        assert client.connection_id == "conn-0"
        assert token() not in repr(client)


async def test_each_connection_gets_a_fresh_ticket_in_the_query() -> None:
    issued: list[str] = []

    async def tickets() -> str:
        issued.append(f"ticket-{len(issued) + 1}")
        return issued[-1]

    async def script(session: Session) -> None:
        await session.hello()
        await session.send(event(session.index + 1))
        if session.index == 0:
            await session.close(1012, "service restart")

    async with (
        fake_stream(script) as fake,
        fast_client(fake.url, tickets=tickets, auto_ack=False) as client,
    ):
        assert [f["eventId"] for f in await take(client, 2)] == [1, 2]
        assert [s.query["ticket"] for s in fake.sessions] == ["ticket-1", "ticket-2"]
        assert fake.subprotocols(0) is None


async def test_ticket_source_posts_the_bearer_token_to_the_api() -> None:
    seen: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.headers["Authorization"] == "Bearer good":
            return httpx.Response(201, json={"ticket": "t-1", "expiresInS": 30})
        if request.headers["Authorization"] == "Bearer broken":
            return httpx.Response(500, json={"detail": "bug"})
        return httpx.Response(401, json={"detail": "bad token"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as http:
        assert await ticket_source("http://api/", "good", http=http)() == "t-1"
        with pytest.raises(StreamRefused) as refused:
            await ticket_source("http://api", "bad", http=http)()
        with pytest.raises(httpx.HTTPStatusError):
            await ticket_source("http://api", "broken", http=http)()
    assert refused.value.status == 401
    assert "bad token" in refused.value.body
    assert [(r.method, r.url.path) for r in seen] == [("POST", "/chat/stream-tickets")] * 3


# -- reconnect, resume, duplicates ----------------------------------------------------------


@pytest.mark.parametrize("drop", [1012, 4008, 1006])
async def test_a_dropped_socket_reconnects_and_resumes_from_the_newest_cursor(drop: int) -> None:
    async def script(session: Session) -> None:
        if session.index == 0:
            await session.hello("c0")
            await session.send(event(1), event(2))
            await asyncio.sleep(0.05)
            if drop == 1006:
                session.socket.transport.abort()  # no close frame
            else:
                await session.close(drop, "bye")
        elif session.index == 1:
            await session.hello(session.query["cursor"])
            await session.send(event(2), event(3))  # 2 again: dropped
            await session.close(1012, "service restart")
        else:
            await session.hello(session.query["cursor"])
            await session.send({"type": "live", "cursor": "c3"}, event(4))

    async with (
        fake_stream(script) as fake,
        fast_client(fake.url, token=token(), auto_ack=False) as client,
    ):
        assert [f["eventId"] for f in await take(client, 4)] == [1, 2, 3, 4]
        assert [s.query.get("cursor") for s in fake.sessions] == [None, "c2", "c3"]
        assert client.cursor == "c4"
        assert client.stats.duplicates == 1
        assert client.stats.reconnects == 2
        assert client.stats.close_codes[1012] >= 1
        assert client.stats.close_codes[drop] >= 1


async def test_a_client_given_a_cursor_resumes_from_it_and_keeps_it_through_hello() -> None:
    async def script(session: Session) -> None:
        await session.hello("c-now")  # a resumed stream starts at the cursor given
        await session.send(event(8))

    async with (
        fake_stream(script) as fake,
        StreamClient(fake.url, token=token(), cursor="c7", auto_ack=False) as client,
    ):
        assert fake.sessions[0].query["cursor"] == "c7"
        await take(client, 1)
        assert client.cursor == "c8"


async def test_a_long_cursor_is_sent_in_a_resume_frame_and_held_until_that_stream_starts() -> None:
    long = "x" * (MAX_QUERY_CURSOR + 1)

    async def script(session: Session) -> None:
        if session.index == 0:
            await session.hello("fresh")
            resume = await session.frame("resume")
            assert resume["cursor"] == long
            await session.send({"type": "live", "cursor": "fresh"}, event(9))  # before the resume
            await session.hello(long)  # the resumed stream
            await session.send(event(9), event(10))
            await session.close(1012)
        else:
            await session.hello(session.query["cursor"])

    async with (
        fake_stream(script) as fake,
        fast_client(fake.url, token=token(), cursor=long, auto_ack=False) as client,
    ):
        assert "cursor" not in fake.sessions[0].query
        first = await take(client, 1)
        assert first[0]["eventId"] == 9
        assert client.cursor == long  # a cursor of the stream before the resume: not taken
        assert [f["eventId"] for f in await take(client, 1)] == [10]
        assert client.cursor == "c10"
        await until(lambda: len(fake.sessions) == 2)
        assert fake.sessions[1].query["cursor"] == "c10"
        assert client.stats.duplicates == 1


def test_seen_remembers_the_ids_since_the_checkpoint_and_the_newest_few() -> None:
    seen = Seen(keep=3)
    assert [seen.add(i) for i in (1, 2, 3, 4, 5)] == [True] * 5
    assert not seen.add(1)  # since the checkpoint: kept however many
    seen.checkpoint()
    assert not seen.add(5)  # among the newest 3
    assert seen.add(1)  # forgotten: before the checkpoint and not among the newest
    assert len(seen) <= 3


# -- control frames, ping -------------------------------------------------------------------


async def test_control_frames_are_consumed_except_resync_and_move_the_cursor() -> None:
    async def script(session: Session) -> None:
        await session.hello("c0")
        await session.send(
            {"type": "live", "cursor": "L"},
            event(1),
            {"type": "checkpoint", "cursor": "K"},
            {"type": "resync", "cursor": "R", "reason": "retention"},
            {"type": "error", "error": "unknown frame type"},
            event(2),
        )

    async with (
        fake_stream(script) as fake,
        StreamClient(fake.url, token=token(), auto_ack=False) as client,
    ):
        assert [f["type"] for f in await take(client, 3)] == ["read", "resync", "read"]
        assert client.cursor == "c2"
        assert client.stats.resyncs == 1
        async with StreamClient(fake.url, token=token(), auto_ack=False) as again:
            kinds = [f["type"] for f in await take(again, 7, control=True)]
        assert kinds == ["hello", "live", "read", "checkpoint", "resync", "error", "read"]


async def test_ping_waits_for_the_pong() -> None:
    async with (
        fake_stream(idle) as fake,
        StreamClient(fake.url, token=token(), auto_ack=False) as client,
    ):
        assert 0 <= await client.ping() < 5
        assert {"type": "ping"} in fake.frames


# -- acks ------------------------------------------------------------------------------------


async def test_taken_messages_are_acked_by_message_id_in_batches() -> None:
    others = [message(n) for n in range(1, 251)]
    own = [message(n, sender="alice") for n in range(251, 254)]

    async def script(session: Session) -> None:
        await session.hello()
        await session.send(*others[:120], *own, event(300, "message.status"), *others[120:])

    async with (
        fake_stream(script) as fake,
        StreamClient(fake.url, token=token("alice")) as client,
    ):
        await take(client, 254)
        await until(lambda: client.stats.acked >= 250)
        acks = [f for f in fake.frames if f["type"] == "ack"]
        await asyncio.sleep(0.05)
        acked = [i for a in acks for i in a["messageIds"]]
        assert acked == [m["data"]["id"] for m in others]  # not one's own messages
        assert all(len(a["messageIds"]) <= ACK_BATCH for a in acks)
        assert len(acks) <= 20  # batched per loop turn, not one frame per message
        assert client.stats.ack_frames == len(acks)

        extra = "5d7a4a7e-0000-4000-8000-000000000001"
        await client.ack([extra])
        await until(lambda: fake.frames[-1].get("messageIds") == [extra])


async def test_without_auto_ack_nothing_is_acked() -> None:
    async def script(session: Session) -> None:
        await session.hello()
        await session.send(message(1), message(2))

    async with (
        fake_stream(script) as fake,
        StreamClient(fake.url, token=token(), auto_ack=False) as client,
    ):
        await take(client, 2)
        await asyncio.sleep(0.05)
        assert not [f for f in fake.frames if f["type"] == "ack"]


async def test_acks_of_a_dropped_socket_are_sent_on_the_next_one() -> None:
    async def script(session: Session) -> None:
        await session.hello()
        if session.index == 0:
            await session.close(1012)

    async with fake_stream(script) as fake:
        client = fast_client(fake.url, token=token())
        client.start()
        await client.ack(["a", "b"])  # before the socket is open: kept for it
        await client.wait_connected(5)
        await until(lambda: any(f["type"] == "ack" for f in fake.frames))
        await client.aclose()
        assert [f["messageIds"] for f in fake.frames if f["type"] == "ack"] == [["a", "b"]]


# -- refusals and backoff --------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 400])
async def test_a_refused_handshake_raises_stream_refused_and_is_not_retried(status: int) -> None:
    async with fake_stream(idle, refuse=[status]) as fake:
        with pytest.raises(StreamRefused) as refused:
            async with fast_client(fake.url, token=token()):
                pass
        await asyncio.sleep(0.1)
        assert len(fake.requests) == 1
    assert refused.value.status == status
    assert f"refused with {status}" in refused.value.body


async def test_a_refusal_on_reconnect_ends_the_events() -> None:
    async def script(session: Session) -> None:
        await session.hello()
        await session.send(event(1))
        await session.close(1012)

    async with fake_stream(script) as fake:
        client = fast_client(fake.url, token=token(), auto_ack=False)
        async with client:
            fake.refuse.append(401)  # the token expired meanwhile
            with pytest.raises(StreamRefused):
                await take(client, 2)
        assert client.stats.connects == 1


async def test_5xx_answers_and_refused_connections_are_retried() -> None:
    async with (
        fake_stream(idle, refuse=[503, 502]) as fake,
        fast_client(fake.url, token=token()) as client,
    ):
        assert client.connected
        assert client.stats.failed_attempts == 2
        assert len(fake.requests) == 3

    port = free_port()
    client = fast_client(f"ws://127.0.0.1:{port}/chat/stream", token=token())
    client.start()
    await asyncio.sleep(0.3)  # nothing listens: connection refused, again and again
    assert client.stats.failed_attempts >= 5
    assert not client.connected
    async with fake_stream(idle, port=port):
        await client.wait_connected(5)
    await client.aclose()


async def test_the_next_url_is_tried_when_one_fails() -> None:
    dead = f"ws://127.0.0.1:{free_port()}/chat/stream"
    async with (
        fake_stream(idle) as fake,
        fast_client([dead, fake.url], token=token()) as client,
    ):
        assert client.url == fake.url
        assert client.stats.failed_attempts == 1
        assert client.stats.backoff_s == 0  # the next replica is tried at once


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    draws = backoff_delays(0.25, 5.0, random.Random(7))
    delays = [next(draws) for _ in range(200)]
    for attempt, delay in enumerate(delays):
        assert 0 <= delay <= min(5.0, 0.25 * 2**attempt)
    assert max(delays) > 4.0  # the cap is reached, and spread below it
    assert len({round(d, 3) for d in delays[10:]}) > 150
    assert max(delays[:3]) <= 1.0


def test_urls_keep_their_query_and_get_the_parameters() -> None:
    assert with_query("ws://h/chat/stream?a=1", {"cursor": "x+y", "a": "2"}) == (
        "ws://h/chat/stream?a=2&cursor=x%2By"
    )


# -- tail -------------------------------------------------------------------------------------


def test_dev_tokens_are_bearer_tokens_of_the_configured_secret_and_tenant_claim() -> None:
    auth = AuthSettings(jwt_secret=SECRET, tenant_claim="org")
    caller = verify_bearer(dev_token("alice", "dev", auth=auth), auth)
    assert (caller.id, caller.tenant) == ("alice", "dev")
    assert caller.scopes == {"chat:read", "chat:write"}
    own = AuthSettings(jwt_secret=SECRET)
    claims = jwt.decode(dev_token("bob", auth=own), SECRET, algorithms=["HS256"])
    assert verify_bearer(dev_token("bob", auth=own), own).tenant == "bob"
    assert "org" not in claims
    assert claims["iat"] <= claims["exp"] - 3000  # the API's middleware wants `iat`


def test_tail_prints_one_readable_line_per_event() -> None:
    at = datetime(2026, 12, 1, 9, 30, 5, 123456)
    conversation = "1a2b3c4d-0000-4000-8000-000000000000"
    created = message(1) | {
        "data": {
            "conversationId": conversation,
            "senderId": "bob",
            "seq": 12,
            "text": "hello\nthere",
            "attachments": [{}],
        }
    }
    assert line(created, at) == (
        "09:30:05.123",
        "message.created",
        "1a2b3c4d",
        "#12 bob: hello there [+1 attachment]",
    )
    status = event(
        2,
        "message.status",
        conversationId=conversation,
        status="DELIVERED",
        copies=[{"messageId": "m", "userId": "carol"}],
    )
    assert summary(status) == "DELIVERED: 1 copy (carol)"
    joined = event(
        3, "member.joined", conversationId=conversation, userId="dave", role="member", by="bob"
    )
    assert summary(joined) == "dave as member by bob"
    assert "reload" in summary({"type": "resync", "cursor": "x"})
    assert summary(event(4, "read", conversationId=conversation, readUpToSeq=9)) == "read up to #9"
    out = io.StringIO()
    printer(out, color=False)(created)
    assert out.getvalue().startswith(datetime.now().strftime("%H:"))
    assert "message.created" in out.getvalue()
    assert "bob: hello there" in out.getvalue()


async def test_tail_shows_the_users_events_until_cancelled() -> None:
    async def script(session: Session) -> None:
        await session.hello()
        await session.send(message(1), event(2))

    shown: list[Frame] = []
    async with fake_stream(script) as fake:
        task = asyncio.create_task(tail(fake.url, token=token(), show=shown.append))
        await until(lambda: len(shown) >= 2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [f["eventId"] for f in shown] == [1, 2]
    assert not [f for f in fake.frames if f["type"] == "ack"]  # tail acks only with --ack
