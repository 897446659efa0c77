"""The index file ``index.lvx`` of an experiment: the folded journal up to an offset, as columns.

Reading 10,000 runs from the journal means parsing every line, so each experiment also keeps
``index.lvx``: the folded state of the journal's first ``journal_end`` bytes, with the crc32 of the bytes
just before that offset. It is a cache, never an authority: a reader loads it only when the journal is
at least that long and those bytes still match (``read_index``), then applies the journal lines after
``journal_end`` (normally none or a few); a missing, torn, corrupt or mismatching index is ignored and
rebuilt from the journal.

It holds, after a 16-byte header (magic ``LVIDX01\\n`` + header length) and a JSON header (offsets,
lengths and crc32 of the sections, ``journal_end``, the keys present): every run's record as a JSON
array (parsed only for the runs a query returns), and columns, one per param, tag and metric key and per
searchable attribute (JSON lists, or little-endian float64/int64 arrays for metrics, numbers and times),
so a filter reads the columns it names and is evaluated with numpy over every run at once. Section
names: ``records``, ``offsets``, ``ids``, ``a:<attribute>``, ``p:<param>``, ``t:<tag>``, ``m:<metric>``.

The index is written (temp file + rename, like every document) by a writer at ``close()`` and when its
``sync()`` finds the unindexed tail larger than a quarter of the journal, and by a reader that had to
apply a large tail (``ExperimentState.index_due`` in ``labvault.store.file.journal``, which also builds
the sections). Writers racing to replace it each write a consistent snapshot of some prefix.
"""

from __future__ import annotations

import json
import mmap
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson

from labvault.errors import CorruptDataError
from labvault.store.file.fileio import load_one, read_fd

INDEX = "index.lvx"
INDEX_MAGIC = b"LVIDX01\n"
_INDEX_HEAD = struct.Struct("<8sQ")
#: Bytes of the journal before ``journal_end`` whose crc32 the index records.
_JOURNAL_CHECK = 256
#: A writer's ``close()`` writes the index when at least this much journal is unindexed (or none is).
INDEX_ON_CLOSE = 8192
#: ``sync()`` and readers write the index when the unindexed tail exceeds this and a quarter of the journal.
INDEX_MIN_TAIL = 256 * 1024

#: A section of the index: its name, its bytes and their encoding (json, bigjson, records-big, f8, i8).
Section = tuple[str, bytes, str]


class BadIndex(Exception):
    """An index file that cannot be used (it is then ignored and rebuilt from the journal)."""


class IndexFile:
    """A loaded ``index.lvx``: the folded journal up to ``journal_end`` (see the module docs)."""

    def __init__(self, data: bytes | mmap.mmap, path: Path) -> None:
        self.path = path
        if len(data) < _INDEX_HEAD.size:
            raise BadIndex("too short")
        magic, hlen = _INDEX_HEAD.unpack_from(data, 0)
        if magic != INDEX_MAGIC or _INDEX_HEAD.size + hlen > len(data):
            raise BadIndex("bad magic or header length")
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
            raise BadIndex(f"bad header: {exc}") from exc
        if base + body_len != len(data):
            raise BadIndex("torn body")
        # An index fsynced before its rename cannot be torn; one written without fsync (durable=False)
        # might be after a power failure, so its checksum is verified.
        if not synced and zlib.crc32(memoryview(data)[base:]) != body_crc:
            raise BadIndex("corrupt body")
        self.data = data
        self.ids: list[str] = self.section("ids")
        offs = self.section("offsets")
        if len(self.ids) != self.n or offs.shape != (self.n + 1,):
            raise BadIndex("sections disagree on the number of runs")
        self.offsets: list[int] = offs.tolist()
        self.numbers: list[int] = self.section("a:number").tolist()

    def section(self, name: str) -> Any:
        """A section decoded: a list for JSON sections, a new numpy array for numeric ones."""
        try:
            off, length, enc = self.sections[name]
        except KeyError as exc:
            raise BadIndex(f"no section {name!r}") from exc
        raw = memoryview(self.data)[off:off + length]
        if enc == "f8":
            return np.frombuffer(raw, dtype="<f8").astype(np.float64)
        if enc == "i8":
            return np.frombuffer(raw, dtype="<i8").astype(np.int64)
        if enc == "bigjson":
            return json.loads(bytes(raw))
        return orjson.loads(raw)

    def has(self, name: str) -> bool:
        """Whether the index has a section of that name."""
        return name in self.sections

    def raw_record(self, i: int) -> memoryview:
        """The record of the run at position ``i``, unparsed."""
        off = self.sections["records"][0]
        return memoryview(self.data)[off + self.offsets[i]:off + self.offsets[i + 1] - 1]

    def record(self, i: int) -> dict[str, Any]:
        """The record of the run at position ``i``, parsed and checked against ``ids``."""
        try:
            rec = load_one(self.raw_record(i))
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
        """Every record, in position order (one parse of the whole section when it is plain JSON)."""
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


def journal_crc(fd: int, end: int) -> int:
    """The crc32 of the journal bytes just before ``end`` that an index up to ``end`` records."""
    start = max(0, end - _JOURNAL_CHECK)
    return zlib.crc32(read_fd(fd, end - start, start))


def read_index(path: Path, fd: int, journal_size: int) -> IndexFile | None:
    """The index at ``path`` if it is usable for the open journal ``fd`` of ``journal_size`` bytes."""
    try:
        with path.open("rb") as fh:
            # Mapped, not read: a query touches only the columns it names and the runs it returns.
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        index = IndexFile(data, path)
    except (FileNotFoundError, NotADirectoryError, BadIndex, ValueError, TypeError, KeyError):
        return None  # missing, torn or corrupt: rebuilt from the journal
    if index.journal_end > journal_size or journal_crc(fd, index.journal_end) != index.journal_crc:
        return None  # the journal is not the one indexed (e.g. lost its tail to a power failure)
    return index


def encode_index(experiment_id: str, journal_end: int, crc: int, n: int, keys: dict[str, list[str]],
                 sections: Sequence[Section], synced: bool) -> bytes:
    """The bytes of an index file: the header, then the sections in order."""
    table: dict[str, list[Any]] = {}
    pos = 0
    for name, data, enc in sections:
        table[name] = [pos, len(data), enc]
        pos += len(data)
    body = b"".join(data for _name, data, _enc in sections)
    head = orjson.dumps({
        "format": "labvault-file-index", "experiment_id": experiment_id, "journal_end": journal_end,
        "journal_crc": crc, "n": n, "keys": keys, "sections": table, "body_len": len(body),
        "body_crc": zlib.crc32(body), "synced": synced,
    })
    return _INDEX_HEAD.pack(INDEX_MAGIC, len(head)) + head + body
