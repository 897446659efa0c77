"""Metric segments: the binary record format of a run's metric files, their names, and batch ids.

Each ``log_metrics`` call appends, per key, one record to ``metrics/<quote(key, safe="")>.seg``::

    header  16 bytes  b"LVS1", uint32 n, uint32 crc32(n as uint32 LE + payload), uint32 0   (little-endian)
    payload 24n bytes steps int64[n], values float64[n], timestamps float64[n]              (little-endian)

appended with ``O_APPEND`` under an exclusive ``flock`` of the segment file (fsynced at the next
``sync()``). A reader ignores an incomplete or crc-failing *last* record (a writer killed mid-append) and
raises ``CorruptDataError`` for a bad record followed by valid ones (``scan_segment``). Writers first cut
such a torn tail off (the journal records the end offset of each segment, so the check is one ``fstat``),
so a torn record never ends up in the middle of a file. A key too long for a file name gets a hashed name
and a ``<name>.key`` document holding the key.

A batch appended with ``log_metrics(..., batch_id=)`` is looked for among the last ``BATCH_MEMORY`` ids of
the run's ``metric-batches.txt`` (``recent_batches``) once its segment locks are held, and skipped when
found; its id is appended (``remember_batch``) after its segments and before its journal line.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from labvault.domain import MetricSeries
from labvault.errors import CorruptDataError
from labvault.store.abc import BATCH_MEMORY
from labvault.store.file.fileio import write_all

SEG_MAGIC = b"LVS1"
_HEADER = struct.Struct("<4sIII")
HEADER_SIZE = _HEADER.size  # 16
_N_STRUCT = struct.Struct("<I")
#: Largest number of points in one segment record (a bigger batch is split).
MAX_RECORD_POINTS = 1 << 22
_MAX_SEG_NAME = 200

#: A run's metric batch ids, one a line, appended after the batch's segments (see the module docs).
BATCHES = "metric-batches.txt"
_BATCH_LINE = 33  # the longest line: a 32-character batch id and its newline


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


def encode_records(series: list[MetricSeries]) -> bytes:
    """The records of one key's series, each split into records of at most ``MAX_RECORD_POINTS``."""
    chunks = [encode_record(s.steps[j:j + MAX_RECORD_POINTS], s.values[j:j + MAX_RECORD_POINTS],
                            s.timestamps[j:j + MAX_RECORD_POINTS])
              for s in series for j in range(0, len(s), MAX_RECORD_POINTS)]
    return b"".join(chunks) if len(chunks) > 1 else chunks[0]


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


def last_point(data: bytes, name: str) -> tuple[float, int, float, int] | None:
    """(value, step, timestamp, end offset) of a segment file's last valid point; None if it has none."""
    records, end = scan_segment(data, name)
    if not records:
        return None
    off, n = records[-1]
    step = int(np.frombuffer(data, dtype="<i8", count=1, offset=off + 8 * (n - 1))[0])
    value = float(np.frombuffer(data, dtype="<f8", count=1, offset=off + 16 * n - 8)[0])
    stamp = float(np.frombuffer(data, dtype="<f8", count=1, offset=off + 24 * n - 8)[0])
    return value, step, stamp, end


def enc_float(x: float) -> float | str:
    """A metric value as the journal keeps it: 'nan', 'inf', '-inf' as text (strict JSON has no NaN)."""
    return x if math.isfinite(x) else repr(x)


def recent_batches(run_dir: Path) -> set[str]:
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


def remember_batch(run_dir: Path, batch_id: str) -> None:
    """Append a batch id to the run's ``BATCHES`` (one write of a whole line). Never fsynced: a power
    failure can only make the store forget that some batches were applied (a retry of one then
    stores it again), and sparing the fsyncs of a file and a directory per run keeps runs cheap."""
    fd = os.open(run_dir / BATCHES, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        write_all(fd, batch_id.encode("ascii") + b"\n")
    finally:
        os.close(fd)
