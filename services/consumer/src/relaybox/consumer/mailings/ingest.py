"""The database side of parsing a mailing upload: chunks in, recipients and errors out.

The stored chunks are read one at a time in `seq` order (fetching a chunk also saves the
`parsed_chunks` progress) and streamed through `csv_stream` (constant memory). Rows are checked
(`addresses`) and written in batches of `batch_size`, one statement per batch, on `writers`
connections while the parser goes on: recipients ``ON CONFLICT (mailing_id, email_key)`` (the
lowest row number of an address wins, whatever order the batches commit in; duplicates within
a batch are dropped before sending), errors ``ON CONFLICT (mailing_id, row_number) DO
NOTHING``. A batch is written only while the mailing is not parsed yet, and says so: a
cancelled mailing stops the parse at the next batch.

Every write is idempotent, so parsing the same file again (a redelivered message after a
crash, a second replica racing the first) gives the same rows. The end is one guarded
statement: counts from the tables, PARSING -> RUNNING, `started_at`. A mailing paused while
parsing keeps being parsed and stays PAUSED, with its counts. A file that cannot be read as a
mailing list, or has more than `max_rows` data rows, makes the mailing FAILED with the reason
in `error`, and its partial rows are deleted in the same transaction. A file that turns out
not to be UTF-8 after non-ASCII text was written is parsed again as Latin-1, from no rows.

The parser is synchronous (`csv.reader` pulls lines, and a quoted record may need more chunks
than one), so it runs in `AsyncConnection.run_sync`, SQLAlchemy's greenlet bridge: each
database call is awaited through `AdaptedConnection.run_async`, and the event loop gets a turn
every `BREATHE_ROWS` rows (a few milliseconds of parsing), so writes in flight and the worker's
other messages go on. A cancelled task unwinds the parser like any other exception.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
from pydantic import BaseModel, Field
from sqlalchemy import Connection
from sqlalchemy.engine import AdaptedConnection
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.mailings.csv_stream import LATIN_1, CsvFormatError, NotUtf8Error, iter_rows
from relaybox.common.mailings.rules import UNPARSED_SQL, MailingStatus
from relaybox.consumer.mailings import addresses

log = logging.getLogger(__name__)
T = TypeVar("T")

RAW_VALUE_CHARS = 500
NO_SEQ = -(2**31)  # below every chunk number
BREATHE_ROWS = 1_000  # the event loop gets a turn this often (a few milliseconds of parsing)

# Every statement applies to a mailing not parsed yet (relaybox.common.mailings.rules).
NEXT_CHUNK = f"""
WITH progress AS (
    UPDATE mailings SET parsed_chunks = GREATEST(parsed_chunks, $3), updated_at = now()
    WHERE id = $1 AND $3 > 0 AND {UNPARSED_SQL}
)
SELECT seq, data FROM mailing_chunks WHERE mailing_id = $1 AND seq > $2 ORDER BY seq LIMIT 1
"""  # noqa: S608 - constants of the code
# The batch holds the mailing FOR KEY SHARE (once per batch: what a foreign key's check did per
# row before migration 0004): a DELETE of the mailing waits for it, so no row is ever written for
# a mailing that is gone. KEY SHARE conflicts neither with the API's status updates nor with the
# other writers' batches, so batches written on several connections at once never wait for each
# other. Whatever order they commit in, an address keeps its lowest row number. Recipients
# travel as three joined strings (numbers by ",", addresses and keys by "\n", which a valid
# address never holds): asyncpg's per-element array encoding cost more than the rest of the
# row's Python work.
STORE_BATCH = f"""
WITH live AS (
    SELECT 1 FROM mailings
    WHERE id = $1 AND {UNPARSED_SQL}
    FOR KEY SHARE
),
recipients AS (
    INSERT INTO mailing_recipients AS m (mailing_id, row_number, email, email_key)
    SELECT $1, r.row_number, r.email, r.email_key
    FROM unnest(
        string_to_array($2, ',')::int[], string_to_array($3, E'\n'), string_to_array($4, E'\n')
    ) AS r(row_number, email, email_key)
    WHERE EXISTS (SELECT 1 FROM live)
    ON CONFLICT (mailing_id, email_key) DO UPDATE
    SET row_number = EXCLUDED.row_number, email = EXCLUDED.email
    WHERE m.row_number > EXCLUDED.row_number
),
errors AS (
    INSERT INTO mailing_errors (mailing_id, row_number, raw_value, reason)
    SELECT $1, e.row_number, e.raw_value, e.reason
    FROM unnest($5::int[], $6::text[], $7::text[]) AS e(row_number, raw_value, reason)
    WHERE EXISTS (SELECT 1 FROM live)
    ON CONFLICT (mailing_id, row_number) DO NOTHING
)
SELECT EXISTS (SELECT 1 FROM live)
"""  # noqa: S608 - constants of the code
FINISH = f"""
UPDATE mailings SET
    status = CASE WHEN status = 'PARSING' THEN 'RUNNING' ELSE status END,
    started_at = CASE WHEN status = 'PARSING' THEN now() ELSE started_at END,
    rows_total = $2::int,
    valid_count = c.valid,
    invalid_count = c.invalid,
    duplicate_count = $2::int - c.valid - c.invalid,
    parsed_chunks = $3,
    error = NULL,
    updated_at = now()
FROM (SELECT (SELECT count(*)::int FROM mailing_recipients WHERE mailing_id = $1) AS valid,
             (SELECT count(*)::int FROM mailing_errors WHERE mailing_id = $1) AS invalid) AS c
WHERE id = $1 AND {UNPARSED_SQL}
RETURNING valid_count, invalid_count, duplicate_count
"""  # noqa: S608 - constants of the code
FAIL = f"""
UPDATE mailings SET status = 'FAILED', error = $2, parsed_chunks = $3, finished_at = now(),
    updated_at = now()
WHERE id = $1 AND {UNPARSED_SQL}
RETURNING id
"""  # noqa: S608 - constants of the code
LOCK_UNPARSED = f"""
SELECT id FROM mailings
WHERE id = $1 AND {UNPARSED_SQL}
FOR UPDATE
"""  # noqa: S608 - constants of the code
CLEAR_RECIPIENTS = "DELETE FROM mailing_recipients WHERE mailing_id = $1"
CLEAR_ERRORS = "DELETE FROM mailing_errors WHERE mailing_id = $1"
STATUS = "SELECT status FROM mailings WHERE id = $1"


class MailingParseSettings(BaseModel):
    """Limits and pace of the parse of an uploaded mailing list."""

    max_rows: int = Field(default=2_000_000, ge=1, description="data rows a file may have")
    batch_size: int = Field(default=10_000, ge=1, le=100_000, description="rows per write")
    writers: int = Field(
        default=2, ge=1, le=8, description="connections writing batches while the file is parsed"
    )
    concurrency: int = Field(
        default=1,
        ge=1,
        description="files parsed at once by one replica (each holds 1 + writers connections)",
    )


@dataclass(frozen=True)
class ParseResult:
    """How a parse ended: `outcome` is the handler's label (parsed, failed, cancelled, ...)."""

    outcome: str
    rows_total: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    error: str | None = None


@dataclass
class Batch:
    """Rows waiting to be written; an address seen twice keeps its first row."""

    rows: int = 0
    recipients: dict[str, tuple[int, str]] = field(default_factory=dict)
    error_rows: list[int] = field(default_factory=list)
    error_values: list[str] = field(default_factory=list)
    error_reasons: list[str] = field(default_factory=list)

    def add(self, number: int, value: str) -> None:
        self.rows += 1
        checked = addresses.check(value)
        if isinstance(checked, str):
            self.error_rows.append(number)
            self.error_values.append(_text(value[:RAW_VALUE_CHARS]))
            self.error_reasons.append(_text(checked))
        else:
            normalized, key = checked
            if key not in self.recipients:
                self.recipients[key] = (number, normalized)

    def arguments(self) -> tuple[str, str, str, list[int], list[str], list[str]]:
        """The parameters STORE_BATCH takes; recipients in key order, so that two connections
        inserting overlapping keys lock them in the same order (no deadlock)."""
        keys = sorted(self.recipients)
        rows = [self.recipients[key] for key in keys]
        numbers = ",".join([str(number) for number, _ in rows])
        emails = "\n".join([email for _, email in rows])
        return (
            numbers,
            emails,
            "\n".join(keys),
            self.error_rows,
            self.error_values,
            self.error_reasons,
        )


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL: show it as U+FFFD."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


class MailingStore:
    """One mailing's reads and writes, called from synchronous code inside `run_sync`.

    Chunks are read on `reader`; batches are written on `writers`, up to one batch in flight
    on each while the parser goes on (`store` waits only when every writer is busy).
    """

    def __init__(
        self,
        bridge: AdaptedConnection,
        reader: asyncpg.Connection,
        writers: list[asyncpg.Connection],
        mailing_id: uuid.UUID,
    ) -> None:
        self._bridge = bridge
        self._reader = reader
        self._idle = collections.deque(writers)
        self._busy: collections.deque[tuple[asyncpg.Connection, asyncio.Task[bool]]] = (
            collections.deque()
        )
        self._writer = writers[0]
        self.mailing_id = mailing_id
        self.chunks_read = 0

    def wait(self, awaitable: Awaitable[T]) -> T:
        """Await from the synchronous side (the event loop runs meanwhile)."""
        return self._bridge.run_async(lambda _: awaitable)

    def breathe(self) -> None:
        """Let the event loop run once: writes in flight go on, other tasks get a turn."""
        self.wait(asyncio.sleep(0))

    def chunks(self) -> Iterator[bytes]:
        """The stored chunks in order, one at a time; the progress is saved on the way."""
        self.chunks_read = 0
        seq = NO_SEQ
        while True:
            # The chunk being parsed may still hold rows: only the ones before it count.
            done = max(self.chunks_read - 1, 0)
            row = self.wait(self._reader.fetchrow(NEXT_CHUNK, self.mailing_id, seq, done))
            if row is None:
                return
            seq = row["seq"]
            self.chunks_read += 1
            yield bytes(row["data"])

    def store(self, batch: Batch) -> bool:
        """Start writing a batch; False if the mailing turned out parsed, cancelled or failed."""
        if not self._idle and not self._settle_oldest():
            return False
        conn = self._idle.popleft()
        args = batch.arguments()

        async def write() -> bool:
            return bool(await conn.fetchval(STORE_BATCH, self.mailing_id, *args))

        async def start() -> asyncio.Task[bool]:
            task = asyncio.ensure_future(write())
            await asyncio.sleep(0)  # the statement is sent before the parser takes over again
            return task

        self._busy.append((conn, self.wait(start())))
        return True

    def settle(self) -> bool:
        """Wait for every write in flight; False if one found the mailing no longer unparsed."""
        live = True
        try:
            while self._busy:
                live = self._settle_oldest() and live
        except BaseException:
            self.abandon()
            raise
        return live

    def abandon(self) -> None:
        """On the way out with an error: let the writes in flight end, whatever they raise."""
        while self._busy:
            with contextlib.suppress(Exception):
                self._settle_oldest()

    def _settle_oldest(self) -> bool:
        conn, task = self._busy.popleft()
        try:
            return self.wait(task)
        finally:
            self._idle.append(conn)

    def finish(self, rows_total: int) -> ParseResult:
        """The counts, and PARSING -> RUNNING (a no-op if someone else ended the parse)."""
        row = self.wait(
            self._writer.fetchrow(FINISH, self.mailing_id, rows_total, self.chunks_read)
        )
        if row is None:
            return self.stopped()
        valid, invalid, duplicates = row
        return ParseResult("parsed", rows_total, valid, invalid, duplicates)

    def fail(self, error: str) -> ParseResult:
        """-> FAILED with `error`, the partial rows deleted in the same transaction."""
        if not self.wait(self._clear(FAIL, error, self.chunks_read)):
            return self.stopped()
        return ParseResult("failed", error=error)

    def clear(self) -> bool:
        """Delete the rows of an earlier pass; False if the mailing is no longer unparsed."""
        return self.wait(self._clear(LOCK_UNPARSED))

    async def _clear(self, guard: str, *args: Any) -> bool:
        conn = self._writer
        async with conn.transaction():
            if await conn.fetchval(guard, self.mailing_id, *args) is None:
                return False
            await conn.execute(CLEAR_RECIPIENTS, self.mailing_id)
            await conn.execute(CLEAR_ERRORS, self.mailing_id)
            return True

    def stopped(self) -> ParseResult:
        """The outcome when someone else moved the mailing on (cancelled, or parsed already)."""
        status = self.wait(self._writer.fetchval(STATUS, self.mailing_id))
        return ParseResult("cancelled" if status == MailingStatus.CANCELLED else "duplicate")


def parse_into(
    store: MailingStore, settings: MailingParseSettings, encoding: str | None
) -> ParseResult:
    """One pass over the file; raises `NotUtf8Error` if it must be read again as Latin-1.

    Every write in flight has ended when this returns (or raises).
    """
    try:
        rows_total = _parse(store, settings, encoding)
    except CsvFormatError as exc:
        store.abandon()
        return store.fail(str(exc))
    except BaseException:
        store.abandon()
        raise
    live = store.settle()  # every write has ended before the mailing row is touched
    if rows_total is None or not live:
        return store.stopped()
    if rows_total > settings.max_rows:
        return store.fail(f"the file has more than {settings.max_rows:,} data rows")
    if not rows_total:
        return store.fail("the file has no data rows")
    return store.finish(rows_total)


def _parse(store: MailingStore, settings: MailingParseSettings, encoding: str | None) -> int | None:
    """Parse and start writing every row: the data rows seen (stops past `max_rows`), or None
    if the mailing stopped being unparsed."""
    rows_total = 0
    batch = Batch()
    for number, value in iter_rows(store.chunks(), encoding=encoding):
        rows_total += 1
        if rows_total > settings.max_rows:
            return rows_total
        batch.add(number, value)
        if not rows_total % BREATHE_ROWS:
            store.breathe()
        if batch.rows >= settings.batch_size:
            if not store.store(batch):
                return None
            batch = Batch()
    if batch.rows and not store.store(batch):
        return None
    return rows_total


def _ingest(
    conn: Connection,
    writers: list[asyncpg.Connection],
    mailing_id: uuid.UUID,
    settings: MailingParseSettings,
) -> ParseResult:
    bridge = conn.connection.dbapi_connection
    if not isinstance(bridge, AdaptedConnection):
        raise TypeError("mailing parsing needs an asyncpg engine")
    store = MailingStore(bridge, bridge.driver_connection, writers, mailing_id)
    try:
        return parse_into(store, settings, encoding=None)
    except NotUtf8Error:
        log.info("mailing file is not UTF-8; parsing again as Latin-1", extra=_ids(mailing_id))
    if not store.clear():
        return store.stopped()
    return parse_into(store, settings, encoding=LATIN_1)


def _ids(mailing_id: uuid.UUID) -> dict[str, Any]:
    return {"mailing_id": str(mailing_id)}


async def ingest(
    engine: AsyncEngine, mailing_id: uuid.UUID, settings: MailingParseSettings
) -> ParseResult:
    """Parse the stored file of an unparsed mailing into recipients and errors (idempotent)."""
    started = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        reader = await stack.enter_async_context(engine.connect())
        writers = []
        for _ in range(settings.writers):
            conn = await stack.enter_async_context(engine.connect())
            writers.append((await conn.get_raw_connection()).driver_connection)
        result = await reader.run_sync(_ingest, writers, mailing_id, settings)
    log.info(
        "mailing parse ended",
        extra={
            **_ids(mailing_id),
            "outcome": result.outcome,
            "rows": result.rows_total,
            "valid": result.valid,
            "invalid": result.invalid,
            "duplicates": result.duplicates,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return result
