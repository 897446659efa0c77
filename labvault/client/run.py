"""The objects a user logs to and reads: ``Experiment`` (a named group of runs), ``Run`` (one trial: params,
tags, metrics, results, artifacts) and ``RunList`` (search results, ``to_frame()`` for pandas).

A ``Run`` writes params, tags, results and large artifacts through at once; metric points and small
in-memory artifacts go to its buffer (``labvault.client.buffer.RunBuffer``, the base class) and are
written by ``flush()`` or the vault's background flusher. Runs and experiments belong to a
``labvault.client.vault.Vault``, which they reach through ``.vault``.
"""

from __future__ import annotations

import math
import os
import time
import traceback
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from labvault.client import frames
from labvault.client.buffer import (
    BUFFERED_ARTIFACT_SIZE,
    RunBuffer,
    _check_heartbeat,
    _float_array,
    _next_step_error,
    _series_steps,
)
from labvault.client.hints import names_store
from labvault.client.models import Model, Registry
from labvault.domain import (
    DELETED_TAG,
    TERMINAL_STATUSES,
    ArtifactInfo,
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

if TYPE_CHECKING:
    import pandas as pd

    from labvault.blobs.abc import BlobSource
    from labvault.client.vault import Vault


class Experiment:
    """A named group of runs. Get one with ``vault.experiment(name)``."""

    def __init__(self, vault: Vault, info: ExperimentInfo) -> None:
        self.vault = vault
        self.info = info

    @property
    def id(self) -> str:
        """The experiment's unique id."""
        return self.info.id

    @property
    def name(self) -> str:
        """The experiment's name, unique within its project."""
        return self.info.name

    @property
    def project(self) -> str:
        """The project the experiment belongs to."""
        return self.info.project

    @property
    def created_at(self) -> float:
        """Creation time in epoch seconds."""
        return self.info.created_at

    @property
    def remote_urls(self) -> list[str]:
        """The remotes this experiment's runs were pushed to (or pulled from), most recent first, from
        the sync state the local store keeps (URIs without passwords); empty before the first sync."""
        from labvault.sync import remotes_of  # lazy: sync loads the transfer machinery

        runs = self.vault.search_runs([self], deleted=None)
        return remotes_of(self.vault.backend.blobs, (r.id for r in runs))

    def __repr__(self) -> str:
        return f"<labvault.Experiment {self.project}/{self.name}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Experiment) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def start_run(
        self,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        parent: Run | str | None = None,
        *,
        run_id: str | None = None,
        resume: bool = False,
    ) -> Run:
        """Start a run (status ``running``) with the next run number; use it as a context manager.

        Leaving the ``with`` block normally marks the run ``finished``; an exception marks it ``failed``,
        records the error, and propagates. ``parent`` nests the run under another (a run or its id).

        ``run_id`` chooses the run's id. With ``resume=True`` a run of that id that exists is resumed: it is
        ``running`` again (no end time, no error), keeps its number, params, metrics and artifacts, and a
        metric logged without a step continues after its last step; ``params`` are logged write-once as
        usual and ``tags`` set. A run of that id that does not exist yet is created, so a job that may be
        restarted can always pass the same id (W&B's ``resume="allow"``). Resuming a run another process
        is still writing (a fresh heartbeat) raises ``ConflictError``.
        """
        self.vault._check_open()
        if resume and run_id is None:
            raise InvalidArgumentError("resume=True needs the run_id of the run to resume")
        if resume:
            resumed = self._resume(run_id, name, params, tags)  # type: ignore[arg-type]
            if resumed is not None:
                return resumed
        parent_id = parent.id if isinstance(parent, Run) else parent
        try:
            info = self.vault.backend.create_run(
                self.id, name=name, parent_id=parent_id, start_time=now(),
                params=params or {}, tags=tags or {}, run_id=run_id,
            )
        except AlreadyExistsError as exc:
            raise AlreadyExistsError(f"{exc}; pass resume=True to continue that run") from None
        run = Run(self.vault, self, info, active=True)
        self.vault._register_active(run)
        return run

    def _resume(self, run_id: str, name: str | None, params: Mapping[str, Any] | None,
                tags: Mapping[str, Any] | None) -> Run | None:
        """Reopen the stored run ``run_id`` (see ``start_run``), or None when there is no such run."""
        backend = self.vault.backend
        try:
            info = backend.get_run(run_id)
        except NotFoundError:
            return None
        if info.experiment_id != self.id:
            raise InvalidArgumentError(
                f"run {run_id} belongs to another experiment than {self.name!r}: resume it from there "
                "(vault.get_run(run_id).experiment)")
        if run_id in self.vault._active:
            raise ConflictError(f"run {run_id} is already active in this process")
        info = _check_heartbeat(self.vault, info)
        if info.status == "running":
            raise ConflictError(
                f"run {run_id} is still running in another process (its heartbeat is "
                f"{now() - (info.heartbeat or info.start_time):.0f} s old; a run whose writer died is "
                f"resumable after {self.vault.heartbeat_timeout:g} s)")
        if params:
            backend.log_params(run_id, params)
        if tags:
            backend.set_tags(run_id, tags)
        backend.update_run(run_id, status="running", heartbeat=now(), name=name,
                           clear=("end_time", "error"))
        run = Run(self.vault, self, backend.get_run(run_id), active=True)
        for key in backend.metric_keys(run_id):
            steps = backend.metric_history(run_id, key).steps
            if len(steps):
                run._next_step[key] = int(steps.max()) + 1
        self.vault._register_active(run)
        return run

    def runs(self) -> RunList:
        """Every run of the experiment, by run number."""
        return self.vault.search_runs([self])

    def history(self) -> pd.DataFrame:
        """One row per run, indexed by run number: name, status, duration (s), seed, ``params.*`` and
        ``results.*`` (daskperiment's ``get_history``). Needs pandas."""
        self.vault.flush()
        return frames.history_frame([run._snapshot for run in self.runs()])

    def metric_frame(self, key: str) -> pd.DataFrame:
        """The metric ``key`` of every run as a table: index ``step``, one column per run number
        (daskperiment's ``load_metric``). Points still buffered in this process are flushed first."""
        self.vault.flush()
        return frames.metric_frame(self.vault.backend, [run._snapshot for run in self.runs()], key)

    @names_store
    def get_run(self, number: int) -> Run:
        """The run with this run number (a deleted run too)."""
        if not isinstance(number, int) or isinstance(number, bool):
            raise InvalidArgumentError(f"a run number is an integer, got {v.show(number)}")
        for run in self.vault.search_runs([self], filter=f"number = {int(number)}", deleted=None):
            if run.number == number:
                return run
        raise NotFoundError(f"experiment {self.name!r} has no run number {number!r}")


class Run(RunBuffer):
    """One trial of an experiment: params, tags, metrics, results and artifacts."""

    # Slots: a search may build thousands of these, and a slotted object is built in half the time (the
    # buffer's own slots are in ``RunBuffer``).
    __slots__ = (
        "__weakref__",
        "_active",
        "_snapshot",
        "experiment",
        "vault",
    )

    def __init__(self, vault: Vault, experiment: Experiment, info: RunInfo, *, active: bool = False) -> None:
        RunBuffer.__init__(self)
        self.vault = vault
        self.experiment = experiment
        self._snapshot = info
        self._active = active

    # -- identity -------------------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        """The run's unique id (stable across stores)."""
        return self._snapshot.id

    @property
    def number(self) -> int:
        """1, 2, 3 ... within the experiment."""
        return self._snapshot.number

    @property
    def name(self) -> str | None:
        """The optional run name."""
        return self._snapshot.name

    @property
    def parent_id(self) -> str | None:
        """The id of the parent run, for nested runs."""
        return self._snapshot.parent_id

    def rename(self, name: str) -> None:
        """Give the run a new name (any run, finished or not; the number and id stay)."""
        self.vault._check_open()
        self.vault.backend.update_run(self.id, name=name)
        self.refresh()

    @property
    def deleted(self) -> bool:
        """Whether the run is deleted (``vault.delete_run``): hidden from searches until restored."""
        return bool(self.info.tags.get(DELETED_TAG))

    def __repr__(self) -> str:
        return f"<labvault.Run {self.experiment.name}#{self.number} {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- state ----------------------------------------------------------------------------------------------
    @property
    def info(self) -> RunInfo:
        """The run's stored state.

        A run you are logging to, or one written through this object since it was loaded, is re-read
        from the store (after writing its own buffered points); a run returned by ``search_runs`` or
        ``get_run`` answers from the state loaded then. Call ``refresh()`` to see other processes' writes.
        """
        if self._active or self._stale:
            return self.refresh()
        return self._snapshot

    def refresh(self) -> RunInfo:
        """Re-read the run from the store (after writing this run's own buffered points)."""
        self.flush()
        self._snapshot = _check_heartbeat(self.vault, self.vault.backend.get_run(self.id), self)
        self._stale = False
        return self._snapshot

    @property
    def status(self) -> str:
        """``running``, ``finished``, ``failed`` or ``killed``."""
        return self.info.status

    @property
    def start_time(self) -> float:
        """Start time in epoch seconds."""
        return self._snapshot.start_time

    @property
    def end_time(self) -> float | None:
        """End time in epoch seconds, None while running."""
        return self.info.end_time

    @property
    def error(self) -> str | None:
        """The error text of a failed run."""
        return self.info.error

    @property
    def params(self) -> dict[str, Any]:
        """Parameters (write-once)."""
        return self.info.params

    @property
    def tags(self) -> dict[str, str]:
        """Tags (last write wins)."""
        return self.info.tags

    @property
    def results(self) -> dict[str, Any]:
        """Named results."""
        return self.info.results

    @property
    def metrics(self) -> dict[str, float]:
        """The latest logged value of each metric."""
        return self.info.metrics

    # -- logging --------------------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        self.vault._check_open()

    def log_param(self, key: str, value: Any) -> None:
        """Log one parameter. Params are write-once: a different value raises ``ConflictError``."""
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log several parameters at once (validated together: nothing is written if one is bad)."""
        self._check_writable()
        self.vault.backend.log_params(self.id, params)
        self._stale = True

    def set_tag(self, key: str, value: Any) -> None:
        """Set a tag; the last write wins."""
        self.set_tags({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set several tags."""
        self._check_writable()
        self.vault.backend.set_tags(self.id, tags)
        self._stale = True

    def log_result(self, name: str, value: Any) -> None:
        """Record a named output (any JSON value: numbers, lists, dicts); a new value replaces it."""
        self._check_writable()
        self.vault.backend.log_results(self.id, {name: value})
        self._stale = True

    def log_metric(
        self, key: str, value: float, step: int | None = None, timestamp: float | None = None
    ) -> None:
        """Append one point to a metric. ``step`` defaults to the key's previous step + 1 (from 0).

        The point is buffered and written within ``flush_interval`` seconds (or on ``flush()``).
        NaN and infinities are stored as they are. A step is an integer from 0 to 2**63 - 1 (stored as
        int64, exactly, on every backend); anything else, including a default step past 2**63 - 1, raises
        ``InvalidArgumentError`` here, so a bad point never reaches the buffer.
        """
        if key not in self._known_keys:
            self._check_writable()
            v.validate_key(key, "metric key")
        if value.__class__ is not float:
            value = v.validate_metric_value(key, value)
        with self._lock:
            if step is None:
                step = self._next_step.get(key, 0)
                if step > v.MAX_STEP:
                    raise _next_step_error(key, step)
            elif step.__class__ is not int or step < 0 or step > v.MAX_STEP:
                step = v.validate_step(key, step)
            if timestamp is None:
                timestamp = time.time()
            elif timestamp.__class__ is not float or not math.isfinite(timestamp):
                timestamp = v.validate_timestamp(key, timestamp)
            self._next_step[key] = step + 1
            bucket = self._pending.get(key)
            if bucket is None:
                self._known_keys.add(key)
                self._pending[key] = [(value, step, timestamp)]
            else:
                bucket.append((value, step, timestamp))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None,
                    timestamp: float | None = None) -> None:
        """Append one point to each of several metrics, validated together first: when one key, value or
        (default) step is refused, no point of the call is buffered."""
        if not isinstance(metrics, Mapping):
            raise InvalidArgumentError(f"metrics must be a mapping, got {type(metrics).__name__}")
        self._check_writable()
        checked = {v.validate_key(k, "metric key"): v.validate_metric_value(k, x) for k, x in metrics.items()}
        first = next(iter(checked), "metric")
        fixed = None if step is None else v.validate_step(first, step)
        ts = time.time() if timestamp is None else v.validate_timestamp(first, timestamp)
        with self._lock:
            steps = {key: self._next_step.get(key, 0) if fixed is None else fixed for key in checked}
            for key, s in steps.items():
                if s > v.MAX_STEP:
                    raise _next_step_error(key, s)
            for key, value in checked.items():
                self._next_step[key] = steps[key] + 1
                self._known_keys.add(key)
                self._pending.setdefault(key, []).append((value, steps[key], ts))

    def log_metric_series(self, key: str, values: Iterable[float] | np.ndarray[Any, Any],
                          steps: Iterable[int] | np.ndarray[Any, Any] | None = None,
                          timestamps: Iterable[float] | np.ndarray[Any, Any] | None = None) -> None:
        """Append many points of one metric at once from arrays (the fastest way to log).

        ``steps`` are integers from 0 to 2**63 - 1 (any numpy integer dtype; a uint64 step above 2**63 - 1
        is refused), or by default the key's next steps. Everything is checked before anything is written.
        """
        self._check_writable()
        v.validate_key(key, "metric key")
        vals = _float_array(key, "values", values)
        n = vals.shape[0]
        st = _series_steps(key, steps, n, self._next_step.get(key, 0))
        ts = np.full(n, time.time()) if timestamps is None else _float_array(key, "timestamps", timestamps)
        if ts.shape != (n,):
            raise InvalidArgumentError(f"metric {key!r}: timestamps must have {n} entries")
        self.flush_key(key)
        self.vault.backend.log_metrics(self.id, [MetricSeries(key, st, vals, ts)])
        self._stale = True
        if n:
            self._next_step[key] = int(st[-1]) + 1

    def log_artifact(self, key: str, data: BlobSource) -> ArtifactInfo:
        """Store a file under ``key`` (a relative path like ``"plots/roc.png"``).

        ``data`` is bytes, a filesystem path, or a binary file object; it is streamed, content-addressed
        (identical files are stored once) and replaces an earlier artifact of the same key.
        """
        self._check_writable()
        v.validate_artifact_key(key)
        if isinstance(data, bytes | bytearray | memoryview) and len(data) <= BUFFERED_ARTIFACT_SIZE \
                and self._active:
            # Small bytes from the process running the run are buffered like metric points and written
            # in one batch by the next flush (within flush_interval); reads of this run's artifacts
            # flush first, so they always see them.
            return self._buffer_artifact(key, data)
        if self._artifacts:
            self._flush_artifacts()  # an earlier buffered write of this key must not land after this one
        digest, size = self.vault.backend.blobs.put_content(data)
        info = ArtifactInfo(key=key, size=size, digest=digest, created_at=now())
        self.vault.backend.add_artifact(self.id, info)
        self._stale = True
        return info

    def log_model(self, name: str, instance: Any, model_type: str | None = None) -> Model:
        """Store ``instance`` as the next version of the model ``name`` (created when new), linked both
        ways: the version records this run (``source_run``), this run gets the tag ``model:<name>`` =
        ``<instance id>:<version>``."""
        self._check_writable()
        registry = Registry(self.vault)
        try:
            current = registry.get(name)
        except NotFoundError:
            model = registry.create(model_type, instance, name, source_run=self.id)
        else:
            current.instance = instance
            if model_type is not None:
                current.model_type = model_type
            model = registry.update(current, source_run=self.id)
        self.set_tag(f"model:{name}", f"{model.instance_id}:{model.version}")
        return model

    @names_store
    def get_artifact(self, key: str) -> bytes:
        """The whole content of an artifact, digest-verified."""
        if self._active or self._artifacts:  # also waits for a background flush in progress
            self._flush_artifacts()
        info = self.vault.backend.get_artifact_info(self.id, key)
        return self.vault.backend.blobs.get_content(info.digest)

    @names_store
    def open_artifact(self, key: str) -> BinaryIO:
        """A binary file for streaming an artifact; reading to the end verifies its digest."""
        if self._active or self._artifacts:  # also waits for a background flush in progress
            self._flush_artifacts()
        info = self.vault.backend.get_artifact_info(self.id, key)
        return self.vault.backend.blobs.open_content(info.digest)

    @names_store
    def download_artifact(self, key: str, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Copy an artifact to a local file, verifying its digest; return the path written.

        The file appears only complete and verified (temp file + rename). An existing file is replaced
        only with ``overwrite=True``; a directory as ``path`` receives the artifact's base name.
        """
        if self._active or self._artifacts:  # also waits for a background flush in progress
            self._flush_artifacts()
        if not isinstance(path, str | os.PathLike):
            raise InvalidArgumentError(f"download path must be a str or os.PathLike, got {v.show(path)}")
        text = os.fspath(path)
        if not isinstance(text, str) or not text or "\x00" in text:
            raise InvalidArgumentError(f"download path {v.show(text)} must be a non-empty path without NUL")
        info = self.vault.backend.get_artifact_info(self.id, key)
        target = Path(text)
        if target.is_dir():
            target = target / key.rsplit("/", 1)[-1]
        if target.exists() and not overwrite:
            raise AlreadyExistsError(f"{str(target)!r} exists; pass overwrite=True to replace it")
        self.vault.backend.blobs.copy_content_to(info.digest, target)
        return target

    def list_artifacts(self, prefix: str = "") -> list[ArtifactInfo]:
        """The run's artifacts under ``prefix``, sorted by key."""
        if self._active or self._artifacts:  # also waits for a background flush in progress
            self._flush_artifacts()
        return self.vault.backend.list_artifacts(self.id, prefix)

    @names_store
    def metric_history(self, key: str) -> MetricSeries:
        """Every point of a metric as numpy arrays: ``.steps``, ``.values``, ``.timestamps``."""
        self.flush()
        return self.vault.backend.metric_history(self.id, key)

    # -- ending ---------------------------------------------------------------------------------------------
    def end(self, status: str = "finished", error: str | None = None) -> None:
        """Flush and mark the run ended with ``status`` (``finished``, ``failed`` or ``killed``).

        ``error`` is stored as given, so it must be valid text: a lone surrogate, a NUL or more than
        ``MAX_ERROR_LENGTH`` characters raise ``InvalidArgumentError`` before anything is written (escape
        it first with ``labvault.domain.validation.escape_error_text``; a ``with`` block does that for the
        exception that ends it). The run is marked ended even when writing its buffered points fails; that
        failure is raised afterwards.
        """
        if status not in TERMINAL_STATUSES:
            raise InvalidArgumentError(
                f"a run ends as one of {sorted(TERMINAL_STATUSES)}, not {v.show(status)}")
        if error is not None:
            v.validate_error_text(error)
        problems = self._finish(status, error)
        if problems:
            for later in problems[1:]:
                problems[0].add_note(f"ending run {self.id} also failed: {_describe(later)}")
            raise problems[0]

    def _finish(self, status: str, error: str | None) -> list[Exception]:
        """Flush, then mark the run ended whatever the flush did; return what failed, in order."""
        problems: list[Exception] = []
        try:
            try:
                self.flush()
            except Exception as exc:
                problems.append(exc)
        finally:
            self.vault._unregister_active(self)
            self._active = False
            self._stale = True
            try:
                self.vault.backend.update_run(self.id, status=status, end_time=now(), error=error)
            except Exception as exc:
                problems.append(exc)
        return problems

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """End the run: ``finished``, or ``failed`` (``killed`` for ``KeyboardInterrupt``) with the
        exception's text, escaped so it can always be stored. The exception raised in the block is the one
        that propagates: if ending the run fails too, that is a warning and a note on the exception."""
        if exc is None:
            self.end("finished")
            return
        status = "killed" if isinstance(exc, KeyboardInterrupt) else "failed"
        text = v.escape_error_text("".join(traceback.format_exception_only(exc)).strip())
        problems = self._finish(status, text)
        if problems:
            message = (f"labvault: ending run {self.id} as {status!r} failed: "
                       + "; ".join(_describe(p) for p in problems))
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            exc.add_note(message)


def _describe(exc: BaseException) -> str:
    """``ClassName: message`` of an exception, escaped so that printing it cannot fail."""
    try:
        text = str(exc)
    except Exception:
        text = "<str() of the exception failed>"
    return v.escape_error_text(f"{type(exc).__name__}: {text}")[:2000]


class RunList(list[Run]):
    """A list of runs that turns into a pandas DataFrame with ``to_frame()``."""

    def __init__(self, runs: Iterable[Run] = ()) -> None:
        super().__init__(runs)

    def to_frame(self) -> pd.DataFrame:
        """One row per run: id, experiment, number, name, status, times, then params.*, metrics.*,
        results.*, tags.*."""
        try:
            import pandas as pd  # lazy: pandas (extra [pandas]) costs ~250 ms at import
        except ImportError as exc:
            raise UnsupportedOperationError(
                "RunList.to_frame() needs pandas: pip install 'labvault[pandas]' (or pip install pandas)"
            ) from exc

        n = len(self)
        infos = [run._snapshot for run in self]
        base: dict[str, Any] = {
            "id": [i.id for i in infos],
            "experiment": [run.experiment.name for run in self],
            "number": np.fromiter((i.number for i in infos), dtype=np.int64, count=n),
            "name": [i.name for i in infos],
            "parent_id": [i.parent_id for i in infos],
            "status": [i.status for i in infos],
            "start_time": pd.to_datetime(
                np.fromiter((i.start_time for i in infos), dtype=np.float64, count=n), unit="s", utc=True),
            "end_time": pd.to_datetime(np.fromiter(
                (np.nan if i.end_time is None else i.end_time for i in infos), dtype=np.float64, count=n),
                unit="s", utc=True),
        }
        # Columns are built whole (one list per key) rather than row by row: 10,000 runs in tens of ms.
        extra: dict[str, list[Any]] = {}
        for prefix, attr in (("params", "params"), ("metrics", "metrics"), ("results", "results"),
                             ("tags", "tags")):
            for row, info in enumerate(infos):
                for key, value in getattr(info, attr).items():
                    column = extra.get(f"{prefix}.{key}")
                    if column is None:
                        column = extra[f"{prefix}.{key}"] = [None] * n
                    column[row] = value
        for name in sorted(extra):
            base[name] = extra[name]
        frame = pd.DataFrame(base)
        for name in frame.columns:
            if name.startswith("metrics."):
                frame[name] = frame[name].astype("float64")
        return frame

    def __iter__(self) -> Iterator[Run]:
        return super().__iter__()
