"""Plain records that cross the boundary between the domain API and the storage backends."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

RunStatus = Literal["running", "finished", "failed", "killed"]
RUN_STATUSES: tuple[str, ...] = ("running", "finished", "failed", "killed")
TERMINAL_STATUSES: frozenset[str] = frozenset({"finished", "failed", "killed"})
#: The system tag a deleted run carries (its value: when it was deleted, ISO 8601 UTC; empty once
#: restored). A tag, not a column, so deletion works on every backend, syncs like any tag and is searchable
#: (``tags.`labvault.deleted` IS NOT NULL``); MLflow keeps its run name and parent the same way.
DELETED_TAG = "labvault.deleted"


def now() -> float:
    """Wall-clock time in epoch seconds, the unit of every timestamp labvault stores."""
    return time.time()


@dataclass(frozen=True)
class ExperimentInfo:
    """An experiment as stored: a named group of runs inside a project."""

    id: str
    name: str
    project: str
    created_at: float


@dataclass
class RunInfo:
    """A run's stored state. ``metrics`` holds the latest value of each metric key."""

    id: str
    experiment_id: str
    number: int
    name: str | None
    parent_id: str | None
    status: str
    start_time: float
    end_time: float | None = None
    error: str | None = None
    heartbeat: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricSeries:
    """One metric's points: parallel numpy arrays of steps, values and timestamps.

    Returned by ``Run.metric_history`` and used to move batches of points to a backend.
    """

    key: str
    steps: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    timestamps: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @classmethod
    def empty(cls, key: str) -> MetricSeries:
        """A series with no points."""
        return cls(
            key,
            np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.float64),
            np.empty(0, dtype=np.float64),
        )

    @classmethod
    def concat(cls, key: str, parts: list[MetricSeries]) -> MetricSeries:
        """Join several series of the same key in order."""
        if not parts:
            return cls.empty(key)
        if len(parts) == 1:
            return parts[0]
        return cls(
            key,
            np.concatenate([p.steps for p in parts]),
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.timestamps for p in parts]),
        )

    def last(self) -> tuple[float, int, float]:
        """(value, step, timestamp) of the last point; the series must not be empty."""
        return float(self.values[-1]), int(self.steps[-1]), float(self.timestamps[-1])


@dataclass(frozen=True)
class ArtifactInfo:
    """A file logged to a run: its key (a relative path), size in bytes and sha256 digest."""

    key: str
    size: int
    digest: str
    created_at: float


@dataclass(frozen=True)
class BlobInfo:
    """What a blob store knows about one stored object (``BlobStore.info`` / ``BlobStore.scan``).

    ``digest`` is the sha256 hex of the content when the store knows it without reading the content
    (content-addressed keys, the memory store, single-part S3 objects, ``info`` on the file store) and
    the store's ``etag`` otherwise. ``etag`` is an opaque version tag that changes whenever the content
    is replaced: pass it as ``if_match`` to ``BlobStore.put`` for a compare-and-swap. ``modified`` is
    the last write time in epoch seconds.
    """

    key: str
    size: int
    digest: str
    modified: float
    etag: str


#: Kinds of change events a backend's feed carries (``ChangeEvent.kind``).
EVENT_KINDS: tuple[str, ...] = (
    "experiment.created", "experiment.deleted", "run.created", "run.updated", "run.finished",
    "run.failed", "run.killed", "params.logged", "tags.set", "results.logged", "metric.logged",
    "artifact.logged",
)
#: Kinds derived by the client from the records of ``labvault.client.models`` (``vault.watch()``,
#: ``vault.subscribe()``): a model or a version was created, an alias moved.
MODEL_EVENT_KINDS: tuple[str, ...] = ("model.created", "model.updated", "model.alias_set")


@dataclass(frozen=True)
class ChangeEvent:
    """One change to a store, as carried by ``Backend.watch()`` feeds.

    ``data`` is a small JSON-able summary (the param names, the metric keys and point count, the
    artifact key and digest); read the store for the values themselves. Delivery is at least once: a
    consumer may see an event twice (e.g. two processes racing to create one experiment).

    ``id`` is the event's place in the store's change log where the store keeps one (file, SQLite, S3:
    ``"<batch>.<index>"``; Redis: the stream entry id), else None: ``vault.watch(after=id)`` resumes
    right after it. It is not part of what the event says (``==`` ignores it).
    """

    kind: str
    experiment_id: str | None = None
    run_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=now)
    id: str | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        """A plain dict for transports (NOTIFY payloads, Redis streams, server-sent events)."""
        doc = {"kind": self.kind, "experiment_id": self.experiment_id, "run_id": self.run_id,
               "data": self.data, "time": self.time}
        if self.id is not None:
            doc["id"] = self.id
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ChangeEvent:
        """Inverse of ``to_json``."""
        ident = doc.get("id")
        return cls(str(doc["kind"]), doc.get("experiment_id"), doc.get("run_id"),
                   dict(doc.get("data") or {}), float(doc.get("time") or 0.0),
                   ident if isinstance(ident, str) else None)

    def with_id(self, ident: str | None) -> ChangeEvent:
        """The same event with ``id`` set (the log that delivers it knows its place)."""
        return replace(self, id=ident)
