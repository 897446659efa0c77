"""What travels between the labvault server and ``HTTPBackend``: JSON shapes of records, the binary metric
frame, and filters turned back into query-language text (the error table is ``labvault.wire.errors``).

This module imports neither FastAPI nor httpx, so the client and the server share it.

The binary metric frame (media type ``application/vnd.labvault.metrics``), little-endian::

    b"LVM1"  uint32 series-count
    per series:  uint32 key-length  key (UTF-8)  uint64 n
                 int64[n] steps  float64[n] values  float64[n] timestamps

NaN and infinities travel as they are. In JSON, a non-finite float is the string ``"NaN"``,
``"Infinity"`` or ``"-Infinity"``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from labvault import query as q
from labvault.domain import ArtifactInfo, ChangeEvent, ExperimentInfo, MetricSeries, RunInfo, validation
from labvault.errors import InvalidArgumentError

if TYPE_CHECKING:
    from labvault.query import Expr, Field, OrderKey, Value

API_PREFIX = "/api/v1"
API_VERSION = 1
METRICS_MEDIA_TYPE = "application/vnd.labvault.metrics"
#: The content type of a JSON response holding integers beyond 64 bits (params and results may: see
#: ``labvault.domain.validation``): orjson would read them as lossy floats, so clients use ``json`` then.
BIGINT_JSON_MEDIA_TYPE = "application/json; labvault-ints=exact"
SHA256_HEADER = "X-Labvault-Sha256"
_MAGIC = b"LVM1"
_MAX_KEY_BYTES = 4096

# -- floats --------------------------------------------------------------------------------------------------
def float_out(value: float) -> float | str:
    """A float as JSON: finite numbers as they are, the others as "NaN" / "Infinity" / "-Infinity"."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def float_in(value: object, what: str = "value") -> float:
    """Inverse of ``float_out``; also accepts ints."""
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if value in ("NaN", "Infinity", "-Infinity"):
        assert isinstance(value, str)
        return float(value)
    raise InvalidArgumentError(
        f"{what} must be a number, 'NaN', 'Infinity' or '-Infinity', got {validation.show(value)}")


# -- records -------------------------------------------------------------------------------------------------
def experiment_out(info: ExperimentInfo) -> dict[str, Any]:
    return {"id": info.id, "name": info.name, "project": info.project, "created_at": info.created_at}


def experiment_in(doc: Mapping[str, Any]) -> ExperimentInfo:
    return ExperimentInfo(str(doc["id"]), str(doc["name"]), str(doc["project"]), float(doc["created_at"]))


def run_out(info: RunInfo) -> dict[str, Any]:
    return {
        "id": info.id, "experiment_id": info.experiment_id, "number": info.number, "name": info.name,
        "parent_id": info.parent_id, "status": info.status, "start_time": info.start_time,
        "end_time": info.end_time, "error": info.error, "heartbeat": info.heartbeat,
        "params": info.params, "tags": info.tags,
        "metrics": {k: float_out(x) for k, x in info.metrics.items()}, "results": info.results,
    }


def run_in(doc: Mapping[str, Any]) -> RunInfo:
    end, beat = doc.get("end_time"), doc.get("heartbeat")
    return RunInfo(
        id=str(doc["id"]), experiment_id=str(doc["experiment_id"]), number=int(doc["number"]),
        name=doc.get("name"), parent_id=doc.get("parent_id"), status=str(doc["status"]),
        start_time=float(doc["start_time"]), end_time=None if end is None else float(end),
        error=doc.get("error"), heartbeat=None if beat is None else float(beat),
        params=dict(doc.get("params") or {}), tags=dict(doc.get("tags") or {}),
        metrics={k: float_in(x) for k, x in (doc.get("metrics") or {}).items()},
        results=dict(doc.get("results") or {}),
    )


def artifact_out(info: ArtifactInfo) -> dict[str, Any]:
    return {"key": info.key, "size": info.size, "digest": info.digest, "created_at": info.created_at}


def artifact_in(doc: Mapping[str, Any]) -> ArtifactInfo:
    return ArtifactInfo(str(doc["key"]), int(doc["size"]), str(doc["digest"]), float(doc["created_at"]))


def event_in(doc: Mapping[str, Any]) -> ChangeEvent:
    return ChangeEvent.from_json(dict(doc))


# -- metric series -------------------------------------------------------------------------------------------
def series_out_json(series: MetricSeries) -> dict[str, Any]:
    """A series as JSON arrays (non-finite values as strings)."""
    values = series.values
    vals: list[Any] = values.tolist()
    if not np.isfinite(values).all():
        vals = [float_out(x) for x in vals]
    return {"key": series.key, "steps": series.steps.tolist(), "values": vals,
            "timestamps": series.timestamps.tolist()}


def series_in_json(doc: object) -> MetricSeries:
    """Parse ``{"key", "steps", "values", "timestamps"}`` (``InvalidArgumentError`` when malformed)."""
    if not isinstance(doc, Mapping):
        raise InvalidArgumentError("each metric series must be an object with key, steps, values, timestamps")
    key = doc.get("key")
    if not isinstance(key, str):
        raise InvalidArgumentError("metric series 'key' must be a string")
    raw = [doc.get(name) for name in ("steps", "values", "timestamps")]
    if not all(isinstance(item, list) for item in raw):
        raise InvalidArgumentError(f"metric {key!r}: steps, values and timestamps must be arrays")
    steps_in, values_in, times_in = raw
    assert isinstance(steps_in, list) and isinstance(values_in, list) and isinstance(times_in, list)
    for i, s in enumerate(steps_in):  # exact Python ints from the JSON parser: checked before int64
        if s.__class__ is not int or not 0 <= s <= validation.MAX_STEP:
            raise validation.step_error(key, s, f"steps[{i}]")
    try:
        values = np.array([float_in(x, f"metric {key!r} values[{i}]") for i, x in enumerate(values_in)],
                          dtype=np.float64)
        times = np.array([float_in(x, f"metric {key!r} timestamps[{i}]") for i, x in enumerate(times_in)],
                         dtype=np.float64)
    except OverflowError as exc:
        raise InvalidArgumentError(f"metric {key!r}: a number is out of range") from exc
    return MetricSeries(key, np.array(steps_in, dtype=np.int64).reshape(-1), values, times)


def encode_series(series: Iterable[MetricSeries]) -> bytes:
    """The binary metric frame for several series."""
    items = list(series)
    parts = [_MAGIC, struct.pack("<I", len(items))]
    for s in items:
        key = s.key.encode("utf-8")
        parts.append(struct.pack("<I", len(key)))
        parts.append(key)
        parts.append(struct.pack("<Q", len(s)))
        parts.append(np.ascontiguousarray(s.steps, dtype="<i8").tobytes())
        parts.append(np.ascontiguousarray(s.values, dtype="<f8").tobytes())
        parts.append(np.ascontiguousarray(s.timestamps, dtype="<f8").tobytes())
    return b"".join(parts)


def decode_series(data: bytes | bytearray | memoryview) -> list[MetricSeries]:
    """Parse a binary metric frame (``InvalidArgumentError`` when malformed)."""
    buf = memoryview(data)
    if len(buf) < 8 or bytes(buf[:4]) != _MAGIC:
        raise InvalidArgumentError("not a labvault metric frame (expected the LVM1 header)")
    (count,) = struct.unpack_from("<I", buf, 4)
    pos = 8
    out: list[MetricSeries] = []
    for _ in range(count):
        if pos + 4 > len(buf):
            raise InvalidArgumentError("truncated metric frame (series header)")
        (klen,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if klen > _MAX_KEY_BYTES or pos + klen + 8 > len(buf):
            raise InvalidArgumentError("truncated or malformed metric frame (key)")
        try:
            key = bytes(buf[pos : pos + klen]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgumentError("metric key in the frame is not UTF-8") from exc
        pos += klen
        (n,) = struct.unpack_from("<Q", buf, pos)
        pos += 8
        if n > (len(buf) - pos) // 24:
            raise InvalidArgumentError(f"truncated metric frame: metric {key!r} announces {n} points")
        steps = np.frombuffer(buf, dtype="<i8", count=n, offset=pos).astype(np.int64)
        pos += 8 * n
        values = np.frombuffer(buf, dtype="<f8", count=n, offset=pos).astype(np.float64)
        pos += 8 * n
        times = np.frombuffer(buf, dtype="<f8", count=n, offset=pos).astype(np.float64)
        pos += 8 * n
        out.append(MetricSeries(key, steps, values, times))
    if pos != len(buf):
        raise InvalidArgumentError(f"metric frame has {len(buf) - pos} bytes after its last series")
    return out


# -- filters back to text ------------------------------------------------------------------------------------
def field_text(field: Field) -> str:
    """A field as the query language writes it (keys double-quoted, so any key survives)."""
    if field.kind == "attributes":
        return field.key
    return f'{field.kind}."' + field.key.replace('"', '""') + '"'


def _value_text(value: Value) -> str:
    if isinstance(value, float):
        return repr(value)
    return "'" + value.replace("'", "''") + "'"


def unparse_filter(expr: Expr) -> str:
    """Query-language text that parses back to ``expr`` (the inverse of ``labvault.query.parse``)."""
    def compound(item: Expr) -> str:
        text = walk(item)
        return f"({text})" if isinstance(item, q.And | q.Or) else text

    def walk(e: Expr) -> str:
        if isinstance(e, q.TrueExpr):
            return ""
        if isinstance(e, q.Compare):
            return f"{field_text(e.field)} {e.op} {_value_text(e.value)}"
        if isinstance(e, q.InList):
            values = ", ".join(_value_text(x) for x in e.values)
            return f"{field_text(e.field)} {'NOT IN' if e.negated else 'IN'} ({values})"
        if isinstance(e, q.IsNull):
            return f"{field_text(e.field)} IS {'NOT NULL' if e.negated else 'NULL'}"
        if isinstance(e, q.Like):
            word = ("NOT " if e.negated else "") + ("ILIKE" if e.case_insensitive else "LIKE")
            return f"{field_text(e.field)} {word} {_value_text(e.pattern)}"
        if isinstance(e, q.And):
            return " AND ".join(compound(i) for i in e.items)
        if isinstance(e, q.Or):
            return " OR ".join(compound(i) for i in e.items)
        if isinstance(e, q.Not):
            return f"NOT {compound(e.item)}"
        raise InvalidArgumentError(f"cannot send filter node {type(e).__name__} to a server")

    return walk(expr)


def unparse_order(order: Sequence[OrderKey]) -> list[str]:
    """``order_by`` entries that parse back to ``order``."""
    return [f"{field_text(k.field)} {'DESC' if k.descending else 'ASC'}" for k in order]
