"""The filter language: parser, three-valued evaluation, ordering, and SQL compilation.

The property test at the end is the contract the SQL backends rely on: for random runs and random
filters/orderings, ``filter_runs`` + ``sort_runs`` in memory give exactly the rows (in exactly the order)
that ``compile_sql`` + ``compile_order_sql`` give on a real SQLite database.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labvault import query
from labvault.errors import InvalidArgumentError
from labvault.query import (
    And,
    Compare,
    Field,
    InList,
    IsNull,
    Like,
    Not,
    Or,
    OrderKey,
    TrueExpr,
)


@dataclass
class FakeRun:
    id: str
    experiment_id: str = "e1"
    number: int = 1
    name: str | None = None
    parent_id: str | None = None
    status: str = "finished"
    start_time: float = 0.0
    end_time: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


P = Field("params", "a")


def matches(text: str, run: Any) -> bool:
    return query.evaluate(query.parse(text), run)


def truth(text: str, run: FakeRun) -> bool | None:
    """TRUE, FALSE or UNKNOWN (None), read through evaluate of the filter and of its negation."""
    expr = query.parse(text)
    if query.evaluate(expr, run):
        return True
    return False if query.evaluate(Not(expr), run) else None


# ------------------------------------------------------------------------------------------------------
# parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("params.a = 1", Compare(P, "=", 1.0)),
        ("params.a == 1", Compare(P, "=", 1.0)),
        ("params.a != 1", Compare(P, "!=", 1.0)),
        ("params.a <> 1", Compare(P, "!=", 1.0)),
        ("params.a < -1.5", Compare(P, "<", -1.5)),
        ("params.a <= 1e-3", Compare(P, "<=", 0.001)),
        ("params.a > 2E3", Compare(P, ">", 2000.0)),
        ("params.a >= .5", Compare(P, ">=", 0.5)),
        ("params.a>=+3", Compare(P, ">=", 3.0)),
        ("params.a = 'adam'", Compare(P, "=", "adam")),
        ("params.a = 'it''s'", Compare(P, "=", "it's")),
        ("params.a = ''", Compare(P, "=", "")),
        ("params.a = TRUE", Compare(P, "=", "true")),
        ("params.a = false", Compare(P, "=", "false")),
        ("params.a LIKE 'ad%'", Like(P, "ad%", False, False)),
        ("params.a not like 'ad%'", Like(P, "ad%", True, False)),
        ("params.a ILIKE 'AD%'", Like(P, "AD%", False, True)),
        ("params.a NOT ILIKE 'x'", Like(P, "x", True, True)),
        ("params.a IN (1, 'x', 2.0)", InList(P, (1.0, "x", 2.0), False)),
        ("params.a in (1, 1.0, 'x', 'x')", InList(P, (1.0, "x"), False)),
        ("params.a NOT IN ('x')", InList(P, ("x",), True)),
        ("params.a IS NULL", IsNull(P, False)),
        ("params.a is not null", IsNull(P, True)),
        ("", TrueExpr()),
        ("   \n\t", TrueExpr()),
    ],
)
def test_operators(text: str, expected: query.Expr) -> None:
    assert query.parse(text) == expected


def test_none_is_true() -> None:
    assert query.parse(None) == TrueExpr()
    assert query.filter_runs(query.parse(None), [FakeRun("x")]) == [FakeRun("x")]


def test_precedence_not_and_or() -> None:
    a, b, c = (Compare(Field("params", k), "=", 1.0) for k in "abc")
    assert query.parse("NOT params.a = 1 OR params.b = 1 AND params.c = 1") == Or((Not(a), And((b, c))))
    assert query.parse("params.a = 1 or params.b = 1 or params.c = 1") == Or((a, b, c))
    assert query.parse("(params.a = 1 OR params.b = 1) AND params.c = 1") == And((Or((a, b)), c))
    assert query.parse("NOT (params.a = 1 AND params.b = 1)") == Not(And((a, b)))
    assert query.parse("not not params.a = 1") == Not(Not(a))
    assert query.parse("((params.a = 1))") == a


def test_fields_prefixes_aliases_and_quoting() -> None:
    cases = {
        "params.lr": Field("params", "lr"), "param.lr": Field("params", "lr"),
        "PARAMS.lr": Field("params", "lr"), "params.LR": Field("params", "LR"),
        "metrics.acc": Field("metrics", "acc"), "metric.acc": Field("metrics", "acc"),
        "tags.team": Field("tags", "team"), "tag.team": Field("tags", "team"),
        "metrics.val/loss": Field("metrics", "val/loss"), "params.a.b": Field("params", "a.b"),
        "params.x-y:z_1": Field("params", "x-y:z_1"), 'metrics."val loss"': Field("metrics", "val loss"),
        'params."say ""hi"""': Field("params", 'say "hi"'), "params.`my key`": Field("params", "my key"),
        "params.`a'b`": Field("params", "a'b"), "params.and": Field("params", "and"),
        "status": Field("attributes", "status"), "STATUS": Field("attributes", "status"),
        "attributes.status": Field("attributes", "status"), "attr.Name": Field("attributes", "name"),
        "run.id": Field("attributes", "id"), "number": Field("attributes", "number"),
        "start_time": Field("attributes", "start_time"), "end_time": Field("attributes", "end_time"),
        "parent_id": Field("attributes", "parent_id"), "experiment_id": Field("attributes", "experiment_id"),
    }
    for text, expected in cases.items():
        assert query.parse(f"{text} IS NULL") == IsNull(expected, False), text
    assert str(Field("metrics", "acc")) == "metrics.acc" and str(Field("attributes", "status")) == "status"


def test_keywords_are_case_insensitive_and_whitespace_free() -> None:
    assert query.parse("params.a=1AND params.b='x'".replace("1AND", "1 AND")) == query.parse(
        "params.a = 1 and params.b = 'x'")
    assert query.parse("params.a IN(1,'x')") == query.parse("params.a in ( 1 , 'x' )")
    assert query.parse("Params.a Is Not Null") == IsNull(P, True)


def test_fields_of() -> None:
    expr = query.parse("(metrics.acc > 1 OR NOT tags.t LIKE 'x') AND params.a IN (1) AND status IS NULL")
    assert query.fields_of(expr) == {Field("metrics", "acc"), Field("tags", "t"), P,
                                     Field("attributes", "status")}
    assert query.fields_of(TrueExpr()) == set()


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("params.lr > and x", 13, "expected a value after '>'"),
        ("params.lr >> 1", 12, "expected a value"),
        ("params.lr > ", 13, "expected a value"),
        ("params.lr = null", 13, "IS NULL"),
        ("params.lr = 'open", 13, "unterminated string"),
        ("params.lr = 1e5x", 13, "malformed number"),
        ("foo.lr = 1", 1, "unknown prefix 'foo': use params., metrics., tags."),
        ("bogus = 1", 1, "unknown field 'bogus'"),
        ("attributes.colour = 'red'", 1, "unknown attribute 'colour': use one of id, experiment_id"),
        ("params.lr = 1 AND", 18, "expected a field"),
        ("params.lr = 1 AND OR params.b = 1", 19, "expected a field"),
        ("(params.lr = 1", 15, "')'"),
        ("params.lr = 1)", 14, "unexpected ')'"),
        ("params.lr IN 1", 14, "'(' after IN"),
        ("params.lr IN (1 2)", 17, "',' or ')'"),
        ("params.lr IN ()", 15, "expected a value"),
        ("params.lr NOT 1", 15, "LIKE, ILIKE or IN"),
        ("params.lr IS 1", 14, "NULL after IS"),
        ("params.lr LIKE 1", 16, "quoted pattern"),
        ("params.lr LIKE 'a\\'", 16, "lone '\\'"),
        ("params.lr = 1 params.x = 2", 15, "missing AND or OR"),
        ("params.lr ~ 1", 11, "unexpected character '~'"),
        ("params.lr", 10, "expected an operator"),
        ('params."open = 1', 1, "unterminated quoted key"),
        ("params. = 1", 1, "expected a key"),
        ("params.a = 1e999", 12, "out of range"),
        ("x = 1", 1, "unknown field"),
    ],
)
def test_syntax_errors_point_at_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        query.parse(text)
    message = str(info.value)
    assert message.startswith(f"filter syntax error at column {column}: "), message
    assert fragment in message, message
    assert json.dumps(text) in message
    _, shown, caret = message.split("\n")
    assert caret.index("^") - 2 == column - 1 and shown == "  " + text


def test_error_message_format_from_the_docs() -> None:
    with pytest.raises(InvalidArgumentError, match=r'^filter syntax error at column 13: expected a value '
                       r"after '>', found 'and' in \"params.lr > and x\"\n"):
        query.parse("params.lr > and x")


def test_limits() -> None:
    with pytest.raises(InvalidArgumentError, match="nested more than"):
        query.parse("(" * 100 + "params.a = 1" + ")" * 100)
    with pytest.raises(InvalidArgumentError, match="nested more than"):
        query.parse("NOT " * 100 + "params.a = 1")
    with pytest.raises(InvalidArgumentError, match="conditions"):
        query.parse(" OR ".join(["params.a = 1"] * 300))
    with pytest.raises(InvalidArgumentError, match="longer than"):
        query.parse("params.a = '" + "x" * 10_001 + "'")
    with pytest.raises(InvalidArgumentError, match="NUL"):
        query.parse("params.a = '\x00'")
    with pytest.raises(InvalidArgumentError, match="must be a string"):
        query.parse(3)  # type: ignore[arg-type]
    query.parse("params.a IN (" + ", ".join(["1"] * 2000) + ")")  # long IN lists are fine


# ------------------------------------------------------------------------------------------------------
# evaluation


def test_value_typing() -> None:
    run = FakeRun("r", params={"i": 3, "f": 0.5, "s": "adam", "b": True, "l": [1, 2], "d": {"z": 1, "a": "é"},
                               "n": None, "big": 10**400, "i70": 2**70,
                               "digits": "3"},
                  tags={"t": "3"}, metrics={"m": 0.5})
    assert matches("params.i = 3 AND params.i = 3.0 AND params.i > 2.5", run)
    assert matches("params.f = 0.5 AND params.s = 'adam' AND params.b = true AND params.b = 'true'", run)
    assert matches("params.l = '[1,2]' AND params.d = '{\"a\":\"é\",\"z\":1}'", run)
    assert matches(f"params.big = '{10**400}' AND params.big IS NOT NULL AND params.big LIKE '1000%'", run)
    assert matches("params.i70 = 1180591620717411303424", run)
    assert matches("params.digits = '3' AND tags.t = '3' AND metrics.m = 0.5", run)
    assert matches("params.n IS NULL AND params.missing IS NULL AND params.i IS NOT NULL", run)
    # a number vs text that is not a number is UNKNOWN, not FALSE and not an error
    for text in ["params.digits = 3", "metrics.m = 'high'", "params.b = 1",
                 "params.big = 1e300", "params.n = 'null'", "params.missing != 1",
                 "params.i LIKE '3'", "metrics.m LIKE '%'", "params.s > 1"]:
        assert truth(text, run) is None, text
    # MLflow's habits: a quoted number is a number for params, metrics and numeric attributes, a bare
    # number is its text for tags and text attributes
    for text in ["params.i = '3'", "params.i != '4'", "params.f < '0.75'", "params.digits = '3'",
                 "tags.t = 3", "metrics.m = '0.5'", "metrics.m >= '5e-1'", "params.i IN ('3', 'x')"]:
        assert truth(text, run) is True, text
    for text in ["tags.t = 4", "metrics.m > '0.5'", "number = '2'"]:
        assert truth(text, run) is False, text
    # a quoted number against a param is "params.i = 4 OR params.i = '4'": the representation the param
    # does not have is UNKNOWN, so a miss is UNKNOWN (as before), never a match of its negation
    for text in ["params.i = '4'", "params.i != '3'", "params.s = '3'", "params.digits = '4'"]:
        assert truth(text, run) is None, text


def test_attributes() -> None:
    run = FakeRun("r1", number=7, name=None, status="finished", start_time=100.0, end_time=None,
                  parent_id="p")
    assert matches("number = 7 AND start_time >= 100 AND status = 'finished' AND id = 'r1'", run)
    assert matches("name IS NULL AND end_time IS NULL AND parent_id = 'p' AND experiment_id = 'e1'", run)
    assert truth("name = 'x'", run) is None
    assert truth("end_time > 0", run) is None
    # MLflow's forms: upper-case statuses, the attributes. prefix, ISO dates as times (UTC without a zone)
    assert matches("attributes.status = 'FINISHED' AND status IN ('RUNNING', 'Finished') AND "
                   "number = '7'", run)
    assert matches("start_time > '1970-01-01' AND start_time < '1970-01-01T00:01:41' AND "
                   "start_time = '1970-01-01T01:01:40+01:00' AND start_time >= '100'", run)
    assert truth("start_time > '1970-01-02'", run) is False


@pytest.mark.parametrize(("text", "message"), [
    ("params.opt = \"sgd\"", "strings take single quotes: write 'sgd' instead of \"sgd\""),
    ("tags.t IN ('a', \"b c\")", "write 'b c' instead of \"b c\""),
    ("params.opt = \"it's\"", "write 'it''s'"),
    ("start_time > 'yesterday'", "'yesterday' is not a time: write epoch seconds or an ISO date"),
    ("end_time < '2026-13-01'", "'2026-13-01' is not a time"),
])
def test_mlflow_habits_explain_themselves(text: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        query.parse(text)
    assert message in str(info.value)


def test_three_valued_logic() -> None:
    run = FakeRun("r", params={"a": 1})
    t, f, u = "params.a = 1", "params.a = 2", "params.missing = 1"
    assert truth(t, run) is True and truth(f, run) is False and truth(u, run) is None
    table = {
        f"NOT {u}": None, f"NOT {t}": False, f"NOT {f}": True,
        f"{t} AND {u}": None, f"{f} AND {u}": False, f"{u} AND {u}": None, f"{t} AND {t}": True,
        f"{t} OR {u}": True, f"{f} OR {u}": None, f"{f} OR {f}": False,
        f"NOT ({f} OR {u})": None, f"NOT ({f} AND {u})": True,
        "params.a IN (1, 'x')": True, "params.a IN (2, 3)": False,
        "params.a IN (2, 'x')": None, "params.a NOT IN (2, 'x')": None, "params.missing IN (1)": None,
        "params.a NOT IN (2)": True, "params.a NOT IN (1)": False, "params.missing NOT IN (1)": None,
        "params.a IS NULL": False, "params.missing IS NULL": True, "NOT params.missing IS NULL": False,
    }
    for text, expected in table.items():
        assert truth(text, run) is expected, text


def test_not_does_not_match_missing_keys() -> None:
    runs = [FakeRun("a", params={"opt": "adam"}), FakeRun("b", params={"opt": "sgd"}), FakeRun("c")]
    assert [r.id for r in query.filter_runs(query.parse("NOT params.opt = 'adam'"), runs)] == ["b"]
    assert [r.id for r in query.filter_runs(query.parse("params.opt != 'adam'"), runs)] == ["b"]
    assert [r.id for r in query.filter_runs(
        query.parse("params.opt != 'adam' OR params.opt IS NULL"), runs)] == ["b", "c"]


def test_nan_metric_is_null() -> None:
    run = FakeRun("r", metrics={"loss": math.nan, "inf": math.inf})
    assert matches("metrics.loss IS NULL AND metrics.inf IS NOT NULL AND metrics.inf > 1e300", run)
    for text in ["metrics.loss = 0", "metrics.loss != 0", "metrics.loss < 1", "metrics.loss IN (1)"]:
        assert truth(text, run) is None


@pytest.mark.parametrize(
    ("pattern", "value", "like", "ilike"),
    [
        ("ad%", "adam", True, True),
        ("AD%", "adam", False, True),
        ("a_am", "adam", True, True),
        ("a_am", "adaam", False, False),
        ("%", "", True, True),
        ("_", "", False, False),
        ("%m", "adam\nadam", True, True),
        ("50\\%", "50%", True, True),
        ("50\\%", "500", False, False),
        ("a\\_b", "a_b", True, True),
        ("a\\_b", "axb", False, False),
        ("%\\\\%", "back\\slash", True, True),
        ("\\a", "a", True, True),
        ("a.*", "a.*", True, True),
        ("a.*", "abc", False, False),
        ("[ab]", "a", False, False),
        ("é%", "École", False, False),  # ILIKE folds ASCII only (SQLite's lower())
        ("é%", "école", True, True),
        ("ÉCOLE", "École", False, True),
        ("ÉCOLE", "Écolé", False, False),
        ("Écol_", "École", True, True),
        ("x''y", "x'y", True, True),
    ],
)
def test_like(engine: sa.Engine, pattern: str, value: str, like: bool, ilike: bool) -> None:
    run = FakeRun("r", tags={"t": value})
    load(engine, [run])
    cases = [("LIKE", like), ("NOT LIKE", not like), ("ILIKE", ilike), ("NOT ILIKE", not ilike)]
    for word, expected in cases:
        expr = query.parse(f"tags.t {word} '{pattern}'")
        assert query.evaluate(expr, run) is expected, word
        assert sql_ids(engine, expr, []) == (["r"] if expected else []), word


def test_like_on_bool_and_json_params() -> None:
    run = FakeRun("r", params={"b": False, "l": ["x", 1]})
    assert matches("params.b LIKE 'f%' AND params.l LIKE '[\"x\",%'", run)


def test_text_comparisons_by_code_point() -> None:
    run = FakeRun("r", tags={"t": "b"})
    assert matches("tags.t > 'a' AND tags.t < 'c' AND tags.t > 'B' AND tags.t < 'é'", run)


def test_duck_typed_run_info() -> None:
    from labvault.domain import RunInfo

    info = RunInfo(id="x", experiment_id="e", number=3, name="n", parent_id=None, status="running",
                   start_time=1.0, params={"lr": 0.1}, tags={"t": "v"}, metrics={"acc": 0.9})
    assert matches("params.lr < 1 AND tags.t = 'v' AND metrics.acc > 0.5 AND number = 3 AND name = 'n'",
                   info)


# ------------------------------------------------------------------------------------------------------
# ordering


def test_parse_order_by() -> None:
    keys = query.parse_order_by(["metrics.acc DESC", "params.lr", "start_time asc", 'tags."a b" desc'])
    assert keys == [OrderKey(Field("metrics", "acc"), True), OrderKey(Field("params", "lr"), False),
                    OrderKey(Field("attributes", "start_time"), False), OrderKey(Field("tags", "a b"), True)]
    assert query.parse_order_by("metrics.acc desc, number") == [
        OrderKey(Field("metrics", "acc"), True), OrderKey(Field("attributes", "number"), False)]
    assert query.parse_order_by(None) == [] and query.parse_order_by([]) == []


@pytest.mark.parametrize("bad", ["", "  ", "metrics.acc sideways", "nope", "metrics.acc desc extra",
                                 "params.a = 1", "desc", "metrics.acc,", "foo.x", "params.'x"])
def test_parse_order_by_errors_name_the_item(bad: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        query.parse_order_by(["number", bad])
    assert repr(bad) in str(info.value)


def test_sort_nulls_last_both_directions_numbers_before_text() -> None:
    runs = [
        FakeRun("r1", number=1, params={"p": "b"}, metrics={"m": 0.5}),
        FakeRun("r2", number=2, params={"p": 2}, metrics={"m": math.nan}),
        FakeRun("r3", number=3, params={}, metrics={"m": 2.0}),
        FakeRun("r4", number=4, params={"p": "a"}, metrics={}),
        FakeRun("r5", number=5, params={"p": 10.5}, metrics={"m": -1.0}),
        FakeRun("r6", number=6, params={"p": None}, metrics={"m": 0.5}),
    ]

    def ids(*order: str) -> list[str]:
        return [r.id for r in query.sort_runs(runs, query.parse_order_by(list(order)))]

    assert ids("metrics.m") == ["r5", "r1", "r6", "r3", "r2", "r4"]
    assert ids("metrics.m desc") == ["r3", "r1", "r6", "r5", "r2", "r4"]
    assert ids("params.p") == ["r2", "r5", "r4", "r1", "r3", "r6"]
    assert ids("params.p desc") == ["r5", "r2", "r1", "r4", "r3", "r6"]
    assert ids("metrics.m", "params.p desc") == ["r5", "r1", "r6", "r3", "r2", "r4"]
    assert ids() == ["r1", "r2", "r3", "r4", "r5", "r6"]
    assert ids("metrics.m desc", "number desc") == ["r3", "r6", "r1", "r5", "r4", "r2"]


def test_sort_ties_by_number_then_id() -> None:
    runs = [FakeRun("b", number=2), FakeRun("c", number=1), FakeRun("a", number=2)]
    assert [r.id for r in query.sort_runs(runs, [])] == ["c", "a", "b"]
    assert [r.id for r in query.sort_runs(runs, query.parse_order_by("status desc"))] == ["c", "a", "b"]


# ------------------------------------------------------------------------------------------------------
# SQL: a tiny schema, a resolver, and the equivalence property

metadata = sa.MetaData()
t_runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("experiment_id", sa.String, nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("name", sa.String),
    sa.Column("parent_id", sa.String),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("start_time", sa.Float, nullable=False),
    sa.Column("end_time", sa.Float),
)
t_params = sa.Table(
    "run_params", metadata,
    sa.Column("run_id", sa.String, primary_key=True), sa.Column("key", sa.String, primary_key=True),
    sa.Column("value_num", sa.Float), sa.Column("value_text", sa.String),
)
t_tags = sa.Table(
    "run_tags", metadata,
    sa.Column("run_id", sa.String, primary_key=True), sa.Column("key", sa.String, primary_key=True),
    sa.Column("value", sa.String, nullable=False),
)
t_metrics = sa.Table(
    "run_metrics", metadata,
    sa.Column("run_id", sa.String, primary_key=True), sa.Column("key", sa.String, primary_key=True),
    sa.Column("value", sa.Float),
)


def resolve(fld: Field, kind: str) -> sa.ColumnElement[Any]:
    r = t_runs
    if fld.kind == "params":
        col = t_params.c.value_num if kind == "number" else t_params.c.value_text
        return (sa.select(col).where(t_params.c.run_id == r.c.id, t_params.c.key == fld.key)
                .correlate(r).scalar_subquery())
    if fld.kind == "metrics":
        if kind != "number":
            return sa.null()
        return (sa.select(t_metrics.c.value).where(t_metrics.c.run_id == r.c.id, t_metrics.c.key == fld.key)
                .correlate(r).scalar_subquery())
    if fld.kind == "tags":
        if kind != "text":
            return sa.null()
        return (sa.select(t_tags.c.value).where(t_tags.c.run_id == r.c.id, t_tags.c.key == fld.key)
                .correlate(r).scalar_subquery())
    return r.c[fld.key] if query.ATTRIBUTES[fld.key] == kind else sa.null()


def param_row(run_id: str, key: str, value: Any) -> dict[str, Any]:
    num: float | None = None
    text: str | None = None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        try:
            num = float(value)
        except OverflowError:
            text = str(value)
    elif isinstance(value, str):
        text = value
    elif value is not None:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return {"run_id": run_id, "key": key, "value_num": num, "value_text": text}


@pytest.fixture(scope="module")
def engine() -> Iterator[sa.Engine]:
    eng = sa.create_engine("sqlite://", poolclass=sa.StaticPool)

    @sa.event.listens_for(eng, "connect")
    def _pragma(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA case_sensitive_like=ON")

    metadata.create_all(eng)
    yield eng
    eng.dispose()


def load(engine: sa.Engine, runs: list[FakeRun]) -> None:
    rows: dict[sa.Table, list[dict[str, Any]]] = {
        t_runs: [{"id": r.id, "experiment_id": r.experiment_id, "number": r.number, "name": r.name,
                  "parent_id": r.parent_id, "status": r.status, "start_time": r.start_time,
                  "end_time": r.end_time} for r in runs],
        t_params: [param_row(r.id, k, v) for r in runs for k, v in r.params.items()],
        t_tags: [{"run_id": r.id, "key": k, "value": v} for r in runs for k, v in r.tags.items()],
        t_metrics: [{"run_id": r.id, "key": k, "value": v} for r in runs for k, v in r.metrics.items()],
    }
    with engine.begin() as conn:
        for table, table_rows in rows.items():
            conn.execute(table.delete())
            if table_rows:
                conn.execute(table.insert(), table_rows)


def sql_ids(engine: sa.Engine, expr: query.Expr, order: list[OrderKey]) -> list[str]:
    stmt = (sa.select(t_runs.c.id).where(query.compile_sql(expr, resolve))
            .order_by(*query.compile_order_sql(order, resolve)))
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(stmt)]


def memory_ids(runs: list[FakeRun], expr: query.Expr, order: list[OrderKey]) -> list[str]:
    return [r.id for r in query.sort_runs(query.filter_runs(expr, runs), order)]


def test_sql_binds_every_literal(engine: sa.Engine) -> None:
    evil = "x'); DROP TABLE runs; --"
    expr = query.parse(f"tags.t = '{evil.replace(chr(39), chr(39) * 2)}' OR params.a IN (1, 'x; --')"
                       f" OR name LIKE '%DROP%'")
    compiled = query.compile_sql(expr, resolve).compile(dialect=engine.dialect)
    assert "DROP" not in str(compiled)
    assert evil in compiled.params.values()
    load(engine, [FakeRun("r1", tags={"t": evil}), FakeRun("r2", name="DROP")])
    assert sql_ids(engine, expr, []) == ["r1", "r2"]


def test_sql_true_expr(engine: sa.Engine) -> None:
    runs = [FakeRun("b", number=2), FakeRun("a", number=2), FakeRun("c", number=1)]
    load(engine, runs)
    assert sql_ids(engine, TrueExpr(), []) == memory_ids(runs, TrueExpr(), []) == ["c", "a", "b"]


def test_sql_three_valued_examples(engine: sa.Engine) -> None:
    runs = [FakeRun("a", number=1, params={"opt": "adam", "lr": 0.1}), FakeRun("b", number=2,
            params={"opt": "sgd", "lr": "auto"}), FakeRun("c", number=3, metrics={"m": math.nan})]
    load(engine, runs)
    for text in ["NOT params.opt = 'adam'", "params.lr NOT IN (0.1, 'x')", "NOT params.lr < 1",
                 "metrics.m IS NULL", "NOT (params.opt = 'x' AND params.lr = 0.1)", "params.lr IS NOT NULL"]:
        expr = query.parse(text)
        assert sql_ids(engine, expr, []) == memory_ids(runs, expr, []), text


def test_import_is_cheap() -> None:
    code = ("import sys, labvault; before = set(sys.modules); import labvault.query; "
            "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] == 'sqlalchemy'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the property ------------------------------------------------------------------------------------

KEYS = ["a", "val/loss", "my key"]
NUMBERS = [-2, 0, 0.5, 1, 2]  # values and literals share small pools, so comparisons often hit equality
TEXTS = ["a", "A", "ab", "é", "É", "École", "", "x'y", "true", "1", "a%b", "a_b", "back\\slash",
         "line\nbreak"]
ODD_PARAMS = [-0.0, 1e-3, 1e300, 2**70, 10**400, True, False, None, [1, 2], {"z": 1, "a": [True, None]},
              ["é"]]
PARAM_VALUES = st.one_of(st.sampled_from(NUMBERS), st.sampled_from(TEXTS), st.sampled_from(ODD_PARAMS))
METRIC_VALUES = st.one_of(st.sampled_from(NUMBERS).map(float),
                          st.sampled_from([1e-3, math.nan, math.inf, -math.inf]))
NUMBER_LITERALS = ["-2", "0", "-0", "0.5", "5e-1", "1", "2", "2.0", "3", "1e-3", "1e300",
                   "1180591620717411303424"]
STRING_LITERALS = ["'" + t.replace("'", "''") + "'" for t in TEXTS] + [
    "true", "false", "'[1,2]'", "'{\"a\":[true,null],\"z\":1}'", "'[\"é\"]'", f"'{10**400}'",
    "'finished'", "'FINISHED'", "'running'", "'r1'", "'e1'"]
TIME_LITERALS = ["'1970-01-01'", "'1970-01-01T00:00:02Z'", "'1970-01-01T00:00:00.5'",
                 "'1970-01-01T01:00:02+01:00'", "'2023-11-14T22:13:20.25Z'", "'0.5'", "'2'"]  # ISO or numbers
PATTERNS = ["'a%'", "'%b'", "'_'", "'%'", "''", "'A%'", "'é%'", "'É%'", "'a\\%b'", "'a\\_b'", "'%\\\\%'",
            "'x''%'", "'%1%'", "'r_'", "'_%'", "'[%'", "'%,%'", "'%\nbreak'", "'\\a%'", "'%É%'", "'éCOLE'",
            "'%IN%'"]


@st.composite
def runs_strategy(draw: st.DrawFn) -> list[FakeRun]:
    ids = draw(st.lists(st.text("abAB01-", min_size=1, max_size=3), min_size=0, max_size=10, unique=True))
    out = []
    for run_id in ids:
        out.append(FakeRun(
            id=run_id,
            experiment_id=draw(st.sampled_from(["e1", "e2"])),
            number=draw(st.integers(0, 3)),
            name=draw(st.one_of(st.none(), st.sampled_from(TEXTS))),
            parent_id=draw(st.one_of(st.none(), st.sampled_from(["r1", "a"]))),
            status=draw(st.sampled_from(["running", "finished", "FINISHED", "a"])),
            start_time=draw(st.sampled_from([0.0, 0.5, 2.0, 1_700_000_000.25])),
            end_time=draw(st.one_of(st.none(), st.sampled_from([1.0, 2.0]))),
            params=draw(st.dictionaries(st.sampled_from(KEYS), PARAM_VALUES, min_size=1, max_size=4)),
            tags=draw(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(TEXTS), max_size=4)),
            metrics=draw(st.dictionaries(st.sampled_from(KEYS), METRIC_VALUES, min_size=1, max_size=4)),
        ))
    return out


@st.composite
def field_text(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["params", "param", "metrics", "metric", "tags", "tag", "attr"]))
    if kind == "attr":
        name = draw(st.sampled_from(list(query.ATTRIBUTES)))
        return draw(st.sampled_from([name, name.upper(), f"attributes.{name}", f"attr.{name}"]))
    key = draw(st.sampled_from(KEYS))
    if " " in key or draw(st.booleans()):
        key = draw(st.sampled_from([f'"{key}"', f"`{key}`"]))
    return f"{kind}.{key}"


LITERALS = st.sampled_from(NUMBER_LITERALS + STRING_LITERALS)
TIMES = st.sampled_from(NUMBER_LITERALS + TIME_LITERALS)


def is_time(fld: str) -> bool:
    """Whether a field text names start_time or end_time (whose string literals must be times)."""
    return fld.lower().rpartition(".")[2] in ("start_time", "end_time")


@st.composite
def predicate(draw: st.DrawFn) -> str:
    fld = draw(field_text())
    literals = TIMES if is_time(fld) else LITERALS
    kind = draw(st.sampled_from(["cmp", "cmp", "in", "null", "like"]))
    if kind == "cmp":
        op = draw(st.sampled_from(["=", "==", "!=", "<>", "<", "<=", ">", ">="]))
        return f"{fld} {op} {draw(literals)}"
    if kind == "in":
        values = draw(st.lists(literals, min_size=1, max_size=4))
        return f"{fld} {draw(st.sampled_from(['IN', 'NOT IN']))} ({', '.join(values)})"
    if kind == "null":
        return f"{fld} IS {draw(st.sampled_from(['', 'NOT ']))}NULL"
    word = draw(st.sampled_from(["LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"]))
    return f"{fld} {word} {draw(st.sampled_from(PATTERNS))}"


FILTERS = st.recursive(
    predicate(),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["AND", "OR"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, inner, inner).map(lambda t: f"{t[0]} OR {t[1]} AND {t[2]}"),
        inner.map(lambda f: f"NOT {f}"),
    ),
    max_leaves=6,
)
ORDERS = st.lists(st.tuples(field_text(), st.sampled_from(["", " asc", " DESC"])).map("".join), max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs=runs_strategy(), filters=st.lists(FILTERS, min_size=1, max_size=6),
       orders=st.lists(ORDERS, min_size=1, max_size=2))
def test_memory_and_sql_agree(engine: sa.Engine, runs: list[FakeRun], filters: list[str],
                              orders: list[list[str]]) -> None:
    load(engine, runs)
    for text in filters:
        expr = query.parse(text)
        for order_text in orders:
            order = query.parse_order_by(order_text)
            for e in (expr, Not(expr)):  # TRUE and FALSE sets agree, so UNKNOWN ones do too
                expected = memory_ids(runs, e, order)
                got = sql_ids(engine, e, order)
                assert got == expected, f"filter {e!r} order {order_text!r}: sql {got} memory {expected}"


def test_every_predicate_agrees(engine: sa.Engine) -> None:
    """Exhaustive over single predicates: every field kind x operator x literal / pattern, on runs that
    hold every kind of value, in memory and in SQL, for the predicate and its negation."""
    def is_number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < 1e308

    runs = [FakeRun("none", number=1)]
    values: list[Any] = [*NUMBERS, *TEXTS, *ODD_PARAMS, math.nan, math.inf, -math.inf]
    for i, value in enumerate(values):
        run = FakeRun(f"r{i:02d}", number=i % 3, parent_id=None if i % 2 else "r1")
        if isinstance(value, str):
            run.tags["t"] = run.name = run.status = value
        if is_number(value) or isinstance(value, float):  # NaN and infinities are metrics, not params
            run.metrics["m"] = float(value)
        if is_number(value):
            run.start_time = float(value)
        if not isinstance(value, float) or math.isfinite(value):
            run.params["p"] = value
        runs.append(run)
    load(engine, runs)
    fields = ["params.p", "tags.t", "metrics.m", "name", "status", "number", "start_time", "parent_id"]
    checked = 0
    for fld in fields:
        texts = [f"{fld} IS NULL", f"{fld} IS NOT NULL"]
        texts += [f"{fld} {op} {lit}" for op in ["=", "!=", "<", "<=", ">", ">="]
                  for lit in NUMBER_LITERALS + (TIME_LITERALS if is_time(fld) else STRING_LITERALS)]
        texts += [f"{fld} {word} {pat}" for word in ["LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"]
                  for pat in PATTERNS]
        if is_time(fld):
            texts += [f"{fld} IN (0, '1970-01-01T00:00:02Z', 2)", f"{fld} NOT IN (0.5, '0.5')"]
        else:
            texts += [f"{fld} IN (0, 'a', 2)", f"{fld} NOT IN (0.5, 'A')", f"{fld} IN ('true', '')"]
        for text in texts:
            expr = query.parse(text)
            for e, order in [(expr, [OrderKey(query.parse_order_by(fld)[0].field, False)]),
                             (Not(expr), [OrderKey(query.parse_order_by(fld)[0].field, True)])]:
                assert sql_ids(engine, e, order) == memory_ids(runs, e, order), (e, order)
                checked += 1
    assert checked > 4500
