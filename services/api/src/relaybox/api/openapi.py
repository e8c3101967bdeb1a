"""The OpenAPI document as a contract: each operation's problem-details answers, `security: []`
on public routes, request schemas as strict as the validation (and each path's OPTIONS Allow).

One place decides what a route can answer, from what the route is (`answers`):

| the route                                    | it can answer                              |
|----------------------------------------------|--------------------------------------------|
| needs a bearer token (not `opt["public"]`)   | 401                                        |
| requires a scope (`requires(...)`)           | 403                                        |
| spends the send budget (`rate_limited=True`) | 429                                        |
| takes parameters or a body                   | 400 (the `field` at fault)                 |
| takes a body                                 | 413 (larger than the request body limit)   |
| has a path id                                | 404                                        |
| honours `Idempotency-Key`                    | 409 (same key in flight), 422 (other body) |
| needs a token, or takes a body (the database)| 503 (the database out of reach; retry)     |

A route declares what only its service knows (a 409 of a state machine, a 415) with
`responses=problems(...)` on its decorator. `ContractPlugin` merges both into every route as it
is registered; `tests/integration/platform/test_api_contract.py` and the schemathesis runs
(`tests/fuzz/`) hold the API to the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import msgspec
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIFormat, OpenAPIType, Operation, Reference, Schema
from litestar.params import HeaderParameter
from litestar.plugins import ReceiveRoutePlugin
from litestar.plugins.pydantic import PydanticSchemaPlugin
from litestar.routes import BaseRoute, HTTPRoute
from litestar.typing import FieldDefinition
from pydantic import BaseModel

from relaybox.api.auth import RATE_LIMITED, SCOPE
from relaybox.api.idempotency import HEADER as IDEMPOTENCY_HEADER

PROBLEM_MEDIA_TYPE = "application/problem+json"
PUBLIC = "public"  # opt key: no bearer token (`relaybox.api.auth.jwt_auth` excludes the route)
READS_BODY = "reads_body"  # opt key: the handler reads the raw body itself (no `data`)

# What each status means here (the response's description in the document).
MEANINGS: dict[int, str] = {
    400: "Bad input: `detail` says what is wrong, `field` names the input at fault",
    401: "No valid credentials: a missing, expired or invalid bearer token (or webhook signature)",
    403: "The token lacks the scope this route requires",
    404: "No such resource",
    409: "Conflict: a request with this Idempotency-Key is still running, or the resource is not "
    "in a state that allows this",
    413: "The request body is larger than the limit (`maxBytes` when known)",
    415: "The uploaded file's type is refused: `detail` says why",
    422: "This Idempotency-Key was already used with a different request body",
    429: "Too many requests: retry after the number of seconds in Retry-After",
    503: "The database is unavailable: nothing was done; retry after the seconds in Retry-After",
}


class FieldProblem(msgspec.Struct):
    """One input at fault."""

    field: str
    message: str


class Problem(msgspec.Struct, kw_only=True):
    """RFC 9457 problem details: every error answer of the API (`application/problem+json`).
    Other members may follow (e.g. `maxBytes` of a 413)."""

    status: int
    title: str
    detail: str
    field: str | None = None
    errors: list[FieldProblem] | None = None


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """Problem-details responses for `statuses` (a decorator's `responses=`)."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=MEANINGS.get(status, HTTPStatus(status).phrase),
            media_type=PROBLEM_MEDIA_TYPE,
            generate_examples=False,
        )
        for status in statuses
    }


# Signature names Litestar fills from the request itself, never documented as parameters.
_RESERVED = frozenset(
    ("request", "socket", "state", "scope", "data", "headers", "cookies", "query", "body")
)


def _parameters(handler: HTTPRouteHandler) -> dict[str, FieldDefinition]:
    """The handler's query, header and path parameters (not its dependencies)."""
    dependencies = handler.resolve_dependencies()
    return {
        name: field
        for name, field in handler.parsed_fn_signature.parameters.items()
        if name not in dependencies and name not in _RESERVED
    }


def _header_names(handler: HTTPRouteHandler) -> set[str]:
    return {
        (field.kwarg_definition.name or name).lower()
        for name, field in _parameters(handler).items()
        if isinstance(field.kwarg_definition, HeaderParameter)
    }


def takes_body(handler: HTTPRouteHandler) -> bool:
    """The handler reads a request body (a `data` parameter, or `opt["reads_body"]`)."""
    return "data" in handler.parsed_fn_signature.parameters or bool(handler.opt.get(READS_BODY))


def answers(route: HTTPRoute, handler: HTTPRouteHandler) -> set[int]:
    """The error statuses a route can answer by what it is (see the module's table)."""
    opt = handler.opt
    statuses: set[int] = set()
    if not opt.get(PUBLIC):
        statuses.add(401)
    if opt.get(SCOPE):
        statuses.add(403)
    if opt.get(RATE_LIMITED):
        statuses.add(429)
    body = takes_body(handler)
    if body or _parameters(handler):
        statuses.add(400)
    if body:
        statuses.add(413)
    if route.path_parameters:
        statuses.add(404)
    if IDEMPOTENCY_HEADER.lower() in _header_names(handler):
        statuses |= {409, 422}
    if not opt.get(PUBLIC) or body:  # every such route reads or writes the database
        statuses.add(503)
    return statuses


def _rebind_automatic_options(route: HTTPRoute) -> None:
    """Point Litestar's automatic OPTIONS handler at the route it serves: built while a
    controller's handlers are registered one by one, it can keep the route of the first one, and
    its Allow then lists one method of two. (`test_api_contract` checks every path's Allow.)"""
    handler = route.route_handler_map.get("OPTIONS", (None,))[0]
    if handler is None or handler.handler_name != "options_handler":
        return
    for cell in getattr(handler.fn, "__closure__", None) or ():
        if isinstance(cell.cell_contents, HTTPRoute) and cell.cell_contents is not route:
            cell.cell_contents = route


@dataclass
class PublicOperation(Operation):
    """An operation anyone may call: `security: []` overrides the document's bearer default."""

    def __post_init__(self) -> None:
        self.security = []


class ContractPlugin(ReceiveRoutePlugin):
    """Gives every registered route its problem-details responses (`answers`) and public routes
    `security: []`. A response the decorator declares itself is kept as it is."""

    def receive_route(self, route: BaseRoute) -> None:
        if not isinstance(route, HTTPRoute):
            return
        _rebind_automatic_options(route)
        for handler in route.route_handlers:
            if not handler.resolve_include_in_schema():
                continue
            declared = dict(handler.responses or {})
            derived = problems(*sorted(answers(route, handler) - declared.keys()))
            handler.responses = {**derived, **declared}
            if handler.opt.get(PUBLIC) and handler.operation_class is Operation:
                handler.operation_class = PublicOperation


# --- request schemas: what pydantic validates, as pydantic states it ------------------------

_SCHEMA_ATTRS = {**Schema.field_aliases(), "$ref": "ref"}
_NESTED = {"all_of", "any_of", "one_of", "prefix_items"}
_NESTED_ONE = {"schema_not", "items", "additional_properties", "contains", "property_names"}


def to_schema(document: Mapping[str, Any]) -> Schema | Reference:
    """A JSON Schema (as pydantic writes it) as Litestar's OpenAPI objects."""
    if "$ref" in document:
        return Reference(ref=document["$ref"])
    schema = Schema()
    for key, value in document.items():
        attr = _SCHEMA_ATTRS.get(key, key)
        if attr in ("title", "$defs"):
            continue
        if not hasattr(schema, attr):
            raise ValueError(f"no OpenAPI schema keyword for {key!r}")
        if attr in _NESTED:
            value = [to_schema(item) for item in value]
        elif attr in _NESTED_ONE and isinstance(value, Mapping):
            value = to_schema(value)
        elif attr in ("properties", "pattern_properties", "dependent_schemas"):
            value = {name: to_schema(item) for name, item in value.items()}
        elif attr == "type":
            value = (
                [OpenAPIType(t) for t in value] if isinstance(value, list) else OpenAPIType(value)
            )
        elif attr == "format":
            value = OpenAPIFormat(value)
        setattr(schema, attr, value)
    return schema


def model_schema(model: type[BaseModel]) -> Schema:
    """The JSON Schema pydantic validates `model` by (aliases, constraints, patterns, formats,
    `additionalProperties: false` of `extra="forbid"`, the model's `json_schema_extra`)."""
    document = model.model_json_schema(by_alias=True, mode="validation")
    if "$defs" in document:
        raise ValueError(f"{model.__name__}: nested models are not supported here")
    schema = to_schema(document)
    assert isinstance(schema, Schema)
    return schema


class RequestModelSchemaPlugin(PydanticSchemaPlugin):
    """Request bodies validated by pydantic are documented by pydantic's own JSON Schema, so the
    document states exactly what the validation checks (Litestar's generic pydantic support
    drops `additionalProperties`, model-level rules and some field constraints)."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        model = field_definition.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return super().to_openapi_schema(field_definition, schema_creator)
        registered: Schema = schema_creator.schema_registry.get_schema_for_field_definition(
            field_definition
        )
        for name, value in vars(model_schema(model)).items():
            if value is not None:
                setattr(registered, name, value)
        registered.title = model.__name__
        return registered
