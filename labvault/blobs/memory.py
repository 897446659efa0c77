"""``MemoryBlobStore``: process-private blobs in a dict (the reference blob store, ``memory://``).
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

from labvault.blobs.abc import BlobStore
from labvault.domain import now
from labvault.domain.model import BlobInfo
from labvault.errors import NotFoundError


class MemoryBlobStore(BlobStore, scheme="memory"):
    """Blobs in a dict."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._stamps: dict[str, float] = {}  # key -> last write time (BlobStore.info, gc)
        self._lock = threading.RLock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryBlobStore:
        """``memory://`` — a private in-process store."""
        return cls()

    def _put(self, key: str, chunks: Iterator[bytes]) -> int:
        data = b"".join(chunks)
        with self._lock:
            self._data[key] = data
            self._stamps[key] = now()
        return len(data)

    def _put_if(self, key: str, chunks: Iterator[bytes], *, if_absent: bool, if_match: str | None) -> int:
        data = b"".join(chunks)
        with self._lock:
            self._check_precondition(key, if_absent, if_match)
            self._data[key] = data
            self._stamps[key] = now()
        return len(data)

    def _info(self, key: str) -> BlobInfo:
        with self._lock:
            if key not in self._data:
                raise NotFoundError(f"no blob {key!r}")
            data, stamp = self._data[key], self._stamps.get(key, 0.0)
        digest = hashlib.sha256(data).hexdigest()
        return BlobInfo(key, len(data), digest, stamp, digest)

    def _touch(self, key: str) -> None:
        with self._lock:
            if key in self._data:
                self._stamps[key] = now()

    def _open(self, key: str) -> BinaryIO:
        try:
            return io.BytesIO(self._data[key])
        except KeyError as exc:
            raise NotFoundError(f"no blob {key!r}") from exc

    def _exists(self, key: str) -> bool:
        return key in self._data

    def _delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)
            self._stamps.pop(key, None)

    def _list(self, prefix: str) -> Iterator[str]:
        return iter([k for k in list(self._data) if k.startswith(prefix)])
