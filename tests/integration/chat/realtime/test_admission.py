"""Who may open a stream: tickets (single use, short-lived), bearer tokens, scopes, devices —
a refusal is an HTTP answer before the upgrade, never a socket that closes at once."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from relaybox.api.auth import USER_SCOPES, issue_token
from relaybox.api.settings import ApiSettings
from relaybox.common.auth import Caller
from relaybox.common.chat.tickets import issue_ticket
from tests.integration.chat.conftest import TENANT, People
from tests.integration.chat.realtime.conftest import Replicas, opened
from tests.integration.chat.support import call


@pytest.fixture
def token(chat_settings: ApiSettings) -> Any:
    def make(user: str, scopes: tuple[str, ...] = USER_SCOPES) -> str:
        return issue_token(chat_settings, user, scopes, tenant=TENANT)

    return make


async def refused(url: str, protocols: list[str] | None = None) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as raised:
        async with connect(url, subprotocols=protocols, open_timeout=10):  # type: ignore[arg-type]
            pass
    response = raised.value.response
    return response.status_code, response.body.decode()


async def ticket_of(people: People, user: str) -> str:
    answer = await call(people(user), "POST", "/chat/stream-tickets", 201)
    return str(answer["ticket"])


async def test_a_ticket_connects_once(replicas: Replicas, people: People) -> None:
    replica = await replicas()
    ticket = await ticket_of(people, "alice")
    async with opened(replica.port, ticket=ticket) as alice:
        await alice.until(lambda f: f["type"] == "live")
    status, body = await refused(f"ws://127.0.0.1:{replica.port}/chat/stream?ticket={ticket}")
    assert status == 401
    assert "used already" in body


async def test_two_replicas_share_the_single_use(replicas: Replicas, people: People) -> None:
    one, two = await replicas(), await replicas()
    ticket = await ticket_of(people, "alice")
    attempts = [
        connect(f"ws://127.0.0.1:{replica.port}/chat/stream?ticket={ticket}")
        for replica in (one, two, one, two)
    ]
    results = await asyncio.gather(
        *(attempt.__aenter__() for attempt in attempts), return_exceptions=True
    )
    opened_ = [r for r in results if not isinstance(r, BaseException)]
    assert len(opened_) == 1
    assert all(isinstance(r, InvalidStatus) for r in results if isinstance(r, BaseException))
    for ws in opened_:
        await ws.close()


async def test_an_expired_or_forged_ticket_is_refused(
    replicas: Replicas, chat_settings: ApiSettings
) -> None:
    replica = await replicas()
    url = f"ws://127.0.0.1:{replica.port}/chat/stream?ticket="
    caller = Caller("alice", TENANT, frozenset(USER_SCOPES))
    expired, _ = issue_ticket(chat_settings.auth, caller, ttl_s=0.001)
    time.sleep(1.1)  # noqa: ASYNC251 - the expiry has a one-second resolution
    status, body = await refused(url + expired)
    assert (status, "expired" in body) == (401, True)
    forged = jwt.encode(
        {
            "sub": "alice",
            "org": TENANT,
            "aud": "relaybox:chat-stream",
            "jti": "x",
            "exp": datetime.now(UTC) + timedelta(seconds=30),
            "scopes": list(USER_SCOPES),
        },
        "another-secret-that-is-long-enough-for-hs256",
        algorithm="HS256",
    )
    assert (await refused(url + forged))[0] == 401


async def test_a_bearer_token_is_not_a_ticket_and_a_ticket_is_not_a_bearer_token(
    replicas: Replicas, people: People, token: Any
) -> None:
    replica = await replicas()
    url = f"ws://127.0.0.1:{replica.port}/chat/stream"
    assert (await refused(f"{url}?ticket={token('alice')}"))[0] == 401
    ticket = await ticket_of(people, "alice")
    assert (await refused(url, ["bearer", ticket]))[0] == 401
    answer = await people("alice").get(
        "/chat/conversations", headers={"Authorization": f"Bearer {ticket}"}
    )
    assert answer.status_code == 401


async def test_bearer_tokens_scopes_and_missing_credentials(replicas: Replicas, token: Any) -> None:
    replica = await replicas()
    url = f"ws://127.0.0.1:{replica.port}/chat/stream"
    status, body = await refused(url)
    assert status == 401
    assert "ticket" in body
    assert (await refused(url, ["bearer", "not-a-jwt"]))[0] == 401
    assert (await refused(url, ["bearer", token("alice", ("email:send",))]))[0] == 403
    async with opened(replica.port, token=token("alice")) as alice:
        assert alice.ws.subprotocol == "bearer"


async def test_a_device_must_be_the_callers(replicas: Replicas, people: People, token: Any) -> None:
    replica = await replicas()
    url = f"ws://127.0.0.1:{replica.port}/chat/stream"
    device = await call(
        people("bob"),
        "POST",
        "/chat/devices",
        201,
        json={"platform": "android", "pushToken": "bob-phone"},
    )
    bearer = ["bearer", token("alice")]
    assert (await refused(f"{url}?device=nope", bearer))[0] == 400
    assert (await refused(f"{url}?device={device['id']}", bearer))[0] == 400
    async with opened(replica.port, token=token("bob"), device=device["id"]) as bob:
        await bob.until(lambda f: f["type"] == "live")


async def test_a_stopping_replica_refuses_and_closes_with_1012(
    replicas: Replicas, token: Any
) -> None:
    replica = await replicas(shutdown_grace_s=1.0)
    async with opened(replica.port, token=token("alice")) as alice:
        await alice.until(lambda f: f["type"] == "live")
        stopping = asyncio.create_task(replica.stop())
        await asyncio.sleep(0.2)
        url = f"ws://127.0.0.1:{replica.port}/chat/stream"
        assert (await refused(url, ["bearer", token("bob")]))[0] == 503
        await stopping
        await alice.ws.wait_closed()
        assert alice.ws.close_code == 1012


async def test_a_remembered_token_is_refused_once_it_expires(
    replicas: Replicas, chat_settings: ApiSettings
) -> None:
    """The replica verifies a bearer token once and remembers it — until its `exp`."""
    replica = await replicas()
    token = issue_token(chat_settings, "alice", USER_SCOPES, ttl_s=2, tenant=TENANT)
    async with opened(replica.port, token=token) as alice:
        await alice.until(lambda f: f["type"] == "live")
    async with opened(replica.port, token=token) as again:  # remembered
        await again.until(lambda f: f["type"] == "live")
    await asyncio.sleep(2.1)
    status, body = await refused(f"ws://127.0.0.1:{replica.port}/chat/stream", ["bearer", token])
    assert status == 401
    assert "expired" in body.lower()
