"""`relaybox dead-letters ...` against the real API and pipeline: an email whose attempts ran out
and a poison message are filed by the consumer; an operator lists and shows them, replays the
email once the provider is fixed (it is sent once) and discards the poison."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.auth import ALL_SCOPES, issue_token
from relaybox.api.settings import ApiSettings
from relaybox.common.messaging.topology import EMAIL_SEND, Topology
from relaybox.common.settings import BrokerSettings
from relaybox.mock_meta.smtp.sink import SinkConfig, SmtpSink
from tests.integration.cli.conftest import Cli
from tests.integration.platform.test_dead_letters import dead_email
from tests.support.broker import publish_raw
from tests.support.pipeline import Pipeline, email_row, eventually, filed


async def test_an_operator_lists_shows_replays_and_discards(
    cli: Cli,
    client: httpx.AsyncClient,
    pipeline: Pipeline,
    engine: AsyncEngine,
    sink: SmtpSink,
    topology: Topology,
    broker_settings: BrokerSettings,
    api_settings: ApiSettings,
) -> None:
    operator = issue_token(api_settings, "operator", ALL_SCOPES)
    letter_id = await dead_email(client, engine, sink)  # 451 until its attempts ran out
    await publish_raw(broker_settings.url, topology.exchange, EMAIL_SEND, b"not json")
    letters = await filed(engine, 2)
    email_id = next(str(d["row_id"]) for d in letters if str(d["id"]) == letter_id)
    poison_id = next(str(d["id"]) for d in letters if str(d["id"]) != letter_id)

    listed, table, shown, shown_json, not_admin, no_selection, both = await asyncio.gather(
        cli("dead-letters", "list", "--route", EMAIL_SEND, "--status", "open", "--json",
            token=operator),
        cli("dead-letters", "list", token=operator),
        cli("dead-letters", "show", letter_id, token=operator),
        cli("dead-letters", "show", letter_id, "--json", token=operator),
        cli("dead-letters", "list"),  # the suite's token: no admin scope
        cli("dead-letters", "replay", token=operator),
        cli("dead-letters", "discard", letter_id, "--route", EMAIL_SEND, token=operator),
    )  # fmt: skip
    assert listed.code == 0, listed
    assert listed.json()["meta"]["total"] == 2
    assert {d["id"] for d in listed.json()["data"]} == {letter_id, poison_id}
    assert letter_id in table.out
    assert "451" in table.out
    assert "2 of 2" in table.out
    assert shown.code == 0, shown
    assert email_id in shown.out
    assert shown_json.json()["rowId"] == email_id
    assert shown_json.json()["status"] == "open"
    assert not_admin.code == 1
    assert not_admin.err_lines == ["error: 403 Forbidden: this token lacks the 'admin' scope"]
    for bad in (no_selection, both):
        assert bad.code == 2, bad
        assert bad.out == ""

    sink.configure(SinkConfig())  # the provider is fixed
    replayed = await cli("dead-letters", "replay", letter_id, token=operator)
    assert replayed.code == 0, replayed
    assert "replayed 1 of 1" in replayed.out

    async def sent() -> bool:
        return bool((await email_row(engine, email_id))["status"] == "SENT")

    await eventually(sent)
    again = await cli("dead-letters", "replay", letter_id, token=operator)
    assert again.code == 1
    assert len(again.err_lines) == 1
    assert again.err.startswith("error: 409 Conflict: ")
    assert "already replayed" in again.err

    # a filter over the open ones: only the poison is left open
    discarded = await cli(
        "dead-letters", "discard", "--route", EMAIL_SEND, "--json", token=operator
    )
    assert discarded.code == 0, discarded
    report = discarded.json()
    assert report["discarded"] == 1
    assert [(r["id"], r["outcome"]) for r in report["results"]] == [(poison_id, "discarded")]
    await pipeline.worker.run_until_idle()
    assert len(sink.store.find()) == 1  # the replayed email, sent once
    after = await cli("dead-letters", "list", "--status", "open", "--json", token=operator)
    assert after.json()["data"] == []
