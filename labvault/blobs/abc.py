"""The blob contract: ``BlobStore`` (bytes under keys, content addressing by sha256) and its helpers.

Public methods validate keys and sources, then call a private ``_hook`` a store implements;
content-addressed blobs live under ``sha256/<2>/<rest>`` keys and every read verifies the digest.
A store registers under a URL scheme by subclassing with a keyword (``class S(BlobStore, scheme="x")``).
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import shutil
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, ClassVar, Union
from urllib.parse import ParseResult, SplitResult

from labvault import _registry as registry
from labvault._fs import atomic_writer
from labvault.domain import validation as v
from labvault.domain.model import BlobInfo
from labvault.errors import ConflictError, CorruptDataError, InvalidArgumentError, NotFoundError

if TYPE_CHECKING:
    pass


#: What ``log_artifact`` and ``BlobStore.put`` accept: bytes, a filesystem path, or a binary file object.
BlobSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", IO[bytes]]


CHUNK_SIZE = 1024 * 1024


_HEX = frozenset("0123456789abcdef")


def iter_source(data: BlobSource, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield the bytes of ``data`` in chunks without ever holding a large file in memory."""
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for start in range(0, len(view), chunk_size):
            yield bytes(view[start : start + chunk_size])
        return
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.is_file():
            raise InvalidArgumentError(f"artifact source {str(path)!r} is not a readable file")
        with path.open("rb") as fh:
            while chunk := fh.read(chunk_size):
                yield chunk
        return
    read = getattr(data, "read", None)
    if not callable(read):
        raise InvalidArgumentError(
            f"artifact data must be bytes, a path or a binary file object, got {type(data).__name__}"
        )
    while True:
        chunk = read(chunk_size)
        if not chunk:
            return
        if not isinstance(chunk, bytes | bytearray):
            raise InvalidArgumentError("artifact file object must be opened in binary mode ('rb')")
        yield bytes(chunk)


class VerifyingReader(io.RawIOBase):
    """A read-only file over a blob that checks its sha256 digest when the end is reached.

    A mismatch raises ``CorruptDataError`` from the read that hits end of file, so a corrupted blob can
    never be read to the end silently.
    """

    def __init__(self, raw: BinaryIO, digest: str, name: str) -> None:
        self._raw = raw
        self._expected = digest
        self._hash = hashlib.sha256()
        self._name = name
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self._hash.update(memoryview(buffer)[:n])
        elif not self._done:
            self._done = True
            actual = self._hash.hexdigest()
            if actual != self._expected:
                raise CorruptDataError(
                    f"blob {self._name!r} is corrupt: sha256 {actual} does not match {self._expected}"
                )
        return n or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


_CONDITIONAL_LOCK = threading.Lock()


#: A blob key: a relative path such as ``"plots/roc.png"``, or a parsed URL (``urllib.parse.urlparse``)
#: inside the store's own URL.
BlobKey = Union[str, ParseResult, SplitResult]  # noqa: UP007 (a runtime alias, as BlobSource)


def _url_key(url: ParseResult | SplitResult, base: str | None) -> str:
    """The key a parsed URL names in the store at ``base`` (see ``BlobStore._key``)."""
    if url.query or url.fragment or (isinstance(url, ParseResult) and url.params):
        raise InvalidArgumentError(f"blob URL {url.geturl()!r} has a query or fragment: a key is a path")
    if not url.scheme and not url.netloc:
        return url.path
    text = url.geturl()
    if base is not None and text.startswith(base.rstrip("/") + "/"):
        return text[len(base.rstrip("/")) + 1:]
    where = f"this store's URL {base!r}" if base is not None else "this store (it has no URL: pass the key)"
    raise InvalidArgumentError(f"blob URL {text!r} is not inside {where}")


def precondition_failed(key: str, why: str) -> ConflictError:
    """The ``ConflictError`` a conditional blob write raises."""
    return ConflictError(f"precondition failed: blob {key!r} was not written because {why}")


def _check_source(data: object) -> None:
    """Reject what ``iter_source`` cannot read before a store starts writing."""
    if isinstance(data, bytes | bytearray | memoryview):
        return
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.is_file():
            raise InvalidArgumentError(f"blob source {str(path)!r} is not a readable file")
        return
    if not callable(getattr(data, "read", None)):
        raise InvalidArgumentError(
            f"blob data must be bytes, a path or a binary file object, got {type(data).__name__}"
        )


def _check_workers(workers: object) -> int | None:
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool)
                                or not 1 <= workers <= 256):
        raise InvalidArgumentError(f"workers must be an integer from 1 to 256, got {workers!r}")
    return workers


class BlobStore(ABC):
    """Bytes under keys, streamed both ways. Backends keep artifacts in one, content-addressed."""

    scheme: ClassVar[str | None] = None

    def __init_subclass__(cls, scheme: str | None = None, replace: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if scheme is not None:
            cls.scheme = scheme
            registry.register_blob_store(scheme, cls, replace=replace)

    @classmethod
    def backends(cls) -> dict[str, type[BlobStore]]:
        """Every blob store class by the URL scheme (prefix) it serves: built in, registered by
        subclassing or by entry point (statisfactory's ``backends()``). Imports each class."""
        from labvault import _registry as registry  # lazy: cycle _registry -> blobs.abc (type hints)

        return {scheme: registry.blob_store_class(scheme) for scheme in registry.known_blob_schemes()}

    def _key(self, key: BlobKey) -> str:
        """A key as given to a public method, checked: a string, or a parsed URL (``urllib.parse``) that
        is relative (its path is the key) or lies inside this store's own URL (the rest is the key)."""
        if isinstance(key, ParseResult | SplitResult):
            key = _url_key(key, getattr(self, "url", None))
        return self._check_key(key)

    # -- bytes by key ---------------------------------------------------------------------------------
    @abstractmethod
    def _put(self, key: str, chunks: Iterator[bytes]) -> int:
        """Store the chunks under key atomically (never a partial object visible); return the size."""

    @abstractmethod
    def _open(self, key: str) -> BinaryIO:
        """Open key for reading; raise NotFoundError when absent."""

    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[str]: ...

    # -- public API: validate, then call the hooks ------------------------------------------------------
    def put(self, key: BlobKey, data: BlobSource, *, if_absent: bool = False,
            if_match: str | None = None) -> int:
        """Store ``data`` (bytes, a path or a binary file object, streamed) under ``key``; return its size.

        The write is atomic: readers see the old content or the new, never part of it. Conditional
        writes raise ``ConflictError`` ("precondition failed ...") instead of writing: with
        ``if_absent=True`` when ``key`` exists already, with ``if_match=etag`` when the current etag of
        ``key`` (see ``info``) is not ``etag`` or ``key`` is missing.
        """
        key = self._key(key)
        if not isinstance(if_absent, bool):
            raise InvalidArgumentError(f"if_absent must be True or False, got {if_absent!r}")
        if if_match is not None and (not isinstance(if_match, str) or not if_match):
            raise InvalidArgumentError(f"if_match must be a non-empty etag string, got {if_match!r}")
        if if_absent and if_match is not None:
            raise InvalidArgumentError(f"put {key!r}: pass if_absent or if_match, not both")
        _check_source(data)
        return self._write(key, data, if_absent=if_absent, if_match=if_match)

    def get(self, key: BlobKey) -> bytes:
        """Return the whole content of ``key`` (``NotFoundError`` when absent)."""
        with self._open(self._key(key)) as fh:
            return fh.read()

    def open(self, key: BlobKey, mode: str = "rb") -> BinaryIO:
        """Open ``key`` for streaming reads (``mode`` must be ``"rb"``; write with ``put``)."""
        key = self._key(key)
        if mode != "rb":
            raise InvalidArgumentError(f"blob {key!r}: only mode 'rb' is supported, got {mode!r}; use put()")
        return self._open(key)

    def exists(self, key: BlobKey) -> bool:
        """Whether ``key`` is stored."""
        return self._exists(self._key(key))

    def delete(self, key: BlobKey) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        self._delete(self._key(key))

    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix``, sorted."""
        return sorted(self._list(v.validate_prefix(prefix)))

    def copy(self, src: BlobKey, dst: BlobKey) -> int:
        """Copy the blob ``src`` to ``dst`` (replacing it) inside this store; return the size."""
        return self._copy(self._key(src), self._key(dst))

    def info(self, key: BlobKey) -> BlobInfo:
        """Size, digest, modification time and etag of ``key`` (``NotFoundError`` when absent)."""
        return self._info(self._key(key))

    def scan(self, prefix: str = "") -> Iterator[BlobInfo]:
        """``BlobInfo`` of every blob under ``prefix``, in key order (what ``labvault gc`` walks).

        The digest is the sha256 when the store knows it without reading the content (content-addressed
        keys always), else the etag.
        """
        return self._scan(v.validate_prefix(prefix))

    def put_many(
        self, items: Iterable[tuple[str, BlobSource]], *, workers: int | None = None
    ) -> builtins.list[int]:
        """``put`` many (key, data) pairs; stores with a network round trip do them concurrently."""
        pairs = [(self._key(k), data) for k, data in items]
        for _k, data in pairs:
            _check_source(data)
        return self._put_many(pairs, _check_workers(workers))

    def get_many(self, keys: Iterable[str], *, workers: int | None = None) -> builtins.list[bytes]:
        """``get`` many keys (concurrently where that helps), in the order given."""
        return self._get_many([self._key(k) for k in keys], _check_workers(workers))

    def put_content_many(
        self, sources: Iterable[BlobSource], *, workers: int | None = None
    ) -> builtins.list[tuple[str, int]]:
        """``put_content`` many sources (concurrently where that helps); return their (digest, size)."""
        items = list(sources)
        for data in items:
            _check_source(data)
        return self._put_content_many(items, _check_workers(workers))

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove many keys (in batches where the store can); missing keys are not an error."""
        self._delete_many([self._key(k) for k in keys])

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- hooks with defaults (stores override what they can do better) -------------------------------------
    def _write(self, key: str, data: BlobSource, *, if_absent: bool, if_match: str | None) -> int:
        """Store ``data`` under ``key``, honouring the precondition; the default streams it to ``_put``."""
        if if_absent or if_match is not None:
            return self._put_if(key, iter_source(data), if_absent=if_absent, if_match=if_match)
        return self._put(key, iter_source(data))

    def _put_if(self, key: str, chunks: Iterator[bytes], *, if_absent: bool, if_match: str | None) -> int:
        """A conditional ``_put``. The default is atomic among the threads of this process only; stores
        shared between processes override it (O_EXCL / a lock file / the server's If-None-Match)."""
        with _CONDITIONAL_LOCK:
            self._check_precondition(key, if_absent, if_match)
            return self._put(key, chunks)

    def _check_precondition(self, key: str, if_absent: bool, if_match: str | None) -> None:
        """Raise ``ConflictError`` when ``key``'s current state does not satisfy the precondition."""
        if if_absent:
            if self._exists(key):
                raise precondition_failed(key, "it exists already (if_absent=True)")
        elif if_match is not None:
            try:
                current = self._info(key).etag
            except NotFoundError:
                raise precondition_failed(key, f"it does not exist (if_match={if_match!r})") from None
            if current != if_match:
                raise precondition_failed(key, f"its etag is {current!r}, not {if_match!r}")

    def _copy(self, src: str, dst: str) -> int:
        with self._open(src) as fh:
            return self._put(dst, iter_source(fh))

    def _info(self, key: str) -> BlobInfo:
        """The default reads the blob to hash it; its time is unknown, so it reports now (gc keeps it)."""
        sha = hashlib.sha256()
        size = 0
        with self._open(key) as fh:
            while chunk := fh.read(CHUNK_SIZE):
                sha.update(chunk)
                size += len(chunk)
        digest = sha.hexdigest()
        return BlobInfo(key, size, digest, time.time(), digest)

    def _scan(self, prefix: str) -> Iterator[BlobInfo]:
        for key in sorted(self._list(prefix)):
            try:
                yield self._info(key)
            except NotFoundError:
                continue  # deleted since it was listed

    def _put_many(
        self, pairs: builtins.list[tuple[str, BlobSource]], workers: int | None
    ) -> builtins.list[int]:
        return [self._write(k, data, if_absent=False, if_match=None) for k, data in pairs]

    def _get_many(self, keys: builtins.list[str], workers: int | None) -> builtins.list[bytes]:
        out = []
        for key in keys:
            with self._open(key) as fh:
                out.append(fh.read())
        return out

    def _put_content_many(
        self, items: builtins.list[BlobSource], workers: int | None
    ) -> builtins.list[tuple[str, int]]:
        return [self.put_content(data) for data in items]

    def _delete_many(self, keys: builtins.list[str]) -> None:
        for key in keys:
            self._delete(key)

    def _touch(self, key: str) -> None:
        """Mark an existing blob as just written (``put_content`` of content that is stored already), so
        ``labvault gc``'s grace period protects it from a concurrent collection. Default: nothing."""

    def sync(self) -> None:
        """Make every write so far survive a power loss (stores that group-commit override this)."""

    def close(self) -> None:
        """Release connections; the default has nothing to release."""

    @staticmethod
    def _check_key(key: str) -> str:
        return v.validate_artifact_key(key)

    # -- content addressing -----------------------------------------------------------------------------
    @staticmethod
    def digest_key(digest: str) -> str:
        """Where a content-addressed blob lives: ``sha256/ab/cd/<digest>``."""
        return f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"

    @staticmethod
    def key_digest(key: str) -> str | None:
        """The sha256 a content-addressed key names (the inverse of ``digest_key``), else None."""
        digest = key[-64:]
        if len(key) == 77 and key == BlobStore.digest_key(digest) and _HEX.issuperset(digest):
            return digest
        return None

    def put_content(self, data: BlobSource) -> tuple[str, int]:
        """Store ``data`` by its sha256 digest (once, however often it is put); return (digest, size).

        The default spools to a temporary file while hashing, so memory stays flat for any size; stores
        that can rename (the file store) override this to write in one pass.
        """
        sha = hashlib.sha256()
        size = 0
        with tempfile.TemporaryFile() as spool:
            for chunk in iter_source(data):
                sha.update(chunk)
                size += len(chunk)
                spool.write(chunk)
            digest = sha.hexdigest()
            key = self.digest_key(digest)
            if not self._exists(key):
                spool.seek(0)
                self._put(key, iter_source(spool))
            else:
                self._touch(key)
        return digest, size

    def open_content(self, digest: str) -> BinaryIO:
        """Open a content-addressed blob; reading it to the end verifies the digest."""
        try:
            raw = self._open(self.digest_key(digest))
        except FileNotFoundError as exc:
            raise NotFoundError(f"blob {digest} is missing from the blob store") from exc
        return io.BufferedReader(VerifyingReader(raw, digest, digest), CHUNK_SIZE)

    def copy_content_to(self, digest: str, dest: Path) -> int:
        """Write a content-addressed blob to the local file ``dest`` (verified; atomic); return its size."""
        with self.open_content(digest) as src, atomic_writer(dest, durable=False) as out:
            shutil.copyfileobj(src, out, CHUNK_SIZE)
            return out.tell()

    def get_content(self, digest: str) -> bytes:
        """Read a content-addressed blob whole and verify its digest."""
        with self._open(self.digest_key(digest)) as fh:
            data = fh.read()
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise CorruptDataError(f"blob {digest} is corrupt: its sha256 is {actual}")
        return data


def copy_stream(src: BinaryIO, dst: BinaryIO) -> None:
    """Copy one binary file to another in large chunks."""
    shutil.copyfileobj(src, dst, CHUNK_SIZE)
