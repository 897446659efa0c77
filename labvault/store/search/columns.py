"""Columnar search over runs held in memory: a filter evaluated with numpy over whole columns.

The one search driver of the backends that search in process (the file backend over its folded journals,
the SQL and Redis backends over ``labvault.store.search.runindex``). Each keeps every experiment's runs
as a ``ColumnSource``, which builds one ``Column`` per field a filter or ordering names (numbers as
float64 with NaN for "none", texts as codes into a sorted list) and caches it until a run changes.
``search_positions`` then applies the three-valued semantics of ``labvault.query`` to every run of the
experiments at once (``evaluate_masks``), sorts the matches like ``query.sort_runs``
(``order_positions``) and pages them; the backend builds only the runs returned. A filter node the
evaluator does not know makes it answer None, so the caller can fall back to evaluating run by run.
"""

from __future__ import annotations

import abc
import contextlib
import gc
import json
import math
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from labvault import query
from labvault.query import param_text

if TYPE_CHECKING:
    from labvault.query import Expr, Field, OrderKey

#: The run attributes a column is built of, by representation (besides number, id and experiment_id).
TIME_ATTRS = ("start_time", "end_time")
TEXT_ATTRS = ("status", "name", "parent_id")


class Unsupported(Exception):
    """A filter node the vectorised evaluator does not know: evaluate it run by run instead."""


class Column:
    """A field over many runs: ``num`` (float64, NaN where no number) and text as ``codes`` into the
    sorted ``texts`` (-1 where no text); ``codes`` None means no run has text."""

    __slots__ = ("codes", "num", "texts")

    def __init__(self, num: np.ndarray[Any, Any], codes: np.ndarray[Any, Any] | None,
                 texts: list[str]) -> None:
        self.num = num
        self.codes = codes
        self.texts = texts

    def text_codes(self) -> np.ndarray[Any, Any]:
        if self.codes is None:
            self.codes = np.full(self.num.shape[0], -1, dtype=np.int64)
        return self.codes


def text_column(texts: Sequence[str | None], n: int, num: np.ndarray[Any, Any] | None = None) -> Column:
    uniq = sorted(cast("set[str]", set(texts) - {None}))
    lookup: dict[str | None, int] = {t: i for i, t in enumerate(uniq)}
    lookup[None] = -1
    codes = np.array(list(map(lookup.__getitem__, texts)), dtype=np.int64) if uniq else None
    return Column(np.full(n, np.nan) if num is None else num, codes, uniq)


def param_number(value: Any) -> float:
    """A param's number as the query module defines it (NaN: none)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.nan


def param_column(vals: list[Any]) -> Column:
    n = len(vals)
    kinds = set(map(type, vals))
    if kinds <= {str, type(None)}:
        return text_column(vals, n)
    if kinds <= {float, int, type(None)}:
        try:
            num = np.array([math.nan if v is None else v for v in vals], dtype=np.float64)
        except OverflowError:
            pass
        else:
            if np.isfinite(num[~np.isnan(num)]).all():
                return Column(num, None, [])
    num = np.fromiter((param_number(v) for v in vals), dtype=np.float64, count=n)

    return text_column([param_text(v) for v in vals], n, num)


_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge,
}
Masks = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]  # (TRUE, FALSE); neither: UNKNOWN


def _compare_masks(col: Column, op: str, value: float | str) -> Masks:
    if isinstance(value, float):
        known = ~np.isnan(col.num)
        with np.errstate(invalid="ignore"):
            hit = _OPS[op](col.num, value)
        return known & hit, known & ~hit
    if col.codes is None:
        none = np.zeros(col.num.shape[0], dtype=bool)
        return none, none
    lut = np.array([query._compare(op, t, value) for t in col.texts] + [False], dtype=bool)
    known = col.codes >= 0
    hit = lut[col.codes]
    return known & hit, known & ~hit


def evaluate_masks(expr: Expr, col: Callable[[Field], Column], n: int) -> Masks:
    """Three-valued evaluation of a filter over every run at once (the semantics of ``labvault.query``)."""
    if isinstance(expr, query.Compare):
        return _compare_masks(col(expr.field), expr.op, expr.value)
    if isinstance(expr, query.And | query.Or):
        parts = [evaluate_masks(item, col, n) for item in expr.items]
        if isinstance(expr, query.And):
            return (np.logical_and.reduce([p[0] for p in parts]), np.logical_or.reduce([p[1] for p in parts]))
        return (np.logical_or.reduce([p[0] for p in parts]), np.logical_and.reduce([p[1] for p in parts]))
    if isinstance(expr, query.Not):
        t, f = evaluate_masks(expr.item, col, n)
        return f, t
    if isinstance(expr, query.InList):
        c = col(expr.field)
        t = np.zeros(n, dtype=bool)
        f = np.ones(n, dtype=bool)
        for value in expr.values:
            vt, vf = _compare_masks(c, "=", value)
            t |= vt
            f &= vf
        return (f, t) if expr.negated else (t, f)
    if isinstance(expr, query.IsNull):
        c = col(expr.field)
        missing = np.isnan(c.num) & (c.text_codes() < 0)
        return (~missing, missing) if expr.negated else (missing, ~missing)
    if isinstance(expr, query.Like):
        c = col(expr.field)
        if c.codes is None:
            none = np.zeros(n, dtype=bool)
            return none, none
        lut = np.array([query._like(t, expr.pattern, expr.case_insensitive) for t in c.texts] + [False],
                       dtype=bool)
        known = c.codes >= 0
        hit = lut[c.codes]
        if expr.negated:
            hit = ~hit
        return known & hit, known & ~hit
    if isinstance(expr, query.TrueExpr):
        return np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    raise Unsupported(type(expr).__name__)


def concat_columns(cols: list[Column]) -> Column:
    """One column over several experiments' runs (texts re-coded into one sorted list)."""
    if len(cols) == 1:
        return cols[0]
    num = np.concatenate([c.num for c in cols])
    if all(c.codes is None for c in cols):
        return Column(num, None, [])
    texts = sorted({t for c in cols for t in c.texts})
    lookup = {t: i for i, t in enumerate(texts)}
    parts = []
    for c in cols:
        if c.codes is None:
            parts.append(np.full(c.num.shape[0], -1, dtype=np.int64))
        else:
            remap = np.array([lookup[t] for t in c.texts] + [-1], dtype=np.int64)
            parts.append(remap[c.codes])
    return Column(num, np.concatenate(parts), texts)


def order_positions(selected: np.ndarray[Any, Any], base_rank: np.ndarray[Any, Any],
                    order: Sequence[OrderKey], col: Callable[[Field], Column]) -> np.ndarray[Any, Any]:
    """``selected`` (run positions) sorted like ``query.sort_runs``: numbers, then texts, then missing
    values for each key; ties by the base rank (run number, then id)."""
    keys: list[np.ndarray[Any, Any]] = [base_rank[selected]]
    for key in reversed(order):
        c = col(key.field)
        num = c.num[selected]
        codes = c.text_codes()[selected]
        is_num = ~np.isnan(num)
        is_text = ~is_num & (codes >= 0)
        group = np.where(is_num, 0, np.where(is_text, 1, 2))
        value = np.where(is_num, num, np.where(is_text, codes.astype(np.float64), 0.0))
        if key.descending:
            value = -value
        keys.append(value)
        keys.append(group)
    return selected[np.lexsort(keys)]


@contextlib.contextmanager
def no_gc(pause: bool) -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects that hold no cycles.

    Building 10,000 runs allocates ~100,000 containers; without this the collector runs hundreds of
    passes over them (and full passes over the whole heap) meanwhile, which costs more than the building.
    """
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class ColumnSource(abc.ABC):
    """One experiment's runs as a search sees them, at the positions the backend keeps them in: the
    column of each field named so far, cached until ``version`` changes (the owner bumps it on every
    change of a run).

    A subclass says where the values come from: ``values`` for params, tags and text attributes,
    ``floats`` for metrics and times, ``run_ids`` and ``run_numbers`` in position order, and sets
    ``in_order`` False when positions are not in (number, id) order.
    """

    #: Whether the runs' positions are in (number, id) order (a single experiment then needs no sort).
    in_order: bool = True

    def __init__(self, experiment_id: str) -> None:
        self.id = experiment_id
        self.version = 0
        self.cols: dict[Field, tuple[int, Column]] = {}

    @abc.abstractmethod
    def size(self) -> int:
        """The number of runs."""

    @abc.abstractmethod
    def run_ids(self) -> Sequence[str]:
        """The run ids, by position."""

    @abc.abstractmethod
    def run_numbers(self) -> np.ndarray[Any, Any]:
        """The run numbers (int64), by position."""

    @abc.abstractmethod
    def values(self, field: Field) -> list[Any]:
        """One value per run (None: missing) of a param, tag or text attribute (status, name, parent_id)."""

    @abc.abstractmethod
    def floats(self, field: Field) -> np.ndarray[Any, Any]:
        """One float64 per run (NaN: missing) of a metric or time attribute (start_time, end_time)."""

    def column(self, field: Field) -> Column:
        """The query column of a field over every run (cached until a run changes)."""
        cached = self.cols.get(field)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        n, kind, key = self.size(), field.kind, field.key
        if kind == "params":
            col = param_column(self.values(field))
        elif kind == "tags":
            col = text_column(self.values(field), n)
        elif kind == "metrics" or key in TIME_ATTRS:
            col = Column(self.floats(field), None, [])
        elif key == "number":
            col = Column(self.run_numbers().astype(np.float64), None, [])
        elif key == "id":
            col = text_column(self.run_ids(), n)
        elif key == "experiment_id":
            col = text_column([self.id] * n, n)
        elif key in TEXT_ATTRS:
            col = text_column(self.values(field), n)
        else:  # not a run attribute: NULL everywhere
            col = Column(np.full(n, math.nan), None, [])
        self.cols[field] = (self.version, col)
        return col


def search_positions(sources: Sequence[ColumnSource], expr: Expr, order: Sequence[OrderKey],
                     limit: int | None, offset: int) -> list[int] | None:
    """The runs matching ``expr``, sorted like ``query.sort_runs`` and paged, as positions into the
    sources' runs laid end to end; None if the filter has a node the vectorised evaluator does not know.

    The caller keeps the sources from changing meanwhile (their locks)."""
    n = sum(s.size() for s in sources)
    cache: dict[Field, Column] = {}

    def col(field: Field) -> Column:
        found = cache.get(field)
        if found is None:
            found = cache[field] = concat_columns([s.column(field) for s in sources]) if sources \
                else Column(np.zeros(0), None, [])
        return found

    try:
        hits, _false = evaluate_masks(expr, col, n)
    except Unsupported:
        return None
    selected = np.flatnonzero(hits)
    base_rank = _base_rank(sources, n)
    if order:
        selected = order_positions(selected, base_rank, order, col)
    else:
        selected = selected[np.argsort(base_rank[selected], kind="stable")]
    end = None if limit is None else offset + limit
    return cast("list[int]", selected[offset:end].tolist())


def _base_rank(sources: Sequence[ColumnSource], n: int) -> np.ndarray[Any, Any]:
    """Each run's rank by run number, then id, across the sources (the order of an unordered search)."""
    if len(sources) == 1 and sources[0].in_order:
        return np.arange(n)
    numbers = np.concatenate([s.run_numbers() for s in sources]) if n else np.zeros(0, dtype=np.int64)
    ids = [rid for s in sources for rid in s.run_ids()]
    id_rank = np.empty(n, dtype=np.int64)
    id_rank[np.argsort(np.array(ids, dtype=object), kind="stable")] = np.arange(n)
    base_rank = np.empty(n, dtype=np.int64)
    base_rank[np.lexsort((id_rank, numbers))] = np.arange(n)
    return base_rank


def has_nested(doc: dict[str, Any]) -> bool:
    """Whether a JSON dict holds a list or dict (so a copy of it must be deep)."""
    return any(isinstance(value, list | dict) for value in doc.values())


def deep_copy(doc: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a JSON dict (so a caller may change what it got without touching a cache)."""
    return cast(dict[str, Any], json.loads(json.dumps(doc)))
