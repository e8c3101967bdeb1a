"""GET /logs/email (alias /email/logs) and GET /emails/{id}: paging, filters, today's totals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.settings import ApiSettings
from relaybox.common.db.models import Email
from tests.support.clients import api_client as api

PROBLEM = "application/problem+json"
ITEM_KEYS = {
    "id",
    "to",
    "from",
    "subject",
    "status",
    "attempts",
    "createdAt",
    "sentAt",
    "failedAt",
    "error",
}
T0 = datetime(2024, 6, 15, 1, 0, tzinfo=UTC)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


async def add(
    engine: AsyncEngine,
    created_at: datetime,
    status: str = "PENDING",
    *,
    email_id: uuid.UUID | None = None,
    **extra: Any,
) -> uuid.UUID:
    """Insert one email row directly, with a chosen created_at and status."""
    email_id = email_id or uuid.uuid4()
    values: dict[str, Any] = {
        "id": email_id,
        "tenant_id": "test-client",
        "to_address": f"{email_id.hex[:8]}@example.com",
        "from_address": "relaybox@localhost",
        "subject": f"subject {created_at.isoformat()}",
        "text_body": "body",
        "status": status,
        "created_at": created_at,
        "updated_at": created_at,
    }
    if status == "SENT":
        values.update(sent_at=created_at + timedelta(seconds=5), attempts=1)
    if status == "FAILED":
        values.update(failed_at=created_at + timedelta(seconds=9), attempts=3, last_error="550")
    values.update(extra)
    async with engine.begin() as conn:
        await conn.execute(insert(Email).values(**values))
    return email_id


def zoned(api_settings: ApiSettings, timezone: str) -> ApiSettings:
    return api_settings.model_copy(update={"timezone": timezone})


async def log(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/logs/email", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["data"]]


@pytest.fixture
async def seven(engine: AsyncEngine) -> list[str]:
    """Seven rows, three of them sharing one created_at; their ids newest first.

    The order is computed here (PostgreSQL orders uuids bytewise, as Python does), so the
    tied rows straddle the first page boundary at limit 3.
    """
    made = [
        (T0 + timedelta(minutes=m), await add(engine, T0 + timedelta(minutes=m)))
        for m in (1, 2, 4, 5)
    ]
    tie = T0 + timedelta(minutes=3)
    made += [(tie, await add(engine, tie)) for _ in range(3)]
    return [str(email_id) for _, email_id in sorted(made, reverse=True)]


# --- shape, order, alias --------------------------------------------------------------------


async def test_items_shape_newest_first_and_meta(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    old = await add(engine, T0, "SENT")
    new = await add(engine, T0 + timedelta(hours=1), "FAILED")
    page = await log(client)
    assert set(page) == {"data", "meta", "stats"}
    assert ids(page) == [str(new), str(old)]
    failed, sent = page["data"]
    for item in page["data"]:
        assert set(item) == ITEM_KEYS
    assert failed["status"] == "FAILED"
    assert failed["error"] == "550"
    assert failed["attempts"] == 3
    assert failed["sentAt"] is None
    assert utc(failed["failedAt"]) == T0 + timedelta(hours=1, seconds=9)
    assert utc(failed["createdAt"]) == T0 + timedelta(hours=1)
    assert sent["status"] == "SENT"
    assert utc(sent["sentAt"]) == T0 + timedelta(seconds=5)
    assert sent["failedAt"] is None and sent["error"] is None
    assert sent["from"] == "relaybox@localhost"
    assert sent["to"].endswith("@example.com")
    assert page["meta"] == {"page": 1, "limit": 20, "total": 2, "nextCursor": None}
    assert set(page["stats"]["today"]) == {
        "total",
        "sent",
        "failed",
        "pending",
        "date",
        "timezone",
    }


async def test_alias_email_logs_answers_the_same(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add(engine, T0)
    first = await client.get("/logs/email", params={"limit": 5})
    second = await client.get("/email/logs", params={"limit": 5})
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()


async def test_empty_log(client: httpx.AsyncClient) -> None:
    page = await log(client)
    assert page["data"] == []
    assert page["meta"] == {"page": 1, "limit": 20, "total": 0, "nextCursor": None}
    assert page["stats"]["today"]["total"] == 0


# --- paging ---------------------------------------------------------------------------------


async def test_page_paging(client: httpx.AsyncClient, seven: list[str]) -> None:
    pages = [await log(client, page=n, limit=3) for n in (1, 2, 3, 4)]
    assert [ids(p) for p in pages] == [seven[0:3], seven[3:6], seven[6:7], []]
    assert [p["meta"]["page"] for p in pages] == [1, 2, 3, 4]
    assert all(p["meta"]["total"] == 7 and p["meta"]["limit"] == 3 for p in pages)


async def test_cursor_paging_across_three_pages_without_overlap_or_gap(
    client: httpx.AsyncClient, seven: list[str]
) -> None:
    first = await log(client, limit=3)
    assert first["meta"]["nextCursor"]
    second = await log(client, limit=3, cursor=first["meta"]["nextCursor"])
    assert second["meta"]["nextCursor"]
    third = await log(client, limit=3, cursor=second["meta"]["nextCursor"])
    assert third["meta"]["nextCursor"] is None
    walked = ids(first) + ids(second) + ids(third)
    assert walked == seven
    assert len(set(walked)) == 7
    assert [len(ids(p)) for p in (first, second, third)] == [3, 3, 1]


async def test_cursor_is_stable_when_newer_rows_arrive(
    client: httpx.AsyncClient, engine: AsyncEngine, seven: list[str]
) -> None:
    first = await log(client, limit=3)
    await add(engine, T0 + timedelta(days=1))  # newer than everything: must not shift page 2
    second = await log(client, limit=3, cursor=first["meta"]["nextCursor"])
    assert ids(second) == seven[3:6]


async def test_exact_multiple_of_limit_has_no_next_cursor(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    for minute in range(4):
        await add(engine, T0 + timedelta(minutes=minute))
    first = await log(client, limit=2)
    second = await log(client, limit=2, cursor=first["meta"]["nextCursor"])
    assert len(second["data"]) == 2
    assert second["meta"]["nextCursor"] is None


async def test_cursor_paging_keeps_the_filter(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    sent = [str(await add(engine, T0 + timedelta(minutes=m), "SENT")) for m in range(5)]
    for minute in range(5):
        await add(engine, T0 + timedelta(minutes=minute, seconds=30), "FAILED")
    first = await log(client, limit=2, status="SENT")
    second = await log(client, limit=2, status="SENT", cursor=first["meta"]["nextCursor"])
    third = await log(client, limit=2, status="SENT", cursor=second["meta"]["nextCursor"])
    assert ids(first) + ids(second) + ids(third) == sent[::-1]
    assert third["meta"]["nextCursor"] is None


@pytest.mark.parametrize(
    "cursor",
    ["zzz", "!!!!", "bm90IGpzb24", "WyJub3QtYS1kYXRlIiwiYWJjIl0", "WzFd", "x" * 600],
    ids=["garbage", "not base64", "not json", "bad values", "wrong arity", "too long"],
)
async def test_bad_cursor_is_a_400_naming_cursor(client: httpx.AsyncClient, cursor: str) -> None:
    response = await client.get("/logs/email", params={"cursor": cursor})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["field"] == "cursor"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 101}, "limit"),
        ({"limit": 0}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"page": 0}, "page"),
        ({"page": -1}, "page"),
        ({"page": "one"}, "page"),
        ({"status": "BOUNCED"}, "status"),
        ({"status": "sent"}, "status"),
    ],
)
async def test_bad_query_is_a_400_naming_the_parameter(
    client: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    response = await client.get("/logs/email", params=params)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["field"] == field
    assert field in problem["detail"]


async def test_limit_100_is_allowed(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    for minute in range(3):
        await add(engine, T0 + timedelta(minutes=minute))
    page = await log(client, limit=100)
    assert len(page["data"]) == 3
    assert page["meta"]["limit"] == 100


# --- filters --------------------------------------------------------------------------------


async def test_status_filter(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    by_status: dict[str, list[str]] = {}
    for minute, status in enumerate(["PENDING", "SENDING", "SENT", "FAILED", "SENT", "PENDING"]):
        made = await add(engine, T0 + timedelta(minutes=minute), status)
        by_status.setdefault(status, []).insert(0, str(made))
    for status, expected in by_status.items():
        page = await log(client, status=status)
        assert ids(page) == expected
        assert page["meta"]["total"] == len(expected)
        assert {item["status"] for item in page["data"]} == {status}


async def test_date_filters_take_whole_days(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    day_before = await add(engine, utc("2024-06-13T23:59:59.999999+00:00"))
    first = await add(engine, utc("2024-06-14T00:00:00+00:00"))
    last = await add(engine, utc("2024-06-15T23:59:59.999999+00:00"))
    day_after = await add(engine, utc("2024-06-16T00:00:00+00:00"))
    both = await log(client, **{"from": "2024-06-14", "to": "2024-06-15"})
    assert ids(both) == [str(last), str(first)]
    assert both["meta"]["total"] == 2
    since = await log(client, **{"from": "2024-06-15"})
    assert ids(since) == [str(day_after), str(last)]
    until = await log(client, to="2024-06-14")
    assert ids(until) == [str(first), str(day_before)]
    one_day = await log(client, **{"from": "2024-06-16", "to": "2024-06-16"})
    assert ids(one_day) == [str(day_after)]


async def test_datetime_filters(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    made = {m: str(await add(engine, T0 + timedelta(minutes=m))) for m in range(0, 60, 10)}
    window = await log(
        client, **{"from": "2024-06-15T01:10:00Z", "to": "2024-06-15T01:40:00+00:00"}
    )
    assert ids(window) == [made[30], made[20], made[10]]  # from inclusive, to exclusive
    offset = await log(client, **{"from": "2024-06-15T10:30:00+09:00"})  # 01:30 UTC
    assert ids(offset) == [made[50], made[40], made[30]]
    naive = await log(client, to="2024-06-15T01:05:00")  # the log's timezone (UTC here)
    assert ids(naive) == [made[0]]


async def test_date_filter_uses_the_configured_timezone(
    api_settings: ApiSettings, engine: AsyncEngine, token: str
) -> None:
    # Tokyo's 2024-06-15 is [2024-06-14T15:00Z, 2024-06-15T15:00Z)
    before = await add(engine, utc("2024-06-14T14:59:59+00:00"))
    inside = await add(engine, utc("2024-06-14T15:00:00+00:00"))
    late = await add(engine, utc("2024-06-15T14:59:59+00:00"))
    await add(engine, utc("2024-06-15T15:00:00+00:00"))
    settings = zoned(api_settings, "Asia/Tokyo")
    async with api(settings, engine, token, lambda: T0) as tokyo:
        page = await log(tokyo, **{"from": "2024-06-15", "to": "2024-06-15"})
        assert ids(page) == [str(late), str(inside)]
        naive = await log(tokyo, to="2024-06-15T00:00:00")  # Tokyo midnight
        assert ids(naive) == [str(before)]


@pytest.mark.parametrize("field", ["from", "to"])
@pytest.mark.parametrize(
    "value",
    ["yesterday", "2024-13-01", "2024-02-30", "15/06/2024", "2024-06-15T25:00:00", "x" * 100],
)
async def test_bad_date_is_a_400_naming_the_parameter(
    client: httpx.AsyncClient, field: str, value: str
) -> None:
    response = await client.get("/logs/email", params={field: value})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["field"] == field
    assert f"'{field}'" in problem["detail"]


# --- today's totals -------------------------------------------------------------------------


async def _seed_around_tokyo_midnight(engine: AsyncEngine) -> None:
    """Rows around Tokyo's 2024-06-15 00:00 (= 2024-06-14T15:00Z)."""
    await add(engine, utc("2024-06-14T14:59:59.999999+00:00"), "SENT")  # Tokyo: yesterday
    await add(engine, utc("2024-06-14T15:00:00+00:00"), "PENDING")  # Tokyo: today's first instant
    await add(engine, utc("2024-06-14T16:00:00+00:00"), "SENT")  # UTC: yesterday
    await add(engine, utc("2024-06-14T23:00:00+00:00"), "FAILED")  # UTC: yesterday
    await add(engine, utc("2024-06-15T00:30:00+00:00"), "PENDING")  # both: today
    await add(engine, utc("2024-06-15T00:45:00+00:00"), "SENDING")  # both: today


async def test_today_stats_in_tokyo_count_rows_of_yesterday_utc(
    api_settings: ApiSettings, engine: AsyncEngine, token: str
) -> None:
    await _seed_around_tokyo_midnight(engine)
    clock = lambda: T0  # noqa: E731 - 2024-06-15T01:00Z = 10:00 in Tokyo
    async with api(zoned(api_settings, "Asia/Tokyo"), engine, token, clock) as tokyo:
        today = (await log(tokyo))["stats"]["today"]
    assert today == {
        "total": 5,
        "sent": 1,
        "failed": 1,
        "pending": 3,  # PENDING + SENDING
        "date": "2024-06-15",
        "timezone": "Asia/Tokyo",
    }
    async with api(api_settings, engine, token, clock) as in_utc:
        today_utc = (await log(in_utc))["stats"]["today"]
    assert today_utc == {
        "total": 2,
        "sent": 0,
        "failed": 0,
        "pending": 2,
        "date": "2024-06-15",
        "timezone": "UTC",
    }


async def test_today_stats_in_new_york_when_utc_is_already_tomorrow(
    api_settings: ApiSettings, engine: AsyncEngine, token: str
) -> None:
    # 2024-06-15T02:00Z is 2024-06-14 22:00 in New York (EDT): its today is
    # [2024-06-14T04:00Z, 2024-06-15T04:00Z)
    await add(engine, utc("2024-06-14T03:59:59+00:00"), "SENT")  # New York: yesterday
    await add(engine, utc("2024-06-14T04:00:00+00:00"), "FAILED")
    await add(engine, utc("2024-06-14T12:00:00+00:00"), "SENT")
    await add(engine, utc("2024-06-14T20:00:00+00:00"), "SENDING")
    await add(engine, utc("2024-06-15T01:00:00+00:00"), "PENDING")  # UTC: today; NY: today
    await add(engine, utc("2024-06-15T04:00:00+00:00"), "SENT")  # New York: tomorrow
    clock = lambda: datetime(2024, 6, 15, 2, 0, tzinfo=UTC)  # noqa: E731
    async with api(zoned(api_settings, "America/New_York"), engine, token, clock) as new_york:
        page = await log(new_york, limit=1)
    assert page["stats"]["today"] == {
        "total": 4,
        "sent": 1,
        "failed": 1,
        "pending": 2,
        "date": "2024-06-14",
        "timezone": "America/New_York",
    }
    assert page["meta"]["total"] == 6  # the totals ignore paging and the filters


async def test_today_stats_ignore_the_filters(
    api_settings: ApiSettings, engine: AsyncEngine, token: str
) -> None:
    await _seed_around_tokyo_midnight(engine)
    async with api(zoned(api_settings, "Asia/Tokyo"), engine, token, lambda: T0) as tokyo:
        page = await log(tokyo, status="FAILED", to="2024-01-01")
    assert page["data"] == []
    assert page["stats"]["today"]["total"] == 5


async def test_today_stats_across_a_dst_change(
    api_settings: ApiSettings, engine: AsyncEngine, token: str
) -> None:
    # New York 2024-03-10 has 23 hours: [05:00Z, 2024-03-11T04:00Z)
    await add(engine, utc("2024-03-10T04:59:59+00:00"), "SENT")
    await add(engine, utc("2024-03-10T05:00:00+00:00"), "SENT")
    await add(engine, utc("2024-03-11T03:59:59+00:00"), "FAILED")
    await add(engine, utc("2024-03-11T04:00:00+00:00"), "FAILED")
    clock = lambda: datetime(2024, 3, 10, 12, 0, tzinfo=UTC)  # noqa: E731
    async with api(zoned(api_settings, "America/New_York"), engine, token, clock) as new_york:
        today = (await log(new_york))["stats"]["today"]
    assert (today["total"], today["sent"], today["failed"], today["date"]) == (
        2,
        1,
        1,
        "2024-03-10",
    )


# --- one email ------------------------------------------------------------------------------


async def test_get_one_email(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    email_id = await add(engine, T0, "SENT", provider_message_id="<p-1@relay>", html_body="<p>")
    response = await client.get(f"/emails/{email_id}")
    assert response.status_code == 200, response.text
    detail = response.json()
    assert set(detail) >= ITEM_KEYS
    assert detail["id"] == str(email_id)
    assert detail["status"] == "SENT"
    assert detail["text"] == "body"
    assert detail["html"] == "<p>"
    assert detail["providerMessageId"] == "<p-1@relay>"


async def test_unknown_email_is_a_404_problem(client: httpx.AsyncClient) -> None:
    unknown = uuid.uuid4()
    response = await client.get(f"/emails/{unknown}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(PROBLEM)
    assert str(unknown) in response.json()["detail"]


async def test_malformed_email_id_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/emails/not-a-uuid")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(PROBLEM)
