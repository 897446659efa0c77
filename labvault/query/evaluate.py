"""Filters evaluated in Python with SQL's three-valued logic (``None`` is UNKNOWN), and orderings:
the reference semantics every backend's search must agree with (the memory backend uses it directly).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from labvault.query.like import _like
from labvault.query.nodes import (
    ATTRIBUTES,
    And,
    Compare,
    Expr,
    Field,
    InList,
    IsNull,
    Like,
    Not,
    Or,
    OrderKey,
    T,
    TrueExpr,
    Value,
)


def _number(run: Any, field: Field) -> float | None:
    """The field's value as a number, or None when it is missing, NaN or not a number."""
    value: Any
    if field.kind == "params":
        value = run.params.get(field.key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
    elif field.kind == "metrics":
        value = run.metrics.get(field.key)
    elif field.kind == "attributes" and ATTRIBUTES.get(field.key) == "number":
        value = getattr(run, field.key, None)
    else:
        return None
    if value is None:
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond the double range is text (see _text)
        return None
    return None if math.isnan(number) else number


def param_text(value: Any) -> str | None:
    """A param value's text as the query language compares it: strings as they are, booleans as
    ``true``/``false``, lists and dicts as canonical JSON; None for a missing value or a number (an int
    too large for a float compares as its text)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        try:
            float(value)
        except OverflowError:
            return str(value)
        return None
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _text(run: Any, field: Field) -> str | None:
    """The field's value as text, or None when it is missing or a number."""
    if field.kind == "params":
        return param_text(run.params.get(field.key))
    if field.kind == "tags":
        tag: str | None = run.tags.get(field.key)
        return tag
    if field.kind == "attributes" and ATTRIBUTES.get(field.key) == "text":
        attr: str | None = getattr(run, field.key, None)
        return attr
    return None


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "=":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _compare_value(run: Any, field: Field, op: str, value: Value) -> bool | None:
    if isinstance(value, float):
        num = _number(run, field)
        return None if num is None else _compare(op, num, value)
    text = _text(run, field)
    return None if text is None else _compare(op, text, value)


def _eval_junction(items: Sequence[Expr], run: Any, decisive: bool) -> bool | None:
    """Three-valued AND (``decisive=False``) or OR (``decisive=True``) of ``items``: the first item that
    evaluates to ``decisive`` decides; else None (unknown) if any item was unknown, else ``not decisive``."""
    result: bool | None = not decisive
    for item in items:
        value = _eval(item, run)
        if value is decisive:
            return decisive
        if value is None:
            result = None
    return result


def _eval_and(expr: And, run: Any) -> bool | None:
    return _eval_junction(expr.items, run, False)


def _eval_or(expr: Or, run: Any) -> bool | None:
    return _eval_junction(expr.items, run, True)


def _eval_not(expr: Not, run: Any) -> bool | None:
    value = _eval(expr.item, run)
    return None if value is None else not value


def _eval_in(expr: InList, run: Any) -> bool | None:
    found: bool | None = False
    for v in expr.values:
        value = _compare_value(run, expr.field, "=", v)
        if value is True:
            found = True
            break
        if value is None:
            found = None
    return (None if found is None else not found) if expr.negated else found


def _eval_is_null(expr: IsNull, run: Any) -> bool | None:
    missing = _number(run, expr.field) is None and _text(run, expr.field) is None
    return not missing if expr.negated else missing


def _eval_like(expr: Like, run: Any) -> bool | None:
    text = _text(run, expr.field)
    if text is None:
        return None
    matched = _like(text, expr.pattern, expr.case_insensitive)
    return not matched if expr.negated else matched


_EVALUATORS: dict[type[Expr], Callable[[Any, Any], bool | None]] = {
    Compare: lambda e, run: _compare_value(run, e.field, e.op, e.value),
    And: _eval_and,
    Or: _eval_or,
    Not: _eval_not,
    InList: _eval_in,
    IsNull: _eval_is_null,
    Like: _eval_like,
    TrueExpr: lambda e, run: True,
}


def _eval(expr: Expr, run: Any) -> bool | None:
    """The filter's three-valued result for one run (``None`` is UNKNOWN)."""
    evaluator = _EVALUATORS.get(type(expr))
    if evaluator is None:
        raise TypeError(f"not a query expression: {expr!r}")
    return evaluator(expr, run)


def evaluate(expr: Expr, run: Any) -> bool:
    """Whether ``run`` matches: the filter is TRUE for it (FALSE and UNKNOWN do not match).

    ``run`` is any object with the attributes of :class:`RunLike` (e.g. ``labvault.domain.RunInfo``).
    """
    return _eval(expr, run) is True


def filter_runs(expr: Expr, runs: Iterable[T]) -> list[T]:
    """The runs that match ``expr`` (see :func:`evaluate`), in their original order."""
    if isinstance(expr, TrueExpr):
        return list(runs)
    return [r for r in runs if _eval(expr, r) is True]


def sort_runs(runs: Sequence[T], order: Sequence[OrderKey]) -> list[T]:
    """A new list of the runs sorted by the order keys, then by run number and id (always total).

    For every key, runs with a number come first, then runs with text (a param can be either), then runs
    with no value (missing key, JSON null, NaN metric), in both directions; numbers and texts are each
    sorted ascending or descending as the key asks. Same order as :func:`compile_order_sql`.
    """
    out = sorted(runs, key=lambda r: (getattr(r, "number", 0), getattr(r, "id", "")))
    for key in reversed(order):  # stable sorts, least significant key first
        nums: list[tuple[float, T]] = []
        texts: list[tuple[str, T]] = []
        nulls: list[T] = []
        for run in out:
            num = _number(run, key.field)
            if num is not None:
                nums.append((num, run))
                continue
            text = _text(run, key.field)
            if text is not None:
                texts.append((text, run))
            else:
                nulls.append(run)
        nums.sort(key=lambda p: p[0], reverse=key.descending)
        texts.sort(key=lambda p: p[0], reverse=key.descending)
        out = [r for _, r in nums] + [r for _, r in texts] + nulls
    return out


def fields_of(expr: Expr) -> set[Field]:
    """Every field a query touches (e.g. to know which params and metrics a backend must load)."""
    if isinstance(expr, Compare | InList | IsNull | Like):
        return {expr.field}
    if isinstance(expr, And | Or):
        return set().union(*(fields_of(i) for i in expr.items))
    if isinstance(expr, Not):
        return fields_of(expr.item)
    return set()
