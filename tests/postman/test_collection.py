"""The committed Postman collection is what the generator builds from the API's OpenAPI document
now (else: stale, run `make postman`), and what it builds holds: a request per operation, a
test on the success status, bearer auth except on public routes, bodies valid against their
schemas, files that exist, ids that do not change from one build to the next."""

from __future__ import annotations

import difflib
import json
import re
import uuid
from typing import Any

import jsonschema
import pytest

from tests.postman.collection import (
    COLLECTION_PATH,
    METHODS,
    NAMESPACE,
    POSTMAN_DIR,
    REGENERATE,
    build_collection,
    openapi_document,
    render,
)

Json = dict[str, Any]


@pytest.fixture(scope="module")
def document() -> Json:
    return openapi_document()


@pytest.fixture(scope="module")
def collection(document: Json) -> Json:
    return build_collection(document)


def _requests(collection: Json) -> dict[str, Json]:
    return {item["name"]: item for folder in collection["item"] for item in folder["item"]}


def _operations(document: Json) -> dict[str, Json]:
    return {
        f"{method.upper()} {path}": item[method]
        for path, item in document["paths"].items()
        for method in METHODS
        if method in item
    }


def test_the_committed_collection_is_current(collection: Json) -> None:
    expected = render(collection)
    committed = COLLECTION_PATH.read_text() if COLLECTION_PATH.exists() else ""
    if committed != expected:
        diff = difflib.unified_diff(
            committed.splitlines(), expected.splitlines(), "committed", "generated", lineterm=""
        )
        shown = "\n".join(list(diff)[:40])
        pytest.fail(
            f"{COLLECTION_PATH.relative_to(POSTMAN_DIR.parents[1])} is stale (the API changed): "
            f"run `{REGENERATE}` and commit it.\n{shown}"
        )


def test_building_twice_gives_the_same_text(document: Json, collection: Json) -> None:
    assert render(build_collection(json.loads(json.dumps(document)))) == render(collection)


def test_one_request_per_operation_in_a_folder_of_its_tag(document: Json, collection: Json) -> None:
    operations = _operations(document)
    requests = _requests(collection)
    assert sorted(requests) == sorted(operations)
    assert sum(len(f["item"]) for f in collection["item"]) == len(operations)  # no duplicates
    for folder in collection["item"]:
        for item in folder["item"]:
            assert operations[item["name"]]["tags"][0] == folder["name"], item["name"]


def test_ids_are_derived_not_random(document: Json, collection: Json) -> None:
    operations = _operations(document)
    ids = [collection["info"]["_postman_id"]]
    for folder in collection["item"]:
        ids.append(folder["id"])
        for item in folder["item"]:
            expected = uuid.uuid5(NAMESPACE, operations[item["name"]]["operationId"])
            assert item["id"] == str(expected), item["name"]
            ids.append(item["id"])
            ids += [event["script"]["id"] for event in item["event"]]
    assert len(ids) == len(set(ids))


def test_bearer_token_at_collection_level_and_public_routes_without(
    document: Json, collection: Json
) -> None:
    assert collection["auth"] == {
        "type": "bearer",
        "bearer": [{"key": "token", "value": "{{token}}", "type": "string"}],
    }
    keys = {v["key"] for v in collection["variable"]}
    assert {"baseUrl", "token"} <= keys
    operations = _operations(document)
    for name, item in _requests(collection).items():
        public = operations[name].get("security") == []
        assert item["request"].get("auth") == ({"type": "noauth"} if public else None), name
        assert item["request"]["url"]["raw"].startswith("{{baseUrl}}/"), name


def test_every_request_tests_its_success_statuses(document: Json, collection: Json) -> None:
    operations = _operations(document)
    for name, item in _requests(collection).items():
        statuses = sorted(int(s) for s in operations[name]["responses"] if s.startswith("2"))
        assert statuses, name
        tests = [e for e in item["event"] if e["listen"] == "test"]
        assert len(tests) == 1, name
        script = "\n".join(tests[0]["script"]["exec"])
        assert f"pm.expect(pm.response.code).to.be.oneOf({json.dumps(statuses)});" in script


def test_every_variable_a_request_reads_is_defined_or_set_before_it(collection: Json) -> None:
    defined = {v["key"] for v in collection["variable"]}
    for item in _requests(collection).values():
        local = set()
        for event in item["event"]:
            local |= set(
                re.findall(r'pm\.variables\.set\("([^"]+)"', "\n".join(event["script"]["exec"]))
            )
        used = set(re.findall(r"\{\{([A-Za-z_][\w.]*)\}\}", json.dumps(item["request"])))
        assert used <= defined | local, (item["name"], used - defined - local)
    for variable in collection["variable"]:
        if variable["description"].startswith("set by "):
            writer = variable["description"].removeprefix("set by ")
            assert writer in _requests(collection), variable


def _substituted(text: str, collection: Json) -> str:
    values = {v["key"]: v["value"] for v in collection["variable"]}
    values |= {"webhookEventId": str(uuid.uuid4()), "webhookTimestamp": "2025-01-01T00:00:00Z"}
    return re.sub(r"\{\{([A-Za-z_][\w.]*)\}\}", lambda m: values[m.group(1)], text)


def test_every_example_body_is_valid_against_its_schema(document: Json, collection: Json) -> None:
    operations = _operations(document)
    for name, item in _requests(collection).items():
        content = operations[name].get("requestBody", {}).get("content", {})
        body = item["request"].get("body")
        assert bool(content) == bool(body), name
        if not content:
            continue
        media_type, media = next(iter(content.items()))
        schema = {**media["schema"], "components": document["components"]}
        if media_type == "multipart/form-data":
            assert body["mode"] == "formdata", name
            for part in body["formdata"]:
                if part["type"] == "file":
                    assert (POSTMAN_DIR / part["src"]).is_file(), (name, part["src"])
            fields = {p["key"]: p.get("value", "<file>") for p in body["formdata"]}
            jsonschema.validate(fields, schema)
        else:
            assert media_type == "application/json", name
            jsonschema.validate(json.loads(_substituted(body["raw"], collection)), schema)
