"""One SMTP client session (RFC 5321) kept open between emails, with command pipelining
(RFC 2920) when the server offers it.

A mail transaction is MAIL, RCPT, DATA, then the content. Sent one command at a time (as
aiosmtplib's `sendmail` does) that is four round trips and four writes per email; on a server
that offers PIPELINING the three commands go in one write and their replies are read together,
then the content: two. Each write to a local socket wakes the receiving process, the costliest
part of a send on a small machine (the consumer's CPU per email fell by a fifth, the sink's
too).

The session opens as aiosmtplib's `connect` does: the greeting, EHLO (HELO when refused),
STARTTLS when asked for, then AUTH (CRAM-MD5, PLAIN or LOGIN, the first the server offers that
works) when credentials are set. aiosmtplib's pure helpers parse the EHLO answer and encode the
credentials; the provider flattens what is not pre-rendered with its `flatten_message`.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from aiosmtplib.auth import auth_crammd5_verify, auth_login_encode, auth_plain_encode
from aiosmtplib.esmtp import parse_esmtp_extensions

MAX_REPLY_LINE = 8192
MAX_REPLY = 4 * MAX_REPLY_LINE
_LINE_ENDINGS = re.compile(rb"(?:\r\n|\n|\r(?!\n))")
_LEADING_PERIOD = re.compile(rb"(?m)^\.")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # CR, LF, NUL, ... would inject commands
AUTH_METHODS = ("cram-md5", "plain", "login")  # aiosmtplib's order of preference


@dataclass(frozen=True)
class Reply:
    """A server reply: its code and its text (the lines of a multiline reply joined)."""

    code: int
    text: str


class SmtpReplyError(Exception):
    """The server answered a command with something else than what carries on."""

    def __init__(self, command: str, reply: Reply) -> None:
        super().__init__(f"{command}: {reply.code} {reply.text}")
        self.command = command
        self.code = reply.code
        self.text = reply.text


class SmtpSessionError(Exception):
    """The session cannot go on: the server went away, or it cannot do what is asked."""


class SessionLostError(SmtpSessionError, ConnectionError):
    """The server closed the session before it was given anything of the message (a reused
    session the server had dropped while idle): the message can go on a fresh one."""


@dataclass(frozen=True)
class SessionSettings:
    """How to reach and greet the server."""

    host: str
    port: int
    timeout_s: float
    use_tls: bool = False
    start_tls: bool = False
    username: str | None = None
    password: str | None = None


@cache
def local_hostname() -> str:
    """What EHLO announces (as aiosmtplib's default: the host's fully qualified name)."""
    return socket.getfqdn()


class SmtpSession:
    """An open session: `transaction` sends one message; `close`/`quit` end it."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout_s = timeout_s
        self.extensions: dict[str, str] = {}
        self._auth_methods: list[str] = []

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    async def open(cls, settings: SessionSettings) -> SmtpSession:
        """Connect, read the greeting, EHLO, STARTTLS and AUTH as the settings ask."""
        context = ssl.create_default_context() if settings.use_tls or settings.start_tls else None
        async with asyncio.timeout(settings.timeout_s):
            reader, writer = await asyncio.open_connection(
                settings.host,
                settings.port,
                ssl=context if settings.use_tls else None,
                server_hostname=settings.host if settings.use_tls else None,
            )
        session = cls(reader, writer, settings.timeout_s)
        try:
            await session._greet(settings, context)
        except BaseException:
            session.close()
            raise
        return session

    async def _greet(self, settings: SessionSettings, context: ssl.SSLContext | None) -> None:
        greeting = await self._reply()
        if greeting.code != 220:
            raise SmtpReplyError("connect", greeting)
        await self._hello()
        if settings.start_tls:
            if "starttls" not in self.extensions:
                raise SmtpSessionError("the server does not offer STARTTLS")
            await self._expect(b"STARTTLS\r\n", "STARTTLS", 220)
            assert context is not None
            async with asyncio.timeout(self._timeout_s):
                await self._writer.start_tls(context, server_hostname=settings.host)
            await self._hello()
        if settings.username is not None and settings.password is not None:
            await self._login(settings.username, settings.password)

    async def _hello(self) -> None:
        """EHLO, and HELO when the server refuses it; learns the extensions offered."""
        hostname = local_hostname().encode()
        self._write(b"EHLO " + hostname + b"\r\n")
        reply = await self._reply()
        if reply.code == 250:
            self.extensions, self._auth_methods = parse_esmtp_extensions(reply.text)
            return
        self.extensions, self._auth_methods = {}, []
        await self._expect(b"HELO " + hostname + b"\r\n", "HELO", 250)

    async def _login(self, username: str, password: str) -> None:
        offered = [m for m in AUTH_METHODS if m in (a.lower() for a in self._auth_methods)]
        if "auth" not in self.extensions or not offered:
            raise SmtpSessionError("the server offers no authentication method this client has")
        refused: SmtpReplyError | None = None
        for method in offered:  # some servers offer methods they do not support
            try:
                await self._authenticate(method, username, password)
            except SmtpReplyError as exc:
                refused = exc
            else:
                return
        assert refused is not None
        raise refused

    async def _authenticate(self, method: str, username: str, password: str) -> None:
        if method == "plain":
            await self._expect(
                b"AUTH PLAIN " + auth_plain_encode(username, password) + b"\r\n", "AUTH", 235
            )
        elif method == "login":
            user, secret = auth_login_encode(username, password)
            await self._expect(b"AUTH LOGIN " + user + b"\r\n", "AUTH", 334)
            await self._expect(secret + b"\r\n", "AUTH", 235)
        else:
            challenge = await self._expect(b"AUTH CRAM-MD5\r\n", "AUTH", 334)
            answer = auth_crammd5_verify(username, password, challenge.text)
            await self._expect(answer + b"\r\n", "AUTH", 235)

    # -- sending -------------------------------------------------------------------------------

    def supports(self, extension: str) -> bool:
        return extension.lower() in self.extensions

    @property
    def usable(self) -> bool:
        """Still open, and the server has not closed its side."""
        return not self._writer.is_closing() and not self._reader.at_eof()

    async def transaction(
        self, sender: str, recipients: Sequence[str], message: bytes, options: Sequence[str]
    ) -> Reply:
        """Send one message (addresses bare, without angle brackets); the server's final
        reply, which is 2yz. A negative reply raises `SmtpReplyError`; a server gone before it
        was given the content raises `SessionLostError`. After any error the session is not in
        a known state: close it."""
        if not recipients:
            raise ValueError("a message needs a recipient")
        for address in (sender, *recipients):
            if _CONTROL.search(address):
                raise ValueError("an address contains a control character")
        mail = f"MAIL FROM:<{sender}>{''.join(' ' + o for o in options)}\r\n".encode()
        rcpts = [f"RCPT TO:<{r}>\r\n".encode() for r in recipients]
        try:
            if self.supports("pipelining"):  # one write, the replies read together
                self._write(b"".join((mail, *rcpts, b"DATA\r\n")))
                replies = [await self._reply() for _ in range(2 + len(rcpts))]
                _check_envelope(replies[0], replies[1:-1], replies[-1])
            else:
                await self._expect(mail, "MAIL", 250)
                answers = []
                for rcpt in rcpts:
                    self._write(rcpt)
                    answers.append(await self._reply())
                _check_envelope(Reply(250, ""), answers, None)
                await self._expect(b"DATA\r\n", "DATA", 354)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise SessionLostError(f"the server closed the session: {exc!r}") from exc
        self._write(_data(message))
        final = await self._reply()
        if not 200 <= final.code < 300:  # any 2yz is "completed" (RFC 5321 4.2.1)
            raise SmtpReplyError("DATA", final)
        return final

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Drop the connection at once (no QUIT)."""
        self._writer.close()

    async def quit(self) -> None:
        """QUIT, then close; a server that does not answer is closed on anyway."""
        try:
            self._write(b"QUIT\r\n")
            await self._reply()
        except (OSError, EOFError, TimeoutError, SmtpSessionError):
            pass
        finally:
            self.close()

    # -- the wire ------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise SessionLostError("the session is closed")
        self._writer.write(data)

    async def _expect(self, command: bytes, name: str, code: int) -> Reply:
        self._write(command)
        reply = await self._reply()
        if reply.code != code:
            raise SmtpReplyError(name, reply)
        return reply

    async def _reply(self) -> Reply:
        """Read one reply, multiline ones whole."""
        lines: list[str] = []
        size = 0
        async with asyncio.timeout(self._timeout_s):
            while True:
                line = await self._reader.readuntil(b"\n")
                size += len(line)
                if len(line) > MAX_REPLY_LINE or size > MAX_REPLY:
                    raise SmtpSessionError("the server's reply is too long")
                try:
                    code = int(line[:3])
                except ValueError:
                    raise SmtpSessionError(f"malformed SMTP reply line: {line[:80]!r}") from None
                lines.append(line[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape"))
                if line[3:4] != b"-":
                    return Reply(code, "\n".join(lines))


def _check_envelope(mail: Reply, rcpts: list[Reply], data: Reply | None) -> None:
    """MAIL 250, at least one recipient accepted, DATA 354 (None: not sent yet); else the
    first refusal."""
    if mail.code != 250:
        raise SmtpReplyError("MAIL", mail)
    if not any(r.code in (250, 251) for r in rcpts):
        raise SmtpReplyError("RCPT", rcpts[0])
    if data is not None and data.code != 354:
        raise SmtpReplyError("DATA", data)


def _data(message: bytes) -> bytes:
    """The content as DATA sends it: CRLF line endings, lines that start with a period
    doubled, and the terminating period."""
    message = _LINE_ENDINGS.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return _LEADING_PERIOD.sub(b"..", message) + b".\r\n"
