"""The client API's entry object: ``Vault``, an open store (``labvault.open(...)``) over any ``Backend``.

A vault makes experiments and runs (``labvault.client.run``), finds and searches them, deletes them here or
on a remote, syncs with remotes (``push``/``pull``/``sync_status``, see ``labvault.sync``) and watches the
change feed. It owns the background flusher of its active runs (``labvault.client.buffer``): metric logging
is buffered, and ``Vault.flush()``, ``Vault.close()`` and interpreter exit write every buffer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from labvault import open_backend, query
from labvault._version import version
from labvault.client.buffer import _check_heartbeat, _flush_failure, _flush_loop, _open_vaults
from labvault.client.events import EventView, FilteredFeed, Subscription, check_kinds
from labvault.client.hints import names_store, warn_unknown_keys
from labvault.client.models import Model, Registry, without_model_project
from labvault.client.run import Experiment, Run, RunList
from labvault.domain import DELETED_TAG, ChangeEvent, ExperimentInfo
from labvault.domain import validation as v
from labvault.errors import InvalidArgumentError, LabvaultError, NotFoundError, UnsupportedOperationError
from labvault.store.search.columns import no_gc

if TYPE_CHECKING:
    from labvault.query import Expr
    from labvault.store.abc import Backend
    from labvault.store.feed import ChangeFeed
    from labvault.sync import RunStatus, SyncReport

DeleteMode = Literal["local", "remote", "all"]


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
                    target=_flush_loop, args=(self,), name="labvault-flusher", daemon=True
                )
                self._flusher.start()

    def _unregister_active(self, run: Run) -> None:
        with self._active_lock:
            self._active.pop(run.id, None)

    # -- experiments ----------------------------------------------------------------------------------------
    def experiment(self, name: str, project: str = "default") -> Experiment:
        """Get the experiment ``name`` in ``project``, creating it if it does not exist."""
        self._check_open()
        return Experiment(self, self.backend.ensure_experiment(name, project))

    def experiments(self, project: str | None = None) -> list[Experiment]:
        """All experiments (of one project when given), oldest first; the models' own project
        (``labvault.models``) only when asked for by name."""
        self._check_open()
        found = self.backend.list_experiments(project)
        return [Experiment(self, e) for e in (found if project is not None else without_model_project(found))]

    @names_store
    def get_experiment(self, id_or_name: str, project: str | None = None) -> Experiment:
        """An existing experiment by its id, or by name (in ``project``, or the only one of that name);
        ``NotFoundError`` when there is none (``experiment(name)`` creates one instead).

        A URL ``<store>#<experiment id>`` or ``<store>#<project>/<name>`` (a labvault server, or any store
        URI) names an experiment elsewhere, as PaDRe's ``get_experiment(url)``: it is pulled into this
        vault (only what changed since the last pull) and the local copy returned.
        """
        self._check_open()
        if isinstance(id_or_name, str) and "://" in id_or_name.split("#", 1)[0]:
            return self._get_remote_experiment(id_or_name)
        v.validate_name(id_or_name, "experiment id or name")
        found = self.backend.list_experiments(project)
        for e in found:
            if e.id == id_or_name:
                return Experiment(self, e)
        return Experiment(self, self.backend.find_experiment(id_or_name, project))

    def _get_remote_experiment(self, url: str) -> Experiment:
        store, _, fragment = url.partition("#")
        if not fragment:
            raise InvalidArgumentError(
                f"experiment URL {url!r} names no experiment: write <store>#<experiment id> or "
                "<store>#<project>/<name>")
        for e in self._remote_backend(store).list_experiments():
            if e.id == fragment:
                return self.pull(f"{store}#{e.project}/{e.name}")
        return self.pull(url)

    @names_store
    def _find_experiment(self, name: str, project: str | None = None) -> ExperimentInfo:
        if project is None:  # a name is the user's experiment, never one of the models' own
            v.validate_name(name, "experiment name")
            found = [e for e in without_model_project(self.backend.list_experiments()) if e.name == name]
            if len(found) == 1:
                return found[0]
        return self.backend.find_experiment(name, project)

    @names_store
    def delete_experiment(self, name: str | Experiment, mode: DeleteMode = "local",
                          project: str | None = None) -> None:
        """Delete an experiment and all its runs: one given by name (in ``project``), or an ``Experiment``.

        ``mode`` is ``"local"`` (this vault), ``"remote"`` (the vault's remote) or ``"all"`` (both, or
        whichever has it; ``NotFoundError`` when neither does). Deleting the remote copy makes the local
        store forget its sync state for those runs, so a later push uploads them again. Blobs stay until
        garbage collection, since other runs may share them.
        """
        self._check_open()
        if isinstance(name, Experiment):
            project = name.project
            name = name.name
        if mode not in ("local", "remote", "all"):
            raise InvalidArgumentError(f"mode must be 'local', 'remote' or 'all', got {mode!r}")
        if mode != "local":
            if self.remote is None:
                raise UnsupportedOperationError(
                    f"delete_experiment(mode={mode!r}) needs a remote, and vault {self.uri!r} has none"
                )
            from labvault import sync  # lazy: labvault.sync (~7 ms) is for push/pull, not open()

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
        from labvault import sync  # lazy: labvault.sync (~7 ms) is for push/pull, not open()

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
        from labvault import sync  # lazy: labvault.sync (~7 ms) is for push/pull, not open()

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
        from labvault import sync  # lazy: labvault.sync (~7 ms) is for push/pull, not open()

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
        from labvault import sync  # lazy: labvault.sync (~7 ms) is for push/pull, not open()

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
    def watch(self, kinds: str | Iterable[str] | None = None, experiment: Experiment | str | None = None,
              *, after: str | None = None) -> ChangeFeed:
        """A live feed of the store's changes from now on: ``for event in vault.watch(): ...``.

        Each item is a ``labvault.domain.ChangeEvent`` (``kind`` such as ``"run.created"``,
        ``"metric.logged"``, ``"run.finished"``, ``"model.created"``; ``run_id``; a small ``data``
        summary). ``kinds`` keeps only those kinds (families too: ``"run"``, ``"model"``);
        ``experiment`` (an ``Experiment`` or a name) only that experiment's changes. Every persistent
        store carries every process's changes (file, SQLite and S3 through their change log, PostgreSQL
        by LISTEN/NOTIFY, Redis by its stream, a server by server-sent events). ``after`` (an event's
        ``id``) resumes right after that event where the store keeps a log. Buffered metrics appear when
        they are flushed. Close the feed (or use ``with``) when done.
        """
        self._check_open()
        view = EventView(self.backend, check_kinds(kinds), experiment)
        return FilteredFeed(self.backend.watch(after=after), view)

    def subscribe(self, callback: Callable[[ChangeEvent], Any], kinds: str | Iterable[str] | None = None,
                  experiment: Experiment | str | None = None, *, after: str | None = None) -> Subscription:
        """Call ``callback(event)`` on a background thread for every change ``watch(kinds, experiment)``
        would deliver, from any process; returns the ``Subscription`` (``.close()``, or ``with``)."""
        if not callable(callback):
            raise InvalidArgumentError(f"callback must be callable, got {v.show(callback)}")
        return Subscription(self.watch(kinds, experiment, after=after), callback)

    def register_model_change_cb(self, cb: Callable[[Model], Any]) -> Subscription:
        """aimm's name: call ``cb(model)`` with each new model or model version (any process) as a
        ``Model`` whose ``.instance`` loads on first access."""
        if not callable(cb):
            raise InvalidArgumentError(f"cb must be callable, got {v.show(cb)}")

        def deliver(event: ChangeEvent) -> None:
            cb(self.get_model(int(event.data["instance_id"]), int(event.data["version"])))

        return self.subscribe(deliver, kinds=("model.created", "model.updated"))

    # -- runs -----------------------------------------------------------------------------------------------
    @names_store
    def get_run(self, run_id: str) -> Run:
        """The run with this id, from any experiment; ``NotFoundError`` if there is none."""
        self._check_open()
        with self._active_lock:
            active = self._active.get(run_id)
        if active is not None:
            return active
        info = _check_heartbeat(self, self.backend.get_run(run_id))
        return Run(self, self._experiment_by_id(info.experiment_id), info)

    @names_store
    def delete_run(self, run: Run | str) -> None:
        """Delete a run (a run or its id): searches, ``exp.runs()`` and ``to_frame()`` no longer show it.

        Nothing is erased: the run keeps its data, ``get_run`` still finds it (``run.deleted`` is True),
        ``search_runs(..., deleted=True)`` lists the deleted runs and ``restore_run`` brings it back, as
        MLflow's delete and restore do. Deletion is the system tag ``labvault.deleted`` (when, ISO 8601),
        so it syncs like any tag.
        """
        self._set_deleted(run, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @names_store
    def restore_run(self, run: Run | str) -> None:
        """Undo ``delete_run``: the run shows in searches again (a run that is not deleted is left as is)."""
        self._set_deleted(run, "")

    def _set_deleted(self, run: Run | str, value: str) -> None:
        self._check_open()
        run_id = run.id if isinstance(run, Run) else run
        info = self.backend.get_run(run_id)  # NotFoundError (naming the store) before anything is written
        if value or info.tags.get(DELETED_TAG):
            self.backend.set_tags(run_id, {DELETED_TAG: value})
        if isinstance(run, Run):
            run._stale = True

    # -- models (labvault.client.models) ------------------------------------------------------------------
    @property
    def _registry(self) -> Registry:
        self._check_open()
        return Registry(self)

    def create_model(self, model_type: str | None, instance: Any, name: str | None = None) -> Model:
        """Store a new model: the next instance id (dense, unique across processes), version 1.

        ``model_type`` picks the serializer (``labvault.serializers``); None means the instance's
        ``module.QualifiedName``. ``name`` (unique) lets ``get_model``/``load_model`` find it by name.
        Returns the ``Model`` (``.instance``, ``.model_type``, ``.instance_id``, ``.version``).
        """
        return self._registry.create(model_type, instance, name)

    def update_model(self, model: Model) -> Model:
        """Store ``model.instance`` as a new immutable version of the same model (same instance id)."""
        return self._registry.update(model)

    def get_models(self) -> list[Model]:
        """The latest version of every model, by instance id (instances load on first ``.instance``)."""
        return self._registry.latest()

    @names_store
    def get_model(self, id_or_name: int | str, version: int | str | None = None) -> Model:
        """One version of a model by instance id or name: the latest, a version number, or an alias."""
        return self._registry.get(id_or_name, version)

    @names_store
    def model_versions(self, id_or_name: int | str) -> list[Model]:
        """Every version of a model, oldest first."""
        return self._registry.versions(id_or_name)

    @names_store
    def load_model(self, id_or_name: int | str, version: int | str | None = None, *,
                   trusted: bool = False) -> Any:
        """The instance of a model version. A pickled model (or a skops one with types skops does not
        know) needs ``trusted=True``: loading it runs code its writer chose (see labvault.serializers)."""
        return self._registry.load(id_or_name, version, trusted=trusted)

    @names_store
    def set_model_alias(self, id_or_name: int | str, alias: str, version: int) -> None:
        """Point an alias such as ``"production"`` at a version (``get_model(name, "production")``)."""
        self._registry.set_alias(id_or_name, alias, version)

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
        deleted: bool | None = False,
    ) -> RunList:
        """Runs of the named experiments (all when ``None``) matching ``filter``, sorted and paged.

        ``filter`` uses the labvault query language, e.g.
        ``"params.lr > 0.01 and metrics.acc >= 0.9 and tags.team = 'vision'"``; ``order_by`` takes keys
        like ``["metrics.acc desc", "params.lr"]`` (missing values last); the default order is run number.
        A filter naming a param, metric or tag that no run of these experiments has warns
        (:class:`labvault.client.hints.UnknownKeyWarning`) with the closest existing keys.
        Deleted runs (``delete_run``) are left out; ``deleted=True`` gives only them, ``deleted=None`` both.
        """
        self._check_open()
        v.validate_page(limit, offset)
        if deleted is not None and not isinstance(deleted, bool):
            raise InvalidArgumentError(f"deleted must be True, False or None, got {deleted!r}")
        expr = query.parse(filter)
        order = query.parse_order_by(order_by)
        infos = self._resolve_experiments(experiments, project)
        self.flush()
        ids = [e.id for e in infos]
        found = self.backend.search_runs(ids, _with_deleted(expr, deleted), order, limit, offset)
        if not isinstance(expr, query.TrueExpr):
            warn_unknown_keys(self.backend, ids, expr, found=found)
        by_id = {e.id: Experiment(self, e) for e in infos}

        with no_gc(len(found) > 1000):  # thousands of cycle-free objects: skip the collector's passes
            return RunList([Run(self, by_id[r.experiment_id],
                                _check_heartbeat(self, r) if r.status == "running" else r)
                            for r in found])

    def _resolve_experiments(
        self, experiments: str | Experiment | Sequence[str | Experiment] | None, project: str | None
    ) -> list[ExperimentInfo]:
        if experiments is None:
            found = self.backend.list_experiments(project)
            return found if project is not None else without_model_project(found)
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


def _with_deleted(expr: Expr, deleted: bool | None) -> Expr:
    """``expr`` restricted to live runs (``deleted=False``), to deleted ones (True), or as is (None)."""
    from labvault.query import And, Compare, Field, IsNull, Not, Or, TrueExpr  # lazy: as search_runs

    if deleted is None:
        return expr
    mark = Field("tags", DELETED_TAG)
    live = Or((IsNull(mark, negated=False), Compare(mark, "=", "")))
    wanted: Expr = Not(live) if deleted else live
    return wanted if isinstance(expr, TrueExpr) else And((expr, wanted))


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
