"""A scripted HTTP provider: answers each call with the next programmed answer, records the calls.

For answers no mock of ours gives but a provider's contract allows (`null`, a bare string, text
that is not JSON, no body, a 204, an HTTP-date Retry-After ...). Served on a real loopback port
with `tests.support.serving.serve_app`.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def request_body(scope: dict[str, Any], receive: Receive, send: Send) -> bytes | None:
    """An ASGI app's request body, read whole; None for the lifespan scope, which it answers
    (startup and shutdown complete): the test providers' common part."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return None
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: status, raw body, headers (a content type unless the body is empty)."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0

    @classmethod
    def json(cls, status: int, value: Any, **headers: str) -> Answer:
        return cls(
            status,
            json.dumps(value).encode(),
            (("content-type", "application/json"), *headers.items()),
        )


@dataclass(frozen=True)
class Call:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


TOKEN_ANSWER = Answer.json(200, {"access_token": "scripted-token", "expires_in": 1800})


@dataclass
class ScriptedProvider:
    """An ASGI app: `/auth/token` answers `token` (the email API's), any other path the next of
    `answers` (then `default`)."""

    default: Answer = field(default_factory=lambda: Answer.json(202, {"message_id": "m-default"}))
    token: Answer = TOKEN_ANSWER
    answers: deque[Answer] = field(default_factory=deque)
    calls: list[Call] = field(default_factory=list)
    called: asyncio.Event = field(default_factory=asyncio.Event)

    def script(self, *answers: Answer) -> None:
        self.answers.extend(answers)

    def sends(self) -> list[Call]:
        """The calls other than token requests."""
        return [c for c in self.calls if c.path != "/auth/token"]

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        body = await request_body(scope, receive, send)
        if body is None:
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.calls.append(Call(scope["path"], headers, body))
        if scope["path"] == "/auth/token":
            answer = self.token
        else:
            answer = self.answers.popleft() if self.answers else self.default
            self.called.set()
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [(k.encode(), v.encode()) for k, v in answer.headers],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})
