"""`python -m bench.peers`: relaybox against what a Python team would otherwise build.

The same job for every build (an HTTP endpoint takes `{to, subject, text}`, one row in
PostgreSQL, the email through the same SMTP sink, the row marked SENT): relaybox's own services,
and Litestar + Celery or Litestar + Dramatiq on RabbitMQ (the row committed, then the task sent:
the dual write of a team without an outbox). The peers' code lives here and nothing in relaybox
imports it.
"""
