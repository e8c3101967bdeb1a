"""The SMTP provider's own session (`relaybox.consumer.providers.smtp_session`): pipelining
only where the server offers it, authentication, TLS (implicit and STARTTLS), the replies'
meaning, and a dropped idle session tried again on a fresh one. Real servers: aiosmtpd, and a
scripted one where the order of bytes on the wire is what is tested."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relaybox.consumer.providers.base import OutgoingEmail, PermanentError, RetryableError
from relaybox.consumer.providers.smtp import SmtpProvider, SmtpSettings, message_id_for

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def email(n: int = 1, **fields: Any) -> OutgoingEmail:
    values: dict[str, Any] = {
        "id": f"e-{n}",
        "to": "rcpt@example.com",
        "from_": "sender@example.com",
        "subject": "Hello",
        "text": "Hi there",
    }
    return OutgoingEmail(**{**values, **fields})


class Recorder:
    """An aiosmtpd handler: keeps what arrived; `pipelining` adds PIPELINING to EHLO."""

    def __init__(self, *, pipelining: bool = False) -> None:
        self.pipelining = pipelining
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or b""
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), raw))
        return "250 2.0.0 OK"


@contextlib.asynccontextmanager
async def aiosmtpd_server(handler: Recorder, **options: Any) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    ssl_context = options.pop("ssl", None)
    server = await loop.create_server(
        lambda: SMTP(handler, loop=loop, **options), "127.0.0.1", 0, ssl=ssl_context
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ehlo: str) -> None:
    """The greeting and the EHLO answer (`ehlo`: the extension lines)."""
    writer.write(b"220 scripted ESMTP\r\n")
    assert (await reader.readline()).startswith(b"EHLO ")
    lines = ["scripted", *ehlo.split()]
    last = len(lines) - 1
    reply = "".join(f"250{' ' if i == last else '-'}{line}\r\n" for i, line in enumerate(lines))
    writer.write(reply.encode())


async def quit_(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    assert await reader.readline() == b"QUIT\r\n"
    writer.write(b"221 bye\r\n")


async def read_data(reader: asyncio.StreamReader) -> bytes:
    content = b""
    while (line := await reader.readline()) != b".\r\n":
        content += line
    return content


async def send_with(port: int, *emails: OutgoingEmail, **settings: Any) -> list[str]:
    provider = SmtpProvider(SmtpSettings(port=port, timeout_s=5, **settings))
    try:
        return [await provider.send(e) for e in emails]
    finally:
        await provider.close()


# -- the transaction ---------------------------------------------------------------------------


async def test_a_server_offering_pipelining_gets_the_envelope_in_one_go() -> None:
    """The scripted server answers nothing until it has MAIL, RCPT and DATA: a client that
    waited for each reply would time out."""
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, "PIPELINING 8BITMIME")
        for _ in range(2):
            envelope = [await reader.readline() for _ in range(3)]
            seen.extend(envelope)
            writer.write(b"250 ok\r\n250 ok\r\n354 go on\r\n")
            seen.append(await read_data(reader))
            writer.write(b"250 queued\r\n")
        await quit_(reader, writer)

    async with scripted_server(script) as port:
        assert await send_with(port, email(1), email(2)) == [
            message_id_for("e-1"),
            message_id_for("e-2"),
        ]
    assert seen[0] == b"MAIL FROM:<sender@example.com> BODY=8BITMIME\r\n"
    assert seen[1] == b"RCPT TO:<rcpt@example.com>\r\n"
    assert seen[2] == b"DATA\r\n"
    assert b"Message-ID: <e-1@relaybox>" in seen[3]


async def test_a_server_without_pipelining_gets_one_command_at_a_time() -> None:
    """Each reply comes late: had the client sent on before it, the bytes would be there."""
    early: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, "8BITMIME")
        for reply in (b"250 ok\r\n", b"250 ok\r\n", b"354 go on\r\n"):
            await reader.readline()
            await asyncio.sleep(0.05)
            if reader._buffer:  # type: ignore[attr-defined]  # sent before our reply
                early.append(bytes(reader._buffer))  # type: ignore[attr-defined]
            writer.write(reply)
        await read_data(reader)
        writer.write(b"250 queued\r\n")
        await quit_(reader, writer)

    async with scripted_server(script) as port:
        await send_with(port, email())
    assert early == []


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
async def test_messages_arrive_whole_through_aiosmtpd(pipelining: bool) -> None:
    handler = Recorder(pipelining=pipelining)
    dotted = email(1, text="first\n.hidden line\n..two dots\n.")
    unicode = email(2, subject="Grüße", text="é")  # not the pre-rendered path
    both = email(3, html="<p>hi</p>")
    async with aiosmtpd_server(handler) as port:
        await send_with(port, dotted, unicode, both)
    assert [m[:2] for m in handler.messages] == [("sender@example.com", ["rcpt@example.com"])] * 3
    first = message_from_bytes(handler.messages[0][2], policy=default)
    lines = first.get_content().replace("\r\n", "\n")
    assert lines == "first\n.hidden line\n..two dots\n.\n"  # the period lines intact
    second = message_from_bytes(handler.messages[1][2], policy=default)
    assert second["Subject"] == "Grüße"
    assert second.get_content().replace("\r\n", "\n") == "é\n"
    third = message_from_bytes(handler.messages[2][2], policy=default)
    assert third.get_content_type() == "multipart/alternative"


# -- what the replies mean ---------------------------------------------------------------------


def refusing(mail: bytes, rcpt: bytes, data: bytes, final: bytes = b"250 ok\r\n") -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, "PIPELINING")
        for _ in range(3):
            await reader.readline()
        writer.write(mail + rcpt + data)
        if data.startswith(b"354"):
            await read_data(reader)
            writer.write(final)
        await reader.read()  # until the client closes

    return script


@pytest.mark.parametrize(
    ("script", "error", "text"),
    [
        (refusing(b"451 busy\r\n", b"503 no\r\n", b"503 no\r\n"), RetryableError, "SMTP 451"),
        (refusing(b"553 bad\r\n", b"503 no\r\n", b"503 no\r\n"), PermanentError, "SMTP 553"),
        (refusing(b"250 ok\r\n", b"450 later\r\n", b"554 no\r\n"), RetryableError, "SMTP 450"),
        (refusing(b"250 ok\r\n", b"550 unknown\r\n", b"554 no\r\n"), PermanentError, "SMTP 550"),
        (refusing(b"250 ok\r\n", b"250 ok\r\n", b"451 not now\r\n"), RetryableError, "SMTP 451"),
        (
            refusing(b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"452 full\r\n"),
            RetryableError,
            "SMTP 452",
        ),
        (
            refusing(b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"554 spam\r\n"),
            PermanentError,
            "SMTP 554",
        ),
    ],
    ids=["mail-4xx", "mail-5xx", "rcpt-4xx", "rcpt-5xx", "data-4xx", "final-4xx", "final-5xx"],
)
async def test_refusals_are_retryable_or_permanent_by_their_code(
    script: Script, error: type[Exception], text: str
) -> None:
    async with scripted_server(script) as port:
        with pytest.raises(error, match=text):
            await send_with(port, email())


async def test_a_multiline_final_reply_is_read_whole() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, "PIPELINING")
        for _ in range(2):
            for _ in range(3):
                await reader.readline()
            writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
            await read_data(reader)
            writer.write(b"250-queued\r\n250-as 123\r\n250 done\r\n")
        await quit_(reader, writer)

    async with scripted_server(script) as port:
        assert len(await send_with(port, email(1), email(2))) == 2  # the session stayed in step


async def test_a_server_that_never_answers_is_a_retryable_timeout() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, "PIPELINING")
        await reader.read()

    async with scripted_server(script) as port:
        provider = SmtpProvider(SmtpSettings(port=port, timeout_s=0.3))
        with pytest.raises(RetryableError, match="TimeoutError"):
            await provider.send(email())


async def test_nothing_listening_is_a_retryable_connection_error() -> None:
    async with scripted_server(refusing(b"", b"", b"")) as port:
        pass  # closed again: the port is free
    with pytest.raises(RetryableError, match="SMTP connection failed"):
        await send_with(port, email())


async def test_an_idle_session_the_server_dropped_is_replaced() -> None:
    """The first session is closed by the server after one message; the second message goes
    on a new session, once."""
    sessions: list[int] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sessions.append(len(sessions))
        await greet(reader, writer, "PIPELINING")
        for _ in range(3):
            await reader.readline()
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await read_data(reader)
        writer.write(b"250 queued\r\n")
        await writer.drain()
        if len(sessions) == 1:
            writer.close()  # drop the idle session
            return
        await quit_(reader, writer)

    async with scripted_server(script) as port:
        provider = SmtpProvider(SmtpSettings(port=port, timeout_s=5))
        try:
            await provider.send(email(1))
            await asyncio.sleep(0.1)  # the server's close has arrived
            await provider.send(email(2))
        finally:
            await provider.close()
    assert sessions == [0, 1]


# -- authentication and TLS --------------------------------------------------------------------


def authenticator(*methods: str) -> tuple[Any, list[str]]:
    used: list[str] = []

    def check(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> AuthResult:
        ok = (
            isinstance(auth, LoginPassword)
            and auth.login == b"user"
            and auth.password == b"s3cret"
            and mechanism in methods
        )
        if ok:
            used.append(mechanism)
        return AuthResult(success=ok, handled=False)  # a refusal is answered 535

    return check, used


@pytest.mark.parametrize("method", ["PLAIN", "LOGIN"])
async def test_credentials_are_presented_with_a_method_the_server_offers(method: str) -> None:
    check, used = authenticator(method)
    handler = Recorder(pipelining=True)
    async with aiosmtpd_server(
        handler, authenticator=check, auth_require_tls=False, auth_exclude_mechanism=["CRAM-MD5"]
    ) as port:
        await send_with(port, email(), username="user", password="s3cret")
    assert used == [method] or used[-1] == method
    assert len(handler.messages) == 1


async def test_wrong_credentials_are_a_permanent_refusal() -> None:
    check, _ = authenticator("PLAIN", "LOGIN")
    async with aiosmtpd_server(Recorder(), authenticator=check, auth_require_tls=False) as port:
        with pytest.raises(PermanentError, match="SMTP 535"):
            await send_with(port, email(), username="user", password="wrong")


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1, trusted by the client (through
    SSL_CERT_FILE, which the default context reads)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def test_starttls_then_authentication(tls: ssl.SSLContext) -> None:
    check, used = authenticator("PLAIN")
    handler = Recorder(pipelining=True)
    async with aiosmtpd_server(
        handler, tls_context=tls, require_starttls=True, authenticator=check
    ) as port:
        await send_with(port, email(), start_tls=True, username="user", password="s3cret")
    assert used == ["PLAIN"]  # only offered once the session was encrypted
    assert len(handler.messages) == 1


async def test_implicit_tls(tls: ssl.SSLContext) -> None:
    handler = Recorder(pipelining=True)
    async with aiosmtpd_server(handler, ssl=tls) as port:
        await send_with(port, email(1), email(2), use_tls=True)
    assert len(handler.messages) == 2


async def test_starttls_refused_by_a_server_without_it_is_retryable() -> None:
    async with aiosmtpd_server(Recorder()) as port:
        with pytest.raises(RetryableError, match="STARTTLS"):
            await send_with(port, email(), start_tls=True)


async def test_the_pool_bounds_open_sessions_and_reuses_them() -> None:
    """Twelve sends at once through a pool of 3 against a slow server: never more than 3
    sessions open, and those 3 carry every email (no connection per send)."""
    open_now = peak = opened = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, peak, opened
        opened += 1
        open_now += 1
        peak = max(peak, open_now)
        try:
            await greet(reader, writer, "PIPELINING")
            while (await reader.readline()).upper().startswith(b"MAIL"):
                for _ in range(2):
                    await reader.readline()
                await asyncio.sleep(0.02)  # a relay far away: sends overlap
                writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
                await read_data(reader)
                writer.write(b"250 queued\r\n")
                await writer.drain()
            writer.write(b"221 bye\r\n")
            await writer.drain()
        finally:
            open_now -= 1
            writer.close()

    async with scripted_server(script) as port:
        provider = SmtpProvider(SmtpSettings(port=port, timeout_s=5, pool_size=3))
        try:
            await asyncio.gather(*(provider.send(email(n)) for n in range(12)))
        finally:
            await provider.close()
    assert (peak, opened) == (3, 3)
