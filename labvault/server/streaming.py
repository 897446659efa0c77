"""Bodies both ways between the event loop and blocking blob stores.

In: ``with_body`` hands a request body to a worker thread as a blocking binary file (read chunk by chunk
from the loop, never held whole; over its limit: 413), ``DigestCheckingReader`` makes a body whose
sha256 is not the announced one fail at its end (so nothing is stored), ``ConcatReader`` reads the parts
of a resumable upload as one file. Out: ``send_blob`` streams a blob honouring a single ``Range``,
with digest and ETag headers when the digest is known.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from labvault import wire
from labvault.blobs.abc import CHUNK_SIZE, BlobStore
from labvault.errors import InvalidArgumentError, NotFoundError
from labvault.server.protocol import parse_range

__all__ = ["ConcatReader", "DigestCheckingReader", "send_blob", "stored_size", "with_body"]

T = TypeVar("T")


class _BodyReader(io.RawIOBase):
    """A request body as a blocking binary file, read from a worker thread (``anyio.to_thread``)."""

    def __init__(self, request: Request, limit: int | None, what: str) -> None:
        self._stream = request.stream().__aiter__()
        self._chunk = b""
        self._pos = 0
        self._done = False
        self._limit = limit
        self._what = what
        self.total = 0

    def readable(self) -> bool:
        return True

    async def _next(self) -> bytes:
        return await self._stream.__anext__()

    def readinto(self, buffer: Any) -> int:
        while self._pos >= len(self._chunk):
            if self._done:
                return 0
            try:
                chunk: bytes = anyio.from_thread.run(self._next)
            except StopAsyncIteration:
                self._done = True
                return 0
            self.total += len(chunk)
            if self._limit is not None and self.total > self._limit:
                raise HTTPException(413, f"{self._what} is larger than {self._limit} bytes")
            self._chunk, self._pos = chunk, 0
        n = min(len(buffer), len(self._chunk) - self._pos)
        buffer[:n] = self._chunk[self._pos : self._pos + n]
        self._pos += n
        return n


async def with_body(request: Request, limit: int | None, what: str, func: Callable[[BinaryIO], T]) -> T:
    """``func(body)`` in a worker thread, ``body`` the request's body as a blocking binary file (413 past
    ``limit`` bytes; ``what`` names it in that message)."""
    reader = io.BufferedReader(_BodyReader(request, limit, what), CHUNK_SIZE)
    return await anyio.to_thread.run_sync(func, reader)


class DigestCheckingReader(io.RawIOBase):
    """A body whose sha256 must be ``expected``: the read that reaches its end raises
    ``InvalidArgumentError`` instead of returning EOF when it is not, so the blob store abandons the
    write (nothing is stored under any digest) rather than committing content the client did not mean."""

    def __init__(self, raw: BinaryIO, expected: str) -> None:
        self._raw = raw
        self._expected = expected
        self._hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        if data:
            self._hash.update(data)
            buffer[: len(data)] = data
            return len(data)
        digest = self._hash.hexdigest()
        if digest != self._expected:
            raise InvalidArgumentError(f"uploaded content has sha256 {digest}, not {self._expected!r}")
        return 0


class ConcatReader(io.RawIOBase):
    """Several blobs read one after the other as one file (the parts of a resumable upload)."""

    def __init__(self, blobs: BlobStore, keys: list[str]) -> None:
        self._blobs = blobs
        self._keys = list(keys)
        self._current: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._current is None:
                if not self._keys:
                    return 0
                self._current = self._blobs.open(self._keys.pop(0))
            data = self._current.read(len(buffer))
            if data:
                buffer[: len(data)] = data
                return len(data)
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
        super().close()


# -- blob sizes and ranges -----------------------------------------------------------------------------------
def _blob_size(blobs: BlobStore, key: str, fh: BinaryIO) -> int | None:
    """The size of an open blob without reading it: by seeking, else from the store's own ``info`` (the
    default ``BlobStore.info`` reads the whole blob to hash it, so it is not asked); None when unknown."""
    with contextlib.suppress(Exception):
        if fh.seekable():
            pos = fh.tell()
            size = fh.seek(0, io.SEEK_END)
            fh.seek(pos)
            return int(size)
    if type(blobs)._info is not BlobStore._info:
        with contextlib.suppress(Exception):
            return int(blobs.info(key).size)
    return None


def stored_size(blobs: BlobStore, key: str) -> int:
    """The size of a stored blob (``NotFoundError`` when absent), read through only when nothing cheaper
    tells it."""
    fh = _open_blob(blobs, key)
    try:
        size = _blob_size(blobs, key, fh)
        if size is None:
            size = 0
            while chunk := fh.read(CHUNK_SIZE):
                size += len(chunk)
        return size
    finally:
        fh.close()


def _iter_range(fh: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """Yield bytes [start, end) of fh (end -1: to the end), closing it at the end."""
    try:
        if start:
            if fh.seekable():
                fh.seek(start)
            else:
                skip = start
                while skip > 0:
                    got = fh.read(min(CHUNK_SIZE, skip))
                    if not got:
                        break
                    skip -= len(got)
        left = None if end < 0 else end - start
        while left is None or left > 0:
            chunk = fh.read(CHUNK_SIZE if left is None else min(CHUNK_SIZE, left))
            if not chunk:
                break
            if left is not None:
                left -= len(chunk)
            yield chunk
    finally:
        fh.close()


def _open_blob(blobs: BlobStore, key: str) -> BinaryIO:
    try:
        return blobs.open(key)
    except FileNotFoundError as exc:
        raise NotFoundError(f"no blob {key!r}") from exc


async def send_blob(request: Request, blobs: BlobStore, key: str, *, size: int | None = None,
                     digest: str | None = None) -> Response:
    """Stream a blob, honouring a single ``Range``; digest and ETag headers when the digest is known."""
    fh = await run_in_threadpool(_open_blob, blobs, key)
    try:
        if size is None:
            size = await run_in_threadpool(_blob_size, blobs, key, fh)
        span = parse_range(request.headers.get("range"), size)
    except BaseException:
        fh.close()
        raise
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store"}
    if digest is not None:
        headers[wire.SHA256_HEADER] = digest
        headers["ETag"] = f'"{digest}"'
    if span is None:
        if size is not None:
            headers["Content-Length"] = str(size)
        return StreamingResponse(_iter_range(fh, 0, -1), headers=headers,
                                 media_type="application/octet-stream")
    start, end = span
    total = "*" if size is None else str(size)
    if end >= 0:
        headers["Content-Length"] = str(end - start)
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
    else:
        headers["Content-Range"] = f"bytes {start}-*/{total}"
    return StreamingResponse(_iter_range(fh, start, end), status_code=206, headers=headers,
                             media_type="application/octet-stream")

