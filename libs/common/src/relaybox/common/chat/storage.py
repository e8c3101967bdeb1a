"""Where attachment files live: a content-addressed store, each file under its sha256.

The API puts and reads files, the consumer's sweeper deletes those no row names any more; both
pick the store with `open_store(settings)`. Two rows with the same bytes share one file, so a
file is deleted only when no `chat_attachments` row has its sha256 (the sweeper decides that
under the file's advisory lock, `lock_file`, which an upload holds until its row commits).

- `LocalStore`: `<root>/ab/cd/<sha256>`, written to a temporary file in the same directory and
  renamed into place (atomic: a reader sees the whole file or none).
- `S3Store`: any S3-compatible server (`<prefix><sha256>` in one bucket).
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from relaybox.common.errors import RelayboxError
from relaybox.common.settings import AttachmentStorageSettings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

CHUNK_BYTES = 256 * 1024  # one read of a stored file
S3_PART_BYTES = 8 * 1024 * 1024  # one part of a multipart upload (S3's minimum is 5 MiB)
_KEY = re.compile(r"[0-9a-f]{64}")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class StorageError(RelayboxError):
    """The store refused or failed an operation."""


class MissingFileError(StorageError):
    """No file is stored under this key."""


@runtime_checkable
class AttachmentStore(Protocol):
    """Files by their sha256 (64 lowercase hex digits)."""

    async def put(self, sha256: str, chunks: AsyncIterable[bytes]) -> None:
        """Store the bytes of `chunks` under `sha256` (they must hash to it), replacing a file
        already there (the same bytes)."""

    async def open(self, sha256: str) -> AsyncIterator[bytes]:
        """The stored bytes, a piece at a time; `MissingFileError` (before the first byte) when
        nothing is stored under `sha256`."""

    async def delete(self, sha256: str) -> None:
        """Remove the file; nothing stored under `sha256` is fine."""

    async def exists(self, sha256: str) -> bool:
        """A file is stored under `sha256`."""


def checked_key(sha256: str) -> str:
    """`sha256` if it is a digest (64 lowercase hex digits): no key reaches a path or an object
    name unchecked."""
    if not _KEY.fullmatch(sha256):
        raise StorageError("a store key is a sha256 digest: 64 lowercase hex digits")
    return sha256


class LocalStore:
    """A directory: `<root>/ab/cd/<sha256>`. Blocking file calls run in worker threads."""

    def __init__(self, root: Path, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.root = root
        self.chunk_bytes = chunk_bytes

    def path(self, sha256: str) -> Path:
        key = checked_key(sha256)
        return self.root / key[:2] / key[2:4] / key

    async def put(self, sha256: str, chunks: AsyncIterable[bytes]) -> None:
        target = self.path(sha256)
        await anyio.Path(target.parent).mkdir(parents=True, exist_ok=True)
        temporary = target.parent / f".{sha256}.{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        try:
            async with await anyio.open_file(temporary, "wb") as file:
                async for chunk in chunks:
                    digest.update(chunk)
                    await file.write(chunk)
                await file.flush()
                await anyio.to_thread.run_sync(os.fsync, file.wrapped.fileno())
            if digest.hexdigest() != sha256:
                raise StorageError("the bytes do not hash to the key they were stored under")
            await anyio.to_thread.run_sync(os.replace, temporary, target)
        finally:
            await anyio.Path(temporary).unlink(missing_ok=True)

    async def open(self, sha256: str) -> AsyncIterator[bytes]:
        try:
            file = await anyio.open_file(self.path(sha256), "rb")
        except FileNotFoundError:
            raise MissingFileError(f"no file stored under {sha256}") from None
        return self._read(file)

    async def _read(self, file: anyio.AsyncFile[bytes]) -> AsyncIterator[bytes]:
        async with file:
            while chunk := await file.read(self.chunk_bytes):
                yield chunk

    async def delete(self, sha256: str) -> None:
        await anyio.Path(self.path(sha256)).unlink(missing_ok=True)

    async def exists(self, sha256: str) -> bool:
        return await anyio.Path(self.path(sha256)).is_file()


class S3Store:
    """One bucket of an S3-compatible server, through aiobotocore.

    aiobotocore rather than boto3 in a thread: it is botocore itself (the same signing, retries
    and error codes, maintained alongside it) on aiohttp, so a 25 MiB transfer streams on the
    event loop instead of holding a worker thread per request. A client is opened per operation
    (a stream: until it is read): no connection outlives its request, so no lifespan has to
    close one; the session keeps the service model loaded, so opening one is cheap.
    """

    def __init__(self, settings: AttachmentStorageSettings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self._session = get_session()

    def key(self, sha256: str) -> str:
        return self.settings.prefix + checked_key(sha256)

    @asynccontextmanager
    async def client(self) -> AsyncIterator[S3Client]:
        settings = self.settings
        key_id, secret = settings.access_key_id, settings.secret_access_key
        async with self._session.create_client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=AioConfig(
                s3={"addressing_style": "path"},
                retries={"mode": "standard"},
                # Checksums only where S3 requires them: many S3-compatible servers refuse the
                # CRC32 headers newer botocore adds to every upload.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        ) as client:
            yield client

    async def put(self, sha256: str, chunks: AsyncIterable[bytes]) -> None:
        """One PUT for a file up to `S3_PART_BYTES`, else a multipart upload of such parts (one
        part in memory), aborted when anything fails. The bytes' sha256 is checked before the
        object is written (one PUT) or completed (multipart)."""
        key = self.key(sha256)
        digest = hashlib.sha256()
        parts = _parts(chunks, S3_PART_BYTES, digest)
        first = await anext(parts, b"")
        second = await anext(parts, None)
        async with self.client() as s3:
            if second is None:
                _check(digest, sha256)
                await s3.put_object(Bucket=self.bucket, Key=key, Body=first)
                return
            upload = await s3.create_multipart_upload(Bucket=self.bucket, Key=key)
            upload_id = upload["UploadId"]
            try:
                done: list[CompletedPartTypeDef] = []
                async for number, part in _numbered(first, second, parts):
                    answer = await s3.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=part,
                    )
                    done.append({"PartNumber": number, "ETag": answer["ETag"]})
                _check(digest, sha256)
                await s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
                )
            except BaseException:
                await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                raise

    async def open(self, sha256: str) -> AsyncIterator[bytes]:
        stack = AsyncExitStack()
        s3 = await stack.enter_async_context(self.client())
        try:
            answer = await s3.get_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as exc:
            await stack.aclose()
            if _code(exc) in _NOT_FOUND:
                raise MissingFileError(f"no file stored under {sha256}") from None
            raise
        except BaseException:
            await stack.aclose()
            raise
        return self._read(stack, answer["Body"])

    async def _read(self, stack: AsyncExitStack, body: _Body) -> AsyncIterator[bytes]:
        async with stack, body:
            async for chunk in body.iter_chunks(CHUNK_BYTES):
                yield chunk

    async def delete(self, sha256: str) -> None:
        async with self.client() as s3:
            await s3.delete_object(Bucket=self.bucket, Key=self.key(sha256))

    async def exists(self, sha256: str) -> bool:
        async with self.client() as s3:
            try:
                await s3.head_object(Bucket=self.bucket, Key=self.key(sha256))
            except ClientError as exc:
                if _code(exc) in _NOT_FOUND:
                    return False
                raise
        return True


def open_store(settings: AttachmentStorageSettings) -> AttachmentStore:
    """The store `settings.kind` names (nothing is opened yet)."""
    if settings.kind == "s3":
        return S3Store(settings)
    return LocalStore(settings.root)


class _Body(Protocol):
    """The streamed body of a GET (aiobotocore's StreamingBody)."""

    async def __aenter__(self) -> object: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def iter_chunks(self, chunk_size: int) -> AsyncIterator[bytes]: ...


async def _parts(
    chunks: AsyncIterable[bytes], size: int, digest: hashlib._Hash
) -> AsyncIterator[bytes]:
    """`chunks` regrouped into pieces of `size` bytes (the last one shorter), hashed on the way."""
    buffer = bytearray()
    async for chunk in chunks:
        digest.update(chunk)
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


async def _numbered(
    first: bytes, second: bytes, rest: AsyncIterator[bytes]
) -> AsyncIterator[tuple[int, bytes]]:
    """The parts with their numbers from 1 (the first two already taken from `rest`)."""
    yield 1, first
    yield 2, second
    number = 2
    async for part in rest:
        number += 1
        yield number, part


def _check(digest: hashlib._Hash, sha256: str) -> None:
    if digest.hexdigest() != sha256:
        raise StorageError("the bytes do not hash to the key they were stored under")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def lock_file(connection: AsyncConnection | AsyncSession, sha256: str) -> None:
    """Hold the advisory lock of one stored file until the transaction ends.

    An upload holds it from storing the file until its row is committed; the sweeper while it
    checks that no row names the file and deletes it. So the sweeper never deletes a file that
    an upload of the same bytes is about to name.
    """
    await connection.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"chat.attachment.file\x1f{checked_key(sha256)}"},
    )
