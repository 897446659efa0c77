"""The run filter language: parse once into an AST, evaluate in memory or compile to SQL.

Grammar (keywords are case-insensitive)::

    expr     := or
    or       := and (OR and)*
    and      := not (AND not)*
    not      := NOT not | primary
    primary  := '(' expr ')' | field predicate
    predicate:= op value | [NOT] LIKE 'pattern' | [NOT] ILIKE 'pattern' | [NOT] IN (value, ...)
              | IS [NOT] NULL
    op       := = | == | != | <> | < | <= | > | >=
    field    := params.KEY | metrics.KEY | tags.KEY | ATTRIBUTE | attributes.ATTRIBUTE
    value    := number | 'string' ('' escapes a quote) | true | false

``KEY`` is unquoted (letters, digits and ``_ - . / :``) or quoted with double quotes or backticks for odd
names (``metrics."val loss"``). Attributes: ``id``, ``experiment_id``, ``number``, ``name``, ``parent_id``,
``status``, ``start_time``, ``end_time`` (times in epoch seconds). ``true``/``false`` are the strings
"true"/"false", which is how boolean params compare.

Semantics, identical in memory and in SQL (SQL's three-valued logic):

* A param whose value is a number (int or float, not bool) compares as a number; any other param compares
  as text (bools as "true"/"false", lists and dicts as compact JSON with sorted keys). Tags are text,
  metrics are numbers (their latest value), attributes by their type.
* Comparing a number with a string literal, or text with a number literal, is UNKNOWN (not an error).
  A missing key, and a NaN metric, is NULL: every comparison with it is UNKNOWN; only ``IS NULL`` is true.
* ``NOT`` of UNKNOWN is UNKNOWN; ``AND``/``OR`` follow SQL. A run matches only when the filter is TRUE.
* ``LIKE`` is case-sensitive with ``%`` and ``_`` wildcards and ``\\`` as escape; ``ILIKE`` ignores case.
* ``x IN (a, b)`` means ``x = a OR x = b``; ``NOT IN`` is its negation.

Ordering: ``"metrics.acc desc"``, ``"params.lr"`` (ascending by default). Missing (and NaN) values sort
last in both directions; for a param holding numbers and text, numbers come first. Ties are broken by run
number, then id, so paging is deterministic.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from labvault.errors import InvalidArgumentError

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement

T = TypeVar("T")
FieldKind = Literal["params", "metrics", "tags", "attributes"]
ValueKind = Literal["number", "text"]
Literal_ = float | str

ATTRIBUTES: dict[str, ValueKind] = {
    "id": "text", "experiment_id": "text", "number": "number", "name": "text", "parent_id": "text",
    "status": "text", "start_time": "number", "end_time": "number",
}
_PREFIXES: dict[str, FieldKind] = {
    "params": "params", "param": "params", "metrics": "metrics", "metric": "metrics",
    "tags": "tags", "tag": "tags", "attributes": "attributes", "attribute": "attributes",
    "attr": "attributes", "run": "attributes",
}
_KEYWORDS = {"and", "or", "not", "like", "ilike", "in", "is", "null", "true", "false", "asc", "desc"}


@dataclass(frozen=True)
class Field:
    """What a query refers to: ``kind`` is params, metrics, tags or attributes; ``key`` the name."""

    kind: FieldKind
    key: str

    def __str__(self) -> str:
        return self.key if self.kind == "attributes" else f"{self.kind}.{self.key}"


class Expr:
    """Base class of the AST nodes."""


@dataclass(frozen=True)
class TrueExpr(Expr):
    """Matches every run (the empty filter)."""


@dataclass(frozen=True)
class Compare(Expr):
    """``field op value`` with op one of = != < <= > >=."""

    field: Field
    op: str
    value: Literal_


@dataclass(frozen=True)
class InList(Expr):
    """``field [NOT] IN (values)``."""

    field: Field
    values: tuple[Literal_, ...]
    negated: bool


@dataclass(frozen=True)
class IsNull(Expr):
    """``field IS [NOT] NULL``."""

    field: Field
    negated: bool


@dataclass(frozen=True)
class Like(Expr):
    """``field [NOT] LIKE|ILIKE 'pattern'``."""

    field: Field
    pattern: str
    negated: bool
    case_insensitive: bool


@dataclass(frozen=True)
class And(Expr):
    """All items TRUE."""

    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Or(Expr):
    """Any item TRUE."""

    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Not(Expr):
    """Negation (UNKNOWN stays UNKNOWN)."""

    item: Expr


@dataclass(frozen=True)
class OrderKey:
    """One ``order_by`` entry."""

    field: Field
    descending: bool


# ------------------------------------------------------------------------------------------------------
# tokenizer and parser

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_]))
  | (?P<string>'(?:[^']|'')*')
  | (?P<badstring>'(?:[^']|'')*$)
  | (?P<field>[A-Za-z_][A-Za-z0-9_]*(?:\.(?:"(?:[^"]|"")*"|`[^`]*`|[A-Za-z0-9_\-./:]+))?)
  | (?P<op>==|!=|<>|<=|>=|=|<|>)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    pos: int  # 0-based offset


def _error(text: str, pos: int, message: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"filter syntax error at column {pos + 1}: {message} in {text!r}\n  {text}\n  {' ' * pos}^"
    )


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise _error(text, pos, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind == "badstring":
            raise _error(text, pos, "unterminated string")
        if kind != "ws":
            value = m.group()
            if kind == "field" and value.lower() in _KEYWORDS:
                kind = value.lower()
            tokens.append(_Token(kind, value, pos))
        pos = m.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _field_from(token: _Token, text: str) -> Field:
    raw = token.text
    prefix, dot, key = raw.partition(".")
    if not dot:
        if prefix.lower() in ATTRIBUTES:
            return Field("attributes", prefix.lower())
        raise _error(text, token.pos, f"unknown field {raw!r}: use params.KEY, metrics.KEY, tags.KEY or "
                                      f"an attribute ({', '.join(ATTRIBUTES)})")
    kind = _PREFIXES.get(prefix.lower())
    if kind is None:
        raise _error(text, token.pos, f"unknown prefix {prefix!r}: use params., metrics., tags. or "
                                      "attributes.")
    if key[:1] == '"':
        key = key[1:-1].replace('""', '"')
    elif key[:1] == "`":
        key = key[1:-1]
    if not key:
        raise _error(text, token.pos, "empty key")
    if kind == "attributes":
        if key.lower() not in ATTRIBUTES:
            raise _error(text, token.pos, f"unknown attribute {key!r}: use one of {', '.join(ATTRIBUTES)}")
        key = key.lower()
    return Field(kind, key)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self, *kinds: str) -> _Token | None:
        token = self.tokens[self.i]
        if token.kind in kinds:
            self.i += 1
            return token
        return None

    def expect(self, kind: str, what: str) -> _Token:
        token = self.take(kind)
        if token is None:
            found = self.peek()
            shown = "end of filter" if found.kind == "end" else repr(found.text)
            raise _error(self.text, found.pos, f"expected {what}, found {shown}")
        return token

    def parse(self) -> Expr:
        expr = self.parse_or()
        end = self.peek()
        if end.kind != "end":
            raise _error(self.text, end.pos, f"unexpected {end.text!r}; expected AND, OR or the end")
        return expr

    def parse_or(self) -> Expr:
        items = [self.parse_and()]
        while self.take("or"):
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def parse_and(self) -> Expr:
        items = [self.parse_not()]
        while self.take("and"):
            items.append(self.parse_not())
        return items[0] if len(items) == 1 else And(tuple(items))

    def parse_not(self) -> Expr:
        if self.take("not"):
            return Not(self.parse_not())
        return self.parse_primary()

    def parse_primary(self) -> Expr:
        if self.take("lparen"):
            expr = self.parse_or()
            self.expect("rparen", "')'")
            return expr
        token = self.expect("field", "a field such as params.lr, metrics.acc, tags.team or status")
        return self.parse_predicate(_field_from(token, self.text))

    def parse_value(self, after: str) -> Literal_:
        token = self.take("number", "string", "true", "false")
        if token is None:
            found = self.peek()
            shown = "end of filter" if found.kind == "end" else repr(found.text)
            raise _error(self.text, found.pos, f"expected a value after {after!r}, found {shown}")
        if token.kind == "number":
            value = float(token.text)
            if not math.isfinite(value):
                raise _error(self.text, token.pos, f"number {token.text!r} is out of range")
            return value
        if token.kind == "string":
            return token.text[1:-1].replace("''", "'")
        return token.kind  # "true" / "false"

    def parse_string(self, after: str) -> str:
        token = self.take("string")
        if token is None:
            raise _error(self.text, self.peek().pos, f"expected a quoted pattern after {after}")
        return token.text[1:-1].replace("''", "'")

    def parse_predicate(self, field: Field) -> Expr:
        op = self.take("op")
        if op is not None:
            symbol = {"==": "=", "<>": "!="}.get(op.text, op.text)
            return Compare(field, symbol, self.parse_value(op.text))
        negated = self.take("not") is not None
        like = self.take("like", "ilike")
        if like is not None:
            word = like.text.upper()
            return Like(field, self.parse_string(word), negated, like.kind == "ilike")
        if self.take("in"):
            self.expect("lparen", "'(' after IN")
            values = [self.parse_value("(")]
            while self.take("comma"):
                values.append(self.parse_value(","))
            self.expect("rparen", "')' closing the IN list")
            return InList(field, tuple(values), negated)
        if negated:
            raise _error(self.text, self.peek().pos, "expected LIKE, ILIKE or IN after NOT")
        if self.take("is"):
            neg = self.take("not") is not None
            self.expect("null", "NULL after IS")
            return IsNull(field, neg)
        found = self.peek()
        shown = "end of filter" if found.kind == "end" else repr(found.text)
        raise _error(self.text, found.pos,
                     f"expected an operator (= != < <= > >= LIKE IN IS) after {field}, found {shown}")


def parse(text: str | None) -> Expr:
    """Parse a filter string into an AST; ``None`` or blank matches every run.

    A syntax error raises ``InvalidArgumentError`` naming the 1-based column.
    """
    if text is None:
        return TrueExpr()
    if not isinstance(text, str):
        raise InvalidArgumentError(f"filter must be a string, got {type(text).__name__}")
    if len(text) > 10_000:
        raise InvalidArgumentError("filter is longer than 10,000 characters")
    if "\x00" in text:
        raise InvalidArgumentError(f"filter {text!r} contains a NUL character")
    if not text.strip():
        return TrueExpr()
    return _Parser(text).parse()


def parse_order_by(items: Sequence[str] | str | None) -> list[OrderKey]:
    """Parse ``["metrics.acc desc", "params.lr"]`` (or one string) into order keys."""
    if items is None:
        return []
    if isinstance(items, str):
        items = [items]
    out: list[OrderKey] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise InvalidArgumentError(f"order_by entry {item!r} must be a non-empty string")
        tokens = _tokenize(item)[:-1]
        if not tokens or tokens[0].kind != "field" or len(tokens) > 2 or (
            len(tokens) == 2 and tokens[1].kind not in ("asc", "desc")
        ):
            raise InvalidArgumentError(
                f"invalid order_by entry {item!r}: write a field optionally followed by ASC or DESC, "
                "e.g. 'metrics.acc desc'"
            )
        try:
            field = _field_from(tokens[0], item)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"invalid order_by entry {item!r}: {exc}") from exc
        out.append(OrderKey(field, len(tokens) == 2 and tokens[1].kind == "desc"))
    return out


# ------------------------------------------------------------------------------------------------------
# in-memory evaluation


def _number(run: Any, field: Field) -> float | None:
    if field.kind == "params":
        value = run.params.get(field.key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        try:
            return float(value)
        except OverflowError:
            return None
    if field.kind == "metrics":
        value = run.metrics.get(field.key)
        return None if value is None or math.isnan(value) else float(value)
    if field.kind == "attributes" and ATTRIBUTES.get(field.key) == "number":
        value = getattr(run, field.key, None)
        return None if value is None else float(value)
    return None


def _text(run: Any, field: Field) -> str | None:
    if field.kind == "params":
        value = run.params.get(field.key)
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
    if field.kind == "tags":
        tag: str | None = run.tags.get(field.key)
        return tag
    if field.kind == "attributes" and ATTRIBUTES.get(field.key) == "text":
        attr: str | None = getattr(run, field.key, None)
        return attr
    return None


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


def _like_regex(pattern: str, case_insensitive: bool) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL | (re.IGNORECASE if case_insensitive else 0))


def _eval(expr: Expr, run: Any) -> bool | None:
    if isinstance(expr, Compare):
        if isinstance(expr.value, float):
            num = _number(run, expr.field)
            return None if num is None else _COMPARE[expr.op](num, expr.value)
        text = _text(run, expr.field)
        return None if text is None else _COMPARE[expr.op](text, expr.value)
    if isinstance(expr, And):
        result: bool | None = True
        for item in expr.items:
            value = _eval(item, run)
            if value is False:
                return False
            if value is None:
                result = None
        return result
    if isinstance(expr, Or):
        result = False
        for item in expr.items:
            value = _eval(item, run)
            if value is True:
                return True
            if value is None:
                result = None
        return result
    if isinstance(expr, Not):
        value = _eval(expr.item, run)
        return None if value is None else not value
    if isinstance(expr, InList):
        found = _eval(Or(tuple(Compare(expr.field, "=", v) for v in expr.values)), run)
        return (None if found is None else not found) if expr.negated else found
    if isinstance(expr, IsNull):
        missing = _number(run, expr.field) is None and _text(run, expr.field) is None
        return not missing if expr.negated else missing
    if isinstance(expr, Like):
        text = _text(run, expr.field)
        if text is None:
            return None
        matched = _like_regex(expr.pattern, expr.case_insensitive).fullmatch(text) is not None
        return not matched if expr.negated else matched
    if isinstance(expr, TrueExpr):
        return True
    raise TypeError(f"not a query expression: {expr!r}")


def evaluate(expr: Expr, run: Any) -> bool:
    """Whether ``run`` matches (the filter is TRUE, not FALSE or UNKNOWN)."""
    return _eval(expr, run) is True


def filter_runs(expr: Expr, runs: Iterable[T]) -> list[T]:
    """The runs that match, in their original order."""
    if isinstance(expr, TrueExpr):
        return list(runs)
    return [r for r in runs if _eval(expr, r) is True]


def sort_runs(runs: Sequence[T], order: Sequence[OrderKey]) -> list[T]:
    """Sort by the order keys (missing last, numbers before text), then by number and id."""
    out = sorted(runs, key=lambda r: (getattr(r, "number", 0), getattr(r, "id", "")))
    for key in reversed(order):
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
    """Every field a query touches."""
    if isinstance(expr, Compare | InList | IsNull | Like):
        return {expr.field}
    if isinstance(expr, And | Or):
        return set().union(*(fields_of(i) for i in expr.items))
    if isinstance(expr, Not):
        return fields_of(expr.item)
    return set()


# ------------------------------------------------------------------------------------------------------
# SQL compilation (SQLAlchemy Core, bound parameters only)

Resolver = Callable[[Field, ValueKind], "ColumnElement[Any]"]


def compile_sql(expr: Expr, resolve: Resolver) -> ColumnElement[bool] | None:
    """Compile to a boolean SQLAlchemy expression; ``None`` for the empty filter.

    ``resolve(field, "number")`` must give the field's numeric value or NULL, ``resolve(field, "text")``
    its text value or NULL, for the run row being filtered.
    """
    if isinstance(expr, TrueExpr):
        return None
    return _compile(expr, resolve)


def _compile(expr: Expr, resolve: Resolver) -> ColumnElement[bool]:
    import sqlalchemy as sa

    if isinstance(expr, Compare):
        kind: ValueKind = "number" if isinstance(expr.value, float) else "text"
        col = resolve(expr.field, kind)
        param = sa.literal(expr.value, sa.Float() if kind == "number" else sa.String())
        return {
            "=": col == param, "!=": col != param, "<": col < param,
            "<=": col <= param, ">": col > param, ">=": col >= param,
        }[expr.op]
    if isinstance(expr, And):
        return sa.and_(*(_compile(i, resolve) for i in expr.items))
    if isinstance(expr, Or):
        return sa.or_(*(_compile(i, resolve) for i in expr.items))
    if isinstance(expr, Not):
        return sa.not_(_compile(expr.item, resolve))
    if isinstance(expr, InList):
        found = sa.or_(*(_compile(Compare(expr.field, "=", v), resolve) for v in expr.values))
        return sa.not_(found) if expr.negated else found
    if isinstance(expr, IsNull):
        missing = sa.and_(resolve(expr.field, "number").is_(None), resolve(expr.field, "text").is_(None))
        return sa.not_(missing) if expr.negated else missing
    if isinstance(expr, Like):
        col = resolve(expr.field, "text")
        pattern = sa.literal(expr.pattern, sa.String())
        matched = col.ilike(pattern, escape="\\") if expr.case_insensitive else col.like(pattern, escape="\\")
        return sa.not_(matched) if expr.negated else matched
    raise TypeError(f"not a query expression: {expr!r}")


def compile_order_sql(order: Sequence[OrderKey], resolve: Resolver) -> list[ColumnElement[Any]]:
    """ORDER BY clauses for the keys: missing values last, numbers before text (portable NULLS LAST).

    The caller appends its tie-breakers (run number, id).
    """
    import sqlalchemy as sa

    clauses: list[ColumnElement[Any]] = []
    for key in order:
        num = resolve(key.field, "number")
        text = resolve(key.field, "text")
        direction: Callable[[ColumnElement[Any]], ColumnElement[Any]] = (
            sa.desc if key.descending else sa.asc
        )
        both_null = sa.case((sa.and_(num.is_(None), text.is_(None)), 1), else_=0)
        num_null = sa.case((num.is_(None), 1), else_=0)
        clauses += [both_null.asc(), num_null.asc(), direction(num), direction(text)]
    return clauses
