"""The stream: live events, resume with no gap and no duplicate, late commits, slow clients."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.exceptions import ConnectionClosed

from relaybox.api.auth import USER_SCOPES, issue_token
from relaybox.api.settings import ApiSettings
from relaybox.common.chat.events import record
from relaybox.common.db.session import asyncpg_dsn
from relaybox.publisher.relay import Relay
from relaybox.realtime.cursor import Position
from relaybox.realtime.store import PLAN_SETTINGS, REPLAY
from tests.integration.chat.conftest import TENANT
from tests.integration.chat.realtime.conftest import Replicas, opened, write_event

pytestmark = pytest.mark.usefixtures("publisher")


@pytest.fixture
def token(chat_settings: ApiSettings) -> Any:
    def make(user: str, *, tenant: str = TENANT, scopes: tuple[str, ...] = USER_SCOPES) -> str:
        return issue_token(chat_settings, user, scopes, tenant=tenant)

    return make


async def test_health_ready_and_metrics_answer_plain_http(replicas: Replicas) -> None:
    replica = await replicas()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{replica.port}") as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        assert (await http.get("/ready")).status_code == 200
        metrics = await http.get("/metrics")
        assert "relaybox_realtime_connections" in metrics.text
        missing = await http.get("/elsewhere")
        assert missing.status_code == 404


async def test_live_events_reach_every_socket_of_their_audience_only(
    replicas: Replicas, engine: AsyncEngine, token: Any
) -> None:
    one, two = await replicas(), await replicas()
    async with (
        opened(one.port, token=token("alice")) as alice,
        opened(two.port, token=token("bob")) as bob,
        opened(two.port, token=token("bob")) as bob_again,
        opened(one.port, token=token("carol")) as carol,
    ):
        for socket in (alice, bob, bob_again, carol):
            await socket.until(lambda f: f["type"] == "live")
        first = await write_event(engine, ["alice", "bob"], data={"n": 1})
        second = await write_event(engine, ["bob"], data={"n": 2})
        assert [e["eventId"] for e in await alice.events(1)] == [first]
        for socket in (bob, bob_again):
            got = await socket.events(2)
            assert [e["eventId"] for e in got] == [first, second]
            assert [e["data"] for e in got] == [{"n": 1}, {"n": 2}]
        assert await carol.quiet() == []
        assert await alice.quiet() == []


async def test_the_same_user_id_of_another_tenant_gets_nothing(
    replicas: Replicas, engine: AsyncEngine, token: Any
) -> None:
    replica = await replicas()
    async with opened(replica.port, token=token("alice", tenant="other")) as stranger:
        await stranger.until(lambda f: f["type"] == "live")
        await write_event(engine, ["alice"])
        assert await stranger.quiet() == []


async def test_a_resume_sends_what_was_missed_once_in_order_then_live(
    replicas: Replicas, engine: AsyncEngine, token: Any
) -> None:
    replica = await replicas()
    async with opened(replica.port, token=token("alice")) as alice:
        await alice.until(lambda f: f["type"] == "live")
        seen = [await write_event(engine, ["alice"], data={"n": n}) for n in range(3)]
        await alice.events(3)
        cursor = alice.cursor
    missed = [await write_event(engine, ["alice"], data={"n": n}) for n in range(3, 8)]
    await write_event(engine, ["bob"])  # not hers
    async with opened(replica.port, token=token("alice"), cursor=cursor) as again:
        replayed = await again.events(5)
        assert [e["eventId"] for e in replayed] == missed
        await again.until(lambda f: f["type"] == "live")
        live = await write_event(engine, ["alice"])
        assert [e["eventId"] for e in await again.events(1)] == [live]
        assert await again.quiet() == []
        assert not set(again.event_ids) & set(seen)


async def test_a_cursor_taken_mid_stream_resumes_exactly_after_it(
    replicas: Replicas, engine: AsyncEngine, token: Any
) -> None:
    """Every event frame's cursor is a resume point: from the k-th, exactly the rest."""
    replica = await replicas()
    async with opened(replica.port, token=token("alice")) as alice:
        await alice.until(lambda f: f["type"] == "live")
        ids = [await write_event(engine, ["alice"], data={"n": n}) for n in range(6)]
        frames = await alice.events(6)
    for k, frame in enumerate(frames):
        async with opened(replica.port, token=token("alice"), cursor=frame["cursor"]) as again:
            await again.until(lambda f: f["type"] == "live")
            assert again.event_ids == ids[k + 1 :], k


async def test_a_late_commit_is_not_skipped_by_a_resuming_reader(
    replicas: Replicas, engine: AsyncEngine, token: Any
) -> None:
    """Event A's transaction starts first and commits last: a reader that saw B (and took a
    checkpoint meanwhile) still gets A — live, and on a resume from any cursor it was given."""
    replica = await replicas()
    async with opened(replica.port, token=token("alice")) as alice:
        await alice.until(lambda f: f["type"] == "live")
        async with engine.connect() as slow:
            transaction = await slow.begin()
            late = await record(
                slow, tenant=TENANT, kind="read", data={"n": "late"}, audience=["alice"]
            )
            (held,) = (
                await slow.execute(text("SELECT (pg_current_xact_id()::text)::bigint"))
            ).one()
            early = await write_event(engine, ["alice"], data={"n": "early"})
            (got,) = await alice.events(1)
            assert got["eventId"] == early
            # checkpoints come and go: one moves the point past A's transaction, still pending,
            # so a resume from it finds A only among the pending transactions' events
            await alice.until(
                lambda f: (
                    f["type"] == "checkpoint"
                    and held in Position.decode(f["cursor"]).pending
                    and Position.decode(f["cursor"]).point > (held, late)
                )
            )
            cursors = [f["cursor"] for f in alice.frames if "cursor" in f]
            await transaction.commit()
        (got,) = await alice.events(1)
        assert got["eventId"] == late
    for cursor in cursors:
        async with opened(replica.port, token=token("alice"), cursor=cursor) as again:
            await again.until(lambda f: f["type"] == "live")
            assert late in again.event_ids
            assert early not in again.event_ids or cursor == cursors[0]


async def test_a_resume_frame_restarts_the_stream_after_its_cursor(
    replicas: Replicas, engine: AsyncEngine, token: Any
) -> None:
    replica = await replicas()
    async with opened(replica.port, token=token("alice")) as alice:
        await alice.until(lambda f: f["type"] == "live")
        ids = [await write_event(engine, ["alice"], data={"n": n}) for n in range(4)]
        frames = await alice.events(4)
        await alice.send({"type": "resume", "cursor": frames[1]["cursor"]})
        again = await alice.events(2)
        assert [e["eventId"] for e in again] == ids[2:]
        await alice.until(lambda f: f["type"] == "live")


async def test_a_malformed_or_swept_cursor_gets_resync_then_live(
    replicas: Replicas, engine: AsyncEngine, token: Any
) -> None:
    replica = await replicas()
    async with opened(replica.port, token=token("alice"), cursor="not-a-cursor") as alice:
        resync = await alice.until(lambda f: f["type"] == "resync")
        assert resync["reason"] == "malformed"
        await alice.until(lambda f: f["type"] == "live")
        fresh = await write_event(engine, ["alice"])
        assert [e["eventId"] for e in await alice.events(1)] == [fresh]
        old = alice.cursor
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO chat_stream_state (id, swept_xid) VALUES "
                "(1, (pg_current_xact_id()::text)::bigint) "
                "ON CONFLICT (id) DO UPDATE SET swept_xid = excluded.swept_xid"
            )
        )
    async with opened(replica.port, token=token("alice"), cursor=old) as again:
        resync = await again.until(lambda f: f["type"] == "resync")
        assert resync["reason"] == "retention"


async def test_client_frames_are_answered(replicas: Replicas, token: Any) -> None:
    replica = await replicas()
    async with opened(replica.port, token=token("alice")) as alice:
        await alice.until(lambda f: f["type"] == "live")
        await alice.send({"type": "ping"})
        assert (await alice.next())["type"] == "pong"
        cases: list[tuple[dict[str, Any], str]] = [
            ({"type": "dance"}, "unknown frame type"),
            ({"type": "ack", "messageIds": ["nope"]}, "UUID"),
            ({"type": "ack", "messageIds": []}, "non-empty"),
            ({"type": "resume"}, "cursor"),
        ]
        for bad, says in cases:
            await alice.send(bad)
            answer = await alice.next()
            assert answer["type"] == "error" and says in answer["error"], answer
        await alice.ws.send("[1, 2]")
        assert (await alice.next())["type"] == "error"
        await alice.send({"type": "ping"})
        assert (await alice.next())["type"] == "pong"  # still open


async def test_a_slow_client_is_closed_with_4008_and_the_others_are_unaffected(
    replicas: Replicas, engine: AsyncEngine, token: Any, publisher: Relay
) -> None:
    replica = await replicas(send_buffer=8)
    big = {"text": "x" * 60_000}
    async with (
        opened(replica.port, token=token("alice")) as slow,
        opened(replica.port, token=token("alice")) as fast,
    ):
        await slow.until(lambda f: f["type"] == "live")
        await fast.until(lambda f: f["type"] == "live")
        slow.ws.transport.pause_reading()  # reads nothing: its buffers fill up
        ids: list[int] = []
        got: list[dict[str, Any]] = []
        for _ in range(250):  # 15 MB; the fast client reads each before the next is written,
            ids.append(await write_event(engine, ["alice"], data=big))  # so however loaded the
            got += await fast.events(1, timeout=60)  # machine, only the slow one falls behind
        assert [e["eventId"] for e in got] == ids
        slow.ws.transport.resume_reading()
        with pytest.raises(ConnectionClosed) as closed:
            await slow.until(lambda _frame: False, timeout=30)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4008
        cursor = slow.cursor
    async with opened(replica.port, token=token("alice"), cursor=cursor) as resumed:
        await resumed.until(lambda f: f["type"] == "live", timeout=30)
        assert set(slow.event_ids) | set(resumed.event_ids) >= set(ids)
        assert not set(slow.event_ids) & set(resumed.event_ids)


async def test_a_long_transaction_elsewhere_does_not_grow_the_cursors(
    replicas: Replicas, engine: AsyncEngine, token: Any
) -> None:
    """A transaction holding an xid open (a migration, a report, a session idle in a
    transaction) is pending in the cursors; the events sent meanwhile are not listed."""
    replica = await replicas()
    async with opened(replica.port, token=token("alice")) as alice, engine.connect() as other:
        await alice.until(lambda f: f["type"] == "live")
        transaction = await other.begin()
        (held,) = (await other.execute(text("SELECT (pg_current_xact_id()::text)::bigint"))).one()
        for n in range(100):
            await write_event(engine, ["alice"], data={"n": n})
        await alice.events(100)
        checkpoint = await alice.until(
            lambda f: f["type"] == "checkpoint" and held in Position.decode(f["cursor"]).pending
        )
        position = Position.decode(checkpoint["cursor"])
        assert position.sent == {}
        assert len(checkpoint["cursor"]) < 500
        await transaction.rollback()


def _rows_read(plan: dict[str, Any], relation: str) -> int:
    """Rows a plan node of `relation` (and its children's) produced or filtered out, all loops."""
    own = 0
    if plan.get("Relation Name") == relation:
        own = (plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)) * plan["Actual Loops"]
    return own + sum(_rows_read(child, relation) for child in plan.get("Plans", []))


async def test_a_replay_reads_the_rows_after_the_cursor_never_the_history_before_it(
    engine: AsyncEngine,
) -> None:
    """However long a user's history in the retention, a replay page reads their rows from the
    cursor's point on and, by xid, those of its pending transactions — on the generic plan too,
    which PostgreSQL may switch a prepared statement to. A filter over the rows before the point
    read all 5,000 there."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO chat_event_readers (tenant_id, user_id, xid, event_id) "
                "SELECT :t, 'historian', g, -g FROM generate_series(1, 5000) g"
            ),
            {"t": TENANT},
        )
    new = [await write_event(engine, ["historian"]) for _ in range(3)]
    async with engine.connect() as conn:
        first_xid = await conn.scalar(
            text("SELECT xid FROM chat_events WHERE id = :id"), {"id": new[0]}
        )
        await conn.execute(text("ANALYZE chat_event_readers"))
    dsn = asyncpg_dsn(engine.url.render_as_string(hide_password=False))
    # the replica's pool plans each call; the generic plan is the one PostgreSQL switches a
    # prepared statement to by default once it looks no costlier
    for mode in (PLAN_SETTINGS["plan_cache_mode"], "force_generic_plan"):
        db = await asyncpg.connect(dsn, server_settings={"plan_cache_mode": mode})
        try:
            await db.execute(
                "PREPARE replay(text, text, bigint, bigint, bigint[], bigint, bigint, bigint[], "
                f"int) AS {REPLAY}"
            )
            for pending in ("{}", "{2500}"):  # none pending; an old one pending: one probe
                execute = (
                    f"EXECUTE replay('{TENANT}', 'historian', {first_xid}, 0, '{pending}', 0, 0,"
                    " '{}', 500)"
                )
                assert [r["id"] for r in await db.fetch(execute)] == new
                plan = await db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {execute}")
                assert ("$1" in plan) == (mode == "force_generic_plan"), mode
                explained = json.loads(plan)[0]["Plan"]
                assert _rows_read(explained, "chat_event_readers") <= 4, (mode, pending)
                assert _rows_read(explained, "chat_events") <= 4, (mode, pending)
        finally:
            await db.close()


async def test_a_lost_broker_connection_closes_the_sockets_with_1012_and_they_resume(
    replicas: Replicas, engine: AsyncEngine, token: Any
) -> None:
    """What was routed while the replica had no queue is lost to it: its sockets are closed
    (1012) rather than left silently behind, and a resume after the reconnect has everything."""
    replica = await replicas()
    async with opened(replica.port, token=token("alice")) as alice:
        await alice.until(lambda f: f["type"] == "live")
        before = await write_event(engine, ["alice"])
        await alice.events(1)
        connection = replica.hub._connection
        assert connection is not None
        await connection.close()  # the broker connection drops
        with pytest.raises(ConnectionClosed) as closed:
            await alice.until(lambda _frame: False, timeout=10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1012
        cursor = alice.cursor
    during = await write_event(engine, ["alice"])
    for _ in range(100):  # the hub reconnects by itself
        if replica.ready():
            break
        await asyncio.sleep(0.05)
    async with opened(replica.port, token=token("alice"), cursor=cursor) as again:
        await again.until(lambda f: f["type"] == "live")
        after = await write_event(engine, ["alice"])
        await again.until(lambda f: f.get("eventId") == after)
        assert again.event_ids == [during, after]
        assert before not in again.event_ids
