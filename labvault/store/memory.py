"""The in-memory backend: the reference model the conformance suite checks every other backend against.

``memory://name`` stores live for the life of the process, shared by every vault that opens the same
name (``memory://`` alone is private to one vault).
"""

from __future__ import annotations

import threading
import uuid
from copy import deepcopy
from typing import Any, ClassVar

from labvault.blobs.abc import BlobStore
from labvault.blobs.memory import MemoryBlobStore
from labvault.domain import ArtifactInfo, ExperimentInfo, MetricSeries, RunInfo, now
from labvault.errors import InvalidArgumentError, NotFoundError
from labvault.store.abc import BATCH_MEMORY, Backend, check_params_conflict, run_exists_error


def new_id() -> str:
    """A fresh 32-hex-digit id."""
    return uuid.uuid4().hex




class _Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.experiments: dict[str, ExperimentInfo] = {}
        self.runs: dict[str, RunInfo] = {}
        self.counters: dict[str, int] = {}
        self.metrics: dict[str, dict[str, list[MetricSeries]]] = {}
        self.artifacts: dict[str, dict[str, ArtifactInfo]] = {}
        self.batches: dict[str, dict[str, None]] = {}  # run id -> ids of its latest metric batches
        self.blobs = MemoryBlobStore()


class MemoryBackend(Backend, scheme="memory"):
    """Everything in Python dicts, guarded by one lock."""

    persistent: ClassVar[bool] = False
    multiprocess: ClassVar[bool] = False
    _named: ClassVar[dict[str, _Store]] = {}
    _named_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, uri: str, name: str = "", blobs: BlobStore | None = None) -> None:
        super().__init__(uri, blobs)
        if name:
            with self._named_lock:
                self._store = self._named.setdefault(name, _Store())
        else:
            self._store = _Store()

    @classmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> MemoryBackend:
        """``memory://`` (private) or ``memory://name`` (shared within the process)."""
        if options:
            raise InvalidArgumentError(f"memory backend takes no options, got {sorted(options)}")
        name = uri.split("://", 1)[1].strip("/") if "://" in uri else ""
        if name and not name.replace("-", "").replace("_", "").isalnum():
            raise InvalidArgumentError(f"memory store name {name!r} must be letters, digits, '-' and '_'")
        return cls(uri, name, artifacts)

    def _default_blobs(self) -> BlobStore:
        return self._store.blobs

    def _ensure_experiment(self, name: str, project: str) -> ExperimentInfo:
        with self._store.lock:
            for e in self._store.experiments.values():
                if e.name == name and e.project == project:
                    return e
            exp = ExperimentInfo(new_id(), name, project, now())
            self._store.experiments[exp.id] = exp
            return exp

    def _list_experiments(self, project: str | None) -> list[ExperimentInfo]:
        with self._store.lock:
            return [e for e in self._store.experiments.values() if project is None or e.project == project]

    def _delete_experiment(self, experiment_id: str) -> None:
        s = self._store
        with s.lock:
            if s.experiments.pop(experiment_id, None) is None:
                raise NotFoundError(f"experiment {experiment_id} not found")
            for run_id in [r.id for r in s.runs.values() if r.experiment_id == experiment_id]:
                del s.runs[run_id]
                s.metrics.pop(run_id, None)
                s.artifacts.pop(run_id, None)
                s.batches.pop(run_id, None)

    def _create_run(
        self, experiment_id: str, name: str | None, parent_id: str | None, start_time: float,
        params: dict[str, Any], tags: dict[str, str], *, run_id: str | None = None,
    ) -> RunInfo:
        s = self._store
        with s.lock:
            if run_id is not None and run_id in s.runs:
                raise run_exists_error(run_id)
            if experiment_id not in s.experiments:
                raise NotFoundError(f"experiment {experiment_id} not found")
            if parent_id is not None and parent_id not in s.runs:
                raise NotFoundError(f"parent run {parent_id} not found")
            number = s.counters.get(experiment_id, 0) + 1
            s.counters[experiment_id] = number
            run = RunInfo(
                id=run_id or new_id(), experiment_id=experiment_id, number=number, name=name,
                parent_id=parent_id, status="running", start_time=start_time, heartbeat=start_time,
                params=dict(params), tags=dict(tags),
            )
            s.runs[run.id] = run
            return deepcopy(run)

    def _run(self, run_id: str) -> RunInfo:
        try:
            return self._store.runs[run_id]
        except KeyError as exc:
            raise NotFoundError(f"run {run_id} not found") from exc

    def _get_run(self, run_id: str) -> RunInfo:
        with self._store.lock:
            return deepcopy(self._run(run_id))

    def _list_runs(self, experiment_ids: list[str]) -> list[RunInfo]:
        wanted = set(experiment_ids)
        with self._store.lock:
            return [deepcopy(r) for r in self._store.runs.values() if r.experiment_id in wanted]

    def _update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        with self._store.lock:
            run = self._run(run_id)
            for key, value in fields.items():
                setattr(run, key, value)

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        with self._store.lock:
            run = self._run(run_id)
            check_params_conflict(run_id, run.params, params)
            run.params.update(deepcopy(params))

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        with self._store.lock:
            self._run(run_id).tags.update(tags)

    def _log_results(self, run_id: str, results: dict[str, Any]) -> None:
        with self._store.lock:
            self._run(run_id).results.update(deepcopy(results))

    def _log_metrics(self, run_id: str, series: list[MetricSeries], batch_id: str | None) -> bool:
        with self._store.lock:
            run = self._run(run_id)
            if batch_id is not None:  # the ids of the run's last BATCH_MEMORY batches, oldest first
                seen = self._store.batches.setdefault(run_id, {})
                if batch_id in seen:
                    return False
                seen[batch_id] = None
                if len(seen) > BATCH_MEMORY:
                    del seen[next(iter(seen))]
            per_key = self._store.metrics.setdefault(run_id, {})
            for s in series:
                copy = MetricSeries(s.key, s.steps.copy(), s.values.copy(), s.timestamps.copy())
                per_key.setdefault(s.key, []).append(copy)
                run.metrics[s.key] = float(s.values[-1])
        return True

    def _metric_history(self, run_id: str, key: str) -> MetricSeries:
        with self._store.lock:
            self._run(run_id)
            parts = self._store.metrics.get(run_id, {}).get(key, [])
            merged = MetricSeries.concat(key, parts)
            if len(parts) > 1:
                self._store.metrics[run_id][key] = [merged]
            return MetricSeries(key, merged.steps.copy(), merged.values.copy(), merged.timestamps.copy())

    def _add_artifact(self, run_id: str, info: ArtifactInfo) -> None:
        with self._store.lock:
            self._run(run_id)
            self._store.artifacts.setdefault(run_id, {})[info.key] = info

    def _list_artifacts(self, run_id: str, prefix: str) -> list[ArtifactInfo]:
        with self._store.lock:
            self._run(run_id)
            return [a for a in self._store.artifacts.get(run_id, {}).values() if a.key.startswith(prefix)]
