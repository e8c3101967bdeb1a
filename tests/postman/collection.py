"""The Postman collection (v2.1) of the API, built from its OpenAPI document.

`build_collection(document)` turns the document the API serves at `/api/openapi.json` into the
collection committed at docs/postman/relaybox.postman_collection.json:

- one folder per tag; in each, one request per operation, named `METHOD /path`, its
  description the operation's summary and description;
- collection variables: `baseUrl`, `token` (bearer auth at collection level; public routes say
  `noauth`), the webhook signing secrets and verify token (the development defaults of
  `make run`), and one variable per path parameter (`{{mailing_id}}`; `{{chat_…}}` under
  `/chat`, `{{admin_…}}` under `/admin`: the part of the API before its first collection);
- an example body per operation: the schema's `examples`, else `EXAMPLES` below (where a rule
  across fields, an `allOf`/`not`, is more than a value per field can show), else one built from
  the JSON Schema (required fields; `examples`, `default`, `enum`, the format, the field's name);
- a test script per request asserting the success status(es) the document declares; a request
  that creates something also stores its id in the variable its later requests read
  (`POST /mailings` sets `{{mailing_id}}`), so a run of the whole collection is a chain;
- webhooks are signed in a pre-request script (`X-Hub-Signature-256`, HMAC-SHA256 of the body
  as sent, with the secret variable), as the provider signs them.

Requests run in an order a chain can follow: a folder after the folders whose requests set the
variables it reads, and in each, creating requests first, then reads, actions, deletes, and
last the actions that end their resource (`cancel`, `leave`).

Output is deterministic: ids are UUIDv5 of the operationId; folders by tag name and requests by
path (the order the API serves its paths in varies from one start to the next) before the rules
above; no timestamps. `python -m tests.postman` writes it; `tests/postman/test_collection.py`
fails when the committed file differs from what this module builds now.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from relaybox.api.settings import DEV_VERIFY_TOKEN
from relaybox.common.signing import DEV_WEBHOOK_SECRET, SIGNATURE_HEADER

ROOT = Path(__file__).resolve().parents[2]
POSTMAN_DIR = ROOT / "docs" / "postman"
COLLECTION_PATH = POSTMAN_DIR / "relaybox.postman_collection.json"
REGENERATE = "make postman"  # or: uv run --frozen python -m tests.postman
SCHEMA_URL = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
NAMESPACE = uuid.UUID("5d0b7c1e-2f3a-4b8e-9a61-7e4c2f9d8a10")  # the collection's UUIDv5 root
DEFAULT_BASE_URL = "http://127.0.0.1:3000"

Json = dict[str, Any]
METHODS = ("get", "post", "put", "patch", "delete")
IDEMPOTENCY_HEADER = "idempotency-key"

# --- examples a schema's per-field values cannot build --------------------------------------

# By schema title (shared by the operations that take it) or by "METHOD /path".
EXAMPLES: dict[str, Any] = {
    # at least one of text/body/html, and never text and body together (allOf of nots)
    "SendEmailRequest": {
        "to": "user@example.com",
        "subject": "Hello from relaybox",
        "text": "Queued in one transaction, published by the outbox, sent once.",
    },
    # a `direct` names exactly one other member; a group may name several
    "CreateConversationRequest": {"kind": "group", "title": "Launch team", "members": ["alice"]},
    # multipart: the mailing list file (docs/postman/files) and a body holding {token}
    "MailingUpload": {
        "file": "files/mailing.csv",
        "subject": "Your sign-in code",
        "body": "Hello! Your code is {token}.",
    },
    "POST /chat/attachments": {"file": "files/attachment.txt"},
    # one of two event shapes (oneOf); the pre-request script sets the id, time and signature
    "POST /webhooks/mock-meta": {
        "eventId": "{{webhookEventId}}",
        "type": "message",
        "channel": "whatsapp",
        "from": "+15551234567",
        "text": "Hi! Where is my order?",
        "timestamp": "{{webhookTimestamp}}",
    },
    "POST /webhooks/push": {
        "receipts": [
            {
                "id": "{{webhookEventId}}",
                "data": {"messageId": "{{chat_message_id}}", "recipient": "alice"},
                "deliveredAt": "{{webhookTimestamp}}",
            }
        ]
    },
}

# Query parameters given a value (and enabled) though optional, by "METHOD /path".
QUERY_EXAMPLES: dict[str, dict[str, str]] = {
    "GET /webhooks/mock-meta": {
        "hub.mode": "subscribe",
        "hub.verify_token": "{{metaVerifyToken}}",
        "hub.challenge": "1158201444",
    },
}

# A string field's example by its name (when the schema has none).
NAME_HINTS: dict[str, str] = {
    "text": "Hello from relaybox",
    "subject": "Hello from relaybox",
    "title": "Launch team",
    "pushToken": "postman-example-push-token",
    "userId": "bob",
    "user_id": "bob",
    "q": "hello",
}

FORMAT_EXAMPLES: dict[str, str] = {
    "email": "user@example.com",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "date-time": "2025-01-01T00:00:00Z",
    "date": "2025-01-01",
    "uri": "https://example.com/",
}

# POST paths that create what another path reads (`POST /send` → `/emails/{email_id}`).
CREATES_UNDER: dict[str, str] = {
    "/send": "/emails",
    "/email/send": "/emails",
    "/messages/send": "/messages",
}

# Webhooks: the secret variable each one is signed with.
WEBHOOK_SECRETS: dict[str, str] = {
    "/webhooks/mock-meta": "metaWebhookSecret",
    "/webhooks/push": "pushWebhookSecret",
}

# The last path segment of an action that ends its resource: runs after the others.
ENDING_ACTIONS = frozenset({"cancel", "leave"})

_VARIABLE = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_.]*)\}\}")


# --- the OpenAPI document --------------------------------------------------------------------


@contextlib.contextmanager
def _without_relaybox_environment() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("RELAYBOX_")}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)


def openapi_document() -> Json:
    """The document the API serves at `/api/openapi.json`, built in-process from the Litestar
    app (no server, no database) with the default settings: the caller's RELAYBOX_* environment
    is set aside so the output does not depend on it."""
    from relaybox.api.app import create_app
    from relaybox.api.settings import ApiSettings, AuthSettings

    with _without_relaybox_environment():
        settings = ApiSettings(dev_mode=True, auth=AuthSettings(jwt_secret="postman-" + "x" * 32))
        app = create_app(settings)
    document: Json = app.openapi_schema.to_schema()
    return document


# --- examples from JSON Schema ---------------------------------------------------------------


def _resolve(schema: Mapping[str, Any], document: Json) -> Mapping[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


def _matches(value: str, schema: Mapping[str, Any]) -> bool:
    pattern = schema.get("pattern")
    if pattern is not None and not re.search(pattern, value):
        return False
    return len(value) >= int(schema.get("minLength", 0))


def _string(schema: Mapping[str, Any], name: str) -> str:
    candidates = [
        FORMAT_EXAMPLES.get(str(schema.get("format", ""))),
        NAME_HINTS.get(name),
        "example",
        "x" * max(1, int(schema.get("minLength", 1))),
    ]
    for candidate in candidates:
        if candidate is not None and _matches(candidate, schema):
            return candidate
    return "example"


def example_value(schema: Mapping[str, Any], document: Json, name: str = "") -> Any:
    """A value valid against `schema` where the schema's own words are enough to build one."""
    schema = _resolve(schema, document)
    for key in ("examples",):
        if schema.get(key):
            return schema[key][0]
    if "example" in schema:
        return schema["example"]
    if schema.get("default") is not None:
        return schema["default"]
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return next(value for value in schema["enum"] if value is not None)
    if schema.get("type") == "object" or "properties" in schema:
        return _object(schema, document)
    for combinator in ("anyOf", "oneOf"):
        options = [
            o for o in schema.get(combinator, ()) if _resolve(o, document).get("type") != "null"
        ]
        if options:
            siblings = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
            return example_value({**siblings, **_resolve(options[0], document)}, document, name)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object":
        return _object(schema, document)
    if kind == "array":
        return [example_value(schema.get("items", {}), document, name)]
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    return _string(schema, name)


def _required(schema: Mapping[str, Any], document: Json) -> list[str]:
    """The required fields; an `anyOf`/`oneOf` of alternatives adds its first branch's."""
    required = list(schema.get("required", ()))
    for combinator in ("anyOf", "oneOf"):
        if schema.get(combinator):
            branch = _resolve(schema[combinator][0], document)
            required += [f for f in _required(branch, document) if f not in required]
    return required


def _object(schema: Mapping[str, Any], document: Json) -> Json:
    required = _required(schema, document)
    properties = schema.get("properties", {})
    return {f: example_value(properties.get(f, {}), document, f) for f in required}


# --- variables -------------------------------------------------------------------------------


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _area(path: str) -> str:
    """The part of the API a path belongs to, as a variable prefix: `chat_` for
    `/chat/conversations/{conversation_id}` and `/chat/messages`, empty for `/mailings/...`
    (the literal segments before the first parameter, less the collection itself)."""
    literal: list[str] = []
    for segment in path.strip("/").split("/"):
        if segment.startswith("{"):
            break
        literal.append(segment)
    return f"{literal[0].replace('-', '_')}_" if len(literal) >= 2 else ""


def _collection_of(path: str, param: str) -> str:
    """`/mailings` for `/mailings/{mailing_id}`'s `mailing_id`."""
    return path.split("/{" + param + "}", 1)[0]


def path_variables(document: Json) -> dict[str, tuple[str, str, Mapping[str, Any]]]:
    """Every path parameter's variable: name → (the collection path it names an item of, the
    parameter's name, its schema)."""
    found: dict[str, tuple[str, str, Mapping[str, Any]]] = {}
    for path, item in sorted(document["paths"].items()):
        for method in METHODS:
            for parameter in item.get(method, {}).get("parameters", ()):
                if parameter["in"] == "path":
                    name = parameter["name"]
                    variable = _area(path) + name
                    found.setdefault(
                        variable, (_collection_of(path, name), name, parameter["schema"])
                    )
    return dict(sorted(found.items()))


def _variable_for(path: str, field: str, variables: Mapping[str, Any]) -> str | None:
    """The variable a body or query field of `path` names an item by (`conversationId` of
    `/chat/messages` → `chat_conversation_id`), if any."""
    variable = _area(CREATES_UNDER.get(path, path)) + _snake(field)
    return variable if variable in variables else None


def _fill_variables(value: Any, path: str, variables: Mapping[str, Any], field: str = "") -> Any:
    """`value` with each field that names an item of its area replaced by the item's variable,
    except the items this path creates (`userId` of the member a POST adds)."""
    if isinstance(value, dict):
        return {k: _fill_variables(v, path, variables, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_variables(v, path, variables, field) for v in value]
    variable = _variable_for(path, field, variables) if field else None
    if variable is None or not isinstance(value, str) or variables[variable][0] == path:
        return value
    return "{{" + variable + "}}"


def captures(
    path: str, response: Mapping[str, Any] | None, variables: Mapping[str, Any]
) -> dict[str, str]:
    """What a POST's answer names, as variable → response field: the item it created
    (`POST /mailings` → `mailing_id` ← `id`) and the ids of its area it refers to
    (`POST /messages/send` → `conversation_id` ← `conversationId`)."""
    if not response:
        return {}
    properties = response.get("properties", {})
    under = CREATES_UNDER.get(path, path)
    found: dict[str, str] = {}
    for variable, (collection, param, _) in variables.items():
        field = _camel(param)
        if collection == under and (field in properties or "id" in properties):
            found[variable] = field if field in properties else "id"
        elif "{" not in path and _area(under) + param == variable and field in properties:
            found[variable] = field
    return found


# --- requests --------------------------------------------------------------------------------


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(parts)))


def _success_statuses(operation: Json) -> list[int]:
    return sorted(int(s) for s in operation["responses"] if s.startswith("2"))


def _success_schema(operation: Json, document: Json) -> Mapping[str, Any] | None:
    for status in _success_statuses(operation):
        content = operation["responses"][str(status)].get("content", {})
        if "application/json" in content:
            return _resolve(content["application/json"].get("schema", {}), document)
    return None


def _script(kind: str, operation_id: str, lines: list[str]) -> Json:
    return {
        "listen": kind,
        "script": {"id": _uuid(operation_id, kind), "type": "text/javascript", "exec": lines},
    }


def _test_script(statuses: list[int], stores: Mapping[str, str]) -> list[str]:
    shown = " or ".join(str(s) for s in statuses)
    lines = [
        "// The success status(es) the OpenAPI document declares for this operation.",
        f'pm.test("status is {shown}", function () {{',
        f"    pm.expect(pm.response.code).to.be.oneOf({json.dumps(statuses)});",
        "});",
    ]
    if stores:
        lines += [
            "// Store what it created for the requests that read it.",
            "if (pm.response.code >= 200 && pm.response.code < 300) {",
            "    const body = pm.response.json();",
            *[
                f'    pm.collectionVariables.set("{variable}", body.{field});'
                for variable, field in sorted(stores.items())
            ],
            "}",
        ]
    return lines


def _signing_script(secret_variable: str) -> list[str]:
    return [
        "// Sign as the provider does: X-Hub-Signature-256 = sha256=<hex HMAC-SHA256 of the body>.",
        'pm.variables.set("webhookEventId", pm.variables.replaceIn("{{$guid}}"));',
        'pm.variables.set("webhookTimestamp", new Date().toISOString());',
        "const body = pm.variables.replaceIn(pm.request.body.raw);",
        f'const secret = pm.variables.get("{secret_variable}");',
        'const cryptojs = require("crypto-js");',
        "const signature = cryptojs.HmacSHA256(body, secret).toString(cryptojs.enc.Hex);",
        'pm.variables.set("webhookSignature", "sha256=" + signature);',
    ]


def _description(operation: Json, statuses: list[int]) -> str:
    parts = [operation.get("summary", ""), operation.get("description", "")]
    errors = sorted(int(s) for s in operation["responses"] if not s.startswith("2"))
    parts.append(
        f"Success: {', '.join(map(str, statuses))}."
        + (
            f" Problem details (application/problem+json): {', '.join(map(str, errors))}."
            if errors
            else ""
        )
    )
    return "\n\n".join(p.strip() for p in parts if p and p.strip())


def _body(
    key: str, path: str, operation: Json, document: Json, variables: Mapping[str, Any]
) -> Json | None:
    content = operation.get("requestBody", {}).get("content", {})
    if not content:
        return None
    media_type, media = next(iter(content.items()))
    schema = _resolve(media.get("schema", {}), document)
    example = EXAMPLES.get(key, EXAMPLES.get(str(schema.get("title", ""))))
    if example is None:
        example = media["examples"][0] if media.get("examples") else example_value(schema, document)
        example = _fill_variables(example, path, variables)
    if media_type == "multipart/form-data":
        properties = schema.get("properties", {})
        parts = []
        for field, value in example.items():
            part: Json = {"key": field}
            if properties.get(field, {}).get("format") == "binary":
                part.update(type="file", src=value)
            else:
                part.update(type="text", value=str(value))
            if properties.get(field, {}).get("description"):
                part["description"] = properties[field]["description"]
            parts.append(part)
        return {"mode": "formdata", "formdata": parts}
    return {
        "mode": "raw",
        "raw": json.dumps(example, indent=2, ensure_ascii=False),
        "options": {"raw": {"language": "json"}},
    }


def _url(
    key: str, path: str, operation: Json, document: Json, variables: Mapping[str, Any]
) -> Json:
    segments = [
        "{{" + _area(path) + s[1:-1] + "}}" if s.startswith("{") else s
        for s in path.strip("/").split("/")
    ]
    query = []
    curated = QUERY_EXAMPLES.get(key, {})
    for parameter in operation.get("parameters", ()):
        if parameter["in"] != "query":
            continue
        name = parameter["name"]
        variable = _variable_for(path, name, variables)
        if name in curated:
            value = curated[name]
        elif variable:
            value = "{{" + variable + "}}"
        else:
            value = example_value(parameter.get("schema", {}), document, name)
            value = json.dumps(value) if not isinstance(value, str) else value
        entry: Json = {"key": name, "value": value}
        if parameter.get("description") or parameter.get("schema", {}).get("description"):
            entry["description"] = (
                parameter.get("description") or parameter["schema"]["description"]
            )
        if not parameter.get("required") and name not in curated:
            entry["disabled"] = True
        query.append(entry)
    raw = "{{baseUrl}}/" + "/".join(segments)
    enabled = [f"{q['key']}={q['value']}" for q in query if not q.get("disabled")]
    url: Json = {"raw": raw + ("?" + "&".join(enabled) if enabled else ""), "host": ["{{baseUrl}}"]}
    url["path"] = segments
    if query:
        url["query"] = query
    return url


def _headers(path: str, operation: Json, body: Json | None) -> list[Json]:
    headers: list[Json] = []
    if body and body["mode"] == "raw":
        headers.append({"key": "Content-Type", "value": "application/json"})
    for parameter in operation.get("parameters", ()):
        if parameter["in"] != "header":
            continue
        name = parameter["name"]
        entry: Json = {"key": name}
        if name.lower() == IDEMPOTENCY_HEADER:
            entry["value"] = "{{$guid}}"
            entry["disabled"] = True
            entry["description"] = (
                "Enable to make the request idempotent: the same key with the same body answers "
                "the stored response"
            )
        elif name.lower() == SIGNATURE_HEADER.lower() and path in WEBHOOK_SECRETS:
            entry["value"] = "{{webhookSignature}}"
            entry["description"] = "set by the pre-request script (HMAC-SHA256 of the body)"
        else:
            entry["value"] = str(example_value(parameter.get("schema", {}), {}, name))
            if not parameter.get("required"):
                entry["disabled"] = True
        headers.append(entry)
    return headers


def build_item(
    path: str, method: str, operation: Json, document: Json, variables: Mapping[str, Any]
) -> Json:
    """One operation as a Postman request with its test (and signing) scripts."""
    key = f"{method.upper()} {path}"
    operation_id = operation.get("operationId", key)
    statuses = _success_statuses(operation)
    body = _body(key, path, operation, document, variables)
    request: Json = {
        "method": method.upper(),
        "header": _headers(path, operation, body),
        "url": _url(key, path, operation, document, variables),
        "description": _description(operation, statuses),
    }
    if body:
        request["body"] = body
    if operation.get("security") == []:
        request["auth"] = {"type": "noauth"}
    reads = _VARIABLE.findall(json.dumps([request["url"], body]))
    stores = {
        variable: field
        for variable, field in captures(
            path, _success_schema(operation, document), variables
        ).items()
        if method == "post" and variable not in reads
    }
    events = []
    if method == "post" and path in WEBHOOK_SECRETS:
        events.append(_script("prerequest", operation_id, _signing_script(WEBHOOK_SECRETS[path])))
    events.append(_script("test", operation_id, _test_script(statuses, stores)))
    return {
        "id": _uuid(operation_id),
        "name": key,
        "request": request,
        "event": events,
        "response": [],
    }


# --- order -----------------------------------------------------------------------------------


def _reads(item: Json) -> set[str]:
    request = item["request"]
    text = json.dumps([request["url"], request.get("body")])
    return set(_VARIABLE.findall(text))


def _writes(item: Json) -> set[str]:
    lines = [line for event in item["event"] for line in event["script"]["exec"]]
    return set(re.findall(r'pm\.collectionVariables\.set\("([^"]+)"', "\n".join(lines)))


def _stage(item: Json) -> int:
    """Creating requests, reads, actions, deletes, then actions that end their resource."""
    method = item["request"]["method"]
    path = item["name"].split(" ", 1)[1]
    if method == "POST" and "{" not in path:
        return 0
    if method == "GET":
        return 1
    if method == "DELETE":
        return 3
    return 4 if path.rsplit("/", 1)[-1] in ENDING_ACTIONS else 2


def _ordered(
    nodes: list[Json], needs: list[set[str]], writes: list[set[str]], rank: list[Any]
) -> list[Json]:
    """Each node after the nodes writing what it needs; otherwise by `rank` (Kahn's algorithm;
    a cycle keeps its rank order)."""
    remaining = list(range(len(nodes)))
    done: list[int] = []

    def ready(i: int) -> bool:
        return not any(needs[i] & writes[j] for j in remaining if j != i)

    while remaining:
        candidates = [i for i in remaining if ready(i)] or remaining
        chosen = min(candidates, key=lambda i: rank[i])
        remaining.remove(chosen)
        done.append(chosen)
    return [nodes[i] for i in done]


# --- the collection --------------------------------------------------------------------------


def build_collection(document: Json) -> Json:
    """The Postman collection (v2.1) of `document` (see the module's docstring)."""
    variables = path_variables(document)
    folders: dict[str, list[Json]] = {}
    for path, path_item in sorted(document["paths"].items()):  # the served order varies
        for method in METHODS:
            operation = path_item.get(method)
            if operation is None:
                continue
            tag = (operation.get("tags") or ["default"])[0]
            folders.setdefault(tag, []).append(
                build_item(path, method, operation, document, variables)
            )

    folder_items: list[Json] = []
    for tag, items in sorted(folders.items()):
        ranks = [(_stage(item), index) for index, item in enumerate(items)]
        ordered = _ordered(items, [_reads(i) for i in items], [_writes(i) for i in items], ranks)
        folder_items.append(
            {
                "id": _uuid("folder", tag),
                "name": tag,
                "description": f"The operations tagged `{tag}` in the OpenAPI document.",
                "item": ordered,
            }
        )
    folder_writes = [set[str]().union(*(_writes(i) for i in f["item"])) for f in folder_items]
    folder_needs = [
        set[str]().union(*(_reads(i) for i in f["item"])) - writes
        for f, writes in zip(folder_items, folder_writes, strict=True)
    ]
    folder_items = _ordered(
        folder_items, folder_needs, folder_writes, list(range(len(folder_items)))
    )

    writers = {v: item["name"] for f in folder_items for item in f["item"] for v in _writes(item)}
    collection_variables = [
        {
            "key": "baseUrl",
            "value": DEFAULT_BASE_URL,
            "type": "string",
            "description": "the API's URL (make run: http://127.0.0.1:3000)",
        },
        {
            "key": "token",
            "value": "",
            "type": "string",
            "description": "a bearer token: `make token` (make run prints one too)",
        },
        {
            "key": "metaWebhookSecret",
            "value": DEV_WEBHOOK_SECRET,
            "type": "string",
            "description": "RELAYBOX_META__WEBHOOK_SECRET (the development default of make run)",
        },
        {
            "key": "pushWebhookSecret",
            "value": DEV_WEBHOOK_SECRET,
            "type": "string",
            "description": "RELAYBOX_PUSH__WEBHOOK_SECRET (the development default of make run)",
        },
        {
            "key": "metaVerifyToken",
            "value": DEV_VERIFY_TOKEN,
            "type": "string",
            "description": "RELAYBOX_META__VERIFY_TOKEN (the development default of make run)",
        },
    ]
    for variable, (_, name, schema) in variables.items():
        writer = writers.get(variable)
        collection_variables.append(
            {
                "key": variable,
                "value": str(example_value(schema, document, name)),
                "type": "string",
                "description": f"set by {writer}" if writer else "set it by hand",
            }
        )
    info = document["info"]
    return {
        "info": {
            "_postman_id": _uuid("collection", info["title"]),
            "name": info["title"],
            "description": (
                f"{info.get('description', '')}\n\nGenerated from the API's OpenAPI document "
                f"(/api/openapi.json, version {info['version']}) by `python -m tests.postman`: "
                f"do not edit by hand, run `{REGENERATE}`. Set `baseUrl` and `token` "
                "(`make token`). Run in order, the requests that create something store its id "
                "for the ones that read it."
            ),
            "schema": SCHEMA_URL,
        },
        "auth": {
            "type": "bearer",
            "bearer": [{"key": "token", "value": "{{token}}", "type": "string"}],
        },
        "variable": collection_variables,
        "item": folder_items,
    }


def render(collection: Json) -> str:
    """The file's text (stable: the builder's order, two-space indent, a final newline)."""
    return json.dumps(collection, indent=2, ensure_ascii=False) + "\n"
