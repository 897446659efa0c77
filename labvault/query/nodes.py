"""The query AST: fields, filter expressions and order keys, shared by the parser, the Python
evaluator, the columnar search driver and the SQL compiler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement


T = TypeVar("T")


FieldKind = Literal["params", "metrics", "tags", "attributes"]


ValueKind = Literal["number", "text"]


Value = float | str


ATTRIBUTES: dict[str, ValueKind] = {
    "id": "text", "experiment_id": "text", "number": "number", "name": "text", "parent_id": "text",
    "status": "text", "start_time": "number", "end_time": "number",
}


class RunLike(Protocol):
    """What the evaluator reads from a run record (``labvault.domain.RunInfo`` has all of it)."""

    id: str
    experiment_id: str
    number: int
    name: str | None
    parent_id: str | None
    status: str
    start_time: float
    end_time: float | None
    params: dict[str, Any]
    tags: dict[str, str]
    metrics: dict[str, float]


@dataclass(frozen=True)
class Field:
    """What a query refers to: ``kind`` is params, metrics, tags or attributes; ``key`` the name.

    Attribute keys are normalized to lower case (``Field("attributes", "status")``); param, metric and
    tag keys are kept as written.
    """

    kind: FieldKind
    key: str

    def __str__(self) -> str:
        return self.key if self.kind == "attributes" else f"{self.kind}.{self.key}"

    @property
    def value_kinds(self) -> tuple[ValueKind, ...]:
        """The representations this field can have: params both, metrics numbers, tags text."""
        if self.kind == "params":
            return ("number", "text")
        if self.kind == "metrics":
            return ("number",)
        if self.kind == "tags":
            return ("text",)
        return (ATTRIBUTES.get(self.key, "text"),)


class Expr:
    """Base class of the filter AST nodes (all frozen dataclasses, comparable and hashable)."""


@dataclass(frozen=True)
class TrueExpr(Expr):
    """Matches every run: what an empty or blank filter parses to."""


@dataclass(frozen=True)
class Compare(Expr):
    """``field op value``; ``op`` is one of ``= != < <= > >=`` (``==`` and ``<>`` are normalized).

    A ``float`` value compares with the field's number, a ``str`` value with its text; the other
    combination, and a missing field, is UNKNOWN.
    """

    field: Field
    op: Literal["=", "!=", "<", "<=", ">", ">="]
    value: Value


@dataclass(frozen=True)
class InList(Expr):
    """``field [NOT] IN (values)``: ``field = v1 OR field = v2 ...``, negated as a whole for NOT IN."""

    field: Field
    values: tuple[Value, ...]
    negated: bool


@dataclass(frozen=True)
class IsNull(Expr):
    """``field IS [NOT] NULL``: the field has no value (missing key, JSON null, NaN metric). Never UNKNOWN."""

    field: Field
    negated: bool


@dataclass(frozen=True)
class Like(Expr):
    """``field [NOT] LIKE|ILIKE 'pattern'`` on the field's text (UNKNOWN when it has none)."""

    field: Field
    pattern: str
    negated: bool
    case_insensitive: bool


@dataclass(frozen=True)
class And(Expr):
    """TRUE when every item is TRUE, FALSE when any is FALSE, otherwise UNKNOWN."""

    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Or(Expr):
    """TRUE when any item is TRUE, FALSE when every item is FALSE, otherwise UNKNOWN."""

    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Not(Expr):
    """Negation: TRUE and FALSE swap, UNKNOWN stays UNKNOWN."""

    item: Expr


@dataclass(frozen=True)
class OrderKey:
    """One ``order_by`` entry: sort on ``field``, descending or ascending (missing values always last)."""

    field: Field
    descending: bool


Resolver = Callable[[Field, ValueKind], "ColumnElement[Any]"]
