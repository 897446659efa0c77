"""The file backend: a directory of human-readable JSON lines plus append-only metric segments.

URIs: ``./dir``, ``/abs/dir`` or ``file://dir`` / ``file:///abs/dir``. Options: ``durable`` (default
``True``; also ``?durable=false`` on a ``file://`` URI).

Layout (format version 2)::

    <root>/labvault.json                          {"format": "labvault-file", "version": 2}
    <root>/experiments/<exp_id>/experiment.json   id, name, project, created_at (immutable)
    <root>/experiments/<exp_id>/journal.jsonl     every run change, one JSON object a line (authoritative)
    <root>/experiments/<exp_id>/index.lvx         a summary of the journal up to some offset (a cache)
    <root>/experiments/<exp_id>/runs/<run_id>/    made on a run's first metric or artifact
        artifacts.jsonl  append-only manifest, one JSON line {key, digest, size, created_at}; last wins
        metrics/<quote(key, safe="")>.seg   append-only binary records (see below)
        metrics/<name>.key                  {"key": ...} for a key too long for a file name (hashed name)
        metric-batches.txt  the ids of the metric batches appended with ``batch_id=``, one a line
    <root>/locks/        experiments.lock (creating and deleting experiments)
    <root>/trash/        experiments being deleted (renamed here first, then removed)
    <root>/blobs/        FileBlobStore: content-addressed artifact bytes (sha256/ab/cd/<digest>)

The journal. Creating a run, changing its status, heartbeat or end time, logging params, tags or results,
and logging metrics (the latest point per key) each append one line to the experiment's journal::

    {"op":"create","id":...,"number":3,"name":null,"parent_id":null,"start_time":...,"params":{},"tags":{}}
    {"op":"update","id":...,"fields":{"status":"finished","end_time":...}}
    {"op":"params"|"tags"|"results","id":...,"params"|"tags"|"results":{...}}
    {"op":"metrics","id":...,"metrics":{"loss":[value, step, timestamp, segment end offset]}}

A run's state is the fold of its lines. Appends happen under an exclusive ``flock`` of the journal file
itself, after catching up with what other processes appended (read from the last offset this process
has seen: one ``fstat`` when nothing changed). That makes run numbers dense and unique across processes
(the next number is the largest so far plus one, decided and appended under the lock), params write-once
(the conflict check sees every earlier line) and a run costs two small appends instead of several file
creations: creating a file costs ~1 ms on a typical ext4 disk, an append ~10 us. A line is written with
one ``write``; a writer killed mid-line leaves a torn last line (no newline), which readers ignore and the
next writer cuts off under the lock. Lines of integers beyond 64 bits start with ``{"~":1,`` (parsed with
the standard ``json`` module; every other line with orjson).

The index. Reading 10,000 runs from the journal means parsing every line, so each experiment also keeps
``index.lvx``: the folded state of the journal's first ``journal_end`` bytes, with the crc32 of the bytes
just before that offset. It is a cache, never an authority: a reader loads it only when the journal is
at least that long and those bytes still match, then applies the journal lines after ``journal_end``
(normally none or a few); a missing, torn, corrupt or mismatching index is ignored and rebuilt from the
journal. It holds, after a 16-byte header (magic ``LVIDX01\\n`` + header length) and a JSON header
(offsets, lengths and crc32 of the sections, ``journal_end``, the keys present): every run's record as a
JSON array (parsed only for the runs a query returns), and columns, one per param, tag and metric key and
per searchable attribute (JSON lists, or little-endian float64/int64 arrays for metrics, numbers and
times), so a filter reads the columns it names and is evaluated with numpy over every run at once. The
index is written (temp file + rename, like every document) by a writer at ``close()`` and when its
``sync()`` finds the unindexed tail larger than a quarter of the journal, and by a reader that had to
apply a large tail. Writers racing to replace it each write a consistent snapshot of some prefix.

Durability: every write is atomic at once (documents are replaced by temp file + rename, appends are
single writes of whole lines or crc-framed records), so a killed process never leaves a torn store. With
``durable=True`` the fsyncs of appended files and of directories are group-committed: queued and run
together by ``sync()``, which the vault's flusher calls every ``flush_interval`` seconds and at run end and
close. A power failure can so lose the writes of the last interval (the store then shows their previous
state) but never corrupt the store. ``durable=False`` skips every fsync: still safe against a killed
process, but after a power failure the last writes may be lost or, on some filesystems, left empty.

Metric segments: each ``log_metrics`` call appends, per key, one record::

    header  16 bytes  b"LVS1", uint32 n, uint32 crc32(n as uint32 LE + payload), uint32 0   (little-endian)
    payload 24n bytes steps int64[n], values float64[n], timestamps float64[n]              (little-endian)

appended with ``O_APPEND`` under an exclusive ``flock`` of the segment file (fsynced at the next
``sync()``). A reader ignores an incomplete or crc-failing *last* record (a writer killed mid-append) and
raises ``CorruptDataError`` for a bad record followed by valid ones. Writers first cut such a torn tail off
(the journal records the end offset of each segment, so the check is one ``fstat``), so a torn record never
ends up in the middle of a file. The journal line with the latest points is appended while the segment
locks are held, so its order of latest values is the order of the appends. Run directories are named by
run id (not number), so a run number reused after a power failure can never inherit another run's files.

A batch appended with ``log_metrics(..., batch_id=)`` is looked for among the last ``BATCH_MEMORY`` ids of
``metric-batches.txt`` once its segment locks are held (a re-sent batch takes the same locks as its
first attempt, so it waits for it) and skipped when found; its id is appended after its segments and
before its journal line. A writer killed between its segment appends and that line leaves the batch
stored but unremembered, so only a re-send of exactly that interrupted batch can be stored twice.

Experiment documents are immutable, so they are cached in memory; so is each experiment's folded journal,
refreshed by reading only what was appended since. Deleting an experiment renames its directory into
``trash/`` under the store lock and the journal lock (atomic: a crash never leaves half an experiment
visible), then removes it.

A store of format version 1 (one ``run.json`` per run) is converted by ``upgrade(uri)``; opening one
raises ``UnsupportedOperationError`` naming it. OS errors (permission denied, disk full, ...) raise
``BackendUnavailableError`` naming the path; an unparseable document raises ``CorruptDataError`` naming
the file.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import hashlib
import json
import math
import mmap
import os
import shutil
import struct
import sys
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import numpy as np
import orjson

from labvault._fs import SyncQueue, atomic_write_bytes, fsync_dir, path_from_uri
from labvault._uri import check_options
from labvault.blobs.abc import BlobStore
from labvault.blobs.local import FileBlobStore
from labvault.domain import ArtifactInfo, ExperimentInfo, MetricSeries, RunInfo, now
from labvault.errors import (
    BackendUnavailableError,
    CorruptDataError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
    UnsupportedOperationError,
)
from labvault.store.abc import BATCH_MEMORY, Backend, check_params_conflict, run_exists_error
from labvault.store.search.columns import Column as _Col
from labvault.store.search.columns import Unsupported as _Unsupported
from labvault.store.search.columns import concat_columns as _concat_cols
from labvault.store.search.columns import deep_copy as _deep
from labvault.store.search.columns import evaluate_masks as _veval
from labvault.store.search.columns import has_nested as _has_nested
from labvault.store.search.columns import no_gc as _no_gc
from labvault.store.search.columns import order_positions as _order
from labvault.store.search.columns import param_column as _param_col
from labvault.store.search.columns import text_column as _text_col

if TYPE_CHECKING:
    from labvault.query import Expr, Field, OrderKey

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _flock(fd: int) -> None:
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                return
            except OSError:  # LK_LOCK gives up after 10 s: keep waiting
                continue
else:
    import fcntl

    def _flock(fd: int) -> None:
        """Take an exclusive lock of the open file ``fd`` (released when ``fd`` is closed)."""
        fcntl.flock(fd, fcntl.LOCK_EX)


FORMAT_NAME = "labvault-file"
FORMAT_VERSION = 2

JOURNAL = "journal.jsonl"
#: A run's metric batch ids, one a line, appended after the batch's segments (see ``_log_metrics``).
BATCHES = "metric-batches.txt"
_BATCH_LINE = 33  # the longest line: a 32-character batch id and its newline
INDEX = "index.lvx"
INDEX_MAGIC = b"LVIDX01\n"
_INDEX_HEAD = struct.Struct("<8sQ")
#: Bytes of the journal before ``journal_end`` whose crc32 the index records.
_JOURNAL_CHECK = 256
#: A writer's ``close()`` writes the index when at least this much journal is unindexed (or none is).
_INDEX_ON_CLOSE = 8192
#: ``sync()`` and readers write the index when the unindexed tail exceeds this and a quarter of the journal.
_INDEX_MIN_TAIL = 256 * 1024

SEG_MAGIC = b"LVS1"
_HEADER = struct.Struct("<4sIII")
HEADER_SIZE = _HEADER.size  # 16
_N_STRUCT = struct.Struct("<I")
#: Largest number of points in one segment record (a bigger batch is split).
MAX_RECORD_POINTS = 1 << 22
_MAX_SEG_NAME = 200
#: Journal lines and index records holding integers beyond 64 bits start with this (keys cannot hold "~").
_BIG = b'{"~":1,'

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


def _dump_line(obj: dict[str, Any]) -> bytes:
    """One compact JSON object (no newline inside): orjson, or ``json`` marked with ``{"~":1,`` for
    integers beyond 64 bits (which orjson cannot write, and would read back as floats)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return _BIG + text[1:].encode("utf-8")


def _load_one(raw: bytes | memoryview) -> Any:
    """Parse what ``_dump_line`` wrote."""
    if bytes(raw[:len(_BIG)]) == _BIG:
        doc = json.loads(bytes(raw))
        doc.pop("~", None)
        return doc
    return orjson.loads(raw)


def _parse_lines(chunk: bytes, path: Path, offset: int) -> list[Any]:
    """The JSON objects of complete journal lines (``chunk`` ends with a newline); one orjson call."""
    body = chunk[:-1]
    if _BIG not in body:
        try:
            return cast(list[Any], orjson.loads(b"[" + body.replace(b"\n", b",") + b"]"))
        except orjson.JSONDecodeError:
            pass  # find the bad line below
    out = []
    pos = 0
    for line in body.split(b"\n"):
        try:
            out.append(_load_one(line))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptDataError(
                f"run journal {path} is corrupt: bad line at byte {offset + pos}: {exc}") from exc
        pos += len(line) + 1
    return out


def _read_fd(fd: int, size: int, offset: int = 0) -> bytes:
    chunks = []
    end = offset + size
    while offset < end:
        chunk = os.pread(fd, end - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _manifest_valid_end(fd: int, size: int) -> int:
    if os.pread(fd, 1, size - 1) == b"\n":
        return size
    return _read_fd(fd, size).rfind(b"\n") + 1  # cut a torn last line


class _Lock:
    """A cross-process lock (``flock`` of a lock file) plus an in-process thread lock."""

    __slots__ = ("_fd", "_path", "_thread")

    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = threading.Lock()
        self._fd = -1

    def __enter__(self) -> None:
        self._thread.acquire()
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _flock(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        except BaseException:
            self._thread.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            fd, self._fd = self._fd, -1
            os.close(fd)  # releases the flock
        finally:
            self._thread.release()


class _BadIndex(Exception):
    """An index file that cannot be used (it is then ignored and rebuilt from the journal)."""


# -- the index file ---------------------------------------------------------------------------------------
_ATTR_LISTS = ("status", "name", "parent_id")
_ATTR_FLOATS = ("start_time", "end_time")


class _Index:
    """A loaded ``index.lvx``: the folded journal up to ``journal_end`` (see the module docs)."""

    def __init__(self, data: bytes | mmap.mmap, path: Path) -> None:
        self.path = path
        if len(data) < _INDEX_HEAD.size:
            raise _BadIndex("too short")
        magic, hlen = _INDEX_HEAD.unpack_from(data, 0)
        if magic != INDEX_MAGIC or _INDEX_HEAD.size + hlen > len(data):
            raise _BadIndex("bad magic or header length")
        try:
            head = orjson.loads(data[_INDEX_HEAD.size:_INDEX_HEAD.size + hlen])
            self.journal_end = int(head["journal_end"])
            self.journal_crc = int(head["journal_crc"])
            self.n = int(head["n"])
            self.keys: dict[str, list[str]] = {
                k: list(head["keys"][k]) for k in ("params", "tags", "metrics")}
            base = _INDEX_HEAD.size + hlen
            self.sections: dict[str, tuple[int, int, str]] = {
                name: (base + int(off), int(length), str(enc)) for name, (off, length, enc)
                in head["sections"].items()
            }
            body_len = int(head["body_len"])
            body_crc = int(head["body_crc"])
            synced = head["synced"] is True
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise _BadIndex(f"bad header: {exc}") from exc
        if base + body_len != len(data):
            raise _BadIndex("torn body")
        # An index fsynced before its rename cannot be torn; one written without fsync (durable=False)
        # might be after a power failure, so its checksum is verified.
        if not synced and zlib.crc32(memoryview(data)[base:]) != body_crc:
            raise _BadIndex("corrupt body")
        self.data = data
        self.ids: list[str] = self.section("ids")
        offs = self.section("offsets")
        if len(self.ids) != self.n or offs.shape != (self.n + 1,):
            raise _BadIndex("sections disagree on the number of runs")
        self.offsets: list[int] = offs.tolist()
        self.numbers: list[int] = self.section("a:number").tolist()

    def section(self, name: str) -> Any:
        """A section decoded: a list for JSON sections, a new numpy array for numeric ones."""
        try:
            off, length, enc = self.sections[name]
        except KeyError as exc:
            raise _BadIndex(f"no section {name!r}") from exc
        raw = memoryview(self.data)[off:off + length]
        if enc == "f8":
            return np.frombuffer(raw, dtype="<f8").astype(np.float64)
        if enc == "i8":
            return np.frombuffer(raw, dtype="<i8").astype(np.int64)
        if enc == "bigjson":
            return json.loads(bytes(raw))
        return orjson.loads(raw)

    def has(self, name: str) -> bool:
        return name in self.sections

    def raw_record(self, i: int) -> memoryview:
        off = self.sections["records"][0]
        return memoryview(self.data)[off + self.offsets[i]:off + self.offsets[i + 1] - 1]

    def record(self, i: int) -> dict[str, Any]:
        try:
            rec = _load_one(self.raw_record(i))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"index {self.path} is corrupt: record {i}: {exc}") from exc
        if not isinstance(rec, dict) or rec.get("id") != self.ids[i]:
            raise CorruptDataError(f"index {self.path} is corrupt: record {i} is not run {self.ids[i]}")
        return rec

    def records(self, positions: list[int]) -> list[dict[str, Any]]:
        """The records at ``positions``, parsed in one call."""
        if self.sections["records"][2] != "json" or len(positions) < 2:
            return [self.record(i) for i in positions]
        raw = b"[" + b",".join(self.raw_record(i) for i in positions) + b"]"
        try:
            recs = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CorruptDataError(f"index {self.path} is corrupt: {exc}") from exc
        ids = self.ids
        if any(r.get("id") != ids[i] for r, i in zip(recs, positions, strict=True)):
            raise CorruptDataError(f"index {self.path} is corrupt: records disagree with ids")
        return cast(list[dict[str, Any]], recs)

    def all_records(self) -> list[dict[str, Any]]:
        off, length, enc = self.sections["records"]
        if enc == "json":
            try:
                recs = orjson.loads(memoryview(self.data)[off:off + length])
            except orjson.JSONDecodeError as exc:
                raise CorruptDataError(f"index {self.path} is corrupt: {exc}") from exc
            if len(recs) != self.n or any(r.get("id") != i for r, i in zip(recs, self.ids, strict=True)):
                raise CorruptDataError(f"index {self.path} is corrupt: records disagree with ids")
            return cast(list[dict[str, Any]], recs)
        return [self.record(i) for i in range(self.n)]


def _metric_of(key: str) -> Callable[[dict[str, Any]], float]:
    def get(rec: dict[str, Any]) -> float:
        entry = rec["metrics"].get(key)
        return math.nan if entry is None else float(entry[0])

    return get


def _item_of(kind: str, key: str) -> Callable[[dict[str, Any]], Any]:
    def get(rec: dict[str, Any]) -> Any:
        return rec[kind].get(key)

    return get


class _Exp:
    """One experiment's runs as folded from its journal (and index), refreshed incrementally."""

    def __init__(self, exp_id: str, path: Path) -> None:
        self.id = exp_id
        self.dir = path
        self.journal = path / JOURNAL
        self.index_path = path / INDEX
        self.lock = threading.RLock()
        self.ino = -1
        self.consumed = 0  # journal bytes folded in (always at a line boundary)
        self.index_end = 0  # journal offset covered by the newest index this process read or wrote
        self.wrote = False  # this process appended to the journal
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}
        self.numbers: list[int] = []
        self.recs: list[dict[str, Any] | None] = []  # None: not parsed from the index yet
        self.max_number = 0
        self.monotonic = True  # numbers increase with position (always, unless the journal was edited)
        self.base: _Index | None = None
        self.n_base = 0
        self.changed: set[int] = set()  # base runs changed since the index
        self.version = 0
        self.cols: dict[Field, tuple[int, _Col]] = {}
        self.registered = 0  # runs whose ids the backend has mapped to this experiment

    # -- state --------------------------------------------------------------------------------------------
    def adopt(self, index: _Index) -> None:
        self.base = index
        self.n_base = index.n
        self.ids = list(index.ids)
        self.pos = {rid: i for i, rid in enumerate(self.ids)}
        if len(self.pos) != len(self.ids):
            raise _BadIndex("duplicate run ids")
        self.numbers = list(index.numbers)
        self.recs = [None] * index.n
        self.max_number = max(self.numbers, default=0)
        self.monotonic = all(a < b for a, b in zip(self.numbers, self.numbers[1:], strict=False))
        self.consumed = self.index_end = index.journal_end
        self.version += 1

    def record(self, i: int) -> dict[str, Any]:
        rec = self.recs[i]
        if rec is None:
            assert self.base is not None
            rec = self.recs[i] = self.base.record(i)
        return rec

    def parse(self, positions: Iterable[int]) -> None:
        """Make sure the records at ``positions`` are parsed (one orjson call for all of them)."""
        recs = self.recs
        todo = [i for i in positions if recs[i] is None]
        if todo:
            assert self.base is not None
            for i, rec in zip(todo, self.base.records(todo), strict=True):
                recs[i] = rec

    def all_records(self) -> list[dict[str, Any]]:
        if self.base is not None and any(r is None for r in self.recs[:self.n_base]):
            for i, rec in enumerate(self.base.all_records()):
                if self.recs[i] is None:
                    self.recs[i] = rec
        return cast(list[dict[str, Any]], self.recs)

    def apply(self, doc: Any) -> None:
        """Fold one journal line into the state."""
        try:
            op = doc["op"]
            run_id = doc["id"]
            if op == "create":
                if run_id in self.pos:
                    raise CorruptDataError(f"run journal {self.journal} creates run {run_id} twice")
                number = int(doc["number"])
                start = float(doc["start_time"])
                rec = {"id": run_id, "number": number, "name": doc.get("name"),
                       "parent_id": doc.get("parent_id"),
                       "status": "running", "start_time": start, "end_time": None, "error": None,
                       "heartbeat": start, "params": dict(doc.get("params") or {}),
                       "tags": dict(doc.get("tags") or {}), "results": {}, "metrics": {}}
                if _has_nested(rec["params"]):
                    rec["_nested"] = True
                self.pos[run_id] = len(self.ids)
                self.ids.append(run_id)
                if number <= self.max_number:
                    self.monotonic = False
                self.max_number = max(self.max_number, number)
                self.numbers.append(number)
                self.recs.append(rec)
            else:
                i = self.pos[run_id]
                rec = self.record(i)
                if op == "update":
                    fields = doc["fields"]
                    for key in ("status", "end_time", "error", "heartbeat"):
                        if key in fields:
                            rec[key] = fields[key]
                elif op in ("params", "tags", "results", "metrics"):
                    rec[op].update(doc[op])
                    if op in ("params", "results") and _has_nested(doc[op]):
                        rec["_nested"] = True
                else:
                    raise CorruptDataError(f"run journal {self.journal} has an unknown line {op!r}")
                if i < self.n_base:
                    self.changed.add(i)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptDataError(f"run journal {self.journal} has an invalid line: {exc!r}") from exc
        self.version += 1

    def fold(self, chunk: bytes) -> None:
        """Apply the complete lines at the start of ``chunk`` (read at ``self.consumed``)."""
        complete = chunk.rfind(b"\n") + 1
        if complete:
            for doc in _parse_lines(chunk[:complete], self.journal, self.consumed):
                self.apply(doc)
            self.consumed += complete

    # -- columns --------------------------------------------------------------------------------------------
    def _patchable(self) -> bool:
        return self.base is not None and len(self.changed) + len(self.ids) - self.n_base <= len(self.ids) // 2

    def values(self, section: str, get: Callable[[dict[str, Any]], Any]) -> list[Any]:
        """One value per run (``get(record)``), from the index column patched with later changes."""
        if self._patchable():
            assert self.base is not None
            vals = self.base.section(section) if self.base.has(section) else [None] * self.n_base
            for i in self.changed:
                vals[i] = get(self.record(i))
            vals.extend(get(self.record(i)) for i in range(self.n_base, len(self.ids)))
            return cast(list[Any], vals)
        return [get(r) for r in self.all_records()]

    def floats(self, section: str, get: Callable[[dict[str, Any]], Any]) -> np.ndarray[Any, Any]:
        """Like ``values`` for a float64 column (NaN where missing)."""
        if self._patchable():
            assert self.base is not None
            base = self.base.section(section) if self.base.has(section) else np.full(self.n_base, np.nan)
            out = np.empty(len(self.ids), dtype=np.float64)
            out[:self.n_base] = base
            for i in self.changed:
                out[i] = _or_nan(get(self.record(i)))
            for i in range(self.n_base, len(self.ids)):
                out[i] = _or_nan(get(self.record(i)))
            return out
        return np.array([_or_nan(get(r)) for r in self.all_records()], dtype=np.float64)

    def keys(self, kind: str) -> list[str]:
        found: dict[str, None] = {}
        if self._patchable():
            assert self.base is not None
            found.update(dict.fromkeys(self.base.keys[kind]))
            todo: Iterable[int] = list(self.changed) + list(range(self.n_base, len(self.ids)))
            for i in todo:
                found.update(dict.fromkeys(self.record(i)[kind]))
        else:
            for rec in self.all_records():
                found.update(dict.fromkeys(rec[kind]))
        return list(found)

    def column(self, field: Field) -> _Col:
        """The query column of a field over every run (cached until the state changes)."""
        cached = self.cols.get(field)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        n = len(self.ids)
        kind, key = field.kind, field.key
        if kind == "params":
            col = _param_col(self.values(f"p:{key}", _item_of("params", key)))
        elif kind == "tags":
            col = _text_col(self.values(f"t:{key}", _item_of("tags", key)), n)
        elif kind == "metrics":
            col = _Col(self.floats(f"m:{key}", _metric_of(key)), None, [])
        elif key == "number":
            col = _Col(np.array(self.numbers, dtype=np.float64), None, [])
        elif key in _ATTR_FLOATS:
            col = _Col(self.floats(f"a:{key}", _item_of_attr(key)), None, [])
        elif key == "id":
            col = _text_col(self.ids, n)
        elif key == "experiment_id":
            col = _text_col([self.id] * n, n)
        elif key in _ATTR_LISTS:
            col = _text_col(self.values(f"a:{key}", _item_of_attr(key)), n)
        else:  # not a run attribute: NULL everywhere
            col = _Col(np.full(n, np.nan), None, [])
        self.cols[field] = (self.version, col)
        return col

    # -- writing the index ----------------------------------------------------------------------------------
    def build_index(self, journal_crc: int, synced: bool) -> bytes:
        """The index file for the state as it is (call under ``self.lock``)."""
        n = len(self.ids)
        sections: list[tuple[str, bytes, str]] = []
        blobs: list[bytes | memoryview] = []
        big = False
        for i in range(n):
            rec = self.recs[i]
            if rec is None or (i < self.n_base and i not in self.changed):
                assert self.base is not None and i < self.n_base
                blob: bytes | memoryview = self.base.raw_record(i)
            else:
                blob = _dump_line(rec)
            big = big or bytes(blob[:len(_BIG)]) == _BIG
            blobs.append(blob)
        offsets = np.zeros(n + 1, dtype="<i8")
        if n:
            offsets[1:] = np.cumsum([len(b) + 1 for b in blobs])
        offsets += 1
        sections.append(("records", b"[" + b",".join(blobs) + b"]", "records-big" if big else "json"))
        sections.append(("offsets", offsets.tobytes(), "i8"))
        sections.append(("ids", orjson.dumps(self.ids), "json"))
        sections.append(("a:number", np.asarray(self.numbers, dtype="<i8").tobytes(), "i8"))
        for key in _ATTR_FLOATS:
            sections.append((f"a:{key}", self.floats(f"a:{key}", _item_of_attr(key)).astype("<f8").tobytes(),
                             "f8"))
        for key in _ATTR_LISTS:
            sections.append((f"a:{key}", orjson.dumps(self.values(f"a:{key}", _item_of_attr(key))), "json"))
        keys = {kind: self.keys(kind) for kind in ("params", "tags", "metrics")}
        for key in keys["params"]:
            vals = self.values(f"p:{key}", _item_of("params", key))
            try:
                sections.append((f"p:{key}", orjson.dumps(vals), "json"))
            except TypeError:  # integers beyond 64 bits
                sections.append((f"p:{key}", json.dumps(vals, ensure_ascii=False).encode("utf-8"), "bigjson"))
        for key in keys["tags"]:
            tags = self.values(f"t:{key}", _item_of("tags", key))
            sections.append((f"t:{key}", orjson.dumps(tags), "json"))
        for key in keys["metrics"]:
            metric = self.floats(f"m:{key}", _metric_of(key))
            sections.append((f"m:{key}", metric.astype("<f8").tobytes(), "f8"))
        table: dict[str, list[Any]] = {}
        pos = 0
        for name, data, enc in sections:
            table[name] = [pos, len(data), enc]
            pos += len(data)
        body = b"".join(data for _name, data, _enc in sections)
        head = orjson.dumps({
            "format": "labvault-file-index", "experiment_id": self.id, "journal_end": self.consumed,
            "journal_crc": journal_crc, "n": n, "keys": keys, "sections": table, "body_len": len(body),
            "body_crc": zlib.crc32(body), "synced": synced,
        })
        return _INDEX_HEAD.pack(INDEX_MAGIC, len(head)) + head + body


def _item_of_attr(key: str) -> Callable[[dict[str, Any]], Any]:
    def get(rec: dict[str, Any]) -> Any:
        return rec[key]

    return get


def _or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _journal_crc(fd: int, end: int) -> int:
    start = max(0, end - _JOURNAL_CHECK)
    return zlib.crc32(_read_fd(fd, end - start, start))


# -- vectorised filters -----------------------------------------------------------------------------------


class FileBackend(Backend, scheme="file"):
    """Experiments as directories; runs as lines of a per-experiment journal; metrics as segments."""

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
        self._lock_dir = self.root / "locks"
        self._trash_dir = self.root / "trash"
        self._ready = False
        self._checked = False
        self._guard = threading.Lock()
        self._locks: dict[str, _Lock] = {}
        self._experiments: dict[str, ExperimentInfo] = {}
        self._states: dict[str, _Exp] = {}
        self._run_exp: dict[str, str] = {}  # run id -> experiment id (immutable once created)
        self._run_dirs_made: set[str] = set()

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
        """fsync what was appended and renamed since the last sync; refresh indexes that lag far behind."""
        self._write_due_indexes(closing=False)
        self._pending.sync()
        super().sync()

    def close(self) -> None:
        """Write the indexes of the experiments this process changed, make pending writes durable."""
        self._write_due_indexes(closing=True)
        self._pending.sync()
        super().close()

    def _default_blobs(self) -> BlobStore:
        return FileBlobStore(self.root / "blobs", durable=self.durable)

    # -- store format ---------------------------------------------------------------------------------------
    def _check_format(self, raw: bytes, path: Path) -> None:
        version = _store_version(raw, path)
        if version > FORMAT_VERSION:
            raise UnsupportedOperationError(
                f"file store {str(self.root)!r} has format version {version}, newer than this labvault "
                f"understands ({FORMAT_VERSION}); upgrade labvault to open it"
            )
        if version < FORMAT_VERSION:
            raise UnsupportedOperationError(
                f"file store {str(self.root)!r} has format version {version}, and this labvault needs "
                f"{FORMAT_VERSION}: convert it with labvault.store.file.backend.upgrade({self.uri!r}) "
                f"while no "
                "other process uses it"
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
            for d in (self._exp_dir, self._lock_dir, self._trash_dir):
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

    def _append(self, fd: int, path: Path, data: bytes, valid_end: Callable[[int, int], int]) -> int:
        """Append ``data`` to the locked, ``O_APPEND`` file ``fd``; return the new end offset.

        ``valid_end(fd, size)`` returns where the last complete entry ends; when a writer died mid-append
        the torn tail beyond it is cut off first, so it never ends up in the middle of the file.
        """
        size = os.fstat(fd).st_size
        if size:
            good = valid_end(fd, size)
            if good != size:
                os.ftruncate(fd, good)
                size = good
        _write_all(fd, data)
        if self.durable:
            self._pending.add_file(path)  # group commit: readers already tolerate a torn tail
        return size + len(data)

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
            self._drop_state(gone)
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
            os.close(os.open(staging / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
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
            state = self._states.get(experiment_id) or _Exp(experiment_id, src)
            with state.lock:
                # Under the journal lock, so no writer is between its checks and its append.
                try:
                    fd: int | None = os.open(src / JOURNAL, os.O_RDWR)
                except FileNotFoundError:
                    fd = None
                try:
                    if fd is not None:
                        _flock(fd)
                    os.rename(src, doomed)
                finally:
                    if fd is not None:
                        os.close(fd)
            if self.durable:
                self._pending.add_dir(self._exp_dir)
            self._experiments.pop(experiment_id, None)
            self._drop_state(experiment_id)
        shutil.rmtree(doomed, ignore_errors=True)
        self._clean_trash()

    def _clean_trash(self) -> None:
        """Remove what a crashed delete left in trash/ (best effort)."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self._trash_dir):
                shutil.rmtree(self._trash_dir / name, ignore_errors=True)

    # -- experiment state (the folded journal) --------------------------------------------------------------
    def _drop_state(self, experiment_id: str) -> None:
        state = self._states.pop(experiment_id, None)
        if state is not None:
            for run_id in state.ids:
                if self._run_exp.get(run_id) == experiment_id:
                    del self._run_exp[run_id]

    def _register(self, state: _Exp) -> None:
        if state.registered < len(state.ids):
            for run_id in state.ids[state.registered:]:
                self._run_exp[run_id] = state.id
            state.registered = len(state.ids)

    def _state(self, experiment_id: str) -> _Exp | None:
        """The experiment's runs, up to date with its journal; None when the experiment does not exist."""
        state = self._states.get(experiment_id)
        if state is None:
            if not self._check_readable():
                return None
            state = self._load_state(experiment_id)
            if state is None:
                return None
            with self._guard:
                state = self._states.setdefault(experiment_id, state)
        with state.lock:
            try:
                st = os.stat(state.journal)
            except (FileNotFoundError, NotADirectoryError):
                self._drop_state(experiment_id)
                return None
            if st.st_ino != state.ino or st.st_size < state.consumed:  # replaced: start over
                self._drop_state(experiment_id)
                return self._state(experiment_id)
            if st.st_size > state.consumed:
                fd = os.open(state.journal, os.O_RDONLY)
                try:
                    state.fold(_read_fd(fd, st.st_size - state.consumed, state.consumed))
                finally:
                    os.close(fd)
            self._register(state)
        return state

    def _load_state(self, experiment_id: str) -> _Exp | None:
        """Read an experiment's index (when it is valid) and the journal after it."""
        state = _Exp(experiment_id, self._exp_dir / experiment_id)
        try:
            fd = os.open(state.journal, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            st = os.fstat(fd)
            state.ino = st.st_ino
            index = self._read_index(state, fd, st.st_size)
            if index is not None:
                try:
                    state.adopt(index)
                except _BadIndex:
                    state = _Exp(experiment_id, state.dir)
                    state.ino = st.st_ino
            state.fold(_read_fd(fd, st.st_size - state.consumed, state.consumed))
        finally:
            os.close(fd)
        self._register(state)
        if self._index_due(state, closing=False):
            self._write_index(state)  # so the next process need not read this long tail again
        return state

    @staticmethod
    def _read_index(state: _Exp, fd: int, journal_size: int) -> _Index | None:
        try:
            with state.index_path.open("rb") as fh:
                # Mapped, not read: a query touches only the columns it names and the runs it returns.
                data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            index = _Index(data, state.index_path)
        except (FileNotFoundError, NotADirectoryError, _BadIndex, ValueError, TypeError, KeyError):
            return None  # missing, torn or corrupt: rebuilt from the journal
        if index.journal_end > journal_size or _journal_crc(fd, index.journal_end) != index.journal_crc:
            return None  # the journal is not the one indexed (e.g. lost its tail to a power failure)
        return index

    @staticmethod
    def _index_due(state: _Exp, *, closing: bool) -> bool:
        tail = state.consumed - state.index_end
        if tail <= 0:
            return False
        if closing:
            return state.wrote and (state.index_end == 0 or tail >= _INDEX_ON_CLOSE)
        return tail >= max(_INDEX_MIN_TAIL, state.consumed // 4)

    def _write_index(self, state: _Exp) -> None:
        """Write the experiment's index from the state (best effort: it is only a cache)."""
        try:
            with state.lock:
                if state.consumed <= state.index_end:
                    return
                fd = os.open(state.journal, os.O_RDONLY)
                try:
                    crc = _journal_crc(fd, state.consumed)
                finally:
                    os.close(fd)
                end = state.consumed
                data = state.build_index(crc, self.durable)
            atomic_write_bytes(state.index_path, data, durable=self.durable, create_parents=False,
                               defer=self._pending)
            with state.lock:
                state.index_end = max(state.index_end, end)
        except OSError:
            pass  # read-only store, disk full, experiment deleted meanwhile: readers use the journal

    def _write_due_indexes(self, *, closing: bool) -> None:
        for state in list(self._states.values()):
            if self._index_due(state, closing=closing):
                self._write_index(state)

    def _locate(self, run_id: str) -> tuple[_Exp, int]:
        """The state holding a run, up to date, and the run's position in it; NotFoundError if none."""
        experiment_id = self._run_exp.get(run_id)
        if experiment_id is not None:
            state = self._state(experiment_id)
            if state is not None and run_id in state.pos:
                return state, state.pos[run_id]
        for e in self._scan_experiments():
            state = self._state(e.id)
            if state is not None and run_id in state.pos:
                return state, state.pos[run_id]
        raise NotFoundError(f"run {run_id} not found")

    def _append_journal(self, state: _Exp, build: Callable[[_Exp], dict[str, Any] | None]) -> None:
        """Append ``build(state)`` (None: nothing) to the journal under its lock, after catching up."""
        with state.lock:
            try:
                fd = os.open(state.journal, os.O_RDWR | os.O_APPEND)
            except (FileNotFoundError, NotADirectoryError) as exc:
                self._drop_state(state.id)
                raise NotFoundError(f"experiment {state.id} not found") from exc
            try:
                _flock(fd)
                try:
                    current = os.stat(state.journal).st_ino
                except (FileNotFoundError, NotADirectoryError):
                    current = -1
                st = os.fstat(fd)
                if current != st.st_ino:  # deleted while we waited for the lock
                    self._drop_state(state.id)
                    raise NotFoundError(f"experiment {state.id} not found")
                if st.st_ino != state.ino or st.st_size < state.consumed:
                    raise CorruptDataError(f"run journal {state.journal} was replaced or truncated")
                if st.st_size > state.consumed:
                    state.fold(_read_fd(fd, st.st_size - state.consumed, state.consumed))
                    if st.st_size > state.consumed:  # a writer died mid-line: cut the torn line off
                        os.ftruncate(fd, state.consumed)
                    self._register(state)
                doc = build(state)
                if doc is None:
                    return
                line = _dump_line(doc) + b"\n"
                _write_all(fd, line)
                state.apply(doc)
                state.consumed += len(line)
                state.wrote = True
                self._register(state)
            finally:
                os.close(fd)  # releases the lock
        if self.durable:
            self._pending.add_file(state.journal)

    def _modify(self, run_id: str, build: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        """Append the line ``build(run record)`` makes (None: nothing) for an existing run."""
        self._ensure_store()
        state, _i = self._locate(run_id)

        def make(st: _Exp) -> dict[str, Any] | None:
            i = st.pos.get(run_id)
            if i is None:
                raise NotFoundError(f"run {run_id} not found")
            return build(st.record(i))

        self._append_journal(state, make)

    # -- runs ---------------------------------------------------------------------------------------------
    @staticmethod
    def _infos(state: _Exp, positions: Iterable[int]) -> list[RunInfo]:
        """RunInfo copies of the records at ``positions`` (call under ``state.lock``).

        Params and results holding lists or dicts (flagged ``_nested`` in the record) are deep-copied, so
        a caller changing what it got never changes the cached state.
        """
        positions = list(positions)
        with _no_gc(len(positions) > 1000):
            state.parse(positions)
            return FileBackend._build_infos(state, positions)

    @staticmethod
    def _build_infos(state: _Exp, positions: list[int]) -> list[RunInfo]:
        recs = state.recs
        experiment_id = state.id
        out = []
        try:
            for i in positions:
                r = cast(dict[str, Any], recs[i])
                nested = "_nested" in r
                out.append(RunInfo(
                    r["id"], experiment_id, r["number"], r["name"], r["parent_id"], r["status"],
                    r["start_time"], r["end_time"], r["error"], r["heartbeat"],
                    _deep(r["params"]) if nested else r["params"].copy(),
                    r["tags"].copy(), {k: float(entry[0]) for k, entry in r["metrics"].items()},
                    _deep(r["results"]) if nested else r["results"].copy(),
                ))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise CorruptDataError(f"a run record of experiment {experiment_id} is invalid: {exc!r}") from exc
        return out

    @_translate_os_errors
    def _create_run(
        self, experiment_id: str, name: str | None, parent_id: str | None, start_time: float,
        params: dict[str, Any], tags: dict[str, str], *, run_id: str | None = None,
    ) -> RunInfo:
        if not self._check_readable():
            raise NotFoundError(f"experiment {experiment_id} not found")
        self._ensure_store()
        state = self._state(experiment_id)
        if state is None:
            raise NotFoundError(f"experiment {experiment_id} not found")
        if parent_id is not None:
            self._locate(parent_id)  # NotFoundError when absent
        if run_id is None:
            run_id = uuid.uuid4().hex
        else:
            try:
                self._locate(run_id)
            except NotFoundError:
                pass
            else:
                raise run_exists_error(run_id)

        def build(st: _Exp) -> dict[str, Any]:
            if run_id in st.pos:  # created meanwhile by another process
                raise run_exists_error(run_id)
            return {"op": "create", "id": run_id, "number": st.max_number + 1, "name": name,
                    "parent_id": parent_id, "start_time": start_time, "params": params, "tags": tags}

        self._append_journal(state, build)
        with state.lock:
            return self._infos(state, [state.pos[run_id]])[0]

    @_translate_os_errors
    def _get_run(self, run_id: str) -> RunInfo:
        if not self._check_readable():
            raise NotFoundError(f"run {run_id} not found")
        state, i = self._locate(run_id)
        with state.lock:
            return self._infos(state, [i])[0]

    @_translate_os_errors
    def _list_runs(self, experiment_ids: list[str]) -> list[RunInfo]:
        if not self._check_readable():
            return []
        out: list[RunInfo] = []
        for experiment_id in dict.fromkeys(experiment_ids):
            state = self._state(experiment_id)
            if state is None:
                continue
            with state.lock:
                state.all_records()
                out.extend(self._infos(state, range(len(state.ids))))
        return out

    @_translate_os_errors
    def _search_runs(
        self, experiment_ids: list[str], expr: Expr, order: Sequence[OrderKey], limit: int | None,
        offset: int,
    ) -> list[RunInfo]:
        """Filter, sort and page with numpy over the experiments' columns; build only the runs returned."""
        if not self._check_readable():
            return []
        states = [s for s in (self._state(e) for e in dict.fromkeys(experiment_ids)) if s is not None]
        end = None if limit is None else offset + limit
        with contextlib.ExitStack() as stack:
            for state in sorted(states, key=lambda s: s.id):
                stack.enter_context(state.lock)
            sizes = [len(s.ids) for s in states]
            n = sum(sizes)
            cache: dict[Field, _Col] = {}

            def col(field: Field) -> _Col:
                found = cache.get(field)
                if found is None:
                    found = cache[field] = _concat_cols([s.column(field) for s in states])
                return found

            try:
                hits, _false = _veval(expr, col, n)
            except _Unsupported:
                return super()._search_runs(experiment_ids, expr, order, limit, offset)
            selected = np.flatnonzero(hits)
            if len(states) == 1 and states[0].monotonic:
                base_rank = np.arange(n)
            else:  # run number, then id, across experiments
                numbers = np.concatenate([np.asarray(s.numbers, dtype=np.int64) for s in states]) if n \
                    else np.zeros(0, dtype=np.int64)
                ids = [rid for s in states for rid in s.ids]
                id_rank = np.empty(n, dtype=np.int64)
                id_rank[np.argsort(np.array(ids, dtype=object), kind="stable")] = np.arange(n)
                base_rank = np.empty(n, dtype=np.int64)
                base_rank[np.lexsort((id_rank, numbers))] = np.arange(n)
            if order:
                selected = _order(selected, base_rank, order, col)
            else:
                selected = selected[np.argsort(base_rank[selected], kind="stable")]
            picked = selected[offset:end].tolist()
            if len(states) == 1:
                return self._infos(states[0], picked)
            starts = np.cumsum([0, *sizes]).tolist()
            out = []
            for p in picked:
                k = bisect.bisect_right(starts, p) - 1
                out.extend(self._infos(states[k], [p - starts[k]]))
            return out

    @_translate_os_errors
    def _update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        self._modify(run_id, lambda rec: {"op": "update", "id": run_id, "fields": fields})

    @_translate_os_errors
    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        def build(rec: dict[str, Any]) -> dict[str, Any] | None:
            stored = rec["params"]
            check_params_conflict(run_id, stored, params)
            new = {k: val for k, val in params.items() if k not in stored}
            return {"op": "params", "id": run_id, "params": new} if new else None

        self._modify(run_id, build)

    @_translate_os_errors
    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        def build(rec: dict[str, Any]) -> dict[str, Any] | None:
            stored = rec["tags"]
            if all(k in stored and stored[k] == val for k, val in tags.items()):
                return None
            return {"op": "tags", "id": run_id, "tags": tags}

        self._modify(run_id, build)

    @_translate_os_errors
    def _log_results(self, run_id: str, results: dict[str, Any]) -> None:
        self._modify(run_id, lambda rec: {"op": "results", "id": run_id, "results": results})

    # -- run directories ----------------------------------------------------------------------------------
    def _run_dir(self, state: _Exp, run_id: str, *, make: bool = False) -> Path:
        """A run's directory (made on first use without re-creating a deleted experiment)."""
        path = state.dir / "runs" / run_id
        if make and run_id not in self._run_dirs_made:
            try:
                os.mkdir(path)
                if self.durable:
                    self._pending.add_dir(path.parent)
            except FileExistsError:
                pass
            except (FileNotFoundError, NotADirectoryError) as exc:  # the experiment was deleted
                raise NotFoundError(f"run {run_id} not found") from exc
            try:
                os.mkdir(path / "metrics")
                if self.durable:
                    self._pending.add_dir(path)
            except FileExistsError:
                pass
            except (FileNotFoundError, NotADirectoryError) as exc:
                raise NotFoundError(f"run {run_id} not found") from exc
            self._run_dirs_made.add(run_id)
        return path

    # -- metrics ------------------------------------------------------------------------------------------
    @_translate_os_errors
    def _log_metrics(self, run_id: str, series: list[MetricSeries], batch_id: str | None) -> bool:
        self._ensure_store()
        state, i = self._locate(run_id)
        with state.lock:
            known = {k: entry[3] for k, entry in state.record(i)["metrics"].items()}
        run_dir = self._run_dir(state, run_id, make=True)
        by_key: dict[str, list[MetricSeries]] = {}
        for s in series:
            by_key.setdefault(s.key, []).append(s)
        latest: dict[str, list[Any]] = {}
        fds: list[int] = []
        try:
            locked = [(key, *self._lock_segment(run_id, run_dir / "metrics", key, fds))
                      for key in sorted(by_key)]  # one lock order everywhere: no deadlock between writers
            # A re-sent batch holds the same segment locks as its first attempt, so it waits for it here.
            if batch_id is not None and batch_id in self._recent_batches(run_dir):
                return False
            for key, fd, path in locked:
                expected = known.get(key)

                def valid_end(fd: int, size: int, expected: Any = expected, name: str = str(path)) -> int:
                    if size == expected:
                        return size
                    return scan_segment(_read_fd(fd, size), name)[1]

                chunks = [encode_record(s.steps[j:j + MAX_RECORD_POINTS], s.values[j:j + MAX_RECORD_POINTS],
                                        s.timestamps[j:j + MAX_RECORD_POINTS])
                          for s in by_key[key] for j in range(0, len(s), MAX_RECORD_POINTS)]
                end = self._append(fd, path, b"".join(chunks) if len(chunks) > 1 else chunks[0], valid_end)
                value, step, ts = by_key[key][-1].last()
                latest[key] = [_enc_float(value), step, ts, end]
            if batch_id is not None:
                self._remember_batch(run_dir, batch_id)
            # While the segments are still locked, so the journal orders latest values like the appends.
            self._modify(run_id, lambda rec: {"op": "metrics", "id": run_id, "metrics": latest})
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def _lock_segment(self, run_id: str, metrics_dir: Path, key: str, fds: list[int]) -> tuple[int, Path]:
        """Open and lock the segment file of ``key`` (its fd also goes to ``fds``, to be closed)."""
        path = metrics_dir / seg_name(key)
        if "~" in path.name and not path.with_suffix(".key").exists():
            try:
                self._write_doc(path.with_suffix(".key"), {"key": key})
            except FileNotFoundError as exc:
                raise NotFoundError(f"run {run_id} not found") from exc
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except (FileNotFoundError, NotADirectoryError) as exc:  # the experiment was deleted
            raise NotFoundError(f"run {run_id} not found") from exc
        fds.append(fd)
        _flock(fd)
        return fd, path

    @staticmethod
    def _recent_batches(run_dir: Path) -> set[str]:
        """The ids of (at least) the run's last ``BATCH_MEMORY`` metric batches, read from the end of its
        ``BATCHES`` file (a torn last line, of a writer killed mid-write, is no id)."""
        try:
            with open(run_dir / BATCHES, "rb") as fh:
                start = max(0, fh.seek(0, os.SEEK_END) - _BATCH_LINE * BATCH_MEMORY)
                fh.seek(start)
                lines = fh.read().split(b"\n")[:-1]
        except FileNotFoundError:
            return set()
        if start:
            lines = lines[1:]  # begins mid-line
        return {line.decode("ascii", "replace") for line in lines}

    @staticmethod
    def _remember_batch(run_dir: Path, batch_id: str) -> None:
        """Append a batch id to the run's ``BATCHES`` (one write of a whole line). Never fsynced: a power
        failure can only make the store forget that some batches were applied (a retry of one then
        stores it again), and sparing the fsyncs of a file and a directory per run keeps runs cheap."""
        fd = os.open(run_dir / BATCHES, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _write_all(fd, batch_id.encode("ascii") + b"\n")
        finally:
            os.close(fd)

    @_translate_os_errors
    def _metric_history(self, run_id: str, key: str) -> MetricSeries:
        if not self._check_readable():
            raise NotFoundError(f"run {run_id} not found")
        state, _i = self._locate(run_id)
        path = self._run_dir(state, run_id) / "metrics" / seg_name(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return MetricSeries.empty(key)
        return decode_segment(key, data, str(path))

    # -- artifacts ----------------------------------------------------------------------------------------
    @_translate_os_errors
    def _add_artifact(self, run_id: str, info: ArtifactInfo) -> None:
        self._add_artifacts(run_id, [info])

    @_translate_os_errors
    def _add_artifacts(self, run_id: str, infos: list[ArtifactInfo]) -> None:
        """Append the records to the run's manifest in one locked write (a flush of many small ones)."""
        if not infos:
            return
        line = "".join(json.dumps({"key": info.key, "digest": info.digest, "size": info.size,
                                   "created_at": info.created_at}, ensure_ascii=False) + "\n"
                       for info in infos)
        self._ensure_store()
        state, _i = self._locate(run_id)
        path = self._run_dir(state, run_id, make=True) / "artifacts.jsonl"
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFoundError(f"run {run_id} not found") from exc
        try:
            _flock(fd)
            self._append(fd, path, line.encode("utf-8"), _manifest_valid_end)
        finally:
            os.close(fd)

    @_translate_os_errors
    def _list_artifacts(self, run_id: str, prefix: str) -> list[ArtifactInfo]:
        if not self._check_readable():
            raise NotFoundError(f"run {run_id} not found")
        state, _i = self._locate(run_id)
        items = self._manifest(self._run_dir(state, run_id) / "artifacts.jsonl")
        return [info for key, info in items.items() if key.startswith(prefix)]

    def _manifest(self, path: Path) -> dict[str, ArtifactInfo]:
        """The manifest's entries (last line per key wins), parsing only what was appended since last time.

        The manifest is append-only, so the cache is keyed by the file's inode and the offset parsed up
        to; a torn last line (a writer killed mid-append) is left for the next read.
        """
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
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


def _store_version(raw: bytes, path: Path) -> int:
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptDataError(f"store marker {path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CorruptDataError(f"{path} does not describe a {FORMAT_NAME} store: {meta!r}")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptDataError(f"store marker {path} has no integer version: {meta!r}")
    return version


# -- upgrading a version 1 store ------------------------------------------------------------------------
def _latest_from_segments(metrics_dir: Path) -> dict[str, list[Any]]:
    """The last point and end offset of every segment in a run's metrics directory."""
    try:
        names = sorted(os.listdir(metrics_dir))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    latest: dict[str, list[Any]] = {}
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
        latest[key] = [_enc_float(value), step, stamp, end]
    return latest


def _upgrade_experiment(exp_dir: Path) -> None:
    """Turn a version 1 experiment (``runs/<number>/run.json``) into a journal (idempotent)."""
    if (exp_dir / JOURNAL).exists():
        return
    runs_dir = exp_dir / "runs"
    runs_dir.mkdir(exist_ok=True)
    docs: list[tuple[dict[str, Any], Path]] = []
    for name in os.listdir(runs_dir):
        path = runs_dir / name / "run.json"
        try:
            doc = json.loads(path.read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            continue  # a creation that crashed before writing run.json
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"document {path} is corrupt (not valid JSON): {exc}") from exc
        docs.append((doc, runs_dir / name))
    lines = []
    try:
        docs.sort(key=lambda d: int(d[0]["number"]))
        for doc, run_dir in docs:
            run_id = str(doc["id"])
            lines.append({"op": "create", "id": run_id, "number": int(doc["number"]), "name": doc.get("name"),
                          "parent_id": doc.get("parent_id"), "start_time": float(doc["start_time"]),
                          "params": doc.get("params") or {}, "tags": doc.get("tags") or {}})
            lines.append({"op": "update", "id": run_id, "fields": {
                k: doc.get(k) for k in ("status", "end_time", "error", "heartbeat")}})
            if doc.get("results"):
                lines.append({"op": "results", "id": run_id, "results": doc["results"]})
            latest = _latest_from_segments(run_dir / "metrics")
            if latest:
                lines.append({"op": "metrics", "id": run_id, "metrics": latest})
            if run_dir.name != run_id:
                os.rename(run_dir, runs_dir / run_id)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptDataError(f"a run document under {runs_dir} is not a valid run: {exc!r}") from exc
    atomic_write_bytes(exp_dir / JOURNAL, b"".join(_dump_line(line) + b"\n" for line in lines),
                       create_parents=False)


def upgrade(uri: str) -> tuple[int, int]:
    """Convert a file store to this labvault's format; return (old version, new version).

    Version 1 kept one ``run.json`` per run; version 2 keeps a journal per experiment. Each experiment is
    converted on its own (a crash part-way leaves converted and unconverted experiments, and running
    this again finishes the job); the store marker changes last. Run it while no other process uses the
    store. A missing store is created (old version 0).
    """
    backend = FileBackend.from_uri(uri)
    marker = backend.root / "labvault.json"
    try:
        raw = marker.read_bytes()
    except FileNotFoundError:
        backend._ensure_store()
        return 0, FORMAT_VERSION
    version = _store_version(raw, marker)
    if version >= FORMAT_VERSION:
        backend._check_format(raw, marker)
        return version, version
    try:
        backend._lock_dir.mkdir(exist_ok=True)
        with backend._lock("experiments"):
            exp_root = backend.root / "experiments"
            names = os.listdir(exp_root) if exp_root.is_dir() else []
            for name in sorted(names):
                if not name.startswith(".") and (exp_root / name / "experiment.json").is_file():
                    _upgrade_experiment(exp_root / name)
            shutil.rmtree(backend.root / "runs", ignore_errors=True)  # version 1's run id symlinks
            atomic_write_bytes(marker, _dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}))
    except OSError as exc:
        raise BackendUnavailableError(f"cannot upgrade file store {str(backend.root)!r}: {exc}") from exc
    return version, FORMAT_VERSION
