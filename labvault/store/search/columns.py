"""Columnar search over runs held in memory: a filter evaluated with numpy over whole columns.

The file backend and the SQLite backend's search index keep each experiment's runs in process and build
one ``Column`` per field a filter or ordering names (numbers as float64 with NaN for "none", texts as
codes into a sorted list). ``evaluate_masks`` then applies the three-valued semantics of
``labvault.query`` to every run at once and ``order_positions`` sorts the matches like
``query.sort_runs``; a filter node it does not know raises ``Unsupported`` so the caller can fall back
to evaluating run by run.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from labvault.query import Expr, Field, OrderKey


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
    from labvault.query import param_text

    return text_column([param_text(v) for v in vals], n, num)


_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge,
}
Masks = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]  # (TRUE, FALSE); neither: UNKNOWN


def _compare_masks(col: Column, op: str, value: float | str) -> Masks:
    from labvault import query

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
    from labvault import query

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


def has_nested(doc: dict[str, Any]) -> bool:
    """Whether a JSON dict holds a list or dict (so a copy of it must be deep)."""
    return any(isinstance(value, list | dict) for value in doc.values())


def deep_copy(doc: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a JSON dict (so a caller may change what it got without touching a cache)."""
    return cast(dict[str, Any], json.loads(json.dumps(doc)))
