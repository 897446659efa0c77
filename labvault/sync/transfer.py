"""Moving runs from one store to another: the planning and the writing of one direction of a sync.

A sync is a three-way merge per field, against the summaries both sides had at the last sync (the
*bases*, ``labvault.sync.state``; summaries: ``labvault.sync.summary``):

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
records them), and for the run it was cut off in sends only what is missing.

``Transfer.plan`` reads both sides and raises on unresolved conflicts; ``Transfer.run`` then sends, one
run per worker, through ``_apply``: a short dispatcher over one applier per field kind (params, tags,
results, metrics, artifacts, status), after which both sides' new summaries are recorded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Literal

from labvault.blobs.abc import BlobStore
from labvault.domain import ArtifactInfo, ExperimentInfo, MetricSeries, RunInfo
from labvault.errors import (
    AlreadyExistsError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    NotFoundError,
)
from labvault.store.abc import CLEARABLE_RUN_FIELDS, Backend
from labvault.sync.state import SyncLock, SyncState, _redact
from labvault.sync.summary import (
    _CONFLICT_KINDS,
    RunSnapshot,
    _changed,
    _conflicts,
    _missing_points,
    series_digest,
    snapshot,
    summarize,
)

OnConflict = Literal["ours", "theirs"]
#: ``progress(phase, done, total)``: called before the first run and after each run of an operation.
Progress = Callable[[str, int, int], None]

#: Metric points sent per ``log_metrics`` call (bounds a request to a server).
POINTS_PER_BATCH = 200_000
#: Save the sync state at least this often during a transfer (seconds), and at its end.
STATE_SAVE_INTERVAL = 2.0
#: Metric points read while planning that are kept for sending (beyond: read again, bounding memory).
HISTORY_BUDGET = 5_000_000


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


# -- planning ------------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    src: RunSnapshot
    src_hist: dict[str, MetricSeries] | None  # None: over the memory budget, read again when sending
    dst: RunSnapshot | None
    dst_hist: dict[str, MetricSeries] | None
    base_src: dict[str, str]
    base_dst: dict[str, str]
    conflicts: list[str]


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


# -- writing one run -----------------------------------------------------------------------------------------
@dataclass
class _RunWrite:
    """One run being written to the destination: its plan, the destination's copy as it was, and the
    three-way rule per field (``wanted``)."""

    plan: _Plan
    src_wins: bool | None
    #: Fields the source changed since its base (all of them when the destination lacked the run).
    src_changed: set[str]
    dst_info: RunInfo
    dst_summary: dict[str, str]
    dst_arts: dict[str, ArtifactInfo]
    #: Metric key -> digest on the destination, brought up to date as points are sent.
    dst_metrics: dict[str, str]
    dst_changed: set[str]
    #: Whether the destination had the run when planning.
    dst_known: bool
    #: Created just now: there are no points or artifacts to read on the destination.
    fresh: bool
    conflicts: set[str]

    @property
    def info(self) -> RunInfo:
        """The source's run."""
        return self.plan.src.info

    def wanted(self, f: str) -> bool:
        """Write field ``f`` of the source to the destination? (Missing there: always, a union.)"""
        src = self.plan.src.summary
        if f not in src:
            return False
        if f not in self.dst_summary:
            return True
        if src[f] == self.dst_summary[f]:
            return False
        if f in self.conflicts:
            return bool(self.src_wins)
        return f in self.src_changed and (f not in self.dst_changed
                                          or f.split(":", 1)[0] not in _CONFLICT_KINDS)

    def dst_history(self, dst: Backend, key: str) -> MetricSeries:
        """The destination's points of metric ``key`` (kept from planning, or read now)."""
        known = self.plan.dst_hist.get(key) if self.plan.dst_hist is not None else None
        if self.fresh:
            known = MetricSeries.empty(key)
        return known if known is not None else dst.metric_history(self.info.id, key)


class _PointBatch:
    """Metric points collected for one run and sent ``POINTS_PER_BATCH`` at a time."""

    def __init__(self, send: Callable[[list[MetricSeries], int], None]) -> None:
        self._send = send
        self._parts: list[MetricSeries] = []
        self._pending = 0

    def add(self, points: MetricSeries) -> None:
        """Queue ``points``, sending a batch whenever ``POINTS_PER_BATCH`` points are queued."""
        for start in range(0, len(points), POINTS_PER_BATCH):
            part = MetricSeries(points.key, points.steps[start:start + POINTS_PER_BATCH],
                                points.values[start:start + POINTS_PER_BATCH],
                                points.timestamps[start:start + POINTS_PER_BATCH])
            self._parts.append(part)
            self._pending += len(part)
            if self._pending >= POINTS_PER_BATCH:
                self.flush()

    def flush(self) -> None:
        """Send what is queued (if anything)."""
        if self._parts:
            self._send(self._parts, self._pending)
            self._parts, self._pending = [], 0


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
        """Write one planned run to the destination, field kind by field kind, then record both sides."""
        w = self._begin(dst_exp, p)
        if w.conflicts:
            with self._lock:
                self.report.conflicts_resolved += [f"{w.info.id}:{f}" for f in sorted(w.conflicts)]
        self._apply_params(w)
        self._apply_tags(w)
        self._apply_results(w)
        self._apply_metrics(w)
        self._apply_artifacts(w)
        self._apply_status(w)
        src_base = self._return_tags(w)
        dst_base = self._dst_base(w)
        self._record(w.info.id, src_base, dst_base)

    def _begin(self, dst_exp: ExperimentInfo, p: _Plan) -> _RunWrite:
        """The destination's side of a planned run, creating the run there when it lacks it."""
        if p.dst is not None:
            self._count(runs_updated=1)
            return _RunWrite(p, self.src_wins, _changed(p.src.summary, p.base_src), p.dst.info,
                             dict(p.dst.summary), dict(p.dst.artifacts), dict(p.dst.metrics),
                             _changed(p.dst.summary, p.base_dst), dst_known=True, fresh=False,
                             conflicts=set(p.conflicts))
        # a run the destination lacks gets everything, even when the base says it was synced (the
        # destination's copy was deleted since)
        dst_info, fresh = self._create_run(dst_exp, p.src.info)
        dst_arts = {} if fresh else {a.key: a for a in self.dst.backend.list_artifacts(p.src.info.id)}
        return _RunWrite(p, self.src_wins, set(p.src.summary), dst_info, summarize(dst_info, [], {}),
                         dst_arts, {}, set(), dst_known=False, fresh=fresh, conflicts=set(p.conflicts))

    def _create_run(self, dst_exp: ExperimentInfo, info: RunInfo) -> tuple[RunInfo, bool]:
        """Create the source's run in the destination: (its info there, whether it was created now)."""
        try:
            dst_info = self.dst.backend.create_run(
                dst_exp.id, name=info.name, parent_id=info.parent_id, start_time=info.start_time,
                params=info.params, tags=info.tags, run_id=info.id)
        except AlreadyExistsError:  # created since planning (a concurrent push)
            existing = self.dst.backend.get_run(info.id)
            self._count(runs_updated=1)
            return existing, False
        except NotFoundError as exc:
            if info.parent_id is None:
                raise
            raise NotFoundError(
                f"run {info.id}'s parent run {info.parent_id} is not in the {self.dst.label} store "
                f"(it belongs to another experiment: sync that one first): {exc}") from exc
        self._count(runs_created=1)
        return dst_info, True

    def _apply_params(self, w: _RunWrite) -> None:
        """Params are write-once: only the keys the destination lacks are sent."""
        params = {k: val for k, val in w.info.params.items() if k not in w.dst_info.params}
        if params:
            self.dst.backend.log_params(w.info.id, params)

    def _apply_tags(self, w: _RunWrite) -> None:
        """Tags the three-way rule says to send (last write wins)."""
        tags = {k: text for k, text in w.info.tags.items() if w.wanted("t:" + k)}
        if tags:
            self.dst.backend.set_tags(w.info.id, tags)

    def _apply_results(self, w: _RunWrite) -> None:
        """Results the three-way rule says to send (the sending side wins)."""
        results = {k: val for k, val in w.info.results.items() if w.wanted("r:" + k)}
        if results:
            self.dst.backend.log_results(w.info.id, results)

    def _apply_metrics(self, w: _RunWrite) -> None:
        """Metrics: a union keyed by (step, timestamp), sending only the points the destination lacks."""
        run_id = w.info.id
        dst = self.dst.backend
        src_hist = w.plan.src_hist
        if src_hist is None:  # over the memory budget when planning: read again
            src_hist = {k: self.src.backend.metric_history(run_id, k) for k in sorted(w.plan.src.metrics)}

        def send(parts: list[MetricSeries], points: int) -> None:
            dst.log_metrics(run_id, parts)
            self._count(points_sent=points)

        batch = _PointBatch(send)
        for key, series in src_hist.items():
            if ("m:" + key) not in w.src_changed and w.dst_known and ("m:" + key) in w.dst_summary:
                continue
            have = w.dst_history(dst, key)
            missing = _missing_points(series, have)
            batch.add(missing)
            w.dst_metrics[key] = series_digest(MetricSeries.concat(key, [have, missing]))
        batch.flush()

    def _apply_artifacts(self, w: _RunWrite) -> None:
        """Artifacts by digest: only the blobs the destination lacks travel."""
        for key, art in w.plan.src.artifacts.items():
            have = w.dst_arts.get(key)
            if have is not None and (have.digest == art.digest or not w.wanted("a:" + key)):
                continue
            self._send_blob(art.digest)
            self.dst.backend.add_artifact(w.info.id, art)

    def _apply_status(self, w: _RunWrite) -> None:
        """Status, end time, error and heartbeat; the name. A field the source has emptied (a resumed
        run: no end time, no error) is emptied on the destination too."""
        info = w.info
        if w.wanted("n") and info.name is not None:
            self.dst.backend.update_run(info.id, name=info.name)
        if w.wanted("s") or (not w.dst_known and info.status != w.dst_info.status):
            cleared = [k for k in CLEARABLE_RUN_FIELDS
                       if getattr(info, k) is None and getattr(w.dst_info, k) is not None]
            self.dst.backend.update_run(info.id, status=info.status, end_time=info.end_time, error=info.error,
                                        heartbeat=info.heartbeat, clear=cleared)
        elif not w.dst_known and info.heartbeat is not None:
            self.dst.backend.update_run(info.id, heartbeat=info.heartbeat)

    def _return_tags(self, w: _RunWrite) -> dict[str, str]:
        """A tag conflict the destination won: its value goes back to the source, so both agree. Returns
        the source's summary as it is now."""
        src_base = dict(w.plan.src.summary)
        if not self.src_wins:
            back = {f.split(":", 1)[1]: w.dst_info.tags[f.split(":", 1)[1]] for f in w.conflicts
                    if f.startswith("t:") and f.split(":", 1)[1] in w.dst_info.tags}
            if back:
                self.src.backend.set_tags(w.info.id, back)
                for k in back:
                    src_base["t:" + k] = w.dst_summary["t:" + k]
        return src_base

    def _dst_base(self, w: _RunWrite) -> dict[str, str]:
        """The destination's summary to record as its base: what it looks like now (the doc and
        artifacts read again, metric digests known), except for its own unsent changes."""
        dst = self.dst.backend
        run_id = w.info.id
        final = dst.get_run(run_id)
        arts_now = dst.list_artifacts(run_id)
        for key in final.metrics:
            if key not in w.dst_metrics:
                w.dst_metrics[key] = series_digest(dst.metric_history(run_id, key))
        after = summarize(final, arts_now, w.dst_metrics)
        # The destination's own changes that the source has not got yet (extra points, a tag set only
        # there) keep their old base, so they still count as changed: a later pull brings them over.
        base_dst, src_summary = w.plan.base_dst, w.plan.src.summary
        dst_base: dict[str, str] = {}
        for f in set(after) | set(base_dst):
            keep = f in w.dst_changed and f not in w.conflicts and after.get(f) != src_summary.get(f)
            val = base_dst.get(f) if keep else after.get(f)
            if val is not None:
                dst_base[f] = val
        return dst_base

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

                raise CorruptDataError(f"blob {digest} arrived as {got}")
            self._blobs_done.add(digest)
        self._count(blobs_sent=1, bytes_sent=size)
