"""The file backend: a directory of human-readable JSON lines plus append-only metric segments.

URIs: ``./dir``, ``/abs/dir`` or ``file://dir`` / ``file:///abs/dir``. Options: ``durable`` (default
``True``; also ``?durable=false`` on a ``file://`` URI).

Where things are: this module holds ``FileBackend`` (the store's layout, locking and every hook);
``journal`` the per-experiment run journal and the runs folded from it (which searches read through the
shared driver, ``labvault.store.search.columns``); ``index`` the journal's columnar cache ``index.lvx``;
``segments`` the metric segment format and batch ids; ``artifacts`` the artifact manifests; ``fileio``
locks, reads, writes and JSON lines; ``upgrade`` the conversion of older store formats.

Layout (format version 2)::

    <root>/labvault.json                          {"format": "labvault-file", "version": 2}
    <root>/experiments/<exp_id>/experiment.json   id, name, project, created_at (immutable)
    <root>/experiments/<exp_id>/journal.jsonl     every run change, one JSON object a line (authoritative)
    <root>/experiments/<exp_id>/index.lvx         a summary of the journal up to some offset (a cache)
    <root>/experiments/<exp_id>/runs/<run_id>/    made on a run's first metric or artifact
        artifacts.jsonl  append-only manifest, one JSON line {key, digest, size, created_at}; last wins
        metrics/<quote(key, safe="")>.seg   append-only binary records (see ``segments``)
        metrics/<name>.key                  {"key": ...} for a key too long for a file name (hashed name)
        metric-batches.txt  the ids of the metric batches appended with ``batch_id=``, one a line
    <root>/locks/        experiments.lock (creating and deleting experiments)
    <root>/trash/        experiments being deleted (renamed here first, then removed)
    <root>/blobs/        FileBlobStore: content-addressed artifact bytes (sha256/ab/cd/<digest>)

Run changes are lines of the experiment's journal (see ``journal``). Appends happen under an exclusive
``flock`` of the journal file itself, after catching up with what other processes appended (read from the
last offset this process has seen: one ``fstat`` when nothing changed). That makes run numbers dense and
unique across processes (the next number is the largest so far plus one, decided and appended under the
lock), params write-once (the conflict check sees every earlier line) and a run costs two small appends
instead of several file creations: creating a file costs ~1 ms on a typical ext4 disk, an append ~10 us.

Durability: every write is atomic at once (documents are replaced by temp file + rename, appends are
single writes of whole lines or crc-framed records), so a killed process never leaves a torn store. With
``durable=True`` the fsyncs of appended files and of directories are group-committed: queued and run
together by ``sync()``, which the vault's flusher calls every ``flush_interval`` seconds and at run end and
close. A power failure can so lose the writes of the last interval (the store then shows their previous
state) but never corrupt the store. ``durable=False`` skips every fsync: still safe against a killed
process, but after a power failure the last writes may be lost or, on some filesystems, left empty.

Metrics: the journal line with a ``log_metrics`` call's latest points is appended while its segment locks
are held, so its order of latest values is the order of the appends. Run directories are named by run id
(not number), so a run number reused after a power failure can never inherit another run's files. A
writer killed between a batch's segment appends and its journal line leaves the batch stored but
unremembered, so only a re-send of exactly that interrupted batch can be stored twice.

Experiment documents are immutable, so they are cached in memory; so is each experiment's folded journal,
refreshed by reading only what was appended since. Deleting an experiment renames its directory into
``trash/`` under the store lock and the journal lock (atomic: a crash never leaves half an experiment
visible), then removes it.

A store of format version 1 (one ``run.json`` per run) is converted by ``upgrade(uri)`` (in ``upgrade``);
opening one raises ``UnsupportedOperationError`` naming it. OS errors (permission denied, disk full, ...)
raise ``BackendUnavailableError`` naming the path (the table ``_os_errors``); an unparseable document
raises ``CorruptDataError`` naming the file.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from labvault._fs import SyncQueue, atomic_write_bytes, fsync_dir, path_from_uri
from labvault._uri import bool_option, check_options
from labvault.blobs.abc import BlobStore
from labvault.blobs.local import FileBlobStore
from labvault.domain import ArtifactInfo, ExperimentInfo, MetricSeries, RunInfo, now
from labvault.errors import (
    BackendUnavailableError,
    CorruptDataError,
    ErrorTable,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
    UnsupportedOperationError,
    translating,
)
from labvault.store.abc import Backend, check_params_conflict, run_exists_error
from labvault.store.file.artifacts import MANIFEST, Manifests, encode_manifest, manifest_valid_end
from labvault.store.file.fileio import Lock, dump_line, dumps_doc, flock, read_fd, write_all
from labvault.store.file.journal import JOURNAL, ExperimentState
from labvault.store.file.segments import (
    decode_segment,
    enc_float,
    encode_records,
    recent_batches,
    remember_batch,
    scan_segment,
    seg_name,
)
from labvault.store.search.columns import search_positions

if TYPE_CHECKING:
    from labvault.query import Expr, OrderKey

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "FileBackend", "store_version"]

FORMAT_NAME = "labvault-file"
FORMAT_VERSION = 2

_F = TypeVar("_F", bound=Callable[..., Any])


def _translated(func: _F) -> _F:
    """Run a hook under the backend's error table (``_os_errors``: an OS error names the path)."""

    @functools.wraps(func)
    def wrapper(self: FileBackend, *args: Any, **kwargs: Any) -> Any:
        with self._translating:
            return func(self, *args, **kwargs)

    return cast(_F, wrapper)


class FileBackend(Backend, scheme="file"):
    """Experiments as directories; runs as lines of a per-experiment journal; metrics as segments."""

    config_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "properties": {
            "module": {"type": "string"},
            "backend": {"type": "string"},
            "uri": {"type": "string", "minLength": 1},
            "url": {"type": "string", "minLength": 1},
            "path": {"type": "string", "minLength": 1},
            "durable": {"type": "boolean"},
        },
        "anyOf": [{"required": ["uri"]}, {"required": ["url"]}, {"required": ["path"]}],
        "additionalProperties": False,
    }
    persistent: ClassVar[bool] = True
    multiprocess: ClassVar[bool] = True

    @classmethod
    def _uri_for_path(cls, path: str) -> str:
        """The folder itself (a plain path is a file-backend URI)."""
        return path

    _options: ClassVar[tuple[str, ...]] = ("durable",)

    def __init__(self, uri: str, root: str | os.PathLike[str], *, blobs: BlobStore | None = None,
                 durable: bool = True) -> None:
        super().__init__(uri, blobs)
        self.root = Path(root)
        self.durable = durable
        self._pending = SyncQueue()
        self._translating = translating(_os_errors(self.root))
        self._manifests = Manifests()
        self._exp_dir = self.root / "experiments"
        self._lock_dir = self.root / "locks"
        self._trash_dir = self.root / "trash"
        self._ready = False
        self._checked = False
        self._guard = threading.Lock()
        self._locks: dict[str, Lock] = {}
        self._experiments: dict[str, ExperimentInfo] = {}
        self._states: dict[str, ExperimentState] = {}
        self._run_exp: dict[str, str] = {}  # run id -> experiment id (immutable once created)
        self._run_dirs_made: set[str] = set()

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> FileBackend:
        """``./dir``, ``/abs/dir``, ``file://dir`` or ``file:///abs/dir``; option ``durable`` (bool)."""
        if not isinstance(uri, str) or not uri:
            raise InvalidArgumentError(f"file backend URI must be a non-empty string, got {uri!r}")
        query: dict[str, Any] = {}
        path_uri = uri
        if "://" in uri:
            parts = urlsplit(uri)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            path_uri = parts._replace(query="", fragment="").geturl()
        merged = {**query, **options}
        check_options("file", merged, cls._options)
        durable = merged.get("durable", True)
        if isinstance(durable, str):
            durable = durable.strip()
        durable = bool_option("file backend", "durable", durable)
        root = path_from_uri(path_uri, "file")
        if "\x00" in str(root):
            raise InvalidArgumentError(f"{uri!r} contains a NUL character")
        return cls(uri, root, blobs=artifacts, durable=durable)

    def sync(self) -> None:
        """fsync what was appended and renamed since the last sync; refresh indexes that lag far behind."""
        self._write_due_indexes(closing=False)
        self._pending.sync()
        super().sync()

    def close(self) -> None:
        """Write the indexes of the experiments this process changed, make pending writes durable."""
        self._write_due_indexes(closing=True)
        self._pending.sync()
        super().close()

    def _default_blobs(self) -> BlobStore:
        return FileBlobStore(self.root / "blobs", durable=self.durable)

    supports_events = True
    event_log = True
    _event_prefix = ""

    def _event_store(self) -> BlobStore:
        """The change log lives in ``<root>/events/`` (``labvault.store.eventlog``; not fsynced)."""
        return FileBlobStore(self.root / "events", durable=False)

    # -- store format ---------------------------------------------------------------------------------------
    def _check_format(self, raw: bytes, path: Path) -> None:
        version = store_version(raw, path)
        if version > FORMAT_VERSION:
            raise UnsupportedOperationError(
                f"file store {str(self.root)!r} has format version {version}, newer than this labvault "
                f"understands ({FORMAT_VERSION}); upgrade labvault to open it"
            )
        if version < FORMAT_VERSION:
            raise UnsupportedOperationError(
                f"file store {str(self.root)!r} has format version {version}, and this labvault needs "
                f"{FORMAT_VERSION}: convert it with labvault.store.file.upgrade.upgrade({self.uri!r}) "
                "while no other process uses it"
            )

    def _check_readable(self) -> bool:
        """Check the store marker once; False when the store does not exist yet (it reads as empty)."""
        if self._checked:
            return True
        marker = self.root / "labvault.json"
        try:
            raw = marker.read_bytes()
        except FileNotFoundError:
            return False
        self._check_format(raw, marker)
        self._checked = True
        return True

    def _ensure_store(self) -> None:
        """Create the root, its marker and top-level directories on first write (safe across processes)."""
        if self._ready:
            return
        with self._guard:
            if self._ready:
                return
            if not self._check_readable():
                self.root.mkdir(parents=True, exist_ok=True)
                # Several processes may race here: each renames an identical marker into place.
                atomic_write_bytes(self.root / "labvault.json",
                                   dumps_doc({"format": FORMAT_NAME, "version": FORMAT_VERSION}),
                                   durable=self.durable)
                self._check_readable()
            for d in (self._exp_dir, self._lock_dir, self._trash_dir):
                d.mkdir(exist_ok=True)
            if self.durable:
                fsync_dir(self.root)
            self._ready = True

    # -- low-level helpers --------------------------------------------------------------------------------
    def _lock(self, name: str) -> Lock:
        lock = self._locks.get(name)
        if lock is None:
            with self._guard:
                lock = self._locks.get(name)
                if lock is None:
                    lock = self._locks[name] = Lock(self._lock_dir / f"{name}.lock")
        return lock

    def _write_doc(self, path: Path, obj: Any, *, durable: bool | None = None) -> None:
        """Replace ``path`` atomically; its directory must exist (never re-created behind a delete)."""
        durable = self.durable if durable is None else durable
        atomic_write_bytes(path, dumps_doc(obj), durable=durable, create_parents=False, defer=self._pending)

    @staticmethod
    def _read_doc(path: Path) -> Any:
        """Parse a JSON document; FileNotFoundError propagates, anything unparseable is CorruptDataError."""
        raw = path.read_bytes()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"document {path} is corrupt (not valid JSON): {exc}") from exc

    def _append(self, fd: int, path: Path, data: bytes, valid_end: Callable[[int, int], int]) -> int:
        """Append ``data`` to the locked, ``O_APPEND`` file ``fd``; return the new end offset.

        ``valid_end(fd, size)`` returns where the last complete entry ends; when a writer died mid-append
        the torn tail beyond it is cut off first, so it never ends up in the middle of the file.
        """
        size = os.fstat(fd).st_size
        if size:
            good = valid_end(fd, size)
            if good != size:
                os.ftruncate(fd, good)
                size = good
        write_all(fd, data)
        if self.durable:
            self._pending.add_file(path)  # group commit: readers already tolerate a torn tail
        return size + len(data)

    # -- experiments --------------------------------------------------------------------------------------
    def _scan_experiments(self) -> list[ExperimentInfo]:
        if not self._check_readable():
            return []
        try:
            names = os.listdir(self._exp_dir)
        except FileNotFoundError:
            return []
        found: list[ExperimentInfo] = []
        seen = set()
        for name in names:
            if name.startswith("."):
                continue
            info = self._experiments.get(name)
            if info is None:
                path = self._exp_dir / name / "experiment.json"
                try:
                    doc = self._read_doc(path)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # being created or deleted
                info = self._experiment_from_doc(doc, path)
                self._experiments[name] = info
            seen.add(name)
            found.append(info)
        for gone in [k for k in list(self._experiments) if k not in seen]:
            self._experiments.pop(gone, None)
            self._drop_state(gone)
        return found

    @staticmethod
    def _experiment_from_doc(doc: Any, path: Path) -> ExperimentInfo:
        try:
            return ExperimentInfo(str(doc["id"]), str(doc["name"]), str(doc["project"]),
                                  float(doc["created_at"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(f"document {path} is not a valid experiment: {exc!r}") from exc

    @_translated
    def _ensure_experiment(self, name: str, project: str) -> ExperimentInfo:
        for e in self._scan_experiments():
            if e.name == name and e.project == project:
                return e
        self._ensure_store()
        with self._lock("experiments"):
            for e in self._scan_experiments():
                if e.name == name and e.project == project:
                    return e
            info = ExperimentInfo(uuid.uuid4().hex, name, project, now())
            staging = self._exp_dir / f".new-{info.id}"
            (staging / "runs").mkdir(parents=True)
            self._write_doc(staging / "experiment.json",
                            {"id": info.id, "name": name, "project": project, "created_at": info.created_at})
            os.close(os.open(staging / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            if self.durable:
                self._pending.add_dir(staging)
            os.rename(staging, self._exp_dir / info.id)
            if self.durable:
                self._pending.add_dir(self._exp_dir)
            self._experiments[info.id] = info
            return info

    @_translated
    def _list_experiments(self, project: str | None) -> list[ExperimentInfo]:
        return [e for e in self._scan_experiments() if project is None or e.project == project]

    @_translated
    def _delete_experiment(self, experiment_id: str) -> None:
        if not self._check_readable():
            raise NotFoundError(f"experiment {experiment_id} not found")
        self._ensure_store()
        with self._lock("experiments"):
            src = self._exp_dir / experiment_id
            if not (src / "experiment.json").is_file():
                raise NotFoundError(f"experiment {experiment_id} not found")
            doomed = self._trash_dir / f"{experiment_id}-{uuid.uuid4().hex[:8]}"
            state = self._states.get(experiment_id) or ExperimentState(experiment_id, src)
            with state.lock:
                # Under the journal lock, so no writer is between its checks and its append.
                try:
                    fd: int | None = os.open(src / JOURNAL, os.O_RDWR)
                except FileNotFoundError:
                    fd = None
                try:
                    if fd is not None:
                        flock(fd)
                    os.rename(src, doomed)
                finally:
                    if fd is not None:
                        os.close(fd)
            if self.durable:
                self._pending.add_dir(self._exp_dir)
            self._experiments.pop(experiment_id, None)
            self._drop_state(experiment_id)
        shutil.rmtree(doomed, ignore_errors=True)
        self._clean_trash()

    def _clean_trash(self) -> None:
        """Remove what a crashed delete left in trash/ (best effort)."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self._trash_dir):
                shutil.rmtree(self._trash_dir / name, ignore_errors=True)

    # -- experiment state (the folded journal) --------------------------------------------------------------
    def _drop_state(self, experiment_id: str) -> None:
        state = self._states.pop(experiment_id, None)
        if state is not None:
            for run_id in state.ids:
                if self._run_exp.get(run_id) == experiment_id:
                    del self._run_exp[run_id]

    def _register(self, state: ExperimentState) -> None:
        if state.registered < len(state.ids):
            for run_id in state.ids[state.registered:]:
                self._run_exp[run_id] = state.id
            state.registered = len(state.ids)

    def _state(self, experiment_id: str) -> ExperimentState | None:
        """The experiment's runs, up to date with its journal; None when the experiment does not exist."""
        state = self._states.get(experiment_id)
        if state is None:
            if not self._check_readable():
                return None
            state = self._load_state(experiment_id)
            if state is None:
                return None
            with self._guard:
                state = self._states.setdefault(experiment_id, state)
        with state.lock:
            try:
                st = os.stat(state.journal)
            except (FileNotFoundError, NotADirectoryError):
                self._drop_state(experiment_id)
                return None
            if st.st_ino != state.ino or st.st_size < state.consumed:  # replaced: start over
                self._drop_state(experiment_id)
                return self._state(experiment_id)
            if st.st_size > state.consumed:
                fd = os.open(state.journal, os.O_RDONLY)
                try:
                    state.read_tail(fd, st.st_size)
                finally:
                    os.close(fd)
            self._register(state)
        return state

    def _load_state(self, experiment_id: str) -> ExperimentState | None:
        """Read an experiment's index (when it is valid) and the journal after it."""
        state = ExperimentState.load(experiment_id, self._exp_dir / experiment_id)
        if state is None:
            return None
        self._register(state)
        if state.index_due(closing=False):
            # So the next process need not read this long tail again.
            state.write_index(durable=self.durable, defer=self._pending)
        return state

    def _write_due_indexes(self, *, closing: bool) -> None:
        for state in list(self._states.values()):
            if state.index_due(closing=closing):
                state.write_index(durable=self.durable, defer=self._pending)

    def _locate(self, run_id: str) -> tuple[ExperimentState, int]:
        """The state holding a run, up to date, and the run's position in it; NotFoundError if none."""
        experiment_id = self._run_exp.get(run_id)
        if experiment_id is not None:
            state = self._state(experiment_id)
            if state is not None and run_id in state.pos:
                return state, state.pos[run_id]
        for e in self._scan_experiments():
            state = self._state(e.id)
            if state is not None and run_id in state.pos:
                return state, state.pos[run_id]
        raise NotFoundError(f"run {run_id} not found")

    def _append_journal(self, state: ExperimentState,
                        build: Callable[[ExperimentState], dict[str, Any] | None]) -> None:
        """Append ``build(state)`` (None: nothing) to the journal under its lock, after catching up."""
        with state.lock:
            try:
                fd = os.open(state.journal, os.O_RDWR | os.O_APPEND)
            except (FileNotFoundError, NotADirectoryError) as exc:
                self._drop_state(state.id)
                raise NotFoundError(f"experiment {state.id} not found") from exc
            try:
                flock(fd)
                try:
                    current = os.stat(state.journal).st_ino
                except (FileNotFoundError, NotADirectoryError):
                    current = -1
                st = os.fstat(fd)
                if current != st.st_ino:  # deleted while we waited for the lock
                    self._drop_state(state.id)
                    raise NotFoundError(f"experiment {state.id} not found")
                if st.st_ino != state.ino or st.st_size < state.consumed:
                    raise CorruptDataError(f"run journal {state.journal} was replaced or truncated")
                if st.st_size > state.consumed:
                    state.read_tail(fd, st.st_size)
                    if st.st_size > state.consumed:  # a writer died mid-line: cut the torn line off
                        os.ftruncate(fd, state.consumed)
                    self._register(state)
                doc = build(state)
                if doc is None:
                    return
                line = dump_line(doc) + b"\n"
                write_all(fd, line)
                state.apply(doc)
                state.consumed += len(line)
                state.wrote = True
                self._register(state)
            finally:
                os.close(fd)  # releases the lock
        if self.durable:
            self._pending.add_file(state.journal)

    def _modify(self, run_id: str, build: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        """Append the line ``build(run record)`` makes (None: nothing) for an existing run."""
        self._ensure_store()
        state, _i = self._locate(run_id)

        def make(st: ExperimentState) -> dict[str, Any] | None:
            i = st.pos.get(run_id)
            if i is None:
                raise NotFoundError(f"run {run_id} not found")
            return build(st.record(i))

        self._append_journal(state, make)

    # -- runs ---------------------------------------------------------------------------------------------
    @_translated
    def _create_run(
        self, experiment_id: str, name: str | None, parent_id: str | None, start_time: float,
        params: dict[str, Any], tags: dict[str, str], *, run_id: str | None = None,
    ) -> RunInfo:
        if not self._check_readable():
            raise NotFoundError(f"experiment {experiment_id} not found")
        self._ensure_store()
        state = self._state(experiment_id)
        if state is None:
            raise NotFoundError(f"experiment {experiment_id} not found")
        if parent_id is not None:
            self._locate(parent_id)  # NotFoundError when absent
        if run_id is None:
            run_id = uuid.uuid4().hex
        else:
            try:
                self._locate(run_id)
            except NotFoundError:
                pass
            else:
                raise run_exists_error(run_id)

        def build(st: ExperimentState) -> dict[str, Any]:
            if run_id in st.pos:  # created meanwhile by another process
                raise run_exists_error(run_id)
            return {"op": "create", "id": run_id, "number": st.max_number + 1, "name": name,
                    "parent_id": parent_id, "start_time": start_time, "params": params, "tags": tags}

        self._append_journal(state, build)
        with state.lock:
            return state.infos([state.pos[run_id]])[0]

    @_translated
    def _get_run(self, run_id: str) -> RunInfo:
        if not self._check_readable():
            raise NotFoundError(f"run {run_id} not found")
        state, i = self._locate(run_id)
        with state.lock:
            return state.infos([i])[0]

    @_translated
    def _list_runs(self, experiment_ids: list[str]) -> list[RunInfo]:
        if not self._check_readable():
            return []
        out: list[RunInfo] = []
        for experiment_id in dict.fromkeys(experiment_ids):
            state = self._state(experiment_id)
            if state is None:
                continue
            with state.lock:
                state.all_records()
                out.extend(state.infos(range(len(state.ids))))
        return out

    @_translated
    def _search_runs(
        self, experiment_ids: list[str], expr: Expr, order: Sequence[OrderKey], limit: int | None,
        offset: int,
    ) -> list[RunInfo]:
        """Filter, sort and page with numpy over the experiments' columns; build only the runs returned."""
        if not self._check_readable():
            return []
        states = [s for s in (self._state(e) for e in dict.fromkeys(experiment_ids)) if s is not None]
        with contextlib.ExitStack() as stack:
            for state in sorted(states, key=lambda s: s.id):
                stack.enter_context(state.lock)
            picked = search_positions(states, expr, order, limit, offset)
            if picked is None:  # a filter the vectorised evaluator does not know: run by run
                return super()._search_runs(experiment_ids, expr, order, limit, offset)
            if len(states) == 1:
                return states[0].infos(picked)
            starts = np.cumsum([0, *(s.size() for s in states)]).tolist()
            out = []
            for p in picked:
                k = bisect.bisect_right(starts, p) - 1
                out.extend(states[k].infos([p - starts[k]]))
            return out

    @_translated
    def _update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        self._modify(run_id, lambda rec: {"op": "update", "id": run_id, "fields": fields})

    @_translated
    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        def build(rec: dict[str, Any]) -> dict[str, Any] | None:
            stored = rec["params"]
            check_params_conflict(run_id, stored, params)
            new = {k: val for k, val in params.items() if k not in stored}
            return {"op": "params", "id": run_id, "params": new} if new else None

        self._modify(run_id, build)

    @_translated
    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        def build(rec: dict[str, Any]) -> dict[str, Any] | None:
            stored = rec["tags"]
            if all(k in stored and stored[k] == val for k, val in tags.items()):
                return None
            return {"op": "tags", "id": run_id, "tags": tags}

        self._modify(run_id, build)

    @_translated
    def _log_results(self, run_id: str, results: dict[str, Any]) -> None:
        self._modify(run_id, lambda rec: {"op": "results", "id": run_id, "results": results})

    # -- run directories ----------------------------------------------------------------------------------
    def _run_dir(self, state: ExperimentState, run_id: str, *, make: bool = False) -> Path:
        """A run's directory (made on first use without re-creating a deleted experiment)."""
        path = state.dir / "runs" / run_id
        if make and run_id not in self._run_dirs_made:
            try:
                os.mkdir(path)
                if self.durable:
                    self._pending.add_dir(path.parent)
            except FileExistsError:
                pass
            except (FileNotFoundError, NotADirectoryError) as exc:  # the experiment was deleted
                raise NotFoundError(f"run {run_id} not found") from exc
            try:
                os.mkdir(path / "metrics")
                if self.durable:
                    self._pending.add_dir(path)
            except FileExistsError:
                pass
            except (FileNotFoundError, NotADirectoryError) as exc:
                raise NotFoundError(f"run {run_id} not found") from exc
            self._run_dirs_made.add(run_id)
        return path

    # -- metrics ------------------------------------------------------------------------------------------
    @_translated
    def _log_metrics(self, run_id: str, series: list[MetricSeries], batch_id: str | None) -> bool:
        self._ensure_store()
        state, i = self._locate(run_id)
        with state.lock:
            known = {k: entry[3] for k, entry in state.record(i)["metrics"].items()}
        run_dir = self._run_dir(state, run_id, make=True)
        by_key: dict[str, list[MetricSeries]] = {}
        for s in series:
            by_key.setdefault(s.key, []).append(s)
        latest: dict[str, list[Any]] = {}
        fds: list[int] = []
        try:
            locked = [(key, *self._lock_segment(run_id, run_dir / "metrics", key, fds))
                      for key in sorted(by_key)]  # one lock order everywhere: no deadlock between writers
            # A re-sent batch holds the same segment locks as its first attempt, so it waits for it here.
            if batch_id is not None and batch_id in recent_batches(run_dir):
                return False
            for key, fd, path in locked:
                expected = known.get(key)

                def valid_end(fd: int, size: int, expected: Any = expected, name: str = str(path)) -> int:
                    if size == expected:
                        return size
                    return scan_segment(read_fd(fd, size), name)[1]

                end = self._append(fd, path, encode_records(by_key[key]), valid_end)
                value, step, ts = by_key[key][-1].last()
                latest[key] = [enc_float(value), step, ts, end]
            if batch_id is not None:
                remember_batch(run_dir, batch_id)
            # While the segments are still locked, so the journal orders latest values like the appends.
            self._modify(run_id, lambda rec: {"op": "metrics", "id": run_id, "metrics": latest})
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def _lock_segment(self, run_id: str, metrics_dir: Path, key: str, fds: list[int]) -> tuple[int, Path]:
        """Open and lock the segment file of ``key`` (its fd also goes to ``fds``, to be closed)."""
        path = metrics_dir / seg_name(key)
        if "~" in path.name and not path.with_suffix(".key").exists():
            try:
                self._write_doc(path.with_suffix(".key"), {"key": key})
            except FileNotFoundError as exc:
                raise NotFoundError(f"run {run_id} not found") from exc
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except (FileNotFoundError, NotADirectoryError) as exc:  # the experiment was deleted
            raise NotFoundError(f"run {run_id} not found") from exc
        fds.append(fd)
        flock(fd)
        return fd, path

    @_translated
    def _metric_history(self, run_id: str, key: str) -> MetricSeries:
        if not self._check_readable():
            raise NotFoundError(f"run {run_id} not found")
        state, _i = self._locate(run_id)
        path = self._run_dir(state, run_id) / "metrics" / seg_name(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return MetricSeries.empty(key)
        return decode_segment(key, data, str(path))

    # -- artifacts ----------------------------------------------------------------------------------------
    @_translated
    def _add_artifact(self, run_id: str, info: ArtifactInfo) -> None:
        self._add_artifacts(run_id, [info])

    @_translated
    def _add_artifacts(self, run_id: str, infos: list[ArtifactInfo]) -> None:
        """Append the records to the run's manifest in one locked write (a flush of many small ones)."""
        if not infos:
            return
        lines = encode_manifest(infos)
        self._ensure_store()
        state, _i = self._locate(run_id)
        path = self._run_dir(state, run_id, make=True) / MANIFEST
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFoundError(f"run {run_id} not found") from exc
        try:
            flock(fd)
            self._append(fd, path, lines, manifest_valid_end)
        finally:
            os.close(fd)

    @_translated
    def _list_artifacts(self, run_id: str, prefix: str) -> list[ArtifactInfo]:
        if not self._check_readable():
            raise NotFoundError(f"run {run_id} not found")
        state, _i = self._locate(run_id)
        items = self._manifests.read(self._run_dir(state, run_id) / MANIFEST)
        return [info for key, info in items.items() if key.startswith(prefix)]



def _os_errors(root: Path) -> ErrorTable:
    """The backend's error table: an OS error escaping a hook is ``BackendUnavailableError`` naming the
    path it could not access (the store root when the error names none)."""

    def unavailable(exc: BaseException) -> LabvaultError:
        assert isinstance(exc, OSError)
        where = exc.filename if exc.filename is not None else root
        reason = exc.strerror or str(exc)
        return BackendUnavailableError(f"file store {str(root)!r}: cannot access {str(where)!r}: {reason}")

    return {OSError: unavailable}


def store_version(raw: bytes, path: Path) -> int:
    """The format version in a store marker ``labvault.json`` (``CorruptDataError`` if it is none)."""
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptDataError(f"store marker {path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CorruptDataError(f"{path} does not describe a {FORMAT_NAME} store: {meta!r}")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptDataError(f"store marker {path} has no integer version: {meta!r}")
    return version
