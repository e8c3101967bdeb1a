"""Attachments: the streamed upload and its limits, the sniffed type, who may download a file
(the history rule), the download's headers, the S3 store against moto's server, and the
sweeper that deletes uploads no message took."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from moto.server import ThreadedMotoServer
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybox.api.app import create_app
from relaybox.api.auth import issue_token
from relaybox.api.chat.attachments import FORM_OVERHEAD_BYTES
from relaybox.api.settings import ApiSettings
from relaybox.common.chat.storage import (
    LocalStore,
    MissingFileError,
    S3Store,
    StorageError,
    lock_file,
)
from relaybox.common.settings import AttachmentStorageSettings
from relaybox.consumer.sweeper import Sweeper
from tests.integration.chat.conftest import TENANT, People
from tests.integration.mailings.test_api import assert_problem
from tests.support.clients import BASE_URL
from tests.support.serving import free_port

LIMIT = 64 * 1024
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00"
    b"\x00\x00IEND\xaeB`\x82"
)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
TEXT = "Grüße, team\n".encode()
BINARY = bytes(range(256))
BOUNDARY = "relayboxtestboundary"


@pytest.fixture
def chat_settings(chat_settings: ApiSettings, tmp_path: Path) -> ApiSettings:
    """The messenger's settings with a small upload limit and files under the test's dir."""
    storage = AttachmentStorageSettings(root=tmp_path / "attachments")
    chat = chat_settings.chat.model_copy(update={"max_attachment_bytes": LIMIT, "storage": storage})
    return chat_settings.model_copy(update={"chat": chat})


@pytest.fixture
def store(chat_settings: ApiSettings) -> LocalStore:
    return LocalStore(chat_settings.chat.storage.root)


async def upload(
    client: httpx.AsyncClient,
    content: bytes,
    name: str = "file.bin",
    declared: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    part = (name, content, declared) if declared else (name, content)
    return await client.post("/chat/attachments", files={"file": part}, headers=headers)


async def uploaded(client: httpx.AsyncClient, content: bytes, name: str = "file.bin") -> str:
    response = await upload(client, content, name)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT count(*) FROM chat_attachments")) or 0)


def files(store: LocalStore) -> list[Path]:
    return sorted(p for p in store.root.rglob("*") if p.is_file()) if store.root.exists() else []


def form_head(name: str = "big.bin") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


FORM_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


# --- the upload ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "name", "declared", "stored_type"),
    [
        pytest.param(PNG, "pixel.png", "image/png", "image/png", id="png"),
        pytest.param(JPEG, "photo.jpg", "image/jpg", "image/jpeg", id="jpeg-alias"),
        pytest.param(PDF, "doc.pdf", None, "application/pdf", id="pdf-undeclared"),
        pytest.param(PNG, "pixel", "application/octet-stream", "image/png", id="generic-claim"),
        pytest.param(TEXT, "notes.csv", "text/csv", "text/plain; charset=utf-8", id="utf8-text"),
        pytest.param(
            b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
            "x.svg",
            "image/svg+xml",
            "text/plain; charset=utf-8",
            id="svg-is-text",
        ),
        pytest.param(
            b"<html><script>alert(1)</script></html>",
            "x.html",
            "text/html",
            "text/plain; charset=utf-8",
            id="html-is-text",
        ),
        pytest.param(BINARY, "blob.dat", None, "application/octet-stream", id="binary"),
        pytest.param(
            "café".encode("latin-1"), "l1.txt", "text/plain", "application/octet-stream", id="l1"
        ),
    ],
)
async def test_the_stored_type_is_sniffed_from_the_bytes(
    people: People,
    engine: AsyncEngine,
    store: LocalStore,
    content: bytes,
    name: str,
    declared: str | None,
    stored_type: str,
) -> None:
    response = await upload(people("alice"), content, name, declared)
    assert response.status_code == 201, response.text
    body = response.json()
    sha256 = hashlib.sha256(content).hexdigest()
    assert body["contentType"] == stored_type
    assert (body["filename"], body["sizeBytes"], body["sha256"]) == (name, len(content), sha256)
    assert set(body) == {"id", "filename", "contentType", "sizeBytes", "sha256", "createdAt"}
    assert store.path(sha256).read_bytes() == content
    assert [p.name for p in files(store)] == [sha256]  # no temporary file left behind
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT tenant_id, uploader_id, content_type, attached_at "
                    "FROM chat_attachments WHERE id = :id"
                ),
                {"id": body["id"]},
            )
        ).one()
    assert tuple(row) == (TENANT, "alice", stored_type, None)


@pytest.mark.parametrize(
    ("content", "declared", "detected"),
    [
        pytest.param(PDF, "image/png", "application/pdf", id="pdf-as-png"),
        pytest.param(PNG, "image/jpeg", "image/png", id="png-as-jpeg"),
        pytest.param(TEXT, "application/pdf", "text/plain; charset=utf-8", id="text-as-pdf"),
        pytest.param(BINARY, "image/gif", "application/octet-stream", id="binary-as-gif"),
        pytest.param(PNG, "text/plain", "image/png", id="png-as-text"),
    ],
)
async def test_a_declared_type_that_contradicts_the_bytes_is_415(
    people: People,
    engine: AsyncEngine,
    store: LocalStore,
    content: bytes,
    declared: str,
    detected: str,
) -> None:
    problem = assert_problem(await upload(people("alice"), content, "f", declared), 415, "file")
    assert (problem["declaredType"], problem["detectedType"]) == (declared, detected)
    assert declared in problem["detail"]
    assert await rows(engine) == 0
    assert files(store) == []


async def test_the_file_name_is_cleaned(people: People) -> None:
    alice = people("alice")
    response = await upload(alice, TEXT, "C:\\Users\\x\\..\\résumé.txt")
    assert response.json()["filename"] == "résumé.txt"
    for name, cleaned in [("ré\x07sumé.txt", "résumé.txt"), ("dir/\x01 ", "attachment")]:
        response = await alice.post(
            "/chat/attachments",
            content=form_head(name) + TEXT + FORM_TAIL,
            headers={"Content-Type": FORM_TYPE},
        )
        assert response.json()["filename"] == cleaned, response.text


async def test_bad_forms_are_400_naming_the_field(
    people: People, engine: AsyncEngine, store: LocalStore
) -> None:
    alice = people("alice")
    assert_problem(await upload(alice, b""), 400, "file")  # an empty file
    no_file = await alice.post("/chat/attachments", files={"other": ("a.txt", b"hi")})
    assert_problem(no_file, 400, "file")
    plain_field = await alice.post("/chat/attachments", files={"file": (None, b"hi")})
    assert_problem(plain_field, 400, "file")
    two = [("file", ("a.txt", b"a")), ("file", ("b.txt", b"b"))]
    assert_problem(await alice.post("/chat/attachments", files=two), 400, "file")
    assert_problem(await alice.post("/chat/attachments", json={"file": "x"}), 400, "body")
    broken = await alice.post(
        "/chat/attachments",
        content=form_head() + b"no end",
        headers={"Content-Type": FORM_TYPE},
    )
    assert_problem(broken, 400, None)
    assert await rows(engine) == 0
    assert files(store) == []


async def test_uploading_needs_the_chat_write_scope(
    chat_settings: ApiSettings, people: People
) -> None:
    reader = people("alice", scopes=("chat:read",))
    assert (await upload(reader, TEXT)).status_code == 403


# --- the limit ----------------------------------------------------------------------------


async def test_a_file_at_the_limit_is_stored_one_byte_more_is_413(
    people: People, engine: AsyncEngine, store: LocalStore
) -> None:
    alice = people("alice")
    assert (await upload(alice, b"a" * LIMIT)).status_code == 201
    problem = assert_problem(await upload(alice, b"b" * (LIMIT + 1)), 413, "file")
    assert problem["maxBytes"] == LIMIT
    assert await rows(engine) == 1
    assert [p.name for p in files(store)] == [hashlib.sha256(b"a" * LIMIT).hexdigest()]


class Body:
    """A request body that counts how many pieces the server pulled from it."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self.pieces = pieces
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            self.pulled += 1
            yield piece
            await asyncio.sleep(0)


async def test_a_content_length_over_the_limit_is_413_before_the_body_is_read(
    people: People, engine: AsyncEngine
) -> None:
    body = Body(iter([form_head(), b"x" * LIMIT, FORM_TAIL]))
    announced = LIMIT + FORM_OVERHEAD_BYTES + 1
    response = await people("alice").post(
        "/chat/attachments",
        content=body.__aiter__(),
        headers={"Content-Type": FORM_TYPE, "Content-Length": str(announced)},
    )
    problem = assert_problem(response, 413, "file")
    assert problem["maxBytes"] == LIMIT
    assert body.pulled == 0
    assert await rows(engine) == 0


async def test_a_chunked_body_is_cut_off_once_the_file_passes_the_limit(
    people: People, engine: AsyncEngine, store: LocalStore
) -> None:
    alice = people("alice")
    one_more = Body(iter([form_head(), b"x" * LIMIT, b"y", FORM_TAIL]))
    response = await alice.post(
        "/chat/attachments", content=one_more.__aiter__(), headers={"Content-Type": FORM_TYPE}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "file")
    assert one_more.pulled == 3  # the tail was never read
    endless = Body(b"z" * 4096 for _ in range(10**9))
    pieces = Body(iter([form_head()]))
    response = await alice.post(
        "/chat/attachments",
        content=_chain(pieces, endless),
        headers={"Content-Type": FORM_TYPE},
    )
    assert_problem(response, 413, "file")
    assert endless.pulled == LIMIT // 4096 + 1
    assert await rows(engine) == 0
    assert files(store) == []


async def _chain(*bodies: Body) -> AsyncIterator[bytes]:
    for body in bodies:
        async for piece in body:
            yield piece


# --- who may download ---------------------------------------------------------------------


async def conversation(
    engine: AsyncEngine, kind: str, members: dict[str, tuple[int, int | None]]
) -> uuid.UUID:
    """A conversation of the tenant with its membership intervals `user: (joined, left)`."""
    conversation_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO chat_conversations (id, tenant_id, kind, title, created_by, last_seq)"
                " VALUES (:id, :tenant, :kind, 'c', 'alice', 10)"
            ),
            {"id": conversation_id, "tenant": TENANT, "kind": kind},
        )
        for user, (joined, left) in members.items():
            await conn.execute(
                text(
                    "INSERT INTO chat_members (conversation_id, tenant_id, user_id, role, "
                    "joined_seq, left_seq, ended_by, read_seq) VALUES (:c, :tenant, :user, "
                    "'member', :joined, :left, :ended, :joined)"
                ),
                {
                    "c": conversation_id,
                    "tenant": TENANT,
                    "user": user,
                    "joined": joined,
                    "left": left,
                    "ended": "left" if left is not None else None,
                },
            )
    return conversation_id


async def post(
    engine: AsyncEngine, conversation_id: uuid.UUID, seq: int, attachment_id: str
) -> None:
    """Message `seq` of the conversation by alice, referencing the attachment."""
    message_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO chat_messages (id, conversation_id, tenant_id, seq, sender_id, text) "
                "VALUES (:id, :c, :tenant, :seq, 'alice', 'see attached')"
            ),
            {"id": message_id, "c": conversation_id, "tenant": TENANT, "seq": seq},
        )
        await conn.execute(
            text(
                "INSERT INTO chat_message_attachments (message_id, attachment_id, position) "
                "VALUES (:m, :a, 0)"
            ),
            {"m": message_id, "a": attachment_id},
        )
        await conn.execute(
            text("UPDATE chat_attachments SET attached_at = now() WHERE id = :a"),
            {"a": attachment_id},
        )


async def test_a_file_is_served_to_who_may_see_a_message_referencing_it(
    people: People, engine: AsyncEngine
) -> None:
    alice = people("alice")
    in_group, in_channel, unsent = (
        await uploaded(alice, PNG, "group.png"),
        await uploaded(alice, PDF, "channel.pdf"),
        await uploaded(alice, TEXT, "draft.txt"),
    )
    group = await conversation(
        engine,
        "group",
        {
            "alice": (0, None),
            "bob": (0, None),  # a member when it was posted
            "dave": (3, None),  # joined after it
            "frank": (0, 4),  # left after it: keeps what he saw
            "gina": (0, 2),  # left before it
        },
    )
    await post(engine, group, 3, in_group)
    channel = await conversation(engine, "channel", {"alice": (0, None)})
    await post(engine, channel, 1, in_channel)
    expected = {
        ("alice", in_group): 200,  # the uploader
        ("bob", in_group): 200,
        ("frank", in_group): 200,
        ("dave", in_group): 404,
        ("gina", in_group): 404,
        ("carol", in_group): 404,  # never a member
        ("carol", in_channel): 200,  # a channel is public within its tenant
        ("bob", in_channel): 200,
        ("alice", unsent): 200,  # only the uploader until a message references it
        ("bob", unsent): 404,
    }
    answers = {
        (user, attachment): (await people(user).get(f"/chat/attachments/{attachment}")).status_code
        for user, attachment in expected
    }
    assert answers == expected
    intruder = people("alice", tenant="globex")  # the same user name in another tenant
    for attachment in (in_group, in_channel, unsent):
        assert_problem(await intruder.get(f"/chat/attachments/{attachment}"), 404, None)
    assert_problem(await alice.get(f"/chat/attachments/{uuid.uuid4()}"), 404, None)
    writer = people("bob", scopes=("chat:write",))
    assert (await writer.get(f"/chat/attachments/{in_group}")).status_code == 403


async def test_the_download_headers(people: People) -> None:
    alice = people("alice")
    name = 'Grüße "team".pdf'
    response = await alice.get(f"/chat/attachments/{await uploaded(alice, PDF, name)}")
    assert response.status_code == 200
    assert response.content == PDF
    headers = response.headers
    assert headers["content-type"] == "application/pdf"
    assert headers["content-length"] == str(len(PDF))
    assert headers["etag"] == f'"{hashlib.sha256(PDF).hexdigest()}"'
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert headers["content-disposition"] == (
        'attachment; filename="Gr__e _team_.pdf"; '
        "filename*=UTF-8''Gr%C3%BC%C3%9Fe%20%22team%22.pdf"
    )
    image = await alice.get(f"/chat/attachments/{await uploaded(alice, PNG, 'p.png')}")
    assert image.headers["content-disposition"].startswith("inline; ")
    assert image.headers["content-type"] == "image/png"
    html = b"<html><script>alert(1)</script></html>"
    page = await alice.get(f"/chat/attachments/{await uploaded(alice, html, 'x.html')}")
    assert page.headers["content-type"] == "text/plain; charset=utf-8"
    assert page.headers["content-disposition"].startswith("attachment; ")


async def test_a_lost_file_is_404(people: People, store: LocalStore) -> None:
    alice = people("alice")
    attachment = await uploaded(alice, PDF)
    await store.delete(hashlib.sha256(PDF).hexdigest())
    assert_problem(await alice.get(f"/chat/attachments/{attachment}"), 404, None)


async def test_the_same_bytes_twice_are_two_rows_and_one_file(
    people: People, engine: AsyncEngine, store: LocalStore
) -> None:
    first = await uploaded(people("alice"), PDF, "a.pdf")
    second = await uploaded(people("bob"), PDF, "b.pdf")
    assert first != second
    assert await rows(engine) == 2
    assert len(files(store)) == 1


async def test_idempotency_key(people: People, engine: AsyncEngine) -> None:
    alice = people("alice")
    key = {"Idempotency-Key": "upload-1"}
    first = await upload(alice, PDF, "a.bin", headers=key)
    again = await upload(alice, PDF, "a.bin", headers=key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert_problem(await upload(alice, PNG, "a.bin", headers=key), 422, None)
    assert await rows(engine) == 1


# --- the stores ---------------------------------------------------------------------------


async def pieces(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in stream])


async def test_the_local_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    sha256 = hashlib.sha256(PDF).hexdigest()
    await store.put(sha256, pieces(PDF))
    assert store.path(sha256) == tmp_path / sha256[:2] / sha256[2:4] / sha256
    assert await store.exists(sha256)
    assert await read(await store.open(sha256)) == PDF
    other = hashlib.sha256(PNG).hexdigest()
    with pytest.raises(StorageError, match="do not hash"):
        await store.put(other, pieces(PDF))
    assert not await store.exists(other)
    assert [p.name for p in files(store)] == [sha256]
    with pytest.raises(StorageError, match="sha256"):
        store.path("../../etc/passwd")
    await store.delete(sha256)
    await store.delete(sha256)  # nothing there is fine
    with pytest.raises(MissingFileError):
        await store.open(sha256)


async def create_bucket(settings: AttachmentStorageSettings) -> None:
    async with S3Store(settings).client() as s3:
        await s3.create_bucket(
            Bucket=settings.bucket,
            CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
        )


@pytest.fixture(scope="module")
def s3_server() -> Iterator[AttachmentStorageSettings]:
    """moto's S3 server on a free port, with one bucket."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings = AttachmentStorageSettings(
        kind="s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        bucket="relaybox-attachments",
        region="eu-west-1",
        access_key_id="test-key",
        secret_access_key="test-secret",
        prefix="chat/",
    )
    asyncio.run(create_bucket(settings))
    yield settings
    server.stop()


@pytest.mark.parametrize("size", [1, 8 * 1024 * 1024 + 1], ids=["one-put", "multipart"])
async def test_the_s3_store(s3_server: AttachmentStorageSettings, size: int) -> None:
    store = S3Store(s3_server)
    data = (bytes(range(251)) * (size // 251 + 1))[:size]
    sha256 = hashlib.sha256(data).hexdigest()
    assert not await store.exists(sha256)
    await store.put(sha256, pieces(data))
    assert await store.exists(sha256)
    assert await read(await store.open(sha256)) == data
    with pytest.raises(StorageError, match="do not hash"):
        await store.put(hashlib.sha256(b"other").hexdigest(), pieces(data))
    await store.delete(sha256)
    assert not await store.exists(sha256)
    with pytest.raises(MissingFileError):
        await store.open(sha256)


async def test_upload_and_download_through_s3(
    s3_server: AttachmentStorageSettings, chat_settings: ApiSettings, engine: AsyncEngine
) -> None:
    chat = chat_settings.chat.model_copy(update={"storage": s3_server})
    settings = chat_settings.model_copy(update={"chat": chat})
    token = issue_token(settings, "alice", ("chat:read", "chat:write"), tenant=TENANT)
    transport = httpx.ASGITransport(app=create_app(settings, engine=engine))  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=transport, base_url=BASE_URL, headers={"Authorization": f"Bearer {token}"}
    ) as alice:
        created = await upload(alice, JPEG, "photo.jpg", "image/jpeg")
        assert created.status_code == 201, created.text
        sha256 = created.json()["sha256"]
        assert await S3Store(s3_server).exists(sha256)
        response = await alice.get(f"/chat/attachments/{created.json()['id']}")
    assert response.status_code == 200
    assert response.content == JPEG
    assert response.headers["content-type"] == "image/jpeg"


# --- the sweeper --------------------------------------------------------------------------


async def age(engine: AsyncEngine, attachment_id: str, hours: float) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE chat_attachments SET created_at = now() - make_interval(secs => :s) "
                "WHERE id = :id"
            ),
            {"s": hours * 3600, "id": attachment_id},
        )


async def ids(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        found = await conn.execute(text("SELECT id::text FROM chat_attachments"))
        return {row[0] for row in found}


def sweeper(engine: AsyncEngine, store: LocalStore) -> Sweeper:
    return Sweeper(engine, [], attachment_store=store, attachment_retention_s=24 * 3600)


def purged_rows() -> float:
    labels = {"table": "chat_attachments"}
    return REGISTRY.get_sample_value("relaybox_sweeper_purged_total", labels) or 0.0


def deleted_files() -> float:
    return REGISTRY.get_sample_value("relaybox_sweeper_attachment_files_deleted_total") or 0.0


async def test_the_sweeper_deletes_only_old_unattached_uploads(
    people: People, engine: AsyncEngine, store: LocalStore
) -> None:
    alice = people("alice")
    old = await uploaded(alice, PDF, "old.pdf")
    shared_old = await uploaded(alice, PNG, "shared-old.png")
    shared_young = await uploaded(people("bob"), PNG, "shared-young.png")
    young = await uploaded(alice, JPEG, "young.jpg")
    attached = await uploaded(alice, TEXT, "attached.txt")
    for attachment in (old, shared_old, attached):
        await age(engine, attachment, 25)
    await age(engine, young, 23)
    group = await conversation(engine, "group", {"alice": (0, None)})
    await post(engine, group, 1, attached)
    before_rows, before_files = purged_rows(), deleted_files()
    assert await sweeper(engine, store).purge_unattached_uploads() == 2
    assert await ids(engine) == {shared_young, young, attached}
    assert not await store.exists(hashlib.sha256(PDF).hexdigest())
    assert await store.exists(hashlib.sha256(PNG).hexdigest())  # shared-young names it
    assert await store.exists(hashlib.sha256(TEXT).hexdigest())
    assert (purged_rows(), deleted_files()) == (before_rows + 2, before_files + 1)
    assert await sweeper(engine, store).purge_unattached_uploads() == 0


async def test_the_sweeper_keeps_a_file_an_upload_is_about_to_name(
    people: People, engine: AsyncEngine, store: LocalStore
) -> None:
    """An upload holds the file's lock from its write to its commit: the sweeper waits for it,
    then sees the new row and keeps the file."""
    old = await uploaded(people("alice"), PDF, "old.pdf")
    await age(engine, old, 25)
    sha256 = hashlib.sha256(PDF).hexdigest()
    async with engine.connect() as upload_conn:
        transaction = await upload_conn.begin()
        await lock_file(upload_conn, sha256)
        sweep = asyncio.create_task(sweeper(engine, store).purge_unattached_uploads())
        await asyncio.sleep(0.5)
        assert not sweep.done()  # waiting for the lock
        await upload_conn.execute(
            text(
                "INSERT INTO chat_attachments (id, tenant_id, uploader_id, filename, "
                "content_type, size_bytes, sha256) VALUES (:id, :t, 'bob', 'b.pdf', "
                "'application/pdf', :size, :sha)"
            ),
            {"id": uuid.uuid4(), "t": TENANT, "size": len(PDF), "sha": sha256},
        )
        await transaction.commit()
        assert await sweep == 1
    assert old not in await ids(engine)
    assert await store.exists(sha256)
