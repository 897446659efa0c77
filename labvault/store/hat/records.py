"""The Hat backend's records: event types, payloads and the replica that replays them.

Every write is one event of type ``('labvault', <namespace>, <kind>)``; the namespace's state is what
replaying its events in the server's order gives. ``Replica`` is that replay, deterministic and free of
I/O, so every process that reads the same events in the same order holds the same state and decides
every race the same way:

* ``experiment`` creates an experiment unless one of that project and name exists: the first creation
  event in server order wins, the others are ignored (their writers adopt the winner);
* ``run`` creates a run with number = 1 + the runs its experiment had accepted before (dense, unique:
  the rank of the creation among the experiment's accepted creations); a run id that exists, a missing
  experiment or parent rejects the event;
* ``params`` is applied whole or not at all: a key holding a different value rejects the event
  (``ConflictError`` for its writer), so of two racing writers the first in server order wins;
* ``metrics`` (a binary payload: a JSON header, then packed int64 steps, float64 values and float64
  timestamps) is skipped when its batch id is among the run's last ``BATCH_MEMORY`` batches;
* ``tags``, ``results``, ``run-update``, ``artifacts`` replace values (the last in server order wins);
  ``experiment-deleted`` drops an experiment and its runs.

``Replica.apply`` returns each event's outcome, which the writer of that event turns into its answer.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from labvault.domain import ArtifactInfo, ExperimentInfo, MetricSeries, RunInfo
from labvault.errors import ConflictError, CorruptDataError
from labvault.store.abc import BATCH_MEMORY, check_params_conflict

__all__ = ["METRICS_TYPE", "ROOT", "Outcome", "Replica", "pack_metrics"]

#: The first segment of every labvault record event's type.
ROOT = "labvault"
#: The binary payload type of metric batches.
METRICS_TYPE = "labvault.metrics.v1"
_POINT = np.dtype([("step", "<i8"), ("value", "<f8"), ("ts", "<f8")])
_HEADER = struct.Struct("<I")


@dataclass(frozen=True)
class Outcome:
    """What applying one event did: ``ok``, or why it was ignored (``missing``, ``exists``, ``conflict``,
    ``duplicate``, ``lost``) with a message or the winner's id in ``detail``."""

    status: str
    detail: str = ""


_OK = Outcome("ok")


def dumps(value: Any) -> bytes:
    """Compact JSON bytes (orjson; json for integers beyond 64 bits)."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def pack_metrics(run_id: str, batch_id: str | None, series: Iterable[MetricSeries]) -> bytes:
    """A metric batch as the bytes of one binary payload: header length, JSON header, packed points."""
    parts: list[bytes] = []
    keys: list[list[Any]] = []
    for s in series:
        packed = np.empty(len(s), dtype=_POINT)
        packed["step"], packed["value"], packed["ts"] = s.steps, s.values, s.timestamps
        parts.append(packed.tobytes())
        keys.append([s.key, len(s)])
    header = dumps({"run": run_id, "batch": batch_id, "series": keys})
    return b"".join([_HEADER.pack(len(header)), header, *parts])


def _unpack_metrics(data: bytes) -> tuple[dict[str, Any], list[tuple[str, np.ndarray[Any, Any]]]]:
    try:
        (size,) = _HEADER.unpack_from(data)
        header = orjson.loads(data[4:4 + size])
        offset, out = 4 + size, []
        for key, n in header["series"]:
            end = offset + int(n) * _POINT.itemsize
            if end > len(data):
                raise ValueError("truncated")
            out.append((str(key), np.frombuffer(data, dtype=_POINT, count=int(n), offset=offset)))
            offset = end
        return header, out
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise CorruptDataError(f"a labvault metric event is malformed: {exc}") from exc


@dataclass
class _RunData:
    info: RunInfo
    metrics: dict[str, list[np.ndarray[Any, Any]]] = field(default_factory=dict)
    artifacts: dict[str, ArtifactInfo] = field(default_factory=dict)
    batches: dict[str, None] = field(default_factory=dict)


class Replica:
    """One namespace's state, built by applying its events in server order (see the module doc)."""

    def __init__(self) -> None:
        self.experiments: dict[str, ExperimentInfo] = {}
        self.by_name: dict[tuple[str, str], str] = {}
        self.counters: dict[str, int] = {}
        self.runs: dict[str, _RunData] = {}
        self.exp_runs: dict[str, list[str]] = {}
        #: The position after the last applied event: (timestamp, event id) of the server, or None.
        self.position: tuple[Any, Any] | None = None

    # -- reading --------------------------------------------------------------------------------------------
    def run(self, run_id: str) -> _RunData | None:
        """A run's data, or None."""
        return self.runs.get(run_id)

    def history(self, run_id: str, key: str) -> MetricSeries:
        """All points of one metric of a run, in order (the run must exist)."""
        parts = self.runs[run_id].metrics.get(key)
        if not parts:
            return MetricSeries.empty(key)
        points = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if len(parts) > 1:
            self.runs[run_id].metrics[key] = [points]
        return MetricSeries(key, points["step"].astype(np.int64), points["value"].astype(np.float64),
                            points["ts"].astype(np.float64))

    # -- applying -------------------------------------------------------------------------------------------
    def apply(self, event: Any) -> Outcome:
        """Apply one server event of this namespace; its outcome."""
        self.position = (event.timestamp, event.id)
        kind = event.type[2] if len(event.type) == 3 else ""
        payload = event.payload
        if kind == "metrics":
            data = getattr(payload, "data", None)
            if getattr(payload, "type", None) != METRICS_TYPE or not isinstance(data, bytes | bytearray):
                return Outcome("ignored")
            return self._metrics(bytes(data))
        handler = _HANDLERS.get(kind)
        doc = getattr(payload, "data", None)
        if handler is None or not isinstance(doc, dict):
            return Outcome("ignored")  # a probe, or an event of a later version: not ours to judge
        try:
            return handler(self, doc)
        except (KeyError, TypeError, ValueError) as exc:
            return Outcome("ignored", f"malformed {kind} event: {exc}")

    def _experiment(self, doc: dict[str, Any]) -> Outcome:
        key = (str(doc["project"]), str(doc["name"]))
        winner = self.by_name.get(key)
        if winner is not None:
            return Outcome("lost", winner)
        if doc["id"] in self.experiments:
            return Outcome("exists", doc["id"])
        info = ExperimentInfo(str(doc["id"]), key[1], key[0], float(doc["created_at"]))
        self.experiments[info.id] = info
        self.by_name[key] = info.id
        self.exp_runs[info.id] = []
        return _OK

    def _experiment_deleted(self, doc: dict[str, Any]) -> Outcome:
        info = self.experiments.pop(str(doc["id"]), None)
        if info is None:
            return Outcome("missing", f"experiment {doc['id']} not found")
        self.by_name.pop((info.project, info.name), None)
        for run_id in self.exp_runs.pop(info.id, []):
            self.runs.pop(run_id, None)
        return _OK

    def _run(self, doc: dict[str, Any]) -> Outcome:
        run_id, exp_id, parent = str(doc["id"]), str(doc["experiment_id"]), doc.get("parent_id")
        if run_id in self.runs:
            return Outcome("exists", f"run id {run_id!r} exists already")
        if exp_id not in self.experiments:
            return Outcome("missing", f"experiment {exp_id} not found")
        if parent is not None and parent not in self.runs:
            return Outcome("missing", f"parent run {parent} not found")
        number = self.counters.get(exp_id, 0) + 1
        self.counters[exp_id] = number
        start = float(doc["start_time"])
        self.runs[run_id] = _RunData(RunInfo(
            id=run_id, experiment_id=exp_id, number=number, name=doc.get("name"), parent_id=parent,
            status="running", start_time=start, heartbeat=start, params=dict(doc.get("params") or {}),
            tags=dict(doc.get("tags") or {})))
        self.exp_runs[exp_id].append(run_id)
        return _OK

    def _target(self, doc: dict[str, Any]) -> _RunData | Outcome:
        data = self.runs.get(str(doc["run"]))
        return Outcome("missing", f"run {doc['run']} not found") if data is None else data

    def _run_update(self, doc: dict[str, Any]) -> Outcome:
        data = self._target(doc)
        if isinstance(data, Outcome):
            return data
        for key, value in dict(doc["fields"]).items():
            if key in ("status", "end_time", "error", "heartbeat", "name"):
                setattr(data.info, key, value)
        return _OK

    def _params(self, doc: dict[str, Any]) -> Outcome:
        data = self._target(doc)
        if isinstance(data, Outcome):
            return data
        params = dict(doc["params"])
        try:
            check_params_conflict(data.info.id, data.info.params, params)
        except ConflictError as exc:
            return Outcome("conflict", str(exc))
        data.info.params.update(params)
        return _OK

    def _tags(self, doc: dict[str, Any]) -> Outcome:
        data = self._target(doc)
        if isinstance(data, Outcome):
            return data
        data.info.tags.update({str(k): str(val) for k, val in dict(doc["tags"]).items()})
        return _OK

    def _results(self, doc: dict[str, Any]) -> Outcome:
        data = self._target(doc)
        if isinstance(data, Outcome):
            return data
        data.info.results.update(dict(doc["results"]))
        return _OK

    def _artifacts(self, doc: dict[str, Any]) -> Outcome:
        data = self._target(doc)
        if isinstance(data, Outcome):
            return data
        for key, size, digest, created_at in doc["items"]:
            data.artifacts[str(key)] = ArtifactInfo(str(key), int(size), str(digest), float(created_at))
        return _OK

    def _metrics(self, raw: bytes) -> Outcome:
        header, series = _unpack_metrics(raw)
        data = self.runs.get(str(header.get("run")))
        if data is None:
            return Outcome("missing", f"run {header.get('run')} not found")
        batch = header.get("batch")
        if batch is not None:
            if batch in data.batches:
                return Outcome("duplicate")
            data.batches[str(batch)] = None
            if len(data.batches) > BATCH_MEMORY:
                del data.batches[next(iter(data.batches))]
        for key, points in series:
            if len(points):
                data.metrics.setdefault(key, []).append(points)
                data.info.metrics[key] = float(points["value"][-1])
        return _OK


_HANDLERS = {
    "experiment": Replica._experiment,
    "experiment-deleted": Replica._experiment_deleted,
    "run": Replica._run,
    "run-update": Replica._run_update,
    "params": Replica._params,
    "tags": Replica._tags,
    "results": Replica._results,
    "artifacts": Replica._artifacts,
}
