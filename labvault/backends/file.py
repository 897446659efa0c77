"""The file backend: a directory of human-readable JSON documents plus append-only metric segments.

URIs: ``./dir``, ``/abs/dir`` or ``file://dir`` / ``file:///abs/dir``. Options: ``durable`` (default
``True``; also ``?durable=false`` on a ``file://`` URI).

Durability: every write is atomic at once (documents are replaced by temp file + rename, appends are
crc-framed), so a killed process never leaves a torn store. With ``durable=True`` a document is fsynced
before its rename (after a power failure a name never points at torn data), and the directory fsyncs and
the fsyncs of appended files are group-committed: queued and run together by ``sync()``, which the vault's
flusher calls every ``flush_interval`` seconds and at run end and close. A power failure can so lose the
writes of the last interval (the store then shows their previous state) but never corrupt the store.
``durable=False`` skips every fsync: still safe against a killed process, but after a power failure the
last writes may be lost or, on some filesystems, left empty.

Layout::

    <root>/labvault.json                          {"format": "labvault-file", "version": 1}
    <root>/experiments/<exp_id>/experiment.json   id, name, project, created_at (immutable)
    <root>/experiments/<exp_id>/runs/<number>/    one directory per run, named by its run number (000001)
        run.json         id, experiment_id, number, name, parent_id, status, start_time, end_time, error,
                         heartbeat, params, tags, results (one document: one read per run in listings)
        artifacts.jsonl  append-only manifest, one JSON line {key, digest, size, created_at}; last wins
        metrics/<quote(key, safe="")>.seg   append-only binary records (see below)
        metrics/latest.json                 {key: {value, step, timestamp, offset}}: the last point per key
        metrics/<name>.key                  {"key": ...} for a key too long for a file name (hashed name)
    <root>/runs/<run_id> -> ../experiments/<exp_id>/runs/<number>    index (a relative symlink)
    <root>/locks/        lock files: experiments.lock, run-<run_id>.lock
    <root>/trash/        experiments being deleted (renamed here first, then removed)
    <root>/blobs/        FileBlobStore: content-addressed artifact bytes (sha256/ab/cd/<digest>)

Run numbers: a run is created by ``mkdir experiments/<exp_id>/runs/<number>``. ``mkdir`` is atomic and
exclusive across processes, so the process that creates the directory owns the number; losers try the next
one. Numbers are dense and unique without a counter or a lock (a process killed between ``mkdir`` and
writing ``run.json`` burns its number; listings skip directories without ``run.json``). The run id index is
a relative symlink written before ``run.json``, so every listed run can be found by id.

Metric segments: each ``log_metrics`` call appends, per key, one record::

    header  16 bytes  b"LVS1", uint32 n, uint32 crc32(n as uint32 LE + payload), uint32 0   (little-endian)
    payload 24n bytes steps int64[n], values float64[n], timestamps float64[n]              (little-endian)

appended with ``O_APPEND`` (fsynced at the next ``sync()``). A reader ignores an incomplete or crc-failing
*last* record (a writer killed mid-append) and raises ``CorruptDataError`` for a bad record followed by
valid ones. Writers append under the run lock and first cut such a torn tail off (``latest.json`` records
the end offset of each segment, so the check is one ``fstat``), so a torn record never ends up in the middle
of a file.

``latest.json`` is a summary of the segments, replaced atomically (temp file + rename) but without fsync. If
it is lost or unreadable after a power failure it is rebuilt from the segments (long keys keep their name in
a ``.key`` sidecar); after a power failure it may lag the segments by the last flush until the key is logged
again.

Locking (``filelock.FileLock`` in ``<root>/locks``, each paired with an in-process ``threading.Lock`` so
threads of one process queue without polling): one lock per run for every read-modify-write of ``run.json``,
``latest.json`` and the segment / manifest appends; one store-wide lock for creating and deleting
experiments, so get-or-create by (project, name) is safe when several processes race.

Experiment documents and the run id -> directory mapping are immutable, so they are cached in memory.
Deleting an experiment renames its directory into ``trash/`` (atomic: a crash never leaves half an
experiment visible), unlinks its index entries and lock files, then removes the trash directory.

OS errors (permission denied, disk full, ...) raise ``BackendUnavailableError`` naming the path; an
unparseable document raises ``CorruptDataError`` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import math
import os
import shutil
import struct
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import numpy as np
from filelock import FileLock

from labvault.backends.base import Backend, BlobStore, check_options, check_params_conflict
from labvault.backends.localfs import FileBlobStore, SyncQueue, atomic_write_bytes, fsync_dir, path_from_uri
from labvault.domain import ArtifactInfo, ExperimentInfo, MetricSeries, RunInfo, now
from labvault.errors import (
    BackendUnavailableError,
    CorruptDataError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
    UnsupportedOperationError,
)

FORMAT_NAME = "labvault-file"
FORMAT_VERSION = 1

SEG_MAGIC = b"LVS1"
_HEADER = struct.Struct("<4sIII")
HEADER_SIZE = _HEADER.size  # 16
_N_STRUCT = struct.Struct("<I")
#: Largest number of points in one segment record (a bigger batch is split).
MAX_RECORD_POINTS = 1 << 22
_MAX_SEG_NAME = 200

_F = TypeVar("_F", bound=Callable[..., Any])


def _translate_os_errors(func: _F) -> _F:
    """Turn OS errors escaping a hook into ``BackendUnavailableError`` naming the path."""

    @functools.wraps(func)
    def wrapper(self: FileBackend, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(self, *args, **kwargs)
        except LabvaultError:
            raise
        except OSError as exc:
            where = exc.filename if exc.filename is not None else self.root
            reason = exc.strerror or str(exc)
            raise BackendUnavailableError(f"file store {str(self.root)!r}: cannot access {str(where)!r}: "
                                          f"{reason}") from exc

    return cast(_F, wrapper)


def seg_name(key: str) -> str:
    """The segment file name of a metric key: ``quote(key, safe="")`` (shortened with a hash if long)."""
    name = quote(key, safe="")
    if len(name) > _MAX_SEG_NAME:
        # '~' never occurs in a quoted key (keys cannot contain it), so hashed names cannot collide.
        name = f"{name[:150]}~{hashlib.sha256(key.encode()).hexdigest()[:24]}"
    return name + ".seg"


def encode_record(steps: np.ndarray[Any, Any], values: np.ndarray[Any, Any],
                  timestamps: np.ndarray[Any, Any]) -> bytes:
    """One segment record (header + payload) for parallel arrays of n points."""
    n = int(values.shape[0])
    payload = b"".join((
        np.ascontiguousarray(steps, dtype="<i8").tobytes(),
        np.ascontiguousarray(values, dtype="<f8").tobytes(),
        np.ascontiguousarray(timestamps, dtype="<f8").tobytes(),
    ))
    crc = zlib.crc32(payload, zlib.crc32(_N_STRUCT.pack(n)))
    return _HEADER.pack(SEG_MAGIC, n, crc, 0) + payload


def _record_at(data: bytes | memoryview, pos: int) -> tuple[int, int] | None:
    """(n, end) of a valid record starting at ``pos``, or None when it is torn or corrupt."""
    size = len(data)
    if size - pos < HEADER_SIZE:
        return None
    magic, n, crc, _flags = _HEADER.unpack_from(data, pos)
    end = pos + HEADER_SIZE + 24 * n
    if magic != SEG_MAGIC or end > size:
        return None
    view = memoryview(data)[pos + HEADER_SIZE:end]
    if zlib.crc32(view, zlib.crc32(_N_STRUCT.pack(n))) != crc:
        return None
    return n, end


def scan_segment(data: bytes, name: str) -> tuple[list[tuple[int, int]], int]:
    """Valid records of a segment file as (payload offset, n), and the end offset of the last one.

    A bad record with nothing valid after it is a torn tail and is ignored; a bad record followed by a
    valid one is corruption in the middle and raises ``CorruptDataError``.
    """
    records: list[tuple[int, int]] = []
    pos = 0
    size = len(data)
    while pos < size:
        found = _record_at(data, pos)
        if found is None:
            nxt = data.find(SEG_MAGIC, pos + 1)
            while nxt != -1:
                if _record_at(data, nxt) is not None:
                    raise CorruptDataError(
                        f"metric segment {name} is corrupt: bad record at byte {pos} followed by valid data"
                    )
                nxt = data.find(SEG_MAGIC, nxt + 1)
            break  # a torn tail: ignore it
        n, end = found
        records.append((pos + HEADER_SIZE, n))
        pos = end
    return records, pos


def decode_segment(key: str, data: bytes, name: str) -> MetricSeries:
    """Every valid point of a segment file, in append order."""
    records, _end = scan_segment(data, name)
    if not records:
        return MetricSeries.empty(key)
    if len(records) == 1:
        off, n = records[0]
        return MetricSeries(
            key,
            np.frombuffer(data, dtype="<i8", count=n, offset=off).astype(np.int64),
            np.frombuffer(data, dtype="<f8", count=n, offset=off + 8 * n).astype(np.float64),
            np.frombuffer(data, dtype="<f8", count=n, offset=off + 16 * n).astype(np.float64),
        )
    steps = [np.frombuffer(data, dtype="<i8", count=n, offset=off) for off, n in records]
    values = [np.frombuffer(data, dtype="<f8", count=n, offset=off + 8 * n) for off, n in records]
    stamps = [np.frombuffer(data, dtype="<f8", count=n, offset=off + 16 * n) for off, n in records]
    return MetricSeries(
        key,
        np.concatenate(steps).astype(np.int64, copy=False),
        np.concatenate(values).astype(np.float64, copy=False),
        np.concatenate(stamps).astype(np.float64, copy=False),
    )


def _enc_float(x: float) -> float | str:
    return x if math.isfinite(x) else repr(x)  # 'nan', 'inf', '-inf': strict JSON has no NaN


def _dec_float(x: Any) -> float:
    return float(x)


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _read_fd(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _manifest_valid_end(fd: int, size: int) -> int:
    if os.pread(fd, 1, size - 1) == b"\n":
        return size
    return _read_fd(fd, size).rfind(b"\n") + 1  # cut a torn last line


class _Lock:
    """A cross-process file lock plus an in-process thread lock (threads queue without polling)."""

    __slots__ = ("_file", "_thread")

    def __init__(self, path: Path) -> None:
        self._thread = threading.Lock()
        self._file = FileLock(str(path), thread_local=False, poll_interval=0.002)

    def __enter__(self) -> None:
        self._thread.acquire()
        try:
            self._file.acquire()
        except BaseException:
            self._thread.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self._file.release()
        finally:
            self._thread.release()


class FileBackend(Backend, scheme="file"):
    """Experiments and runs as JSON documents in a directory tree; metrics as append-only segments."""

    config_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "properties": {
            "module": {"type": "string"},
            "backend": {"type": "string"},
            "uri": {"type": "string", "minLength": 1},
            "url": {"type": "string", "minLength": 1},
            "durable": {"type": "boolean"},
        },
        "anyOf": [{"required": ["uri"]}, {"required": ["url"]}],
        "additionalProperties": False,
    }
    persistent: ClassVar[bool] = True
    multiprocess: ClassVar[bool] = True
    _options: ClassVar[tuple[str, ...]] = ("durable",)

    def __init__(self, uri: str, root: str | os.PathLike[str], *, blobs: BlobStore | None = None,
                 durable: bool = True) -> None:
        super().__init__(uri, blobs)
        self.root = Path(root)
        self.durable = durable
        self._pending = SyncQueue()
        self._manifests: dict[Path, tuple[int, int, dict[str, ArtifactInfo]]] = {}
        self._exp_dir = self.root / "experiments"
        self._index_dir = self.root / "runs"
        self._lock_dir = self.root / "locks"
        self._trash_dir = self.root / "trash"
        self._ready = False
        self._checked = False
        self._guard = threading.Lock()
        self._locks: dict[str, _Lock] = {}
        self._experiments: dict[str, ExperimentInfo] = {}
        self._run_dirs: dict[str, Path] = {}  # run id -> run directory (immutable once created)
        self._next_number: dict[str, int] = {}

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> FileBackend:
        """``./dir``, ``/abs/dir``, ``file://dir`` or ``file:///abs/dir``; option ``durable`` (bool)."""
        if not isinstance(uri, str) or not uri:
            raise InvalidArgumentError(f"file backend URI must be a non-empty string, got {uri!r}")
        query: dict[str, Any] = {}
        path_uri = uri
        if "://" in uri:
            parts = urlsplit(uri)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            path_uri = parts._replace(query="", fragment="").geturl()
        merged = {**query, **options}
        check_options("file", merged, cls._options)
        durable = merged.get("durable", True)
        if isinstance(durable, str):
            lowered = durable.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                durable = True
            elif lowered in ("0", "false", "no", "off"):
                durable = False
        if not isinstance(durable, bool):
            raise InvalidArgumentError(f"file backend option durable must be true or false, got {durable!r}")
        root = path_from_uri(path_uri, "file")
        if "\x00" in str(root):
            raise InvalidArgumentError(f"{uri!r} contains a NUL character")
        return cls(uri, root, blobs=artifacts, durable=durable)

    def sync(self) -> None:
        """fsync the documents' directories and the appended files written since the last sync."""
        self._pending.sync()
        super().sync()

    def close(self) -> None:
        """Make pending writes durable and release the blob store."""
        self._pending.sync()
        super().close()

    def _default_blobs(self) -> BlobStore:
        return FileBlobStore(self.root / "blobs", durable=self.durable)

    # -- store format ---------------------------------------------------------------------------------------
    def _check_format(self, raw: bytes, path: Path) -> None:
        try:
            meta = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"store marker {path} is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise CorruptDataError(f"{path} does not describe a {FORMAT_NAME} store: {meta!r}")
        version = meta.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise CorruptDataError(f"store marker {path} has no integer version: {meta!r}")
        if version > FORMAT_VERSION:
            raise UnsupportedOperationError(
                f"file store {str(self.root)!r} has format version {version}, newer than this labvault "
                f"understands ({FORMAT_VERSION}); upgrade labvault to open it"
            )

    def _check_readable(self) -> bool:
        """Check the store marker once; False when the store does not exist yet (it reads as empty)."""
        if self._checked:
            return True
        marker = self.root / "labvault.json"
        try:
            raw = marker.read_bytes()
        except FileNotFoundError:
            return False
        self._check_format(raw, marker)
        self._checked = True
        return True

    def _ensure_store(self) -> None:
        """Create the root, its marker and top-level directories on first write (safe across processes)."""
        if self._ready:
            return
        with self._guard:
            if self._ready:
                return
            if not self._check_readable():
                self.root.mkdir(parents=True, exist_ok=True)
                # Several processes may race here: each renames an identical marker into place.
                atomic_write_bytes(self.root / "labvault.json",
                                   _dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}),
                                   durable=self.durable)
                self._check_readable()
            for d in (self._exp_dir, self._index_dir, self._lock_dir, self._trash_dir):
                d.mkdir(exist_ok=True)
            if self.durable:
                fsync_dir(self.root)
            self._ready = True

    # -- low-level helpers --------------------------------------------------------------------------------
    def _lock(self, name: str) -> _Lock:
        lock = self._locks.get(name)
        if lock is None:
            with self._guard:
                lock = self._locks.get(name)
                if lock is None:
                    lock = self._locks[name] = _Lock(self._lock_dir / f"{name}.lock")
        return lock

    def _write_doc(self, path: Path, obj: Any, *, durable: bool | None = None) -> None:
        """Replace ``path`` atomically; its directory must exist (never re-created behind a delete)."""
        durable = self.durable if durable is None else durable
        atomic_write_bytes(path, _dumps(obj), durable=durable, create_parents=False, defer=self._pending)

    @staticmethod
    def _read_doc(path: Path) -> Any:
        """Parse a JSON document; FileNotFoundError propagates, anything unparseable is CorruptDataError."""
        raw = path.read_bytes()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"document {path} is corrupt (not valid JSON): {exc}") from exc

    def _append(self, path: Path, data: bytes, valid_end: Callable[[int, int], int]) -> int:
        """Append ``data`` with O_APPEND under the caller's run lock; return the new end offset.

        ``valid_end(fd, size)`` returns where the last complete entry ends; when a writer died mid-append
        the torn tail beyond it is cut off first, so it never ends up in the middle of the file.
        """
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:
                good = valid_end(fd, size)
                if good != size:
                    os.ftruncate(fd, good)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.durable:
                self._pending.add_file(path)  # group commit: readers already tolerate a torn tail
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    # -- experiments --------------------------------------------------------------------------------------
    def _scan_experiments(self) -> list[ExperimentInfo]:
        if not self._check_readable():
            return []
        try:
            names = os.listdir(self._exp_dir)
        except FileNotFoundError:
            return []
        found: list[ExperimentInfo] = []
        seen = set()
        for name in names:
            if name.startswith("."):
                continue
            info = self._experiments.get(name)
            if info is None:
                path = self._exp_dir / name / "experiment.json"
                try:
                    doc = self._read_doc(path)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # being created or deleted
                info = self._experiment_from_doc(doc, path)
                self._experiments[name] = info
            seen.add(name)
            found.append(info)
        for gone in [k for k in list(self._experiments) if k not in seen]:
            self._experiments.pop(gone, None)
        return found

    @staticmethod
    def _experiment_from_doc(doc: Any, path: Path) -> ExperimentInfo:
        try:
            return ExperimentInfo(str(doc["id"]), str(doc["name"]), str(doc["project"]),
                                  float(doc["created_at"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(f"document {path} is not a valid experiment: {exc!r}") from exc

    @_translate_os_errors
    def _ensure_experiment(self, name: str, project: str) -> ExperimentInfo:
        for e in self._scan_experiments():
            if e.name == name and e.project == project:
                return e
        self._ensure_store()
        with self._lock("experiments"):
            for e in self._scan_experiments():
                if e.name == name and e.project == project:
                    return e
            info = ExperimentInfo(uuid.uuid4().hex, name, project, now())
            staging = self._exp_dir / f".new-{info.id}"
            (staging / "runs").mkdir(parents=True)
            self._write_doc(staging / "experiment.json",
                            {"id": info.id, "name": name, "project": project, "created_at": info.created_at})
            if self.durable:
                self._pending.add_dir(staging)
            os.rename(staging, self._exp_dir / info.id)
            if self.durable:
                self._pending.add_dir(self._exp_dir)
            self._experiments[info.id] = info
            return info

    @_translate_os_errors
    def _list_experiments(self, project: str | None) -> list[ExperimentInfo]:
        return [e for e in self._scan_experiments() if project is None or e.project == project]

    @_translate_os_errors
    def _delete_experiment(self, experiment_id: str) -> None:
        if not self._check_readable():
            raise NotFoundError(f"experiment {experiment_id} not found")
        self._ensure_store()
        with self._lock("experiments"):
            src = self._exp_dir / experiment_id
            if not (src / "experiment.json").is_file():
                raise NotFoundError(f"experiment {experiment_id} not found")
            doomed = self._trash_dir / f"{experiment_id}-{uuid.uuid4().hex[:8]}"
            os.rename(src, doomed)
            if self.durable:
                self._pending.add_dir(self._exp_dir)
            self._experiments.pop(experiment_id, None)
            self._next_number.pop(experiment_id, None)
        # Out of the store's view now: drop the index entries and lock files, then the files themselves.
        for run_dir in self._iter_run_dirs(doomed / "runs"):
            run_id = self._peek_run_id(run_dir)
            if run_id is None:
                continue
            self._run_dirs.pop(run_id, None)
            for leftover in (self._index_dir / run_id, self._lock_dir / f"run-{run_id}.lock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
        shutil.rmtree(doomed, ignore_errors=True)
        self._clean_trash()

    def _clean_trash(self) -> None:
        """Remove what a crashed delete left in trash/ (best effort)."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self._trash_dir):
                shutil.rmtree(self._trash_dir / name, ignore_errors=True)

    @staticmethod
    def _iter_run_dirs(runs_dir: Path) -> Iterator[Path]:
        try:
            names = os.listdir(runs_dir)
        except FileNotFoundError:
            return
        for name in sorted(names):
            if name.isdigit():
                yield runs_dir / name

    @staticmethod
    def _peek_run_id(run_dir: Path) -> str | None:
        try:
            doc = json.loads((run_dir / "run.json").read_bytes())
            return str(doc["id"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # -- runs ---------------------------------------------------------------------------------------------
    def _run_dir(self, run_id: str) -> Path:
        """The directory of a run (which may have been deleted since); NotFoundError when unknown."""
        cached = self._run_dirs.get(run_id)
        if cached is not None:
            return cached
        if not self._check_readable():
            raise NotFoundError(f"run {run_id} not found")
        try:
            target = os.readlink(self._index_dir / run_id)
        except FileNotFoundError as exc:
            raise NotFoundError(f"run {run_id} not found") from exc
        except OSError as exc:  # not a symlink: a plain-file index (a filesystem without links)
            if exc.errno != errno.EINVAL:
                raise
            target = (self._index_dir / run_id).read_text("utf-8").strip()
        parts = target.replace("\\", "/").split("/")
        if len(parts) != 5 or parts[:2] != ["..", "experiments"] or parts[3] != "runs":
            raise CorruptDataError(f"run index entry {self._index_dir / run_id} points to {target!r}")
        path = self._exp_dir / parts[2] / "runs" / parts[4]
        self._run_dirs[run_id] = path
        return path

    def _read_run_doc(self, run_id: str) -> tuple[Path, dict[str, Any]]:
        run_dir = self._run_dir(run_id)
        path = run_dir / "run.json"
        try:
            doc = self._read_doc(path)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFoundError(f"run {run_id} not found") from exc
        if not isinstance(doc, dict) or doc.get("id") != run_id:
            raise CorruptDataError(f"document {path} is not the run {run_id}")
        return run_dir, doc

    def _read_latest(self, run_dir: Path) -> dict[str, Any]:
        """The last point per metric key: ``latest.json``, or rebuilt from the segments when it is missing
        or unreadable (it is a summary of the segments, written without fsync: see the module docs)."""
        path = run_dir / "metrics" / "latest.json"
        try:
            doc = json.loads(path.read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            pass
        except (ValueError, UnicodeDecodeError):
            pass
        else:
            if isinstance(doc, dict):
                return doc
        return self._rebuild_latest(run_dir / "metrics")

    @staticmethod
    def _rebuild_latest(metrics_dir: Path) -> dict[str, Any]:
        try:
            names = os.listdir(metrics_dir)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        latest: dict[str, Any] = {}
        for name in names:
            if not name.endswith(".seg"):
                continue
            stem = name[:-4]
            if "~" in stem:  # a hashed long key: its sidecar holds the key
                try:
                    key = str(json.loads((metrics_dir / f"{stem}.key").read_bytes())["key"])
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise CorruptDataError(f"metric key file {metrics_dir / stem}.key is missing or corrupt"
                                           ) from exc
            else:
                key = unquote(stem)
            data = (metrics_dir / name).read_bytes()
            records, end = scan_segment(data, str(metrics_dir / name))
            if not records:
                continue
            off, n = records[-1]
            step = int(np.frombuffer(data, dtype="<i8", count=1, offset=off + 8 * (n - 1))[0])
            value = float(np.frombuffer(data, dtype="<f8", count=1, offset=off + 16 * n - 8)[0])
            stamp = float(np.frombuffer(data, dtype="<f8", count=1, offset=off + 24 * n - 8)[0])
            latest[key] = {"value": _enc_float(value), "step": step, "timestamp": stamp, "offset": end}
        return latest

    @staticmethod
    def _run_from_doc(doc: dict[str, Any], latest: dict[str, Any], path: Path) -> RunInfo:
        try:
            return RunInfo(
                id=doc["id"], experiment_id=doc["experiment_id"], number=int(doc["number"]),
                name=doc.get("name"), parent_id=doc.get("parent_id"), status=doc["status"],
                start_time=float(doc["start_time"]), end_time=doc.get("end_time"), error=doc.get("error"),
                heartbeat=doc.get("heartbeat"), params=dict(doc.get("params") or {}),
                tags=dict(doc.get("tags") or {}),
                metrics={k: _dec_float(entry["value"]) for k, entry in latest.items()},
                results=dict(doc.get("results") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(f"document {path} is not a valid run: {exc!r}") from exc

    def _allocate_number(self, experiment_id: str, runs_dir: Path) -> tuple[int, Path]:
        """Claim the next run number by creating its directory (mkdir is exclusive across processes)."""
        number = self._next_number.get(experiment_id)
        if number is None:
            try:
                existing = [int(n) for n in os.listdir(runs_dir) if n.isdigit()]
            except FileNotFoundError as exc:
                raise NotFoundError(f"experiment {experiment_id} not found") from exc
            number = max(existing, default=0) + 1
        while True:
            path = runs_dir / f"{number:06d}"
            try:
                os.mkdir(path)
            except FileExistsError:
                number += 1
                continue
            except FileNotFoundError as exc:
                raise NotFoundError(f"experiment {experiment_id} not found") from exc
            self._next_number[experiment_id] = number + 1
            return number, path

    @_translate_os_errors
    def _create_run(
        self, experiment_id: str, name: str | None, parent_id: str | None, start_time: float,
        params: dict[str, Any], tags: dict[str, str],
    ) -> RunInfo:
        if not self._check_readable():
            raise NotFoundError(f"experiment {experiment_id} not found")
        self._ensure_store()
        exp_dir = self._exp_dir / experiment_id
        if experiment_id not in self._experiments and not (exp_dir / "experiment.json").is_file():
            raise NotFoundError(f"experiment {experiment_id} not found")
        if parent_id is not None:
            self._read_run_doc(parent_id)  # NotFoundError when absent
        runs_dir = exp_dir / "runs"
        number, run_dir = self._allocate_number(experiment_id, runs_dir)
        run = RunInfo(
            id=uuid.uuid4().hex, experiment_id=experiment_id, number=number, name=name,
            parent_id=parent_id, status="running", start_time=start_time, heartbeat=start_time,
            params=dict(params), tags=dict(tags),
        )
        # The index entry first, so every run a listing shows can be found by id.
        target = f"../experiments/{experiment_id}/runs/{run_dir.name}"
        index = self._index_dir / run.id
        try:
            os.symlink(target, index)
        except FileExistsError:
            raise
        except OSError:  # no symlinks here (some Windows setups): a one-line file instead
            atomic_write_bytes(index, target.encode(), durable=self.durable, defer=self._pending)
        if self.durable:
            self._pending.add_dir(self._index_dir)
            self._pending.add_dir(runs_dir)
        self._write_doc(run_dir / "run.json", self._run_doc(run))
        self._run_dirs[run.id] = run_dir
        return run

    @staticmethod
    def _run_doc(run: RunInfo) -> dict[str, Any]:
        return {
            "id": run.id, "experiment_id": run.experiment_id, "number": run.number, "name": run.name,
            "parent_id": run.parent_id, "status": run.status, "start_time": run.start_time,
            "end_time": run.end_time, "error": run.error, "heartbeat": run.heartbeat,
            "params": run.params, "tags": run.tags, "results": run.results,
        }

    @_translate_os_errors
    def _get_run(self, run_id: str) -> RunInfo:
        run_dir, doc = self._read_run_doc(run_id)
        return self._run_from_doc(doc, self._read_latest(run_dir), run_dir / "run.json")

    @_translate_os_errors
    def _list_runs(self, experiment_ids: list[str]) -> list[RunInfo]:
        if not self._check_readable():
            return []
        out: list[RunInfo] = []
        for experiment_id in dict.fromkeys(experiment_ids):
            for run_dir in self._iter_run_dirs(self._exp_dir / experiment_id / "runs"):
                path = run_dir / "run.json"
                try:
                    doc = self._read_doc(path)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # being created (or a creation that crashed)
                if not isinstance(doc, dict):
                    raise CorruptDataError(f"document {path} is not a valid run")
                info = self._run_from_doc(doc, self._read_latest(run_dir), path)
                self._run_dirs.setdefault(info.id, run_dir)
                out.append(info)
        return out

    def _modify_run(self, run_id: str, change: Callable[[dict[str, Any]], bool]) -> None:
        """Read-modify-write run.json under the run lock; ``change`` returns False to write nothing."""
        self._ensure_store()
        with self._lock(f"run-{run_id}"):
            run_dir, doc = self._read_run_doc(run_id)
            if change(doc):
                try:
                    self._write_doc(run_dir / "run.json", doc)
                except FileNotFoundError as exc:  # the experiment was deleted meanwhile
                    raise NotFoundError(f"run {run_id} not found") from exc

    @_translate_os_errors
    def _update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        def change(doc: dict[str, Any]) -> bool:
            doc.update(fields)
            return True

        self._modify_run(run_id, change)

    @_translate_os_errors
    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        def change(doc: dict[str, Any]) -> bool:
            stored = doc.setdefault("params", {})
            check_params_conflict(run_id, stored, params)
            new = {k: val for k, val in params.items() if k not in stored}
            stored.update(new)
            return bool(new)

        self._modify_run(run_id, change)

    @_translate_os_errors
    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        def change(doc: dict[str, Any]) -> bool:
            doc.setdefault("tags", {}).update(tags)
            return True

        self._modify_run(run_id, change)

    @_translate_os_errors
    def _log_results(self, run_id: str, results: dict[str, Any]) -> None:
        def change(doc: dict[str, Any]) -> bool:
            doc.setdefault("results", {}).update(results)
            return True

        self._modify_run(run_id, change)

    # -- metrics ------------------------------------------------------------------------------------------
    @_translate_os_errors
    def _log_metrics(self, run_id: str, series: list[MetricSeries]) -> None:
        self._ensure_store()
        with self._lock(f"run-{run_id}"):
            run_dir, _doc = self._read_run_doc(run_id)
            metrics_dir = run_dir / "metrics"
            try:
                metrics_dir.mkdir(exist_ok=True)
            except FileNotFoundError as exc:
                raise NotFoundError(f"run {run_id} not found") from exc
            latest = self._read_latest(run_dir)
            for s in series:
                n = len(s)
                chunks = [encode_record(s.steps[i:i + MAX_RECORD_POINTS], s.values[i:i + MAX_RECORD_POINTS],
                                        s.timestamps[i:i + MAX_RECORD_POINTS])
                          for i in range(0, n, MAX_RECORD_POINTS)]
                entry = latest.get(s.key)
                expected = entry.get("offset") if isinstance(entry, dict) else None
                path = metrics_dir / seg_name(s.key)
                if "~" in path.name and not path.exists():
                    self._write_doc(path.with_suffix(".key"), {"key": s.key})

                def valid_end(fd: int, size: int, expected: Any = expected, name: str = str(path)) -> int:
                    if size == expected:
                        return size
                    return scan_segment(_read_fd(fd, size), name)[1]

                end = self._append(path, b"".join(chunks) if len(chunks) > 1 else chunks[0], valid_end)
                value, step, ts = s.last()
                latest[s.key] = {"value": _enc_float(value), "step": step, "timestamp": ts, "offset": end}
            # A summary of the segments (rebuilt from them if lost), so it skips fsync: the segments are
            # the durable record, and this keeps a metric flush to one fsync.
            self._write_doc(metrics_dir / "latest.json", latest, durable=False)

    @_translate_os_errors
    def _metric_history(self, run_id: str, key: str) -> MetricSeries:
        run_dir = self._run_dir(run_id)
        if not (run_dir / "run.json").is_file():
            raise NotFoundError(f"run {run_id} not found")
        path = run_dir / "metrics" / seg_name(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return MetricSeries.empty(key)
        return decode_segment(key, data, str(path))

    # -- artifacts ----------------------------------------------------------------------------------------
    @_translate_os_errors
    def _add_artifact(self, run_id: str, info: ArtifactInfo) -> None:
        line = json.dumps({"key": info.key, "digest": info.digest, "size": info.size,
                           "created_at": info.created_at}, ensure_ascii=False) + "\n"
        self._ensure_store()
        with self._lock(f"run-{run_id}"):
            run_dir, _doc = self._read_run_doc(run_id)
            try:
                self._append(run_dir / "artifacts.jsonl", line.encode("utf-8"), _manifest_valid_end)
            except FileNotFoundError as exc:
                raise NotFoundError(f"run {run_id} not found") from exc

    @_translate_os_errors
    def _list_artifacts(self, run_id: str, prefix: str) -> list[ArtifactInfo]:
        run_dir, _doc = self._read_run_doc(run_id)
        items = self._manifest(run_dir / "artifacts.jsonl")
        return [info for key, info in items.items() if key.startswith(prefix)]

    def _manifest(self, path: Path) -> dict[str, ArtifactInfo]:
        """The manifest's entries (last line per key wins), parsing only what was appended since last time.

        The manifest is append-only, so the cache is keyed by the file's inode and the offset parsed up
        to; a torn last line (a writer killed mid-append) is left for the next read.
        """
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            self._manifests.pop(path, None)
            return {}
        try:
            inode = os.fstat(fd).st_ino
            cached = self._manifests.get(path)
            offset, items = (cached[1], cached[2]) if cached and cached[0] == inode else (0, {})
            os.lseek(fd, offset, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        complete = data.rfind(b"\n") + 1  # bytes after the last newline: a torn line, ignored
        if not complete:
            return items
        items = dict(items)  # copy on change: other threads may be iterating the cached one
        for raw in data[:complete].split(b"\n")[:-1]:
            try:
                entry = json.loads(raw)
                info = ArtifactInfo(str(entry["key"]), int(entry["size"]), str(entry["digest"]),
                                    float(entry["created_at"]))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                raise CorruptDataError(
                    f"artifact manifest {path} is corrupt near byte {offset}: {exc}") from exc
            items[info.key] = info
        self._manifests[path] = (inode, offset + complete, items)
        return items
