"""Once a provider accepted a send, nothing sends it again: odd success answers, and errors or a
stop between the provider's answer and the SENT record.

Any 2xx is an accepted send, whatever its body; the provider's id is kept when the body has one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiosmtpd.smtp import SMTP
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.faults import FaultSettings
from relaybox.common.messaging.topology import Topology
from relaybox.common.settings import BrokerSettings, DatabaseSettings
from relaybox.consumer.providers.base import OutgoingEmail, PermanentError, RetryableError
from relaybox.consumer.providers.email_api import EmailApiProvider, EmailApiSettings
from relaybox.consumer.providers.http import MAX_RETRY_AFTER_S
from relaybox.consumer.providers.meta import MetaProvider, MetaProviderSettings, OutgoingChat
from relaybox.consumer.providers.smtp import SmtpProvider, SmtpSettings, message_id_for
from relaybox.mock_meta.smtp.sink import SmtpSink
from tests.support.pipeline import (
    consumer_settings,
    email_row,
    publisher_settings,
    running_pipeline,
)
from tests.support.pipeline import wait_final as wait_emails_final
from tests.support.scripted import Answer, ScriptedProvider
from tests.support.serving import serve_app

JSON = (("content-type", "application/json"),)

# Success answers a provider may give: (answer, the id kept).
ODD_SUCCESSES = [
    pytest.param(Answer(200, b"{}", JSON), None, id="empty-object"),
    pytest.param(Answer(200, b"null", JSON), None, id="null"),
    pytest.param(Answer(200, b'"ok"', JSON), None, id="bare-string"),
    pytest.param(Answer(200, b"[]", JSON), None, id="array"),
    pytest.param(Answer(200, b"queued", (("content-type", "text/plain"),)), None, id="not-json"),
    pytest.param(Answer(200, b"{not json", JSON), None, id="broken-json"),
    pytest.param(Answer(200), None, id="no-body"),
    pytest.param(Answer(204), None, id="204"),
    pytest.param(Answer(202, b'{"status": "queued"}', JSON), None, id="202-without-id"),
    pytest.param(Answer(200, b'{"message_id": null}', JSON), None, id="null-id"),
    pytest.param(Answer(200, b'{"message_id": {"a": 1}}', JSON), None, id="object-id"),
    pytest.param(Answer(200, b'{"message_id": "%s"}' % (b"x" * 300), JSON), None, id="long-id"),
    pytest.param(Answer(201, b'{"id": 17, "extra": [1, 2]}', JSON), "17", id="201-numeric-id"),
]


def email(n: int = 1) -> OutgoingEmail:
    return OutgoingEmail(id=f"e-{n}", to="dana@example.com", from_="r@example.com", subject="s")


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedProvider, str]]:
    provider = ScriptedProvider()
    async with serve_app(provider) as url:
        yield provider, url


@pytest.fixture
async def email_api(
    scripted: tuple[ScriptedProvider, str],
) -> AsyncIterator[tuple[ScriptedProvider, EmailApiProvider]]:
    provider, url = scripted
    api = EmailApiProvider(EmailApiSettings(base_url=url, timeout_s=5))
    yield provider, api
    await api.close()


@pytest.fixture
async def meta(
    scripted: tuple[ScriptedProvider, str],
) -> AsyncIterator[tuple[ScriptedProvider, MetaProvider]]:
    provider, url = scripted
    api = MetaProvider(MetaProviderSettings(base_url=url, timeout_s=5))
    yield provider, api
    await api.close()


@pytest.mark.parametrize(("answer", "kept"), ODD_SUCCESSES)
async def test_email_api_takes_any_2xx_as_accepted(
    email_api: tuple[ScriptedProvider, EmailApiProvider], answer: Answer, kept: str | None
) -> None:
    scripted, api = email_api
    scripted.script(answer)
    assert await api.send(email()) == kept
    assert len(scripted.sends()) == 1


async def test_email_api_keeps_the_message_id_of_the_contracts_202(
    email_api: tuple[ScriptedProvider, EmailApiProvider],
) -> None:
    scripted, api = email_api
    scripted.script(Answer.json(202, {"message_id": "msg_abc12345", "status": "queued"}))
    assert await api.send(email()) == "msg_abc12345"


@pytest.mark.parametrize(("answer", "kept"), ODD_SUCCESSES)
async def test_meta_takes_any_2xx_as_accepted(
    meta: tuple[ScriptedProvider, MetaProvider], answer: Answer, kept: str | None
) -> None:
    scripted, api = meta
    scripted.script(answer)
    assert await api.send(OutgoingChat("c-1", "whatsapp", "+1555", "hi")) == kept
    assert len(scripted.sends()) == 1


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        ({"providerMessageId": "msg_1"}, "msg_1"),
        ({"messaging_product": "whatsapp", "messages": [{"id": "wamid.HBg"}]}, "wamid.HBg"),
        ({"messages": "not a list"}, None),
    ],
)
async def test_meta_reads_its_id_in_either_shape(
    meta: tuple[ScriptedProvider, MetaProvider], body: dict[str, Any], kept: str | None
) -> None:
    scripted, api = meta
    scripted.script(Answer.json(200, body))
    assert await api.send(OutgoingChat("c-1", "whatsapp", "+1555", "hi")) == kept


@pytest.mark.parametrize(
    ("answer", "error", "retry_after"),
    [
        (Answer.json(429, {"detail": "slow down"}, **{"Retry-After": "7"}), RetryableError, 7.0),
        (Answer(429, b"", (("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"),)), RetryableError, 0),
        (Answer(429, b"", (("Retry-After", "99999999"),)), RetryableError, MAX_RETRY_AFTER_S),
        (Answer(429, b"", (("Retry-After", "soon"),)), RetryableError, None),
        (Answer(503, b"<html>down</html>", (("content-type", "text/html"),)), RetryableError, None),
        (Answer(507, b"null", JSON), RetryableError, None),
        (Answer(408), RetryableError, None),
        (Answer.json(422, {"detail": [{"msg": "field required"}]}), PermanentError, None),
        (Answer(301, b"", (("location", "/elsewhere"),)), PermanentError, None),
        (Answer(404, b"[]", JSON), PermanentError, None),
    ],
)
async def test_email_api_refusals_of_any_shape_are_typed(
    email_api: tuple[ScriptedProvider, EmailApiProvider],
    answer: Answer,
    error: type[Exception],
    retry_after: float | None,
) -> None:
    scripted, api = email_api
    scripted.script(answer)
    with pytest.raises(error) as raised:
        await api.send(email())
    assert str(raised.value).startswith(f"HTTP {answer.status}")
    if isinstance(raised.value, RetryableError):
        assert raised.value.retry_after == retry_after


async def test_a_422_names_what_the_provider_found_wrong(
    email_api: tuple[ScriptedProvider, EmailApiProvider],
) -> None:
    scripted, api = email_api
    scripted.script(Answer.json(422, {"detail": [{"msg": "field required"}]}))
    with pytest.raises(PermanentError, match="field required"):
        await api.send(email())


@pytest.mark.parametrize(
    "token",
    [
        Answer(200, b"null", JSON),
        Answer.json(200, {"token_type": "bearer"}),
        Answer(200, b"not json"),
    ],
)
async def test_an_unusable_token_answer_is_a_retryable_error_and_nothing_is_sent(
    email_api: tuple[ScriptedProvider, EmailApiProvider], token: Answer
) -> None:
    scripted, api = email_api
    scripted.token = token
    with pytest.raises(RetryableError, match="access_token"):
        await api.send(email())
    assert scripted.sends() == []


async def test_a_token_answer_with_an_odd_lifetime_still_works(
    email_api: tuple[ScriptedProvider, EmailApiProvider],
) -> None:
    scripted, api = email_api
    scripted.token = Answer.json(200, {"access_token": "t", "expires_in": "soon"})
    assert await api.send(email()) == "m-default"
    assert scripted.sends()[0].headers["authorization"] == "Bearer t"


class _Reply:
    """An aiosmtpd handler that answers the end of DATA with `reply` and counts the messages."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received += 1
        return self.reply


@pytest.mark.parametrize("reply", ["250 2.0.0 queued", "251 2.1.5 will forward", "252 ok"])
async def test_smtp_takes_any_2yz_reply_to_data_as_accepted(reply: str) -> None:
    handler = _Reply(reply)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, loop=loop), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    smtp = SmtpProvider(SmtpSettings(port=port, timeout_s=5))
    try:
        assert await smtp.send(email()) == message_id_for("e-1")
        assert await smtp.send(email(2)) == message_id_for("e-2")  # the next one goes too
    finally:
        await smtp.close()
        server.close()
        await server.wait_closed()
    assert handler.received == 2


# The sending machinery, through the whole pipeline.


async def accept_email(client: httpx.AsyncClient) -> str:
    response = await client.post(
        "/send", json={"to": "dana@example.com", "subject": "hello", "text": "hi"}
    )
    assert response.status_code == 202, response.text
    email_id: str = response.json()["id"]
    return email_id


async def test_a_null_200_from_the_email_api_is_sent_once_and_recorded(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    scripted: tuple[ScriptedProvider, str],
) -> None:
    provider, url = scripted
    provider.default = Answer(200, b"null", JSON)
    settings = consumer_settings(
        db_settings,
        broker_settings,
        0,
        email_provider="http-api",
        email_api=EmailApiSettings(base_url=url, rate_per_second=1000, timeout_s=5),
    )
    email_id = await accept_email(client)
    pub = publisher_settings(db_settings, broker_settings)
    async with running_pipeline(engine, topology, pub, settings) as running:
        assert await wait_emails_final(engine, 1) == {email_id: "SENT"}
        await running.worker.run_until_idle()
    assert len(provider.sends()) == 1
    assert provider.sends()[0].headers["idempotency-key"] == email_id
    row = await email_row(engine, email_id)
    assert row["provider_message_id"] is None
    assert row["attempts"] == 1


async def test_an_error_between_the_providers_answer_and_the_record_still_records_sent(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    sink: SmtpSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = consumer_settings(
        db_settings,
        broker_settings,
        sink.port,
        faults=FaultSettings(raise_at="email.send.after_send"),
    )
    email_id = await accept_email(client)
    pub = publisher_settings(db_settings, broker_settings)
    with caplog.at_level(logging.ERROR, logger="relaybox.consumer.sending"):
        async with running_pipeline(engine, topology, pub, settings) as running:
            assert await wait_emails_final(engine, 1) == {email_id: "SENT"}
            await running.worker.run_until_idle()
            await asyncio.sleep(0.5)  # a redelivery, had there been one, would have come by now
    assert len(sink.store.find()) == 1
    row = await email_row(engine, email_id)
    assert row["attempts"] == 1
    assert row["provider_message_id"] == message_id_for(email_id)
    assert any("recording an accepted send failed" in r.message for r in caplog.records)


async def test_a_worker_stopping_mid_call_finishes_and_records_the_send(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    topology: Topology,
    db_settings: DatabaseSettings,
    broker_settings: BrokerSettings,
    scripted: tuple[ScriptedProvider, str],
) -> None:
    """The drain's grace runs out while the provider is still answering: the call is not
    abandoned (abandoned, it would be sent again once the lease ran out)."""
    provider, url = scripted
    provider.default = Answer(202, b'{"message_id": "slow-1"}', JSON, delay_s=1.5)
    settings = consumer_settings(
        db_settings,
        broker_settings,
        0,
        email_provider="http-api",
        email_api=EmailApiSettings(base_url=url, rate_per_second=1000, timeout_s=5),
        shutdown_grace_s=0.1,
    )
    email_id = await accept_email(client)
    pub = publisher_settings(db_settings, broker_settings)
    async with running_pipeline(engine, topology, pub, settings):
        await asyncio.wait_for(provider.called.wait(), 30)
    row = await email_row(engine, email_id)
    assert (row["status"], row["provider_message_id"]) == ("SENT", "slow-1")
    assert len(provider.sends()) == 1
