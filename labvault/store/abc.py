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

import threading
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np

from labvault import _registry as registry
from labvault import query
from labvault.blobs.abc import BlobStore
from labvault.domain import (
    RUN_STATUSES,
    ArtifactInfo,
    ChangeEvent,
    ExperimentInfo,
    MetricSeries,
    RunInfo,
    now,
)
from labvault.domain import validation as v
from labvault.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    UnsupportedOperationError,
)
from labvault.store.eventlog import BlobEventLog, LogWriter, PolledFeed, parse_event_id
from labvault.store.feed import ChangeFeed, LocalChangeFeed

if TYPE_CHECKING:
    from labvault.query import Expr, OrderKey


#: A re-sent metric batch is recognised (and skipped) while it is among its run's last this many batches.
#: Retries come seconds after the first attempt, so this is far beyond any retry; Redis also forgets a
#: batch id after ``labvault.store.redis.backend.BATCH_MEMORY`` seconds.
BATCH_MEMORY = 256
_BATCH_ID_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-")


class ForeignModel(NamedTuple):
    """A model as a store keeps it in a form of its own (Hat: aimm's model event): its instance id, model
    type, payload bytes and when it was written (epoch seconds)."""

    instance_id: int
    model_type: str
    data: bytes
    time: float


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
    #: ``watch(after=event_id)`` resumes from the store's change log (what a subscriber missed).
    event_log: ClassVar[bool] = False
    #: Where in ``_event_store()`` the change log lives.
    _event_prefix: ClassVar[str] = "events/"

    def __init_subclass__(cls, scheme: str | None = None, replace: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if scheme is not None:
            cls.scheme = scheme
            registry.register_backend(scheme, cls, replace=replace)

    def __init__(self, uri: str, blobs: BlobStore | None = None) -> None:
        self.uri = uri
        self._blobs = blobs
        self._feeds: list[LocalChangeFeed] = []
        self._feeds_lock = threading.Lock()
        self._log: BlobEventLog | None = None
        self._log_writer: LogWriter | None = None

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> Backend:
        """Build the backend from a URI; do no I/O yet."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, artifacts: BlobStore | None = None) -> Backend:
        """Build the backend from a validated config mapping: its ``uri`` or ``url`` key, or for a local
        store (SQLite, a folder) a ``path``, as aimm's ``{"backend": "sqlite", "path": "models.db"}``."""
        uri = config.get("uri") or config.get("url")
        if uri is None and isinstance(config.get("path"), str):
            uri = cls._uri_for_path(config["path"])
        if not isinstance(uri, str):
            raise InvalidArgumentError(f"config for {cls.__name__} needs a 'uri' string")
        reserved = ("uri", "url", "path", "module", "backend")
        options = {k: val for k, val in config.items() if k not in reserved}
        return cls.from_uri(uri, artifacts=artifacts, **options)

    @classmethod
    def _uri_for_path(cls, path: str) -> str:
        """The URI of the store at a local ``path`` (a config's ``path`` key); only local stores have one."""
        raise InvalidArgumentError(f"{cls.__name__} takes a 'uri' in its config, not a 'path'")

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
        ends and on close. The default syncs the blob store and appends the buffered change events.
        """
        if self._blobs is not None:
            self._blobs.sync()
        if self._log_writer is not None:
            self._log_writer.flush(quiet=True)

    def close(self) -> None:
        """Release connections and file handles. Safe to call twice."""
        if self._log_writer is not None:
            self._log_writer.close()
        with self._feeds_lock:
            feeds = list(self._feeds)
        for feed in feeds:
            if isinstance(feed, PolledFeed):
                feed.close()
        if self._blobs is not None:
            self._blobs.sync()
            self._blobs.close()

    # -- change feed --------------------------------------------------------------------------------------
    def watch(self, after: str | None = None) -> ChangeFeed:
        """Open a feed of the changes made to this store from now on (see ``ChangeFeed``).

        ``after`` (an event's ``id``) starts right after that event instead, replaying what is still in
        the store's change log; stores without a log (memory, PostgreSQL) raise
        ``UnsupportedOperationError``.
        """
        if after is not None and (not isinstance(after, str) or not 0 < len(after) <= 64):
            raise InvalidArgumentError(f"after must be an event id (a short string), got {v.show(after)}")
        return self._watch(after)

    def _event_store(self) -> BlobStore | None:
        """Where this store keeps its change log (``labvault.store.eventlog``), or None for no log.

        Stores that return a blob store here (file, SQLite, S3) get a cross-process feed from the base
        class: events are appended to the log in batches and every feed polls it."""
        return None

    def _event_log(self) -> BlobEventLog | None:
        if self._log is None:
            store = self._event_store()
            if store is None:
                return None
            with self._feeds_lock:
                if self._log is None:
                    self._log = BlobEventLog(store, self._event_prefix)
                    self._log_writer = LogWriter(self._log)
        return self._log

    def log_position(self) -> int | None:
        """The number of the newest batch in this store's change log, after appending the events this
        process buffered (``labvault.store.eventlog``); None when the store keeps no such log. A server
        uses it so that a stream opened "from now on" starts exactly there."""
        events = self._event_log()
        if events is None:
            return None
        assert self._log_writer is not None
        self._log_writer.flush(quiet=True)
        return events.head()

    def _watch(self, after: str | None) -> ChangeFeed:
        """A feed of the change log when the store keeps one, else of this object's own writes.

        Cross-process backends with their own transport (LISTEN/NOTIFY, streams, SSE) override this and
        ``_publish``."""
        events = self._event_log()
        if events is None:
            if after is not None:
                raise UnsupportedOperationError(
                    f"{type(self).__name__} keeps no change log, so a feed cannot resume after an event")
            feed: LocalChangeFeed = LocalChangeFeed(on_close=self._drop_feed)
        else:
            assert self._log_writer is not None
            if after is None:
                self._log_writer.flush(quiet=True)  # "from now on" includes what this process wrote
                start, skip = events.head() + 1, 0
            else:
                batch, index = parse_event_id(after)
                start, skip = batch, index + 1
            feed = PolledFeed(events, start, skip, on_close=self._drop_feed)
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
        """Send an event to the feeds after a successful write: to the change log when the store keeps
        one, else to this object's own feeds. Cross-process backends override this."""
        self._event_log()
        if self._log_writer is not None:
            self._log_writer.append(event)
        else:
            self._deliver_local(event)

    def _emit(self, kind: str, experiment_id: str | None = None, run_id: str | None = None,
              **data: Any) -> None:
        if self._feeds or self.supports_events:  # nobody can be listening otherwise
            self._publish(ChangeEvent(kind, experiment_id, run_id, data))

    # -- experiments --------------------------------------------------------------------------------------
    def ensure_experiment(self, name: str, project: str) -> ExperimentInfo:
        """Get the experiment, creating it when absent (safe when several processes race)."""
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
        name: str | None = None,
        clear: Collection[str] = (),
    ) -> None:
        """Change a run's status, end time, error text, heartbeat or name; ``None`` leaves a field as it is.

        ``clear`` names fields to empty (``"end_time"``, ``"error"``): a resumed run is running again, with
        no end time and no error.
        """
        if status is not None and status not in RUN_STATUSES:
            raise InvalidArgumentError(f"run status {v.show(status)} is not one of {', '.join(RUN_STATUSES)}")
        if error is not None:
            v.validate_error_text(error)
        if name is not None:
            v.validate_name(name, "run name")
        for what, when in (("end_time", end_time), ("heartbeat", heartbeat)):
            if when is not None:
                v.validate_time(when, what)
        fields: dict[str, Any] = {}
        for key, val in (("status", status), ("end_time", end_time), ("error", error),
                         ("heartbeat", heartbeat), ("name", name)):
            if val is not None:
                fields[key] = val
        for key in _checked_clear(clear, fields):
            fields[key] = None
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

    # -- models in a store's own form (``labvault.client.models`` calls these) ----------------------------
    def model_saved(self, instance_id: int, model_type: str, data: bytes) -> None:
        """Called after the model registry stored a version; a store that also keeps models in a form of
        its own (Hat: aimm's model events) writes it there. The default does nothing."""

    def foreign_models(self) -> list[ForeignModel]:
        """The models present in the store's own form (the latest of each instance id); default none."""
        return []

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


#: The fields ``update_run(clear=...)`` can empty.
CLEARABLE_RUN_FIELDS = ("end_time", "error")


def _checked_clear(clear: Collection[str], fields: Mapping[str, Any]) -> list[str]:
    """``clear`` as a list of field names, refused when it names a field that cannot be emptied or one
    that the same call sets."""
    if isinstance(clear, str) or not all(isinstance(k, str) for k in clear):
        raise InvalidArgumentError(f"clear must be a collection of field names, got {v.show(clear)}")
    for key in clear:
        if key not in CLEARABLE_RUN_FIELDS:
            raise InvalidArgumentError(
                f"cannot clear run field {v.show(key)}: only {', '.join(CLEARABLE_RUN_FIELDS)} "
                "can be emptied")
        if key in fields:
            raise InvalidArgumentError(f"run field {key!r} is both set and cleared")
    return sorted(set(clear))


def run_exists_error(run_id: str) -> Exception:
    """The ``AlreadyExistsError`` ``create_run(run_id=...)`` raises for an id that is taken."""
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


def check_params_conflict(run_id: str, stored: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Raise ``ConflictError`` naming every param whose new value differs from the stored one."""
    clashes = [k for k, val in new.items() if k in stored and not _same_json(stored[k], val)]
    if clashes:
        detail = ", ".join(f"{k!r}: stored {stored[k]!r}, new {new[k]!r}" for k in clashes)
        raise ConflictError(f"params are write-once; run {run_id} already has {detail}")


def _same_json(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b if not isinstance(a, int | float) or isinstance(a, bool) \
        else (isinstance(b, int | float) and not isinstance(b, bool) and a == b)


