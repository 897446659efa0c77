"""An in-process index of an SQL store's runs, so searches and listings need no per-run SQL.

A search over 10,000 runs that joins ``run_params`` and ``metric_latest`` costs SQLite tens of
thousands of B-tree probes (60-80 ms), before a single result row is built. The file backend answers
the same query in a few milliseconds from columns it keeps in memory; this module gives the SQLite
backend the same shape:

* every write transaction that changes what a run looks like (created, finished, params, tags,
  results, latest metrics) stamps the run with the next change number: one more than the highest
  ``runs.rev`` so far (writers are serialized by SQLite's lock, so the numbers follow the commit
  order); deleting an experiment raises a floor kept in ``meta.runs_rev`` instead, so numbers are never
  reused and readers notice the deletion;
* a search first reads the counter (one indexed lookup); when it moved, it fetches only the runs
  stamped after the last refresh, in the same read transaction, and patches them in. An experiment
  is loaded whole the first time a search names it;
* the filter and ordering then run over numpy columns (``labvault.store.search.columns``) and only the
  runs returned are built, as fresh ``RunInfo`` copies the caller may change freely.

So results are exactly what SQL would answer at that snapshot, other processes' commits included.

PostgreSQL has concurrent writers, so there a run's change number is the id of the transaction that
wrote it (``txid_current()``), and ids are not handed out in commit order. A refresh there takes the
oldest transaction still running (``txid_snapshot_xmin``) as its horizon: every transaction before it
has finished, and the next refresh re-reads every run stamped at or after it (see
``PostgresBackend._index_horizon``). Deleted experiments are dropped by both when a refresh no longer
finds them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from labvault.domain import RunInfo
from labvault.store.search.columns import ColumnSource, deep_copy, has_nested, no_gc, search_positions

if TYPE_CHECKING:
    from labvault.query import Expr, Field, OrderKey

#: A run as the index keeps it: the fields of ``RunInfo`` in order, then whether params or results
#: hold lists or dicts (those are deep-copied when handed out).
Record = tuple[str, str, int, "str | None", "str | None", str, float, "float | None", "str | None",
               "float | None", dict[str, Any], dict[str, str], dict[str, float], dict[str, Any], bool]

_ID: Final = 0
_EXP: Final = 1
_NUMBER: Final = 2
_PARAMS: Final = 10
_TAGS: Final = 11
_METRICS: Final = 12
_RESULTS: Final = 13
_NESTED: Final = 14
#: Positions of the text and time attributes in a record.
_TEXT_ATTRS = {"status": 5, "name": 3, "parent_id": 4}
_TIME_ATTRS = {"start_time": 6, "end_time": 7}


def make_record(run_id: str, experiment_id: str, number: int, name: str | None, parent_id: str | None,
                status: str, start_time: float, end_time: float | None, error: str | None,
                heartbeat: float | None, params: dict[str, Any], tags: dict[str, str],
                metrics: dict[str, float], results: dict[str, Any]) -> Record:
    """A record from a run's stored fields (already decoded)."""
    nested = has_nested(params) or has_nested(results)
    return (run_id, experiment_id, number, name, parent_id, status, start_time, end_time, error, heartbeat,
            params, tags, metrics, results, nested)


class _Experiment(ColumnSource):
    """One experiment's runs in number order, with the columns built from them so far."""

    def __init__(self, experiment_id: str, records: Iterable[Record]) -> None:
        super().__init__(experiment_id)
        self.recs: list[Record] = sorted(records, key=lambda r: (r[_NUMBER], r[_ID]))
        self.pos = {r[_ID]: i for i, r in enumerate(self.recs)}

    def put(self, rec: Record) -> None:
        """Add or replace a run."""
        i = self.pos.get(rec[_ID])
        if i is not None:
            self.recs[i] = rec
        elif not self.recs or (rec[_NUMBER], rec[_ID]) > (self.recs[-1][_NUMBER], self.recs[-1][_ID]):
            self.pos[rec[_ID]] = len(self.recs)
            self.recs.append(rec)
        else:  # an older number than the newest known run (not seen in practice): re-sort
            self.recs = sorted([*self.recs, rec], key=lambda r: (r[_NUMBER], r[_ID]))
            self.pos = {r[_ID]: i for i, r in enumerate(self.recs)}
        self.version += 1

    def size(self) -> int:
        """The number of runs."""
        return len(self.recs)

    def run_ids(self) -> list[str]:
        """The run ids in number order."""
        return [r[_ID] for r in self.recs]

    def run_numbers(self) -> np.ndarray[Any, Any]:
        """The run numbers in order."""
        return np.fromiter((r[_NUMBER] for r in self.recs), np.int64, len(self.recs))

    def values(self, field: Field) -> list[Any]:
        """A param, tag or text attribute of every run."""
        recs, key = self.recs, field.key
        if field.kind == "params":
            return [r[_PARAMS].get(key) for r in recs]
        if field.kind == "tags":
            return [r[_TAGS].get(key) for r in recs]
        at = _TEXT_ATTRS[key]
        return [r[at] for r in recs]

    def floats(self, field: Field) -> np.ndarray[Any, Any]:
        """A metric or time attribute of every run (NaN: none)."""
        recs, n, key, nan = self.recs, len(self.recs), field.key, math.nan
        if field.kind == "metrics":
            return np.fromiter((r[_METRICS].get(key, nan) for r in recs), np.float64, n)
        at = _TIME_ATTRS[key]
        return np.fromiter((nan if r[at] is None else r[at] for r in recs), np.float64, n)


class RunIndex:
    """The runs of the experiments searched so far, as of change number ``rev`` (see the module doc).

    The owner feeds it under ``lock``: ``load`` for an experiment seen for the first time, ``put`` for
    each run changed since ``rev``, then sets ``rev``; ``search`` answers from memory.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        #: The change number the index is current to (-1: nothing loaded yet).
        self.rev = -1
        self._experiments: dict[str, _Experiment] = {}

    def has(self, experiment_id: str) -> bool:
        """Whether the experiment's runs are loaded."""
        return experiment_id in self._experiments

    def loaded(self) -> set[str]:
        """The ids of the loaded experiments."""
        return set(self._experiments)

    def load(self, experiment_id: str, records: Iterable[Record]) -> None:
        """All runs of an experiment (replacing what was known of it)."""
        self._experiments[experiment_id] = _Experiment(experiment_id, records)

    def put(self, rec: Record) -> None:
        """A run created or changed since ``rev`` (ignored unless its experiment is loaded)."""
        state = self._experiments.get(rec[_EXP])
        if state is not None:
            state.put(rec)

    def forget(self, experiment_id: str | None = None) -> None:
        """Drop an experiment (deleted), or everything."""
        if experiment_id is None:
            self._experiments.clear()
            self.rev = -1
        else:
            self._experiments.pop(experiment_id, None)

    def search(self, experiment_ids: Sequence[str], expr: Expr, order: Sequence[OrderKey],
               limit: int | None, offset: int) -> list[RunInfo] | None:
        """The matching runs, sorted like ``query.sort_runs`` and paged; None if the filter has a node
        the vectorised evaluator does not know (the caller then asks the database)."""
        states = [self._experiments[e] for e in dict.fromkeys(experiment_ids) if e in self._experiments]
        picked = search_positions(states, expr, order, limit, offset)
        if picked is None:
            return None
        recs = [r for s in states for r in s.recs] if len(states) != 1 else states[0].recs
        # Fresh RunInfos (the caller may change them without touching the index), built inline: this
        # loop is most of a search's time.
        info, copy, deep = RunInfo, dict.copy, deep_copy
        with no_gc(len(picked) > 1000):
            return [info(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                         deep(r[10]) if r[14] else copy(r[10]), copy(r[11]), copy(r[12]),
                         deep(r[13]) if r[14] else copy(r[13]))
                    for r in map(recs.__getitem__, picked)]

