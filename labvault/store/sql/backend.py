"""The SQLite backend, the base of the PostgreSQL one, and the SQL blob stores, on SQLAlchemy Core.

URIs: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``; parent directories are created.
Options: ``busy_timeout`` (seconds a writer waits for another process's write lock, default 30), also
accepted as a URI query parameter.

Artifact bytes (unless a store is given with ``artifacts=``) go to a ``TieredBlobStore``: blobs of at most
``SMALL_BLOB_LIMIT`` bytes (64 KiB) live inside the database (``SQLBlobStore``: one transaction, no file
to create or fsync), larger ones in a ``FileBlobStore`` in the sibling directory ``<stem>-blobs``
(``./data/lv.db`` -> ``./data/lv-blobs``), created when the first large blob arrives. Reads try the
database first, then the folder.

Schema (version 5)::

    meta(key PK, value)                                   -- schema_version
    experiments(id PK, name, project, created_at, run_counter, UNIQUE(project, name))
    runs(id PK, experiment_id FK, number, name, parent_id, status, start_time, end_time, error,
         heartbeat, params_json, tags_json, UNIQUE(experiment_id, number))
    run_params(run_id FK, key, value_json, value_num, value_text, PK(run_id, key))
    run_tags(run_id FK, key, value, PK(run_id, key))
    run_results(run_id FK, key, value_json, PK(run_id, key))
    metric_segments(run_id FK, key, seq, n, steps, "values", timestamps, batch_id, PK(run_id, key, seq))
    metric_latest(run_id FK, key, value, step, timestamp, PK(run_id, key))      -- new in version 2
    artifacts(run_id FK, key, digest, size, created_at, PK(run_id, key))
    indexes on (key, value_num) and (key, value_text) of run_params, (key, value) of run_tags and
    metric_latest                                                               -- new in version 3
    blobs(key PK, blob_id, size, chunks, created_at)                            -- new in version 4
    blob_chunks(blob_id, idx, data, PK(blob_id, idx))                           -- new in version 4
    metric_segments.batch_id                                                    -- new in version 4
    runs.rev and its index                                                      -- new in version 5

Search and listings are one query: the filter compiles to correlated subqueries (exact three-valued
logic) plus, for each top-level comparison, an implied ``runs.id IN (SELECT run_id ... WHERE key = ? AND
value op ?)`` that the version-3 indexes answer; each run's latest metrics and results come back in the
same row as JSON objects built by the database (``json_group_object`` / ``json_object_agg``).

Every foreign key cascades on delete, so deleting an experiment removes its runs and everything hanging
off them (``parent_id`` is deliberately not a foreign key: like the memory backend, a child run in another
experiment keeps its parent id when the parent's experiment is deleted).

Metrics are columnar segments: one row per flush and key (large batches split every
``SEGMENT_POINTS`` points) holding the steps, values and timestamps as raw little-endian int64 / float64
bytes, so a history of a million points is a handful of rows read straight into numpy. ``metric_latest``
holds the last appended point of every (run, key), written in the same transaction as the segment, so
search and run listings never scan series. SQLite stores a NaN ``REAL`` as NULL, so a NULL latest value
reads back as NaN (PostgreSQL does the same, for one behaviour). Every flush carries a ``batch_id``
written on its segments (the caller's, ``log_metrics(..., batch_id=)``, else a random one): a retried
flush whose first commit may have succeeded, and any append that names a caller's id, looks for it
among the newest ``BATCH_MEMORY`` segments of the batch's first key before inserting, under the run's
row lock, so a point is never stored twice (see ``_run``).

A run's params and tags are stored twice, in one transaction: as one JSON document per run on ``runs``
(``params_json``, ``tags_json``), which is what listings read (one row per run instead of fifteen; 10,000
runs list in tens of milliseconds), and as one row per key in ``run_params`` / ``run_tags``, which is what
search filters and sorts on. Param rows keep their JSON text (``value_json``) plus the typed columns the
query compiler uses: ``value_num`` for int/float (not bool) values, ``value_text`` for everything else
(strings as they are, bools as ``"true"``/``"false"``, other JSON as compact sorted ``json.dumps``, JSON
null as NULL). Text columns that are compared or sorted use the ``C`` collation on PostgreSQL, so text
orders by code point as in SQLite and the memory model whatever the database's default collation.

Schema versions and migrations: a new, empty store is created at the current version on first use (no
setup step), serialized across processes by the write lock (SQLite) or an advisory lock (PostgreSQL). A
store at an older version is never upgraded silently: opening it raises ``UnsupportedOperationError``
naming ``labvault db upgrade``, which runs ``upgrade()``: every pending migration in ``MIGRATIONS`` in one
write transaction that re-reads the version under the lock, so several processes may run it at once (all
but the first find nothing to do). ``schema_metadata(version)`` describes the tables of every version, so
old layouts can be rebuilt (tests do) and fresh stores are created directly at the current one.

Transactions: every database access is a function ``work(conn, attempt)`` run by ``_run`` in one
transaction. On SQLite every write transaction starts with ``BEGIN IMMEDIATE`` (the driver runs in
autocommit mode and the ``begin`` event emits the statement), so concurrent writer processes queue on
the database lock for ``busy_timeout`` seconds instead of failing when a read transaction tries to
upgrade to a write. Reads use a plain deferred ``BEGIN`` (a consistent WAL snapshot across the few
queries of a listing). Dialects with a network in between (PostgreSQL) retry ``work`` after a lost
connection, with backoff, for ``retry_timeout`` seconds; ``attempt > 0`` tells ``work`` that an earlier
attempt may have committed, and every write is written to be idempotent under that rule. Driver errors
are translated at the boundary: locked / unable to open / connection lost -> ``BackendUnavailableError``,
"file is not a database" / malformed -> ``CorruptDataError``, a constraint -> ``ConflictError``.

Dialect differences live in a few hooks that ``labvault.store.sql.postgresql`` overrides: engine and
connection setup (``_create_engine``, ``_engine_options``), the dialect's ``insert`` for upserts
(``_insert``), the schema lock and table listing (``_lock_schema``, ``_prepare_schema``, ``_table_names``),
the JSON aggregates of listings (``_detail_columns``), which errors are worth a retry (``_retryable``)
and how the store is named in messages (``location``). Everything else is portable SQL.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
import secrets
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, Literal, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from labvault._uri import check_options
from labvault.blobs.abc import CHUNK_SIZE, BlobSource, BlobStore, iter_source
from labvault.domain import ArtifactInfo, ExperimentInfo, MetricSeries, RunInfo, now
from labvault.domain.model import BlobInfo
from labvault.errors import (
    BackendUnavailableError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
    UnsupportedOperationError,
)
from labvault.store.abc import BATCH_MEMORY, Backend, check_params_conflict, run_exists_error
from labvault.store.search.columns import no_gc as _no_gc
from labvault.store.search.runindex import Record, RunIndex, make_record

if TYPE_CHECKING:
    from labvault.query import Expr, Field, OrderKey

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SEGMENT_POINTS", "SMALL_BLOB_LIMIT", "SQLBackend", "SQLBlobStore",
           "TieredBlobStore", "schema_metadata", "upgrade"]

#: The schema version this code reads and writes.
SCHEMA_VERSION = 5
#: Points per ``metric_segments`` row at most (512 KiB per array); larger batches are split.
SEGMENT_POINTS = 65_536
#: Blobs up to this size live inside an SQLite store's database; larger ones in its blob folder.
SMALL_BLOB_LIMIT = 64 * 1024
_DEFAULT_BUSY_TIMEOUT = 30.0
_WRITE_OPTION = "labvault_write"
_LABVAULT_TABLES = frozenset({"experiments", "runs", "run_params", "run_tags", "run_results",
                              "metric_segments", "metric_latest", "artifacts", "blobs", "blob_chunks"})
#: First and longest pause between the attempts of a retried transaction (seconds).
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 2.0

T = TypeVar("T")
#: One database access: ``work(conn, attempt)`` inside a transaction (see ``SQLBackend._run``).
Work = Callable[[Connection, int], T]
Mode = Literal["read", "write", "autocommit"]


def new_id() -> str:
    """A fresh 32-hex-digit id."""
    return uuid.uuid4().hex


# -- schema -----------------------------------------------------------------------------------------------
#: Version 3: (key, value) indexes that let a filter find the runs holding a value.
#: Searches with a limit up to this many runs fetch the ordered ids first, then the page's details.
_PAGE_FIRST_LIMIT = 10_000

_SEARCH_INDEXES = (
    ("ix_run_params_key_num", "run_params", ("key", "value_num")),
    ("ix_run_params_key_text", "run_params", ("key", "value_text")),
    ("ix_run_tags_key_value", "run_tags", ("key", "value")),
    ("ix_metric_latest_key_value", "metric_latest", ("key", "value")),
)


def _text(length: int | None = None) -> sa.types.TypeEngine[str]:
    """A text column compared and sorted by code point: SQLite's default, ``COLLATE "C"`` on PostgreSQL."""
    base: sa.types.TypeEngine[str] = sa.String(length) if length else sa.Text()
    ordered: sa.types.TypeEngine[str] = sa.String(length, collation="C") if length else sa.Text(collation="C")
    return base.with_variant(ordered, "postgresql")


def schema_metadata(version: int = SCHEMA_VERSION) -> sa.MetaData:
    """The tables of schema ``version`` (1 to 4). Later versions add conditions here, never edit old ones."""
    if not 1 <= version <= SCHEMA_VERSION:
        raise InvalidArgumentError(f"unknown schema version {version}")
    md = sa.MetaData()
    Col = sa.Column

    def run_fk() -> sa.Column[str]:
        return Col("run_id", sa.String(64), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False)

    sa.Table("meta", md, Col("key", sa.String(64), primary_key=True), Col("value", sa.Text, nullable=False))
    sa.Table(
        "experiments", md,
        Col("id", sa.String(64), primary_key=True),
        Col("name", _text(128), nullable=False),
        Col("project", _text(128), nullable=False),
        Col("created_at", sa.Double, nullable=False),
        Col("run_counter", sa.Integer, nullable=False, server_default="0"),
        sa.UniqueConstraint("project", "name", name="uq_experiments_project_name"),
    )
    sa.Table(
        "runs", md,
        Col("id", sa.String(64), primary_key=True),
        Col("experiment_id", sa.String(64), sa.ForeignKey("experiments.id", ondelete="CASCADE"),
            nullable=False),
        Col("number", sa.Integer, nullable=False),
        Col("name", _text(128)),
        Col("parent_id", sa.String(64)),
        Col("status", _text(16), nullable=False),
        Col("start_time", sa.Double, nullable=False),
        Col("end_time", sa.Double),
        Col("error", sa.Text),
        Col("heartbeat", sa.Double),
        Col("params_json", sa.Text, nullable=False, server_default="{}"),
        Col("tags_json", sa.Text, nullable=False, server_default="{}"),
        sa.UniqueConstraint("experiment_id", "number", name="uq_runs_experiment_number"),
        sa.Index("ix_runs_parent_id", "parent_id"),
        sa.Index("ix_runs_start_time", "start_time"),
        # The store-wide change number of the run's last change (SQLite: see RunIndex; PostgreSQL: 0).
        *([Col("rev", sa.BigInteger, nullable=False, server_default="0"), sa.Index("ix_runs_rev", "rev")]
          if version >= 5 else []),
    )
    sa.Table(
        "run_params", md, run_fk(),
        Col("key", sa.String(250), nullable=False),
        Col("value_json", sa.Text, nullable=False),
        Col("value_num", sa.Double),
        Col("value_text", _text()),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_run_params"),
    )
    sa.Table(
        "run_tags", md, run_fk(),
        Col("key", sa.String(250), nullable=False),
        Col("value", _text(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_run_tags"),
    )
    sa.Table(
        "run_results", md, run_fk(),
        Col("key", sa.String(250), nullable=False),
        Col("value_json", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_run_results"),
    )
    segment_columns: list[sa.Column[Any]] = [
        Col("key", sa.String(250), nullable=False),
        Col("seq", sa.Integer, nullable=False),
        Col("n", sa.Integer, nullable=False),
        Col("steps", sa.LargeBinary, nullable=False),
        Col("values", sa.LargeBinary, nullable=False),
        Col("timestamps", sa.LargeBinary, nullable=False),
    ]
    if version >= 4:  # the flush that wrote the segment: retried flushes look for it (see _log_metrics)
        segment_columns.append(Col("batch_id", sa.String(32)))
    sa.Table(
        "metric_segments", md, run_fk(), *segment_columns,
        sa.PrimaryKeyConstraint("run_id", "key", "seq", name="pk_metric_segments"),
    )
    if version >= 2:
        sa.Table(
            "metric_latest", md, run_fk(),
            Col("key", sa.String(250), nullable=False),
            Col("value", sa.Double),  # NULL is NaN (SQLite cannot store a NaN REAL)
            Col("step", sa.BigInteger, nullable=False),
            Col("timestamp", sa.Double, nullable=False),
            sa.PrimaryKeyConstraint("run_id", "key", name="pk_metric_latest"),
        )
    sa.Table(
        "artifacts", md, run_fk(),
        Col("key", _text(1024), nullable=False),
        Col("digest", sa.String(64), nullable=False),
        Col("size", sa.BigInteger, nullable=False),
        Col("created_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_artifacts"),
    )
    if version >= 3:
        # Search drives from the matching values instead of probing every run (see _search_runs). Only
        # on PostgreSQL since SQLite stores searched from the in-process run index (schema version 5):
        # there the SQL search is a fallback, and these four B-trees cost every new run ~17 page
        # writes of its ~31 (W1 730 -> 1,200 runs/s without them). SQLite stores created earlier keep
        # theirs, which only slows their writes.
        for name, table, columns in _SEARCH_INDEXES:
            sa.Index(name, *(md.tables[table].c[c] for c in columns)).ddl_if(dialect="postgresql")
    if version >= 4:
        # Blobs in the database (SQLBlobStore): the chunks of one upload under a fresh random blob_id,
        # and the row naming them written in the same transaction, so a partial blob is never visible
        # and replacing a key never disturbs a reader streaming the previous content.
        sa.Table(
            "blobs", md,
            Col("key", _text(1024), primary_key=True),
            Col("blob_id", sa.BigInteger, nullable=False),
            Col("size", sa.BigInteger, nullable=False),
            Col("chunks", sa.Integer, nullable=False),
            Col("created_at", sa.Double, nullable=False),
        )
        sa.Table(
            "blob_chunks", md,
            Col("blob_id", sa.BigInteger, nullable=False),
            Col("idx", sa.Integer, nullable=False),
            Col("data", sa.LargeBinary, nullable=False),
            sa.PrimaryKeyConstraint("blob_id", "idx", name="pk_blob_chunks"),
        )
    return md


_md = schema_metadata()
t_meta = _md.tables["meta"]
t_experiments = _md.tables["experiments"]
t_runs = _md.tables["runs"]
t_params = _md.tables["run_params"]
t_tags = _md.tables["run_tags"]
t_results = _md.tables["run_results"]
t_segments = _md.tables["metric_segments"]
t_latest = _md.tables["metric_latest"]
t_artifacts = _md.tables["artifacts"]
t_blobs = _md.tables["blobs"]
t_chunks = _md.tables["blob_chunks"]
#: The columns a RunInfo is built from, in the order ``_infos_with_json_details`` unpacks them.
_RUN_COLUMNS = tuple(t_runs.c[name] for name in (
    "id", "experiment_id", "number", "name", "parent_id", "status", "start_time", "end_time", "error",
    "heartbeat", "params_json", "tags_json"))

# Statements of the hot paths, built once (SQLAlchemy then reuses their compiled form from its cache).
_S_RUN_EXISTS = sa.select(t_runs.c.id).where(t_runs.c.id == sa.bindparam("b_run"))
#: The run row, locked against concurrent writers of the same run (PostgreSQL; SQLite's BEGIN IMMEDIATE
#: already serializes writers and SQLAlchemy renders no FOR UPDATE there).
_S_RUN_LOCK = _S_RUN_EXISTS.with_for_update(key_share=True)
_S_RUN_DOC = {
    column.name: sa.select(column).where(t_runs.c.id == sa.bindparam("b_run")).with_for_update(key_share=True)
    for column in (t_runs.c.params_json, t_runs.c.tags_json)
}
_S_RUN_NUMBER = sa.select(t_runs.c.number).where(t_runs.c.id == sa.bindparam("b_run"))
_U_RUN = sa.update(t_runs).where(t_runs.c.id == sa.bindparam("b_run"))
_U_COUNTER = (
    sa.update(t_experiments).where(t_experiments.c.id == sa.bindparam("b_exp"))
    .values(run_counter=t_experiments.c.run_counter + 1).returning(t_experiments.c.run_counter)
)
_I_RUN = sa.insert(t_runs)
_I_PARAMS = sa.insert(t_params)
_I_TAGS = sa.insert(t_tags)
_I_SEGMENTS = sa.insert(t_segments)
_S_LAST_SEQ = (
    sa.select(t_segments.c.key, sa.func.max(t_segments.c.seq))
    .where(t_segments.c.run_id == sa.bindparam("b_run"),
           t_segments.c.key.in_(sa.bindparam("b_keys", expanding=True)))
    .group_by(t_segments.c.key)
)
# The change number of the SQLite run index (``SQLBackend._stamp``), run on the driver's cursor: the
# highest ``runs.rev`` (the last entry of its index), or the floor a deletion left in ``meta`` when that
# is higher (so deleting the most recently changed runs never lets a number be given out twice).
_TOP_REV = ("max(coalesce((SELECT max(rev) FROM runs), 0), "
            "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'runs_rev'), 0))")
_STAMP_RUN = f"UPDATE runs SET rev = {_TOP_REV} + 1 WHERE id = ?"
_STAMP_DELETION = (f"INSERT INTO meta (key, value) VALUES ('runs_rev', CAST({_TOP_REV} + 1 AS TEXT)) "
                   f"ON CONFLICT (key) DO UPDATE SET value = excluded.value")
_S_RUNS_REV = f"SELECT {_TOP_REV}"
_S_EXPERIMENT_IDS = sa.select(t_experiments.c.id)
_S_LAST_SEQ_ONE = (
    sa.select(sa.func.max(t_segments.c.seq))
    .where(t_segments.c.run_id == sa.bindparam("b_run"), t_segments.c.key == sa.bindparam("b_key"))
)
#: Whether a batch is stored: its first key's newest segments (a primary-key range scan, never the run's
#: whole history) carry its id. ``b_from`` is ``BATCH_MEMORY`` segments below the key's last one.
_S_BATCH_STORED = (
    sa.select(t_segments.c.seq)
    .where(t_segments.c.run_id == sa.bindparam("b_run"), t_segments.c.key == sa.bindparam("b_key"),
           t_segments.c.seq >= sa.bindparam("b_from"), t_segments.c.batch_id == sa.bindparam("b_batch"))
    .limit(1)
)
_S_HISTORY = (
    sa.select(t_segments.c.n, t_segments.c.steps, t_segments.c["values"], t_segments.c.timestamps)
    .where(t_segments.c.run_id == sa.bindparam("b_run"), t_segments.c.key == sa.bindparam("b_key"))
    .order_by(t_segments.c.seq)
)
#: A blob's row and its first chunk in one query (all of a small blob).
_S_BLOB_HEAD = (
    sa.select(t_blobs.c.blob_id, t_blobs.c.size, t_blobs.c.chunks, t_chunks.c.data)
    .select_from(t_blobs.outerjoin(t_chunks, sa.and_(t_chunks.c.blob_id == t_blobs.c.blob_id,
                                                     t_chunks.c.idx == 0)))
    .where(t_blobs.c.key == sa.bindparam("b_key"))
)
_S_BLOB_CHUNK = sa.select(t_chunks.c.data).where(t_chunks.c.blob_id == sa.bindparam("b_id"),
                                                 t_chunks.c.idx == sa.bindparam("b_idx"))
_S_BLOB_ID = sa.select(t_blobs.c.blob_id).where(t_blobs.c.key == sa.bindparam("b_key"))
_S_BLOB_SIZE = sa.select(t_blobs.c.size).where(t_blobs.c.key == sa.bindparam("b_key"))
_I_CHUNK = sa.insert(t_chunks)
_D_CHUNKS = sa.delete(t_chunks).where(t_chunks.c.blob_id == sa.bindparam("b_id"))
_D_BLOB = sa.delete(t_blobs).where(t_blobs.c.key == sa.bindparam("b_key"))


def _migrate_1_to_2(conn: Connection) -> None:
    """Version 2 adds ``metric_latest``: create it and backfill it from each series' last segment."""
    schema_metadata(2).tables["metric_latest"].create(conn, checkfirst=True)
    seg = schema_metadata(3).tables["metric_segments"]  # the columns a version-1..3 store has
    last = (
        sa.select(seg.c.run_id, seg.c.key, sa.func.max(seg.c.seq).label("seq"))
        .group_by(seg.c.run_id, seg.c.key)
        .subquery()
    )
    rows = conn.execute(
        sa.select(seg.c.run_id, seg.c.key, seg.c.n, seg.c.steps, seg.c["values"], seg.c.timestamps)
        .join(last, sa.and_(seg.c.run_id == last.c.run_id, seg.c.key == last.c.key,
                            seg.c.seq == last.c.seq))
    )
    batch = []
    for run_id, key, n, steps, values, timestamps in rows:
        if n <= 0:
            continue
        (value,) = struct.unpack_from("<d", values, (n - 1) * 8)
        (step,) = struct.unpack_from("<q", steps, (n - 1) * 8)
        (stamp,) = struct.unpack_from("<d", timestamps, (n - 1) * 8)
        batch.append({"run_id": run_id, "key": key, "value": None if math.isnan(value) else value,
                      "step": step, "timestamp": stamp})
    if batch:
        conn.execute(sa.insert(t_latest), batch)


def _migrate_2_to_3(conn: Connection) -> None:
    """Version 3 adds the (key, value) search indexes."""
    md = schema_metadata(3)
    for index in md.tables["run_params"].indexes | md.tables["run_tags"].indexes | md.tables[
            "metric_latest"].indexes:
        index.create(conn, checkfirst=True)


def _migrate_3_to_4(conn: Connection) -> None:
    """Version 4 adds the in-database blob tables and ``metric_segments.batch_id``."""
    md = schema_metadata(4)
    for name in ("blobs", "blob_chunks"):
        md.tables[name].create(conn, checkfirst=True)
    schema = conn.schema_for_object(t_segments)
    if "batch_id" not in {c["name"] for c in sa.inspect(conn).get_columns("metric_segments", schema=schema)}:
        quote = conn.dialect.identifier_preparer
        table = quote.quote("metric_segments")
        if schema:
            table = f"{quote.quote_schema(schema)}.{table}"
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN batch_id VARCHAR(32)")


def _migrate_4_to_5(conn: Connection) -> None:
    """Version 5 adds ``runs.rev`` (the change number the SQLite run index refreshes by) and its index."""
    schema = conn.schema_for_object(t_runs)
    if "rev" not in {c["name"] for c in sa.inspect(conn).get_columns("runs", schema=schema)}:
        quote = conn.dialect.identifier_preparer
        table = quote.quote("runs")
        if schema:
            table = f"{quote.quote_schema(schema)}.{table}"
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN rev BIGINT DEFAULT '0' NOT NULL")
    for index in schema_metadata(5).tables["runs"].indexes:
        if index.name == "ix_runs_rev":
            index.create(conn, checkfirst=True)


#: ``MIGRATIONS[i]`` takes a store from version ``i + 1`` to ``i + 2`` inside the caller's transaction.
MIGRATIONS: list[Callable[[Connection], None]] = [
    _migrate_1_to_2, _migrate_2_to_3, _migrate_3_to_4, _migrate_4_to_5]
assert len(MIGRATIONS) == SCHEMA_VERSION - 1


# -- value encoding ---------------------------------------------------------------------------------------
def _loads(raw: str | bytes) -> Any:
    """Parse a stored JSON document: orjson (fast), or json for integers beyond 64 bits."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _dumps(value: Any) -> str:
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
    return _dumps(value), num, text


def _blob(array: np.ndarray[Any, Any], dtype: str) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


_DBL_MAX = 1.7976931348623157e308


_Compiled = tuple[Any, str, tuple[str, ...], dict[str, Any]]  # (statement, SQL, bind order, constants)


# -- the backend ------------------------------------------------------------------------------------------
class SQLBackend(Backend, scheme="sqlite"):
    """Metadata in SQLite (WAL) through SQLAlchemy Core; small artifacts inside, large ones beside it."""

    config_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "properties": {
            "backend": {"const": "sqlite"},
            "module": {"type": "string"},
            "uri": {"type": "string", "pattern": "^[sS][qQ][lL][iI][tT][eE]:///."},
            "busy_timeout": {"type": "number", "minimum": 0, "maximum": 86400},
        },
        "required": ["uri"],
        "additionalProperties": False,
    }
    _dialect: ClassVar[str] = "sqlite"
    #: Whether write transactions stamp runs with the change counter (``runs.rev``) the in-process run
    #: index refreshes by. SQLite only: its single writer makes the numbers follow the commit order.
    _stamps_runs: ClassVar[bool] = True
    #: Whether change numbers follow the commit order, so an unchanged top number means nothing changed
    #: (SQLite); otherwise every refresh re-reads the runs stamped at or after its horizon (PostgreSQL).
    _revs_follow_commits: ClassVar[bool] = True
    #: How a run-index refresh and other single-statement reads run ("read": in a transaction).
    _index_read_mode: ClassVar[Mode] = "read"
    #: The in-process run index searches answer from (None: search in SQL, as PostgreSQL does).
    _index: RunIndex | None = None
    _options: ClassVar[dict[str, float]] = {"busy_timeout": _DEFAULT_BUSY_TIMEOUT}

    def __init__(self, uri: str, path: Path, *, blobs: BlobStore | None = None,
                 busy_timeout: float = _DEFAULT_BUSY_TIMEOUT) -> None:
        super().__init__(uri, blobs)
        self.path = path
        self.busy_timeout = busy_timeout
        self._init_sql()
        self.retry_timeout = busy_timeout  # see _retryable
        self._index = RunIndex()
        #: (pid, connection) reading the change number for the run index (see ``_latest_rev``).
        self._probe: tuple[int, sqlite3.Connection] | None = None
        self._probe_lock = threading.Lock()

    def _init_sql(self) -> None:
        """The state every SQL backend keeps (engines are created on first use)."""
        #: Seconds spent retrying a transaction after a lost connection or an immediate lock conflict.
        self.retry_timeout = 0.0
        self._base_engine: Engine | None = None
        self._engine: Engine | None = None
        self._writer: Engine | None = None
        self._autocommit: Engine | None = None
        self._schema_ok = False
        self._init_lock = threading.Lock()
        self._upsert_cache: dict[str, Any] | None = None
        #: hot-path statements compiled for the driver (see ``_execute``), by (id, parameter names)
        self._compiled: dict[tuple[int, tuple[str, ...]], _Compiled] = {}
        self._pid = os.getpid()

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> SQLBackend:
        """``sqlite:///relative.db`` or ``sqlite:////abs.db``, options ``busy_timeout`` (seconds)."""
        path, query = _parse_sqlite_uri(uri)
        merged = {**query, **options}
        check_options("sqlite", merged, cls._options)
        busy = merged.get("busy_timeout", _DEFAULT_BUSY_TIMEOUT)
        if isinstance(busy, str):
            try:
                busy = float(busy)
            except ValueError:
                raise InvalidArgumentError(
                    f"busy_timeout must be a number of seconds, got {busy!r}") from None
        if (not isinstance(busy, int | float) or isinstance(busy, bool) or not math.isfinite(busy)
                or not 0 <= busy <= 86400):
            raise InvalidArgumentError(
                f"busy_timeout must be a number of seconds in [0, 86400], got {busy!r}")
        return cls(uri, path, blobs=artifacts, busy_timeout=float(busy))

    def _default_blobs(self) -> BlobStore:
        """Small blobs in the database, large ones in the sibling ``<stem>-blobs`` folder."""
        from labvault.blobs.local import FileBlobStore

        folder = FileBlobStore(self.path.with_name(f"{self.path.stem}-blobs"))
        return TieredBlobStore(SQLBlobStore(self), folder)

    def close(self) -> None:
        """Dispose of the connection pool and close the blob store. Safe to call twice."""
        with self._init_lock:
            engine, self._base_engine = self._base_engine, None
            self._engine = self._writer = self._autocommit = None
            self._schema_ok = False
        if engine is not None:
            engine.dispose()
        probe = getattr(self, "_probe", None)
        if probe is not None and probe[0] == os.getpid():
            with self._probe_lock:
                self._probe = None
                probe[1].close()
        super().close()

    # -- connections (the dialect-specific part) ------------------------------------------------------------
    def _create_engine(self) -> Engine:
        """The SQLite engine: WAL, busy timeout, FKs, case-sensitive LIKE, BEGIN IMMEDIATE for writes."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendUnavailableError(f"cannot create the directory of SQLite store {self.path}: {exc}") \
                from exc
        engine = sa.create_engine(
            sa.URL.create("sqlite", database=str(self.path)),
            connect_args={"check_same_thread": False, "timeout": self.busy_timeout},
        )
        busy_ms = int(self.busy_timeout * 1000)

        def on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # no implicit BEGIN by the driver: we emit our own
            cur = dbapi_conn.cursor()
            try:
                cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
                cur.execute("PRAGMA journal_mode = WAL")
                cur.execute("PRAGMA synchronous = NORMAL")
                cur.execute("PRAGMA wal_autocheckpoint = 10000")
                cur.execute("PRAGMA foreign_keys = ON")
                cur.execute("PRAGMA case_sensitive_like = ON")
            finally:
                cur.close()

        def on_begin(conn: Connection) -> None:
            sql = "BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE_OPTION) else "BEGIN"
            try:  # on the driver's connection: this runs for every transaction, so skip SQLAlchemy's layers
                conn.connection.driver_connection.execute(sql)  # type: ignore[union-attr]
            except sqlite3.Error as exc:
                raise sa_exc.DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc

        event.listen(engine, "connect", on_connect)
        event.listen(engine, "begin", on_begin)
        return engine

    def _engine_options(self) -> dict[str, Any]:
        """Execution options every connection of this backend runs with (PostgreSQL: the schema map)."""
        return {}

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which has ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    def _execute(self, conn: Connection, stmt: Any, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
                 ) -> Any:
        """Run a hot-path statement (one parameter dict, or a list for executemany) on the driver's cursor.

        The statement is compiled once per set of parameter names and then executed on the DBAPI
        connection directly: SQLAlchemy's per-call work (compiled-cache lookup, events, result setup)
        cost more than the SQLite statement itself when a run is created or finished. Only for
        statements whose columns need no bind processing (text, numbers, bytes). Returns the cursor;
        driver errors surface as SQLAlchemy ``DBAPIError`` like any other statement's, so ``_run``
        translates them as usual. Dialects without a positional paramstyle go through ``conn.execute``.
        """
        dialect = conn.dialect
        if dialect.paramstyle != "qmark":
            return conn.execute(stmt, params)
        rows: Sequence[Mapping[str, Any]] = [params] if isinstance(params, Mapping) else params
        cache_key = (id(stmt), tuple(rows[0]))
        entry = self._compiled.get(cache_key)
        if entry is None:
            compiled = stmt.compile(dialect=dialect, column_keys=list(rows[0]))
            names = tuple(compiled.positiontup or ())
            constants = {n: v for n, v in compiled.params.items() if n not in rows[0]}  # the 1 of "+ 1"
            entry = (stmt, compiled.string, names, constants)
            self._compiled[cache_key] = entry  # ``stmt`` is kept so its id() stays unique
        _stmt, sql, names, constants = entry
        if constants:
            rows = [{**constants, **row} for row in rows]
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if isinstance(params, Mapping):
                cursor.execute(sql, tuple(rows[0][n] for n in names))
            else:
                cursor.executemany(sql, [tuple(row[n] for n in names) for row in rows])
        except dialect.loaded_dbapi.Error as exc:
            raise sa_exc.DBAPIError.instance(sql, None, exc, dialect.loaded_dbapi.Error) from exc
        return cursor

    @staticmethod
    def _driver(conn: Connection, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run literal SQL on the driver's cursor (SQLite), errors as SQLAlchemy ``DBAPIError``."""
        try:
            return conn.connection.driver_connection.execute(sql, params)  # type: ignore[union-attr]
        except sqlite3.Error as exc:
            raise sa_exc.DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc

    def _stamp(self, conn: Connection, run_id: str | None) -> None:
        """Take the next change number for this write; give it to ``run_id`` (None: a deletion).

        Called inside every write transaction that changes what a run looks like, so the run index of
        any process can fetch just the runs changed since it last looked (see
        ``labvault.store.search.runindex``).
        """
        if not self._stamps_runs:
            return
        if run_id is None:
            self._driver(conn, _STAMP_DELETION)
        else:
            self._driver(conn, _STAMP_RUN, (run_id,))

    def _upserts(self) -> dict[str, Any]:
        """INSERT ... ON CONFLICT (run_id, key) DO UPDATE statements per table, built once per backend."""
        upserts = self._upsert_cache
        if upserts is None:
            upserts = {}
            for table in (t_tags, t_results, t_latest, t_artifacts):
                stmt = self._insert(table)
                keys = {c.name for c in table.primary_key.columns}
                upserts[table.name] = stmt.on_conflict_do_update(
                    index_elements=sorted(keys),
                    set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
                )
            # RETURNING says whether the row was new (rowcount of an INSERT is not reliable everywhere).
            upserts["blobs"] = (self._insert(t_blobs).on_conflict_do_nothing(index_elements=["key"])
                                .returning(t_blobs.c.blob_id))
            self._upsert_cache = upserts
        return upserts

    def _lock_schema(self, conn: Connection) -> None:
        """Serialize schema creation and upgrades across processes (SQLite: BEGIN IMMEDIATE already does)."""

    def _prepare_schema(self, conn: Connection) -> None:
        """Make the namespace the tables go into exist (PostgreSQL: ``CREATE SCHEMA``), under the lock."""

    def _table_names(self, conn: Connection) -> set[str]:
        return set(sa.inspect(conn).get_table_names())

    def _retryable(self, exc: sa_exc.DBAPIError) -> bool:
        """Whether a failed transaction may succeed when run again (a lost connection, a deadlock).

        SQLite: "database is locked" that the busy handler did not wait out (SQLite answers some lock
        conflicts at once, e.g. while another process switches the file to WAL); the whole transaction
        runs again with backoff for up to ``busy_timeout`` seconds.
        """
        return "database is locked" in str(exc.orig)

    @property
    def location(self) -> str:
        """Where the store lives, for messages (the database path; a server address for PostgreSQL)."""
        return str(self.path)

    @property
    def display_uri(self) -> str:
        """The URI without secrets, for messages."""
        return self.uri

    def _where(self) -> str:
        return f"SQLite store at {self.location}"

    # -- transactions and error translation -----------------------------------------------------------------
    def _translate_error(self, exc: sa_exc.DBAPIError) -> LabvaultError:
        detail = str(getattr(exc, "orig", None) or exc).strip()
        lowered = detail.lower()
        if any(s in lowered for s in ("not a database", "malformed", "file is encrypted", "corrupt")):
            return CorruptDataError(f"{self._where()} is corrupt or not a labvault database: {detail}")
        if isinstance(exc, sa_exc.IntegrityError):
            return ConflictError(f"{self._where()} rejected a write: {detail}")
        return BackendUnavailableError(f"{self._where()} is unavailable: {detail}")

    def _engines(self) -> tuple[Engine, Engine]:
        with self._init_lock:
            if self._base_engine is not None and self._pid != os.getpid():
                # A forked child must not share the parent's connections: start a fresh pool.
                self._base_engine.dispose(close=False)
                self._base_engine = self._engine = self._writer = self._autocommit = None
            if self._base_engine is None or self._engine is None or self._writer is None:
                self._pid = os.getpid()
                base = self._create_engine()
                options = self._engine_options()
                self._base_engine = base
                self._engine = base.execution_options(**options) if options else base
                self._writer = base.execution_options(**options, **{_WRITE_OPTION: True})
                self._autocommit = base.execution_options(**options, isolation_level="AUTOCOMMIT")
            return self._engine, self._writer

    def _ready(self) -> tuple[Engine, Engine]:
        engine, writer = self._engine, self._writer
        if self._schema_ok and engine is not None and writer is not None and self._pid == os.getpid():
            return engine, writer
        engine, writer = self._engines()
        self._open_schema(engine, writer)
        self._schema_ok = True
        return engine, writer

    def _run(self, work: Work[T], mode: Mode = "write", *, retry: bool = True, schema: bool = True) -> T:
        """Run ``work(conn, attempt)`` in one transaction (``mode`` "read", "write" or "autocommit").

        Driver errors become labvault errors. Where ``_retryable`` says so (PostgreSQL after a lost
        connection), the whole transaction runs again after a pause growing from 50 ms to 2 s, for up to
        ``retry_timeout`` seconds; ``attempt`` (0, 1, ...) tells ``work`` that an earlier attempt may have
        committed, so writes check for their own effect before repeating it. ``schema=False`` skips the
        schema check (for the upgrade itself).
        """
        attempt = 0
        delay = _FIRST_BACKOFF
        deadline: float | None = None
        while True:
            try:
                engine, writer = self._ready() if schema else self._engines()
                if mode == "write":
                    with writer.begin() as conn:
                        return work(conn, attempt)
                if mode == "read":
                    with engine.connect() as conn:
                        return work(conn, attempt)
                assert self._autocommit is not None
                with self._autocommit.connect() as conn:
                    return work(conn, attempt)
            except sa_exc.DBAPIError as exc:
                if not retry or not self._retryable(exc):
                    raise self._translate_error(exc) from exc
                clock = time.monotonic()
                if deadline is None:
                    deadline = clock + self.retry_timeout
                if clock + delay > deadline:
                    error = self._translate_error(exc)
                    raise type(error)(f"{error} (gave up after {attempt + 1} attempts in "
                                      f"{self.retry_timeout:g} s)") from exc
            time.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)
            attempt += 1

    # -- schema versions ------------------------------------------------------------------------------------
    def _read_version(self, conn: Connection) -> int | None:
        """The store's schema version; None for an empty database."""
        names = self._table_names(conn)
        if "meta" not in names:
            if names & _LABVAULT_TABLES:
                raise CorruptDataError(f"{self._where()} has labvault tables but no schema version")
            return None
        raw = conn.execute(sa.select(t_meta.c.value).where(t_meta.c.key == "schema_version")).scalar()
        try:
            return int(str(raw))
        except ValueError:
            raise CorruptDataError(f"{self._where()} has an invalid schema version {raw!r}") from None

    def _create_schema(self, conn: Connection, version: int = SCHEMA_VERSION) -> None:
        schema_metadata(version).create_all(conn)
        conn.execute(sa.insert(t_meta).values(key="schema_version", value=str(version)))
        if version == SCHEMA_VERSION:
            self._tune_schema(conn)

    def _tune_schema(self, conn: Connection) -> None:
        """Physical settings of a current-version schema, after creation or upgrade (PostgreSQL: storage)."""

    def _check_version(self, version: int) -> None:
        if version < SCHEMA_VERSION:
            raise UnsupportedOperationError(
                f"store at {self.location} has schema version {version}, "
                f"this labvault needs {SCHEMA_VERSION}: run 'labvault db upgrade --uri {self.display_uri}'"
            )
        if version > SCHEMA_VERSION:
            raise UnsupportedOperationError(
                f"store at {self.location} has schema version {version}, newer than the "
                f"{SCHEMA_VERSION} this labvault knows: upgrade labvault to open it"
            )

    def _open_schema(self, engine: Engine, writer: Engine) -> None:
        """Check the store's version; create the schema in an empty database (racing processes welcome)."""
        with engine.connect() as conn:
            version = self._read_version(conn)
        if version is None:
            with writer.begin() as conn:
                self._lock_schema(conn)
                self._prepare_schema(conn)
                version = self._read_version(conn)
                if version is None:
                    self._create_schema(conn)
                    version = SCHEMA_VERSION
        self._check_version(version)

    def schema_version(self) -> int | None:
        """The store's schema version without creating or upgrading anything (None: an empty store)."""
        return self._run(lambda conn, _: self._read_version(conn), "read", schema=False)

    def upgrade(self) -> tuple[int, int]:
        """Bring the store to ``SCHEMA_VERSION``; return (old version, new version).

        An empty store is created, reported as version 0. Runs every pending migration in one write
        transaction after re-reading the version under the lock, so concurrent upgrades are safe.
        """

        def work(conn: Connection, _attempt: int) -> tuple[int, int]:
            self._lock_schema(conn)
            self._prepare_schema(conn)
            version = self._read_version(conn)
            if version is None:
                self._create_schema(conn)
                return (0, SCHEMA_VERSION)
            if version > SCHEMA_VERSION:
                self._check_version(version)
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step - 1](conn)
                conn.execute(sa.update(t_meta).where(t_meta.c.key == "schema_version")
                             .values(value=str(step + 1)))
            if version < SCHEMA_VERSION:
                self._tune_schema(conn)
            return (version, SCHEMA_VERSION)

        result = self._run(work, schema=False)
        self._schema_ok = True
        return result

    # -- helpers --------------------------------------------------------------------------------------------
    @staticmethod
    def _require_run(conn: Connection, run_id: str, *, lock: bool = False) -> None:
        """``NotFoundError`` unless the run exists; ``lock`` also locks its row until the commit."""
        if conn.execute(_S_RUN_LOCK if lock else _S_RUN_EXISTS, {"b_run": run_id}).first() is None:
            raise NotFoundError(f"run {run_id} not found")

    @staticmethod
    def _experiment_info(row: Any) -> ExperimentInfo:
        return ExperimentInfo(row.id, row.name, row.project, row.created_at)

    # -- experiments ----------------------------------------------------------------------------------------
    def _ensure_experiment(self, name: str, project: str) -> ExperimentInfo:
        e = t_experiments
        where = sa.and_(e.c.project == project, e.c.name == name)
        row = self._run(lambda conn, _: conn.execute(sa.select(e).where(where)).first(), "read")
        if row is not None:
            return self._experiment_info(row)
        created = {"id": new_id(), "name": name, "project": project, "created_at": now(), "run_counter": 0}

        def work(conn: Connection, _attempt: int) -> Any:
            stmt = self._insert(e).values(**created)
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["project", "name"]))
            return conn.execute(sa.select(e).where(where)).one()

        return self._experiment_info(self._run(work))

    def _list_experiments(self, project: str | None) -> list[ExperimentInfo]:
        stmt = sa.select(t_experiments).order_by(t_experiments.c.created_at, t_experiments.c.name)
        if project is not None:
            stmt = stmt.where(t_experiments.c.project == project)
        rows = self._run(lambda conn, _: conn.execute(stmt).all(), self._index_read_mode)  # one statement
        return [self._experiment_info(r) for r in rows]

    def _delete_experiment(self, experiment_id: str) -> None:
        def work(conn: Connection, attempt: int) -> None:
            self._stamp(conn, None)  # before the delete: the floor must exceed its runs' change numbers too
            result = conn.execute(sa.delete(t_experiments).where(t_experiments.c.id == experiment_id))
            if result.rowcount == 0 and attempt == 0:  # later attempts: the first one may have deleted it
                raise NotFoundError(f"experiment {experiment_id} not found")

        self._run(work)
        if self._index is not None:
            with self._index.lock:
                self._index.forget(experiment_id)

    # -- runs -----------------------------------------------------------------------------------------------
    def _create_run(
        self, experiment_id: str, name: str | None, parent_id: str | None, start_time: float,
        params: dict[str, Any], tags: dict[str, str], *, run_id: str | None = None,
    ) -> RunInfo:
        chosen = run_id is not None
        run_id = run_id or new_id()
        params_json, tags_json = _dumps(params), _dumps(tags)
        param_rows = self._param_rows(run_id, params) if params else None
        tag_rows = [{"run_id": run_id, "key": k, "value": val} for k, val in tags.items()]

        def work(conn: Connection, attempt: int) -> int:
            if attempt or chosen:  # an earlier attempt may have committed: then the run exists
                done = conn.execute(_S_RUN_NUMBER, {"b_run": run_id}).scalar()
                if done is not None:
                    if chosen and not attempt:
                        raise run_exists_error(run_id)
                    return int(done)
            if parent_id is not None:
                try:
                    self._require_run(conn, parent_id)
                except NotFoundError:
                    raise NotFoundError(f"parent run {parent_id} not found") from None
            # The counter row stays locked until the commit, so numbers are dense and unique.
            found = self._execute(conn, _U_COUNTER, {"b_exp": experiment_id}).fetchone()
            if found is None:
                raise NotFoundError(f"experiment {experiment_id} not found")
            number = found[0]
            self._execute(conn, _I_RUN, {
                "id": run_id, "experiment_id": experiment_id, "number": number, "name": name,
                "parent_id": parent_id, "status": "running", "start_time": start_time,
                "heartbeat": start_time, "params_json": params_json, "tags_json": tags_json,
            })
            if param_rows:
                self._execute(conn, _I_PARAMS, param_rows)
            if tag_rows:
                self._execute(conn, _I_TAGS, tag_rows)
            self._stamp(conn, run_id)
            return int(number)

        number = self._run(work)
        return RunInfo(
            id=run_id, experiment_id=experiment_id, number=number, name=name, parent_id=parent_id,
            status="running", start_time=start_time, heartbeat=start_time,
            params=dict(params), tags=dict(tags),
        )

    @staticmethod
    def _param_rows(run_id: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        rows = []
        for key, value in params.items():
            js, num, text = param_columns(value)
            rows.append({"run_id": run_id, "key": key, "value_json": js, "value_num": num,
                         "value_text": text})
        return rows

    def _get_run(self, run_id: str) -> RunInfo:
        stmt = sa.select(*_RUN_COLUMNS, *self._detail_columns()).where(t_runs.c.id == run_id)
        row = self._run(lambda conn, _: conn.execute(stmt).first(), "read")
        if row is None:
            raise NotFoundError(f"run {run_id} not found")
        return self._infos_with_json_details([row])[0]

    def _list_runs(self, experiment_ids: list[str]) -> list[RunInfo]:
        if not experiment_ids:
            return []
        r = t_runs
        stmt = (sa.select(*_RUN_COLUMNS, *self._detail_columns()).where(r.c.experiment_id.in_(experiment_ids))
                .order_by(r.c.start_time, r.c.experiment_id, r.c.number))
        rows = self._run(lambda conn, _: conn.execute(stmt).all(), "read")
        with _no_gc(len(rows) > 500):
            return self._infos_with_json_details(rows)

    def _search_runs(
        self,
        experiment_ids: list[str],
        expr: Expr,
        order: Sequence[OrderKey],
        limit: int | None,
        offset: int,
    ) -> list[RunInfo]:
        if not experiment_ids or limit == 0:
            return []
        if self._index is not None:
            found = self._indexed_search(experiment_ids, expr, order, limit, offset)
            if found is not None:
                return found
        if limit is not None and limit <= _PAGE_FIRST_LIMIT:
            # A page: order and cut the matching ids first (narrow rows, a top-N sort the database keeps
            # in memory), then load the page's details; sorting whole rows spilled to disk at 100,000 runs.
            page = self.search_statement(experiment_ids, expr, order, limit, offset, ids_only=True)

            def read_page(conn: Connection, _: int) -> Sequence[Any]:
                ids = list(conn.execute(page).scalars())
                if not ids:
                    return []
                details = sa.select(*_RUN_COLUMNS, *self._detail_columns()).where(t_runs.c.id.in_(ids))
                by_id = {row.id: row for row in conn.execute(details)}
                return [by_id[i] for i in ids if i in by_id]

            return self._infos_with_json_details(self._run(read_page, "read"))
        stmt = self.search_statement(experiment_ids, expr, order, limit, offset)
        rows = self._run(lambda conn, _: conn.execute(stmt).all(), "read")
        with _no_gc(len(rows) > 500):
            return self._infos_with_json_details(rows)

    def _indexed_search(self, experiment_ids: list[str], expr: Expr, order: Sequence[OrderKey],
                        limit: int | None, offset: int) -> list[RunInfo] | None:
        """A search answered by the run index, refreshed first in one read transaction: the runs stamped
        since its last refresh are re-read, experiments it has not seen are loaded whole (None: the
        filter needs SQL)."""
        index = self._index
        assert index is not None
        if index.rev >= 0 and all(map(index.has, experiment_ids)) and self._latest_rev() == index.rev:
            with index.lock:  # nothing to load and nothing changed since the last refresh
                return index.search(experiment_ids, expr, order, limit, offset)

        def work(conn: Connection, _attempt: int) -> list[RunInfo] | None:
            top, experiments = self._index_horizon(conn)
            with index.lock:
                if index.loaded() and (top != index.rev or not self._revs_follow_commits):
                    if top < index.rev:  # the store was replaced underneath: start over
                        index.forget()
                    else:
                        for rec in self._records(conn, self._changed_since(index.rev)):
                            index.put(rec)
                        if experiments is None:
                            experiments = set(conn.execute(_S_EXPERIMENT_IDS).scalars())
                        for gone in index.loaded() - experiments:
                            index.forget(gone)
                for exp_id in experiment_ids:
                    if not index.has(exp_id):
                        index.load(exp_id, self._records(conn, t_runs.c.experiment_id == exp_id))
                index.rev = top
                return index.search(experiment_ids, expr, order, limit, offset)

        return self._run(work, self._index_read_mode)

    def _index_horizon(self, conn: Connection) -> tuple[int, set[str] | None]:
        """Where the run index's next refresh starts (SQLite: the highest change number so far), and the
        ids of the experiments that exist if they came with it (None: read them when needed)."""
        raw = self._driver(conn, _S_RUNS_REV).fetchone()
        return (int(raw[0]) if raw is not None else 0), None

    @staticmethod
    def _changed_since(horizon: int) -> sa.ColumnElement[bool]:
        """The runs a refresh from ``horizon`` (the previous refresh's) must re-read."""
        return t_runs.c.rev > horizon

    def _latest_rev(self) -> int | None:
        """The store's current change number, read on a connection of its own outside any transaction
        (a WAL reader sees the last commit); None if it cannot be read (the caller then refreshes)."""
        with self._probe_lock:
            try:
                if self._probe is None or self._probe[0] != os.getpid():
                    probe = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                            check_same_thread=False)
                    self._probe = (os.getpid(), probe)
                raw = self._probe[1].execute(_S_RUNS_REV).fetchone()
            except sqlite3.Error:
                self._probe = None
                return None
        return int(raw[0]) if raw is not None else 0

    def _records(self, conn: Connection, condition: sa.ColumnElement[bool]) -> list[Record]:
        """Run-index records of the runs matching ``condition``."""
        rows = conn.execute(sa.select(*_RUN_COLUMNS, *self._detail_columns()).where(condition)).all()
        with _no_gc(len(rows) > 500):
            return [make_record(i.id, i.experiment_id, i.number, i.name, i.parent_id, i.status, i.start_time,
                                i.end_time, i.error, i.heartbeat, i.params, i.tags, i.metrics, i.results)
                    for i in self._infos_with_json_details(rows)]

    def search_statement(self, experiment_ids: Sequence[str], expr: Expr, order: Sequence[OrderKey],
                         limit: int | None = None, offset: int = 0, *,
                         ids_only: bool = False) -> sa.Select[Any]:
        """The SELECT a search runs (public so its plan can be inspected with EXPLAIN).

        ``ids_only`` selects just the ordered run ids (the first of the two queries of a paged search).
        """
        from labvault import query

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
        columns = (r.c.id,) if ids_only else (*_RUN_COLUMNS, *self._detail_columns())
        stmt = sa.select(*columns).select_from(fields.joined(r)).where(*conditions).order_by(*ordering)
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset:
            stmt = stmt.offset(offset)
        return stmt

    def _detail_columns(self) -> tuple[sa.ColumnElement[Any], sa.ColumnElement[Any]]:
        """Correlated subqueries giving a run's latest metrics and its results as JSON object texts.

        An infinite latest value travels as the string ``"inf"`` / ``"-inf"`` (SQLite writes infinities
        into JSON as ``Inf``, which no JSON parser reads); ``_infos_with_json_details`` converts it back.
        """
        value = t_latest.c.value
        # printf('%!.17g'): SQLite's own JSON writer prints doubles with 15 significant digits, which
        # would turn a logged 0.12345678901234568 into 0.123456789012346.
        encoded = sa.case((value.is_(None), sa.null()), (value > _DBL_MAX, sa.literal("inf")),
                          (value < -_DBL_MAX, sa.literal("-inf")),
                          else_=sa.func.json(sa.func.printf("%!.17g", value)))
        metrics = (sa.select(sa.func.json_group_object(t_latest.c.key, encoded))
                   .where(t_latest.c.run_id == t_runs.c.id).scalar_subquery())
        results = (sa.select(sa.func.json_group_object(t_results.c.key, sa.func.json(t_results.c.value_json)))
                   .where(t_results.c.run_id == t_runs.c.id).scalar_subquery())
        return metrics, results

    @staticmethod
    def _infos_with_json_details(rows: Sequence[Any]) -> list[RunInfo]:
        """RunInfos from rows of ``_RUN_COLUMNS`` followed by the two ``_detail_columns``."""
        loads = _loads
        nan = math.nan
        out = []
        for (run_id, experiment_id, number, name, parent_id, status, start_time, end_time, error,
             heartbeat, params_json, tags_json, metrics_json, results_json) in rows:
            metrics = loads(metrics_json) if metrics_json else {}
            for key, value in metrics.items():
                if value is None:  # a NaN latest value is stored as NULL
                    metrics[key] = nan
                elif value.__class__ is str:  # an infinity (see _detail_columns)
                    metrics[key] = float(value)
            out.append(RunInfo(
                id=run_id, experiment_id=experiment_id, number=number, name=name, parent_id=parent_id,
                status=status, start_time=start_time, end_time=end_time, error=error, heartbeat=heartbeat,
                params=loads(params_json), tags=loads(tags_json), metrics=metrics,
                results=loads(results_json) if results_json else {},
            ))
        return out

    def _update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        def work(conn: Connection, _attempt: int) -> None:
            if self._execute(conn, _U_RUN, {**fields, "b_run": run_id}).rowcount == 0:
                raise NotFoundError(f"run {run_id} not found")
            self._stamp(conn, run_id)

        self._run(work)

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        def work(conn: Connection, _attempt: int) -> None:
            doc = self._run_document(conn, run_id, t_runs.c.params_json)
            check_params_conflict(run_id, doc, params)
            new = {k: val for k, val in params.items() if k not in doc}
            if new:
                conn.execute(_I_PARAMS, self._param_rows(run_id, new))
                doc.update(new)
                conn.execute(_U_RUN, {"b_run": run_id, "params_json": _dumps(doc)})
                self._stamp(conn, run_id)

        self._run(work)

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        rows = [{"run_id": run_id, "key": k, "value": val} for k, val in tags.items()]

        def work(conn: Connection, _attempt: int) -> None:
            doc = self._run_document(conn, run_id, t_runs.c.tags_json)
            conn.execute(self._upserts()["run_tags"], rows)
            doc.update(tags)
            conn.execute(_U_RUN, {"b_run": run_id, "tags_json": _dumps(doc)})
            self._stamp(conn, run_id)

        self._run(work)

    @staticmethod
    def _run_document(conn: Connection, run_id: str, column: sa.Column[Any]) -> dict[str, Any]:
        """A run's params or tags document, its row locked until the commit (read-modify-write)."""
        raw = conn.execute(_S_RUN_DOC[column.name], {"b_run": run_id}).scalar()
        if raw is None:
            raise NotFoundError(f"run {run_id} not found")
        doc: dict[str, Any] = _loads(raw)
        return doc

    def _log_results(self, run_id: str, results: dict[str, Any]) -> None:
        rows = [{"run_id": run_id, "key": k, "value_json": _dumps(val)} for k, val in results.items()]

        def work(conn: Connection, _attempt: int) -> None:
            self._require_run(conn, run_id)
            conn.execute(self._upserts()["run_results"], rows)
            self._stamp(conn, run_id)

        self._run(work)

    # -- metrics --------------------------------------------------------------------------------------------
    @staticmethod
    def _metric_rows(run_id: str, series: list[MetricSeries], batch_id: str
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

    def _log_metrics(self, run_id: str, series: list[MetricSeries], batch_id: str | None) -> bool:
        given = batch_id is not None
        batch_id = batch_id or new_id()  # without a caller's id, still one per flush: our own retries
        pieces, latest = self._metric_rows(run_id, series, batch_id)
        keys = list({s.key for s in series})
        first_key = pieces[0][0]

        execute = self._execute

        def work(conn: Connection, attempt: int) -> bool:
            # one writer of a run's series at a time: the run's row stays locked until the commit, so a
            # re-sent batch waits for its first attempt and then finds its segments
            if execute(conn, _S_RUN_LOCK, {"b_run": run_id}).fetchone() is None:
                raise NotFoundError(f"run {run_id} not found")
            next_seq: dict[str, int]
            if len(keys) == 1:
                top = execute(conn, _S_LAST_SEQ_ONE, {"b_run": run_id, "b_key": keys[0]}).fetchone()[0]
                next_seq = {} if top is None else {keys[0]: int(top) + 1}
            else:
                next_seq = {key: int(top) + 1
                            for key, top in conn.execute(_S_LAST_SEQ, {"b_run": run_id, "b_keys": keys})}
            if (given or attempt) and first_key in next_seq and conn.execute(_S_BATCH_STORED, {
                    "b_run": run_id, "b_key": first_key, "b_batch": batch_id,
                    "b_from": next_seq[first_key] - BATCH_MEMORY}).first():
                return False  # applied before (all of it: one transaction)
            segments = []
            for key, row in pieces:
                seq = next_seq.get(key, 0)
                next_seq[key] = seq + 1
                segments.append({**row, "seq": seq})
            execute(conn, _I_SEGMENTS, segments[0] if len(segments) == 1 else segments)
            rows = list(latest.values())
            execute(conn, self._upserts()["metric_latest"], rows[0] if len(rows) == 1 else rows)
            self._stamp(conn, run_id)
            return True

        return bool(self._run(work))

    def _metric_history(self, run_id: str, key: str) -> MetricSeries:
        def work(conn: Connection, _attempt: int) -> Sequence[Any]:
            self._require_run(conn, run_id)
            return conn.execute(_S_HISTORY, {"b_run": run_id, "b_key": key}).all()

        rows = self._run(work, "read")
        if not rows:
            return MetricSeries.empty(key)
        total = sum(int(row[0]) for row in rows)
        steps = np.empty(total, dtype=np.int64)
        values = np.empty(total, dtype=np.float64)
        stamps = np.empty(total, dtype=np.float64)
        pos = 0
        for n, s_blob, v_blob, t_blob in rows:
            if not (len(s_blob) == len(v_blob) == len(t_blob) == n * 8):
                raise CorruptDataError(
                    f"{self._where()}: a segment of metric {key!r} of run {run_id} has the wrong size"
                )
            steps[pos:pos + n] = np.frombuffer(s_blob, dtype="<i8")
            values[pos:pos + n] = np.frombuffer(v_blob, dtype="<f8")
            stamps[pos:pos + n] = np.frombuffer(t_blob, dtype="<f8")
            pos += n
        return MetricSeries(key, steps, values, stamps)

    # -- artifacts ------------------------------------------------------------------------------------------
    def _add_artifact(self, run_id: str, info: ArtifactInfo) -> None:
        row = {"run_id": run_id, "key": info.key, "digest": info.digest, "size": info.size,
               "created_at": info.created_at}

        def work(conn: Connection, _attempt: int) -> None:
            self._require_run(conn, run_id)
            conn.execute(self._upserts()["artifacts"], row)

        self._run(work)

    def _add_artifacts(self, run_id: str, infos: list[ArtifactInfo]) -> None:
        rows = [{"run_id": run_id, "key": i.key, "digest": i.digest, "size": i.size,
                 "created_at": i.created_at} for i in infos]

        def work(conn: Connection, _attempt: int) -> None:
            self._require_run(conn, run_id)
            conn.execute(self._upserts()["artifacts"], rows)

        self._run(work)

    def _list_artifacts(self, run_id: str, prefix: str) -> list[ArtifactInfo]:
        a = t_artifacts
        stmt = sa.select(a.c.key, a.c.size, a.c.digest, a.c.created_at).where(a.c.run_id == run_id)
        if prefix:
            stmt = stmt.where(a.c.key.startswith(prefix, autoescape=True))

        def work(conn: Connection, _attempt: int) -> Sequence[Any]:
            self._require_run(conn, run_id)
            return conn.execute(stmt.order_by(a.c.key)).all()

        return [ArtifactInfo(key=k, size=int(size), digest=digest, created_at=created)
                for k, size, digest, created in self._run(work, "read")]


# -- blobs in the database ----------------------------------------------------------------------------------
class _AlreadyStored(Exception):
    """Raised inside an upload transaction to roll it back: the content was stored already."""


class _ChunkReader(io.RawIOBase):
    """A blob read back chunk by chunk, one query per chunk (the first came with the blob's row)."""

    def __init__(self, store: SQLBlobStore, key: str, blob_id: int, chunks: int, first: bytes) -> None:
        self._store = store
        self._key = key
        self._blob_id = blob_id
        self._chunks = chunks
        self._next = 1
        self._buffer = memoryview(first)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buffer:
            if self._next >= self._chunks:
                return 0
            self._buffer = memoryview(self._store._chunk(self._key, self._blob_id, self._next))
            self._next += 1
        n = min(len(buffer), len(self._buffer))
        memoryview(buffer).cast("B")[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


class SQLBlobStore(BlobStore):
    """Blobs inside an SQL backend's database: ``blobs`` rows naming ``blob_chunks`` of up to 1 MiB.

    An upload writes its chunks under a fresh random ``blob_id`` and the ``blobs`` row naming them in one
    transaction, so a partial blob is never visible (a failed or killed upload leaves nothing), and a
    replaced key never disturbs a reader still streaming the previous content. Reads fetch the blob's
    row with its first chunk in one query (all of a small blob), then one query per further chunk, so
    memory stays flat at any size. Content-addressed uploads (``put_content``) hash while they stream
    and roll back when the content is stored already. Small writes (one chunk) are retried after a lost
    connection like every transaction of the backend; a streamed upload cannot be replayed and fails
    with ``BackendUnavailableError`` instead.

    The default artifact store of PostgreSQL stores, and the small tier of SQLite's ``TieredBlobStore``.
    """

    def __init__(self, backend: SQLBackend) -> None:
        self._backend = backend

    def __repr__(self) -> str:
        return f"SQLBlobStore({self._backend.location!r})"

    # -- writes ----------------------------------------------------------------------------------------
    def _insert_chunks(self, conn: Connection, blob_id: int, chunks: Iterable[bytes],
                       sha: Any | None = None) -> tuple[int, int]:
        """Insert the chunks under ``blob_id``; return (size, number of chunks)."""
        size = count = 0
        for chunk in chunks:
            if not chunk:
                continue
            if sha is not None:
                sha.update(chunk)
            conn.execute(_I_CHUNK, {"blob_id": blob_id, "idx": count, "data": bytes(chunk)})
            size += len(chunk)
            count += 1
        return size, count

    def _replace(self, conn: Connection, key: str, blob_id: int, size: int, count: int) -> None:
        """Point ``key`` at ``blob_id`` and drop the chunks it named before (same transaction)."""
        old = conn.execute(_S_BLOB_ID.with_for_update(), {"b_key": key}).scalar()
        row = {"key": key, "blob_id": blob_id, "size": size, "chunks": count, "created_at": now()}
        if old is None:
            stmt = self._backend._insert(t_blobs)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["key"], set_={c: stmt.excluded[c] for c in ("blob_id", "size", "chunks",
                                                                             "created_at")}), row)
        else:
            conn.execute(sa.update(t_blobs).where(t_blobs.c.key == key).values(
                blob_id=blob_id, size=size, chunks=count, created_at=row["created_at"]))
            conn.execute(_D_CHUNKS, {"b_id": old})

    def _put(self, key: str, chunks: Iterator[bytes]) -> int:
        first = next(chunks, b"")
        second = next(chunks, None)
        if second is None:  # all in memory already: one transaction, retried after a lost connection
            data = bytes(first)

            def small(conn: Connection, _attempt: int) -> int:
                blob_id = secrets.randbits(63)
                size, count = self._insert_chunks(conn, blob_id, [data])
                self._replace(conn, key, blob_id, size, count)
                return size

            return self._backend._run(small)

        def streamed(conn: Connection, _attempt: int) -> int:
            blob_id = secrets.randbits(63)
            size, count = self._insert_chunks(conn, blob_id, itertools.chain([first, second], chunks))
            self._replace(conn, key, blob_id, size, count)
            return size

        return self._backend._run(streamed, retry=False)

    def put_content(self, data: BlobSource) -> tuple[str, int]:
        """Store ``data`` under its sha256 digest once; hash while streaming into the database."""
        source = iter_source(data)
        first = next(source, b"")
        second = next(source, None)
        if second is None:
            return self._put_small_content(bytes(first))
        sha = hashlib.sha256()

        def streamed(conn: Connection, _attempt: int) -> tuple[str, int]:
            blob_id = secrets.randbits(63)
            size, count = self._insert_chunks(conn, blob_id, itertools.chain([first, second], source), sha)
            digest = sha.hexdigest()
            row = {"key": self.digest_key(digest), "blob_id": blob_id, "size": size, "chunks": count,
                   "created_at": now()}
            if conn.execute(self._backend._upserts()["blobs"], row).first() is None:
                raise _AlreadyStored(digest, size)  # roll the chunks back: the content is there already
            return digest, size

        try:
            return self._backend._run(streamed, retry=False)
        except _AlreadyStored as stored:
            return stored.args[0], stored.args[1]

    def _put_small_content(self, data: bytes) -> tuple[str, int]:
        """One chunk: one transaction inserting the row (if new) and the chunk."""
        digest = hashlib.sha256(data).hexdigest()
        row = {"key": self.digest_key(digest), "blob_id": secrets.randbits(63), "size": len(data),
               "chunks": 1 if data else 0, "created_at": now()}
        chunk = {"blob_id": row["blob_id"], "idx": 0, "data": data}

        def work(conn: Connection, _attempt: int) -> None:
            # A retry after a commit that did happen finds the row and inserts nothing.
            if conn.execute(self._backend._upserts()["blobs"], row).first() is not None and data:
                conn.execute(_I_CHUNK, chunk)

        self._backend._run(work)
        return digest, len(data)

    def _put_content_many(self, items: list[BlobSource], workers: int | None) -> list[tuple[str, int]]:
        """Many small in-memory blobs in ONE transaction (a row, if new, and one chunk each)."""
        if not all(isinstance(d, bytes | bytearray | memoryview) and len(d) <= CHUNK_SIZE for d in items):
            return super()._put_content_many(items, workers)
        datas = [bytes(d) for d in items]  # type: ignore[arg-type]
        digests = [hashlib.sha256(d).hexdigest() for d in datas]
        stamp = now()
        rows = [{"key": self.digest_key(h), "blob_id": secrets.randbits(63), "size": len(d),
                 "chunks": 1 if d else 0, "created_at": stamp} for h, d in zip(digests, datas, strict=True)]
        upsert = self._backend._upserts()["blobs"]

        def work(conn: Connection, _attempt: int) -> None:
            # A retry after a commit that did happen finds the rows and inserts nothing.
            chunks = []
            execute = self._backend._execute
            for row, data in zip(rows, datas, strict=True):
                if execute(conn, upsert, row).fetchone() is not None and data:
                    chunks.append({"blob_id": row["blob_id"], "idx": 0, "data": data})
            if chunks:
                conn.execute(_I_CHUNK, chunks)

        self._backend._run(work)
        return [(h, len(d)) for h, d in zip(digests, datas, strict=True)]

    # -- reads ------------------------------------------------------------------------------------------
    def _head(self, key: str) -> tuple[int, int, int, bytes]:
        row = self._backend._run(lambda conn, _: conn.execute(_S_BLOB_HEAD, {"b_key": key}).first(), "read")
        if row is None:
            raise NotFoundError(f"no blob {key!r} in {self._backend.location}")
        blob_id, size, chunks, first = row
        return int(blob_id), int(size), int(chunks), bytes(first or b"")

    def _chunk(self, key: str, blob_id: int, idx: int) -> bytes:
        data = self._backend._run(
            lambda conn, _: conn.execute(_S_BLOB_CHUNK, {"b_id": blob_id, "b_idx": idx}).scalar(), "read")
        if data is None:
            raise NotFoundError(f"blob {key!r} in {self._backend.location} was replaced or deleted while "
                                f"being read (chunk {idx} is gone)")
        return bytes(data)

    def _open(self, key: str) -> BinaryIO:
        blob_id, _size, chunks, first = self._head(key)
        return io.BufferedReader(_ChunkReader(self, key, blob_id, chunks, first), CHUNK_SIZE)

    def _info(self, key: str) -> BlobInfo:
        """A content-addressed blob's info from its row (its key names its digest: no chunk is read);
        any other key is read and hashed. The time is now, as for every store that keeps none (gc keeps
        what it cannot date)."""
        digest = self.key_digest(key)
        if digest is None:
            return super()._info(key)
        size = self._backend._run(lambda conn, _: conn.execute(_S_BLOB_SIZE, {"b_key": key}).scalar(), "read")
        if size is None:
            raise NotFoundError(f"no blob {key!r} in {self._backend.location}")
        return BlobInfo(key, int(size), digest, time.time(), digest)

    def get_content(self, digest: str) -> bytes:
        """Read a content-addressed blob whole (one query when it is one chunk) and verify its digest."""
        key = self.digest_key(digest)
        blob_id, size, chunks, first = self._head(key)
        if chunks <= 1:
            data = first
        else:
            with io.BufferedReader(_ChunkReader(self, key, blob_id, chunks, first), CHUNK_SIZE) as fh:
                data = fh.read()
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest or len(data) != size:
            raise CorruptDataError(f"blob {digest} is corrupt: its sha256 is {actual}")
        return data

    def _exists(self, key: str) -> bool:
        return self._backend._run(
            lambda conn, _: conn.execute(_S_BLOB_ID, {"b_key": key}).first() is not None, "read")

    def _delete(self, key: str) -> None:
        def work(conn: Connection, _attempt: int) -> None:
            old = conn.execute(_S_BLOB_ID.with_for_update(), {"b_key": key}).scalar()
            if old is not None:
                conn.execute(_D_BLOB, {"b_key": key})
                conn.execute(_D_CHUNKS, {"b_id": old})

        self._backend._run(work)

    def _list(self, prefix: str) -> Iterator[str]:
        stmt = sa.select(t_blobs.c.key).order_by(t_blobs.c.key)
        if prefix:
            stmt = stmt.where(t_blobs.c.key.startswith(prefix, autoescape=True))
        return iter(self._backend._run(lambda conn, _: list(conn.execute(stmt).scalars()), "read"))

    def delete_orphans(self) -> int:
        """Delete chunks no blob names (left by two writers racing to replace one key); return how many.

        Safe while others write: an upload's chunks are invisible until its transaction commits them
        together with the row that names them.
        """
        stmt = sa.delete(t_chunks).where(t_chunks.c.blob_id.not_in(sa.select(t_blobs.c.blob_id)))
        return int(self._backend._run(lambda conn, _: conn.execute(stmt).rowcount))


class _PrefixedReader:
    """A binary file object that returns ``head`` first, then the rest of ``rest``."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if self._head:
            n = len(self._head) if size < 0 else min(size, len(self._head))
            out = bytes(self._head[:n])
            self._head = self._head[n:]
            return out
        data = self._rest.read(size)
        return bytes(data) if data else b""


class TieredBlobStore(BlobStore):
    """Small blobs (<= ``limit`` bytes) in one store, larger ones in another; reads try small first.

    SQLite's default: small blobs inside the database (one transaction, no file to create and fsync, so
    thousands of small artifacts a second), large ones as files in the sibling folder (copied by the
    kernel, verified on read). Writing a key into one tier removes it from the other, so reads never
    find a stale copy.
    """

    def __init__(self, small: BlobStore, large: BlobStore, limit: int = SMALL_BLOB_LIMIT) -> None:
        self.small = small
        self.large = large
        self.limit = limit

    def __repr__(self) -> str:
        return f"TieredBlobStore({self.small!r}, {self.large!r}, limit={self.limit})"

    @property
    def pending(self) -> Any:
        """The large tier's group-commit queue (files written since the last ``sync``)."""
        return getattr(self.large, "pending", None)

    def _read_head(self, read: Callable[[int], Any]) -> bytes:
        """Up to ``limit + 1`` bytes from a file object's ``read`` (fewer only at its end)."""
        parts: list[bytes] = []
        got = 0
        while got <= self.limit:
            chunk = read(self.limit + 1 - got)
            if not chunk:
                break
            if not isinstance(chunk, bytes | bytearray):
                raise InvalidArgumentError("artifact file object must be opened in binary mode ('rb')")
            parts.append(bytes(chunk))
            got += len(chunk)
        return b"".join(parts)

    def put_content(self, data: BlobSource) -> tuple[str, int]:
        if isinstance(data, bytes | bytearray | memoryview):
            return (self.small if len(data) <= self.limit else self.large).put_content(data)
        if isinstance(data, str | os.PathLike):
            path = Path(data)
            try:
                small = path.is_file() and path.stat().st_size <= self.limit
            except OSError:
                small = False
            if small:
                with path.open("rb") as fh:
                    return self.put_content(_PrefixedReader(b"", fh))  # type: ignore[arg-type]
            return self.large.put_content(data)
        read = getattr(data, "read", None)
        if not callable(read):
            return self.large.put_content(data)  # raises InvalidArgumentError naming the type
        head = self._read_head(read)
        if len(head) <= self.limit:
            return self.small.put_content(head)
        return self.large.put_content(_PrefixedReader(head, data))  # type: ignore[arg-type]

    def _put_content_many(self, items: list[BlobSource], workers: int | None) -> list[tuple[str, int]]:
        """Small in-memory blobs to the small tier in one batch; everything else one by one."""
        small = [i for i, d in enumerate(items)
                 if isinstance(d, bytes | bytearray | memoryview) and len(d) <= self.limit]
        out: list[tuple[str, int] | None] = [None] * len(items)
        for i, stored in zip(small, self.small.put_content_many([items[i] for i in small]), strict=True):
            out[i] = stored
        for i, data in enumerate(items):
            if out[i] is None:
                out[i] = self.put_content(data)
        return cast(list[tuple[str, int]], out)

    def _put(self, key: str, chunks: Iterator[bytes]) -> int:
        parts: list[bytes] = []
        got = 0
        for chunk in chunks:
            parts.append(chunk)
            got += len(chunk)
            if got > self.limit:
                break
        if got <= self.limit:
            size = self.small._put(key, iter([b"".join(parts)]))
            self.large._delete(key)
            return size
        size = self.large._put(key, itertools.chain(parts, chunks))
        self.small._delete(key)
        return size

    def _open(self, key: str) -> BinaryIO:
        try:
            return self.small._open(key)
        except NotFoundError:
            return self.large._open(key)

    def _info(self, key: str) -> BlobInfo:
        try:
            return self.small._info(key)
        except NotFoundError:
            return self.large._info(key)

    def open_content(self, digest: str) -> BinaryIO:
        try:
            return self.small.open_content(digest)
        except NotFoundError:
            return self.large.open_content(digest)

    def get_content(self, digest: str) -> bytes:
        try:
            return self.small.get_content(digest)
        except NotFoundError:
            return self.large.get_content(digest)

    def copy_content_to(self, digest: str, dest: Path) -> int:
        if self.small._exists(self.digest_key(digest)):
            return self.small.copy_content_to(digest, dest)
        return self.large.copy_content_to(digest, dest)

    def _exists(self, key: str) -> bool:
        return self.small._exists(key) or self.large._exists(key)

    def _delete(self, key: str) -> None:
        self.small._delete(key)
        self.large._delete(key)

    def _list(self, prefix: str) -> Iterator[str]:
        return iter(sorted(set(self.small._list(prefix)) | set(self.large._list(prefix))))

    def sync(self) -> None:
        self.small.sync()
        self.large.sync()

    def close(self) -> None:
        self.small.close()
        self.large.close()


def _parse_sqlite_uri(uri: str) -> tuple[Path, dict[str, str]]:
    """The database path and query options of ``sqlite:///relative.db`` or ``sqlite:////abs.db``."""
    if not isinstance(uri, str) or "://" not in uri:
        raise InvalidArgumentError(f"{uri!r} is not a sqlite:// URI")
    if "\x00" in uri:
        raise InvalidArgumentError(f"{uri!r} contains a NUL character")
    parts = urlsplit(uri)
    if parts.scheme.lower() != "sqlite":
        raise InvalidArgumentError(f"{uri!r} is not a sqlite:// URI")
    if parts.netloc:
        raise InvalidArgumentError(
            f"{uri!r} names a host {parts.netloc!r}: write sqlite:///relative/path.db or sqlite:////abs/path.db"
        )
    raw = unquote(parts.path)
    if not raw.startswith("/") or raw in ("/", "//"):
        raise InvalidArgumentError(f"{uri!r} names no database file: write sqlite:///path.db")
    raw = raw[1:]
    if raw == ":memory:" or raw.startswith("file:"):
        raise InvalidArgumentError(f"{uri!r}: in-memory SQLite is not supported, use memory:// instead")
    if raw.endswith("/"):
        raise InvalidArgumentError(f"{uri!r} names a directory, not a database file")
    try:
        query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
    except ValueError as exc:
        raise InvalidArgumentError(f"{uri!r} has a malformed query string: {exc}") from exc
    return Path(raw).expanduser(), query


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
    from labvault import query

    needs_row = isinstance(item, query.Compare) or (
        isinstance(item, query.InList | query.Like) and not item.negated) or (
        isinstance(item, query.IsNull) and item.negated)
    if not needs_row or item.field.kind not in ("params", "metrics", "tags"):
        return None
    field: Field = item.field
    return field


def upgrade(uri: str) -> tuple[int, int]:
    """Upgrade the SQL store at ``uri`` (SQLite or PostgreSQL) to this labvault's schema; return (old, new).

    This is what ``labvault db upgrade --uri ...`` runs. Safe when several processes run it at once.
    """
    from labvault.store import registry

    scheme = uri.split("://", 1)[0].lower() if isinstance(uri, str) and "://" in uri else ""
    cls = registry.backend_class(scheme) if scheme else None
    if cls is None or not issubclass(cls, SQLBackend):
        raise InvalidArgumentError(f"{uri!r} is not an SQL store (sqlite:// or postgresql://)")
    backend = cls.from_uri(uri)
    try:
        return backend.upgrade()
    finally:
        backend.close()
