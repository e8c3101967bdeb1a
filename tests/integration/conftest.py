"""Fixtures of the integration suite: the SMTP sink, the API client and the running pipeline."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.auth import USER_SCOPES, issue_token
from relaybox.api.settings import (
    ApiSettings,
    AuthSettings,
    MetaGatewaySettings,
    PushReceiptSettings,
)
from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.mock_meta.settings import SmtpSinkSettings
from relaybox.mock_meta.smtp.sink import SmtpSink
from tests.support.clients import api_client
from tests.support.pipeline import (
    Pipeline,
    consumer_settings,
    publisher_settings,
    running_pipeline,
)

SECRET = "test-secret-that-is-long-enough-for-hs256-use"
WEBHOOK_SECRET = "test-webhook-signing-secret"


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    smtp = SmtpSink(SmtpSinkSettings(port=0))
    await smtp.start()
    yield smtp
    await smtp.stop()


EVENTS_KEPT_H = 100 * 365 * 24


@pytest.fixture
def api_settings(db_settings: DatabaseSettings, broker_settings: BrokerSettings) -> ApiSettings:
    return ApiSettings(
        database=db_settings,
        broker=broker_settings,
        auth=AuthSettings(jwt_secret=SECRET),
        # The gateway's account belongs to the tests' client (their token's subject).
        meta=MetaGatewaySettings(webhook_secret=WEBHOOK_SECRET, tenant="test-client"),
        push=PushReceiptSettings(webhook_secret=WEBHOOK_SECRET),
        # The tests post events with fixed timestamps (2025, 2026): remember events long enough
        # for those to count as new (gateway/test_webhooks.py tests the default's expiry).
        webhook_event_retention_h=EVENTS_KEPT_H,
    )


@pytest.fixture
def token(api_settings: ApiSettings) -> str:
    return issue_token(api_settings, "test-client", USER_SCOPES)  # one tenant, not an admin


@pytest.fixture
async def client(
    api_settings: ApiSettings, engine: AsyncEngine, token: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The API in this test's event loop (ASGI transport), authenticated with all scopes."""
    async with api_client(api_settings, engine, token) as test_client:
        yield test_client


@pytest.fixture
async def pipeline(
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
) -> AsyncIterator[Pipeline]:
    async with running_pipeline(
        engine,
        topology,
        publisher_settings(db_settings, broker_settings),
        consumer_settings(db_settings, broker_settings, sink.port),
    ) as running:
        yield running
