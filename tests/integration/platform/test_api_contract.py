"""The OpenAPI document tells the truth: every route, walked from the document itself, answers
only statuses its operation declares (errors as problem details), public routes say
`security: []`, every path's OPTIONS lists its methods, and every body is bounded (413)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from litestar.routes import HTTPRoute
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.app import create_app
from relaybox.api.auth import issue_token
from relaybox.api.openapi import PROBLEM_MEDIA_TYPE
from relaybox.api.settings import ApiSettings

METHODS = ("get", "post", "put", "patch", "delete")
SMALL_LIMIT = 4096  # the app under test bounds bodies at this many bytes


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def concrete(path: str) -> str:
    """The path with every `{id}` an id that exists nowhere."""
    return re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), path)


def is_public(operation: dict[str, Any]) -> bool:
    return operation.get("security") == []


def assert_declared(method: str, path: str, operation: dict[str, Any], r: httpx.Response) -> None:
    declared = operation["responses"]
    assert str(r.status_code) in declared, f"{method} {path} answered {r.status_code}: {r.text}"
    if r.status_code >= 400:
        content = declared[str(r.status_code)].get("content", {})
        if PROBLEM_MEDIA_TYPE in content:
            assert r.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE), r.headers


@pytest.fixture
async def small_limit(
    api_settings: ApiSettings, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    """The API with a small request body limit (and a small upload limit), no token."""
    settings = api_settings.model_copy(
        update={
            "max_body_bytes": SMALL_LIMIT,
            "mailings": api_settings.mailings.model_copy(update={"max_file_bytes": SMALL_LIMIT}),
            "chat": api_settings.chat.model_copy(update={"max_attachment_bytes": SMALL_LIMIT}),
        }
    )
    transport = httpx.ASGITransport(app=create_app(settings, engine=engine))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://relaybox.test") as c:
        yield c


async def test_every_answer_of_every_route_is_declared(
    client: httpx.AsyncClient, api_settings: ApiSettings, spec: dict[str, Any]
) -> None:
    """No token, a token without scopes, ids that exist nowhere, an empty or malformed body:
    whatever a route answers, its operation declares (a new route is walked as it is added)."""
    token = client.headers["Authorization"]
    no_scopes = f"Bearer {issue_token(api_settings, 'nobody', scopes=())}"
    walked = 0
    for method, path, operation in operations(spec):
        url = concrete(path)
        cases: list[dict[str, Any]] = [
            {"headers": {"Authorization": token}},
            {"headers": {"Authorization": token}, "content": b"{not json"},
            {"headers": {"Authorization": token}, "json": {}},
            {"headers": {"Authorization": no_scopes}},
            {"headers": {"Authorization": ""}},
        ]
        for case in cases:
            response = await client.request(method, url, **case)
            assert response.status_code < 500, f"{method} {path}: {response.text}"
            assert_declared(method, path, operation, response)
            walked += 1
        if not is_public(operation):
            assert response.status_code == 401, f"{method} {path} without a token"
    assert walked >= 5 * 25


async def test_public_routes_say_security_empty_and_need_no_token(
    client: httpx.AsyncClient, spec: dict[str, Any]
) -> None:
    assert spec["security"] == [{"BearerToken": []}]
    public = {(m, p) for m, p, op in operations(spec) if is_public(op)}
    assert public == {
        ("GET", "/health"),
        ("GET", "/ready"),
        ("GET", "/metrics"),
        ("GET", "/webhooks/mock-meta"),
        ("POST", "/webhooks/mock-meta"),
        ("POST", "/webhooks/push"),
    }
    client.headers.pop("Authorization")
    for method, path in public:
        assert (await client.request(method, path)).status_code != 401 or "webhooks" in path
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


def test_every_error_is_a_problem_details_response(spec: dict[str, Any]) -> None:
    problem = {"$ref": "#/components/schemas/Problem"}
    for method, path, operation in operations(spec):
        for status, response in operation["responses"].items():
            if status.startswith("4"):
                assert response["content"] == {PROBLEM_MEDIA_TYPE: {"schema": problem}}, (
                    method,
                    path,
                    status,
                )
    schema = spec["components"]["schemas"]["Problem"]
    assert set(schema["required"]) == {"status", "title", "detail"}


def test_what_each_kind_of_route_declares(spec: dict[str, Any]) -> None:
    """The derived part (relaybox.api.openapi.answers) on one route of each kind."""
    declared = {
        (method, path): set(operation["responses"]) for method, path, operation in operations(spec)
    }
    assert declared[("POST", "/send")] >= {
        *("202", "400", "401", "403", "409", "413", "422", "429", "503")
    }
    assert declared[("GET", "/emails/{email_id}")] >= {"200", "401", "403", "404"}
    assert declared[("POST", "/mailings")] >= {"200", "202", "413", "415", "409", "422", "429"}
    assert declared[("POST", "/messages/{message_id}/retry")] >= {"404", "409", "429"}
    assert declared[("POST", "/webhooks/mock-meta")] >= {"200", "400", "401", "413", "503"}
    assert not {"401", "503"} & declared[("GET", "/health")]
    signature = spec["paths"]["/webhooks/mock-meta"]["post"]["parameters"][0]
    assert (signature["name"], signature["required"]) == ("X-Hub-Signature-256", True)
    assert spec["paths"]["/webhooks/mock-meta"]["post"]["requestBody"]["required"] is True
    push = spec["paths"]["/webhooks/push"]["post"]
    assert set(push["responses"]) >= {"200", "400", "401", "413", "503"}
    assert (push["parameters"][0]["name"], push["parameters"][0]["required"]) == (
        "X-Hub-Signature-256",
        True,
    )
    receipt = push["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert receipt["receipts"]["items"]["required"] == ["id", "data", "deliveredAt"]


def test_request_schemas_are_as_strict_as_the_validation(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    send = schemas["SendEmailRequest"]
    assert send["additionalProperties"] is False
    assert {"to", "subject", "text", "body", "html", "from"} == set(send["properties"])
    assert send["properties"]["to"]["format"] == "email"
    assert "pattern" in send["properties"]["subject"]
    assert schemas["SendMessageRequest"]["additionalProperties"] is False
    key = spec["paths"]["/send"]["post"]["parameters"][0]
    assert key["name"] == "Idempotency-Key" and key["schema"]["pattern"]


async def test_options_lists_every_method_of_every_path(
    api_settings: ApiSettings, engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    """Litestar's automatic OPTIONS of a path with two methods once listed one of them."""
    app = create_app(api_settings, engine=engine)
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or "{" in route.path:
            continue
        response = await client.options(route.path)
        if response.status_code == 204:
            assert set(response.headers["allow"].split(", ")) == set(route.methods), route.path


async def test_every_body_is_bounded_with_a_413(
    small_limit: httpx.AsyncClient, api_settings: ApiSettings, spec: dict[str, Any]
) -> None:
    """Not only uploads: every operation that takes a body refuses one over the limit."""
    small_limit.headers["Authorization"] = f"Bearer {issue_token(api_settings, 'big')}"
    body = b"x" * (SMALL_LIMIT + 1024 * 1024 + 1)  # over the mailings' form overhead too
    with_body = [(m, p, op) for m, p, op in operations(spec) if "requestBody" in op]
    paths = {path for _, path, _ in with_body}
    assert {"/send", "/email/send", "/messages/send", "/mailings", "/chat/messages"} <= paths
    for method, path, operation in with_body:
        response = await small_limit.request(
            method, concrete(path), content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413, f"{method} {path}: {response.text}"
        assert_declared(method, path, operation, response)
