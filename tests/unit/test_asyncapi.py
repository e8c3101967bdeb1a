"""docs/messenger/asyncapi.yaml is a valid AsyncAPI 3.0 document that agrees with itself, with the
event kinds relaybox writes, and with the prose of docs/messenger/stream.md.

The official AsyncAPI 3.0.0 JSON schema is vendored (tests/schemas/README.md says from where), so
no network is needed. JSON Schema checks the shape; the rules it cannot express (references
resolve, an operation's messages belong to its channel, examples match their payloads) are
checked here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # no stubs in the dev group
import pytest
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT7

from relaybox.common.chat import events
from relaybox.realtime import connection, server, stream
from relaybox.realtime.cursor import Position

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "messenger" / "asyncapi.yaml"
PROSE = ROOT / "docs" / "messenger" / "stream.md"
SCHEMA_FILE = ROOT / "tests" / "schemas" / "asyncapi-3.0.0.schema.json"
SCHEMA_SHA256 = "d4571a420e6ffb7fcc7066c95a6db1202f299a3c51daa103d0706bf30f95e626"
DOCUMENT_URI = "urn:relaybox:asyncapi"
CHANNEL = "stream"
ADDRESS = server.STREAM_PATH
QUERY_PARAMETERS = {"ticket", "device", "cursor"}
CLOSE_CODES = {
    connection.TOO_SLOW: "too slow: resume",
    connection.RESTART: "service restart",
    1011: "internal error",
}
CONTROL_FRAMES = {"hello", "checkpoint", "live", "resync", "pong", "error"}
CLIENT_FRAMES = {"ack", "resume", "ping"}
# Kinds relaybox.common.chat.events names but nothing writes yet (the protocol leaves them out).
NOT_EMITTED = {events.CONVERSATION_UPDATED: "CONVERSATION_UPDATED"}


# --- loading ---------------------------------------------------------------------------------


@cache
def document() -> dict[str, Any]:
    loaded = yaml.safe_load(DOCUMENT.read_text())
    assert isinstance(loaded, dict), f"{DOCUMENT} is not a mapping"
    return loaded


def fresh_document() -> dict[str, Any]:
    result: dict[str, Any] = copy.deepcopy(document())
    return result


@cache
def asyncapi_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return loaded


@cache
def asyncapi_validator() -> Any:
    schema = asyncapi_schema()
    assert schema["$schema"].rstrip("#") == "http://json-schema.org/draft-07/schema"
    jsonschema.Draft7Validator.check_schema(schema)
    # An empty registry: every `$ref` must resolve inside the vendored file (never fetched).
    return jsonschema.Draft7Validator(schema, registry=Registry())


def schema_errors(doc: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message[:300]}"
        for error in asyncapi_validator().iter_errors(doc)
    ]


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """A local `#/a/b` reference's target (JSON pointer escapes included)."""
    assert ref.startswith("#/"), f"{ref}: only local references are used"
    node: Any = doc
    for part in ref[2:].split("/"):
        key = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and key in node, f"{ref}: {key!r} is missing"
        node = node[key]
    return node


def references(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(where, target) of every `$ref` in the document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield path, value
            else:
                yield from references(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from references(value, f"{path}/{index}")


def channel_messages() -> dict[str, dict[str, Any]]:
    """Channel message key -> the message object (its reference followed)."""
    doc = document()
    messages = doc["channels"][CHANNEL]["messages"]
    return {
        key: resolve(doc, value["$ref"]) if "$ref" in value else value
        for key, value in messages.items()
    }


def payload_validator(message: dict[str, Any]) -> jsonschema.Draft7Validator:
    """A validator of a message's payload, its `$ref`s resolved inside the document."""
    registry: Registry[Any] = Registry().with_resource(
        DOCUMENT_URI, DRAFT7.create_resource(document())
    )
    payload = message["payload"]
    if "$ref" in payload:
        payload = {"$ref": DOCUMENT_URI + payload["$ref"]}
    return jsonschema.Draft7Validator(payload, registry=registry)


def frame_type(message: dict[str, Any]) -> str:
    """The `type` constant of a message's payload."""
    payload = message["payload"]
    if "$ref" in payload:
        payload = resolve(document(), payload["$ref"])
    constant = payload["properties"]["type"]["const"]
    assert isinstance(constant, str)
    return constant


def is_event(message: dict[str, Any]) -> bool:
    payload = resolve(document(), message["payload"]["$ref"])
    return "eventId" in payload.get("required", [])


# --- (a) the AsyncAPI schema -----------------------------------------------------------------


def test_the_vendored_schema_is_the_official_file() -> None:
    digest = hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest()
    assert digest == SCHEMA_SHA256, "tests/schemas/asyncapi-3.0.0.schema.json was edited"
    assert asyncapi_schema()["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    version = asyncapi_schema()["properties"]["asyncapi"]["const"]
    assert str(document()["asyncapi"]) == version


def test_document_matches_the_asyncapi_schema() -> None:
    assert schema_errors(document()) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node = doc
        for part in parents:
            node = node[part]
        node[last] = value

    return mutate


def _rename(path: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node = doc
        for part in parents:
            node = node[part]
        node[new] = node.pop(last)

    return mutate


BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    # AsyncAPI 2's verbs are not 3.0 actions
    "2.x action": (_set("operations/receivePing/action", "publish"), "operations/receivePing"),
    "misspelt message field": (
        _rename("components/messages/ack/payload", "payloadd"),
        "components/messages/ack",
    ),
    "bad JSON Schema type": (
        _set("components/schemas/ack/type", "objekt"),
        "components/schemas/ack",
    ),
    "bad ws binding method": (
        _set("channels/stream/bindings/ws/method", "PUT"),
        "channels/stream",
    ),
    "unknown server protocol field": (
        _set("servers/local/protocl", "ws"),
        "servers/local",
    ),
    "no info": (lambda doc: doc.pop("info"), "<root>"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_the_schema_catches_a_broken_document(case: str) -> None:
    mutate, where = BROKEN[case]
    broken = fresh_document()
    mutate(broken)
    errors = schema_errors(broken)
    assert errors, f"{case}: the broken document passed"
    assert any(error.startswith(where) for error in errors), errors


# --- (b) what the schema cannot check --------------------------------------------------------


def test_every_reference_resolves() -> None:
    doc = document()
    found = list(references(doc))
    assert found, "the document uses no references?"
    for where, target in found:
        assert target.startswith("#/"), f"{where}: {target} is not a local reference"
        resolve(doc, target)


def test_a_dangling_reference_is_caught() -> None:
    broken = fresh_document()
    broken["channels"][CHANNEL]["messages"]["ack"]["$ref"] = "#/components/messages/akc"
    targets = [target for _, target in references(broken)]
    assert "#/components/messages/akc" in targets
    with pytest.raises(AssertionError, match="akc"):
        resolve(broken, "#/components/messages/akc")


def operation_messages(operation: dict[str, Any]) -> list[tuple[str, str]]:
    """(channel reference, message reference) of an operation and of its reply."""
    pairs = [(operation["channel"]["$ref"], m["$ref"]) for m in operation["messages"]]
    reply = operation.get("reply")
    if reply:
        pairs += [(reply["channel"]["$ref"], m["$ref"]) for m in reply["messages"]]
    return pairs


def test_operations_use_their_channels_messages() -> None:
    """AsyncAPI 3.0: an operation's messages MUST be a subset of its channel's."""
    for name, operation in document()["operations"].items():
        for channel_ref, message_ref in operation_messages(operation):
            assert message_ref.startswith(channel_ref + "/messages/"), (
                f"{name}: {message_ref} is not a message of {channel_ref}"
            )


def test_every_frame_has_one_operation_in_the_right_direction() -> None:
    sent: dict[str, str] = {}
    received: dict[str, str] = {}
    for name, operation in document()["operations"].items():
        for _, message_ref in operation_messages(operation):
            key = message_ref.rsplit("/", 1)[1]
            is_reply = message_ref in {
                m["$ref"] for m in operation.get("reply", {}).get("messages", [])
            }
            # a reply goes the other way from its operation
            sends = (operation["action"] == "send") != is_reply
            target = sent if sends else received
            assert key not in target, f"{key} is in both {target[key]} and {name}"
            target[key] = name
    messages = channel_messages()
    assert set(sent) | set(received) == set(messages), "a frame no operation sends or receives"
    assert {frame_type(messages[key]) for key in received} == CLIENT_FRAMES
    assert not set(sent) & set(received)


def test_examples_match_their_payloads() -> None:
    for key, message in channel_messages().items():
        examples = message.get("examples", [])
        assert examples, f"{key}: give the frame an example"
        validator = payload_validator(message)
        for example in examples:
            errors = [error.message for error in validator.iter_errors(example["payload"])]
            assert errors == [], f"{key} example {example.get('name')}: {errors}"
            assert example["payload"]["type"] == frame_type(message)


def test_a_wrong_example_is_caught() -> None:
    ack = channel_messages()["ack"]
    validator = payload_validator(ack)
    assert list(validator.iter_errors({"type": "ack", "messageIds": ["not-a-uuid"]}))
    assert list(validator.iter_errors({"type": "ack", "messageIds": []}))
    assert list(validator.iter_errors({"type": "ack", "messageIds": [], "extra": 1}))


def test_message_names_are_their_frame_types() -> None:
    for key, message in channel_messages().items():
        assert message["name"] == frame_type(message), key


# --- (c) agreement with the code and the prose -----------------------------------------------


def test_events_are_the_kinds_relaybox_writes() -> None:
    messages = channel_messages()
    documented = {frame_type(m) for m in messages.values() if is_event(m)}
    assert documented == set(events.KINDS) - set(NOT_EMITTED)
    assert {frame_type(m) for m in messages.values() if not is_event(m)} == (
        CONTROL_FRAMES | CLIENT_FRAMES
    )


@pytest.mark.parametrize("kind", sorted(NOT_EMITTED))
def test_kinds_left_out_are_written_nowhere(kind: str) -> None:
    """A kind the document leaves out must stay unused: once code writes it, document it."""
    constant = NOT_EMITTED[kind]
    defined_in = Path(events.__file__).resolve()
    users = [
        path.relative_to(ROOT)
        for base in (ROOT / "libs", ROOT / "services")
        for path in base.rglob("*.py")
        if path.resolve() != defined_in
        and (constant in (text := path.read_text()) or f'"{kind}"' in text)
    ]
    assert users == [], f"{kind} is written by {users}: add it to docs/messenger/asyncapi.yaml"


def test_the_channel_is_the_stream_endpoint() -> None:
    channel = document()["channels"][CHANNEL]
    assert channel["address"] == ADDRESS
    query = channel["bindings"]["ws"]["query"]
    assert set(query["properties"]) == QUERY_PARAMETERS
    assert channel["bindings"]["ws"]["method"] == "GET"
    for entry in document()["servers"].values():
        assert entry["protocol"] == "ws"
        assert entry["host"].endswith(":3100")


def test_close_codes_are_documented() -> None:
    channel = document()["channels"][CHANNEL]
    listed = {entry["code"]: entry["reason"] for entry in channel["x-close-codes"]}
    assert CLOSE_CODES.items() <= listed.items()
    description = document()["info"]["description"]
    prose = PROSE.read_text()
    for code, reason in CLOSE_CODES.items():
        assert str(code) in description and reason in description, code
        assert str(code) in prose, f"stream.md does not mention close code {code}"


def test_stream_md_names_every_frame() -> None:
    prose = PROSE.read_text()
    for message in channel_messages().values():
        name = frame_type(message)
        assert re.search(rf"`{re.escape(name)}`", prose), f"stream.md never names `{name}`"


def test_example_cursors_are_cursors_the_service_reads() -> None:
    found = [
        example["payload"]["cursor"]
        for message in channel_messages().values()
        for example in message.get("examples", [])
        if "cursor" in example["payload"]
    ]
    assert found
    for text in found:
        # the service's own encoding (a cursor it would answer with resync raises here)
        assert Position.decode(text).encode() == text


def test_ack_limit_is_the_services() -> None:
    ack = resolve(document(), "#/components/schemas/ack")
    assert ack["properties"]["messageIds"]["maxItems"] == stream.MAX_ACK_IDS
