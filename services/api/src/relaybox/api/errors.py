"""API errors and their one mapping to RFC 9457 problem details."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    SerializationException,
    TooManyRequestsException,
    ValidationException,
)
from litestar.plugins.problem_details import ProblemDetailsException

from relaybox.api.middleware import request_id_of
from relaybox.common.db.errors import database_outage
from relaybox.common.errors import RelayboxError

log = logging.getLogger("relaybox.api.errors")
OUTAGE_RETRY_AFTER_S = 5

# Litestar's own wording is the bare status phrase for these; say what to do instead.
_DEFAULT_DETAILS = {
    401: "a valid bearer token is required (Authorization: Bearer <JWT>)",
    403: "this token is not allowed to do that",
    404: "no such resource",
    405: "this method is not allowed on this path",
    429: "too many requests; retry after the number of seconds in Retry-After",
}
_VALUE_ERROR_PREFIX = "Value error, "


class ApiError(RelayboxError):
    """Root of the errors a service raises to answer a request with a 4xx."""

    status_code = 400
    title = "Bad Request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFoundError(ApiError):
    status_code = 404
    title = "Not Found"

    @classmethod
    def of(cls, kind: str, row_id: object) -> NotFoundError:
        """`no <kind> with id <id>`: also what another tenant's row reads as."""
        return cls(f"no {kind} with id {row_id}")


class ConflictError(ApiError):
    status_code = 409
    title = "Conflict"


class UnprocessableError(ApiError):
    status_code = 422
    title = "Unprocessable Content"


def to_problem(exc: ApiError) -> ProblemDetailsException:
    """The problem-details exception Litestar renders for an ApiError."""
    return ProblemDetailsException(
        status_code=exc.status_code,
        title=exc.title,
        detail=exc.detail,
        extra=exc.extra or None,
    )


def _field_errors(exc: ValidationException) -> list[dict[str, str]]:
    """Litestar's validation messages as `{field, message}` (the body's own fields by name)."""
    errors: list[dict[str, str]] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if not isinstance(item, dict):
            continue
        field = str(item.get("key", "")) or "body"
        message = str(item.get("message", "invalid value")).removeprefix(_VALUE_ERROR_PREFIX)
        if field == "data" and item.get("source") == "body":  # no body at all
            field, message = "body", "a JSON object is required"
        errors.append({"field": field, "message": message})
    return errors


def http_problem(exc: HTTPException) -> ProblemDetailsException:
    """Any Litestar HTTP error (validation, auth, rate limit, routing) as problem details:
    the status phrase as title, a clear `detail`, and `field`/`errors` naming the input at fault."""
    status = exc.status_code
    headers = dict(exc.headers or {})
    phrase = HTTPStatus(status).phrase
    detail = exc.detail
    if not detail or detail == phrase:
        detail = _DEFAULT_DETAILS.get(status, phrase)
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException) and (errors := _field_errors(exc)):
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        extra = {"field": errors[0]["field"], "errors": errors}
    elif isinstance(exc.__cause__, SerializationException):
        detail = f"the request body is not valid JSON: {exc.detail}"
        extra = {"field": "body"}
    if status == HTTPStatus.UNAUTHORIZED:
        headers.setdefault("WWW-Authenticate", "Bearer")
    if isinstance(exc, TooManyRequestsException):
        reset = headers.get("RateLimit-Reset", "60")
        headers["Retry-After"] = str(max(1, int(reset))) if reset.isdigit() else "60"
    return ProblemDetailsException(
        status_code=status,
        title=phrase,
        detail=detail,
        headers=headers or None,
        extra=extra or None,
    )


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A 5xx. The database out of reach is a 503 with Retry-After (the request can be repeated:
    nothing was committed). Anything else is a bug: logged once with its traceback, the request
    id, method and route. Either answer is problem details that reveal nothing of the exception
    (it may hold secrets)."""
    scope = request.scope
    if database_outage(exc):
        log.warning(
            "database unavailable",
            extra={"request_id": request_id_of(scope), "error": type(exc).__name__},
        )
        return ProblemDetailsException(
            status_code=503,
            title=HTTPStatus.SERVICE_UNAVAILABLE.phrase,
            detail="the database is unavailable; retry after the seconds in Retry-After",
            headers={"Retry-After": str(OUTAGE_RETRY_AFTER_S)},
        ).to_response(request)
    log.error(
        "unhandled exception",
        exc_info=exc,
        extra={
            "request_id": request_id_of(scope),
            "method": scope.get("method"),
            "route": scope.get("path_template", scope.get("path")),
            "path": scope.get("path"),
        },
    )
    return ProblemDetailsException(
        status_code=500,
        title=HTTPStatus.INTERNAL_SERVER_ERROR.phrase,
        detail="an unexpected error occurred; quote the X-Request-ID when reporting it",
    ).to_response(request)
