"""The consumer process: build providers and handlers, run the worker, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.common.chat.storage import open_store
from relaybox.common.db.session import create_engine, dispose
from relaybox.common.messaging.topology import Topology
from relaybox.common.observability.server import HealthServer
from relaybox.consumer.chat.handler import PUSH_LIMIT_KEY, ChatDeliverHandler
from relaybox.consumer.deadletters import DeadLetterOffice
from relaybox.consumer.handlers.email import EmailHandler
from relaybox.consumer.handlers.meta import META_LIMIT_KEY, MetaHandler
from relaybox.consumer.mailings.dispatcher import Dispatcher
from relaybox.consumer.mailings.handler import MailingParseHandler
from relaybox.consumer.providers.base import EmailProvider
from relaybox.consumer.providers.email_api import EmailApiProvider
from relaybox.consumer.providers.meta import MetaProvider
from relaybox.consumer.providers.push import PushProvider
from relaybox.consumer.providers.smtp import SmtpProvider
from relaybox.consumer.ratelimit import RateLimiter
from relaybox.consumer.settings import ConsumerSettings
from relaybox.consumer.sweeper import Sweeper, SweptRoute
from relaybox.consumer.worker import Handler, Worker

log = logging.getLogger(__name__)

METRICS_INTERVAL_S = 5.0


class Provider(Protocol):
    async def close(self) -> None: ...


EMAIL_API_LIMIT_KEY = "email.http-api"


def email_provider(settings: ConsumerSettings) -> EmailProvider:
    """The email provider the settings select."""
    if settings.email_provider == "http-api":
        return EmailApiProvider(settings.email_api)
    return SmtpProvider(settings.smtp)


def booking_horizon(settings: ConsumerSettings) -> float:
    """How far ahead a replica may hold rate-limit slots: what it can use within its shutdown
    grace, and no more than a lease (what a killed replica leaks then delays the next send by
    no more than its claims already do)."""
    return min(settings.shutdown_grace_s, settings.lease_s)


def email_limiter(settings: ConsumerSettings, engine: AsyncEngine) -> RateLimiter | None:
    """The global limiter of the email provider (the HTTP API has a low contractual limit)."""
    if settings.email_provider != "http-api":
        return None
    api = settings.email_api
    return RateLimiter(
        engine,
        EMAIL_API_LIMIT_KEY,
        api.rate_per_second,
        safety=api.rate_safety,
        horizon_s=booking_horizon(settings),
    )


def meta_limiter(settings: ConsumerSettings, engine: AsyncEngine) -> RateLimiter:
    """The global limiter of the Meta-like API."""
    rate = settings.meta.rate_per_second
    return RateLimiter(engine, META_LIMIT_KEY, rate, horizon_s=booking_horizon(settings))


def push_limiter(settings: ConsumerSettings, engine: AsyncEngine) -> RateLimiter:
    """The global limiter of the push gateway."""
    rate = settings.push.rate_per_second
    return RateLimiter(engine, PUSH_LIMIT_KEY, rate, horizon_s=booking_horizon(settings))


@dataclass
class Consumer:
    """Everything one consumer replica runs: the worker, its providers, sweeper and dispatcher."""

    worker: Worker
    email: EmailProvider
    providers: list[Provider]
    sweeper: Sweeper
    dispatcher: Dispatcher


def mailing_in_flight(settings: ConsumerSettings) -> int:
    """How many mailing emails may wait queued: a few seconds of the provider's rate."""
    if settings.email_provider == "http-api":
        return max(1, math.ceil(settings.email_api.rate_per_second * settings.mailing_ahead_s))
    return settings.mailing_max_in_flight


def create_consumer(settings: ConsumerSettings, engine: AsyncEngine | None = None) -> Consumer:
    """A worker with every handler wired to its provider and limiter (not started); on its own
    engine unless one is given (tests share theirs)."""
    engine = engine or create_engine(settings.database)
    topology = Topology.from_settings(settings.broker)
    email = email_provider(settings)
    meta = MetaProvider(settings.meta)
    email_handler = EmailHandler(engine, topology, settings, email, email_limiter(settings, engine))
    meta_handler = MetaHandler(engine, topology, settings, meta, meta_limiter(settings, engine))
    parse_handler = MailingParseHandler(engine, settings, settings.mailings)
    push = PushProvider(settings.push)
    chat_handler = ChatDeliverHandler(
        engine, topology, settings, push, push_limiter(settings, engine)
    )
    handlers: list[Handler] = [email_handler, meta_handler, parse_handler, chat_handler]
    sweeper = Sweeper(
        engine,
        [SweptRoute(h.table, h.route) for h in (email_handler, meta_handler)],
        stale_pending_s=settings.stale_pending_s,
        idempotency_retention_s=settings.idempotency_retention_h * 3600,
        webhook_event_retention_s=settings.webhook_event_retention_h * 3600,
        stale_parse_s=settings.stale_parse_s,
        attachment_store=open_store(settings.chat.storage),
        attachment_retention_s=settings.chat.attachment_retention_h * 3600,
        event_retention_s=settings.chat.event_retention_h * 3600,
        presence_ttl_s=settings.chat.presence_ttl_s,
    )
    dispatcher = Dispatcher(engine, mailing_in_flight(settings))
    return Consumer(
        Worker(settings, engine, topology, handlers, DeadLetterOffice(engine)),
        email,
        [email, meta, push],
        sweeper,
        dispatcher,
    )


async def _housekeeping(consumer: Consumer, sweep_due: float) -> None:
    """DLQ depth gauges, and a sweep when one is due; failures are logged, never fatal."""
    try:
        await consumer.worker.refresh_dlq_metrics()
        if time.monotonic() >= sweep_due:
            await consumer.sweeper.sweep()
    except Exception:
        log.exception("housekeeping failed; will try again")


async def _dispatch_forever(consumer: Consumer, interval_s: float) -> None:
    """Mailing dispatch rounds until cancelled; failures are logged, never fatal."""
    while True:
        try:
            await consumer.dispatcher.round()
        except Exception:
            log.exception("mailing dispatch failed; will try again")
        await asyncio.sleep(interval_s)


async def serve(settings: ConsumerSettings) -> None:
    """Run one consumer replica until SIGTERM/SIGINT, then drain and close."""
    consumer = create_consumer(settings)
    worker = consumer.worker
    # Authenticate before the first message: the first sends then go out on their slots.
    await consumer.email.prepare()
    await worker.start()
    health = HealthServer(settings.consumer, worker.ready)
    await health.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.stop()))
    sweep_due = 0.0
    dispatching = asyncio.create_task(_dispatch_forever(consumer, settings.dispatch_interval_s))
    try:
        while not worker.stopping:
            await _housekeeping(consumer, sweep_due)
            if time.monotonic() >= sweep_due:
                sweep_due = time.monotonic() + settings.sweep_interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.wait_stopped(), METRICS_INTERVAL_S)
    finally:
        dispatching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dispatching
        await worker.close()
        await health.stop()
        for provider in consumer.providers:
            await provider.close()
        await dispose(worker.engine)
        log.info("consumer stopped")
