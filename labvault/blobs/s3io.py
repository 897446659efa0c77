"""The byte streams of the S3 store: what uploads read parts from, and what downloads verify.

* ``PartSource`` (``FileParts`` over a binary file, ``Chunked`` over an iterator of chunks) hands a
  multipart upload one part at a time, so a part costs its size in memory once.
* ``S3Reader`` turns a GetObject body into a raw file: read errors become ``BackendUnavailableError``,
  and the length and the SHA-256 the server stored (whole-object, or composite over the parts labvault
  wrote) are checked when the body ends.
* ``RangedDownload`` fetches an object as ranged GETs in parallel, each written at its offset of a file,
  while one more thread hashes the completed prefix back from the file.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import io
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from labvault.blobs.abc import CHUNK_SIZE
from labvault.errors import BackendUnavailableError, CorruptDataError, InvalidArgumentError

__all__ = ["Chunked", "FileParts", "PartSource", "RangedDownload", "S3Reader", "b64"]


def b64(raw: bytes) -> str:
    """Base64 text of a digest, as S3's checksum headers carry it."""
    return base64.b64encode(raw).decode("ascii")


class PartSource:
    """Something parts are read from: ``read(n)`` returns up to n bytes, fewer only at the end."""

    def read(self, n: int) -> bytes:
        raise NotImplementedError


class FileParts(PartSource):
    """Parts read from a binary file object (a file, a pipe, a spooled stream)."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh

    def read(self, n: int) -> bytes:
        first = self._fh.read(n)
        if isinstance(first, bytes) and (len(first) == n or not first):
            return first  # the usual case (a file): no copies, so a part costs its size in memory once
        out = bytearray()
        if first:
            if not isinstance(first, bytes | bytearray):
                raise InvalidArgumentError("blob file object must be opened in binary mode ('rb')")
            out += first
        while len(out) < n:
            chunk = self._fh.read(n - len(out))
            if not chunk:
                break
            if not isinstance(chunk, bytes | bytearray):
                raise InvalidArgumentError("blob file object must be opened in binary mode ('rb')")
            out += chunk
        return bytes(out)


class Chunked(PartSource):
    """Parts cut from an iterator of chunks of any size."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._rest = b""

    def read(self, n: int) -> bytes:
        parts = [self._rest]
        have = len(self._rest)
        while have < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self._rest = data[n:]
        return data[:n]


class S3Reader(io.RawIOBase):
    """A GetObject body as a raw file: errors translated, length and SHA-256 (full or composite) checked."""

    def __init__(self, where: str, body: Any, length: int, checksum: str | None,
                 part_size: int | None) -> None:
        self._where = where
        self._body = body
        self._length = length
        self._read = 0
        self._checksum = checksum
        self._composite = checksum is not None and "-" in checksum
        if self._composite and not part_size:
            self._checksum = None  # composite of unknown part boundaries (not written by labvault)
        self._part_size = part_size or 0
        self._whole = hashlib.sha256()
        self._part = hashlib.sha256()
        self._in_part = 0
        self._part_digests: builtins.list[bytes] = []
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except Exception as exc:  # botocore's errors, OSError, and urllib3's ProtocolError / IncompleteRead
            raise BackendUnavailableError(
                f"S3 read of {self._where} broke off after {self._read} bytes: {exc}"
            ) from exc
        n = len(data)
        if n:
            view[:n] = data
            self._read += n
            if self._checksum:
                self._hash(data)
        elif not self._done:
            self._done = True
            self._finish()
        return n

    def _hash(self, data: bytes) -> None:
        if not self._composite:
            self._whole.update(data)
            return
        pos = 0
        while pos < len(data):
            take = min(len(data) - pos, self._part_size - self._in_part)
            self._part.update(data[pos:pos + take])
            self._in_part += take
            pos += take
            if self._in_part == self._part_size:
                self._part_digests.append(self._part.digest())
                self._part = hashlib.sha256()
                self._in_part = 0

    def _finish(self) -> None:
        where = self._where
        if self._length >= 0 and self._read != self._length:
            raise BackendUnavailableError(
                f"S3 read of {where} ended after {self._read} of {self._length} bytes"
            )
        if not self._checksum:
            return
        if self._composite:
            if self._in_part:
                self._part_digests.append(self._part.digest())
            combined = hashlib.sha256(b"".join(self._part_digests)).digest()
            actual = f"{b64(combined)}-{len(self._part_digests)}"
        else:
            actual = b64(self._whole.digest())
        if actual != self._checksum:
            raise CorruptDataError(
                f"blob {where} is corrupt: its SHA-256 checksum {actual} is not {self._checksum}"
            )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()
        super().close()


class RangedDownload:
    """An object fetched as ranged GETs of ``part_size`` bytes, written at their offsets of the file
    ``fd`` (already ``size`` bytes long) by ``workers`` threads, and hashed in order meanwhile.

    ``get_range(start, end)`` returns a GetObject answer for bytes ``start .. end - 1``. The first failure
    stops the other parts at their next chunk and is raised by ``run``.
    """

    def __init__(self, fd: int, size: int, part_size: int, get_range: Callable[[int, int], Any],
                 where: str) -> None:
        self._fd = fd
        self._get_range = get_range
        self._where = where
        self._ranges = [(start, min(size, start + part_size)) for start in range(0, size, part_size)]
        self._done = [False] * len(self._ranges)
        self._failed = threading.Event()
        self._ready = threading.Condition()

    def run(self, workers: int) -> str | None:
        """Download every range; return the sha256 (hex) of the file's bytes."""
        with ThreadPoolExecutor(workers + 1, thread_name_prefix="labvault-s3-get") as pool:
            verified = pool.submit(self._check)
            parts = [pool.submit(self._fetch, i) for i in range(len(self._ranges))]
            for part in parts:
                part.result()  # the first failure raises (the others stop at their next chunk)
            return verified.result()

    def _fetch(self, i: int) -> None:
        start, end = self._ranges[i]
        failed = self._failed
        try:
            if failed.is_set():
                return  # another part failed: the download is abandoned
            body, pos = self._get_range(start, end)["Body"], start
            try:
                while pos < end and not failed.is_set():
                    chunk = body.read(min(CHUNK_SIZE, end - pos))
                    if not chunk:
                        break
                    os.pwrite(self._fd, chunk, pos)
                    pos += len(chunk)
            finally:
                body.close()
            if pos != end and not failed.is_set():
                raise BackendUnavailableError(
                    f"S3 read of {self._where} bytes {start}-{end - 1} ended at {pos}")
        except BaseException:
            failed.set()
            raise
        finally:
            with self._ready:
                self._done[i] = True
                self._ready.notify_all()

    def _check(self) -> str | None:
        sha = hashlib.sha256()
        for i, (start, end) in enumerate(self._ranges):
            with self._ready:
                self._ready.wait_for(lambda i=i: self._done[i] or self._failed.is_set())  # type: ignore[misc]
            if self._failed.is_set():
                return None
            pos = start
            while pos < end:
                data = os.pread(self._fd, min(CHUNK_SIZE, end - pos), pos)
                sha.update(data)
                pos += len(data)
        return sha.hexdigest()
