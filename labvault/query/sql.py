"""Filters and orderings compiled to SQLAlchemy Core for the SQL backends: parameterized, never
string-built; each field is resolved to columns by the backend (a ``Resolver``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from labvault.query.nodes import (
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
    Resolver,
    TrueExpr,
    Value,
)

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement


def compile_sql(expr: Expr, resolve: Resolver) -> ColumnElement[bool]:
    """Compile a filter to a boolean SQLAlchemy Core expression for a ``WHERE`` clause.

    The result selects exactly the runs :func:`filter_runs` keeps, relying on the database's
    three-valued logic; every literal is a bound parameter. Number literals compare with
    ``resolve(field, "number")`` and strings with ``resolve(field, "text")``; ``IS NULL`` tests every
    representation the field can have; ``LIKE`` uses ``.like(pattern, escape="\\\\")`` (case-sensitive
    only if the database's LIKE is: on SQLite set ``PRAGMA case_sensitive_like=ON``) and ``ILIKE``
    ``.ilike``. :class:`TrueExpr` compiles to ``true()``.
    """
    import sqlalchemy as sa  # lazy: sqlalchemy (~150 ms); import labvault.query skips it

    if isinstance(expr, TrueExpr):
        return sa.true()
    return _compile(expr, resolve)


def _bind(value: Value) -> ColumnElement[Any]:
    import sqlalchemy as sa  # lazy: sqlalchemy (~150 ms); import labvault.query skips it

    if isinstance(value, float):
        return sa.literal(value, sa.Float())
    return sa.literal(value, sa.String())


def _compile_compare(expr: Compare, resolve: Resolver) -> ColumnElement[bool]:
    col = resolve(expr.field, "number" if isinstance(expr.value, float) else "text")
    ops: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
        "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
        ">=": operator.ge,
    }
    return ops[expr.op](col, _bind(expr.value))


def _compile_in(expr: InList, resolve: Resolver) -> ColumnElement[bool]:
    import sqlalchemy as sa  # lazy: sqlalchemy (~150 ms); import labvault.query skips it

    nums = [v for v in expr.values if isinstance(v, float)]
    texts = [v for v in expr.values if isinstance(v, str)]
    parts: list[ColumnElement[bool]] = []
    if nums:
        parts.append(resolve(expr.field, "number").in_([_bind(v) for v in nums]))
    if texts:
        parts.append(resolve(expr.field, "text").in_([_bind(v) for v in texts]))
    found = parts[0] if len(parts) == 1 else sa.or_(*parts)
    return sa.not_(found) if expr.negated else found


def _compile_is_null(expr: IsNull, resolve: Resolver) -> ColumnElement[bool]:
    import sqlalchemy as sa  # lazy: sqlalchemy (~150 ms); import labvault.query skips it

    missing = sa.and_(*(resolve(expr.field, kind).is_(None) for kind in expr.field.value_kinds))
    return sa.not_(missing) if expr.negated else missing


def _compile_like(expr: Like, resolve: Resolver) -> ColumnElement[bool]:
    import sqlalchemy as sa  # lazy: sqlalchemy (~150 ms); import labvault.query skips it

    col = resolve(expr.field, "text")
    pattern = sa.literal(expr.pattern, sa.String())
    matched = col.ilike(pattern, escape="\\") if expr.case_insensitive else col.like(pattern, escape="\\")
    return sa.not_(matched) if expr.negated else matched


def _compile_bool(expr: Expr, resolve: Resolver) -> ColumnElement[bool]:
    import sqlalchemy as sa  # lazy: sqlalchemy (~150 ms); import labvault.query skips it

    if isinstance(expr, And):
        return sa.and_(*(_compile(i, resolve) for i in expr.items))
    if isinstance(expr, Or):
        return sa.or_(*(_compile(i, resolve) for i in expr.items))
    assert isinstance(expr, Not)
    return sa.not_(_compile(expr.item, resolve))


_COMPILERS: dict[type[Expr], Callable[[Any, Resolver], ColumnElement[bool]]] = {
    Compare: _compile_compare, InList: _compile_in, IsNull: _compile_is_null, Like: _compile_like,
    And: _compile_bool, Or: _compile_bool, Not: _compile_bool,
}


def _compile(expr: Expr, resolve: Resolver) -> ColumnElement[bool]:
    compiler = _COMPILERS.get(type(expr))
    if compiler is None:
        raise TypeError(f"not a query expression: {expr!r}")
    return compiler(expr, resolve)


def compile_order_sql(order: Sequence[OrderKey], resolve: Resolver) -> list[ColumnElement[Any]]:
    """``ORDER BY`` clauses giving the order of :func:`sort_runs`, portable to any SQL database.

    For each key: values present first (``NULLS LAST`` for metrics, tags and attributes, which SQLite and
    PostgreSQL support; for params ``CASE WHEN value IS NULL THEN 1 ELSE 0 END`` and numbers before
    text), then the value ascending or descending. The tie-breakers ``number`` and ``id`` (resolved
    through ``resolve``) come last; callers may append their own columns too.
    """
    import sqlalchemy as sa  # lazy: sqlalchemy (~150 ms); import labvault.query skips it

    one: ColumnElement[int] = sa.literal_column("1", sa.Integer())
    zero: ColumnElement[int] = sa.literal_column("0", sa.Integer())
    clauses: list[ColumnElement[Any]] = []
    for key in order:
        kinds = key.field.value_kinds
        cols = [resolve(key.field, kind) for kind in kinds]
        if len(cols) == 1:  # one kind of value: NULLS LAST (SQLite >= 3.30 and PostgreSQL) evaluates it once
            clauses.append((cols[0].desc() if key.descending else cols[0].asc()).nulls_last())
            continue
        missing = sa.and_(*(c.is_(None) for c in cols))
        clauses.append(sa.case((missing, one), else_=zero).asc())
        clauses.append(sa.case((cols[0].is_(None), one), else_=zero).asc())  # params: numbers, then text
        clauses += [c.desc() if key.descending else c.asc() for c in cols]
    clauses.append(resolve(Field("attributes", "number"), "number").asc())
    clauses.append(resolve(Field("attributes", "id"), "text").asc())
    return clauses
