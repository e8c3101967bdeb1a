"""Health, readiness, metrics, OpenAPI, request ids and what error answers never contain."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.app import create_app
from relaybox.api.auth import issue_token
from relaybox.api.emails import log as email_log
from relaybox.api.settings import ApiSettings, RateLimitSettings
from relaybox.common.db.session import dispose
from relaybox.common.settings import DatabaseSettings

BODY = {"to": "alice@example.com", "subject": "Hello", "text": "Hi"}
PROBLEM = "application/problem+json"
DB_PASSWORD = "hunter2-db-password"


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@asynccontextmanager
async def unreachable_db_app(api_settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The API owning its engine, pointed at a PostgreSQL that is not there."""
    url = f"postgresql+asyncpg://postgres:{DB_PASSWORD}@127.0.0.1:{closed_port()}/relaybox"
    settings = api_settings.model_copy(update={"database": DatabaseSettings(url=url)})
    app = create_app(settings)
    token = issue_token(settings, "test-client")
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
            base_url="http://relaybox.test",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            yield client
    finally:
        engine: AsyncEngine = app.state.engine
        await dispose(engine)


# --- health and readiness -------------------------------------------------------------------


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_when_the_database_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok"}


async def test_not_ready_without_the_database_and_no_secret_leaks(
    api_settings: ApiSettings,
) -> None:
    async with unreachable_db_app(api_settings) as client:
        assert (await client.get("/health")).status_code == 200
        not_ready = await client.get("/ready")
        assert not_ready.status_code == 503
        assert not_ready.json()["status"] == "not ready"
        assert DB_PASSWORD not in not_ready.text
        # the database out of reach: a 503 to retry, problem details, nothing of the exception
        failed = await client.post("/send", json=BODY)
        assert failed.status_code == 503
        assert failed.headers["retry-after"] == "5"
        assert failed.headers["content-type"].startswith(PROBLEM)
        assert failed.json()["title"] == "Service Unavailable"
        assert DB_PASSWORD not in failed.text
        assert "127.0.0.1" not in failed.text
        assert failed.headers["x-request-id"]


async def test_an_unhandled_exception_is_one_logged_500_with_request_id_method_and_route(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*_: object) -> None:
        raise RuntimeError("a bug (secret: hunter2)")

    monkeypatch.setattr(email_log, "get_email", broken)
    with caplog.at_level(logging.INFO):
        failed = await client.get(
            "/emails/6f1c1c1e-58b4-4a43-9b44-3d0e6f3c6a01", headers={"X-Request-ID": "bug-1"}
        )
    assert failed.status_code == 500
    assert failed.headers["content-type"].startswith(PROBLEM)
    assert "hunter2" not in failed.text
    assert "bug-1" in failed.json()["detail"] or failed.headers["x-request-id"] == "bug-1"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    (logged,) = errors
    assert logged.exc_info is not None and "a bug" in str(logged.exc_info[1])
    assert vars(logged)["request_id"] == "bug-1"
    assert vars(logged)["method"] == "GET"
    assert vars(logged)["route"] == "/emails/{email_id}"
    access = [r for r in caplog.records if r.name == "relaybox.api.access"]
    assert [vars(r)["status"] for r in access] == [500]


# --- metrics --------------------------------------------------------------------------------


async def test_metrics_expose_relaybox_api_request_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.post("/send", json=BODY)).status_code == 202
    assert (await client.get("/logs/email")).status_code == 200
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    metrics = response.text
    assert "relaybox_api_requests_total" in metrics
    assert "relaybox_api_request_duration_seconds" in metrics
    request_lines = [
        line for line in metrics.splitlines() if line.startswith("relaybox_api_requests_total")
    ]
    assert any('path="/send"' in line and 'status_code="202"' in line for line in request_lines)
    assert all('path="/metrics"' not in line for line in request_lines)


# --- OpenAPI --------------------------------------------------------------------------------


async def test_openapi_lists_every_endpoint_and_the_bearer_scheme(
    client: httpx.AsyncClient,
) -> None:
    client.headers.pop("Authorization", None)
    response = await client.get("/api/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.1")
    paths = spec["paths"]
    for path in ("/send", "/email/send"):
        assert "post" in paths[path], path
    for path in ("/logs/email", "/email/logs"):
        assert "get" in paths[path], path
        names = {p["name"] for p in paths[path]["get"]["parameters"]}
        assert {"page", "limit", "cursor", "status", "from", "to"} <= names
    assert any(p.startswith("/emails/") for p in paths)
    assert "/health" in paths and "/ready" in paths
    schemes = spec["components"]["securitySchemes"]
    assert any(s.get("scheme") == "Bearer" or s.get("scheme") == "bearer" for s in schemes.values())
    send_body = paths["/send"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert send_body


async def test_swagger_ui_at_api(client: httpx.AsyncClient) -> None:
    client.headers.pop("Authorization", None)
    response = await client.get("/api")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger" in response.text.lower()


# --- X-Request-ID ---------------------------------------------------------------------------


async def test_request_id_is_echoed_on_success_and_on_every_kind_of_error(
    client: httpx.AsyncClient, api_settings: ApiSettings, engine: AsyncEngine, token: str
) -> None:
    rid = {"X-Request-ID": "req-1234.abc:XYZ_9"}
    answers = [
        await client.post("/send", json=BODY, headers=rid),  # 202
        await client.get("/logs/email", headers=rid),  # 200
        await client.post("/send", json={"to": "x"}, headers=rid),  # 400 validation
        await client.get("/logs/email", params={"from": "bad"}, headers=rid),  # 400 ApiError
        await client.get("/emails/6f1c1c1e-58b4-4a43-9b44-3d0e6f3c6a01", headers=rid),  # 404
        await client.get("/no/such/route", headers=rid),  # 404 from the router
        await client.get("/logs/email", headers={**rid, "Authorization": "Bearer x"}),  # 401
        await client.get("/health", headers=rid),
    ]
    statuses = [a.status_code for a in answers]
    assert statuses == [202, 200, 400, 400, 404, 404, 401, 200]
    for answer in answers:
        assert answer.headers.get_list("x-request-id") == ["req-1234.abc:XYZ_9"], answer.url

    settings = api_settings.model_copy(update={"rate_limit": RateLimitSettings(send_per_minute=1)})
    app = create_app(settings, engine=engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
        base_url="http://relaybox.test",
        headers={"Authorization": f"Bearer {token}", **rid},
    ) as limited:
        assert (await limited.post("/send", json=BODY)).status_code == 202
        refused = await limited.post("/send", json=BODY)
        assert refused.status_code == 429
        assert refused.headers.get_list("x-request-id") == ["req-1234.abc:XYZ_9"]


@pytest.mark.parametrize(
    "incoming", ["has space", "x" * 129, "semi;colon", "new\tline", ""], ids=repr
)
async def test_unsafe_request_id_is_replaced(client: httpx.AsyncClient, incoming: str) -> None:
    response = await client.get("/health", headers={"X-Request-ID": incoming})
    echoed = response.headers.get_list("x-request-id")
    assert len(echoed) == 1
    assert echoed[0] != incoming
    assert len(echoed[0]) == 32 and int(echoed[0], 16) >= 0


async def test_each_request_gets_its_own_id(client: httpx.AsyncClient) -> None:
    first = (await client.get("/health")).headers["x-request-id"]
    second = (await client.get("/health")).headers["x-request-id"]
    assert first and second and first != second


# --- secrets --------------------------------------------------------------------------------


async def test_error_answers_never_echo_the_token(
    client: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    token = issue_token(api_settings, "reader", scopes=("email:read",))
    forbidden = await client.post("/send", json=BODY, headers={"Authorization": f"Bearer {token}"})
    assert forbidden.status_code == 403
    assert token not in forbidden.text
    assert api_settings.auth.jwt_secret not in forbidden.text
    wrong = await client.get("/logs/email", headers={"Authorization": f"Bearer {token}x"})
    assert wrong.status_code == 401
    assert token not in wrong.text
    assert all(token not in v for v in wrong.headers.values())
