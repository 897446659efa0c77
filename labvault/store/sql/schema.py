"""The tables of the SQL stores (SQLite and PostgreSQL) by schema version, and the hot paths' statements.

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

(``blobs`` and ``blob_chunks`` belong to ``labvault.blobs.sql.SQLBlobStore``, which defines them.)

Every foreign key cascades on delete, so deleting an experiment removes its runs and everything hanging
off them (``parent_id`` is deliberately not a foreign key: like the memory backend, a child run in another
experiment keeps its parent id when the parent's experiment is deleted).

Metrics are columnar segments: one row per flush and key (large batches split every
``SEGMENT_POINTS`` points) holding the steps, values and timestamps as raw little-endian int64 / float64
bytes, so a history of a million points is a handful of rows read straight into numpy. ``metric_latest``
holds the last appended point of every (run, key), written in the same transaction as the segment, so
search and run listings never scan series. SQLite stores a NaN ``REAL`` as NULL, so a NULL latest value
reads back as NaN (PostgreSQL does the same, for one behaviour). Every flush carries a ``batch_id``
written on its segments (see ``SQLBackend._log_metrics``).

A run's params and tags are stored twice, in one transaction: as one JSON document per run on ``runs``
(``params_json``, ``tags_json``), which is what listings read (one row per run instead of fifteen; 10,000
runs list in tens of milliseconds), and as one row per key in ``run_params`` / ``run_tags``, which is what
search filters and sorts on (``labvault.store.sql.runs`` encodes them). Text columns that are compared or
sorted use the ``C`` collation on PostgreSQL, so text orders by code point as in SQLite and the memory
model whatever the database's default collation.

``schema_metadata(version)`` describes the tables of every version, so old layouts can be rebuilt (tests
do) and fresh stores are created directly at the current one; ``labvault.store.sql.migrations`` takes a
store from one version to the next.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from labvault.blobs.sql import blob_tables
from labvault.errors import InvalidArgumentError

__all__ = ["LABVAULT_TABLES", "RUN_COLUMNS", "SCHEMA_VERSION", "SEGMENT_POINTS", "schema_metadata"]

#: The schema version this code reads and writes.
SCHEMA_VERSION = 5
#: Points per ``metric_segments`` row at most (512 KiB per array); larger batches are split.
SEGMENT_POINTS = 65_536
#: The tables of a labvault store (a database holding some of them but no ``meta`` is not one).
LABVAULT_TABLES = frozenset({"experiments", "runs", "run_params", "run_tags", "run_results",
                             "metric_segments", "metric_latest", "artifacts", "blobs", "blob_chunks"})

#: Version 3: (key, value) indexes that let a filter find the runs holding a value.
_SEARCH_INDEXES = (
    ("ix_run_params_key_num", "run_params", ("key", "value_num")),
    ("ix_run_params_key_text", "run_params", ("key", "value_text")),
    ("ix_run_tags_key_value", "run_tags", ("key", "value")),
    ("ix_metric_latest_key_value", "metric_latest", ("key", "value")),
)

Col = sa.Column


def _text(length: int | None = None) -> sa.types.TypeEngine[str]:
    """A text column compared and sorted by code point: SQLite's default, ``COLLATE "C"`` on PostgreSQL."""
    base: sa.types.TypeEngine[str] = sa.String(length) if length else sa.Text()
    ordered: sa.types.TypeEngine[str] = sa.String(length, collation="C") if length else sa.Text(collation="C")
    return base.with_variant(ordered, "postgresql")


def _run_fk() -> sa.Column[str]:
    return Col("run_id", sa.String(64), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False)


def schema_metadata(version: int = SCHEMA_VERSION) -> sa.MetaData:
    """The tables of schema ``version`` (1 to 5). Later versions add conditions here, never edit old ones."""
    if not 1 <= version <= SCHEMA_VERSION:
        raise InvalidArgumentError(f"unknown schema version {version}")
    md = sa.MetaData()
    sa.Table("meta", md, Col("key", sa.String(64), primary_key=True), Col("value", sa.Text, nullable=False))
    _experiment_and_run_tables(md, version)
    _run_value_tables(md, version)
    if version >= 3:
        # Search drives from the matching values instead of probing every run (see runs.search_statement).
        # Only on PostgreSQL since SQLite stores searched from the in-process run index (schema version 5):
        # there the SQL search is a fallback, and these four B-trees cost every new run ~17 page
        # writes of its ~31 (W1 730 -> 1,200 runs/s without them). SQLite stores created earlier keep
        # theirs, which only slows their writes.
        for name, table, columns in _SEARCH_INDEXES:
            sa.Index(name, *(md.tables[table].c[c] for c in columns)).ddl_if(dialect="postgresql")
    if version >= 4:
        blob_tables(md)  # blobs in the database (SQLBlobStore)
    return md


def _experiment_and_run_tables(md: sa.MetaData, version: int) -> None:
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


def _run_value_tables(md: sa.MetaData, version: int) -> None:
    """What hangs off a run: params, tags, results, metric segments and latest values, artifacts."""
    sa.Table(
        "run_params", md, _run_fk(),
        Col("key", sa.String(250), nullable=False),
        Col("value_json", sa.Text, nullable=False),
        Col("value_num", sa.Double),
        Col("value_text", _text()),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_run_params"),
    )
    sa.Table(
        "run_tags", md, _run_fk(),
        Col("key", sa.String(250), nullable=False),
        Col("value", _text(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_run_tags"),
    )
    sa.Table(
        "run_results", md, _run_fk(),
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
        "metric_segments", md, _run_fk(), *segment_columns,
        sa.PrimaryKeyConstraint("run_id", "key", "seq", name="pk_metric_segments"),
    )
    if version >= 2:
        sa.Table(
            "metric_latest", md, _run_fk(),
            Col("key", sa.String(250), nullable=False),
            Col("value", sa.Double),  # NULL is NaN (SQLite cannot store a NaN REAL)
            Col("step", sa.BigInteger, nullable=False),
            Col("timestamp", sa.Double, nullable=False),
            sa.PrimaryKeyConstraint("run_id", "key", name="pk_metric_latest"),
        )
    sa.Table(
        "artifacts", md, _run_fk(),
        Col("key", _text(1024), nullable=False),
        Col("digest", sa.String(64), nullable=False),
        Col("size", sa.BigInteger, nullable=False),
        Col("created_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_artifacts"),
    )


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
#: The columns a RunInfo is built from, in the order ``runs.run_infos`` unpacks them.
RUN_COLUMNS = tuple(t_runs.c[name] for name in (
    "id", "experiment_id", "number", "name", "parent_id", "status", "start_time", "end_time", "error",
    "heartbeat", "params_json", "tags_json"))

# Statements of the hot paths, built once (SQLAlchemy then reuses their compiled form from its cache).
S_RUN_EXISTS = sa.select(t_runs.c.id).where(t_runs.c.id == sa.bindparam("b_run"))
#: The run row, locked against concurrent writers of the same run (PostgreSQL; SQLite's BEGIN IMMEDIATE
#: already serializes writers and SQLAlchemy renders no FOR UPDATE there).
S_RUN_LOCK = S_RUN_EXISTS.with_for_update(key_share=True)
#: A run's params or tags document, its row locked (by column name).
S_RUN_DOC = {
    column.name: sa.select(column).where(t_runs.c.id == sa.bindparam("b_run")).with_for_update(key_share=True)
    for column in (t_runs.c.params_json, t_runs.c.tags_json)
}
S_RUN_NUMBER = sa.select(t_runs.c.number).where(t_runs.c.id == sa.bindparam("b_run"))
U_RUN = sa.update(t_runs).where(t_runs.c.id == sa.bindparam("b_run"))
U_COUNTER = (
    sa.update(t_experiments).where(t_experiments.c.id == sa.bindparam("b_exp"))
    .values(run_counter=t_experiments.c.run_counter + 1).returning(t_experiments.c.run_counter)
)
I_RUN = sa.insert(t_runs)
I_PARAMS = sa.insert(t_params)
I_TAGS = sa.insert(t_tags)
I_SEGMENTS = sa.insert(t_segments)
S_LAST_SEQ = (
    sa.select(t_segments.c.key, sa.func.max(t_segments.c.seq))
    .where(t_segments.c.run_id == sa.bindparam("b_run"),
           t_segments.c.key.in_(sa.bindparam("b_keys", expanding=True)))
    .group_by(t_segments.c.key)
)
S_EXPERIMENT_IDS = sa.select(t_experiments.c.id)
S_LAST_SEQ_ONE = (
    sa.select(sa.func.max(t_segments.c.seq))
    .where(t_segments.c.run_id == sa.bindparam("b_run"), t_segments.c.key == sa.bindparam("b_key"))
)
#: Whether a batch is stored: its first key's newest segments (a primary-key range scan, never the run's
#: whole history) carry its id. ``b_from`` is ``BATCH_MEMORY`` segments below the key's last one.
S_BATCH_STORED = (
    sa.select(t_segments.c.seq)
    .where(t_segments.c.run_id == sa.bindparam("b_run"), t_segments.c.key == sa.bindparam("b_key"),
           t_segments.c.seq >= sa.bindparam("b_from"), t_segments.c.batch_id == sa.bindparam("b_batch"))
    .limit(1)
)
S_HISTORY = (
    sa.select(t_segments.c.n, t_segments.c.steps, t_segments.c["values"], t_segments.c.timestamps)
    .where(t_segments.c.run_id == sa.bindparam("b_run"), t_segments.c.key == sa.bindparam("b_key"))
    .order_by(t_segments.c.seq)
)
