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
* Number literals compare with numbers and string literals with text, with MLflow's habits honoured
  (:func:`labvault.query.parse.literal_forms`): a quoted number is also a number (``params.lr = '0.3'``
  is ``params.lr = 0.3 OR params.lr = '0.3'``; ``metrics.acc > '0.9'`` is ``metrics.acc > 0.9``), a bare
  number against a tag or text attribute is its text (``tags.epoch = 3`` is ``tags.epoch = '3'``),
  ``status`` values ignore case (``'FINISHED'``), and ``start_time``/``end_time`` take ISO dates and
  date-times (``start_time > '2026-01-01'``; UTC unless the literal has a zone; any other string there
  is an error). Otherwise comparing a number with text (``metrics.acc = 'high'``, ``params.opt = 3``
  for a text param) is UNKNOWN: not an error, and not a match. A double-quoted value (``= "sgd"``) is
  an error that says strings take single quotes.
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

from labvault._compat import forward
from labvault.query.evaluate import evaluate, fields_of, filter_runs, param_text, sort_runs
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
    Resolver,
    RunLike,
    TrueExpr,
    Value,
    ValueKind,
)
from labvault.query.parse import parse, parse_order_by
from labvault.query.sql import compile_order_sql, compile_sql

__all__ = [
    "ATTRIBUTES",
    "MAX_LIKE_PATTERN_LENGTH",
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
    "param_text",
    "parse",
    "parse_order_by",
    "sort_runs",
]

#: Helpers other layers and tests reach by their old names (``query._like``) resolve in the modules.
__getattr__ = forward("labvault.query", "labvault.query.like", "labvault.query.evaluate",
                      "labvault.query.parse", "labvault.query.nodes", "labvault.query.sql")
