"""The messenger's test kit: callers of one tenant (and of others), each an API client of one
app whose tokens name the tenant in an `org` claim."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.app import create_app
from relaybox.api.auth import USER_SCOPES, issue_token
from relaybox.api.settings import ApiSettings
from tests.support.clients import BASE_URL

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
