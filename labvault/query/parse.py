"""The filter and ``order_by`` parser: text to the AST of ``labvault.query.nodes``, with errors that
point at the offending position."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from labvault.domain.validation import check_text, show
from labvault.errors import InvalidArgumentError
from labvault.query.like import MAX_LIKE_PATTERN_LENGTH
from labvault.query.nodes import (
    ATTRIBUTES,
    And,
    Compare,
    Expr,
    Field,
    FieldKind,
    InList,
    IsNull,
    Like,
    Not,
    Or,
    OrderKey,
    TrueExpr,
    Value,
)

_PREFIXES: dict[str, FieldKind] = {
    "params": "params", "param": "params", "metrics": "metrics", "metric": "metrics",
    "tags": "tags", "tag": "tags", "attributes": "attributes", "attribute": "attributes",
    "attr": "attributes", "run": "attributes",
}
_KEYWORDS = {"and", "or", "not", "like", "ilike", "in", "is", "null", "true", "false", "asc", "desc"}
_MAX_LENGTH = 10_000
_MAX_DEPTH = 64
_MAX_CONDITIONS = 256



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
  | (?P<dqstring>"(?:[^"]|"")*"?)
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
        if kind == "dqstring":
            inner = m.group()[1:-1] if len(m.group()) > 1 and m.group().endswith('"') else m.group()[1:]
            suggestion = "'" + inner.replace('""', '"').replace("'", "''") + "'"
            raise _error(text, pos, f"strings take single quotes: write {suggestion} instead of {m.group()} "
                                    "(double quotes are for keys, as in metrics.\"val loss\")", what)
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


_NUMBER_TEXT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_TIME_ATTRIBUTES = ("start_time", "end_time")


def _as_number(text: str) -> float | None:
    """A string literal that is written as a finite number (``'0.3'``, ``'1e-3'``), as a float."""
    if len(text) > 64 or not _NUMBER_TEXT.fullmatch(text):
        return None
    number = float(text)
    return number if math.isfinite(number) else None


def time_literal(text: str) -> float:
    """An ISO 8601 date or date-time (``'2026-01-01'``, ``'2026-01-01T12:30'``, ``'...Z'``, ``'...+02:00'``)
    as epoch seconds; a value without a zone is UTC, so a filter means the same on every machine."""
    if len(text) > 64:
        raise InvalidArgumentError("a time literal has at most 64 characters")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgumentError(
            f"{text!r} is not a time: write epoch seconds or an ISO date or date-time such as "
            "'2026-01-01' or '2026-01-01T12:30:00+02:00' (no zone means UTC)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def literal_forms(field: Field, value: Value, number_text: str | None = None) -> tuple[Value, ...]:
    """The values a literal stands for when compared with ``field``: MLflow's habits, made to mean the
    same on every backend.

    * A param may hold a number or text, and MLflow users quote numbers (MLflow stores params as text):
      a quoted number compares with both, so ``params.lr = '0.3'`` matches the number ``0.3`` and the
      text ``'0.3'``. A bare number compares with numbers only, as before.
    * Tags and text attributes are text: ``tags.epoch = 3`` compares with ``'3'`` (the literal as written).
    * Metrics and numeric attributes are numbers: a quoted number compares as the number;
      ``start_time``/``end_time`` also take ISO dates and date-times (UTC unless a zone is given).
    * ``status`` ignores case (``'FINISHED'`` is ``'finished'``, as MLflow writes its statuses).

    ``number_text`` is the literal as written when it was a number token (``None`` for a string).
    """
    kinds = field.value_kinds
    if isinstance(value, float):
        if kinds == ("text",):
            return (number_text if number_text is not None else repr(value),)
        return (value,)
    number = _as_number(value)
    if kinds == ("number",):
        if number is not None:
            return (number,)
        if field.kind == "attributes" and field.key in _TIME_ATTRIBUTES:
            return (time_literal(value),)
        return (value,)
    if field == Field("attributes", "status"):
        return (value.lower(),)
    if "number" in kinds and number is not None:
        return (value, number)
    return (value,)


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
        return self.parse_literal(after)[0]

    def parse_literal(self, after: str) -> tuple[Value, _Token]:
        """The next literal's value and its token (whose text :func:`literal_forms` may need)."""
        token = self.take("number", "string", "true", "false")
        if token is None:
            found = self.peek()
            hint = " (there is no NULL value: write IS NULL or IS NOT NULL)" if found.kind == "null" else ""
            raise self.fail(f"expected a value after {after!r}, found {_describe(found)}{hint}")
        if token.kind == "number":
            value = float(token.text)
            if not math.isfinite(value):
                raise self.fail(f"number {token.text!r} is out of range", token)
            return value, token
        if token.kind == "string":
            return token.text[1:-1].replace("''", "'"), token
        return token.kind, token  # "true" / "false"

    def forms(self, field: Field, after: str) -> tuple[Value, ...]:
        """The next literal as the values it compares with for ``field`` (see :func:`literal_forms`)."""
        value, token = self.parse_literal(after)
        try:
            return literal_forms(field, value, token.text if token.kind == "number" else None)
        except InvalidArgumentError as exc:
            raise self.fail(str(exc), token) from None

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
            compares = tuple(Compare(field, _OPS[op.text], v) for v in self.forms(field, op.text))
            return compares[0] if len(compares) == 1 else Or(compares)
        negated = self.take("not") is not None
        like = self.take("like", "ilike")
        if like is not None:
            word = ("NOT " if negated else "") + like.text.upper()
            return Like(field, self.parse_pattern(word), negated, like.kind == "ilike")
        if self.take("in"):
            self.expect("lparen", "'(' after IN")
            values = list(self.forms(field, "("))
            while self.take("comma"):
                values.extend(self.forms(field, ","))
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
