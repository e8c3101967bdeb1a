"""HTTP load-generator connections: httpx (one client per connection) or a minimal raw client."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import httpx

CLIENTS = ("httpx", "raw")


class HttpxConnection:
    """One httpx.AsyncClient holding one keep-alive connection.

    One client per connection: a single client with a pool of 32 busy connections spends more
    CPU in httpcore's pool than the server spends answering.
    """

    def __init__(self, url: str, token: str) -> None:
        self._client = httpx.AsyncClient(
            base_url=url,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=30.0,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )

    async def post(self, path: str, body: bytes, key: str | None) -> tuple[int, bytes]:
        """(status, body); status 0 when the request failed."""
        headers = {"Idempotency-Key": key} if key else {}
        try:
            response = await self._client.post(path, content=body, headers=headers)
        except httpx.HTTPError:
            return 0, b""
        return response.status_code, response.content

    async def close(self) -> None:
        await self._client.aclose()


class RawConnection:
    """A minimal keep-alive HTTP/1.1 client: one request at a time, Content-Length bodies.
    Without a token, no Authorization header is sent."""

    def __init__(self, url: str, token: str | None = None) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._headers = (
            f"Host: {parts.netloc}\r\n{auth}Content-Type: application/json\r\n"
        ).encode()
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes, key: str | None) -> tuple[int, bytes]:
        """(status, body); status 0 when the request failed."""
        return await self.request(path, body, {"Idempotency-Key": key} if key else {})

    async def request(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """POST `body` with these extra `headers`: (status, body); status 0 when it failed."""
        return await self.send(b"POST", path, body, headers)

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET `path` (with its query string): (status, body); status 0 when it failed."""
        return await self.send(b"GET", path, b"", {})

    async def send(
        self, method: bytes, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """One request: (status, body); status 0 when it failed.

        A kept-alive connection the server closes as the request goes out (its keep-alive
        timeout: uvicorn's is 5 s) fails with no answer; a request safe to repeat (a GET, or one
        with an Idempotency-Key) is then sent once more on a new connection, as HTTP clients do
        (RFC 9112 9.3.1)."""
        reused = self._streams is not None
        status, content = await self._once(method, path, body, headers)
        if status == 0 and reused and (method == b"GET" or "Idempotency-Key" in headers):
            status, content = await self._once(method, path, body, headers)
        return status, content

    async def _once(
        self, method: bytes, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        try:
            if self._streams is not None and self._streams[0].at_eof():
                await self.close()  # the server closed it while idle (keep-alive timeout)
            if self._streams is None:
                self._streams = await asyncio.open_connection(self._host, self._port)
            reader, writer = self._streams
            extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
            writer.write(
                b"%s %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n%s"
                % (method, path.encode(), self._headers, extra, len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            content = await reader.readexactly(length)
            if close:
                await self.close()
            return int(head[9:12]), content
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            await self.close()
            return 0, b""

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()


Connection = HttpxConnection | RawConnection


def connection(client: str, url: str, token: str) -> Connection:
    return HttpxConnection(url, token) if client == "httpx" else RawConnection(url, token)


class Pool:
    """Idle connections reused last-in first-out; a new one is opened when none is idle."""

    def __init__(self, client: str, url: str, token: str) -> None:
        self._client, self._url, self._token = client, url, token
        self._idle: list[Connection] = []
        self._all: list[Connection] = []

    async def post_json(self, path: str, body: bytes, key: str | None) -> tuple[int, object]:
        conn = self._idle.pop() if self._idle else self._open()
        try:
            status, content = await conn.post(path, body, key)
        finally:
            self._idle.append(conn)
        return status, json.loads(content) if content else None

    def _open(self) -> Connection:
        conn = connection(self._client, self._url, self._token)
        self._all.append(conn)
        return conn

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()
