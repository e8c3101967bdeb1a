"""Tenants: each sees and changes its own rows, its totals count its own emails, an admin sees
every tenant's, and the tenant can come from another claim than the subject.

(Every route against every kind of caller is in test_authorization_matrix.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.app import create_app
from relaybox.api.auth import ALL_SCOPES, USER_SCOPES, issue_token
from relaybox.api.settings import ApiSettings, AuthSettings

BODY = {"to": "ana@example.com", "subject": "hello", "text": "hi"}


@asynccontextmanager
async def callers(
    settings: ApiSettings, engine: AsyncEngine
) -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    """`as_(token)`: a client of the app presenting `token`."""
    app = create_app(settings, engine=engine)
    clients: list[httpx.AsyncClient] = []

    def as_(token: str) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
            base_url="http://relaybox.test",
            headers={"Authorization": f"Bearer {token}"},
        )
        clients.append(client)
        return client

    try:
        yield as_
    finally:
        for client in clients:
            await client.aclose()


async def send(client: httpx.AsyncClient, **headers: str) -> str:
    answer = await client.post("/send", json=BODY, headers=headers)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


async def log(client: httpx.AsyncClient) -> dict[str, Any]:
    answer = await client.get("/logs/email")
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def test_each_tenant_sees_its_own_emails_and_totals_and_an_admin_sees_all(
    api_settings: ApiSettings, engine: AsyncEngine
) -> None:
    async with callers(api_settings, engine) as as_:
        acme = as_(issue_token(api_settings, "acme", USER_SCOPES))
        globex = as_(issue_token(api_settings, "globex", USER_SCOPES))
        admin = as_(issue_token(api_settings, "ops", ALL_SCOPES))
        acme_ids = {await send(acme), await send(acme)}
        globex_id = await send(globex)

        acme_log, globex_log, admin_log = await log(acme), await log(globex), await log(admin)
        assert {e["id"] for e in acme_log["data"]} == acme_ids
        assert (acme_log["meta"]["total"], acme_log["stats"]["today"]["total"]) == (2, 2)
        assert {e["id"] for e in globex_log["data"]} == {globex_id}
        assert globex_log["stats"]["today"]["pending"] == 1
        assert {e["id"] for e in admin_log["data"]} == {*acme_ids, globex_id}
        assert admin_log["stats"]["today"]["total"] == 3

        assert (await globex.get(f"/emails/{next(iter(acme_ids))}")).status_code == 404
        assert (await admin.get(f"/emails/{globex_id}")).status_code == 200
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT id::text, tenant_id FROM emails"))).all()
    owners: dict[str, str] = {r[0]: r[1] for r in rows}
    assert owners == {**dict.fromkeys(acme_ids, "acme"), globex_id: "globex"}


async def test_one_idempotency_key_in_two_tenants_makes_two_emails(
    api_settings: ApiSettings, engine: AsyncEngine
) -> None:
    async with callers(api_settings, engine) as as_:
        acme = as_(issue_token(api_settings, "acme", USER_SCOPES))
        globex = as_(issue_token(api_settings, "globex", USER_SCOPES))
        first = await send(acme, **{"Idempotency-Key": "welcome-1"})
        other = await send(globex, **{"Idempotency-Key": "welcome-1"})
        again = await send(acme, **{"Idempotency-Key": "welcome-1"})
    assert first == again != other


async def test_another_tenant_cannot_touch_a_mailing(
    api_settings: ApiSettings, engine: AsyncEngine
) -> None:
    async with callers(api_settings, engine) as as_:
        acme = as_(issue_token(api_settings, "acme", USER_SCOPES))
        globex = as_(issue_token(api_settings, "globex", USER_SCOPES))
        created = await acme.post(
            "/mailings", files={"file": ("l.csv", b"email\nana@example.com\n", "text/csv")}
        )
        assert created.status_code == 202, created.text
        mailing_id = created.json()["id"]
        for action in ("pause", "cancel", "retry-failed"):
            refused = await globex.post(f"/mailings/{mailing_id}/{action}")
            assert refused.status_code == 404, refused.text
        assert (await globex.get("/mailings")).json()["data"] == []
        assert (await acme.get(f"/mailings/{mailing_id}")).json()["status"] == "PARSING"


async def test_the_tenant_can_be_another_claim_shared_by_several_users(
    api_settings: ApiSettings, engine: AsyncEngine
) -> None:
    settings = api_settings.model_copy(
        update={"auth": AuthSettings(jwt_secret=api_settings.auth.jwt_secret, tenant_claim="org")}
    )
    async with callers(settings, engine) as as_:
        alice = as_(issue_token(settings, "alice", USER_SCOPES, tenant="acme"))
        bob = as_(issue_token(settings, "bob", USER_SCOPES, tenant="acme"))
        eve = as_(issue_token(settings, "eve", USER_SCOPES, tenant="globex"))
        email_id = await send(alice)
        assert (await bob.get(f"/emails/{email_id}")).status_code == 200
        assert (await eve.get(f"/emails/{email_id}")).status_code == 404

        now = int(datetime.now(UTC).timestamp())
        claims = {"sub": "mallory", "scopes": list(USER_SCOPES), "iat": now, "exp": now + 60}
        orphan = jwt.encode(claims, settings.auth.jwt_secret, algorithm="HS256")
        refused = await as_(orphan).get("/logs/email")
    assert refused.status_code == 401
    assert "org" in refused.json()["detail"]


async def test_only_the_gateway_owner_or_an_admin_sends_through_its_account(
    api_settings: ApiSettings, engine: AsyncEngine
) -> None:
    body = {"channel": "whatsapp", "to": "+15550002222", "text": "hi", "clientMessageId": "c-1"}
    async with callers(api_settings, engine) as as_:
        owner = as_(issue_token(api_settings, api_settings.meta.tenant, USER_SCOPES))
        stranger = as_(issue_token(api_settings, "globex", USER_SCOPES))
        admin = as_(issue_token(api_settings, "ops", ALL_SCOPES))
        refused = await stranger.post("/messages/send", json=body)
        assert refused.status_code == 403, refused.text
        sent = await admin.post("/messages/send", json=body)
        assert sent.status_code == 202, sent.text
        # The admin sent on the owner's behalf: the owner sees it, and the same
        # clientMessageId from the owner is that message.
        again = await owner.post("/messages/send", json=body)
        assert (again.status_code, again.json()["id"]) == (200, sent.json()["id"])
        assert (await stranger.get("/conversations")).json()["data"] == []
        assert (await owner.get("/conversations")).json()["meta"]["total"] == 1
