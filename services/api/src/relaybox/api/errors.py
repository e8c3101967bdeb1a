"""API errors and their one mapping to RFC 9457 problem details."""

from __future__ import annotations

from typing import Any

from litestar.plugins.problem_details import ProblemDetailsException

from relaybox.common.errors import RelayboxError


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
