"""``TieredBlobStore``: small blobs in one store, larger ones in another (SQLite's default artifact store).

SQLite stores keep blobs of at most ``SMALL_BLOB_LIMIT`` bytes inside the database (``SQLBlobStore``: one
transaction, no file to create and fsync) and larger ones as files beside it (``FileBlobStore``). This
module holds the routing only: which tier a write goes to (by size, reading at most ``limit + 1`` bytes
of a stream to decide) and the read order (small first). It works over any two stores.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

from labvault.blobs.abc import BlobSource, BlobStore
from labvault.domain.model import BlobInfo
from labvault.errors import InvalidArgumentError, NotFoundError

__all__ = ["SMALL_BLOB_LIMIT", "TieredBlobStore"]

#: Blobs up to this size go to the small tier (an SQLite store's database); larger ones to the large tier.
SMALL_BLOB_LIMIT = 64 * 1024

T = TypeVar("T")


class _PrefixedReader:
    """A binary file object that returns ``head`` first, then the rest of ``rest``."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if self._head:
            n = len(self._head) if size < 0 else min(size, len(self._head))
            out = bytes(self._head[:n])
            self._head = self._head[n:]
            return out
        data = self._rest.read(size)
        return bytes(data) if data else b""


class TieredBlobStore(BlobStore):
    """Small blobs (<= ``limit`` bytes) in one store, larger ones in another; reads try small first.

    SQLite's default: small blobs inside the database (one transaction, no file to create and fsync, so
    thousands of small artifacts a second), large ones as files in the sibling folder (copied by the
    kernel, verified on read). Writing a key into one tier removes it from the other, so reads never
    find a stale copy.
    """

    def __init__(self, small: BlobStore, large: BlobStore, limit: int = SMALL_BLOB_LIMIT) -> None:
        self.small = small
        self.large = large
        self.limit = limit

    def __repr__(self) -> str:
        return f"TieredBlobStore({self.small!r}, {self.large!r}, limit={self.limit})"

    @property
    def pending(self) -> Any:
        """The large tier's group-commit queue (files written since the last ``sync``)."""
        return getattr(self.large, "pending", None)

    def _read_head(self, read: Callable[[int], Any]) -> bytes:
        """Up to ``limit + 1`` bytes from a file object's ``read`` (fewer only at its end)."""
        parts: list[bytes] = []
        got = 0
        while got <= self.limit:
            chunk = read(self.limit + 1 - got)
            if not chunk:
                break
            if not isinstance(chunk, bytes | bytearray):
                raise InvalidArgumentError("artifact file object must be opened in binary mode ('rb')")
            parts.append(bytes(chunk))
            got += len(chunk)
        return b"".join(parts)

    def put_content(self, data: BlobSource) -> tuple[str, int]:
        """Store by digest in the tier its size picks (a stream's first ``limit + 1`` bytes decide)."""
        if isinstance(data, bytes | bytearray | memoryview):
            return (self.small if len(data) <= self.limit else self.large).put_content(data)
        if isinstance(data, str | os.PathLike):
            path = Path(data)
            try:
                small = path.is_file() and path.stat().st_size <= self.limit
            except OSError:
                small = False
            if small:
                with path.open("rb") as fh:
                    return self.put_content(_PrefixedReader(b"", fh))  # type: ignore[arg-type]
            return self.large.put_content(data)
        read = getattr(data, "read", None)
        if not callable(read):
            return self.large.put_content(data)  # raises InvalidArgumentError naming the type
        head = self._read_head(read)
        if len(head) <= self.limit:
            return self.small.put_content(head)
        return self.large.put_content(_PrefixedReader(head, data))  # type: ignore[arg-type]

    def _put_content_many(self, items: list[BlobSource], workers: int | None) -> list[tuple[str, int]]:
        """Small in-memory blobs to the small tier in one batch; everything else one by one."""
        small = [i for i, d in enumerate(items)
                 if isinstance(d, bytes | bytearray | memoryview) and len(d) <= self.limit]
        out: list[tuple[str, int] | None] = [None] * len(items)
        for i, stored in zip(small, self.small.put_content_many([items[i] for i in small]), strict=True):
            out[i] = stored
        for i, data in enumerate(items):
            if out[i] is None:
                out[i] = self.put_content(data)
        return cast(list[tuple[str, int]], out)

    def _put(self, key: str, chunks: Iterator[bytes]) -> int:
        parts: list[bytes] = []
        got = 0
        for chunk in chunks:
            parts.append(chunk)
            got += len(chunk)
            if got > self.limit:
                break
        if got <= self.limit:
            size = self.small._put(key, iter([b"".join(parts)]))
            self.large._delete(key)
            return size
        size = self.large._put(key, itertools.chain(parts, chunks))
        self.small._delete(key)
        return size

    def _either(self, call: Callable[[BlobStore], T]) -> T:
        """``call`` on the small tier, or on the large one when the small one has not got the blob."""
        try:
            return call(self.small)
        except NotFoundError:
            return call(self.large)

    def _open(self, key: str) -> BinaryIO:
        return self._either(lambda tier: tier._open(key))

    def _info(self, key: str) -> BlobInfo:
        return self._either(lambda tier: tier._info(key))

    def open_content(self, digest: str) -> BinaryIO:
        """Open a content-addressed blob from the tier holding it (verified when read to the end)."""
        return self._either(lambda tier: tier.open_content(digest))

    def get_content(self, digest: str) -> bytes:
        """Read a content-addressed blob whole from the tier holding it, verified."""
        return self._either(lambda tier: tier.get_content(digest))

    def copy_content_to(self, digest: str, dest: Path) -> int:
        """Copy a content-addressed blob from the tier holding it to ``dest`` (verified, atomic)."""
        if self.small._exists(self.digest_key(digest)):
            return self.small.copy_content_to(digest, dest)
        return self.large.copy_content_to(digest, dest)

    def _exists(self, key: str) -> bool:
        return self.small._exists(key) or self.large._exists(key)

    def _delete(self, key: str) -> None:
        self.small._delete(key)
        self.large._delete(key)

    def _list(self, prefix: str) -> Iterator[str]:
        return iter(sorted(set(self.small._list(prefix)) | set(self.large._list(prefix))))

    def sync(self) -> None:
        """Make both tiers' writes durable."""
        self.small.sync()
        self.large.sync()

    def close(self) -> None:
        """Close both tiers."""
        self.small.close()
        self.large.close()
