"""Log lines (JSON, or plain key=value for a console) carrying the request id, the trace id and
every `extra=` field."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import msgspec
from opentelemetry import trace

from relaybox.common.settings import LogSettings

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_ENCODER = msgspec.json.Encoder(enc_hook=str)  # anything JSON has no type for, as its str()


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """What a line shows beyond the message: request id, trace id and the `extra=` fields."""
    fields: dict[str, Any] = {}
    request_id = request_id_var.get()
    if request_id:
        fields["request_id"] = request_id
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = format(span.trace_id, "032x")
    for key, value in vars(record).items():
        if key not in _RESERVED and not key.startswith("_"):
            fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields are kept as top-level keys."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line).decode()


class PlainFormatter(logging.Formatter):
    """A line for a developer's console with the same fields as the JSON line, as key=value:
    `12:00:01.234 api INFO relaybox.api.access request method=POST path=/send status=202 ...`.
    A traceback follows on its own lines."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        head = f"{stamp} {self.service} {record.levelname} {record.name} {record.getMessage()}"
        pairs = " ".join(f"{key}={_plain(value)}" for key, value in _fields(record).items())
        line = f"{head} {pairs}" if pairs else head
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _plain(value: Any) -> str:
    """A value as one token: quoted when it has spaces or quotes, JSON for lists and dicts."""
    text = value if isinstance(value, str) else _ENCODER.encode(value).decode()
    if text == "" or any(c in text for c in ' "=\n'):
        return _ENCODER.encode(text).decode()
    return text


def configure_logging(service: str, settings: LogSettings) -> None:
    """Route the root logger to stderr, as JSON unless turned off.

    Log records skip what no line shows (the caller's frame, thread and process names): the
    stdlib's documented switches, which save a stack walk per record (an access line per request).
    """
    logging._srcfile = None  # no findCaller() frame walk
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter if settings.json_format else PlainFormatter
    handler.setFormatter(formatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
