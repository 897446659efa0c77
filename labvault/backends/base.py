"""The storage contract: ``Backend`` (metadata) and ``BlobStore`` (bytes).

Public methods validate their arguments and then call a private ``_hook`` that a backend implements, so
every backend gets the same checks and error messages for free and implementations read top to bottom.
Capabilities are class attributes that callers and the conformance suite read; nobody checks
``isinstance`` on a backend class. Construction does no I/O: a backend connects, creates its store or
imports its driver on first use.

A backend registers itself under a URI scheme by subclassing with a keyword, as fsspec and
statisfactory do::

    class MyBackend(Backend, scheme="mine"):
        ...

after which ``labvault.open("mine://...")`` constructs it with ``MyBackend.from_uri(uri, ...)``.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import math
import os
import queue
import shutil
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, ClassVar, Union

import numpy as np

from labvault.domain import ArtifactInfo, ChangeEvent, ExperimentInfo, MetricSeries, RunInfo
from labvault.domain import validation as v
from labvault.domain.model import BlobInfo
from labvault.errors import ConflictError, CorruptDataError, InvalidArgumentError, NotFoundError

if TYPE_CHECKING:
    from labvault.query import Expr, OrderKey

#: What ``log_artifact`` and ``BlobStore.put`` accept: bytes, a filesystem path, or a binary file object.
BlobSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", IO[bytes]]

CHUNK_SIZE = 1024 * 1024
#: A re-sent metric batch is recognised (and skipped) while it is among its run's last this many batches.
#: Retries come seconds after the first attempt, so this is far beyond any retry; Redis also forgets a
#: batch id after ``labvault.backends.redis.BATCH_MEMORY`` seconds.
BATCH_MEMORY = 256
_HEX = frozenset("0123456789abcdef")
_BATCH_ID_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-")


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
            from labvault.backends import registry

            cls.scheme = scheme
            registry.register_blob_store(scheme, cls, replace=replace)

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
    def put(self, key: str, data: BlobSource, *, if_absent: bool = False, if_match: str | None = None) -> int:
        """Store ``data`` (bytes, a path or a binary file object, streamed) under ``key``; return its size.

        The write is atomic: readers see the old content or the new, never part of it. Conditional
        writes raise ``ConflictError`` ("precondition failed ...") instead of writing: with
        ``if_absent=True`` when ``key`` exists already, with ``if_match=etag`` when the current etag of
        ``key`` (see ``info``) is not ``etag`` or ``key`` is missing.
        """
        key = self._check_key(key)
        if not isinstance(if_absent, bool):
            raise InvalidArgumentError(f"if_absent must be True or False, got {if_absent!r}")
        if if_match is not None and (not isinstance(if_match, str) or not if_match):
            raise InvalidArgumentError(f"if_match must be a non-empty etag string, got {if_match!r}")
        if if_absent and if_match is not None:
            raise InvalidArgumentError(f"put {key!r}: pass if_absent or if_match, not both")
        _check_source(data)
        return self._write(key, data, if_absent=if_absent, if_match=if_match)

    def get(self, key: str) -> bytes:
        """Return the whole content of ``key`` (``NotFoundError`` when absent)."""
        with self._open(self._check_key(key)) as fh:
            return fh.read()

    def open(self, key: str, mode: str = "rb") -> BinaryIO:
        """Open ``key`` for streaming reads (``mode`` must be ``"rb"``; write with ``put``)."""
        key = self._check_key(key)
        if mode != "rb":
            raise InvalidArgumentError(f"blob {key!r}: only mode 'rb' is supported, got {mode!r}; use put()")
        return self._open(key)

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""
        return self._exists(self._check_key(key))

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        self._delete(self._check_key(key))

    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix``, sorted."""
        return sorted(self._list(v.validate_prefix(prefix)))

    def copy(self, src: str, dst: str) -> int:
        """Copy the blob ``src`` to ``dst`` (replacing it) inside this store; return the size."""
        return self._copy(self._check_key(src), self._check_key(dst))

    def info(self, key: str) -> BlobInfo:
        """Size, digest, modification time and etag of ``key`` (``NotFoundError`` when absent)."""
        return self._info(self._check_key(key))

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
        pairs = [(self._check_key(k), data) for k, data in items]
        for _k, data in pairs:
            _check_source(data)
        return self._put_many(pairs, _check_workers(workers))

    def get_many(self, keys: Iterable[str], *, workers: int | None = None) -> builtins.list[bytes]:
        """``get`` many keys (concurrently where that helps), in the order given."""
        return self._get_many([self._check_key(k) for k in keys], _check_workers(workers))

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
        self._delete_many([self._check_key(k) for k in keys])

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
        import time

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
        from labvault.backends.localfs import atomic_writer

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


class ChangeFeed(ABC):
    """A live stream of ``ChangeEvent``s from one store, oldest first, from the moment it was opened.

    Obtained with ``Backend.watch()``; iterate it (blocks), or poll with ``get(timeout)``. Close it (or
    use it as a context manager) to release its connection. Backends with ``supports_events`` deliver
    changes made by every process sharing the store; the others deliver the changes made through the
    same backend object only.
    """

    @abstractmethod
    def get(self, timeout: float | None = None) -> ChangeEvent | None:
        """The next event, waiting up to ``timeout`` seconds (forever when None); None on timeout."""

    @abstractmethod
    def close(self) -> None:
        """Stop receiving events. Safe to call twice."""

    def __enter__(self) -> ChangeFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[ChangeEvent]:
        while True:
            event = self.get(timeout=None)
            if event is None:
                return
            yield event


class LocalChangeFeed(ChangeFeed):
    """A feed fed in-process: by the backend object that opened it, or by a listener thread."""

    _CLOSED = object()

    def __init__(self, on_close: Any = None) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._on_close = on_close
        self.closed = False

    def put(self, event: ChangeEvent) -> None:
        """Deliver an event to this feed (called by the producer)."""
        if not self.closed:
            self._queue.put(event)

    def get(self, timeout: float | None = None) -> ChangeEvent | None:
        if self.closed and self._queue.empty():
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is self._CLOSED:
            self._queue.put(item)  # keep waking later getters
            return None
        assert isinstance(item, ChangeEvent)
        return item

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put(self._CLOSED)
            if self._on_close is not None:
                self._on_close(self)


class Backend(ABC):
    """Where a vault's metadata lives: experiments, runs, params, tags, metrics, results, artifact index.

    Subclasses implement the ``_hooks``; the public methods validate and delegate. ``blobs`` is the
    ``BlobStore`` holding artifact bytes, chosen by the backend or given with ``artifacts=``.
    """

    scheme: ClassVar[str | None] = None
    #: JSON schema for ``labvault.open(config={...})`` options beyond ``module`` / ``backend``.
    config_schema: ClassVar[Mapping[str, Any]] = {"type": "object"}
    #: The store survives the process (so several processes can share it).
    persistent: ClassVar[bool] = True
    #: Several processes may write at once.
    multiprocess: ClassVar[bool] = True
    #: ``watch()`` feeds see changes made by other processes too (LISTEN/NOTIFY, pub/sub, streams).
    supports_events: ClassVar[bool] = False
    supports_branches: ClassVar[bool] = False

    def __init_subclass__(cls, scheme: str | None = None, replace: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if scheme is not None:
            from labvault.backends import registry

            cls.scheme = scheme
            registry.register_backend(scheme, cls, replace=replace)

    def __init__(self, uri: str, blobs: BlobStore | None = None) -> None:
        self.uri = uri
        self._blobs = blobs
        self._feeds: list[LocalChangeFeed] = []
        self._feeds_lock = threading.Lock()

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> Backend:
        """Build the backend from a URI; do no I/O yet."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, artifacts: BlobStore | None = None) -> Backend:
        """Build the backend from a validated config mapping (its ``uri`` or ``url`` key by default)."""
        uri = config.get("uri") or config.get("url")
        if not isinstance(uri, str):
            raise InvalidArgumentError(f"config for {cls.__name__} needs a 'uri' string")
        options = {k: val for k, val in config.items() if k not in ("uri", "url", "module", "backend")}
        return cls.from_uri(uri, artifacts=artifacts, **options)

    @property
    def blobs(self) -> BlobStore:
        """The blob store holding this backend's artifact bytes."""
        if self._blobs is None:
            self._blobs = self._default_blobs()
        return self._blobs

    @abstractmethod
    def _default_blobs(self) -> BlobStore:
        """The blob store used when none was given with ``artifacts=``."""

    def sync(self) -> None:
        """Make every acknowledged write survive a power loss now (group commit).

        The vault calls this from its background flusher every ``flush_interval`` seconds, when a run
        ends and on close. The default syncs the blob store.
        """
        if self._blobs is not None:
            self._blobs.sync()

    def close(self) -> None:
        """Release connections and file handles. Safe to call twice."""
        if self._blobs is not None:
            self._blobs.sync()
            self._blobs.close()

    # -- change feed --------------------------------------------------------------------------------------
    def watch(self) -> ChangeFeed:
        """Open a feed of the changes made to this store from now on (see ``ChangeFeed``)."""
        return self._watch()

    def _watch(self) -> ChangeFeed:
        """In-process feed; cross-process backends override this (and ``_publish``)."""
        feed = LocalChangeFeed(on_close=self._drop_feed)
        with self._feeds_lock:
            self._feeds.append(feed)
        return feed

    def _drop_feed(self, feed: LocalChangeFeed) -> None:
        with self._feeds_lock:
            if feed in self._feeds:
                self._feeds.remove(feed)

    def _deliver_local(self, event: ChangeEvent) -> None:
        """Hand an event to the in-process feeds of this backend object."""
        if self._feeds:
            with self._feeds_lock:
                feeds = list(self._feeds)
            for feed in feeds:
                feed.put(event)

    def _publish(self, event: ChangeEvent) -> None:
        """Send an event to the feed after a successful write. Cross-process backends override this."""
        self._deliver_local(event)

    def _emit(self, kind: str, experiment_id: str | None = None, run_id: str | None = None,
              **data: Any) -> None:
        if self._feeds or self.supports_events:  # nobody can be listening otherwise
            self._publish(ChangeEvent(kind, experiment_id, run_id, data))

    # -- experiments --------------------------------------------------------------------------------------
    def ensure_experiment(self, name: str, project: str) -> ExperimentInfo:
        """Get the experiment, creating it when absent (safe when several processes race)."""
        from labvault.domain import now

        started = now()
        info = self._ensure_experiment(v.validate_name(name, "experiment name"),
                                       v.validate_name(project, "project name"))
        if info.created_at >= started:
            self._emit("experiment.created", info.id, None, name=info.name, project=info.project)
        return info

    def list_experiments(self, project: str | None = None) -> list[ExperimentInfo]:
        """Experiments, optionally of one project, ordered by creation time."""
        if project is not None:
            v.validate_name(project, "project name")
        return sorted(self._list_experiments(project), key=lambda e: (e.created_at, e.name))

    def find_experiment(self, name: str, project: str | None = None) -> ExperimentInfo:
        """The experiment named ``name`` (in ``project`` when given), or ``NotFoundError``."""
        v.validate_name(name, "experiment name")
        matches = [e for e in self.list_experiments(project) if e.name == name]
        if not matches:
            where = f" in project {project!r}" if project else ""
            raise NotFoundError(f"experiment {name!r} not found{where}")
        if len(matches) > 1:
            raise InvalidArgumentError(
                f"experiment {name!r} exists in several projects "
                f"({', '.join(sorted(e.project for e in matches))}): pass project="
            )
        return matches[0]

    def delete_experiment(self, experiment_id: str) -> None:
        """Delete an experiment with its runs, metrics and artifact index (blobs stay for gc)."""
        self._delete_experiment(_check_id(experiment_id, "experiment id"))
        self._emit("experiment.deleted", experiment_id)

    # -- runs ---------------------------------------------------------------------------------------------
    def create_run(
        self,
        experiment_id: str,
        *,
        name: str | None,
        parent_id: str | None,
        start_time: float,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        run_id: str | None = None,
    ) -> RunInfo:
        """Create a running run with the next dense run number of its experiment.

        ``run_id`` chooses the new run's id (sync uses it so a run keeps its id in every store); it is
        validated like every id, and an id that exists already raises ``AlreadyExistsError``. By default
        the backend generates a fresh one.
        """
        if name is not None:
            v.validate_name(name, "run name")
        if parent_id is not None:
            _check_id(parent_id, "parent run id")
        if run_id is not None:
            _check_id(run_id, "run id")
        v.validate_time(start_time, "start_time")
        info = self._create_run(
            _check_id(experiment_id, "experiment id"), name, parent_id, start_time,
            v.validate_params(params), v.validate_tags(tags), run_id=run_id,
        )
        self._emit("run.created", info.experiment_id, info.id, number=info.number, name=info.name,
                   parent_id=info.parent_id)
        return info

    def get_run(self, run_id: str) -> RunInfo:
        """The run with params, tags, results and latest metric values; ``NotFoundError`` if absent."""
        return self._get_run(_check_id(run_id, "run id"))

    def list_runs(self, experiment_ids: Sequence[str]) -> list[RunInfo]:
        """All runs of the experiments, with params, tags, results and latest metrics."""
        return self._list_runs([_check_id(i, "experiment id") for i in experiment_ids])

    def search_runs(
        self,
        experiment_ids: Sequence[str],
        expr: Expr,
        order: Sequence[OrderKey],
        limit: int | None,
        offset: int,
    ) -> list[RunInfo]:
        """Runs matching a parsed filter, sorted and paged. SQL backends compile the query."""
        v.validate_page(limit, offset)
        return self._search_runs([_check_id(i, "experiment id") for i in experiment_ids],
                                 expr, order, limit, offset)

    def _search_runs(
        self,
        experiment_ids: list[str],
        expr: Expr,
        order: Sequence[OrderKey],
        limit: int | None,
        offset: int,
    ) -> list[RunInfo]:
        from labvault import query

        runs = query.sort_runs(query.filter_runs(expr, self._list_runs(experiment_ids)), order)
        end = None if limit is None else offset + limit
        return runs[offset:end]

    def update_run(
        self,
        run_id: str,
        *,
        status: str | None = None,
        end_time: float | None = None,
        error: str | None = None,
        heartbeat: float | None = None,
    ) -> None:
        """Change a run's status, end time, error text or heartbeat."""
        from labvault.domain import RUN_STATUSES

        if status is not None and status not in RUN_STATUSES:
            raise InvalidArgumentError(f"run status {v.show(status)} is not one of {', '.join(RUN_STATUSES)}")
        if error is not None:
            v.validate_error_text(error)
        for what, when in (("end_time", end_time), ("heartbeat", heartbeat)):
            if when is not None:
                v.validate_time(when, what)
        fields: dict[str, Any] = {}
        for key, val in (("status", status), ("end_time", end_time), ("error", error),
                         ("heartbeat", heartbeat)):
            if val is not None:
                fields[key] = val
        if fields:
            self._update_run(_check_id(run_id, "run id"), fields)
            if set(fields) != {"heartbeat"}:  # heartbeats would flood the feed
                kind = f"run.{status}" if status in ("finished", "failed", "killed") else "run.updated"
                self._emit(kind, None, run_id, **{k: val for k, val in fields.items() if k != "heartbeat"})

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Write-once params: an equal value again is a no-op, a different one raises ``ConflictError``."""
        run_id = _check_id(run_id, "run id")
        checked = v.validate_params(params)
        if checked:
            self._log_params(run_id, checked)
            self._emit("params.logged", None, run_id, keys=sorted(checked))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Tags: the last write wins."""
        run_id = _check_id(run_id, "run id")
        checked = v.validate_tags(tags)
        if checked:
            self._set_tags(run_id, checked)
            self._emit("tags.set", None, run_id, keys=sorted(checked))

    def log_results(self, run_id: str, results: Mapping[str, Any]) -> None:
        """Named outputs; logging a name again replaces its value."""
        run_id = _check_id(run_id, "run id")
        checked = v.validate_params(results, "result")
        if checked:
            self._log_results(run_id, checked)
            self._emit("results.logged", None, run_id, keys=sorted(checked))

    def log_metrics(self, run_id: str, series: Sequence[MetricSeries], *,
                    batch_id: str | None = None) -> None:
        """Append batches of points; each series holds one key's steps, values and timestamps.

        ``batch_id`` (1 to 32 letters, digits, ``_`` or ``-``; a ``uuid4().hex`` fits) makes the append
        idempotent: when this run already holds a batch appended with the same id, the call changes
        nothing and emits no event. A writer that may re-send a batch whose first attempt's outcome it
        never learnt (a timed-out request, a dropped connection) passes one id per batch, so the batch
        is stored exactly once however often it travels. A backend recognises a re-sent batch while it
        is among the run's last ``BATCH_MEMORY`` batches (Redis: also for an hour), far beyond any retry.
        """
        run_id = _check_id(run_id, "run id")
        if batch_id is not None:
            check_batch_id(batch_id)
        batch = check_metric_batch(series)
        if batch and self._log_metrics(run_id, batch, batch_id):
            self._emit("metric.logged", None, run_id, keys=sorted({b.key for b in batch}),
                       points=sum(len(b) for b in batch))

    def metric_history(self, run_id: str, key: str) -> MetricSeries:
        """All points of one metric in logging order; empty when the key was never logged."""
        return self._metric_history(_check_id(run_id, "run id"), v.validate_key(key, "metric key"))

    def metric_keys(self, run_id: str) -> list[str]:
        """Keys of the metrics a run has logged."""
        return sorted(self.get_run(run_id).metrics)

    # -- artifacts ----------------------------------------------------------------------------------------
    def add_artifact(self, run_id: str, info: ArtifactInfo) -> None:
        """Record that a run's artifact ``info.key`` has the blob ``info.digest`` (replaces the key)."""
        v.validate_artifact_key(info.key)
        self._add_artifact(_check_id(run_id, "run id"), info)
        self._emit("artifact.logged", None, run_id, key=info.key, size=info.size, digest=info.digest)

    def add_artifacts(self, run_id: str, infos: Sequence[ArtifactInfo]) -> None:
        """``add_artifact`` for many artifacts of one run at once (one transaction where the store can)."""
        items = list(infos)
        for info in items:
            v.validate_artifact_key(info.key)
        if not items:
            return
        self._add_artifacts(_check_id(run_id, "run id"), items)
        for info in items:
            self._emit("artifact.logged", None, run_id, key=info.key, size=info.size, digest=info.digest)

    def list_artifacts(self, run_id: str, prefix: str = "") -> list[ArtifactInfo]:
        """A run's artifacts whose key starts with ``prefix``, sorted by key."""
        prefix = v.validate_prefix(prefix)
        items = self._list_artifacts(_check_id(run_id, "run id"), prefix)
        return sorted((a for a in items if a.key.startswith(prefix)), key=lambda a: a.key)

    def get_artifact_info(self, run_id: str, key: str) -> ArtifactInfo:
        """One artifact's index entry, or ``NotFoundError``."""
        v.validate_artifact_key(key)
        info = self._get_artifact_info(_check_id(run_id, "run id"), key)
        if info is None:
            raise NotFoundError(f"run {run_id} has no artifact {key!r}")
        return info

    def _get_artifact_info(self, run_id: str, key: str) -> ArtifactInfo | None:
        """One index entry or None; backends with a direct lookup override this prefix scan."""
        for info in self._list_artifacts(run_id, key):
            if info.key == key:
                return info
        return None

    # -- hooks (implemented by each backend) --------------------------------------------------------------
    @abstractmethod
    def _ensure_experiment(self, name: str, project: str) -> ExperimentInfo: ...

    @abstractmethod
    def _list_experiments(self, project: str | None) -> list[ExperimentInfo]: ...

    @abstractmethod
    def _delete_experiment(self, experiment_id: str) -> None: ...

    @abstractmethod
    def _create_run(
        self, experiment_id: str, name: str | None, parent_id: str | None, start_time: float,
        params: dict[str, Any], tags: dict[str, str], *, run_id: str | None = None,
    ) -> RunInfo:
        """Create the run (with id ``run_id`` when given: ``AlreadyExistsError`` if that id exists)."""

    @abstractmethod
    def _get_run(self, run_id: str) -> RunInfo: ...

    @abstractmethod
    def _list_runs(self, experiment_ids: list[str]) -> list[RunInfo]: ...

    @abstractmethod
    def _update_run(self, run_id: str, fields: dict[str, Any]) -> None: ...

    @abstractmethod
    def _log_params(self, run_id: str, params: dict[str, Any]) -> None: ...

    @abstractmethod
    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None: ...

    @abstractmethod
    def _log_results(self, run_id: str, results: dict[str, Any]) -> None: ...

    @abstractmethod
    def _log_metrics(self, run_id: str, series: list[MetricSeries], batch_id: str | None) -> bool:
        """Append one batch; False when ``batch_id`` names a batch the run holds already (nothing written).

        With a ``batch_id``, the check and the append must be atomic with respect to another append of the
        same id (a retry racing its first attempt), and the id must be remembered with the points."""

    @abstractmethod
    def _metric_history(self, run_id: str, key: str) -> MetricSeries: ...

    @abstractmethod
    def _add_artifact(self, run_id: str, info: ArtifactInfo) -> None: ...

    def _add_artifacts(self, run_id: str, infos: list[ArtifactInfo]) -> None:
        """Record several artifacts of a run; the default records them one by one."""
        for info in infos:
            self._add_artifact(run_id, info)

    @abstractmethod
    def _list_artifacts(self, run_id: str, prefix: str) -> list[ArtifactInfo]: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def run_exists_error(run_id: str) -> Exception:
    """The ``AlreadyExistsError`` ``create_run(run_id=...)`` raises for an id that is taken."""
    from labvault.errors import AlreadyExistsError

    return AlreadyExistsError(f"run id {run_id!r} exists already")


def check_metric_batch(series: Iterable[MetricSeries]) -> list[MetricSeries]:
    """The non-empty series of a metric batch, each checked (``InvalidArgumentError`` naming the metric)."""
    batch = []
    for s in series:
        v.validate_key(s.key, "metric key")
        n = len(s.values)
        if not (len(s.steps) == n == len(s.timestamps)):
            raise InvalidArgumentError(f"metric {s.key!r}: steps, values and timestamps differ in length")
        if n == 0:
            continue
        if s.steps.dtype != np.int64 or s.values.dtype != np.float64 or s.timestamps.dtype != np.float64:
            raise InvalidArgumentError(f"metric {s.key!r}: arrays must be int64 / float64 / float64")
        negative = s.steps < 0
        if negative.any():
            first = int(np.argmax(negative))
            raise v.step_error(s.key, int(s.steps[first]), f"steps[{first}]")
        finite = np.isfinite(s.timestamps)
        if not finite.all():
            first = int(np.argmin(finite))
            v.validate_time(float(s.timestamps[first]), f"metric {s.key!r} timestamps[{first}]")
        batch.append(s)
    return batch


def check_run_id(value: object) -> str:
    """A run id as every backend accepts it (``InvalidArgumentError`` otherwise)."""
    return _check_id(value, "run id")


def check_batch_id(value: object) -> str:
    """A metric batch id: 1 to 32 ASCII letters, digits, ``_`` or ``-`` (else ``InvalidArgumentError``)."""
    if not isinstance(value, str) or not 0 < len(value) <= 32 or not _BATCH_ID_CHARS.issuperset(value):
        shown = value[:80] if isinstance(value, str) else value
        raise InvalidArgumentError(
            f"metric batch id {shown!r} must be 1 to 32 letters, digits, '_' or '-' (e.g. uuid4().hex)")
    return value


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not (value.isalnum() and value.isascii()):
        raise InvalidArgumentError(f"{what} {v.show(value)} is not a valid labvault id")
    return value


def check_options(backend: str, options: Mapping[str, Any], known: Iterable[str]) -> None:
    """Raise ``InvalidArgumentError`` naming every option a backend does not understand."""
    allowed = sorted(known)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InvalidArgumentError(
            f"unknown option(s) for the {backend} backend: {', '.join(unknown)} (known: {', '.join(allowed)})"
        )


def int_option(owner: str, name: str, value: Any, low: int, high: int) -> int:
    """An integer option in ``[low, high]``, also from URL text; ``InvalidArgumentError`` naming it."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise InvalidArgumentError(f"{owner} option {name}={value!r} must be an integer") from None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidArgumentError(f"{owner} option {name}={value!r} must be an integer from {low} to {high}")
    return value


def float_option(owner: str, name: str, value: Any, low: float, high: float, *,
                 exclusive_low: bool = False) -> float:
    """A finite number option in ``[low, high]`` (``(low, high]`` with ``exclusive_low``), also from text."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InvalidArgumentError(f"{owner} option {name}={value!r} must be a number") from None
    above_low = value > low if exclusive_low else value >= low
    if (not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value)
            or not above_low or not value <= high):
        interval = f"({low}, {high}]" if exclusive_low else f"[{low}, {high}]"
        raise InvalidArgumentError(f"{owner} option {name}={value!r} must be a number in {interval}")
    return float(value)


def bool_option(owner: str, name: str, value: Any) -> bool:
    """A boolean option: a bool, or 1/0, true/false, yes/no, on/off as URL text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise InvalidArgumentError(f"{owner} option {name}={value!r} must be true or false")


def check_params_conflict(run_id: str, stored: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Raise ``ConflictError`` naming every param whose new value differs from the stored one."""
    from labvault.errors import ConflictError

    clashes = [k for k, val in new.items() if k in stored and not _same_json(stored[k], val)]
    if clashes:
        detail = ", ".join(f"{k!r}: stored {stored[k]!r}, new {new[k]!r}" for k in clashes)
        raise ConflictError(f"params are write-once; run {run_id} already has {detail}")


def _same_json(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b if not isinstance(a, int | float) or isinstance(a, bool) \
        else (isinstance(b, int | float) and not isinstance(b, bool) and a == b)


def copy_stream(src: BinaryIO, dst: BinaryIO) -> None:
    """Copy one binary file to another in large chunks."""
    shutil.copyfileobj(src, dst, CHUNK_SIZE)
