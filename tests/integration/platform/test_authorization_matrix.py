"""Every route, every kind of caller: who may do what, decided per route, checked per cell.

The table `ROUTES` holds one decision per route the app serves; a route the app serves that the
table does not hold fails `test_every_route_has_a_decision`, so a new route cannot ship without
one. The callers, and what each gets:

- no token, an expired token, a bad signature, `alg: none`: 401;
- a valid token without the route's scope: 403;
- another tenant (every scope but admin): 404 on the owner's rows, lists without them, and
  creating works for itself (but the gateway's send: its provider account is the owner's, 403);
- the owner's tenant: the route's success;
- an admin (the `admin` scope, a third tenant): the route's success, on the owner's rows too.

Operators' routes (`/admin/...`, kind `operator`) answer the admin alone: every tenant's
caller without the `admin` scope gets 403.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from litestar.routes import HTTPRoute
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.app import create_app
from relaybox.api.auth import ADMIN_SCOPE, ALL_SCOPES, PUBLIC_PATHS, USER_SCOPES, issue_token
from relaybox.api.settings import ApiSettings

OWNER = "test-client"  # also the gateway's account owner in the test settings
INTRUDER = "intruder"
ROOT = "root"
CSV = b"email\nana@example.com\nbo@example.com\n"


@dataclass
class Resources:
    """Rows of the owner's tenant, made through the API as the owner."""

    client: httpx.AsyncClient
    engine: AsyncEngine
    headers: dict[str, str]

    async def email(self) -> str:
        body = {"to": "ana@example.com", "subject": "s", "text": "t"}
        answer = await self.client.post("/send", json=body, headers=self.headers)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    async def mailing(self) -> str:
        answer = await self.client.post(
            "/mailings",
            files={"file": ("list.csv", CSV + uuid.uuid4().hex.encode(), "text/csv")},
            headers=self.headers,
        )
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    async def paused_mailing(self) -> str:
        mailing_id = await self.mailing()
        answer = await self.client.post(f"/mailings/{mailing_id}/pause", headers=self.headers)
        assert answer.status_code == 200, answer.text
        return mailing_id

    async def message(self) -> dict[str, Any]:
        body = {
            "channel": "whatsapp",
            "to": "+15550001111",
            "text": "hello",
            "clientMessageId": uuid.uuid4().hex,
        }
        answer = await self.client.post("/messages/send", json=body, headers=self.headers)
        assert answer.status_code == 202, answer.text
        found: dict[str, Any] = answer.json()
        return found

    async def message_id(self) -> str:
        return str((await self.message())["id"])

    async def dead_letter(self) -> str:
        """A dead letter as the consumer's drain files it (no consumer runs here)."""
        letter_id = str(uuid.uuid4())
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO dead_letters (id, route, fingerprint, payload, last_error)"
                    " VALUES (:id, 'email.send', :print, '{}', 'attempts ran out')"
                ),
                {"id": letter_id, "print": letter_id},
            )
        return letter_id

    async def conversation(self) -> str:
        return str((await self.message())["conversationId"])

    async def failed_message(self) -> str:
        message_id = await self.message_id()
        async with self.engine.begin() as conn:
            await conn.execute(
                text("UPDATE messages SET status = 'FAILED', failed_at = now() WHERE id = :id"),
                {"id": message_id},
            )
        return message_id


Make = Callable[[Resources], Awaitable[str]]


@dataclass(frozen=True)
class Route:
    """One decision: the scope a route needs, and what a request to it is.

    `kind` is `create` (makes a row of the caller's tenant), `list` (the caller's tenant's rows),
    `item` (one row, the owner's, made fresh by `make` for each caller that may change it) or
    `operator` (an admin's route: `make` gives the row its URL names, if any).
    """

    method: str
    path: str
    scope: str
    kind: str
    ok: int = 200
    make: Make | None = None
    body: dict[str, Any] | None = None
    files: bool = False
    other_tenant: int | None = None  # what another tenant gets, when not the kind's default
    url: Callable[[str], str] = field(default=lambda path: path)


def item(method: str, path: str, scope: str, make: Make, ok: int = 200) -> Route:
    start, rest = path.split("{", 1)
    end = rest.split("}", 1)[1]
    return Route(method, path, scope, "item", ok, make, url=lambda row: f"{start}{row}{end}")


SEND_BODY = {"to": "ana@example.com", "subject": "s", "text": "t"}
MESSAGE_BODY = {"channel": "instagram", "to": "ig_ana", "text": "hi"}

ROUTES = [
    Route("POST", "/send", "email:send", "create", 202, body=SEND_BODY),
    Route("POST", "/email/send", "email:send", "create", 202, body=SEND_BODY),
    Route("GET", "/logs/email", "email:read", "list", make=Resources.email),
    Route("GET", "/email/logs", "email:read", "list", make=Resources.email),
    item("GET", "/emails/{email_id:uuid}", "email:read", Resources.email),
    Route("POST", "/mailings", "mailing:send", "create", 202, files=True),
    Route("GET", "/mailings", "mailing:read", "list", make=Resources.mailing),
    item("GET", "/mailings/{mailing_id:uuid}", "mailing:read", Resources.mailing),
    item("GET", "/mailings/{mailing_id:uuid}/entries", "mailing:read", Resources.mailing),
    item("GET", "/mailings/{mailing_id:uuid}/errors", "mailing:read", Resources.mailing),
    item("POST", "/mailings/{mailing_id:uuid}/pause", "mailing:send", Resources.mailing),
    item("POST", "/mailings/{mailing_id:uuid}/resume", "mailing:send", Resources.paused_mailing),
    item("POST", "/mailings/{mailing_id:uuid}/cancel", "mailing:send", Resources.mailing),
    item("POST", "/mailings/{mailing_id:uuid}/retry-failed", "mailing:send", Resources.mailing),
    Route(
        "POST",
        "/messages/send",
        "meta:send",
        "create",
        202,
        body=MESSAGE_BODY,
        other_tenant=403,  # the gateway's provider account is the owner's
    ),
    item("GET", "/messages/{message_id:uuid}", "meta:read", Resources.message_id),
    item("POST", "/messages/{message_id:uuid}/retry", "meta:send", Resources.failed_message, 202),
    Route("GET", "/conversations", "meta:read", "list", make=Resources.conversation),
    item("GET", "/conversations/{conversation_id:uuid}", "meta:read", Resources.conversation),
    *(
        item("POST", f"/conversations/{{conversation_id:uuid}}/{action}", "meta:send", maker)
        for action, maker in [
            ("read", Resources.conversation),
            ("archive", Resources.conversation),
            ("unarchive", Resources.conversation),
            ("close", Resources.conversation),
            ("reopen", Resources.conversation),
        ]
    ),
]
DEAD_LETTER = "/admin/dead-letters/{letter_id:uuid}"
ROUTES += [
    Route("GET", "/admin/dead-letters", ADMIN_SCOPE, "operator", make=Resources.dead_letter),
    Route(
        "GET",
        DEAD_LETTER,
        ADMIN_SCOPE,
        "operator",
        make=Resources.dead_letter,
        url=lambda row: DEAD_LETTER.replace("{letter_id:uuid}", row),
    ),
    Route(
        "POST", "/admin/dead-letters/replay", ADMIN_SCOPE, "operator", body={"route": "meta.send"}
    ),
    Route(
        "POST", "/admin/dead-letters/discard", ADMIN_SCOPE, "operator", body={"route": "meta.send"}
    ),
]
PUBLIC = {
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/webhooks/mock-meta"),
    ("POST", "/webhooks/mock-meta"),
    ("POST", "/webhooks/push"),
}
CALLERS = [
    "no token",
    "expired",
    "bad signature",
    "alg none",
    "wrong scope",
    "other tenant",
    "own tenant",
    "admin",
]


def served_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, but the OpenAPI document's and OPTIONS."""
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path.startswith("/api"):
            continue
        for handler in route.route_handlers:
            found.update((m, route.path) for m in handler.http_methods if m != "OPTIONS")
    return found


def token_for(settings: ApiSettings, caller: str, scope: str) -> str | None:
    now = datetime.now(UTC)
    claims = {
        "sub": OWNER,
        "scopes": list(USER_SCOPES),
        "iat": now - timedelta(minutes=1),
        "exp": now + timedelta(hours=1),
    }
    secret = settings.auth.jwt_secret
    match caller:
        case "no token":
            return None
        case "expired":
            claims["iat"], claims["exp"] = now - timedelta(hours=2), now - timedelta(minutes=5)
        case "bad signature":
            secret = "another-secret-that-is-long-enough-for-hs256"
        case "alg none":
            return jwt.encode(claims, key="", algorithm="none")
        case "wrong scope":
            claims["scopes"] = [s for s in ALL_SCOPES if s != scope and s != ADMIN_SCOPE]
        case "other tenant":
            claims["sub"] = INTRUDER
        case "admin":
            claims["sub"], claims["scopes"] = ROOT, list(ALL_SCOPES)
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.fixture
async def resources(
    api_settings: ApiSettings, engine: AsyncEngine
) -> Callable[[httpx.AsyncClient], Resources]:
    owner = {"Authorization": f"Bearer {issue_token(api_settings, OWNER, USER_SCOPES)}"}
    return lambda client: Resources(client, engine, owner)


CHAT = "/chat/"  # the messenger's routes: tests/integration/chat/test_authorization_matrix.py


def test_every_route_has_a_decision(api_settings: ApiSettings, engine: AsyncEngine) -> None:
    app = create_app(api_settings, engine=engine)
    decided = {(r.method, r.path) for r in ROUTES} | PUBLIC
    assert {(m, p) for m, p in served_routes(app) if not p.startswith(CHAT)} == decided
    assert all(any(p.startswith(public) for public in PUBLIC_PATHS) for _, p in PUBLIC)


async def test_public_routes_need_no_token(api_settings: ApiSettings, engine: AsyncEngine) -> None:
    app = create_app(api_settings, engine=engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
        base_url="http://relaybox.test",
    ) as anonymous:
        statuses = {
            (method, path): (await anonymous.request(method, path)).status_code
            for method, path in PUBLIC
        }
    assert statuses == {
        ("GET", "/health"): 200,
        ("GET", "/ready"): 200,
        ("GET", "/metrics"): 200,
        ("GET", "/webhooks/mock-meta"): 403,  # the handshake without the verify token
        ("POST", "/webhooks/mock-meta"): 401,  # no X-Hub-Signature-256: the provider's auth
        ("POST", "/webhooks/push"): 401,
    }


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_the_route_answers_each_caller_as_decided(
    route: Route,
    api_settings: ApiSettings,
    engine: AsyncEngine,
    resources: Callable[[httpx.AsyncClient], Resources],
) -> None:
    app = create_app(api_settings, engine=engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
        base_url="http://relaybox.test",
    ) as client:
        rows = resources(client)
        shared = await route.make(rows) if route.make else ""  # what refused callers aim at
        answers: dict[str, int] = {}
        for caller in CALLERS:
            fresh = caller in ("own tenant", "admin") and route.kind == "item" and route.make
            target = await route.make(rows) if fresh and route.make else shared
            answer = await _call(
                client, route, target, token_for(api_settings, caller, route.scope)
            )
            answers[caller] = answer.status_code
            if route.kind == "list":
                seen = target in answer.text
                assert seen == (caller in ("own tenant", "admin")), (caller, seen)
    assert answers == _expected(route), f"{route.method} {route.path}"


async def _call(
    client: httpx.AsyncClient, route: Route, target: str, token: str | None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = route.url(target) if "{" in route.path else route.path
    if route.files:
        upload = {"file": ("list.csv", CSV + uuid.uuid4().hex.encode(), "text/csv")}
        return await client.request(route.method, url, files=upload, headers=headers)
    body = dict(route.body) if route.body else None
    if body is not None and route.path == "/messages/send":
        body["clientMessageId"] = uuid.uuid4().hex
    return await client.request(route.method, url, json=body, headers=headers)


def _expected(route: Route) -> dict[str, int]:
    if route.kind == "operator":  # no tenant's caller is an operator
        unauthenticated = ("no token", "expired", "bad signature", "alg none")
        return {c: 401 if c in unauthenticated else 403 for c in CALLERS} | {"admin": route.ok}
    other = {"create": route.ok, "list": route.ok, "item": 404}[route.kind]
    return {
        "no token": 401,
        "expired": 401,
        "bad signature": 401,
        "alg none": 401,
        "wrong scope": 403,
        "other tenant": route.other_tenant or other,
        "own tenant": route.ok,
        "admin": route.ok,
    }
