"""Property test: the memory oracle and the SQL compiler agree on every filter and ordering.

Random runs (params of mixed types, tags, metrics including NaN, missing keys) are written to a memory
store and a real SQLite store; random queries built from the whole grammar must return the same runs in
the same order from both.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labvault
from labvault import query
from labvault.client.vault import Vault

PARAM_VALUES = st.one_of(
    st.integers(-3, 3), st.sampled_from([0.5, -1.5, 2.0, 1e-3]),
    st.sampled_from(["a", "b", "ab", "B", "a_b"]),
    st.booleans(), st.none(), st.just([1, 2]),
)
TAG_VALUES = st.sampled_from(["x", "y", "xy", "X", "1", "2.5"])
METRIC_VALUES = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0, -2.0]), st.just(math.nan))
KEYS = ["k1", "k2", "k3"]

RUN = st.fixed_dictionaries({
    "params": st.dictionaries(st.sampled_from(KEYS), PARAM_VALUES, max_size=3),
    "tags": st.dictionaries(st.sampled_from(KEYS), TAG_VALUES, max_size=3),
    "metrics": st.dictionaries(st.sampled_from(KEYS), METRIC_VALUES, max_size=3),
    "name": st.sampled_from(["r-a", "r-b", None]),
})

FIELDS = st.sampled_from(
    [f"params.{k}" for k in KEYS] + [f"tags.{k}" for k in KEYS] + [f"metrics.{k}" for k in KEYS]
    + ["number", "name", "status"]
)
LITERALS = st.one_of(
    st.sampled_from(["0", "1", "-1", "0.5", "2", "0.25", "-2", "1e-3"]),
    st.sampled_from(["'a'", "'b'", "'x'", "'1'", "'true'", "'[1,2]'", "'r-a'", "'finished'", "'X'"]),
)
PATTERNS = st.sampled_from(["'a%'", "'%b'", "'_'", "'x%'", "'%'", "'r-_'", "'A%'"])


@st.composite
def predicates(draw: st.DrawFn, fields: st.SearchStrategy[str] = FIELDS,
               literals: Callable[[str], st.SearchStrategy[str]] = lambda field: LITERALS,
               patterns: st.SearchStrategy[str] = PATTERNS) -> str:
    """One comparison, IN list, IS NULL or LIKE on a field of ``fields`` (``literals(field)``: its values)."""
    field = draw(fields)
    kind = draw(st.sampled_from(["cmp", "in", "null", "like"]))
    if kind == "cmp":
        return f"{field} {draw(st.sampled_from(['=', '!=', '<', '<=', '>', '>=']))} {draw(literals(field))}"
    if kind == "in":
        values = draw(st.lists(literals(field), min_size=1, max_size=3))
        return f"{field} {draw(st.sampled_from(['IN', 'NOT IN']))} ({', '.join(values)})"
    if kind == "null":
        return f"{field} IS {draw(st.sampled_from(['', 'NOT ']))}NULL"
    return f"{field} {draw(st.sampled_from(['LIKE', 'NOT LIKE', 'ILIKE']))} {draw(patterns)}"


def filters_of(leaves: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Filters of up to four ``leaves`` joined by AND, OR and NOT."""
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["AND", "OR"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            inner.map(lambda f: f"NOT {f}"),
        ),
        max_leaves=4,
    )


def orders_of(fields: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """ORDER BY lists of up to two of ``fields``, each with no direction, asc or desc."""
    return st.lists(st.tuples(fields, st.sampled_from(["", " asc", " desc"])).map("".join), max_size=2)


FILTERS = filters_of(predicates())
ORDERS = orders_of(FIELDS)


def _fill(vault: Vault, runs: list[dict[str, Any]]) -> None:
    exp = vault.experiment("prop")
    for spec in runs:
        with exp.start_run(name=spec["name"], params=spec["params"], tags=spec["tags"]) as run:
            for key, value in spec["metrics"].items():
                run.log_metric(key, value)


def check_agrees_with_memory(label: str, indexed: Vault, plain: Vault, runs: list[dict[str, Any]],
                             filters: list[str], orders: list[list[str]]) -> None:
    """Write ``runs`` to a fresh experiment of ``indexed`` and of a memory oracle; every filter and order
    must give the oracle's runs in its order from ``indexed`` (its run index) and ``plain`` (the same store
    with its index switched off). Shared by the PostgreSQL and Redis tests."""
    name = uuid.uuid4().hex
    with labvault.open(f"memory://{name}") as oracle:
        for vault in (oracle, indexed):
            exp = vault.experiment(name)
            for spec in runs:
                with exp.start_run(name=spec["name"], params=spec["params"], tags=spec["tags"]) as run:
                    for key, value in spec["metrics"].items():
                        run.log_metric(key, value)
        for flt in filters:
            for order in orders:
                expected = [r.number for r in oracle.search_runs(name, filter=flt, order_by=order)]
                for vault, how in ((indexed, "run index"), (plain, "without the index")):
                    got = [r.number for r in vault.search_runs(name, filter=flt, order_by=order)]
                    assert got == expected, f"filter {flt!r} order {order!r}: {label} ({how}) {got} " \
                                            f"memory {expected}"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Vault]]]:
    root = tmp_path_factory.mktemp("equiv")
    yield root, []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(RUN, min_size=1, max_size=8), filters=st.lists(FILTERS, min_size=1, max_size=5),
       orders=st.lists(ORDERS, min_size=1, max_size=3))
def test_memory_and_sqlite_agree(tmp_path: Path, runs: list[dict[str, Any]], filters: list[str],
                                 orders: list[list[str]]) -> None:
    name = uuid.uuid4().hex
    with labvault.open(f"memory://{name}") as oracle, \
            labvault.open(f"sqlite:///{tmp_path / name}.db") as sql, \
            labvault.open(f"sqlite:///{tmp_path / name}.db") as sql_only:
        sql_only.backend._index = None  # the same store searched in SQL instead of by the run index
        _fill(oracle, runs)
        _fill(sql, runs)
        for flt in filters:
            for order in orders:
                expected = [r.number for r in oracle.search_runs("prop", filter=flt, order_by=order)]
                got = [r.number for r in sql.search_runs("prop", filter=flt, order_by=order)]
                assert got == expected, f"filter {flt!r} order {order!r}: sqlite {got} memory {expected}"
                got = [r.number for r in sql_only.search_runs("prop", filter=flt, order_by=order)]
                assert got == expected, f"filter {flt!r} order {order!r}: SQL {got} memory {expected}"


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("params.lr >> 1", 12, "expected a value"),
        ("params.lr > ", 13, "expected a value"),
        ("params.lr = 'open", 13, "unterminated"),
        ("foo.lr = 1", 1, "unknown prefix"),
        ("bogus = 1", 1, "unknown field"),
        ("params.lr = 1 AND", 18, "expected a field"),
        ("(params.lr = 1", 15, "')'"),
        ("params.lr IN 1", 14, "'('"),
        ("params.lr NOT 1", 15, "LIKE, ILIKE or IN"),
        ("params.lr = 1 params.x = 2", 15, "unexpected"),
        ("params.lr ~ 1", 11, "unexpected character"),
        ("attributes.colour = 'red'", 1, "unknown attribute"),
    ],
)
def test_syntax_errors_point_at_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(labvault.InvalidArgumentError) as info:
        query.parse(text)
    message = str(info.value)
    assert f"column {column}:" in message and fragment in message, message
    assert text in message


def test_quoted_keys_and_aliases() -> None:
    expr = query.parse('metrics."val loss" < 1 and params.`my key` = \'x\' and metric.a/b > 0 and tag.t = 1')
    assert {str(f) for f in query.fields_of(expr)} == {"metrics.val loss", "params.my key", "metrics.a/b",
                                                      "tags.t"}
    assert query.parse("attributes.STATUS = 'x'") == query.parse("status = 'x'")
    assert query.parse("params.a == 1") == query.parse("params.a = 1")
    assert query.parse("params.a <> 1") == query.parse("params.a != 1")


def test_precedence_not_and_or() -> None:
    expr = query.parse("NOT params.a = 1 OR params.b = 2 AND params.c = 3")
    assert isinstance(expr, query.Or)
    assert isinstance(expr.items[0], query.Not)
    assert isinstance(expr.items[1], query.And)


def test_order_by_parsing() -> None:
    keys = query.parse_order_by(["metrics.acc DESC", "params.lr", "start_time asc"])
    assert [(str(k.field), k.descending) for k in keys] == [
        ("metrics.acc", True), ("params.lr", False), ("start_time", False)]
    for bad in ["", "metrics.acc sideways", "nope", "metrics.acc desc extra", "params.a = 1"]:
        with pytest.raises(labvault.InvalidArgumentError):
            query.parse_order_by([bad])
