"""The console (plain) log format shows what the JSON format shows: every field of the line."""

from __future__ import annotations

import json
import logging
import sys

from relaybox.common.observability.logging import (
    JsonFormatter,
    PlainFormatter,
    request_id_var,
)


def access_record() -> logging.LogRecord:
    return logging.makeLogRecord(
        {
            "name": "relaybox.api.access",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "request",
            "method": "POST",
            "path": "/send",
            "status": 202,
            "duration_ms": 1.27,
            "note": 'two words "quoted"',
        }
    )


def test_the_plain_access_line_shows_method_path_status_duration_and_request_id() -> None:
    token = request_id_var.set("req-42")
    try:
        line = PlainFormatter("api").format(access_record())
    finally:
        request_id_var.reset(token)
    assert " api INFO relaybox.api.access request " in line
    for field in ("request_id=req-42", "method=POST", "path=/send", "status=202"):
        assert field in line.split(), line
    assert "duration_ms=1.27" in line
    assert 'note="two words \\"quoted\\""' in line  # one token, unambiguous


def test_plain_and_json_lines_carry_the_same_fields() -> None:
    token = request_id_var.set("req-42")
    try:
        plain = PlainFormatter("api").format(access_record())
        structured = json.loads(JsonFormatter("api").format(access_record()))
    finally:
        request_id_var.reset(token)
    for key in ("request_id", "method", "path", "status", "duration_ms", "note"):
        assert f" {key}=" in plain, key
        assert key in structured


def test_a_plain_line_keeps_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.makeLogRecord({"msg": "failed", "levelname": "ERROR"})
        record.exc_info = sys.exc_info()
    line = PlainFormatter("consumer").format(record)
    assert "Traceback" in line and "ValueError: boom" in line
