"""Run summaries and what differs between two copies of a run (the reading half of sync).

Every run carries a **revision**: the sha256 of its *summary*, a small document with one digest per field
(``p:<param>``, ``t:<tag>``, ``r:<result>``, ``a:<artifact key>`` -> the blob digest, ``m:<metric key>`` ->
the number of points and an order-independent hash of their (step, timestamp) keys, ``s`` -> status, end
time and error). Summaries are computed from what every backend already stores (``get_run``,
``list_artifacts``, ``metric_history``), so no backend's schema changes.

Comparing two summaries with the ones both sides had at the last sync (the *bases*) says which fields
changed where (``_changed``), which param/tag fields conflict (``_conflicts``), and how a run stands
(``compare``: in sync, ahead, behind or diverged); ``_missing_points`` is the same question for the
points of one metric.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from labvault.domain import ArtifactInfo, MetricSeries, RunInfo
from labvault.store.abc import Backend

RunState = Literal["in sync", "ahead", "behind", "diverged"]
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
    status (with end time and error) and name (``n``, for a run that has one: renames sync too)."""
    out: dict[str, str] = {"s": _digest([info.status, info.end_time, info.error])}
    if info.name is not None:
        out["n"] = _digest(info.name)
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


# -- what differs --------------------------------------------------------------------------------------------
def _changed(cur: Mapping[str, str], base: Mapping[str, str]) -> set[str]:
    return {k for k in set(cur) | set(base) if cur.get(k) != base.get(k)}


def _conflicts(src: Mapping[str, str], dst: Mapping[str, str], base_src: Mapping[str, str],
               base_dst: Mapping[str, str]) -> list[str]:
    both = _changed(src, base_src) & _changed(dst, base_dst)
    return sorted(f for f in both if f.split(":", 1)[0] in _CONFLICT_KINDS and f in src and f in dst
                  and src[f] != dst[f])


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


def compare(local: RunSnapshot | None, remote: RunSnapshot | None,
            base: tuple[dict[str, str], dict[str, str]] | None) -> tuple[RunState, set[str], list[str]]:
    """How a run stands between the local store and the remote: (state, fields changed, conflicts).

    ``local`` / ``remote`` are the run's snapshots (None where the run is absent), ``base`` the (local,
    remote) summaries at the last sync (None when never synced between these stores).
    """
    base_l, base_r = base if base is not None else ({}, {})
    lsum = local.summary if local else {}
    rsum = remote.summary if remote else {}
    lch = _changed(lsum, base_l) if local else set()
    rch = _changed(rsum, base_r) if remote else set()
    conflicts: list[str] = []
    st: RunState
    if local and remote and base is None:
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
    elif lch or (local and not remote):
        st = "ahead"
    elif rch or (remote and not local):
        st = "behind"
    else:
        st = "in sync"
    return st, lch | rch, conflicts
