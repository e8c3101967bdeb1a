"""`mailing.parse`: turn a mailing's uploaded CSV into recipients, then set it RUNNING."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from relaybox.common.db.errors import transient_database_error
from relaybox.common.mailings.rules import UNPARSED_SQL, unparsed
from relaybox.common.messaging.topology import MAILING_PARSE
from relaybox.consumer.errors import PoisonMessageError
from relaybox.consumer.mailings.ingest import MailingParseSettings, ParseResult, ingest
from relaybox.consumer.settings import ConsumerSettings

log = logging.getLogger(__name__)

ROWS = Counter(
    "relaybox_mailing_rows_parsed_total",
    "Data rows of parsed mailing files, by result (valid, invalid, duplicate)",
    ("result",),
)
STATE = text("SELECT status, rows_total FROM mailings WHERE id = :id")
GIVE_UP = text(
    f"""
    UPDATE mailings SET status = 'FAILED', error = :error, finished_at = now(), updated_at = now()
    WHERE id = :id AND {UNPARSED_SQL}
    """  # noqa: S608 - constants of the code
)


class MailingParseHandler:
    """Parses the file of an unparsed mailing; a redelivery after the parse is a duplicate.

    A parse can take tens of seconds for a big file; the message stays unacked meanwhile, and
    so do the messages of other files waiting for a parse slot (`limits.concurrency`). A
    database outage restarts the parse from the first chunk (the inserts are idempotent).
    """

    route = MAILING_PARSE

    def __init__(
        self,
        engine: AsyncEngine,
        settings: ConsumerSettings,
        limits: MailingParseSettings | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.limits = limits or MailingParseSettings()
        # A parse is CPU-bound in this process and holds 1 + writers pooled connections for its
        # whole run: more at once would not go faster and could drain the pool.
        self._slots = asyncio.Semaphore(self.limits.concurrency)

    async def stop(self) -> None:
        """Nothing to release: a parse under way goes on (the drain waits for it)."""

    async def handle(self, payload: dict[str, Any], headers: dict[str, Any]) -> str:
        mailing_id = self.mailing_id(payload)
        try:
            return await self._parse(mailing_id)
        except PoisonMessageError:
            raise
        except Exception as exc:
            if transient_database_error(exc):
                raise  # the database is still away past db_retry_s: the worker requeues it
            # Anything else is a bug that another delivery would hit again: left to the worker,
            # the message would end in the DLQ and the mailing stay PARSING for good. It ends
            # FAILED instead, with what went wrong (the traceback is in the log).
            log.exception("mailing parse failed", extra={"mailing_id": str(mailing_id)})
            error = f"the file could not be parsed: internal error ({type(exc).__name__})"
            async with self.engine.begin() as conn:
                await conn.execute(GIVE_UP, {"id": mailing_id, "error": error})
            return "failed"

    async def _parse(self, mailing_id: uuid.UUID) -> str:
        async for attempt in self._retrying():
            with attempt:
                async with self.engine.connect() as conn:
                    state = (await conn.execute(STATE, {"id": mailing_id})).first()
                if state is None:
                    raise PoisonMessageError(f"no mailing {mailing_id}")
                if not unparsed(state.status, state.rows_total):
                    return "duplicate"  # parsed already, cancelled or failed
                async with self._slots:
                    result = await ingest(self.engine, mailing_id, self.limits)
                self._count(result)
                return result.outcome
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def mailing_id(payload: dict[str, Any]) -> uuid.UUID:
        try:
            return uuid.UUID(str(payload["id"]))
        except (KeyError, TypeError, ValueError):
            raise PoisonMessageError("message has no valid mailing 'id'") from None

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(transient_database_error),
            stop=stop_after_delay(self.settings.db_retry_s),
            wait=wait_exponential(multiplier=0.1, max=5),
            reraise=True,
        )

    @staticmethod
    def _count(result: ParseResult) -> None:
        if result.outcome == "parsed":
            ROWS.labels("valid").inc(result.valid)
            ROWS.labels("invalid").inc(result.invalid)
            ROWS.labels("duplicate").inc(result.duplicates)
