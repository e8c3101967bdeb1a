"""Mailing endpoints: thin handlers that validate and call create, reads and controls."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, Response, Router, get, post
from litestar.datastructures import State, UploadFile
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body, FromPath, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from relaybox.api.auth import Client, requires
from relaybox.api.errors import ApiError, to_problem
from relaybox.api.idempotency import Idempotency, IdempotencyKey, validate_key
from relaybox.api.mailings import controls, create, reads, upload
from relaybox.api.mailings.schemas import (
    UPLOAD_FORM_SCHEMA,
    EntryStatus,
    MailingDetail,
    MailingEntryPage,
    MailingErrorPage,
    MailingPage,
    MailingStatus,
    MailingUpload,
)
from relaybox.api.openapi import problems
from relaybox.api.settings import ApiSettings
from relaybox.common.observability.logging import request_id_var

READ = requires("mailing:read")
SEND = requires("mailing:send")
FORM_OVERHEAD_BYTES = 1024 * 1024  # the form around the file: part headers, subject, body


def _text_part_not_utf8(request: Request[Any, Any, Any], _: UnicodeDecodeError) -> Response[Any]:
    """Litestar decodes a form part without a filename as UTF-8 text and lets the error escape:
    that is bad input (a binary `file` sent as a plain field), a 400, not a 500."""
    problem = ApiError(
        "a text part of the form is not valid UTF-8; send the CSV as a file part (with a filename)"
    )
    return to_problem(problem).to_response(request)


def _view(settings: ApiSettings, clock: Any) -> reads.View:
    return reads.View(now=clock(), rate_per_second=settings.mailings.provider_rate_per_second)


class MailingController(Controller):
    """Upload a CSV mailing list, follow its progress, pause, resume, cancel, retry failures."""

    path = "/mailings"
    tags = ["mailings"]

    @post(
        "/",
        opt=requires("mailing:send", rate_limited=True),
        status_code=202,
        summary="Upload a mailing list (CSV) and start a mailing",
        description="Multipart form: `file` (CSV with an `email` column, or a single column of "
        "addresses without header), optional `subject` and `body` (a template containing "
        "`{token}`). Stores the mailing (PARSING), the file and its parse job in one "
        "transaction (202); parsing and sending happen in the background. The same file, "
        "subject and body again within the re-upload window answers that mailing (200). "
        "Honours Idempotency-Key.",
        responses={
            200: ResponseSpec(MailingDetail, description="The same upload again: that mailing"),
            **problems(415),
        },
        exception_handlers={UnicodeDecodeError: _text_part_not_utf8},
    )
    async def create(
        self,
        request: Request[Client, Any, State],
        data: Annotated[
            MailingUpload,
            Body(media_type=RequestEncodingType.MULTI_PART, schema_extra=UPLOAD_FORM_SCHEMA),
        ],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        clock: NamedDependency[Any],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[MailingDetail]:
        client: Client = request.user
        try:
            key = validate_key(idempotency_key)
            checked = await upload.inspect(data, settings.mailings)
            idem = Idempotency.of(
                client.key_owner,
                create.IDEMPOTENCY_SCOPE,
                key,
                checked.fingerprint(),
                settings.idempotency_ttl_h,
            )
            stored = await create.create_mailing(
                db_session,
                client=client,
                upload=checked,
                settings=settings.mailings,
                idempotency=idem,
                correlation_id=request_id_var.get(),
                view=_view(settings, clock),
            )
        finally:
            if isinstance(data.file, UploadFile):
                await data.file.close()
        return Response(stored.body, status_code=stored.status_code)  # type: ignore[arg-type]

    @get("/", opt=READ, summary="Mailings, newest first")
    async def list_all(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        clock: NamedDependency[Any],
        page: Annotated[int, QueryParameter(ge=1, le=100_000)] = 1,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
        status: Annotated[MailingStatus | None, QueryParameter()] = None,
    ) -> MailingPage:
        query = reads.MailingQuery(page=page, limit=limit, status=status, cursor=cursor)
        return await reads.list_mailings(db_session, request.user, query, _view(settings, clock))

    @get("/{mailing_id:uuid}", opt=READ, summary="One mailing with its progress")
    async def get_one(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        clock: NamedDependency[Any],
        mailing_id: FromPath[uuid.UUID],
    ) -> MailingDetail:
        return await reads.get_mailing(db_session, request.user, mailing_id, _view(settings, clock))

    @get(
        "/{mailing_id:uuid}/entries",
        opt=READ,
        summary="The mailing's recipients in file order, with their delivery state",
    )
    async def entries(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        mailing_id: FromPath[uuid.UUID],
        status: Annotated[EntryStatus | None, QueryParameter()] = None,
        cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    ) -> MailingEntryPage:
        return await reads.list_entries(
            db_session, request.user, mailing_id, status=status, cursor=cursor, limit=limit
        )

    @get(
        "/{mailing_id:uuid}/errors",
        opt=READ,
        summary="The file's invalid rows: row number, value and reason",
    )
    async def errors(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        mailing_id: FromPath[uuid.UUID],
        cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    ) -> MailingErrorPage:
        return await reads.list_errors(
            db_session, request.user, mailing_id, cursor=cursor, limit=limit
        )

    @post(
        "/{mailing_id:uuid}/pause",
        opt=SEND,
        status_code=200,
        responses=problems(409),
        summary="Pause: PARSING or RUNNING → PAUSED (409 otherwise)",
    )
    async def pause(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        clock: NamedDependency[Any],
        mailing_id: FromPath[uuid.UUID],
    ) -> MailingDetail:
        return await controls.pause(db_session, request.user, mailing_id, _view(settings, clock))

    @post(
        "/{mailing_id:uuid}/resume",
        opt=SEND,
        status_code=200,
        responses=problems(409),
        summary="Resume: PAUSED → RUNNING, or PARSING if paused before its parse ended",
    )
    async def resume(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        clock: NamedDependency[Any],
        mailing_id: FromPath[uuid.UUID],
    ) -> MailingDetail:
        return await controls.resume(db_session, request.user, mailing_id, _view(settings, clock))

    @post(
        "/{mailing_id:uuid}/cancel",
        opt=SEND,
        status_code=200,
        responses=problems(409),
        summary="Cancel: PARSING, RUNNING or PAUSED → CANCELLED (409 otherwise)",
        description="Recipients not sent yet are CANCELLED and their queued emails FAILED "
        "('mailing cancelled'), in the same transaction.",
    )
    async def cancel(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        clock: NamedDependency[Any],
        mailing_id: FromPath[uuid.UUID],
    ) -> MailingDetail:
        return await controls.cancel(db_session, request.user, mailing_id, _view(settings, clock))

    @post(
        "/{mailing_id:uuid}/retry-failed",
        opt=requires("mailing:send", rate_limited=True),
        status_code=200,
        responses=problems(409),
        summary="Send the failed recipients again",
        description="Recipients whose email FAILED are PENDING again; a COMPLETED mailing is "
        "RUNNING again. 409 for a CANCELLED or FAILED mailing.",
    )
    async def retry_failed(
        self,
        request: Request[Client, Any, State],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[ApiSettings],
        clock: NamedDependency[Any],
        mailing_id: FromPath[uuid.UUID],
    ) -> MailingDetail:
        return await controls.retry_failed(
            db_session, request.user, mailing_id, _view(settings, clock)
        )


def mailings_router(settings: ApiSettings) -> Router:
    """The mailing endpoints, accepting a request body as large as the file limit allows
    (Litestar refuses anything larger with a 413 before reading it)."""
    return Router(
        path="/",
        route_handlers=[MailingController],
        request_max_body_size=settings.mailings.max_file_bytes + FORM_OVERHEAD_BYTES,
    )
