"""Runs as rows and rows as runs: value encoding, row decoding and search compilation of the SQL stores.

* Writes: a param's typed columns (``param_columns``: ``value_json`` plus ``value_num`` for int/float, not
  bool, values and ``value_text`` for everything else: strings as they are, bools as ``"true"`` /
  ``"false"``, other JSON as compact sorted ``json.dumps``, JSON null as NULL), the rows of a run's
  params (``param_rows``) and of a metric flush (``metric_rows``: columnar segments plus the latest
  point of each key).
* Reads: ``run_infos`` turns rows of ``RUN_COLUMNS`` plus the two JSON detail columns (latest metrics,
  results) into ``RunInfo``; ``metric_series`` concatenates a key's segments into one ``MetricSeries``;
  ``index_records`` feeds the in-process run index.
* Search: ``search_statement`` compiles a filter and an ordering into one SELECT. The filter becomes
  correlated joins (exact three-valued logic): each (kind, key) it refers to is one join of
  ``run_params`` / ``metric_latest`` / ``run_tags`` on ``(run_id, key)``, an INNER JOIN for the keys every
  match must have (``_required_field``), so the database can start from the version-3 (key, value)
  indexes. Each run's latest metrics and results come back in the same row as JSON objects built by the
  database (``json_group_object`` / ``json_object_agg``: the dialect's ``_detail_columns``).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import orjson
import sqlalchemy as sa

from labvault import query
from labvault.domain import MetricSeries, RunInfo
from labvault.errors import CorruptDataError, InvalidArgumentError
from labvault.store.search.columns import no_gc
from labvault.store.search.runindex import Record, make_record
from labvault.store.sql.schema import RUN_COLUMNS, SEGMENT_POINTS, t_latest, t_params, t_runs, t_tags

if TYPE_CHECKING:
    from labvault.query import Expr, Field, OrderKey

__all__ = ["PAGE_FIRST_LIMIT", "index_records", "metric_rows", "metric_series", "new_id", "param_columns",
           "param_rows", "run_infos", "search_statement"]

#: Searches with a limit up to this many runs fetch the ordered ids first, then the page's details.
PAGE_FIRST_LIMIT = 10_000


def new_id() -> str:
    """A fresh 32-hex-digit id."""
    return uuid.uuid4().hex


# -- value encoding ---------------------------------------------------------------------------------------
def from_json(raw: str | bytes) -> Any:
    """Parse a stored JSON document: orjson (fast), or json for integers beyond 64 bits."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def to_json(value: Any) -> str:
    """A validated JSON value as compact text: orjson, or json for what orjson refuses (big integers)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def param_columns(value: Any) -> tuple[str, float | None, str | None]:
    """(value_json, value_num, value_text) of a param as the query compiler expects them."""
    text: str | None = None
    num: float | None = None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        try:
            num = float(value)
        except OverflowError:  # an int beyond the double range: searchable as text only
            text = str(value)
    elif isinstance(value, str):
        text = value
    elif value is not None:
        text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return to_json(value), num, text


def param_rows(run_id: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``run_params`` rows of a run's params."""
    rows = []
    for key, value in params.items():
        js, num, text = param_columns(value)
        rows.append({"run_id": run_id, "key": key, "value_json": js, "value_num": num,
                     "value_text": text})
    return rows


def _blob(array: np.ndarray[Any, Any], dtype: str) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def metric_rows(run_id: str, series: list[MetricSeries], batch_id: str
                ) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """A flush as rows: (key, segment row without ``seq``) per segment of at most ``SEGMENT_POINTS``
    points, and the ``metric_latest`` row of each key (a NaN latest value as NULL)."""
    pieces: list[tuple[str, dict[str, Any]]] = []
    latest: dict[str, dict[str, Any]] = {}
    for s in series:
        n = len(s)
        for start in range(0, n, SEGMENT_POINTS):
            end = min(n, start + SEGMENT_POINTS)
            pieces.append((s.key, {
                "run_id": run_id, "key": s.key, "n": end - start, "batch_id": batch_id,
                "steps": _blob(s.steps[start:end], "<i8"),
                "values": _blob(s.values[start:end], "<f8"),
                "timestamps": _blob(s.timestamps[start:end], "<f8"),
            }))
        value, step, stamp = s.last()
        latest[s.key] = {"run_id": run_id, "key": s.key, "step": step, "timestamp": stamp,
                         "value": None if math.isnan(value) else value}
    return pieces, latest


# -- row decoding -----------------------------------------------------------------------------------------
def run_infos(rows: Sequence[Any]) -> list[RunInfo]:
    """RunInfos from rows of ``RUN_COLUMNS`` followed by the two detail columns (latest metrics, results).

    A NULL latest value is NaN; a string one is an infinity (SQLite's detail columns send ``"inf"``).
    """
    loads = from_json
    nan = math.nan
    out = []
    for (run_id, experiment_id, number, name, parent_id, status, start_time, end_time, error,
         heartbeat, params_json, tags_json, metrics_json, results_json) in rows:
        metrics = loads(metrics_json) if metrics_json else {}
        for key, value in metrics.items():
            if value is None:  # a NaN latest value is stored as NULL
                metrics[key] = nan
            elif value.__class__ is str:  # an infinity (see SQLBackend._detail_columns)
                metrics[key] = float(value)
        out.append(RunInfo(
            id=run_id, experiment_id=experiment_id, number=number, name=name, parent_id=parent_id,
            status=status, start_time=start_time, end_time=end_time, error=error, heartbeat=heartbeat,
            params=loads(params_json), tags=loads(tags_json), metrics=metrics,
            results=loads(results_json) if results_json else {},
        ))
    return out


def index_records(rows: Sequence[Any]) -> list[Record]:
    """Run-index records from rows as ``run_infos`` reads them."""
    with no_gc(len(rows) > 500):
        return [make_record(i.id, i.experiment_id, i.number, i.name, i.parent_id, i.status, i.start_time,
                            i.end_time, i.error, i.heartbeat, i.params, i.tags, i.metrics, i.results)
                for i in run_infos(rows)]


def metric_series(run_id: str, key: str, rows: Sequence[Any], where: str) -> MetricSeries:
    """A metric's ``metric_segments`` rows ``(n, steps, values, timestamps)``, in order, as one series;
    a segment of the wrong size raises ``CorruptDataError`` (its message starts with ``where``)."""
    if not rows:
        return MetricSeries.empty(key)
    total = sum(int(row[0]) for row in rows)
    steps = np.empty(total, dtype=np.int64)
    values = np.empty(total, dtype=np.float64)
    stamps = np.empty(total, dtype=np.float64)
    pos = 0
    for n, s_blob, v_blob, t_blob in rows:
        if not (len(s_blob) == len(v_blob) == len(t_blob) == n * 8):
            raise CorruptDataError(f"{where}: a segment of metric {key!r} of run {run_id} has the wrong size")
        steps[pos:pos + n] = np.frombuffer(s_blob, dtype="<i8")
        values[pos:pos + n] = np.frombuffer(v_blob, dtype="<f8")
        stamps[pos:pos + n] = np.frombuffer(t_blob, dtype="<f8")
        pos += n
    return MetricSeries(key, steps, values, stamps)


# -- search -----------------------------------------------------------------------------------------------
def search_statement(experiment_ids: Sequence[str], expr: Expr, order: Sequence[OrderKey],
                     limit: int | None, offset: int, details: Sequence[sa.ColumnElement[Any]], *,
                     ids_only: bool = False) -> sa.Select[Any]:
    """The SELECT of a search: ``RUN_COLUMNS`` plus ``details`` (just the ordered ids with ``ids_only``)."""
    r = t_runs
    fields = _FieldJoins()
    conditions: list[sa.ColumnElement[bool]] = [r.c.experiment_id.in_(experiment_ids)]
    if not isinstance(expr, query.TrueExpr):
        items = expr.items if isinstance(expr, query.And) else (expr,)
        for item in items:  # rows that every match must have: inner joins the database can start from
            required = _required_field(item)
            if required is not None:
                fields.require(required)
        conditions += [query.compile_sql(item, fields) for item in items]
    ordering = query.compile_order_sql(order, fields)  # ends with number, id
    # The page's latest metrics and results ride along as JSON objects built by the database, so a
    # search is one query whatever the number of matches.
    columns = (r.c.id,) if ids_only else (*RUN_COLUMNS, *details)
    stmt = sa.select(*columns).select_from(fields.joined(r)).where(*conditions).order_by(*ordering)
    if limit is not None:
        stmt = stmt.limit(limit)
    if offset:
        stmt = stmt.offset(offset)
    return stmt


class _FieldJoins:
    """The query compiler's resolver for one search: each (kind, key) a filter or ordering refers to is
    one join of ``run_params`` / ``metric_latest`` / ``run_tags`` on ``(run_id, key)``.

    Every run has at most one row per key (the primary key), so a join never multiplies runs, and a
    LEFT JOIN gives exactly the NULL a missing key must compare as. A key that every match must have
    (see ``_required_field``) is an INNER JOIN instead: that changes nothing about which runs match,
    but lets the database start from the (key, value) index of schema version 3 rather than from every
    run of the experiments, and join the rest by hash or by primary key as it sees fit.
    """

    _TABLES: ClassVar[dict[str, sa.Table]] = {"params": t_params, "metrics": t_latest, "tags": t_tags}

    def __init__(self) -> None:
        self._aliases: dict[tuple[str, str], Any] = {}
        self._required: set[tuple[str, str]] = set()

    def require(self, field: Field) -> None:
        """Every matching run has a row for ``field``: join it as an INNER JOIN."""
        self._alias(field)
        self._required.add((field.kind, field.key))

    def _alias(self, field: Field) -> Any:
        alias = self._aliases.get((field.kind, field.key))
        if alias is None:
            alias = self._TABLES[field.kind].alias(f"f{len(self._aliases)}")
            self._aliases[(field.kind, field.key)] = alias
        return alias

    def __call__(self, field: Field, kind: str) -> sa.ColumnElement[Any]:
        """A field's numeric (``kind="number"``) or text value for the current run row, or NULL."""
        number = kind == "number"
        if field.kind == "params":
            alias = self._alias(field)
            return alias.c.value_num if number else alias.c.value_text  # type: ignore[no-any-return]
        if field.kind == "metrics":
            return self._alias(field).c.value if number else sa.null()
        if field.kind == "tags":
            return sa.null() if number else self._alias(field).c.value
        if field.kind == "attributes":
            attr = t_runs.c.get(field.key)
            if attr is None:
                return sa.null()
            is_number = isinstance(attr.type, sa.Integer | sa.Double | sa.Float)
            return attr if is_number == number else sa.null()
        raise InvalidArgumentError(f"cannot search on {field.kind}.{field.key}")

    def joined(self, runs: sa.Table) -> Any:
        """``runs`` joined with every referenced key, the required ones first."""
        source: Any = runs
        ordered = sorted(self._aliases.items(), key=lambda item: item[0] not in self._required)
        for (kind, key), alias in ordered:
            on = sa.and_(alias.c.run_id == runs.c.id, alias.c.key == key)
            source = source.join(alias, on) if (kind, key) in self._required else source.outerjoin(alias, on)
        return source


def _required_field(item: Any) -> Field | None:
    """The param, metric or tag a top-level conjunct can only be TRUE for when the run has its row.

    A comparison, an IN list, a LIKE and an IS NOT NULL are UNKNOWN for a missing key, so in an AND at
    the top of the filter (outside any NOT) their key's row is required; IS NULL, NOT and OR are not.
    """
    needs_row = isinstance(item, query.Compare) or (
        isinstance(item, query.InList | query.Like) and not item.negated) or (
        isinstance(item, query.IsNull) and item.negated)
    if not needs_row or item.field.kind not in ("params", "metrics", "tags"):
        return None
    field: Field = item.field
    return field
