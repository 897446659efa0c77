"""Offline-first sync between any two labvault stores: push, pull, status, copy.

Every run carries a **revision**: the sha256 of its *summary*, a small document with one digest per field
(``p:<param>``, ``t:<tag>``, ``r:<result>``, ``a:<artifact key>`` -> the blob digest, ``m:<metric key>`` ->
the number of points and an order-independent hash of their (step, timestamp) keys, ``s`` -> status, end
time and error). Summaries are computed from what every backend
already stores (``get_run``, ``list_artifacts``, ``metric_history``), so no backend's schema changes.

The local store remembers, per remote, the summary of each run on both sides as of the last sync (the
*base*). It keeps that in its own blob store under ``labvault-sync/<hash of the remote URI>.json`` (gc only
collects ``sha256/``), so it works for every local backend. A sync is a three-way merge per field:

* a field changed on the sending side only (against its base) is written to the receiving side;
* a field changed on the receiving side only is left alone (it is newer there);
* a **param or tag** changed on both sides to different values makes the run *diverged*: push and pull
  raise ``ConflictError`` naming the run and the fields before writing anything, unless
  ``on_conflict="ours"`` (the local value wins) or ``"theirs"`` (the remote value wins). Params are
  write-once in every store, so a resolved param conflict keeps each store's value and only stops the
  run being reported as diverged; tags take the winner's value;
* results, artifacts and status changed on both sides: the sending side wins;
* metrics merge as a union keyed by (key, step, timestamp): the receiver's history is read and only the
  missing points are sent, so nothing is ever duplicated;
* artifacts move by digest: a blob the receiver has already is not sent again.

Runs keep their id in every store (``create_run(run_id=...)``); run *numbers* are assigned by each store.
Experiments are matched by (project, name). The sync state is saved every few seconds and at the end of
a transfer; a push killed half way and started again finds the runs it sent equal on both sides (and
records them), and for the run it was cut off in sends only what is missing. A small lock next to the
state keeps two transfers between the same local store and remote from running at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from labvault.blobs.abc import BlobStore
from labvault.domain import ArtifactInfo, ExperimentInfo, MetricSeries, RunInfo
from labvault.errors import AlreadyExistsError, ConflictError, InvalidArgumentError, NotFoundError
from labvault.store.abc import Backend

if TYPE_CHECKING:
    from labvault.client.run import Experiment
    from labvault.client.vault import Vault

OnConflict = Literal["ours", "theirs"]
RunState = Literal["in sync", "ahead", "behind", "diverged"]
#: ``progress(phase, done, total)``: called before the first run and after each run of an operation.
Progress = Callable[[str, int, int], None]

STATE_PREFIX = "labvault-sync/"
_STATE_VERSION = 1
#: Metric points sent per ``log_metrics`` call (bounds a request to a server).
POINTS_PER_BATCH = 200_000
#: Save the sync state at least this often during a transfer (seconds), and at its end.
STATE_SAVE_INTERVAL = 2.0
#: A transfer's lock is refreshed this often (seconds) and taken over when older than ``LOCK_STALE``.
LOCK_REFRESH = 5.0
LOCK_STALE = 60.0
#: Metric points read while planning that are kept for sending (beyond: read again, bounding memory).
HISTORY_BUDGET = 5_000_000
#: Param and tag fields take part in conflict detection (the others: the sending side wins).
_CONFLICT_KINDS = ("p", "t")


# -- summaries and revisions ---------------------------------------------------------------------------------
def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class RunSnapshot:
    """One run as read from one store, with its summary (field -> digest) and revision."""

    info: RunInfo
    artifacts: dict[str, ArtifactInfo]
    metrics: dict[str, str]
    summary: dict[str, str]

    @property
    def revision(self) -> str:
        """The sha256 of the summary: changes whenever anything about the run changes."""
        return revision_of(self.summary)


def revision_of(summary: Mapping[str, str]) -> str:
    """The revision of a run summary (a hex digest)."""
    return hashlib.sha256(json.dumps(dict(summary), sort_keys=True).encode()).hexdigest()


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """splitmix64's finalizer, elementwise (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def series_digest(series: MetricSeries) -> str:
    """An order-independent digest of a metric's points keyed by (step, timestamp), with their number.

    Two stores holding the same points in any order agree; any point more or less changes it. It is a
    sum and an xor of 64-bit hashes, so a million points take a few milliseconds.
    """
    n = len(series)
    if n == 0:
        return "0"
    with np.errstate(over="ignore"):
        h = _mix(series.steps.astype(np.uint64) ^ _mix(series.timestamps.view(np.uint64)))
        total = int(h.sum(dtype=np.uint64))
    xor = int(np.bitwise_xor.reduce(h))
    return f"{n}:{total:016x}{xor:016x}"


def summarize(info: RunInfo, artifacts: Iterable[ArtifactInfo], metrics: Mapping[str, str]) -> dict[str, str]:
    """A run's summary: one digest per param, tag, result, artifact, metric key (``series_digest``) and
    status (with end time and error)."""
    out: dict[str, str] = {"s": _digest([info.status, info.end_time, info.error])}
    for k, val in info.params.items():
        out["p:" + k] = _digest(val)
    for k, text in info.tags.items():
        out["t:" + k] = _digest(text)
    for k, val in info.results.items():
        out["r:" + k] = _digest(val)
    for a in artifacts:
        out["a:" + a.key] = a.digest
    for k, digest in metrics.items():
        if digest != "0":
            out["m:" + k] = digest
    return out


def _metric_digests(backend: Backend, run_id: str, keys: Iterable[str]) -> tuple[dict[str, str],
                                                                                   dict[str, MetricSeries]]:
    digests: dict[str, str] = {}
    histories: dict[str, MetricSeries] = {}
    for key in sorted(keys):
        series = backend.metric_history(run_id, key)
        histories[key] = series
        digests[key] = series_digest(series)
    return digests, histories


def snapshot(backend: Backend, info: RunInfo) -> tuple[RunSnapshot, dict[str, MetricSeries]]:
    """Read a run's artifacts and metric histories; return its snapshot and the histories read."""
    arts = {a.key: a for a in backend.list_artifacts(info.id)}
    digests, histories = _metric_digests(backend, info.id, info.metrics)
    return RunSnapshot(info, arts, digests, summarize(info, arts.values(), digests)), histories


# -- the sync state kept in the local store ------------------------------------------------------------------
def _redact(uri: str) -> str:
    """A URI without its password, for display and for the state document."""
    if "://" not in uri or "@" not in uri.split("://", 1)[1].split("/", 1)[0]:
        return uri
    scheme, rest = uri.split("://", 1)
    creds, host = rest.split("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://{user}@{host}"


def state_key(remote_uri: str) -> str:
    """The blob key under which a local store keeps its sync state for ``remote_uri``."""
    return f"{STATE_PREFIX}{hashlib.sha256(remote_uri.encode()).hexdigest()[:32]}.json"


class SyncState:
    """What a local store remembers about one remote: per run, the base summaries of both sides."""

    def __init__(self, blobs: BlobStore | None, remote_uri: str) -> None:
        self.blobs = blobs
        self.remote = remote_uri
        self.key = state_key(remote_uri)
        self.runs: dict[str, dict[str, Any]] = {}
        if blobs is not None and blobs.exists(self.key):
            try:
                doc = json.loads(blobs.get(self.key))
                self.runs = dict(doc.get("runs") or {})
            except (ValueError, AttributeError) as exc:
                from labvault.errors import CorruptDataError

                raise CorruptDataError(f"sync state {self.key!r} for remote {_redact(remote_uri)!r} is "
                                       f"unreadable: {exc}") from exc

    def base(self, run_id: str) -> tuple[dict[str, str], dict[str, str]] | None:
        """(local summary, remote summary) at the last sync of the run, or None if never synced."""
        entry = self.runs.get(run_id)
        if entry is None:
            return None
        return dict(entry["local"]), dict(entry["remote"])

    def record(self, run_id: str, local: Mapping[str, str], remote: Mapping[str, str]) -> None:
        """Remember both sides of a run as just synced (saved by ``save``)."""
        self.runs[run_id] = {"local": dict(local), "remote": dict(remote),
                             "local_revision": revision_of(local), "remote_revision": revision_of(remote),
                             "time": time.time()}

    def forget(self, run_ids: Iterable[str]) -> None:
        """Drop the runs (after their experiment was deleted on one side)."""
        for run_id in run_ids:
            self.runs.pop(run_id, None)

    def save(self) -> None:
        """Write the state to the local store (atomically: a blob put)."""
        if self.blobs is None:
            return
        doc = {"version": _STATE_VERSION, "remote": _redact(self.remote), "runs": self.runs}
        self.blobs.put(self.key, json.dumps(doc, separators=(",", ":")).encode())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class SyncLock:
    """One push or pull at a time between a local store and a remote.

    Two transfers of the same runs at once could both find a point missing and both send it; the lock
    (a small document next to the sync state, written with ``put(if_absent=True)``) prevents that. The
    holder refreshes it every ``LOCK_REFRESH`` seconds from a thread; a lock not refreshed for
    ``LOCK_STALE`` seconds, or held by a dead process on this host (a killed push), is taken over with a
    compare-and-swap on its etag.
    """

    def __init__(self, blobs: BlobStore, remote_uri: str) -> None:
        self._blobs = blobs
        self.remote = remote_uri
        self.key = state_key(remote_uri)[: -len(".json")] + ".lock"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _doc(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode()

    def _stale(self, holder: Mapping[str, Any]) -> bool:
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
                and not _pid_alive(holder["pid"]):
            return True
        return time.time() - float(holder.get("time") or 0) > LOCK_STALE

    def acquire(self) -> None:
        """Take the lock or raise ``ConflictError`` naming the process that holds it."""
        for _attempt in range(3):
            try:
                self._blobs.put(self.key, self._doc(), if_absent=True)
                break
            except ConflictError:
                pass
            try:
                etag = self._blobs.info(self.key).etag
                holder = json.loads(self._blobs.get(self.key))
            except NotFoundError:
                continue  # released meanwhile
            except ValueError:
                holder = {}
            if not self._stale(holder):
                raise ConflictError(
                    f"another push or pull with {_redact(self.remote)!r} is running (process "
                    f"{holder.get('pid')} on {holder.get('host')!r}); try again when it has finished"
                ) from None
            try:
                self._blobs.put(self.key, self._doc(), if_match=etag)
                break
            except ConflictError:
                continue  # someone else took it over first: look again
        else:
            raise ConflictError(f"could not take the sync lock {self.key!r} for {_redact(self.remote)!r}")
        self._thread = threading.Thread(target=self._refresh, name="labvault-sync-lock", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(LOCK_REFRESH):
            with contextlib.suppress(Exception):  # the next refresh tries again
                self._blobs.put(self.key, self._doc())

    def release(self) -> None:
        """Give the lock up (safe to call twice)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
            with contextlib.suppress(Exception):
                self._blobs.delete(self.key)

    def __enter__(self) -> SyncLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def known_remotes(blobs: BlobStore) -> list[dict[str, Any]]:
    """The remotes a local store has synced with: ``{"remote", "runs", "last_sync"}`` each (the URI without
    its password), most recent first."""
    out: list[dict[str, Any]] = []
    for key in blobs.list(STATE_PREFIX):
        if not key.endswith(".json"):
            continue
        try:
            doc = json.loads(blobs.get(key))
            runs = doc.get("runs") or {}
            last = max((float(r.get("time") or 0) for r in runs.values()), default=None)
            out.append({"remote": str(doc.get("remote")), "runs": len(runs), "last_sync": last})
        except (ValueError, AttributeError, TypeError, NotFoundError):
            continue  # unreadable or deleted meanwhile: not a remote we can describe
    return sorted(out, key=lambda r: -(r["last_sync"] or 0))


# -- results -------------------------------------------------------------------------------------------------
@dataclass
class RunStatus:
    """How one run compares between the local store and the remote (``Vault.sync_status``)."""

    run_id: str
    name: str | None
    state: RunState
    local_revision: str | None
    remote_revision: str | None
    #: Fields changed on the side(s) that moved since the last sync (``p:lr``, ``t:team``, ``m:loss`` ...).
    changed: list[str] = field(default_factory=list)
    #: Param / tag fields changed on both sides to different values (only when ``state == "diverged"``).
    conflicts: list[str] = field(default_factory=list)


@dataclass
class SyncReport:
    """What a push, pull or copy did."""

    direction: str
    source: str
    destination: str
    experiments: list[str] = field(default_factory=list)
    runs_created: int = 0
    runs_updated: int = 0
    runs_unchanged: int = 0
    points_sent: int = 0
    blobs_sent: int = 0
    bytes_sent: int = 0
    conflicts_resolved: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether anything was written to the destination."""
        return bool(self.runs_created or self.runs_updated)


# -- the merge -----------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    src: RunSnapshot
    src_hist: dict[str, MetricSeries] | None  # None: over the memory budget, read again when sending
    dst: RunSnapshot | None
    dst_hist: dict[str, MetricSeries] | None
    base_src: dict[str, str]
    base_dst: dict[str, str]
    conflicts: list[str]


def _changed(cur: Mapping[str, str], base: Mapping[str, str]) -> set[str]:
    return {k for k in set(cur) | set(base) if cur.get(k) != base.get(k)}


def _conflicts(src: Mapping[str, str], dst: Mapping[str, str], base_src: Mapping[str, str],
               base_dst: Mapping[str, str]) -> list[str]:
    both = _changed(src, base_src) & _changed(dst, base_dst)
    return sorted(f for f in both if f.split(":", 1)[0] in _CONFLICT_KINDS and f in src and f in dst
                  and src[f] != dst[f])


def _describe(run: RunInfo, fields: Sequence[str], src: RunSnapshot, dst: RunSnapshot,
              src_name: str, dst_name: str) -> str:
    parts = []
    for f in fields:
        kind, key = f.split(":", 1)
        where = src.info.params if kind == "p" else src.info.tags
        there = dst.info.params if kind == "p" else dst.info.tags
        label = "param" if kind == "p" else "tag"
        parts.append(f"{label} {key!r} ({src_name} {where.get(key)!r}, {dst_name} {there.get(key)!r})")
    return f"run {run.id} ({run.name or 'unnamed'}) diverged: " + "; ".join(parts)


def _missing_points(src: MetricSeries, dst: MetricSeries) -> MetricSeries:
    """The points of ``src`` whose (step, timestamp) ``dst`` lacks, in ``src`` order."""
    if len(dst) == 0:
        return src
    n = len(dst)
    if n <= len(src) and np.array_equal(src.steps[:n], dst.steps) \
            and np.array_equal(src.timestamps[:n], dst.timestamps):  # the usual case: src appended
        return MetricSeries(src.key, src.steps[n:], src.values[n:], src.timestamps[n:])
    have = set(zip(dst.steps.tolist(), dst.timestamps.tolist(), strict=True))
    mask = np.fromiter(((s, t) not in have for s, t in zip(src.steps.tolist(), src.timestamps.tolist(),
                                                            strict=True)), dtype=bool, count=len(src))
    if mask.all():
        return src
    return MetricSeries(src.key, src.steps[mask], src.values[mask], src.timestamps[mask])


class _Side:
    """One store taking part in a transfer, with the experiments matched by (project, name)."""

    def __init__(self, backend: Backend, label: str) -> None:
        self.backend = backend
        self.label = label

    def find(self, name: str, project: str) -> ExperimentInfo | None:
        for e in self.backend.list_experiments(project):
            if e.name == name:
                return e
        return None

    def runs(self, exp: ExperimentInfo | None) -> dict[str, RunInfo]:
        if exp is None:
            return {}
        return {r.id: r for r in self.backend.list_runs([exp.id])}


def _ordered(runs: Mapping[str, RunInfo]) -> list[RunInfo]:
    """Runs with every parent before its children, then by start time."""
    out: list[RunInfo] = []
    done: set[str] = set()

    def visit(r: RunInfo, depth: int) -> None:
        if r.id in done or depth > len(runs):
            return
        if r.parent_id is not None and r.parent_id in runs:
            visit(runs[r.parent_id], depth + 1)
        done.add(r.id)
        out.append(r)

    for r in sorted(runs.values(), key=lambda r: (r.start_time, r.number)):
        visit(r, 0)
    return out


class Transfer:
    """Moves experiments from a source store to a destination store (one direction of a sync).

    ``state`` is the sync state of the local store; ``src_is_local`` says which side is local (push:
    True, pull: False). Without a state (``copy``) every run is merged against an empty base, which is
    idempotent too: copying twice sends nothing the second time.
    """

    def __init__(self, src: Backend, dst: Backend, *, state: SyncState | None, src_is_local: bool,
                 on_conflict: OnConflict | None = None, progress: Progress | None = None,
                 direction: str = "push", workers: int = 4) -> None:
        if on_conflict not in (None, "ours", "theirs"):
            raise InvalidArgumentError(f"on_conflict must be None, 'ours' or 'theirs', got {on_conflict!r}")
        self.src = _Side(src, "local" if src_is_local else "remote")
        self.dst = _Side(dst, "remote" if src_is_local else "local")
        self.state = state
        self.src_is_local = src_is_local
        #: Whether the source's value wins a param/tag conflict.
        self.src_wins: bool | None = None if on_conflict is None else (
            (on_conflict == "ours") == src_is_local)
        self.progress = progress
        self.report = SyncReport(direction, _redact(src.uri), _redact(dst.uri))
        self._dirty = False
        self._saved_at = time.monotonic()
        self._kept = 0
        self._lock = threading.RLock()
        self._blob_guards: dict[str, threading.Lock] = {}
        self._blobs_done: set[str] = set()
        if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 64:
            raise InvalidArgumentError(f"workers must be an integer from 1 to 64, got {workers!r}")
        self.workers = workers

    def _bases(self, run_id: str) -> tuple[dict[str, str], dict[str, str]]:
        found = self.state.base(run_id) if self.state is not None else None
        if found is None:
            return {}, {}
        local, remote = found
        return (local, remote) if self.src_is_local else (remote, local)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, n in deltas.items():
                setattr(self.report, name, getattr(self.report, name) + n)

    def _record(self, run_id: str, src: Mapping[str, str], dst: Mapping[str, str]) -> None:
        if self.state is None:
            return
        with self._lock:
            if self.src_is_local:
                self.state.record(run_id, src, dst)
            else:
                self.state.record(run_id, dst, src)
            self._dirty = True
            due = time.monotonic() - self._saved_at >= STATE_SAVE_INTERVAL
        if due:
            self._save()

    def _save(self) -> None:
        with self._lock:
            if self.state is not None and self._dirty:
                self.state.save()
                self._dirty = False
            self._saved_at = time.monotonic()

    def _keep(self, hist: dict[str, MetricSeries]) -> dict[str, MetricSeries] | None:
        """Keep histories read while planning for the sending phase, up to ``HISTORY_BUDGET`` points."""
        n = sum(len(h) for h in hist.values())
        with self._lock:
            if self._kept + n > HISTORY_BUDGET:
                return None
            self._kept += n
        return hist

    # -- planning (reads only) -------------------------------------------------------------------------------
    def plan(self, exp: ExperimentInfo) -> tuple[ExperimentInfo | None, list[_Plan]]:
        """What to send for one source experiment; raises ``ConflictError`` for unresolved divergence."""
        dst_exp = self.dst.find(exp.name, exp.project)
        dst_runs = self.dst.runs(dst_exp)
        plans: list[_Plan] = []
        problems: list[str] = []

        def examine(info: RunInfo) -> _Plan | None:
            """Read one run on both sides (in a worker thread); None when there is nothing to send."""
            base_src, base_dst = self._bases(info.id)
            src_snap, src_hist = snapshot(self.src.backend, info)
            dst_info = dst_runs.get(info.id)
            # unchanged since the last sync (and still there): nothing to read on the other side
            if self.state is not None and base_src and src_snap.summary == base_src and dst_info is not None:
                self._count(runs_unchanged=1)
                return None
            dst_snap, dst_hist = snapshot(self.dst.backend, dst_info) if dst_info is not None else (None, {})
            if dst_snap is not None and dst_snap.summary == src_snap.summary:  # equal already
                self._count(runs_unchanged=1)
                self._record(info.id, src_snap.summary, dst_snap.summary)
                return None
            conflicts = (_conflicts(src_snap.summary, dst_snap.summary, base_src, base_dst)
                         if dst_snap is not None else [])
            return _Plan(src_snap, self._keep(src_hist), dst_snap, self._keep(dst_hist), base_src, base_dst,
                         conflicts)

        with ThreadPoolExecutor(self.workers, thread_name_prefix="labvault-sync-plan") as pool:
            examined = list(pool.map(examine, _ordered(self.src.runs(exp))))
        for plan in examined:
            if plan is None:
                continue
            if plan.conflicts and self.src_wins is None:
                assert plan.dst is not None
                problems.append(_describe(plan.src.info, plan.conflicts, plan.src, plan.dst,
                                          self.src.label, self.dst.label))
            plans.append(plan)
        if problems:
            raise ConflictError(
                f"experiment {exp.project}/{exp.name}: " + " | ".join(problems)
                + "; pass on_conflict='ours' or 'theirs' to resolve"
            )
        return dst_exp, plans

    # -- writing ---------------------------------------------------------------------------------------------
    def run(self, experiments: Sequence[ExperimentInfo]) -> SyncReport:
        """Plan every experiment (raising on conflicts before anything is written), then send.

        The sync state is saved every ``STATE_SAVE_INTERVAL`` seconds and at the end, also when the
        transfer fails half way; a run sent but not yet recorded is found equal next time, not re-sent.
        """
        lock = SyncLock(self.state.blobs, self.state.remote) if self.state is not None \
            and self.state.blobs is not None else None
        if lock is not None:
            lock.acquire()
        try:
            planned = [(exp, *self.plan(exp)) for exp in experiments]
            total = sum(len(p) for _e, _d, p in planned)
            done = 0
            if self.progress is not None:
                self.progress(self.report.direction, 0, total)
            for exp, dst_exp, plans in planned:
                self.report.experiments.append(f"{exp.project}/{exp.name}")
                if dst_exp is None:
                    dst_exp = self.dst.backend.ensure_experiment(exp.name, exp.project)
                done = self._send_all(dst_exp, plans, done, total)
        finally:
            try:
                self._save()
            finally:
                if lock is not None:
                    lock.release()
        return self.report

    def _send_all(self, dst_exp: ExperimentInfo, plans: list[_Plan], done: int, total: int) -> int:
        """Send the runs of one experiment, ``workers`` at a time, every parent before its children."""
        ids = {p.src.info.id for p in plans}
        children: dict[str, list[_Plan]] = {}
        ready: list[_Plan] = []
        for p in plans:
            parent = p.src.info.parent_id
            if parent is not None and parent in ids:
                children.setdefault(parent, []).append(p)
            else:
                ready.append(p)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="labvault-sync") as pool:
            running = {pool.submit(self._apply, dst_exp, p): p for p in ready}
            try:
                while running:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        p = running.pop(future)
                        future.result()  # re-raises what the worker raised
                        with self._lock:  # free what was kept for this run
                            for hist in (p.src_hist, p.dst_hist):
                                self._kept -= sum(len(h) for h in (hist or {}).values())
                        p.src_hist = p.dst_hist = None
                        done += 1
                        if self.progress is not None:
                            self.progress(self.report.direction, done, total)
                        for child in children.pop(p.src.info.id, []):
                            running[pool.submit(self._apply, dst_exp, child)] = child
            except BaseException:
                for future in running:
                    future.cancel()
                raise
        return done

    def _apply(self, dst_exp: ExperimentInfo, p: _Plan) -> None:
        dst = self.dst.backend
        info = p.src.info
        run_id = info.id
        base_src = p.base_src
        # a run the destination lacks gets everything, even when the base says it was synced (the
        # destination's copy was deleted since)
        src_changed = _changed(p.src.summary, base_src) if p.dst is not None else set(p.src.summary)
        fresh = False  # created just now: it has no points or artifacts to read
        if p.dst is None:
            try:
                dst_info = dst.create_run(dst_exp.id, name=info.name, parent_id=info.parent_id,
                                          start_time=info.start_time, params=info.params, tags=info.tags,
                                          run_id=run_id)
            except AlreadyExistsError:  # created since planning (a concurrent push)
                dst_info = dst.get_run(run_id)
                self._count(runs_updated=1)
            except NotFoundError as exc:
                if info.parent_id is None:
                    raise
                raise NotFoundError(
                    f"run {run_id}'s parent run {info.parent_id} is not in the {self.dst.label} store "
                    f"(it belongs to another experiment: sync that one first): {exc}") from exc
            else:
                fresh = True
                self._count(runs_created=1)
            dst_summary: dict[str, str] = summarize(dst_info, [], {})
            dst_arts: dict[str, ArtifactInfo] = {} if fresh else {
                a.key: a for a in dst.list_artifacts(run_id)}
            dst_mdig: dict[str, str] = {}
            dst_changed: set[str] = set()
            dst_known = False
        else:
            dst_info = p.dst.info
            dst_summary = dict(p.dst.summary)
            dst_arts = dict(p.dst.artifacts)
            dst_mdig = dict(p.dst.metrics)
            dst_changed = _changed(p.dst.summary, p.base_dst)
            dst_known = True
            self._count(runs_updated=1)
        conflicts = set(p.conflicts)
        if conflicts:
            with self._lock:
                self.report.conflicts_resolved += [f"{run_id}:{f}" for f in sorted(conflicts)]

        def wanted(f: str) -> bool:
            """Write field ``f`` of the source to the destination? (Missing there: always, a union.)"""
            if f not in p.src.summary:
                return False
            if f not in dst_summary:
                return True
            if p.src.summary[f] == dst_summary[f]:
                return False
            if f in conflicts:
                return bool(self.src_wins)
            return f in src_changed and (f not in dst_changed or f.split(":", 1)[0] not in _CONFLICT_KINDS)

        # params (write-once: only keys the destination lacks) and tags
        params = {k: val for k, val in info.params.items() if k not in dst_info.params}
        if params:
            dst.log_params(run_id, params)
        tags = {k: text for k, text in info.tags.items() if wanted("t:" + k)}
        if tags:
            dst.set_tags(run_id, tags)
        results = {k: val for k, val in info.results.items() if wanted("r:" + k)}
        if results:
            dst.log_results(run_id, results)
        # metrics: union keyed by (step, timestamp)
        batch: list[MetricSeries] = []
        pending = 0
        src_hist = p.src_hist
        if src_hist is None:
            src_hist = {k: self.src.backend.metric_history(run_id, k) for k in sorted(p.src.metrics)}
        for key, series in src_hist.items():
            if ("m:" + key) not in src_changed and dst_known and ("m:" + key) in dst_summary:
                continue
            known = p.dst_hist.get(key) if p.dst_hist is not None else None
            if fresh:
                known = MetricSeries.empty(key)
            have = known if known is not None else dst.metric_history(run_id, key)
            missing = _missing_points(series, have)
            for start in range(0, len(missing), POINTS_PER_BATCH):
                part = MetricSeries(key, missing.steps[start:start + POINTS_PER_BATCH],
                                    missing.values[start:start + POINTS_PER_BATCH],
                                    missing.timestamps[start:start + POINTS_PER_BATCH])
                batch.append(part)
                pending += len(part)
                if pending >= POINTS_PER_BATCH:
                    dst.log_metrics(run_id, batch)
                    self._count(points_sent=pending)
                    batch, pending = [], 0
            dst_mdig[key] = series_digest(MetricSeries.concat(key, [have, missing]))
        if batch:
            dst.log_metrics(run_id, batch)
            self._count(points_sent=pending)
        # artifacts: by digest, only the blobs the destination lacks
        for key, art in p.src.artifacts.items():
            have_art = dst_arts.get(key)
            if have_art is not None and (have_art.digest == art.digest or not wanted("a:" + key)):
                continue
            self._send_blob(art.digest)
            dst.add_artifact(run_id, art)
        # status, end time, error, heartbeat
        if wanted("s") or (p.dst is None and info.status != dst_info.status):
            dst.update_run(run_id, status=info.status, end_time=info.end_time, error=info.error,
                           heartbeat=info.heartbeat)
        elif p.dst is None and info.heartbeat is not None:
            dst.update_run(run_id, heartbeat=info.heartbeat)
        # a tag conflict the destination won: its value goes back to the source, so both agree
        src_base = dict(p.src.summary)
        if not self.src_wins:
            back = {f.split(":", 1)[1]: dst_info.tags[f.split(":", 1)[1]] for f in conflicts
                    if f.startswith("t:") and f.split(":", 1)[1] in dst_info.tags}
            if back:
                self.src.backend.set_tags(run_id, back)
                for k in back:
                    src_base["t:" + k] = dst_summary["t:" + k]
        # what the destination looks like now: re-read the doc and artifacts, counts are known
        final = dst.get_run(run_id)
        arts_now = dst.list_artifacts(run_id)
        for key in final.metrics:
            if key not in dst_mdig:
                dst_mdig[key] = series_digest(dst.metric_history(run_id, key))
        after = summarize(final, arts_now, dst_mdig)
        # The destination's own changes that the source has not got yet (extra points, a tag set only
        # there) keep their old base, so they still count as changed: a later pull brings them over.
        dst_base: dict[str, str] = {}
        for f in set(after) | set(p.base_dst):
            keep = f in dst_changed and f not in conflicts and after.get(f) != p.src.summary.get(f)
            val = p.base_dst.get(f) if keep else after.get(f)
            if val is not None:
                dst_base[f] = val
        self._record(run_id, src_base, dst_base)

    def _send_blob(self, digest: str) -> None:
        """Send one blob unless the destination has it (one worker per digest: runs share blobs)."""
        src_blobs, dst_blobs = self.src.backend.blobs, self.dst.backend.blobs
        with self._lock:
            guard = self._blob_guards.setdefault(digest, threading.Lock())
        with guard:
            if digest in self._blobs_done or dst_blobs.exists(BlobStore.digest_key(digest)):
                self._blobs_done.add(digest)
                return
            with src_blobs.open_content(digest) as fh:
                got, size = dst_blobs.put_content(fh)
            if got != digest:  # pragma: no cover - open_content verifies the digest at end of file
                from labvault.errors import CorruptDataError

                raise CorruptDataError(f"blob {digest} arrived as {got}")
            self._blobs_done.add(digest)
        self._count(blobs_sent=1, bytes_sent=size)


# -- status --------------------------------------------------------------------------------------------------
def run_states(local: Backend, remote: Backend, state: SyncState, name: str, project: str) -> list[RunStatus]:
    """Per run of experiment ``project/name``: in sync, ahead (local newer), behind or diverged."""
    lside, rside = _Side(local, "local"), _Side(remote, "remote")
    lruns = lside.runs(lside.find(name, project))
    rruns = rside.runs(rside.find(name, project))
    if not lruns and not rruns:
        raise NotFoundError(f"experiment {project}/{name} exists neither locally nor on the remote")
    out: list[RunStatus] = []
    merged = {**rruns, **lruns}
    for info in _ordered(merged):
        lsnap = snapshot(local, lruns[info.id])[0] if info.id in lruns else None
        rsnap = snapshot(remote, rruns[info.id])[0] if info.id in rruns else None
        found = state.base(info.id)
        base_l, base_r = found if found is not None else ({}, {})
        lsum = lsnap.summary if lsnap else {}
        rsum = rsnap.summary if rsnap else {}
        lch = _changed(lsum, base_l) if lsnap else set()
        rch = _changed(rsum, base_r) if rsnap else set()
        conflicts: list[str] = []
        st: RunState
        if lsnap and rsnap and found is None:
            # never synced from here (e.g. both copied from elsewhere): compare the contents
            only_l, only_r = set(lsum) - set(rsum), set(rsum) - set(lsum)
            differ = {f for f in set(lsum) & set(rsum) if lsum[f] != rsum[f]}
            conflicts = _conflicts(lsum, rsum, {}, {})
            lch, rch = only_l | differ, only_r | differ
            st = ("diverged" if differ or (only_l and only_r) else "ahead" if only_l
                  else "behind" if only_r else "in sync")
        elif lch and rch:
            conflicts = _conflicts(lsum, rsum, base_l, base_r)
            st = "diverged"
        elif lch or (lsnap and not rsnap):
            st = "ahead"
        elif rch or (rsnap and not lsnap):
            st = "behind"
        else:
            st = "in sync"
        out.append(RunStatus(info.id, info.name, st, lsnap.revision if lsnap else None,
                             rsnap.revision if rsnap else None, sorted(lch | rch), conflicts))
    return out


# -- public entry points used by Vault and labvault.copy -----------------------------------------------------
def _experiments(backend: Backend, names: Sequence[str | Experiment | ExperimentInfo] | None,
                 project: str | None = None) -> list[ExperimentInfo]:
    """The experiments to sync: all (``None``), or names, ``ExperimentInfo``s or ``Experiment`` objects
    (duck-typed: this layer does not import the client). An ``Experiment`` of another vault is matched by
    (project, name)."""
    if names is None:
        return backend.list_experiments(project)
    out: list[ExperimentInfo] = []
    for item in names:
        info = getattr(item, "info", None)
        if isinstance(item, ExperimentInfo):
            out.append(item)
        elif isinstance(info, ExperimentInfo):  # an Experiment
            same_store = getattr(getattr(item, "vault", None), "backend", None) is backend
            out.append(info if same_store else backend.find_experiment(info.name, info.project))
        else:
            out.append(backend.find_experiment(item, project))  # type: ignore[arg-type]
    return out


def copy(src_uri: str | Vault | Backend, dst_uri: str | Vault | Backend,
         experiments: Sequence[str] | None = None, *,
         project: str | None = None, on_conflict: OnConflict | None = None,
         progress: Progress | None = None, workers: int = 4) -> SyncReport:
    """Copy whole vaults (or the named experiments) from one store to another, any backend to any backend.

    Run ids are kept; metrics are merged without duplicates and blobs sent only when missing, so copying
    again sends nothing new. A run whose params or tags differ in both stores raises ``ConflictError``
    unless ``on_conflict="ours"`` (the source wins) or ``"theirs"``. ``workers`` runs are sent at once.
    """
    from labvault.store.registry import open_backend

    opened: list[Backend] = []

    def backend_of(x: str | Vault | Backend) -> Backend:
        if isinstance(x, str):
            fresh = open_backend(x)
            opened.append(fresh)
            return fresh
        flush = getattr(x, "flush", None)
        if callable(flush):
            flush()  # a Vault: its buffered points travel too
        backend: object = getattr(x, "backend", x)
        if not isinstance(backend, Backend):
            raise InvalidArgumentError(f"copy needs store URIs, vaults or backends, got {type(x).__name__}")
        return backend

    try:
        src, dst = backend_of(src_uri), backend_of(dst_uri)
        exps = _experiments(src, experiments, project)
        transfer = Transfer(src, dst, state=None, src_is_local=True,
                            on_conflict=on_conflict, progress=progress, direction="copy", workers=workers)
        return transfer.run(exps)
    finally:
        for backend in opened:
            backend.close()
