"""HTTP routes under /push: the contract's send (/push/v1) and the mock's switches (/push/_mock)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from litestar import Controller, Response, Router, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, QueryParameter, RawBody

from relaybox.mock_meta.email_api.routes import BEARER_SCHEME
from relaybox.mock_meta.push.mock import PushMock
from relaybox.mock_meta.push.models import (
    ErrorBody,
    PushConfig,
    PushConfigPatch,
    PushRecordList,
    PushStats,
    SendAccepted,
)

PushDependency = NamedDependency[PushMock]
PREFIX = "/push"
_SEND_ERRORS = {
    400: "INVALID_ARGUMENT: unreadable body, empty token, payload over 4 KB (or simulated)",
    401: "UNAUTHENTICATED: missing or wrong server key (or simulated)",
    403: "PERMISSION_DENIED (simulated)",
    404: "NOT_FOUND, errorCode UNREGISTERED: a dead token (`dead-…`, listed, or per device)",
    429: "RESOURCE_EXHAUSTED: rate limit or simulated; carries Retry-After (seconds)",
    500: "INTERNAL (simulated)",
    503: "UNAVAILABLE (simulated); carries Retry-After (seconds)",
}


class PushController(Controller):
    """The FCM-like send of docs/messenger/push-gateway.md."""

    path = "/v1"
    tags = ["push gateway"]

    @post(
        "/messages:send",
        status_code=200,
        security=[{BEARER_SCHEME: []}],
        responses={
            code: ResponseSpec(data_container=ErrorBody, description=text)
            for code, text in _SEND_ERRORS.items()
        },
    )
    async def send(
        self,
        push: PushDependency,
        body: RawBody,
        authorization: Annotated[
            str | None, HeaderParameter(name="Authorization", required=False)
        ] = None,
        idempotency_key: Annotated[
            str | None, HeaderParameter(name="Idempotency-Key", required=False)
        ] = None,
    ) -> Response[SendAccepted | ErrorBody]:
        """Push `{"message": {"token", "data", "notification"}}` to one device; decided on
        arrival, answered after the drawn answer latency. An `Idempotency-Key` is recorded (the
        ledger counts calls per key), never de-duplicated."""
        answer = push.send(authorization, body, idempotency_key)
        if answer.delay_s > 0:
            await asyncio.sleep(answer.delay_s)
        return Response(answer.body, status_code=answer.status_code, headers=answer.headers)


class PushMockController(Controller):
    """The switches and records a test uses to steer and inspect the push gateway."""

    path = "/_mock"
    tags = ["push gateway mock"]

    @get("/config")
    async def get_config(self, push: PushDependency) -> PushConfig:
        """The current behaviour switches."""
        return push.state.config

    @post("/config", status_code=200)
    async def set_config(self, push: PushDependency, data: JSONBody[PushConfigPatch]) -> PushConfig:
        """Merge the given switches into the config; `seed` reseeds every random stream; held
        receipts look at their device's offline windows again."""
        return push.configure(data)

    @get("/messages")
    async def list_messages(
        self,
        push: PushDependency,
        token: Annotated[str | None, QueryParameter(description="device push token")] = None,
    ) -> PushRecordList:
        """Every push call in arrival order (refused ones too), optionally to one device."""
        found = push.state.records(token)
        return PushRecordList(data=found, total=len(found))

    @delete("/messages")
    async def reset(self, push: PushDependency) -> None:
        """Forget the records and the ledger, zero the stats and the rate window (the config and
        receipts still owed stay)."""
        push.state.reset()

    @get("/stats")
    async def get_stats(self, push: PushDependency) -> PushStats:
        """Counters since start or the last reset."""
        return push.state.stats_snapshot()


def build_push_router(push: PushMock) -> Router:
    """The /push routes bound to one mock."""

    def provide_push() -> PushMock:
        return push

    return Router(
        path=PREFIX,
        route_handlers=[PushController, PushMockController],
        dependencies={"push": Provide(provide_push, sync_to_thread=False)},
    )
