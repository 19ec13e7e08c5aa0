"""Async object I/O for ``s3://`` URIs and local paths, behind one small interface.

The worker reads its inputs and writes its outputs through ``Store``. S3 goes through
aiobotocore so that many GETs and PUTs are in flight on one event loop: big objects are
fetched as parallel ranged GETs and written as multipart uploads, always with bounded
concurrency. Local paths take the same calls, with file I/O moved to threads so the event
loop never blocks. Errors a user can cause (no such bucket, access denied, nothing under
the prefix) become one-line ``WorkerError``s naming the URI.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, BinaryIO, Callable, TypeVar

from ..contract import is_marker, local_path, split_s3
from ..faults import S3_ABSENT, error_code, jittered_delay
from .errors import WorkerError
from .safe_paths import path_inside

if TYPE_CHECKING:
    from typing_extensions import Buffer

T = TypeVar("T")

MiB = 1024 * 1024
# Ranged GETs and multipart parts of 16 MiB keep each request long enough to reach full
# throughput while giving large objects enough pieces to spread over the connections.
PART_SIZE = 16 * MiB
MAX_PARTS = 10_000  # S3's limit on parts per multipart upload
# A connection lost mid-body: how often one read (or one part) is resumed, and the backoff between tries.
BODY_ATTEMPTS = 10
BODY_BACKOFF_BASE = 0.1
BODY_BACKOFF_CAP = 5.0
# botocore's own attempts per request (adaptive mode: its client-side rate limiter also backs off on throttling).
S3_ATTEMPTS = 8

log = logging.getLogger("airflow_gpu.worker")


@functools.cache
def body_faults() -> tuple[type[BaseException], ...]:
    """What a connection dropped in the middle of a body raises, through aiobotocore and aiohttp."""
    import aiohttp
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, IncompleteReadError, ResponseStreamingError

    return (
        aiohttp.ClientPayloadError,
        aiohttp.ClientConnectionError,
        ResponseStreamingError,
        IncompleteReadError,
        HTTPClientError,
        BotoConnectionError,
        ConnectionError,
        asyncio.TimeoutError,
    )


async def _retry_body_faults(
    call: Callable[[], Awaitable[T]],
    *,
    retrying: Callable[[BaseException], None],
    exhausted: Callable[[BaseException, int], BaseException] | None,
) -> T:
    """``call()``, again after each connection lost mid-body, ``BODY_ATTEMPTS`` tries at most with
    jittered pauses between them. ``retrying(fault)`` says so before each pause; when the tries run
    out, ``exhausted(fault, failures)`` is raised in the fault's place (None: the fault itself)."""
    failures = 0
    while True:
        try:
            return await call()
        except body_faults() as exc:
            failures += 1
            if failures >= BODY_ATTEMPTS:
                if exhausted is None:
                    raise
                raise exhausted(exc, failures) from None
            retrying(exc)
            await asyncio.sleep(jittered_delay(failures, BODY_BACKOFF_BASE, BODY_BACKOFF_CAP))


@dataclass(frozen=True)
class ObjectRef:
    """One object (or file) found under a store's root."""

    key: str  # full S3 key, or absolute local path
    name: str  # path relative to the listed root; the base name for a single object
    size: int


class Store(ABC):
    """Objects under one root URI: an S3 prefix or a local folder (or a single object)."""

    uri: str

    @abstractmethod
    async def list(self) -> list[ObjectRef]:
        """Every data object under the root, sorted by name; a single object if the root is one."""

    @abstractmethod
    async def read(self, ref: ObjectRef) -> Buffer:
        """The object's bytes, as ``bytes`` or a zero-copy buffer."""

    @abstractmethod
    async def read_to_file(self, ref: ObjectRef, dest: Path) -> None:
        """Stream the object into a local file without holding it all in memory."""

    @abstractmethod
    async def write(self, name: str, data: bytes | memoryview) -> None:
        """Put ``data`` at ``root/name``, replacing any object there in one step."""

    @abstractmethod
    async def write_file(self, name: str, path: Path) -> None:
        """Upload a local file to ``root/name``."""

    @abstractmethod
    async def read_small(self, name: str) -> bytes | None:
        """Read ``root/name`` whole, or None when it does not exist (manifests, scripts)."""

    @abstractmethod
    async def delete(self, names: builtins.list[str]) -> None:
        """Remove ``root/name`` for each name; missing ones are ignored."""

    async def names_under(self, under: str) -> builtins.list[str]:
        """Every object's name under ``root/under``, markers included (for retention)."""
        raise NotImplementedError

    def uri_of(self, name: str) -> str:
        return self.uri.rstrip("/") + "/" + name if name else self.uri

    def ref_uri(self, ref: ObjectRef) -> str:
        """The full URI of a listed object, for messages."""
        return ref.key

    async def close(self) -> None:  # pragma: no cover - trivial
        return None


# ---------------------------------------------------------------------------------------
# S3
# ---------------------------------------------------------------------------------------


class S3Store(Store):
    """An S3 prefix, through one aiobotocore client shared by all requests."""

    def __init__(self, uri: str, client: Any, concurrency: int) -> None:
        self.uri = uri
        try:
            self.bucket, self.prefix = split_s3(uri)
        except ValueError as exc:
            raise WorkerError(str(exc)) from None
        self._client = client
        # One slot per request in flight; a multipart upload or ranged download takes one per part.
        self._requests = asyncio.Semaphore(max(1, concurrency))

    async def _again_on_body_faults(self, uri: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call()`` again when a reply is cut mid-body: aiobotocore reads a whole non-streaming
        reply (a listing, an error, a PUT's answer) outside botocore's retries."""
        return await _retry_body_faults(
            call,
            retrying=lambda exc: log.warning(
                "storage: a reply about %s broke off (%s); asking again", uri, type(exc).__name__
            ),
            exhausted=lambda exc, failures: WorkerError(
                f"talking to S3 about {uri} failed {failures} times ({type(exc).__name__}); "
                "check the network to S3 and rerun"
            ),
        )

    @property
    def _dir(self) -> str:
        return self.prefix if not self.prefix or self.prefix.endswith("/") else self.prefix + "/"

    async def list(self) -> list[ObjectRef]:
        return await self._again_on_body_faults(self.uri, self._list_once)

    async def _list_once(self) -> builtins.list[ObjectRef]:
        refs: builtins.list[ObjectRef] = []
        async with self._translate(self.uri):
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._dir):
                for item in page.get("Contents", ()):
                    name = item["Key"][len(self._dir) :]
                    if not is_marker(name):
                        refs.append(ObjectRef(item["Key"], name, int(item["Size"])))
            if not refs and self.prefix and not self.prefix.endswith("/"):
                # The URI may name one object rather than a folder.
                try:
                    head = await self._client.head_object(Bucket=self.bucket, Key=self.prefix)
                except self._client.exceptions.ClientError as exc:
                    if error_code(exc) not in S3_ABSENT:
                        raise
                else:
                    refs.append(ObjectRef(self.prefix, self.prefix.rsplit("/", 1)[-1], int(head["ContentLength"])))
        return sorted(refs, key=lambda r: r.name)

    async def read(self, ref: ObjectRef) -> Buffer:
        # One preallocated buffer; big objects arrive as parallel ranged GETs straight into it.
        buffer = bytearray(ref.size)
        view = memoryview(buffer)

        async def into_buffer(offset: int, chunk: bytes) -> None:
            view[offset : offset + len(chunk)] = chunk

        if ref.size <= 2 * PART_SIZE:
            async with self._requests:
                await self._stream_range(ref, 0, ref.size, into_buffer)
            return buffer

        async def fetch(start: int, end: int) -> None:
            async with self._requests:
                await self._stream_range(ref, start, end, into_buffer)

        await gather_or_cancel([fetch(s, min(s + PART_SIZE, ref.size)) for s in range(0, ref.size, PART_SIZE)])
        return buffer

    async def read_to_file(self, ref: ObjectRef, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as handle:  # noqa: ASYNC230  (opening is instant; the writes run in threads)

            async def into_file(offset: int, chunk: bytes) -> None:
                def write() -> None:
                    handle.seek(offset)  # a resumed read rewrites nothing: it continues at the byte reached
                    handle.write(chunk)

                await asyncio.to_thread(write)

            async with self._requests:
                await self._stream_range(ref, 0, ref.size, into_file, chunk_size=4 * MiB)

    async def _stream_range(
        self,
        ref: ObjectRef,
        start: int,
        end: int,
        sink: Callable[[int, bytes], Awaitable[None]],
        *,
        chunk_size: int = 1 * MiB,
    ) -> None:
        """Hand bytes [start, end) of ``ref`` to ``sink(offset, chunk)``.

        botocore retries a request until its headers arrive; a connection lost in the body
        is the caller's to handle. So a body cut short is resumed with a ranged GET from the
        byte reached, pinned to the first reply's ETag (an object replaced meanwhile is an
        error, not a mix of two versions), with bounded attempts and jittered backoff.
        """
        uri = self.ref_uri(ref)
        reached, etag, first = start, None, True

        async def from_reached() -> None:
            nonlocal reached, etag, first
            if reached >= end and not first:
                return  # the connection broke after the last byte: nothing is missing
            first = False
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": ref.key}
            if reached > 0 or end < ref.size:
                kwargs["Range"] = f"bytes={reached}-{end - 1}"
            if etag:
                kwargs["IfMatch"] = etag
            response = await self._client.get_object(**kwargs)
            etag = etag or response.get("ETag")
            async with response["Body"] as body:
                async for chunk in body.iter_chunks(chunk_size):
                    await sink(reached, chunk)
                    reached += len(chunk)

        async with self._translate(uri):  # outside the retries: a fault is retried before it becomes a message
            await _retry_body_faults(
                from_reached,
                retrying=lambda exc: log.warning(
                    "storage: reading %s broke off at byte %d (%s); resuming there", uri, reached, type(exc).__name__
                ),
                exhausted=lambda exc, failures: WorkerError(
                    f"reading {uri} failed {failures} times (last at byte {reached} of {ref.size}: "
                    f"{type(exc).__name__}); check the network to S3 and rerun"
                ),
            )
        if reached != end:
            raise WorkerError(
                f"{uri} changed while it was read (got {reached - start} of {end - start} bytes "
                "of a range); rerun once its writer has finished"
            )

    async def read_small(self, name: str) -> bytes | None:
        key = self._dir + name

        async def once() -> bytes | None:
            # Small (a manifest, a script): a reply cut short is read again whole.
            async with self._requests, self._translate(self.uri_of(name)):
                try:
                    response = await self._client.get_object(Bucket=self.bucket, Key=key)
                except self._client.exceptions.ClientError as exc:
                    if error_code(exc) in S3_ABSENT:
                        return None
                    raise
                async with response["Body"] as body:
                    data: bytes = await body.read()
                    return data

        return await self._again_on_body_faults(self.uri_of(name), once)

    async def write(self, name: str, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        await self._put(name, len(view), lambda start, end: asyncio.sleep(0, bytes(view[start:end])))

    async def write_file(self, name: str, path: Path) -> None:
        size = path.stat().st_size

        def read_range(start: int, end: int) -> bytes:
            with open(path, "rb") as handle:
                handle.seek(start)
                return handle.read(end - start)

        await self._put(name, size, lambda start, end: asyncio.to_thread(read_range, start, end))

    async def _put(self, name: str, size: int, read_range: Callable[[int, int], Awaitable[bytes]]) -> None:
        key = self._dir + name
        uri = self.uri_of(name)
        if size <= 2 * PART_SIZE:
            body = await read_range(0, size)

            async def put_once() -> None:
                async with self._requests, self._translate(uri):
                    await self._client.put_object(Bucket=self.bucket, Key=key, Body=body)

            await self._again_on_body_faults(uri, put_once)  # a PUT replaces the object whole: safe to repeat
            return
        part_size = max(PART_SIZE, -(-size // MAX_PARTS))
        async with self._translate(uri):
            upload = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload_id = upload["UploadId"]

        async def put_part(number: int, start: int) -> dict[str, Any]:
            body = await read_range(start, min(start + part_size, size))

            async def send() -> dict[str, Any]:
                async with self._requests:
                    part = await self._client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                    )
                return {"PartNumber": number, "ETag": part["ETag"]}

            # botocore's retries are spent: send this part again; the others stay uploaded, and S3 keeps
            # the last copy of a part number. Out of tries, the fault itself ends the upload.
            async with self._translate(uri):  # outside the retries: a fault is retried before it becomes a message
                return await _retry_body_faults(
                    send,
                    retrying=lambda exc: log.warning(
                        "storage: part %d of %s failed (%s); sending it again", number, uri, type(exc).__name__
                    ),
                    exhausted=None,
                )

        try:
            parts = await gather_or_cancel([put_part(n + 1, s) for n, s in enumerate(range(0, size, part_size))])
            async with self._translate(uri):
                await self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            # An unfinished multipart upload is invisible to readers but still billed: abort it.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                )
            raise

    async def names_under(self, under: str) -> builtins.list[str]:
        async def once() -> builtins.list[str]:
            names: builtins.list[str] = []
            async with self._translate(self.uri_of(under)):
                paginator = self._client.get_paginator("list_objects_v2")
                async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._dir + under):
                    names.extend(item["Key"][len(self._dir) :] for item in page.get("Contents", ()))
            return sorted(names)

        return await self._again_on_body_faults(self.uri_of(under), once)

    async def delete(self, names: builtins.list[str]) -> None:
        keys = [self._dir + n for n in names]
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            async with self._requests, self._translate(self.uri):
                await self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )

    def uri_of(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._dir}{name}" if name else self.uri

    def ref_uri(self, ref: ObjectRef) -> str:
        return f"s3://{self.bucket}/{ref.key}"

    @contextlib.asynccontextmanager
    async def _translate(self, uri: str) -> AsyncIterator[None]:
        """Turn the S3 errors a user can cause into one clear line naming the URI."""
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        try:
            yield
        except ClientError as exc:
            code = error_code(exc)
            if code in ("AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise WorkerError(
                    f"access denied to {uri} ({code}); give the job's role s3:ListBucket, s3:GetObject and "
                    "s3:PutObject on it, or check the AWS credentials"
                ) from None
            if code == "NoSuchBucket":
                raise WorkerError(f"bucket '{self.bucket}' does not exist ({uri}); check the URI") from None
            if code in S3_ABSENT:
                raise WorkerError(f"{uri} does not exist; check the URI") from None
            if code in ("PreconditionFailed", "412"):
                raise WorkerError(f"{uri} was replaced while it was read; rerun once its writer has finished") from None
            raise
        except NoCredentialsError:
            raise WorkerError(
                f"no AWS credentials found to reach {uri}; set AWS_PROFILE or AWS_ACCESS_KEY_ID, or run with a job role"
            ) from None
        except PartialCredentialsError as exc:
            raise WorkerError(f"incomplete AWS credentials for {uri}: {exc}") from None
        except EndpointConnectionError as exc:
            raise WorkerError(f"cannot reach S3 for {uri} ({exc}); check --endpoint-url or AWS_ENDPOINT_URL") from None


async def gather_or_cancel(coros: list[Awaitable[T]]) -> list[T]:
    """Like gather, but cancels the siblings as soon as one fails, so a failure stops all work."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# ---------------------------------------------------------------------------------------
# Local paths
# ---------------------------------------------------------------------------------------


async def _finish_in_thread(fn: Callable[..., object], *args: Any) -> None:
    """Run a file write in a thread; when the caller is cancelled, wait for the write to end first.

    A thread cannot be stopped. Without the wait, an abort (SIGTERM mid-publish) would remove this
    run's files while the write still runs, and the file would appear again after the clean-up."""
    write = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        await asyncio.shield(write)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await write
        raise


class LocalStore(Store):
    """A local folder or file. Writes go to a temporary name first, then are renamed into place."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = local_path(uri).absolute()

    async def list(self) -> list[ObjectRef]:
        return await asyncio.to_thread(self._list)

    def _list(self) -> builtins.list[ObjectRef]:
        if self.root.is_file():
            return [ObjectRef(str(self.root), self.root.name, self.root.stat().st_size)]
        if not self.root.is_dir():
            return []
        refs = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not is_marker(d))
            for file in files:
                path = Path(folder, file)
                name = path.relative_to(self.root).as_posix()
                if not is_marker(name):
                    refs.append(ObjectRef(str(path), name, path.stat().st_size))
        return sorted(refs, key=lambda r: r.name)

    async def read(self, ref: ObjectRef) -> Buffer:
        import pyarrow as pa

        def read() -> Buffer:
            with pa.memory_map(ref.key) as source:
                buffer: Buffer = source.read_buffer()
                return buffer

        try:
            return await asyncio.to_thread(read)
        except PermissionError:
            raise WorkerError(f"permission denied reading {ref.key}; check the file's permissions") from None

    async def read_to_file(self, ref: ObjectRef, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.copyfile, ref.key, dest)

    async def read_small(self, name: str) -> bytes | None:
        path = self.root / name if name else self.root
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    async def write(self, name: str, data: bytes | memoryview) -> None:
        await _finish_in_thread(self._write, name, lambda handle: handle.write(data))

    async def write_file(self, name: str, path: Path) -> None:
        def copy(handle: BinaryIO) -> None:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, handle, 8 * MiB)

        await _finish_in_thread(self._write, name, copy)

    def _write(self, name: str, fill: Callable[[BinaryIO], object]) -> None:
        target = path_inside(self.root, name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            with open(temp, "wb") as handle:
                fill(handle)
            os.replace(temp, target)
        except PermissionError:
            raise WorkerError(f"permission denied writing {target}; choose an --output you can write to") from None

    async def names_under(self, under: str) -> builtins.list[str]:
        def walk() -> list[str]:
            base = self.root / under
            if not base.is_dir():
                return []
            return sorted(
                Path(folder, file).relative_to(self.root).as_posix()
                for folder, _, files in os.walk(base)
                for file in files
            )

        return await asyncio.to_thread(walk)

    async def delete(self, names: builtins.list[str]) -> None:
        def remove() -> None:
            for name in names:
                path = self.root / name
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                # Folders left empty go too (a pruned run's), up to the root.
                for parent in path.parents:
                    if parent == self.root or self.root not in parent.parents:
                        break
                    try:
                        parent.rmdir()
                    except OSError:
                        break

        await asyncio.to_thread(remove)

    def uri_of(self, name: str) -> str:
        if not name or self.root.is_file():
            return str(self.root)
        return str(self.root / name)


# ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_store(uri: str, *, endpoint_url: str | None = None, concurrency: int = 16) -> AsyncIterator[Store]:
    """A Store for ``uri``; for S3 one aiobotocore client with a pool sized to ``concurrency``.

    With no ``endpoint_url`` botocore's standard settings apply, ``AWS_ENDPOINT_URL`` included.
    """
    if not uri.startswith("s3://"):
        if "://" in uri and not uri.startswith("file://"):
            raise WorkerError(f"'{uri}' is neither s3://BUCKET/PREFIX nor a local path; use one of those")
        yield LocalStore(uri)
        return
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(
        max_pool_connections=max(1, concurrency),
        retries={"max_attempts": S3_ATTEMPTS, "mode": "adaptive"},
        connect_timeout=10,
        read_timeout=120,
    )
    session = get_session()
    async with session.create_client("s3", endpoint_url=endpoint_url, config=config) as client:
        yield S3Store(uri, client, concurrency)
