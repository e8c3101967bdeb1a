"""The messenger's test kit: callers of one tenant (and of others), each an API client of one
app whose tokens name the tenant in an `org` claim; and a push gateway that answers by token."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.app import create_app
from relaybox.api.auth import USER_SCOPES, issue_token
from relaybox.api.settings import ApiSettings
from tests.support.clients import BASE_URL
from tests.support.scripted import request_body
from tests.support.serving import serve_app

TENANT = "acme"
People = Callable[..., httpx.AsyncClient]


@pytest.fixture
def chat_settings(api_settings: ApiSettings) -> ApiSettings:
    """The suite's API settings with the tenant named by the token's `org` claim."""
    auth = api_settings.auth.model_copy(update={"tenant_claim": "org"})
    return api_settings.model_copy(update={"auth": auth})


@pytest.fixture
async def people(chat_settings: ApiSettings, engine: AsyncEngine) -> AsyncIterator[People]:
    """`people("alice")`: the API as user alice of tenant acme (`tenant=` for another
    organisation, `scopes=` for other scopes); one client per caller, closed after the test."""
    app = create_app(chat_settings, engine=engine)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    clients: dict[tuple[str, str, tuple[str, ...]], httpx.AsyncClient] = {}

    def person(
        user: str, *, tenant: str = TENANT, scopes: tuple[str, ...] = USER_SCOPES
    ) -> httpx.AsyncClient:
        key = (user, tenant, tuple(scopes))
        if key not in clients:
            token = issue_token(chat_settings, user, tuple(scopes), tenant=tenant)
            clients[key] = httpx.AsyncClient(
                transport=transport,
                base_url=BASE_URL,
                headers={"Authorization": f"Bearer {token}"},
            )
        return clients[key]

    yield person
    for client in clients.values():
        await client.aclose()


# --- a push gateway that answers by token (the consumer's chat.deliver in the test's loop) ------

SEND_PATH = "/push/v1/messages:send"


@dataclass
class Gateway:
    """A push gateway (ASGI) that answers each token as `answers` says (else accepts), and
    records the tokens it was sent, in order."""

    answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    pushed: list[str] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await request_body(scope, receive, send)
        if body is None:
            return
        token = json.loads(body)["message"]["token"]
        self.pushed.append(token)
        status, answer = self.answers.get(token, (200, {"name": f"projects/p/messages/{token}"}))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, str]]:
    app = Gateway()
    async with serve_app(app) as url:
        yield app, url
