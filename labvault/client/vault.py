"""The domain API: ``Vault`` > ``Experiment`` > ``Run``, over any ``Backend``.

Metric logging is buffered: ``Run.log_metric`` appends to an in-memory buffer and a background thread
writes buffers to the backend every ``flush_interval`` seconds (default 1 s). ``Run.flush()``, leaving a
``with`` block, ``Vault.close()`` and normal interpreter exit (``atexit``) write everything; a process
killed with SIGKILL loses at most the points logged in the last ``flush_interval``. Params, tags,
results and artifacts are written through immediately.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import math
import os
import threading
import time
import traceback
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import numpy as np

from labvault.domain import TERMINAL_STATUSES, ArtifactInfo, ExperimentInfo, MetricSeries, RunInfo, now
from labvault.domain import validation as v
from labvault.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
    UnsupportedOperationError,
)

if TYPE_CHECKING:
    import pandas as pd

    from labvault.blobs.abc import BlobSource
    from labvault.store.abc import Backend
    from labvault.store.feed import ChangeFeed
    from labvault.sync import RunStatus, SyncReport

DeleteMode = Literal["local", "remote", "all"]

#: In-memory artifacts up to this size, logged by the process running the run, are buffered and written
#: in batches by the background flush (like metric points); larger ones and files are written at once.
BUFFERED_ARTIFACT_SIZE = 64 * 1024
#: A run's artifact buffer is written as soon as it holds this many bytes.
BUFFERED_ARTIFACT_BYTES = 16 * 1024 * 1024

_open_vaults: weakref.WeakSet[Vault] = weakref.WeakSet()
_log = logging.getLogger("labvault")


@atexit.register
def _flush_all_at_exit() -> None:
    for vault in list(_open_vaults):
        try:
            vault.close()
        except Exception:
            traceback.print_exc()


def _warn_background(run: Run, what: str, exc: Exception) -> None:
    """Log a failure of the background flusher once per run and distinct error (it retries every
    interval; ``flush()`` and ``close()`` raise it to the owner)."""
    text = f"{type(exc).__name__}: {exc}"
    if run._flush_error != text:
        run._flush_error = text
        _log.warning("background %s of run %s failed (retried; flush() or close() raises it): %s",
                     what, run.id, text)


class Vault:
    """An open labvault store. Use ``labvault.open(...)`` to get one; close it (or use ``with``)."""

    def __init__(
        self,
        backend: Backend,
        *,
        flush_interval: float = 1.0,
        heartbeat_interval: float = 10.0,
        heartbeat_timeout: float = 120.0,
        remote: str | None = None,
    ) -> None:
        if remote is not None and (not isinstance(remote, str) or not remote):
            raise InvalidArgumentError(f"remote must be a store URI, got {remote!r}")
        if not (isinstance(flush_interval, int | float) and 0 < flush_interval <= 3600):
            raise InvalidArgumentError(f"flush_interval must be in (0, 3600] seconds, got {flush_interval!r}")
        if not (isinstance(heartbeat_timeout, int | float) and heartbeat_timeout > 0):
            raise InvalidArgumentError(f"heartbeat_timeout must be > 0 seconds, got {heartbeat_timeout!r}")
        self.backend = backend
        self.flush_interval = float(flush_interval)
        self.heartbeat_interval = float(heartbeat_interval)
        self.heartbeat_timeout = float(heartbeat_timeout)
        self._active: dict[str, Run] = {}
        self._active_lock = threading.Lock()
        #: Held while a run's buffers are written, so a flush that finds the buffers empty because the
        #: background flusher took them waits until they are stored (read-your-writes).
        self._flush_lock = threading.RLock()
        self._closed = False
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        #: The default store ``push``/``pull``/``sync_status`` talk to (``labvault.open(remote=...)``).
        self.remote = remote
        self._remotes: dict[str, Backend] = {}
        self._remotes_lock = threading.Lock()
        #: What the last ``pull`` did (a ``labvault.sync.SyncReport``).
        self.last_sync: SyncReport | None = None
        _open_vaults.add(self)

    # -- lifecycle ------------------------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        """The URI the vault was opened with."""
        return self.backend.uri

    @property
    def online(self) -> bool:
        """Whether the vault can sync: the remote answers (when the vault has one, see ``remote``).

        Without a remote: a health check on a server (``http(s)://``); True for local stores. Logging never
        needs the remote: an offline vault keeps writing locally and ``push`` uploads it later.
        """
        if self.remote is not None:
            return _reachable(self._remote_backend(self.remote))
        check = getattr(self.backend, "check_online", None)
        return bool(check()) if callable(check) else True

    @property
    def server_info(self) -> dict[str, Any]:
        """What serves this vault: a server's version, backend, features and auth mode (``http(s)://``), or
        for a local store the labvault version, backend kind and URI."""
        info = getattr(self.backend, "server_info", None)
        if callable(info):
            return dict(info())
        from labvault._version import version

        cls = type(self.backend)
        return {"server": None, "version": version(), "backend": cls.scheme or cls.__name__,
                "uri": self.backend.uri, "auth": "none",
                "features": {"cross_process_events": bool(cls.supports_events),
                             "persistent": bool(cls.persistent), "multiprocess": bool(cls.multiprocess)}}

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<labvault.Vault {self.backend.uri!r}>"

    def close(self) -> None:
        """Flush every buffered point, stop the background flusher and release the backend.

        Every active run is flushed even when one fails; the flusher is stopped and the backend closed in
        any case, then the flush failures are raised as one error (see ``flush``).
        """
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._wake.set()
            if self._flusher is not None and self._flusher is not threading.current_thread():
                self._flusher.join(timeout=5)
            with self._remotes_lock:
                remotes, self._remotes = list(self._remotes.values()), {}
            try:
                for backend in remotes:
                    backend.close()
            finally:
                self.backend.close()
                _open_vaults.discard(self)

    def flush(self) -> None:
        """Write the metric buffers of every active run to the backend now.

        One run's failure does not stop the others: every run is flushed, a failed run keeps its points
        buffered (a later flush writes them once the cause is gone), and then one error is raised that names
        each failed run and what failed. Its class is the failures' class when they all share one that is a
        ``LabvaultError`` (``NotFoundError`` for runs deleted meanwhile, say), else ``LabvaultError``; the
        first failure is its ``__cause__``.
        """
        with self._active_lock:
            runs = list(self._active.values())
        failures: list[tuple[Run, Exception]] = []
        for run in runs:
            try:
                run.flush()
            except Exception as exc:  # flush the others first; raised together below
                failures.append((run, exc))
        if failures:
            raise _flush_failure(failures) from failures[0][1]

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgumentError(f"vault {self.backend.uri!r} is closed")

    def _register_active(self, run: Run) -> None:
        with self._active_lock:
            self._active[run.id] = run
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="labvault-flusher", daemon=True
                )
                self._flusher.start()

    def _unregister_active(self, run: Run) -> None:
        with self._active_lock:
            self._active.pop(run.id, None)

    def _flush_loop(self) -> None:
        last_beat = time.monotonic()
        while not self._closed:
            self._wake.wait(self.flush_interval)
            if self._closed:
                return
            beat = time.monotonic() - last_beat >= self.heartbeat_interval
            with self._active_lock:
                runs = list(self._active.values())
            for run in runs:
                try:
                    run.flush()
                    run._flush_error = None
                except Exception as exc:  # keep flushing the others; the owner sees it on flush()
                    _warn_background(run, "flush", exc)
                if beat:  # a run whose flush fails is still alive: keep its heartbeat fresh
                    try:
                        self.backend.update_run(run.id, heartbeat=now())
                    except Exception as exc:
                        _warn_background(run, "heartbeat", exc)
            try:
                self.backend.sync()  # group commit: what this interval wrote survives a power loss
            except Exception:  # retried next interval, and raised by close()
                traceback.print_exc()
            if beat:
                last_beat = time.monotonic()

    def _check_heartbeat(self, info: RunInfo, run: Run | None = None) -> RunInfo:
        """Mark a ``running`` run ``killed`` when its heartbeat is older than ``heartbeat_timeout``.

        The writer's flusher refreshes the heartbeat every ``heartbeat_interval`` seconds, so a stale one
        means the writing process died without ending the run.
        """
        if (
            info.status == "running"
            and info.heartbeat is not None
            and now() - info.heartbeat > self.heartbeat_timeout
            and (run is None or not run._active)
            and info.id not in self._active
        ):
            self.backend.update_run(info.id, status="killed", end_time=info.heartbeat,
                                    error="heartbeat stopped")
            info.status, info.end_time, info.error = "killed", info.heartbeat, "heartbeat stopped"
        return info

    # -- experiments ----------------------------------------------------------------------------------------
    def experiment(self, name: str, project: str = "default") -> Experiment:
        """Get the experiment ``name`` in ``project``, creating it if it does not exist."""
        self._check_open()
        return Experiment(self, self.backend.ensure_experiment(name, project))

    def experiments(self, project: str | None = None) -> list[Experiment]:
        """All experiments (of one project when given), oldest first."""
        self._check_open()
        return [Experiment(self, e) for e in self.backend.list_experiments(project)]

    def _find_experiment(self, name: str, project: str | None = None) -> ExperimentInfo:
        return self.backend.find_experiment(name, project)

    def delete_experiment(self, name: str, mode: DeleteMode = "local", project: str | None = None) -> None:
        """Delete an experiment and all its runs.

        ``mode`` is ``"local"`` (this vault), ``"remote"`` (the vault's remote) or ``"all"`` (both, or
        whichever has it; ``NotFoundError`` when neither does). Deleting the remote copy makes the local
        store forget its sync state for those runs, so a later push uploads them again. Blobs stay until
        garbage collection, since other runs may share them.
        """
        self._check_open()
        if mode not in ("local", "remote", "all"):
            raise InvalidArgumentError(f"mode must be 'local', 'remote' or 'all', got {mode!r}")
        if mode != "local":
            if self.remote is None:
                raise UnsupportedOperationError(
                    f"delete_experiment(mode={mode!r}) needs a remote, and vault {self.uri!r} has none"
                )
            from labvault import sync

            remote = self._remote_backend(self.remote)
            try:
                found = remote.find_experiment(name, project)
            except NotFoundError:
                # "all" deletes wherever the experiment is; it must be somewhere
                here = self.backend.list_experiments(project)
                if mode == "remote" or not any(e.name == name for e in here):
                    raise
            else:
                run_ids = [r.id for r in remote.list_runs([found.id])]
                remote.delete_experiment(found.id)
                state = sync.SyncState(self.backend.blobs, self.remote)
                state.forget(run_ids)
                state.save()
                if mode == "remote":
                    return
                if not any(e.name == name for e in self.backend.list_experiments(project)):
                    return  # only the remote had it
        info = self._find_experiment(name, project)
        with self._active_lock:
            active = [r for r in self._active.values() if r.experiment.id == info.id]
        for run in active:
            run._discard_buffer()
            self._unregister_active(run)
        self.backend.delete_experiment(info.id)

    # -- sync -----------------------------------------------------------------------------------------------
    def _remote_backend(self, uri: str) -> Backend:
        """The backend of a remote store, opened once per URI and closed with the vault."""
        self._check_open()
        with self._remotes_lock:
            backend = self._remotes.get(uri)
            if backend is None:
                from labvault import open_backend

                backend = self._remotes[uri] = open_backend(uri)
            return backend

    def _target(self, uri: str | None, what: str) -> str:
        target = uri if uri is not None else self.remote
        if target is None:
            raise InvalidArgumentError(
                f"{what} needs a remote: open the vault with remote=... (or $LABVAULT_REMOTE) or pass one"
            )
        if not isinstance(target, str) or not target:
            raise InvalidArgumentError(f"remote must be a store URI, got {target!r}")
        return target

    def sync_remotes(self) -> list[dict[str, Any]]:
        """The remotes this store has been synced with (``remote`` URI without password, ``runs``,
        ``last_sync`` epoch seconds), most recent first."""
        from labvault import sync

        self._check_open()
        return sync.known_remotes(self.backend.blobs)

    def push(
        self,
        exp_or_name: str | Experiment | Sequence[str | Experiment] | None = None,
        to: str | None = None,
        *,
        project: str | None = None,
        on_conflict: Literal["ours", "theirs"] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        workers: int = 4,
    ) -> SyncReport:
        """Upload experiments (all when None) to the remote ``to`` (default: the vault's ``remote``).

        Only runs changed since the last sync are read and sent; metrics merge without duplicates and
        only missing blobs travel, so pushing twice sends nothing the second time and an interrupted push
        finishes when run again. A run whose params or tags changed here and on the remote raises
        ``ConflictError`` (before anything is written) unless ``on_conflict`` is ``"ours"`` or
        ``"theirs"``. Raises ``BackendUnavailableError`` when the remote is unreachable (nothing is lost:
        push again later). ``workers`` runs are sent at once (parents before their children);
        ``progress(phase, done, total)`` is called as runs finish. See ``labvault.sync`` for the details.
        """
        from labvault import sync

        self._check_open()
        target = self._target(to, "push")
        self.flush()
        names = None if exp_or_name is None else (
            [exp_or_name] if isinstance(exp_or_name, str | Experiment) else list(exp_or_name))
        exps = sync._experiments(self.backend, names, project)
        remote = self._remote_backend(target)
        transfer = sync.Transfer(self.backend, remote, state=sync.SyncState(self.backend.blobs, target),
                                 src_is_local=True, on_conflict=on_conflict, progress=progress,
                                 direction="push", workers=workers)
        return transfer.run(exps)

    def pull(
        self,
        exp_or_name_or_url: str | Experiment,
        from_: str | None = None,
        *,
        project: str | None = None,
        on_conflict: Literal["ours", "theirs"] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        workers: int = 4,
    ) -> Experiment:
        """Download an experiment from the remote when it is newer there (or absent here); return the
        local copy.

        ``exp_or_name_or_url`` is an experiment, its name, or a URL ``<remote-uri>#<project>/<name>`` (or
        ``#<name>``) naming the remote too. Runs unchanged on the remote since the last sync are not
        transferred; conflicts as in ``push``. ``self.last_sync`` holds the ``SyncReport``.
        """
        from labvault import sync

        self._check_open()
        name: str
        if isinstance(exp_or_name_or_url, Experiment):
            name, project = exp_or_name_or_url.name, exp_or_name_or_url.project
        elif isinstance(exp_or_name_or_url, str) and "#" in exp_or_name_or_url \
                and "://" in exp_or_name_or_url.split("#", 1)[0]:
            url, _, fragment = exp_or_name_or_url.partition("#")
            if from_ is not None and from_ != url:
                raise InvalidArgumentError(f"pull: the URL names remote {url!r} but from_={from_!r}")
            from_ = url
            if "/" in fragment:
                project, name = fragment.split("/", 1)
            else:
                name = fragment
        elif isinstance(exp_or_name_or_url, str):
            name = exp_or_name_or_url
        else:
            raise InvalidArgumentError(
                f"pull takes an experiment, a name or a URL, got {type(exp_or_name_or_url).__name__}")
        target = self._target(from_, "pull")
        remote = self._remote_backend(target)
        found = remote.find_experiment(name, project)
        self.flush()
        transfer = sync.Transfer(remote, self.backend, state=sync.SyncState(self.backend.blobs, target),
                                 src_is_local=False, on_conflict=on_conflict, progress=progress,
                                 direction="pull", workers=workers)
        self.last_sync = transfer.run([found])
        return Experiment(self, self.backend.ensure_experiment(found.name, found.project))

    def sync_status(
        self, exp: str | Experiment, remote: str | None = None, *, project: str | None = None
    ) -> list[RunStatus]:
        """Per run of an experiment: ``"in sync"``, ``"ahead"`` (changed here since the last sync, or only
        here), ``"behind"`` (changed on / only on the remote) or ``"diverged"`` (changed on both; the
        conflicting param/tag fields are listed)."""
        from labvault import sync

        self._check_open()
        target = self._target(remote, "sync_status")
        if isinstance(exp, Experiment):
            name, project = exp.name, exp.project
        else:
            name = v.validate_name(exp, "experiment name")
        self.flush()
        backend = self._remote_backend(target)
        if project is None:
            for side in (self.backend, backend):
                try:
                    project = side.find_experiment(name).project
                    break
                except NotFoundError:
                    continue
        return sync.run_states(self.backend, backend, sync.SyncState(self.backend.blobs, target), name,
                               project or "default")

    # -- change feed ----------------------------------------------------------------------------------------
    def watch(self) -> ChangeFeed:
        """A live feed of the store's changes from now on: ``for event in vault.watch(): ...``.

        Each item is a ``labvault.domain.ChangeEvent`` (``kind`` such as ``"run.created"``,
        ``"metric.logged"``, ``"run.finished"``; ``run_id``; a small ``data`` summary). On PostgreSQL and
        Redis the feed carries every process's changes; elsewhere, this vault's own. Buffered metrics
        appear when they are flushed. Close the feed (or use ``with``) when done.
        """
        self._check_open()
        return self.backend.watch()

    # -- runs -----------------------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> Run:
        """The run with this id, from any experiment; ``NotFoundError`` if there is none."""
        self._check_open()
        with self._active_lock:
            active = self._active.get(run_id)
        if active is not None:
            return active
        info = self._check_heartbeat(self.backend.get_run(run_id))
        return Run(self, self._experiment_by_id(info.experiment_id), info)

    def _experiment_by_id(self, experiment_id: str) -> Experiment:
        for e in self.backend.list_experiments():
            if e.id == experiment_id:
                return Experiment(self, e)
        raise NotFoundError(f"experiment {experiment_id} not found")

    def search_runs(
        self,
        experiments: str | Experiment | Sequence[str | Experiment] | None = None,
        filter: str | None = None,
        order_by: Sequence[str] | str | None = None,
        limit: int | None = None,
        offset: int = 0,
        project: str | None = None,
    ) -> RunList:
        """Runs of the named experiments (all when ``None``) matching ``filter``, sorted and paged.

        ``filter`` uses the labvault query language, e.g.
        ``"params.lr > 0.01 and metrics.acc >= 0.9 and tags.team = 'vision'"``; ``order_by`` takes keys
        like ``["metrics.acc desc", "params.lr"]`` (missing values last); the default order is run number.
        """
        from labvault import query

        self._check_open()
        v.validate_page(limit, offset)
        expr = query.parse(filter)
        order = query.parse_order_by(order_by)
        infos = self._resolve_experiments(experiments, project)
        self.flush()
        found = self.backend.search_runs([e.id for e in infos], expr, order, limit, offset)
        by_id = {e.id: Experiment(self, e) for e in infos}
        from labvault.store.search.columns import no_gc

        check = self._check_heartbeat
        with no_gc(len(found) > 1000):  # thousands of cycle-free objects: skip the collector's passes
            return RunList([Run(self, by_id[r.experiment_id], check(r) if r.status == "running" else r)
                            for r in found])

    def _resolve_experiments(
        self, experiments: str | Experiment | Sequence[str | Experiment] | None, project: str | None
    ) -> list[ExperimentInfo]:
        if experiments is None:
            return self.backend.list_experiments(project)
        if isinstance(experiments, str | Experiment):
            items: Sequence[str | Experiment] = [experiments]
        elif isinstance(experiments, list | tuple):
            items = experiments
        else:
            raise InvalidArgumentError(
                f"experiments must be a name, an Experiment or a list of them, got {v.show(experiments)}")
        out: list[ExperimentInfo] = []
        for item in items:
            if isinstance(item, Experiment):
                out.append(item.info)
            else:
                out.append(self._find_experiment(item, project))
        return out


def _flush_failure(failures: Sequence[tuple[Run, Exception]]) -> LabvaultError:
    """One error for the runs whose flush failed: each run named with what failed. The class is theirs
    when they agree on one ``LabvaultError`` class, else ``LabvaultError``."""
    kinds = {type(exc) for _run, exc in failures}
    kind = kinds.pop() if len(kinds) == 1 else LabvaultError
    if not issubclass(kind, LabvaultError):
        kind = LabvaultError
    parts = [f"run {run.id} ({run.experiment.name}#{run.number}): {type(exc).__name__}: {exc}"
             for run, exc in failures]
    return kind(f"flushing {len(failures)} run(s) failed; their points stay buffered: " + "; ".join(parts))


def _reachable(backend: Backend) -> bool:
    """Whether a store answers (a server's health check; a cheap listing otherwise)."""
    check = getattr(backend, "check_online", None)
    if callable(check):
        return bool(check())
    try:
        backend.list_experiments()
    except (LabvaultError, OSError):
        return False
    return True


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
    ) -> Run:
        """Start a run (status ``running``) with the next run number; use it as a context manager.

        Leaving the ``with`` block normally marks the run ``finished``; an exception marks it ``failed``,
        records the error, and propagates. ``parent`` nests the run under another (a run or its id).
        """
        self.vault._check_open()
        parent_id = parent.id if isinstance(parent, Run) else parent
        info = self.vault.backend.create_run(
            self.id, name=name, parent_id=parent_id, start_time=now(),
            params=params or {}, tags=tags or {},
        )
        run = Run(self.vault, self, info, active=True)
        self.vault._register_active(run)
        return run

    def runs(self) -> RunList:
        """Every run of the experiment, by run number."""
        return self.vault.search_runs([self])

    def get_run(self, number: int) -> Run:
        """The run with this run number."""
        for run in self.runs():
            if run.number == number:
                return run
        raise NotFoundError(f"experiment {self.name!r} has no run number {number!r}")


class Run:
    """One trial of an experiment: params, tags, metrics, results and artifacts."""

    # Slots: a search may build thousands of these, and a slotted object is built in half the time.
    __slots__ = (
        "__weakref__",
        "_active",
        "_artifact_bytes",
        "_artifacts",
        "_flush_error",
        "_known_keys",
        "_lock",
        "_next_step",
        "_pending",
        "_snapshot",
        "_stale",
        "_unsent",
        "experiment",
        "vault",
    )

    def __init__(self, vault: Vault, experiment: Experiment, info: RunInfo, *, active: bool = False) -> None:
        self.vault = vault
        self.experiment = experiment
        self._snapshot = info
        self._active = active
        self._lock = threading.Lock()
        self._pending: dict[str, list[tuple[float, int, float]]] = {}
        #: A batch whose write failed, with its batch id: the next flush re-sends it first (``_send``).
        self._unsent: tuple[str, list[MetricSeries]] | None = None
        self._next_step: dict[str, int] = {}
        self._known_keys: set[str] = set()
        self._flush_error: str | None = None
        self._stale = False
        #: Small in-memory artifacts logged but not yet written, by key (see ``log_artifact``).
        self._artifacts: dict[str, tuple[ArtifactInfo, bytes]] | None = None
        self._artifact_bytes = 0

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
        self._snapshot = self.vault._check_heartbeat(self.vault.backend.get_run(self.id), self)
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

    def flush_key(self, key: str) -> None:
        """Write the buffered points of one metric (keeps ordering with direct array writes)."""
        with self.vault._flush_lock:
            self._send_unsent()
            with self._lock:
                bucket = self._pending.pop(key, None)
            if bucket:
                self._send([_to_series(key, bucket)])

    def _send(self, batch: list[MetricSeries]) -> None:
        """Write buffered points as one batch under a fresh batch id (under the vault's flush lock).

        When the write fails, the batch stays, with its id, and the next flush sends it again before
        anything newer: a write whose answer was lost (a timeout) but that did land is then a no-op for
        the backend, so no point is lost and none is stored twice."""
        self._unsent = (uuid.uuid4().hex, batch)
        self._send_unsent()

    def _send_unsent(self) -> None:
        if self._unsent is not None:
            batch_id, batch = self._unsent
            self._stale = True
            self.vault.backend.log_metrics(self.id, batch, batch_id=batch_id)
            self._unsent = None

    def flush(self) -> None:
        """Write every buffered metric point and small artifact of this run to the backend now."""
        with self.vault._flush_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._artifacts:
            self._flush_artifacts()
        self._send_unsent()
        if not self._pending:
            return
        with self._lock:
            pending, self._pending = self._pending, {}
        if pending:
            self._send([_to_series(k, pts) for k, pts in pending.items()])

    def _flush_artifacts(self) -> None:
        """Write the buffered small artifacts: their bytes in one batch, then their records in one."""
        with self.vault._flush_lock:
            with self._lock:
                pending, self._artifacts, self._artifact_bytes = self._artifacts, None, 0
            if not pending:
                return
            self._stale = True
            try:
                self.vault.backend.blobs.put_content_many([data for _info, data in pending.values()])
                self.vault.backend.add_artifacts(self.id, [info for info, _data in pending.values()])
            except BaseException:
                with self._lock:  # put them back (newer writes of a key win) so nothing is lost
                    self._artifacts = {**pending, **(self._artifacts or {})}
                    self._artifact_bytes = sum(len(d) for _i, d in self._artifacts.values())
                raise

    def _discard_buffer(self) -> None:
        with self._lock:
            self._pending = {}
            self._unsent = None
            self._artifacts, self._artifact_bytes = None, 0

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
            raw = bytes(data)
            digest = hashlib.sha256(raw).hexdigest()
            info = ArtifactInfo(key=key, size=len(raw), digest=digest, created_at=now())
            with self._lock:
                if self._artifacts is None:
                    self._artifacts = {}
                old = self._artifacts.pop(key, None)
                self._artifacts[key] = (info, raw)
                self._artifact_bytes += len(raw) - (len(old[1]) if old else 0)
                full = self._artifact_bytes >= BUFFERED_ARTIFACT_BYTES
            if full:
                self._flush_artifacts()
            return info
        if self._artifacts:
            self._flush_artifacts()  # an earlier buffered write of this key must not land after this one
        digest, size = self.vault.backend.blobs.put_content(data)
        info = ArtifactInfo(key=key, size=size, digest=digest, created_at=now())
        self.vault.backend.add_artifact(self.id, info)
        self._stale = True
        return info

    def get_artifact(self, key: str) -> bytes:
        """The whole content of an artifact, digest-verified."""
        if self._active or self._artifacts:  # also waits for a background flush in progress
            self._flush_artifacts()
        info = self.vault.backend.get_artifact_info(self.id, key)
        return self.vault.backend.blobs.get_content(info.digest)

    def open_artifact(self, key: str) -> BinaryIO:
        """A binary file for streaming an artifact; reading to the end verifies its digest."""
        if self._active or self._artifacts:  # also waits for a background flush in progress
            self._flush_artifacts()
        info = self.vault.backend.get_artifact_info(self.id, key)
        return self.vault.backend.blobs.open_content(info.digest)

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


def _float_array(key: str, what: str, data: Any) -> np.ndarray[Any, Any]:
    """``data`` as a flat float64 array; ``InvalidArgumentError`` naming the metric when it is not real
    numbers (strings, even numeric ones, and bools, as ``log_metric`` refuses them; objects; ragged lists)
    or holds a number too large for a float."""
    try:
        raw = np.asarray(data)
        if raw.ndim == 0:
            raise TypeError("a single value is not a sequence of points")
        if raw.dtype.kind not in "fiuO":
            raise TypeError(f"{raw.dtype.name} is not a real number type")
        return raw.astype(np.float64, copy=False).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgumentError(
            f"metric {key!r}: {what} must be real numbers, got {v.show(data)} "
            f"({type(exc).__name__}: {v.escape_error_text(str(exc))[:200]})") from None


def _to_series(key: str, points: list[tuple[float, int, float]]) -> MetricSeries:
    """A buffer of (value, step, timestamp) points as arrays; steps go straight to int64 (exact: never
    through float64, which rounds steps above 2**53)."""
    n = len(points)
    return MetricSeries(key, np.fromiter((p[1] for p in points), dtype=np.int64, count=n),
                        np.fromiter((p[0] for p in points), dtype=np.float64, count=n),
                        np.fromiter((p[2] for p in points), dtype=np.float64, count=n))


def _next_step_error(key: str, step: int) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"metric {key!r}: the default next step {step} is past 2**63 - 1 (the largest int64 step); "
        "pass step= explicitly"
    )


def _series_steps(key: str, steps: Iterable[int] | np.ndarray[Any, Any] | None, n: int,
                  start: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """The int64 steps of ``log_metric_series``: checked exactly against 0 .. 2**63 - 1, naming the first
    step that cannot be stored (``InvalidArgumentError``)."""
    if steps is None:
        if n and start + n - 1 > v.MAX_STEP:
            raise _next_step_error(key, max(start, v.MAX_STEP + 1))
        return np.arange(start, start + n, dtype=np.int64) if n else np.empty(0, dtype=np.int64)
    if not isinstance(steps, np.ndarray) and not hasattr(steps, "__len__"):
        steps = list(steps)  # a generator
    try:
        raw = np.asarray(steps)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgumentError(f"metric {key!r}: steps must be {n} integers: {exc}") from exc
    if raw.shape != (n,):
        raise InvalidArgumentError(f"metric {key!r}: steps must be {n} integers, got shape {raw.shape}")
    if not n:
        return np.empty(0, dtype=np.int64)
    if np.issubdtype(raw.dtype, np.unsignedinteger):
        bad = raw > v.MAX_STEP
    elif np.issubdtype(raw.dtype, np.signedinteger):
        bad = raw < 0
    else:
        # Floats, bools, objects: one by one, the first bad step named. A list is checked as given, since
        # numpy turns [1, 2**63] into floats and [2**64] into objects.
        items = raw.tolist() if isinstance(steps, np.ndarray) else list(steps)
        out = np.empty(n, dtype=np.int64)
        for i, x in enumerate(items):
            try:
                out[i] = v.validate_step(key, x)
            except InvalidArgumentError:
                raise v.step_error(key, x, f"steps[{i}]") from None
        return out
    if bad.any():
        first = int(np.argmax(bad))
        raise v.step_error(key, raw[first], f"steps[{first}]")
    return raw.astype(np.int64)


class RunList(list[Run]):
    """A list of runs that turns into a pandas DataFrame with ``to_frame()``."""

    def __init__(self, runs: Iterable[Run] = ()) -> None:
        super().__init__(runs)

    def to_frame(self) -> pd.DataFrame:
        """One row per run: id, experiment, number, name, status, times, then params.*, metrics.*, tags.*."""
        import numpy as np
        import pandas as pd

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
                np.fromiter((i.start_time for i in infos), dtype=np.float64, count=n), unit="s"),
            "end_time": pd.to_datetime(np.fromiter(
                (np.nan if i.end_time is None else i.end_time for i in infos), dtype=np.float64, count=n),
                unit="s"),
        }
        # Columns are built whole (one list per key) rather than row by row: 10,000 runs in tens of ms.
        extra: dict[str, list[Any]] = {}
        for prefix, attr in (("params", "params"), ("metrics", "metrics"), ("tags", "tags")):
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
