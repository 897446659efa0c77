"""The run filter language: parse once into an AST, evaluate in memory or compile to SQL.

A filter is a string such as ``"params.lr > 0.01 and metrics.acc >= 0.9 and tags.team = 'vision'"``.
:func:`parse` turns it into an :class:`Expr` tree, which :func:`filter_runs` evaluates against run records
in memory and :func:`compile_sql` turns into a SQLAlchemy Core expression with bound parameters (SQL text
is never built from user input). Both give the same answer for every filter and every run; the test suite
checks this property against a real SQLite database.

Grammar (keywords are case-insensitive)::

    filter    := [or]                      (empty or blank: every run matches)
    or        := and (OR and)*
    and       := not (AND not)*
    not       := NOT not | primary         (precedence: NOT > AND > OR)
    primary   := '(' or ')' | field predicate
    predicate := op value
               | [NOT] LIKE 'pattern' | [NOT] ILIKE 'pattern'
               | [NOT] IN '(' value (',' value)* ')'
               | IS [NOT] NULL
    op        := = | == | != | <> | < | <= | > | >=
    field     := params.KEY | metrics.KEY | tags.KEY | ATTRIBUTE | attributes.ATTRIBUTE
    value     := number | 'string' | true | false

Fields:

* ``params.KEY`` (alias ``param.``), ``metrics.KEY`` (alias ``metric.``, the metric's latest value),
  ``tags.KEY`` (alias ``tag.``).
* Run attributes: ``id``, ``experiment_id``, ``number``, ``name``, ``parent_id``, ``status``,
  ``start_time``, ``end_time`` (times are epoch seconds), also written ``attributes.status``,
  ``attr.status`` or ``run.status``.
* ``KEY`` is written bare when it consists of letters, digits and ``_ - . / :`` (``metrics.val/loss``;
  ``params.a.b`` is the key ``a.b``), otherwise quoted with double quotes (``""`` for a quote) or
  backticks: ``metrics."val loss"``, ``params.`my key```. Keys are case-sensitive; prefixes, attribute
  names and keywords are not.

Values: numbers (``3``, ``-0.5``, ``1e-3``), strings in single quotes (``''`` inside stands for one
quote), and ``true``/``false``, which are the strings ``"true"``/``"false"`` (how boolean params
compare). There is no null literal: write ``IS NULL`` / ``IS NOT NULL``.

Semantics (SQL's, identical in memory and in every SQL backend):

* Typing. A param whose value is an int or float (not a bool) is a number. Any other param is text:
  strings as they are, bools as ``"true"``/``"false"``, lists and dicts as compact JSON with sorted keys
  (``json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``), an int too large for a
  float as its decimal digits. A JSON ``null`` param is NULL. Tags are text; metrics are numbers;
  ``number``, ``start_time`` and ``end_time`` are numbers, the other attributes text.
* Number literals compare with numbers and string literals with text. Comparing a number with a string
  literal (``metrics.acc = 'high'``) or text with a number literal (``tags.epoch = 3``) is UNKNOWN: not an
  error, and not a match. Write ``tags.epoch = '3'`` to compare a tag.
* A missing key is NULL, and so is a NaN metric: every comparison with NULL is UNKNOWN; only ``IS NULL``
  is true for it. ``IS NULL`` is true when the field has neither a number nor a text value.
* Three-valued logic: ``NOT`` UNKNOWN is UNKNOWN; ``FALSE AND UNKNOWN`` is FALSE, ``TRUE OR UNKNOWN`` is
  TRUE, otherwise AND/OR with an UNKNOWN operand are UNKNOWN. A run matches only when the whole filter is
  TRUE, so ``NOT params.opt = 'adam'`` does not match runs without an ``opt`` param.
* ``x IN (a, b)`` means ``x = a OR x = b`` (the list may mix numbers and strings, each compared by the
  rule above); ``x NOT IN (a, b)`` means ``NOT (x IN (a, b))``, so it is UNKNOWN for a missing ``x``.
  A mixed list follows from this: for a number ``x`` that is not 2, ``x IN (2, 'two')`` is UNKNOWN
  (FALSE OR UNKNOWN), so neither it nor its NOT IN matches.
* ``LIKE`` matches the whole text value, case-sensitively, with ``%`` (any run of characters) and ``_``
  (one character) as wildcards and ``\\`` as escape (``'50\\%'``); a pattern may not end in a lone ``\\``.
  ``ILIKE`` is the same but ignores the case of the ASCII letters A-Z (other characters must match
  exactly, which is what SQLite's ``lower()`` does). LIKE on a number is UNKNOWN.
* Text compares by Unicode code point (SQLite's BINARY collation).

Ordering (:func:`parse_order_by`, :func:`sort_runs`, :func:`compile_order_sql`): keys like
``"metrics.acc desc"``, ``"params.lr"``, ``"start_time ASC"`` (ascending by default). Missing and NaN
values sort last in both directions; for a param holding numbers for some runs and text for others,
numbers come first (in both directions). Ties, and runs equal on every key, are ordered by run number
and then id, so the order is total and paging is deterministic.

Limits: a filter is at most 10,000 characters, nests at most 64 levels (parentheses and ``NOT``) and
holds at most 256 conditions; longer IN lists are the way to test many values.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from labvault.domain.validation import check_text, show
from labvault.errors import InvalidArgumentError

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement

__all__ = [
    "ATTRIBUTES",
    "And",
    "Compare",
    "Expr",
    "Field",
    "FieldKind",
    "InList",
    "IsNull",
    "Like",
    "Not",
    "Or",
    "OrderKey",
    "Resolver",
    "RunLike",
    "TrueExpr",
    "Value",
    "ValueKind",
    "compile_order_sql",
    "compile_sql",
    "evaluate",
    "fields_of",
    "filter_runs",
    "parse",
    "parse_order_by",
    "sort_runs",
]

T = TypeVar("T")
FieldKind = Literal["params", "metrics", "tags", "attributes"]
"""Where a field's value lives: a run's params, latest metrics, tags, or one of its attributes."""
ValueKind = Literal["number", "text"]
"""The two representations a value can be compared in."""
Value = float | str
"""A literal: number literals are parsed to ``float``, strings (and ``true``/``false``) to ``str``."""

ATTRIBUTES: dict[str, ValueKind] = {
    "id": "text", "experiment_id": "text", "number": "number", "name": "text", "parent_id": "text",
    "status": "text", "start_time": "number", "end_time": "number",
}
"""The run attributes a filter may name, with the representation each compares in."""

_PREFIXES: dict[str, FieldKind] = {
    "params": "params", "param": "params", "metrics": "metrics", "metric": "metrics",
    "tags": "tags", "tag": "tags", "attributes": "attributes", "attribute": "attributes",
    "attr": "attributes", "run": "attributes",
}
_KEYWORDS = {"and", "or", "not", "like", "ilike", "in", "is", "null", "true", "false", "asc", "desc"}
_MAX_LENGTH = 10_000
_MAX_DEPTH = 64
_MAX_CONDITIONS = 256


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


# ------------------------------------------------------------------------------------------------------
# tokenizer and parser

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?(?![A-Za-z0-9_.]))
  | (?P<badnumber>[-+]?\.?[0-9][A-Za-z0-9_.+-]*)
  | (?P<string>'(?:[^']|'')*')
  | (?P<badstring>')
  | (?P<openkey>[A-Za-z_][A-Za-z0-9_]*\.(?:"(?:[^"]|"")*+(?!")|`[^`]*+(?!`)))
  | (?P<nokey>[A-Za-z_][A-Za-z0-9_]*\.(?![A-Za-z0-9_\-./:"`]))
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


def _error(text: str, pos: int, message: str, what: str = "filter") -> InvalidArgumentError:
    quoted = json.dumps(text, ensure_ascii=False)
    shown = re.sub(r"\s", " ", text)  # keep the caret under the right character
    return InvalidArgumentError(
        f"{what} syntax error at column {pos + 1}: {message} in {quoted}\n  {shown}\n  {' ' * pos}^"
    )


def _describe(token: _Token) -> str:
    return "the end of the filter" if token.kind == "end" else repr(token.text)


def _tokenize(text: str, what: str = "filter") -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise _error(text, pos, f"unexpected character {text[pos]!r}", what)
        kind = m.lastgroup or ""
        if kind == "badstring":
            raise _error(text, pos, "unterminated string (write '' for a quote inside a string)", what)
        if kind == "badnumber":
            raise _error(text, pos, f"malformed number {m.group()!r}", what)
        if kind == "openkey":
            raise _error(text, pos, "unterminated quoted key", what)
        if kind == "nokey":
            raise _error(text, pos, f"expected a key after {m.group()!r}", what)
        if kind != "ws":
            value = m.group()
            if kind == "field" and value.lower() in _KEYWORDS:
                kind = value.lower()
            tokens.append(_Token(kind, value, pos))
        pos = m.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _field_from(token: _Token, text: str, what: str = "filter") -> Field:
    raw = token.text
    prefix, dot, key = raw.partition(".")
    if not dot:
        if prefix.lower() in ATTRIBUTES:
            return Field("attributes", prefix.lower())
        raise _error(text, token.pos, f"unknown field {raw!r}: use params.KEY, metrics.KEY, tags.KEY or an "
                                      f"attribute ({', '.join(ATTRIBUTES)})", what)
    kind = _PREFIXES.get(prefix.lower())
    if kind is None:
        raise _error(text, token.pos, f"unknown prefix {prefix!r}: use params., metrics., tags. or "
                                      f"attributes. (or param., metric., tag., attr.)", what)
    if key[:1] == '"':
        key = key[1:-1].replace('""', '"')
    elif key[:1] == "`":
        key = key[1:-1]
    if not key:
        raise _error(text, token.pos, f"empty key after {prefix}.", what)
    if kind == "attributes":
        if key.lower() not in ATTRIBUTES:
            raise _error(text, token.pos, f"unknown attribute {key!r}: use one of {', '.join(ATTRIBUTES)}",
                         what)
        key = key.lower()
    return Field(kind, key)


_OPS: dict[str, Literal["=", "!=", "<", "<=", ">", ">="]] = {
    "=": "=", "==": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=",
}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0
        self.conditions = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self, *kinds: str) -> _Token | None:
        token = self.tokens[self.i]
        if token.kind in kinds:
            self.i += 1
            return token
        return None

    def fail(self, message: str, token: _Token | None = None) -> InvalidArgumentError:
        return _error(self.text, (token or self.peek()).pos, message)

    def expect(self, kind: str, what: str) -> _Token:
        token = self.take(kind)
        if token is None:
            raise self.fail(f"expected {what}, found {_describe(self.peek())}")
        return token

    def nest(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.fail(f"nested more than {_MAX_DEPTH} levels deep", token)

    def parse(self) -> Expr:
        expr = self.parse_or()
        end = self.peek()
        if end.kind != "end":
            hint = " (missing AND or OR?)" if end.kind in ("field", "not", "lparen") else ""
            raise self.fail(f"unexpected {end.text!r}; expected AND, OR or the end of the filter{hint}")
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
        token = self.take("not")
        if token is not None:
            self.nest(token)
            item = self.parse_not()
            self.depth -= 1
            return Not(item)
        return self.parse_primary()

    def parse_primary(self) -> Expr:
        token = self.take("lparen")
        if token is not None:
            self.nest(token)
            expr = self.parse_or()
            self.expect("rparen", "')'")
            self.depth -= 1
            return expr
        token = self.expect("field", "a field such as params.lr, metrics.acc, tags.team or status")
        self.conditions += 1
        if self.conditions > _MAX_CONDITIONS:
            raise self.fail(f"more than {_MAX_CONDITIONS} conditions (use IN for long lists)", token)
        return self.parse_predicate(_field_from(token, self.text))

    def parse_value(self, after: str) -> Value:
        token = self.take("number", "string", "true", "false")
        if token is None:
            found = self.peek()
            hint = " (there is no NULL value: write IS NULL or IS NOT NULL)" if found.kind == "null" else ""
            raise self.fail(f"expected a value after {after!r}, found {_describe(found)}{hint}")
        if token.kind == "number":
            value = float(token.text)
            if not math.isfinite(value):
                raise self.fail(f"number {token.text!r} is out of range", token)
            return value
        if token.kind == "string":
            return token.text[1:-1].replace("''", "'")
        return token.kind  # "true" / "false"

    def parse_pattern(self, after: str) -> str:
        token = self.take("string")
        if token is None:
            raise self.fail(f"expected a quoted pattern after {after}, found {_describe(self.peek())}")
        pattern = token.text[1:-1].replace("''", "'")
        if len(pattern) > MAX_LIKE_PATTERN_LENGTH:
            raise self.fail(f"a LIKE pattern may have at most {MAX_LIKE_PATTERN_LENGTH} characters, "
                            f"this one has {len(pattern)}", token)
        trailing = len(pattern) - len(pattern.rstrip("\\"))
        if trailing % 2:
            raise self.fail("a LIKE pattern may not end in a lone '\\' (write '\\\\' for a backslash)", token)
        return pattern

    def parse_predicate(self, field: Field) -> Expr:
        op = self.take("op")
        if op is not None:
            return Compare(field, _OPS[op.text], self.parse_value(op.text))
        negated = self.take("not") is not None
        like = self.take("like", "ilike")
        if like is not None:
            word = ("NOT " if negated else "") + like.text.upper()
            return Like(field, self.parse_pattern(word), negated, like.kind == "ilike")
        if self.take("in"):
            self.expect("lparen", "'(' after IN")
            values = [self.parse_value("(")]
            while self.take("comma"):
                values.append(self.parse_value(","))
            self.expect("rparen", "',' or ')' closing the IN list")
            unique = tuple(dict.fromkeys((type(v), v) for v in values))  # 1 and 1.0 are both floats
            return InList(field, tuple(v for _, v in unique), negated)
        if negated:
            raise self.fail(f"expected LIKE, ILIKE or IN after NOT, found {_describe(self.peek())}")
        if self.take("is"):
            neg = self.take("not") is not None
            self.expect("null", "NULL after IS" + (" NOT" if neg else ""))
            return IsNull(field, neg)
        raise self.fail(f"expected an operator (= != < <= > >= LIKE ILIKE IN IS) after {field}, "
                        f"found {_describe(self.peek())}")


def parse(text: str | None) -> Expr:
    """Parse a filter string into an AST; ``None``, ``""`` or blank gives :class:`TrueExpr`.

    A malformed filter raises ``InvalidArgumentError`` whose message says what was expected, quotes the
    filter and points at the 1-based column, e.g.::

        filter syntax error at column 13: expected a value after '>', found 'and' in "params.lr > and x"
          params.lr > and x
                      ^

    Unknown prefixes and attributes are errors that list the known ones.
    """
    if text is None:
        return TrueExpr()
    if not isinstance(text, str):
        raise InvalidArgumentError(f"filter must be a string, got {type(text).__name__}")
    if len(text) > _MAX_LENGTH:
        raise InvalidArgumentError(f"filter is longer than {_MAX_LENGTH:,} characters")
    check_text(text, "filter")
    if not text.strip():
        return TrueExpr()
    return _Parser(text).parse()


def _split_commas(tokens: list[_Token]) -> list[list[_Token]]:
    groups: list[list[_Token]] = [[]]
    for token in tokens:
        if token.kind == "comma":
            groups.append([])
        elif token.kind != "end":
            groups[-1].append(token)
    return groups


def parse_order_by(items: Sequence[str] | str | None) -> list[OrderKey]:
    """Parse ``order_by`` entries into :class:`OrderKey` s; ``None`` or ``[]`` gives ``[]``.

    Each entry is a field (same syntax as in filters) optionally followed by ``ASC`` (the default) or
    ``DESC``: ``["metrics.acc desc", "params.lr"]``. A single string may hold several entries separated by
    commas (``"metrics.acc desc, params.lr"``). A malformed entry raises ``InvalidArgumentError`` naming
    it. See the module documentation for how missing values, mixed types and ties are ordered.
    """
    if items is None:
        return []
    if isinstance(items, str):
        items = [items]
    elif not isinstance(items, list | tuple):
        raise InvalidArgumentError(f"order_by must be a string or a list of strings, got {show(items)}")
    out: list[OrderKey] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise InvalidArgumentError(f"order_by entry {show(item)} must be a non-empty string")
        if len(item) > _MAX_LENGTH:
            raise InvalidArgumentError(
                f"order_by entry {show(item)} is longer than {_MAX_LENGTH:,} characters")
        check_text(item, "order_by entry")
        try:
            groups = _split_commas(_tokenize(item, "order_by"))
            for tokens in groups:
                if not tokens or tokens[0].kind != "field" or len(tokens) > 2 or (
                    len(tokens) == 2 and tokens[1].kind not in ("asc", "desc")
                ):
                    raise InvalidArgumentError(
                        "write a field optionally followed by ASC or DESC, e.g. 'metrics.acc desc'"
                    )
                field = _field_from(tokens[0], item, "order_by")
                out.append(OrderKey(field, len(tokens) == 2 and tokens[1].kind == "desc"))
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"invalid order_by entry {item!r}: {exc}") from exc
    return out


# ------------------------------------------------------------------------------------------------------
# in-memory evaluation (None stands for UNKNOWN / NULL)


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


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


#: A LIKE pattern longer than this is refused by the parser: matching costs at most
#: O(len(text) x len(longest '%'-free piece that holds a '_')), so the bound keeps every match linear in the
#: text (a 64 KiB value against the worst 1,024-character pattern: milliseconds).
MAX_LIKE_PATTERN_LENGTH = 1024


@dataclass(frozen=True)
class _LikePiece:
    """A '%'-free piece of a LIKE pattern: literal text with '_' (any one character) wildcards."""

    text: str  # the literal characters, with '_' positions holding a placeholder
    wild: bool  # whether the piece holds a '_'
    regex: re.Pattern[str] | None  # for pieces with '_': literals and '.', no quantifiers (no backtracking)

    def match_at(self, text: str, pos: int) -> bool:
        if self.regex is None:
            return text.startswith(self.text, pos)
        return self.regex.match(text, pos) is not None

    def find(self, text: str, pos: int) -> int:
        if self.regex is None:
            return text.find(self.text, pos)  # two-way search in CPython: linear
        found = self.regex.search(text, pos)  # each try is O(len(piece)): no quantifier to backtrack on
        return -1 if found is None else found.start()


def _like_piece(chars: list[str | None]) -> _LikePiece:
    wild = any(c is None for c in chars)
    text = "".join("\0" if c is None else c for c in chars)
    regex = None
    if wild:
        regex = re.compile("".join("." if c is None else re.escape(c) for c in chars), re.DOTALL)
    return _LikePiece(text, wild, regex)


@functools.lru_cache(maxsize=256)
def _like_program(pattern: str) -> tuple[_LikePiece, ...]:
    """Split a LIKE pattern at its unescaped '%' into pieces (a pattern without '%' is one piece)."""
    pieces: list[_LikePiece] = []
    chars: list[str | None] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            chars.append(pattern[i + 1])
            i += 2
            continue
        if ch == "%":
            pieces.append(_like_piece(chars))
            chars = []
        else:
            chars.append(None if ch == "_" else ch)
        i += 1
    pieces.append(_like_piece(chars))
    return tuple(pieces)


def _like(text: str, pattern: str, case_insensitive: bool) -> bool:
    """SQL ``LIKE`` in time linear in ``text``: no backtracking regex over user text (ReDoS-safe).

    The pattern ``P0 % P1 % ... % Pk`` matches when ``P0`` matches at the start, ``Pk`` at the end, and
    ``P1 .. Pk-1`` in order in between; taking each middle piece at its leftmost place is always right
    (a later place only leaves less room for the rest), so one forward scan decides it.
    """
    if case_insensitive:  # ASCII-only folding, like SQLite's lower()
        text, pattern = text.translate(_ASCII_LOWER), pattern.translate(_ASCII_LOWER)
    pieces = _like_program(pattern)
    first = pieces[0]
    if len(pieces) == 1:
        return len(text) == len(first.text) and first.match_at(text, 0)
    if not first.match_at(text, 0):
        return False
    pos = len(first.text)
    last = pieces[-1]
    end = len(text) - len(last.text)
    for piece in pieces[1:-1]:
        if not piece.text:
            continue
        found = piece.find(text, pos)
        if found < 0 or found + len(piece.text) > end:
            return False
        pos = found + len(piece.text)
    return end >= pos and last.match_at(text, end)


def _compare_value(run: Any, field: Field, op: str, value: Value) -> bool | None:
    if isinstance(value, float):
        num = _number(run, field)
        return None if num is None else _compare(op, num, value)
    text = _text(run, field)
    return None if text is None else _compare(op, text, value)


def _eval(expr: Expr, run: Any) -> bool | None:
    if isinstance(expr, Compare):
        return _compare_value(run, expr.field, expr.op, expr.value)
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
        found: bool | None = False
        for v in expr.values:
            value = _compare_value(run, expr.field, "=", v)
            if value is True:
                found = True
                break
            if value is None:
                found = None
        return (None if found is None else not found) if expr.negated else found
    if isinstance(expr, IsNull):
        missing = _number(run, expr.field) is None and _text(run, expr.field) is None
        return not missing if expr.negated else missing
    if isinstance(expr, Like):
        text = _text(run, expr.field)
        if text is None:
            return None
        matched = _like(text, expr.pattern, expr.case_insensitive)
        return not matched if expr.negated else matched
    if isinstance(expr, TrueExpr):
        return True
    raise TypeError(f"not a query expression: {expr!r}")


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


# ------------------------------------------------------------------------------------------------------
# SQL compilation (SQLAlchemy Core, bound parameters only; sqlalchemy is imported lazily)

Resolver = Callable[[Field, ValueKind], "ColumnElement[Any]"]
"""``resolve(field, kind)``: the SQL expression of a field's number or text value for the current run row.

``resolve(field, "number")`` must be the numeric value, or NULL when the field is missing, NaN or not a
number; ``resolve(field, "text")`` the text value (encoded as described in the module documentation), or
NULL when missing or not text. Typically a column of the runs table or a correlated scalar subquery, e.g.
``select(run_params.c.value_num).where(run_params.c.run_id == runs.c.id, run_params.c.key == key)``.
"""


def compile_sql(expr: Expr, resolve: Resolver) -> ColumnElement[bool]:
    """Compile a filter to a boolean SQLAlchemy Core expression for a ``WHERE`` clause.

    The result selects exactly the runs :func:`filter_runs` keeps, relying on the database's
    three-valued logic; every literal is a bound parameter. Number literals compare with
    ``resolve(field, "number")`` and strings with ``resolve(field, "text")``; ``IS NULL`` tests every
    representation the field can have; ``LIKE`` uses ``.like(pattern, escape="\\\\")`` (case-sensitive
    only if the database's LIKE is: on SQLite set ``PRAGMA case_sensitive_like=ON``) and ``ILIKE``
    ``.ilike``. :class:`TrueExpr` compiles to ``true()``.
    """
    import sqlalchemy as sa

    if isinstance(expr, TrueExpr):
        return sa.true()
    return _compile(expr, resolve)


def _bind(value: Value) -> ColumnElement[Any]:
    import sqlalchemy as sa

    if isinstance(value, float):
        return sa.literal(value, sa.Float())
    return sa.literal(value, sa.String())


def _compile(expr: Expr, resolve: Resolver) -> ColumnElement[bool]:
    import sqlalchemy as sa

    if isinstance(expr, Compare):
        col = resolve(expr.field, "number" if isinstance(expr.value, float) else "text")
        param = _bind(expr.value)
        op = expr.op
        if op == "=":
            return col == param
        if op == "!=":
            return col != param
        if op == "<":
            return col < param
        if op == "<=":
            return col <= param
        if op == ">":
            return col > param
        return col >= param
    if isinstance(expr, And):
        return sa.and_(*(_compile(i, resolve) for i in expr.items))
    if isinstance(expr, Or):
        return sa.or_(*(_compile(i, resolve) for i in expr.items))
    if isinstance(expr, Not):
        return sa.not_(_compile(expr.item, resolve))
    if isinstance(expr, InList):
        nums = [v for v in expr.values if isinstance(v, float)]
        texts = [v for v in expr.values if isinstance(v, str)]
        parts: list[ColumnElement[bool]] = []
        if nums:
            parts.append(resolve(expr.field, "number").in_([_bind(v) for v in nums]))
        if texts:
            parts.append(resolve(expr.field, "text").in_([_bind(v) for v in texts]))
        found = parts[0] if len(parts) == 1 else sa.or_(*parts)
        return sa.not_(found) if expr.negated else found
    if isinstance(expr, IsNull):
        missing = sa.and_(*(resolve(expr.field, kind).is_(None) for kind in expr.field.value_kinds))
        return sa.not_(missing) if expr.negated else missing
    if isinstance(expr, Like):
        col = resolve(expr.field, "text")
        pattern = sa.literal(expr.pattern, sa.String())
        matched = col.ilike(pattern, escape="\\") if expr.case_insensitive else col.like(pattern, escape="\\")
        return sa.not_(matched) if expr.negated else matched
    raise TypeError(f"not a query expression: {expr!r}")


def compile_order_sql(order: Sequence[OrderKey], resolve: Resolver) -> list[ColumnElement[Any]]:
    """``ORDER BY`` clauses giving the order of :func:`sort_runs`, portable to any SQL database.

    For each key: values present first (``NULLS LAST`` for metrics, tags and attributes, which SQLite and
    PostgreSQL support; for params ``CASE WHEN value IS NULL THEN 1 ELSE 0 END`` and numbers before
    text), then the value ascending or descending. The tie-breakers ``number`` and ``id`` (resolved
    through ``resolve``) come last; callers may append their own columns too.
    """
    import sqlalchemy as sa

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
