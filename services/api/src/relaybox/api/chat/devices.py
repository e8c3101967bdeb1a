"""A user's push devices: register (a token moves to whoever registers it last), list, remove."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from sqlalchemy import delete as sql_delete
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client, requires
from relaybox.api.chat.schemas import DeviceView, RegisterDeviceRequest
from relaybox.api.errors import ConflictError, NotFoundError
from relaybox.api.openapi import problems
from relaybox.common.db.models import ChatDevice


def _view(row: ChatDevice) -> DeviceView:
    return DeviceView(
        id=row.id,
        platform=row.platform,  # type: ignore[arg-type]
        token_suffix=row.push_token[-6:],
        created_at=row.created_at,
    )


class DeviceController(Controller):
    """/chat/devices: where the caller's messages are pushed."""

    path = "/devices"
    tags = ["chat"]

    @post(
        "/",
        opt=requires("chat:write"),
        status_code=201,
        summary="Register a device for pushes",
        description="A push token belongs to one device: another user of the organisation "
        "registering it (the device changed hands) moves it to them, with a new id; the same "
        "caller registering their own token again gets the same device (200); a token "
        "registered in another organisation is a 409.",
        responses={
            200: ResponseSpec(DeviceView, description="Already registered to the caller"),
            **problems(409),
        },
    )
    async def register(
        self,
        request: Request[Client, Any, State],
        data: JSONBody[RegisterDeviceRequest],
        db_session: NamedDependency[AsyncSession],
    ) -> Response[DeviceView]:
        client: Client = request.user
        async with db_session.begin():
            mine = await db_session.scalar(
                select(ChatDevice).where(
                    ChatDevice.push_token == data.push_token,
                    ChatDevice.tenant_id == client.tenant,
                    ChatDevice.user_id == client.id,
                )
            )
            if mine is not None:
                if mine.platform != data.platform:
                    mine.platform = data.platform
                return Response(_view(mine), status_code=200)
            row = await db_session.scalar(
                pg_insert(ChatDevice)
                .values(
                    id=uuid.uuid4(),
                    tenant_id=client.tenant,
                    user_id=client.id,
                    platform=data.platform,
                    push_token=data.push_token,
                )
                .on_conflict_do_update(  # the token's device moved to another user of the org
                    index_elements=[ChatDevice.push_token],
                    set_={"id": uuid.uuid4(), "user_id": client.id, "platform": data.platform},
                    where=ChatDevice.tenant_id == client.tenant,
                )
                .returning(ChatDevice)
                .execution_options(populate_existing=True)
            )
            if row is None:
                raise ConflictError(
                    "this push token is registered in another organisation: remove it there "
                    "first (DELETE /chat/devices/{id})",
                    field="pushToken",
                )
        return Response(_view(row), status_code=201)

    @get("/", opt=requires("chat:read"), summary="The caller's devices")
    async def mine(
        self, request: Request[Client, Any, State], db_session: NamedDependency[AsyncSession]
    ) -> list[DeviceView]:
        client: Client = request.user
        rows = await db_session.scalars(
            select(ChatDevice)
            .where(ChatDevice.tenant_id == client.tenant, ChatDevice.user_id == client.id)
            .order_by(ChatDevice.created_at, ChatDevice.id)
        )
        return [_view(row) for row in rows]

    @delete("/{device_id:uuid}", opt=requires("chat:write"), summary="Remove a device")
    async def remove(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        device_id: FromPath[uuid.UUID],
    ) -> None:
        client: Client = request.user
        async with db_session.begin():
            gone = await db_session.scalar(
                sql_delete(ChatDevice)
                .where(
                    ChatDevice.id == device_id,
                    ChatDevice.tenant_id == client.tenant,
                    ChatDevice.user_id == client.id,
                )
                .returning(ChatDevice.id)
            )
        if gone is None:
            raise NotFoundError.of("device", device_id)
