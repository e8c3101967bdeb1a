"""The peers' task body, shared by the Celery and the Dramatiq worker: load the row, send the
email over SMTP, mark the row SENT. Synchronous, as both frameworks' tasks are: psycopg 3 and
smtplib, one database connection and one SMTP session kept per worker thread (a fresh connection
per task would cost the peers more than relaybox's pooled ones, and measure that instead)."""

from __future__ import annotations

import smtplib
import threading
from email.message import EmailMessage

import psycopg

from bench.peers import env

FROM_ADDRESS = "peers@localhost"
SELECT_PENDING = (
    "SELECT to_address, subject, text_body FROM peer_emails WHERE id = %s AND status <> 'SENT'"
)
MARK_SENT = "UPDATE peer_emails SET status = 'SENT', sent_at = now() WHERE id = %s"

_local = threading.local()


def message_id(email_id: str) -> str:
    """A stable Message-ID per row: the sink counts copies of each email by it."""
    return f"<{email_id}@peers>"


def _database() -> psycopg.Connection[tuple[object, ...]]:
    conn: psycopg.Connection[tuple[object, ...]] | None = getattr(_local, "db", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(env.get(env.DATABASE_URL), autocommit=True)
        _local.db = conn
    return conn


def _smtp() -> smtplib.SMTP:
    smtp: smtplib.SMTP | None = getattr(_local, "smtp", None)
    if smtp is None:
        smtp = smtplib.SMTP(env.get(env.SMTP_HOST, "127.0.0.1"), int(env.get(env.SMTP_PORT)))
        smtp.ehlo()
        _local.smtp = smtp
    return smtp


def _send(message: EmailMessage) -> None:
    """Send on the thread's session; reconnect once if the server dropped it while idle."""
    try:
        _smtp().send_message(message)
    except smtplib.SMTPServerDisconnected:
        _local.smtp = None
        _smtp().send_message(message)


def deliver(email_id: str) -> None:
    """The task: a row already SENT (a redelivery after the mark) is skipped; a crash between
    the SMTP send and the mark sends it again."""
    db = _database()
    row = db.execute(SELECT_PENDING, (email_id,)).fetchone()
    if row is None:
        return
    to_address, subject, text = row
    message = EmailMessage()
    message["From"] = FROM_ADDRESS
    message["To"] = str(to_address)
    message["Subject"] = str(subject)
    message["Message-ID"] = message_id(email_id)
    message.set_content(str(text or ""))
    _send(message)
    db.execute(MARK_SENT, (email_id,))
