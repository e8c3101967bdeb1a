"""The CLI's pieces without a server: how values read, the pace and ETA of a follow, the upload
key, and how an error answer becomes one line (tests/integration/cli drives it end to end)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from relaybox.cli import views
from relaybox.cli.app import app
from relaybox.cli.http import Api, ProblemError, problem_line
from relaybox.cli.mailing import upload_key
from relaybox.cli.progress import Pace, eta_seconds, plain_line


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0, "0 s"), (59.4, "59 s"), (185, "3 min 05 s"), (7620, "2 h 07 min"),
     (997_000, "11 d 12 h")],
)  # fmt: skip
def test_durations_read_at_a_glance(seconds: float | None, text: str) -> None:
    assert views.duration(seconds) == text


def test_rates_below_one_a_second_read_per_minute() -> None:
    assert (views.rate(None), views.rate(4), views.rate(0.1)) == ("-/s", "4.0/s", "6.0/min")


def test_the_pace_is_measured_over_the_last_window() -> None:
    pace = Pace(window_s=30)
    assert pace.per_second() is None
    for second in range(0, 61, 10):
        pace.add(float(second), second * 2 if second <= 30 else 60 + (second - 30) * 10)
    # the samples of the last 30 s (30 → 60): 60 → 360 recipients
    assert pace.per_second() == pytest.approx(10.0)
    assert pace.span_s() == 30


def detail(status: str = "RUNNING", pending: int = 100, eta: int | None = 1000) -> dict[str, Any]:
    counts = {"rows": 110, "valid": 100, "invalid": 10, "duplicates": 0, "pending": pending,
              "sent": 100 - pending, "failed": 0, "cancelled": 0}  # fmt: skip
    return {"status": status, "counts": counts, "etaSeconds": eta, "fileBytes": 2000}


def test_the_eta_is_the_apis_until_the_rate_was_measured_long_enough() -> None:
    assert eta_seconds(detail(), 4.0, measured_s=3) == 1000  # the API's: provider rate
    assert eta_seconds(detail(), 4.0, measured_s=12) == 25  # 100 pending at 4/s
    assert eta_seconds(detail(eta=None), 4.0, measured_s=3) == 25
    assert eta_seconds(detail(status="PAUSED"), 4.0, measured_s=60) is None


def test_a_line_per_state() -> None:
    line = plain_line(detail(pending=40), 4.0, 12)
    assert line == "RUNNING   60/100 (60.0%) · sent 60 · failed 0 · pending 40 · 4.0/s · ETA 10 s"
    reading = detail(status="PARSING", pending=7, eta=None)
    reading["counts"].update(rows=0, sent=0)  # the addresses stored so far: PENDING
    parsing = plain_line(reading, None)
    assert parsing == "PARSING   parsing: 7 addresses so far (2.0 kB)"


def test_the_upload_key_is_the_file_with_its_subject_and_body() -> None:
    key = upload_key("ab" * 32, "list.csv", None, None)
    assert key == upload_key("ab" * 32, "list.csv", "", "")
    assert key != upload_key("ab" * 32, "list.csv", "Hello", None)
    assert key != upload_key("cd" * 32, "list.csv", None, None)
    assert len(key) <= 255
    assert key.isascii()
    assert key.isprintable()


def answer(status: int, body: Any = None, **headers: str) -> httpx.Response:
    request = httpx.Request("GET", "http://api.test/mailings")
    if body is None:
        return httpx.Response(status, text="<html>bad gateway</html>", request=request)
    return httpx.Response(
        status, json=body, headers={"content-type": "application/problem+json", **headers},
        request=request,
    )  # fmt: skip


def test_a_problem_reads_as_one_line_with_its_field() -> None:
    plain = answer(400, {"status": 400, "title": "Bad Request", "detail": "the file\nis empty",
                         "field": "file"})  # fmt: skip
    assert problem_line(plain, plain.json()) == ("400 Bad Request: the file is empty [field: file]")
    validation = {"title": "Bad Request", "detail": "to: not an address", "field": "to"}
    assert (
        problem_line(answer(400, validation), validation) == "400 Bad Request: to: not an address"
    )
    limited = answer(
        429, {"title": "Too Many Requests", "detail": "slow down"}, **{"Retry-After": "7"}
    )
    assert problem_line(limited, limited.json()) == (
        "429 Too Many Requests: slow down (retry after 7 s)"
    )
    proxy = answer(502)
    assert problem_line(proxy, None) == (
        "502 Bad Gateway from http://api.test/mailings: <html>bad gateway</html>"
    )


def test_an_error_answer_raises_with_its_document() -> None:
    document = {"status": 409, "title": "Conflict", "detail": "no", "mailingStatus": "CANCELLED"}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer t"
        return httpx.Response(
            409, json=document, headers={"content-type": "application/problem+json"}
        )

    with (
        Api("http://api.test", "t", transport=httpx.MockTransport(handler)) as api,
        pytest.raises(ProblemError) as raised,
    ):
        api.post("/mailings/x/cancel")
    assert (raised.value.status, raised.value.document) == (409, document)
    assert raised.value.line == "409 Conflict: no"


@pytest.mark.parametrize(
    "command",
    [
        *([group] for group in ("mailing", "email", "chat", "dead-letters", "token")),
        [],
        ["mailing", "upload"],
        ["chat", "tail"],
        ["dead-letters", "replay"],
    ],
)
def test_every_group_has_its_help(command: list[str]) -> None:
    ran = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert ran.exit_code == 0, ran.output
    assert "Usage: relaybox" in ran.output
