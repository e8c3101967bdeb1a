"""Every /chat route, every kind of caller: who may do what, one decision per cell.

The table `ROWS` holds, per route, the status each caller gets on a group's rows and on a
channel's, with the reason. `test_every_chat_route_has_a_row` fails when the app serves a /chat
route the table does not hold (tests/integration/platform/test_authorization_matrix.py covers
every other route and leaves /chat to this file).

The callers, all of tenant acme but the last two:
- outsider: never a member (of a channel: a channel reader, who reads all of it);
- member, admin (the conversation's admin role), owner (created it);
- left: was a member and left; kicked: was a member and was removed by the owner;
- other tenant: the owner's own subject in another organisation (so only the tenant differs);
plus, once per route, no token (401) and a token without the route's scope (403).

The world is built once per test through the API: a group and a channel holding all of them,
each with a message of the owner's (posted while everyone was a member, with an attachment of
the owner's and a planted word), and a device of the owner's. Each caller acts on rows of its
own (the member it kicks, the user it adds), so the order of the calls does not matter; the
owner calls last, as removing its device is the one call that changes what the others aim at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.routes import HTTPRoute
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.app import create_app
from relaybox.api.auth import USER_SCOPES
from relaybox.api.settings import ApiSettings
from relaybox.common.settings import AttachmentStorageSettings
from tests.integration.chat.conftest import People
from tests.integration.chat.support import call, conversation, kick, leave, word

CALLERS = ("outsider", "member", "left", "kicked", "admin", "other tenant", "owner")
KINDS = ("group", "channel")
READ, WRITE = "chat:read", "chat:write"
NOTE = b"a note for the team\n"  # sniffed as text/plain


@dataclass
class Target:
    conversation: str
    message: str
    attachment: str


@dataclass
class World:
    targets: dict[str, Target]
    device: str
    planted: str


@dataclass(frozen=True)
class Call:
    """What one caller sends: the URL, a JSON body or a file, and what marks the target in a
    list's answer (checked against `Row.sees`)."""

    url: str
    body: dict[str, Any] | None = None
    upload: bool = False
    mark: str | None = None


Ask = Callable[[World, str, str], Call]  # (world, kind, caller's slug)


@dataclass(frozen=True)
class Row:
    """One route's decision: the statuses of CALLERS on the group's rows, and on the channel's
    (None: the route is not about a conversation), and, for lists, who finds the target."""

    method: str
    path: str
    scope: str
    ask: Ask
    why: str
    group: tuple[int, ...]
    channel: tuple[int, ...] | None = None
    sees: dict[str, set[str]] = field(default_factory=dict)  # kind → callers whose list holds it


def slug(caller: str) -> str:
    return caller.replace(" ", "-")


def conv(suffix: str = "") -> Ask:
    return lambda w, kind, _: Call(f"/chat/conversations/{w.targets[kind].conversation}{suffix}")


def msg(suffix: str = "") -> Ask:
    return lambda w, kind, _: Call(f"/chat/messages/{w.targets[kind].message}{suffix}")


def victim(w: World, kind: str, me: str, body: dict[str, Any] | None = None) -> Call:
    return Call(f"/chat/conversations/{w.targets[kind].conversation}/members/v-{me}", body)


C = "/chat/conversations/{conversation_id:uuid}"
M = "/chat/messages/{message_id:uuid}"
EVERYONE = set(CALLERS) - {"other tenant"}
MEMBERS = {"member", "admin", "owner"}
KEPT = {"member", "left", "kicked", "admin", "owner"}  # the message is in their intervals
ALL = (200,) * 7
#                outsider member left kicked admin other owner
SEEN = (404, 200, 200, 200, 200, 404, 200)  # a group's rows: whoever had an interval
PUBLIC = (200, 200, 200, 200, 200, 404, 200)  # a channel's: all of the tenant
ROWS = [
    Row("POST", "/chat/conversations", WRITE,
        lambda w, k, me: Call("/chat/conversations", {"kind": "group", "members": ["member"]}),
        "anyone starts a conversation of their own, in their tenant",
        group=(201,) * 7),
    Row("GET", "/chat/conversations", READ,
        lambda w, k, me: Call("/chat/conversations", mark=w.targets[k].conversation),
        "everyone lists their own: current members find it",
        group=ALL, channel=ALL, sees={"group": MEMBERS, "channel": MEMBERS}),
    Row("GET", C, READ, conv(),
        "whoever may see its history (a former member keeps theirs; a channel is public)",
        group=SEEN, channel=PUBLIC),
    Row("POST", f"{C}/join", WRITE, conv("/join"),
        "a channel is open, a group re-opens to who left; kicked: only when added again; "
        "a member: already (200)",
        group=(404, 200, 201, 403, 200, 404, 200), channel=(201, 200, 201, 403, 200, 404, 200)),
    Row("POST", f"{C}/leave", WRITE, conv("/leave"),
        "current members leave; the only owner of a conversation with others may not (409)",
        group=(404, 204, 403, 403, 204, 404, 409), channel=(403, 204, 403, 403, 204, 404, 409)),
    Row("POST", f"{C}/members", WRITE,
        lambda w, k, me: Call(f"/chat/conversations/{w.targets[k].conversation}/members",
                              {"userId": f"n-{me}"}),
        "owners and admins add members",
        group=(404, 403, 403, 403, 201, 404, 201), channel=(403, 403, 403, 403, 201, 404, 201)),
    Row("DELETE", f"{C}/members/{{user_id:str}}", WRITE, victim,
        "owners and admins remove members (each caller its own victim)",
        group=(404, 403, 403, 403, 204, 404, 204), channel=(403, 403, 403, 403, 204, 404, 204)),
    Row("PATCH", f"{C}/members/{{user_id:str}}", WRITE,
        lambda w, k, me: victim(w, k, me, {"role": "admin"}),
        "only owners change roles",
        group=(404, 403, 403, 403, 403, 404, 200), channel=(403, 403, 403, 403, 403, 404, 200)),
    Row("GET", "/chat/channels", READ,
        lambda w, k, me: Call("/chat/channels", mark=w.targets[k].conversation),
        "the tenant's channels, to everyone of the tenant; never a group",
        group=ALL, channel=ALL, sees={"group": set(), "channel": EVERYONE}),
    Row("POST", "/chat/messages", WRITE,
        lambda w, k, me: Call("/chat/messages",
                              {"conversationId": w.targets[k].conversation, "text": "hi"}),
        "current members post; whoever may not see it gets 404, a reader or former member 403",
        group=(404, 202, 403, 403, 202, 404, 202), channel=(403, 202, 403, 403, 202, 404, 202)),
    Row("GET", "/chat/messages", READ,
        lambda w, k, me: Call(f"/chat/messages?conversationId={w.targets[k].conversation}",
                              mark=w.targets[k].message),
        "a conversation's history under the history rule",
        group=SEEN, channel=PUBLIC, sees={"group": KEPT, "channel": EVERYONE}),
    Row("GET", "/chat/search", READ,
        lambda w, k, me: Call(f"/chat/search?q={w.planted}", mark=w.targets[k].message),
        "a search of every conversation finds what the history rule shows the caller",
        group=ALL, channel=ALL, sees={"group": KEPT, "channel": EVERYONE}),
    Row("GET", M, READ, msg(), "one message under the history rule", group=SEEN, channel=PUBLIC),
    Row("POST", f"{M}/read", WRITE, msg("/read"),
        "whoever may see a message may mark it read (a reader: no watermark moves)",
        group=SEEN, channel=PUBLIC),
    Row("GET", f"{M}/receipts", READ, msg("/receipts"),
        "the sender and the conversation's owners and admins; 404 to who may not see it",
        group=(404, 403, 403, 403, 200, 404, 200), channel=(403, 403, 403, 403, 200, 404, 200)),
    Row("POST", "/chat/devices", WRITE,
        lambda w, k, me: Call("/chat/devices", {"platform": "ios", "pushToken": f"t-{me}-{k}"}),
        "anyone registers a device of their own", group=(201,) * 7),
    Row("GET", "/chat/devices", READ,
        lambda w, k, me: Call("/chat/devices", mark=w.device),
        "everyone lists their own: only the owner finds the owner's",
        group=ALL, sees={"group": {"owner"}}),
    Row("DELETE", "/chat/devices/{device_id:uuid}", WRITE,
        lambda w, k, me: Call(f"/chat/devices/{w.device}"),
        "only its user removes a device", group=(404, 404, 404, 404, 404, 404, 204)),
    Row("POST", "/chat/attachments", WRITE,
        lambda w, k, me: Call("/chat/attachments", upload=True),
        "anyone uploads a file of their own", group=(201,) * 7),
    Row("GET", "/chat/attachments/{attachment_id:uuid}", READ,
        lambda w, k, me: Call(f"/chat/attachments/{w.targets[k].attachment}"),
        "the uploader, and whoever may see a message that references it",
        group=SEEN, channel=PUBLIC),
    Row("POST", "/chat/stream-tickets", READ,
        lambda w, k, me: Call("/chat/stream-tickets"),
        "anyone of the tenant gets a stream ticket of their own", group=(201,) * 7),
]  # fmt: skip


@pytest.fixture
def chat_settings(chat_settings: ApiSettings, tmp_path: Path) -> ApiSettings:
    """Uploads stored under the test's own directory."""
    storage = AttachmentStorageSettings(root=tmp_path / "attachments")
    chat = chat_settings.chat.model_copy(update={"storage": storage})
    return chat_settings.model_copy(update={"chat": chat})


def served_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every /chat route the app serves (OPTIONS aside)."""
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, HTTPRoute) and route.path.startswith("/chat/")
        for handler in route.route_handlers
        for method in handler.http_methods
        if method != "OPTIONS"
    }


def test_every_chat_route_has_a_row(chat_settings: ApiSettings, engine: AsyncEngine) -> None:
    app = create_app(chat_settings, engine=engine)
    table = {(row.method, row.path) for row in ROWS}
    assert len(table) == len(ROWS), "one row per route"
    assert served_routes(app) == table


def caller(people: People, name: str, scopes: tuple[str, ...] = USER_SCOPES) -> httpx.AsyncClient:
    if name == "other tenant":
        return people("owner", tenant="globex", scopes=scopes)
    return people(name, scopes=scopes)


async def build(people: People) -> World:
    owner = people("owner")
    planted = word()
    victims = [f"v-{slug(c)}" for c in CALLERS]
    targets = {}
    for kind in KINDS:
        conversation_id = await conversation(
            owner, kind, ("member", "left", "kicked", "admin", *victims)
        )
        url = f"/chat/conversations/{conversation_id}/members/admin"
        await call(owner, "PATCH", url, 200, json={"role": "admin"})
        attachment = await call(owner, "POST", "/chat/attachments", 201, files=_file())
        message = await call(
            owner,
            "POST",
            "/chat/messages",
            202,
            json={
                "conversationId": conversation_id,
                "text": f"{kind} {planted}",
                "attachmentIds": [attachment["id"]],
            },
        )
        await leave(people("left"), conversation_id)
        await kick(owner, conversation_id, "kicked")
        targets[kind] = Target(conversation_id, message["id"], attachment["id"])
    token = {"platform": "android", "pushToken": f"owner-{planted}"}
    device = await call(owner, "POST", "/chat/devices", 201, json=token)
    return World(targets, device["id"], planted)


def _file() -> dict[str, tuple[str, bytes]]:
    return {"file": ("note.txt", NOTE)}


async def send(client: httpx.AsyncClient, method: str, ask: Call, token: bool = True) -> Any:
    request = client.build_request(
        method, ask.url, json=ask.body, files=_file() if ask.upload else None
    )
    if not token:
        del request.headers["Authorization"]
    return await client.send(request)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.method} {r.path}")
async def test_each_caller_gets_the_decided_status(people: People, row: Row) -> None:
    world = await build(people)
    kinds = KINDS if row.channel is not None else KINDS[:1]
    found: dict[str, tuple[int, ...]] = {}
    seen: dict[str, set[str]] = {}
    for kind in kinds:
        statuses, finders = [], set()
        for name in CALLERS:
            ask = row.ask(world, kind, slug(name))
            answer = await send(caller(people, name), row.method, ask)
            statuses.append(answer.status_code)
            if ask.mark is not None and ask.mark in answer.text:
                finders.add(name)
        found[kind] = tuple(statuses)
        seen[kind] = finders
    expected = {"group": row.group, "channel": row.channel}
    assert found == {kind: expected[kind] for kind in kinds}, row.why
    if row.sees:
        assert seen == row.sees, row.why
    # No token, and a token without the route's scope (of the owner, on the owner's rows).
    ask = row.ask(world, "group", "owner")
    assert (await send(people("owner"), row.method, ask, token=False)).status_code == 401
    others = tuple(s for s in USER_SCOPES if s != row.scope)
    assert (await send(caller(people, "owner", others), row.method, ask)).status_code == 403
