"""Bearer JWT on /send and the log endpoints: 401 for a missing or bad token, 403 for a scope."""

from __future__ import annotations

import asyncio
import re
import time
import warnings
from typing import Any

import httpx
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning
from litestar.routes import HTTPRoute
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.app import create_app
from relaybox.api.auth import (
    PUBLIC_PATHS,
    RATE_LIMITED,
    SCOPE,
    CachingJWTAuthenticationMiddleware,
    InsecureSecretError,
    check_secret,
    issue_token,
)
from relaybox.api.settings import (
    PLACEHOLDER_SECRET,
    ApiSettings,
    AuthSettings,
    MetaGatewaySettings,
    PushReceiptSettings,
)
from relaybox.common.signing import DEV_WEBHOOK_SECRET
from tests.integration.conftest import SECRET

BODY = {"to": "alice@example.com", "subject": "Hello", "text": "Hi"}
PROBLEM = "application/problem+json"
PROTECTED = [
    ("POST", "/send"),
    ("POST", "/email/send"),
    ("GET", "/logs/email"),
    ("GET", "/email/logs"),
    ("GET", "/emails/6f1c1c1e-58b4-4a43-9b44-3d0e6f3c6a01"),
]


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "test-client",
        "iat": now,
        "exp": now + 600,
        "scopes": ["email:send", "email:read"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def signed(secret: str = SECRET, algorithm: str = "HS256", **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm=algorithm)


async def call(
    client: httpx.AsyncClient, method: str, path: str, authorization: str | None
) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    if authorization is None:
        client.headers.pop("Authorization", None)
    kwargs: dict[str, Any] = {"json": BODY} if method == "POST" else {}
    return await client.request(method, path, headers=headers, **kwargs)


def assert_401(response: httpx.Response, *secrets: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    problem = response.json()
    assert problem["status"] == 401
    assert problem["detail"]
    for secret in secrets:
        assert secret not in response.text
        assert all(secret not in value for value in response.headers.values())


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_no_token_is_401(
    client: httpx.AsyncClient, engine: AsyncEngine, method: str, path: str
) -> None:
    assert_401(await call(client, method, path, None))


def _bad_tokens() -> list[tuple[str, str]]:
    now = int(time.time())
    unsigned = jwt.encode(claims(), key=None, algorithm="none")  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)  # the secret is short for HS512
        hs512 = signed(algorithm="HS512")
    return [
        ("garbage", "Bearer not-a-jwt"),
        ("empty bearer", "Bearer "),
        ("bare token, no scheme", signed()),
        ("expired", "Bearer " + signed(iat=now - 7200, exp=now - 3600)),
        ("another secret", "Bearer " + signed(secret="another-secret-that-is-long-enough-32b")),
        ("alg none", "Bearer " + unsigned),
        ("HS512", "Bearer " + hs512),
        ("no exp", "Bearer " + signed(exp=None)),
        ("no sub", "Bearer " + signed(sub=None)),
        ("tampered", "Bearer " + signed()[:-4] + "AAAA"),
    ]


BAD_TOKENS = _bad_tokens()


@pytest.mark.parametrize(
    "authorization", [t[1] for t in BAD_TOKENS], ids=[t[0] for t in BAD_TOKENS]
)
async def test_bad_token_is_401_and_not_echoed(
    client: httpx.AsyncClient, engine: AsyncEngine, authorization: str
) -> None:
    token = authorization.removeprefix("Bearer ")
    for method, path in (("POST", "/send"), ("GET", "/logs/email")):
        response = await call(client, method, path, authorization)
        assert_401(response, *([token] if len(token) > 8 else []), SECRET)


async def test_expired_token_made_by_issue_token_is_401(
    client: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    token = jwt.encode(
        {**jwt.decode(issue_token(api_settings, "c"), SECRET, algorithms=["HS256"]), "exp": 1},
        SECRET,
        algorithm="HS256",
    )
    assert_401(await call(client, "GET", "/logs/email", f"Bearer {token}"), token)


@pytest.mark.parametrize(
    ("scopes", "method", "path", "missing"),
    [
        (["email:read"], "POST", "/send", "email:send"),
        (["email:read"], "POST", "/email/send", "email:send"),
        (["email:send"], "GET", "/logs/email", "email:read"),
        (["email:send"], "GET", "/email/logs", "email:read"),
        (["email:send"], "GET", "/emails/6f1c1c1e-58b4-4a43-9b44-3d0e6f3c6a01", "email:read"),
        ([], "POST", "/send", "email:send"),
        (["email:*"], "GET", "/logs/email", "email:read"),
    ],
)
async def test_missing_scope_is_403_naming_it(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    scopes: list[str],
    method: str,
    path: str,
    missing: str,
) -> None:
    response = await call(client, method, path, "Bearer " + signed(scopes=scopes))
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert missing in response.json()["detail"]


async def test_scopes_as_a_space_separated_string(client: httpx.AsyncClient) -> None:
    token = signed(scopes="email:read email:send")
    assert (await call(client, "GET", "/logs/email", f"Bearer {token}")).status_code == 200
    assert (await call(client, "POST", "/send", f"Bearer {token}")).status_code == 202


@pytest.mark.parametrize("scopes", [5, {"email:send": True}, [1, 2], [None]], ids=repr)
async def test_malformed_scopes_claim_is_a_401_not_a_500(
    client: httpx.AsyncClient, scopes: Any
) -> None:
    token = signed(scopes=scopes)
    assert_401(await call(client, "POST", "/send", f"Bearer {token}"), token)


async def test_token_without_scopes_is_403(client: httpx.AsyncClient) -> None:
    response = await call(client, "GET", "/logs/email", "Bearer " + signed(scopes=None))
    assert response.status_code == 403, response.text


async def test_scope_limited_token_works_where_allowed(
    client: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    # one tenant (the subject), two tokens of narrower scopes
    sender = issue_token(api_settings, "test-client", scopes=("email:send",))
    reader = issue_token(api_settings, "test-client", scopes=("email:read",))
    sent = await call(client, "POST", "/send", f"Bearer {sender}")
    assert sent.status_code == 202, sent.text
    read = await call(client, "GET", f"/emails/{sent.json()['id']}", f"Bearer {reader}")
    assert read.status_code == 200, read.text


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics", "/api", "/api/openapi.json"])
async def test_public_paths_need_no_token(client: httpx.AsyncClient, path: str) -> None:
    client.headers.pop("Authorization", None)
    response = await client.get(path)
    assert response.status_code == 200, response.text


def test_every_route_behind_the_token_declares_its_scope(api_settings: ApiSettings) -> None:
    """A route the JWT middleware guards but that names no scope would let any valid token in."""
    app = create_app(api_settings)
    public = re.compile("|".join(f"^{p}" for p in PUBLIC_PATHS))
    routes = [r for r in app.routes if isinstance(r, HTTPRoute)]
    assert len(routes) == len(app.routes)  # nothing else (websockets, mounted apps) to check
    unscoped = [
        (sorted(handler.http_methods), route.path)
        for route in routes
        for handler in route.route_handlers
        if not handler.opt.get("public")
        and not public.match(route.path)
        and handler.http_methods != {"OPTIONS"}  # answered by Litestar, never authenticated
        and not handler.opt.get(SCOPE)
    ]
    assert unscoped == []
    send = next(
        h for r in routes if r.path == "/send" for h in r.route_handlers if "POST" in h.http_methods
    )
    assert send.opt[SCOPE] == "email:send" and send.opt[RATE_LIMITED] is True


# --- the secret ------------------------------------------------------------------------------


def test_placeholder_secret_is_refused_outside_dev_mode(
    api_settings: ApiSettings, engine: AsyncEngine
) -> None:
    settings = api_settings.model_copy(update={"auth": AuthSettings(jwt_secret=PLACEHOLDER_SECRET)})
    with pytest.raises(InsecureSecretError) as raised:
        create_app(settings, engine=engine)
    assert PLACEHOLDER_SECRET not in str(raised.value)


def test_short_secret_is_refused_outside_dev_mode(
    api_settings: ApiSettings, engine: AsyncEngine
) -> None:
    settings = api_settings.model_copy(update={"auth": AuthSettings(jwt_secret="short-secret")})
    with pytest.raises(InsecureSecretError) as raised:
        create_app(settings, engine=engine)
    assert "short-secret" not in str(raised.value)


async def test_placeholder_secret_is_allowed_in_dev_mode(
    api_settings: ApiSettings, engine: AsyncEngine
) -> None:
    settings = api_settings.model_copy(
        update={"dev_mode": True, "auth": AuthSettings(jwt_secret=PLACEHOLDER_SECRET)}
    )
    app = create_app(settings, engine=engine)
    token = issue_token(settings, "dev")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
        base_url="http://relaybox.test",
    ) as dev:
        ok = await dev.get("/logs/email", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200, ok.text
        # a token of the test secret is not one of the dev app's
        other = signed()
        assert_401(await dev.get("/logs/email", headers={"Authorization": f"Bearer {other}"}))


def test_the_dev_webhook_secret_is_refused_outside_dev_mode(api_settings: ApiSettings) -> None:
    dev_hook = api_settings.model_copy(
        update={"meta": MetaGatewaySettings(webhook_secret=DEV_WEBHOOK_SECRET)}
    )
    with pytest.raises(InsecureSecretError, match="RELAYBOX_META__WEBHOOK_SECRET"):
        check_secret(dev_hook)
    check_secret(dev_hook.model_copy(update={"dev_mode": True}))
    dev_push = api_settings.model_copy(update={"push": PushReceiptSettings()})
    with pytest.raises(InsecureSecretError, match="RELAYBOX_PUSH__WEBHOOK_SECRET"):
        check_secret(dev_push)
    check_secret(dev_push.model_copy(update={"dev_mode": True}))


async def test_a_verified_token_is_remembered_and_let_through_from_the_raw_headers(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request verifies the token; the next ones with the same token take the
    middleware's fast path (no verification), as the same client."""
    verified: list[str] = []
    verify = CachingJWTAuthenticationMiddleware.authenticate_token

    async def counting(self: Any, encoded_token: str, connection: Any) -> Any:
        verified.append(encoded_token)
        return await verify(self, encoded_token, connection)

    monkeypatch.setattr(CachingJWTAuthenticationMiddleware, "authenticate_token", counting)
    token = signed()
    for _ in range(3):
        response = await call(client, "GET", "/logs/email", f"Bearer {token}")
        assert response.status_code == 200, response.text
    assert verified == [token]
    other = signed(sub="someone-else")
    assert (await call(client, "GET", "/logs/email", f"Bearer {other}")).status_code == 200
    assert verified == [token, other]  # another token is verified on its own


async def test_a_remembered_token_is_refused_once_it_expires(client: httpx.AsyncClient) -> None:
    expires = int(time.time()) + 2
    token = signed(exp=expires)
    assert (await call(client, "GET", "/logs/email", f"Bearer {token}")).status_code == 200
    await asyncio.sleep(expires + 0.1 - time.time())
    assert_401(await call(client, "GET", "/logs/email", f"Bearer {token}"))
