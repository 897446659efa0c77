"""An experiment's run journal and the runs folded from it (``ExperimentState``), which searches read.

Creating a run, changing its status, heartbeat or end time, logging params, tags or results, and logging
metrics (the latest point per key) each append one line to the experiment's ``journal.jsonl``::

    {"op":"create","id":...,"number":3,"name":null,"parent_id":null,"start_time":...,"params":{},"tags":{}}
    {"op":"update","id":...,"fields":{"status":"finished","end_time":...}}
    {"op":"params"|"tags"|"results","id":...,"params"|"tags"|"results":{...}}
    {"op":"metrics","id":...,"metrics":{"loss":[value, step, timestamp, segment end offset]}}

A run's state is the fold of its lines. A line is written with one ``write``; a writer killed mid-line
leaves a torn last line (no newline), which readers ignore and the next writer cuts off under the lock
(see ``FileBackend._append_journal``). Lines of integers beyond 64 bits start with ``{"~":1,`` (parsed
with the standard ``json`` module; every other line with orjson).

A process keeps each experiment's folded state in memory and refreshes it by reading only what was
appended since (``read_tail``). It starts from the experiment's index (``labvault.store.file.index``)
when that is valid: the runs' records are then parsed from the index only when asked for, and a search
column is the index's column patched with the runs changed since (``section_values``). The state is a
``ColumnSource`` of the shared search driver (``labvault.store.search.columns``).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import orjson

from labvault._fs import SyncQueue, atomic_write_bytes
from labvault.domain import RunInfo
from labvault.errors import CorruptDataError
from labvault.store.file.fileio import BIG, dump_line, load_one, read_fd
from labvault.store.file.index import (
    INDEX,
    INDEX_MIN_TAIL,
    INDEX_ON_CLOSE,
    BadIndex,
    IndexFile,
    Section,
    encode_index,
    journal_crc,
    read_index,
)
from labvault.store.search.columns import TEXT_ATTRS, TIME_ATTRS, ColumnSource, deep_copy, has_nested, no_gc

if TYPE_CHECKING:
    from labvault.query import Field

JOURNAL = "journal.jsonl"

#: Gets one value of a run record (a param, a tag, a metric's latest value or an attribute).
Getter = Callable[[dict[str, Any]], Any]


def parse_lines(chunk: bytes, path: Path, offset: int) -> list[Any]:
    """The JSON objects of complete journal lines (``chunk`` ends with a newline); one orjson call."""
    body = chunk[:-1]
    if BIG not in body:
        try:
            return cast(list[Any], orjson.loads(b"[" + body.replace(b"\n", b",") + b"]"))
        except orjson.JSONDecodeError:
            pass  # find the bad line below
    out = []
    pos = 0
    for line in body.split(b"\n"):
        try:
            out.append(load_one(line))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptDataError(
                f"run journal {path} is corrupt: bad line at byte {offset + pos}: {exc}") from exc
        pos += len(line) + 1
    return out


def _metric_of(key: str) -> Getter:
    def get(rec: dict[str, Any]) -> float:
        entry = rec["metrics"].get(key)
        return math.nan if entry is None else float(entry[0])

    return get


def _item_of(kind: str, key: str) -> Getter:
    def get(rec: dict[str, Any]) -> Any:
        return rec[kind].get(key)

    return get


def _attr_of(key: str) -> Getter:
    def get(rec: dict[str, Any]) -> Any:
        return rec[key]

    return get


def _accessor(field: Field) -> tuple[str, Getter]:
    """The index section of a field's column, and how to get its value from a run record."""
    kind, key = field.kind, field.key
    if kind == "params":
        return f"p:{key}", _item_of("params", key)
    if kind == "tags":
        return f"t:{key}", _item_of("tags", key)
    if kind == "metrics":
        return f"m:{key}", _metric_of(key)
    return f"a:{key}", _attr_of(key)


def _or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


class ExperimentState(ColumnSource):
    """One experiment's runs as folded from its journal (and index), refreshed incrementally."""

    def __init__(self, exp_id: str, path: Path) -> None:
        super().__init__(exp_id)
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
        self.in_order = True  # numbers increase with position (always, unless the journal was edited)
        self.base: IndexFile | None = None
        self.n_base = 0
        self.changed: set[int] = set()  # base runs changed since the index
        self.registered = 0  # runs whose ids the backend has mapped to this experiment

    @classmethod
    def load(cls, exp_id: str, path: Path) -> ExperimentState | None:
        """Read an experiment's index (when it is valid) and the journal after it; None when the
        experiment has no journal (it does not exist, or is being deleted)."""
        state = cls(exp_id, path)
        try:
            fd = os.open(state.journal, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            st = os.fstat(fd)
            state.ino = st.st_ino
            index = read_index(state.index_path, fd, st.st_size)
            if index is not None:
                try:
                    state.adopt(index)
                except BadIndex:
                    state = cls(exp_id, path)
                    state.ino = st.st_ino
            state.read_tail(fd, st.st_size)
        finally:
            os.close(fd)
        return state

    # -- state --------------------------------------------------------------------------------------------
    def adopt(self, index: IndexFile) -> None:
        """Start from an index (the state must be empty)."""
        self.base = index
        self.n_base = index.n
        self.ids = list(index.ids)
        self.pos = {rid: i for i, rid in enumerate(self.ids)}
        if len(self.pos) != len(self.ids):
            raise BadIndex("duplicate run ids")
        self.numbers = list(index.numbers)
        self.recs = [None] * index.n
        self.max_number = max(self.numbers, default=0)
        self.in_order = all(a < b for a, b in zip(self.numbers, self.numbers[1:], strict=False))
        self.consumed = self.index_end = index.journal_end
        self.version += 1

    def record(self, i: int) -> dict[str, Any]:
        """The record of the run at position ``i`` (parsed from the index on first use)."""
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
        """Every run's record, in position order (all parsed)."""
        if self.base is not None and any(r is None for r in self.recs[:self.n_base]):
            for i, rec in enumerate(self.base.all_records()):
                if self.recs[i] is None:
                    self.recs[i] = rec
        return cast(list[dict[str, Any]], self.recs)

    def apply(self, doc: Any) -> None:
        """Fold one journal line into the state."""
        try:
            if doc["op"] == "create":
                self._create(doc)
            else:
                self._change(doc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptDataError(f"run journal {self.journal} has an invalid line: {exc!r}") from exc
        self.version += 1

    def _create(self, doc: Any) -> None:
        run_id = doc["id"]
        if run_id in self.pos:
            raise CorruptDataError(f"run journal {self.journal} creates run {run_id} twice")
        number = int(doc["number"])
        start = float(doc["start_time"])
        rec = {"id": run_id, "number": number, "name": doc.get("name"), "parent_id": doc.get("parent_id"),
               "status": "running", "start_time": start, "end_time": None, "error": None,
               "heartbeat": start, "params": dict(doc.get("params") or {}),
               "tags": dict(doc.get("tags") or {}), "results": {}, "metrics": {}}
        if has_nested(rec["params"]):
            rec["_nested"] = True
        self.pos[run_id] = len(self.ids)
        self.ids.append(run_id)
        if number <= self.max_number:
            self.in_order = False
        self.max_number = max(self.max_number, number)
        self.numbers.append(number)
        self.recs.append(rec)

    def _change(self, doc: Any) -> None:
        op = doc["op"]
        i = self.pos[doc["id"]]
        rec = self.record(i)
        if op == "update":
            fields = doc["fields"]
            for key in ("status", "end_time", "error", "heartbeat", "name"):
                if key in fields:
                    rec[key] = fields[key]
        elif op in ("params", "tags", "results", "metrics"):
            rec[op].update(doc[op])
            if op in ("params", "results") and has_nested(doc[op]):
                rec["_nested"] = True
        else:
            raise CorruptDataError(f"run journal {self.journal} has an unknown line {op!r}")
        if i < self.n_base:
            self.changed.add(i)

    def fold(self, chunk: bytes) -> None:
        """Apply the complete lines at the start of ``chunk`` (read at ``self.consumed``)."""
        complete = chunk.rfind(b"\n") + 1
        if complete:
            for doc in parse_lines(chunk[:complete], self.journal, self.consumed):
                self.apply(doc)
            self.consumed += complete

    def read_tail(self, fd: int, size: int) -> None:
        """Fold what the open journal ``fd`` of ``size`` bytes holds after ``self.consumed``."""
        self.fold(read_fd(fd, size - self.consumed, self.consumed))

    def infos(self, positions: Iterable[int]) -> list[RunInfo]:
        """RunInfo copies of the records at ``positions`` (call under ``self.lock``).

        Params and results holding lists or dicts (flagged ``_nested`` in the record) are deep-copied, so
        a caller changing what it got never changes the cached state.
        """
        positions = list(positions)
        with no_gc(len(positions) > 1000):
            self.parse(positions)
            return self._build_infos(positions)

    def _build_infos(self, positions: list[int]) -> list[RunInfo]:
        recs = self.recs
        experiment_id = self.id
        out = []
        try:
            for i in positions:
                r = cast(dict[str, Any], recs[i])
                nested = "_nested" in r
                out.append(RunInfo(
                    r["id"], experiment_id, r["number"], r["name"], r["parent_id"], r["status"],
                    r["start_time"], r["end_time"], r["error"], r["heartbeat"],
                    deep_copy(r["params"]) if nested else r["params"].copy(),
                    r["tags"].copy(), {k: float(entry[0]) for k, entry in r["metrics"].items()},
                    deep_copy(r["results"]) if nested else r["results"].copy(),
                ))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise CorruptDataError(f"a run record of experiment {experiment_id} is invalid: {exc!r}") from exc
        return out

    # -- columns (for the search driver and the index) -----------------------------------------------------
    def size(self) -> int:
        """The number of runs."""
        return len(self.ids)

    def run_ids(self) -> list[str]:
        """The run ids in journal order."""
        return self.ids

    def run_numbers(self) -> np.ndarray[Any, Any]:
        """The run numbers in journal order."""
        return np.asarray(self.numbers, dtype=np.int64)

    def values(self, field: Field) -> list[Any]:
        """A param, tag or text attribute of every run."""
        return self.section_values(*_accessor(field))

    def floats(self, field: Field) -> np.ndarray[Any, Any]:
        """A metric or time attribute of every run (NaN: none)."""
        return self.section_floats(*_accessor(field))

    def _patchable(self) -> bool:
        return self.base is not None and len(self.changed) + len(self.ids) - self.n_base <= len(self.ids) // 2

    def section_values(self, section: str, get: Getter) -> list[Any]:
        """One value per run (``get(record)``), from the index column patched with later changes."""
        if self._patchable():
            assert self.base is not None
            vals = self.base.section(section) if self.base.has(section) else [None] * self.n_base
            for i in self.changed:
                vals[i] = get(self.record(i))
            vals.extend(get(self.record(i)) for i in range(self.n_base, len(self.ids)))
            return cast(list[Any], vals)
        return [get(r) for r in self.all_records()]

    def section_floats(self, section: str, get: Getter) -> np.ndarray[Any, Any]:
        """Like ``section_values`` for a float64 column (NaN where missing)."""
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
        """The param, tag or metric keys of any run, in first-seen order."""
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

    # -- writing the index ----------------------------------------------------------------------------------
    def index_due(self, *, closing: bool) -> bool:
        """Whether the unindexed tail of the journal is worth an index write now (see the index docs)."""
        tail = self.consumed - self.index_end
        if tail <= 0:
            return False
        if closing:
            return self.wrote and (self.index_end == 0 or tail >= INDEX_ON_CLOSE)
        return tail >= max(INDEX_MIN_TAIL, self.consumed // 4)

    def write_index(self, *, durable: bool, defer: SyncQueue) -> None:
        """Write the experiment's index from the state (best effort: it is only a cache)."""
        try:
            with self.lock:
                if self.consumed <= self.index_end:
                    return
                fd = os.open(self.journal, os.O_RDONLY)
                try:
                    crc = journal_crc(fd, self.consumed)
                finally:
                    os.close(fd)
                end = self.consumed
                data = self.build_index(crc, durable)
            atomic_write_bytes(self.index_path, data, durable=durable, create_parents=False, defer=defer)
            with self.lock:
                self.index_end = max(self.index_end, end)
        except OSError:
            pass  # read-only store, disk full, experiment deleted meanwhile: readers use the journal

    def build_index(self, crc: int, synced: bool) -> bytes:
        """The index file for the state as it is (call under ``self.lock``)."""
        keys = {kind: self.keys(kind) for kind in ("params", "tags", "metrics")}
        sections = [*self._record_sections(), *self._column_sections(keys)]
        return encode_index(self.id, self.consumed, crc, len(self.ids), keys, sections, synced)

    def _record_sections(self) -> list[Section]:
        """The records (unchanged ones copied from the index as they are), their offsets and the ids."""
        n = len(self.ids)
        blobs: list[bytes | memoryview] = []
        big = False
        for i in range(n):
            rec = self.recs[i]
            if rec is None or (i < self.n_base and i not in self.changed):
                assert self.base is not None and i < self.n_base
                blob: bytes | memoryview = self.base.raw_record(i)
            else:
                blob = dump_line(rec)
            big = big or bytes(blob[:len(BIG)]) == BIG
            blobs.append(blob)
        offsets = np.zeros(n + 1, dtype="<i8")
        if n:
            offsets[1:] = np.cumsum([len(b) + 1 for b in blobs])
        offsets += 1
        return [("records", b"[" + b",".join(blobs) + b"]", "records-big" if big else "json"),
                ("offsets", offsets.tobytes(), "i8"),
                ("ids", orjson.dumps(self.ids), "json")]

    def _column_sections(self, keys: dict[str, list[str]]) -> list[Section]:
        """One section per searchable attribute and per param, tag and metric key."""
        sections: list[Section] = [("a:number", np.asarray(self.numbers, dtype="<i8").tobytes(), "i8")]
        for key in TIME_ATTRS:
            floats = self.section_floats(f"a:{key}", _attr_of(key))
            sections.append((f"a:{key}", floats.astype("<f8").tobytes(), "f8"))
        for key in TEXT_ATTRS:
            texts = self.section_values(f"a:{key}", _attr_of(key))
            sections.append((f"a:{key}", orjson.dumps(texts), "json"))
        for key in keys["params"]:
            vals = self.section_values(f"p:{key}", _item_of("params", key))
            try:
                sections.append((f"p:{key}", orjson.dumps(vals), "json"))
            except TypeError:  # integers beyond 64 bits
                sections.append((f"p:{key}", json.dumps(vals, ensure_ascii=False).encode("utf-8"), "bigjson"))
        for key in keys["tags"]:
            tags = self.section_values(f"t:{key}", _item_of("tags", key))
            sections.append((f"t:{key}", orjson.dumps(tags), "json"))
        for key in keys["metrics"]:
            metric = self.section_floats(f"m:{key}", _metric_of(key))
            sections.append((f"m:{key}", metric.astype("<f8").tobytes(), "f8"))
        return sections
