"""The SQLite backend (and the base of the PostgreSQL one) on SQLAlchemy Core.

URIs: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``; parent directories are created.
Artifact bytes go to a ``FileBlobStore`` in the sibling directory ``<stem>-blobs`` (``./data/lv.db`` ->
``./data/lv-blobs``) unless a store is given with ``artifacts=``. Options: ``busy_timeout`` (seconds a
writer waits for another process's write lock, default 30), also accepted as a URI query parameter.

Schema (version 3)::

    meta(key PK, value)                                   -- schema_version
    experiments(id PK, name, project, created_at, run_counter, UNIQUE(project, name))
    runs(id PK, experiment_id FK, number, name, parent_id, status, start_time, end_time, error,
         heartbeat, params_json, tags_json, UNIQUE(experiment_id, number))
    run_params(run_id FK, key, value_json, value_num, value_text, PK(run_id, key))
    run_tags(run_id FK, key, value, PK(run_id, key))
    run_results(run_id FK, key, value_json, PK(run_id, key))
    metric_segments(run_id FK, key, seq, n, steps, "values", timestamps, PK(run_id, key, seq))
    metric_latest(run_id FK, key, value, step, timestamp, PK(run_id, key))      -- new in version 2
    artifacts(run_id FK, key, digest, size, created_at, PK(run_id, key))
    indexes on (key, value_num) and (key, value_text) of run_params, (key, value) of run_tags and
    metric_latest                                                               -- new in version 3

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
reads back as NaN.

A run's params and tags are stored twice, in one transaction: as one JSON document per run on ``runs``
(``params_json``, ``tags_json``), which is what listings read (one row per run instead of fifteen; 10,000
runs list in tens of milliseconds), and as one row per key in ``run_params`` / ``run_tags``, which is what
search filters and sorts on. Param rows keep their JSON text (``value_json``) plus the typed columns the
query compiler uses: ``value_num`` for int/float (not bool) values, ``value_text`` for everything else
(strings as they are, bools as ``"true"``/``"false"``, other JSON as compact sorted ``json.dumps``, JSON
null as NULL).

Schema versions and migrations: a new, empty store is created at the current version on first use (no
setup step), serialized across processes by the write lock. A store at an older version is never upgraded
silently: opening it raises ``UnsupportedOperationError`` naming ``labvault db upgrade``, which runs
``upgrade()``: every pending migration in ``MIGRATIONS`` in one write transaction that re-reads the
version under the lock, so several processes may run it at once (all but the first find nothing to do).
``schema_metadata(version)`` describes the tables of every version, so old layouts can be rebuilt (tests
do) and fresh stores are created directly at the current one.

Transactions: on SQLite every write transaction starts with ``BEGIN IMMEDIATE`` (the driver runs in
autocommit mode and the ``begin`` event emits the statement), so concurrent writer processes queue on
the database lock for ``busy_timeout`` seconds instead of failing when a read transaction tries to
upgrade to a write. Reads use a plain deferred ``BEGIN`` (a consistent WAL snapshot across the few
queries of a listing). Driver errors are translated at the boundary: locked / unable to open ->
``BackendUnavailableError``, "file is not a database" / malformed -> ``CorruptDataError``.

The dialect-specific parts (engine and connection setup, the dialect's ``insert`` for upserts and the
schema lock) are ``_create_engine``, ``_insert`` and ``_lock_schema``; everything else is portable SQL.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import operator
import os
import struct
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from labvault.backends.base import Backend, BlobStore, check_options, check_params_conflict
from labvault.domain import ArtifactInfo, ExperimentInfo, MetricSeries, RunInfo, now
from labvault.errors import (
    BackendUnavailableError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
    UnsupportedOperationError,
)

if TYPE_CHECKING:
    from labvault.query import Expr, Field, OrderKey

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SEGMENT_POINTS", "SQLBackend", "schema_metadata", "upgrade"]

#: The schema version this code reads and writes.
SCHEMA_VERSION = 3
#: Points per ``metric_segments`` row at most (512 KiB per array); larger batches are split.
SEGMENT_POINTS = 65_536
_DEFAULT_BUSY_TIMEOUT = 30.0
_WRITE_OPTION = "labvault_write"
_LABVAULT_TABLES = frozenset({"experiments", "runs", "run_params", "run_tags", "run_results",
                              "metric_segments", "metric_latest", "artifacts"})


def new_id() -> str:
    """A fresh 32-hex-digit id."""
    return uuid.uuid4().hex


# -- schema -----------------------------------------------------------------------------------------------
#: Version 3: (key, value) indexes that let a filter find the runs holding a value.
_SEARCH_INDEXES = (
    ("ix_run_params_key_num", "run_params", ("key", "value_num")),
    ("ix_run_params_key_text", "run_params", ("key", "value_text")),
    ("ix_run_tags_key_value", "run_tags", ("key", "value")),
    ("ix_metric_latest_key_value", "metric_latest", ("key", "value")),
)

def schema_metadata(version: int = SCHEMA_VERSION) -> sa.MetaData:
    """The tables of schema ``version`` (1 to 3). Later versions add conditions here, never edit old ones."""
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
        Col("name", sa.String(128), nullable=False),
        Col("project", sa.String(128), nullable=False),
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
        Col("name", sa.String(128)),
        Col("parent_id", sa.String(64)),
        Col("status", sa.String(16), nullable=False),
        Col("start_time", sa.Double, nullable=False),
        Col("end_time", sa.Double),
        Col("error", sa.Text),
        Col("heartbeat", sa.Double),
        Col("params_json", sa.Text, nullable=False, server_default="{}"),
        Col("tags_json", sa.Text, nullable=False, server_default="{}"),
        sa.UniqueConstraint("experiment_id", "number", name="uq_runs_experiment_number"),
        sa.Index("ix_runs_parent_id", "parent_id"),
        sa.Index("ix_runs_start_time", "start_time"),
    )
    sa.Table(
        "run_params", md, run_fk(),
        Col("key", sa.String(250), nullable=False),
        Col("value_json", sa.Text, nullable=False),
        Col("value_num", sa.Double),
        Col("value_text", sa.Text),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_run_params"),
    )
    sa.Table(
        "run_tags", md, run_fk(),
        Col("key", sa.String(250), nullable=False),
        Col("value", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_run_tags"),
    )
    sa.Table(
        "run_results", md, run_fk(),
        Col("key", sa.String(250), nullable=False),
        Col("value_json", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_run_results"),
    )
    sa.Table(
        "metric_segments", md, run_fk(),
        Col("key", sa.String(250), nullable=False),
        Col("seq", sa.Integer, nullable=False),
        Col("n", sa.Integer, nullable=False),
        Col("steps", sa.LargeBinary, nullable=False),
        Col("values", sa.LargeBinary, nullable=False),
        Col("timestamps", sa.LargeBinary, nullable=False),
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
        Col("key", sa.String(1024), nullable=False),
        Col("digest", sa.String(64), nullable=False),
        Col("size", sa.BigInteger, nullable=False),
        Col("created_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_artifacts"),
    )
    if version >= 3:
        # Search drives from the matching values instead of probing every run (see _search_runs).
        for name, table, columns in _SEARCH_INDEXES:
            sa.Index(name, *(md.tables[table].c[c] for c in columns))
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
#: The columns a RunInfo is built from, in the order ``_infos_with_json_details`` unpacks them.
_RUN_COLUMNS = tuple(t_runs.c[name] for name in (
    "id", "experiment_id", "number", "name", "parent_id", "status", "start_time", "end_time", "error",
    "heartbeat", "params_json", "tags_json"))

# Statements of the hot paths, built once (SQLAlchemy then reuses their compiled form from its cache).
_S_RUN_EXISTS = sa.select(t_runs.c.id).where(t_runs.c.id == sa.bindparam("b_run"))
_S_RUN_DOC = {
    column.name: sa.select(column).where(t_runs.c.id == sa.bindparam("b_run"))
    for column in (t_runs.c.params_json, t_runs.c.tags_json)
}
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
_S_HISTORY = (
    sa.select(t_segments.c.n, t_segments.c.steps, t_segments.c["values"], t_segments.c.timestamps)
    .where(t_segments.c.run_id == sa.bindparam("b_run"), t_segments.c.key == sa.bindparam("b_key"))
    .order_by(t_segments.c.seq)
)


def _migrate_1_to_2(conn: Connection) -> None:
    """Version 2 adds ``metric_latest``: create it and backfill it from each series' last segment."""
    schema_metadata(2).tables["metric_latest"].create(conn, checkfirst=True)
    seg = t_segments
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
    for index in schema_metadata(3).tables["run_params"].indexes | schema_metadata(3).tables[
            "run_tags"].indexes | schema_metadata(3).tables["metric_latest"].indexes:
        index.create(conn, checkfirst=True)


#: ``MIGRATIONS[i]`` takes a store from version ``i + 1`` to ``i + 2`` inside the caller's transaction.
MIGRATIONS: list[Callable[[Connection], None]] = [_migrate_1_to_2, _migrate_2_to_3]
assert len(MIGRATIONS) == SCHEMA_VERSION - 1


# -- value encoding ---------------------------------------------------------------------------------------
def _loads(raw: str | bytes) -> Any:
    """Parse a stored JSON document: orjson (fast), or json for integers beyond 64 bits."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _dumps(value: Any) -> str:
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


@contextlib.contextmanager
def _gc_paused(big: bool) -> Iterator[None]:
    """Pause the cyclic GC while building many small objects (a bulk listing): it would otherwise run
    dozens of collections over them, a third of the time of listing 10,000 runs. Nothing built here
    is cyclic, and the collector is re-enabled (if it was on) before returning."""
    if not big or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _blob(array: np.ndarray[Any, Any], dtype: str) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


# -- the backend ------------------------------------------------------------------------------------------
class SQLBackend(Backend, scheme="sqlite"):
    """Metadata in SQLite (WAL) through SQLAlchemy Core; artifacts in a sibling content-addressed folder."""

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
    _options: ClassVar[dict[str, float]] = {"busy_timeout": _DEFAULT_BUSY_TIMEOUT}

    def __init__(self, uri: str, path: Path, *, blobs: BlobStore | None = None,
                 busy_timeout: float = _DEFAULT_BUSY_TIMEOUT) -> None:
        super().__init__(uri, blobs)
        self.path = path
        self.busy_timeout = busy_timeout
        self._engine: Engine | None = None
        self._writer: Engine | None = None
        self._schema_ok = False
        self._init_lock = threading.Lock()
        self._upsert_cache: dict[str, Any] | None = None
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
        from labvault.backends.localfs import FileBlobStore

        return FileBlobStore(self.path.with_name(f"{self.path.stem}-blobs"))

    def close(self) -> None:
        """Dispose of the connection pool and close the blob store. Safe to call twice."""
        with self._init_lock:
            engine, self._engine, self._writer = self._engine, None, None
            self._schema_ok = False
        if engine is not None:
            engine.dispose()
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
                cur.execute("PRAGMA foreign_keys = ON")
                cur.execute("PRAGMA case_sensitive_like = ON")
            finally:
                cur.close()

        def on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get(_WRITE_OPTION)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        event.listen(engine, "connect", on_connect)
        event.listen(engine, "begin", on_begin)
        return engine

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which has ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""
        if self._dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            return sqlite_insert(table)
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)

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
            self._upsert_cache = upserts
        return upserts

    def _lock_schema(self, conn: Connection) -> None:
        """Serialize schema creation and upgrades across processes (SQLite: BEGIN IMMEDIATE already does)."""
        if self._dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7021781865)"))

    @property
    def location(self) -> str:
        """Where the store lives, for messages (the database path; a server address for PostgreSQL)."""
        return str(self.path)

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

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sa_exc.DBAPIError as exc:
            raise self._translate_error(exc) from exc

    def _engines(self) -> tuple[Engine, Engine]:
        with self._init_lock:
            if self._engine is not None and self._pid != os.getpid():
                # A forked child must not share the parent's SQLite connections: start a fresh pool.
                self._engine.dispose(close=False)
                self._engine = self._writer = None
            if self._engine is None or self._writer is None:
                self._pid = os.getpid()
                self._engine = self._create_engine()
                self._writer = self._engine.execution_options(**{_WRITE_OPTION: True})
            return self._engine, self._writer

    def _ready(self) -> tuple[Engine, Engine]:
        engine, writer = self._engine, self._writer
        if self._schema_ok and engine is not None and writer is not None and self._pid == os.getpid():
            return engine, writer
        engine, writer = self._engines()
        with self._translated():
            self._open_schema(engine, writer)
        self._schema_ok = True
        return engine, writer

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        engine, _ = self._ready()
        with self._translated(), engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        _, writer = self._ready()
        with self._translated(), writer.begin() as conn:
            yield conn

    # -- schema versions ------------------------------------------------------------------------------------
    def _read_version(self, conn: Connection) -> int | None:
        """The store's schema version; None for an empty database."""
        names = set(sa.inspect(conn).get_table_names())
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

    def _check_version(self, version: int) -> None:
        if version < SCHEMA_VERSION:
            raise UnsupportedOperationError(
                f"store at {self.location} has schema version {version}, "
                f"this labvault needs {SCHEMA_VERSION}: run 'labvault db upgrade --uri {self.uri}'"
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
                version = self._read_version(conn)
                if version is None:
                    self._create_schema(conn)
                    version = SCHEMA_VERSION
        self._check_version(version)

    def schema_version(self) -> int | None:
        """The store's schema version without creating or upgrading anything (None: an empty store)."""
        engine, _ = self._engines()
        with self._translated(), engine.connect() as conn:
            return self._read_version(conn)

    def upgrade(self) -> tuple[int, int]:
        """Bring the store to ``SCHEMA_VERSION``; return (old version, new version).

        An empty store is created, reported as version 0. Runs every pending migration in one write
        transaction after re-reading the version under the lock, so concurrent upgrades are safe.
        """
        _, writer = self._engines()
        with self._translated(), writer.begin() as conn:
            self._lock_schema(conn)
            version = self._read_version(conn)
            if version is None:
                self._create_schema(conn)
                result = (0, SCHEMA_VERSION)
            else:
                if version > SCHEMA_VERSION:
                    self._check_version(version)
                for step in range(version, SCHEMA_VERSION):
                    MIGRATIONS[step - 1](conn)
                    conn.execute(sa.update(t_meta).where(t_meta.c.key == "schema_version")
                                 .values(value=str(step + 1)))
                result = (version, SCHEMA_VERSION)
        self._schema_ok = True
        return result

    # -- helpers --------------------------------------------------------------------------------------------
    @staticmethod
    def _require_run(conn: Connection, run_id: str) -> None:
        if conn.execute(_S_RUN_EXISTS, {"b_run": run_id}).first() is None:
            raise NotFoundError(f"run {run_id} not found")

    @staticmethod
    def _experiment_info(row: Any) -> ExperimentInfo:
        return ExperimentInfo(row.id, row.name, row.project, row.created_at)

    # -- experiments ----------------------------------------------------------------------------------------
    def _ensure_experiment(self, name: str, project: str) -> ExperimentInfo:
        e = t_experiments
        where = sa.and_(e.c.project == project, e.c.name == name)
        with self._read() as conn:
            row = conn.execute(sa.select(e).where(where)).first()
        if row is not None:
            return self._experiment_info(row)
        with self._write() as conn:
            stmt = self._insert(e).values(id=new_id(), name=name, project=project, created_at=now(),
                                          run_counter=0)
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["project", "name"]))
            row = conn.execute(sa.select(e).where(where)).one()
        return self._experiment_info(row)

    def _list_experiments(self, project: str | None) -> list[ExperimentInfo]:
        stmt = sa.select(t_experiments).order_by(t_experiments.c.created_at, t_experiments.c.name)
        if project is not None:
            stmt = stmt.where(t_experiments.c.project == project)
        with self._read() as conn:
            return [self._experiment_info(r) for r in conn.execute(stmt)]

    def _delete_experiment(self, experiment_id: str) -> None:
        with self._write() as conn:
            result = conn.execute(sa.delete(t_experiments).where(t_experiments.c.id == experiment_id))
            if result.rowcount == 0:
                raise NotFoundError(f"experiment {experiment_id} not found")

    # -- runs -----------------------------------------------------------------------------------------------
    def _create_run(
        self, experiment_id: str, name: str | None, parent_id: str | None, start_time: float,
        params: dict[str, Any], tags: dict[str, str],
    ) -> RunInfo:
        run_id = new_id()
        with self._write() as conn:
            if parent_id is not None:
                try:
                    self._require_run(conn, parent_id)
                except NotFoundError:
                    raise NotFoundError(f"parent run {parent_id} not found") from None
            number = conn.execute(_U_COUNTER, {"b_exp": experiment_id}).scalar()
            if number is None:
                raise NotFoundError(f"experiment {experiment_id} not found")
            conn.execute(_I_RUN, {
                "id": run_id, "experiment_id": experiment_id, "number": number, "name": name,
                "parent_id": parent_id, "status": "running", "start_time": start_time,
                "heartbeat": start_time, "params_json": _dumps(params), "tags_json": _dumps(tags),
            })
            if params:
                conn.execute(_I_PARAMS, self._param_rows(run_id, params))
            if tags:
                conn.execute(_I_TAGS, [{"run_id": run_id, "key": k, "value": val} for k, val in tags.items()])
        return RunInfo(
            id=run_id, experiment_id=experiment_id, number=int(number), name=name, parent_id=parent_id,
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
        with self._read() as conn:
            row = conn.execute(
                sa.select(*_RUN_COLUMNS, *self._detail_columns()).where(t_runs.c.id == run_id)
            ).first()
        if row is None:
            raise NotFoundError(f"run {run_id} not found")
        return self._infos_with_json_details([row])[0]

    def _list_runs(self, experiment_ids: list[str]) -> list[RunInfo]:
        if not experiment_ids:
            return []
        r = t_runs
        with self._read() as conn:
            rows = conn.execute(
                sa.select(*_RUN_COLUMNS, *self._detail_columns()).where(r.c.experiment_id.in_(experiment_ids))
                .order_by(r.c.start_time, r.c.experiment_id, r.c.number)
            ).all()
        with _gc_paused(len(rows) > 500):
            return self._infos_with_json_details(rows)

    def _search_runs(
        self,
        experiment_ids: list[str],
        expr: Expr,
        order: Sequence[OrderKey],
        limit: int | None,
        offset: int,
    ) -> list[RunInfo]:
        from labvault import query

        if not experiment_ids or limit == 0:
            return []
        r = t_runs
        # The page's latest metrics and results ride along as JSON objects built by the database, so a
        # search is one query whatever the number of matches.
        stmt = sa.select(*_RUN_COLUMNS, *self._detail_columns()).where(r.c.experiment_id.in_(experiment_ids))
        condition = query.compile_sql(expr, self._resolve_field)
        if condition is not None:
            stmt = stmt.where(*_implied_prefilters(expr), condition)
        stmt = stmt.order_by(*query.compile_order_sql(order, self._resolve_field))  # ends with number, id
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset:
            stmt = stmt.offset(offset)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        with _gc_paused(len(rows) > 500):
            return self._infos_with_json_details(rows)

    def _detail_columns(self) -> tuple[sa.ColumnElement[Any], sa.ColumnElement[Any]]:
        """Correlated subqueries giving a run's latest metrics and its results as JSON objects."""
        postgres = self._dialect == "postgresql"
        agg = sa.func.json_object_agg if postgres else sa.func.json_group_object
        stored = t_results.c.value_json
        parsed = sa.cast(stored, sa.JSON) if postgres else sa.func.json(stored)
        metrics = (sa.select(agg(t_latest.c.key, t_latest.c.value))
                   .where(t_latest.c.run_id == t_runs.c.id).scalar_subquery())
        results = (sa.select(agg(t_results.c.key, parsed))
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
            out.append(RunInfo(
                id=run_id, experiment_id=experiment_id, number=number, name=name, parent_id=parent_id,
                status=status, start_time=start_time, end_time=end_time, error=error, heartbeat=heartbeat,
                params=loads(params_json), tags=loads(tags_json), metrics=metrics,
                results=loads(results_json) if results_json else {},
            ))
        return out

    @staticmethod
    def _resolve_field(field: Field, kind: str) -> sa.ColumnElement[Any]:
        """A field's numeric (``kind="number"``) or text value for the current run row, or NULL."""
        r = t_runs
        number = kind == "number"
        if field.kind == "params":
            col = t_params.c.value_num if number else t_params.c.value_text
            return (sa.select(col).where(t_params.c.run_id == r.c.id, t_params.c.key == field.key)
                    .scalar_subquery())
        if field.kind == "metrics":
            if not number:
                return sa.null()
            return (sa.select(t_latest.c.value)
                    .where(t_latest.c.run_id == r.c.id, t_latest.c.key == field.key).scalar_subquery())
        if field.kind == "tags":
            if number:
                return sa.null()
            return (sa.select(t_tags.c.value).where(t_tags.c.run_id == r.c.id, t_tags.c.key == field.key)
                    .scalar_subquery())
        if field.kind == "attributes":
            attr = r.c.get(field.key)
            if attr is None:
                return sa.null()
            is_number = isinstance(attr.type, sa.Integer | sa.Double | sa.Float)
            return attr if is_number == number else sa.null()
        raise InvalidArgumentError(f"cannot search on {field.kind}.{field.key}")

    def _update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        with self._write() as conn:
            result = conn.execute(_U_RUN, {"b_run": run_id, **fields})
            if result.rowcount == 0:
                raise NotFoundError(f"run {run_id} not found")

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        with self._write() as conn:
            doc = self._run_document(conn, run_id, t_runs.c.params_json)
            check_params_conflict(run_id, doc, params)
            new = {k: val for k, val in params.items() if k not in doc}
            if new:
                conn.execute(_I_PARAMS, self._param_rows(run_id, new))
                doc.update(new)
                conn.execute(_U_RUN, {"b_run": run_id, "params_json": _dumps(doc)})

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        with self._write() as conn:
            doc = self._run_document(conn, run_id, t_runs.c.tags_json)
            rows = [{"run_id": run_id, "key": k, "value": val} for k, val in tags.items()]
            conn.execute(self._upserts()["run_tags"], rows)
            doc.update(tags)
            conn.execute(_U_RUN, {"b_run": run_id, "tags_json": _dumps(doc)})

    @staticmethod
    def _run_document(conn: Connection, run_id: str, column: sa.Column[Any]) -> dict[str, Any]:
        raw = conn.execute(_S_RUN_DOC[column.name], {"b_run": run_id}).scalar()
        if raw is None:
            raise NotFoundError(f"run {run_id} not found")
        doc: dict[str, Any] = _loads(raw)
        return doc

    def _log_results(self, run_id: str, results: dict[str, Any]) -> None:
        with self._write() as conn:
            self._require_run(conn, run_id)
            rows = [{"run_id": run_id, "key": k, "value_json": _dumps(val)} for k, val in results.items()]
            conn.execute(self._upserts()["run_results"], rows)

    # -- metrics --------------------------------------------------------------------------------------------
    def _log_metrics(self, run_id: str, series: list[MetricSeries]) -> None:
        segments: list[dict[str, Any]] = []
        latest: dict[str, dict[str, Any]] = {}
        with self._write() as conn:
            self._require_run(conn, run_id)
            keys = list({s.key for s in series})
            next_seq: dict[str, int] = {
                key: int(top) + 1 for key, top in conn.execute(_S_LAST_SEQ, {"b_run": run_id, "b_keys": keys})
            }
            for s in series:
                seq = next_seq.get(s.key, 0)
                n = len(s)
                for start in range(0, n, SEGMENT_POINTS):
                    end = min(n, start + SEGMENT_POINTS)
                    segments.append({
                        "run_id": run_id, "key": s.key, "seq": seq, "n": end - start,
                        "steps": _blob(s.steps[start:end], "<i8"),
                        "values": _blob(s.values[start:end], "<f8"),
                        "timestamps": _blob(s.timestamps[start:end], "<f8"),
                    })
                    seq += 1
                next_seq[s.key] = seq
                value, step, stamp = s.last()
                latest[s.key] = {"run_id": run_id, "key": s.key, "step": step, "timestamp": stamp,
                                 "value": None if math.isnan(value) else value}
            conn.execute(_I_SEGMENTS, segments)
            conn.execute(self._upserts()["metric_latest"], list(latest.values()))

    def _metric_history(self, run_id: str, key: str) -> MetricSeries:
        with self._read() as conn:
            self._require_run(conn, run_id)
            rows = conn.execute(_S_HISTORY, {"b_run": run_id, "b_key": key}).all()
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
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute(self._upserts()["artifacts"], {
                "run_id": run_id, "key": info.key, "digest": info.digest, "size": info.size,
                "created_at": info.created_at,
            })

    def _list_artifacts(self, run_id: str, prefix: str) -> list[ArtifactInfo]:
        a = t_artifacts
        stmt = sa.select(a.c.key, a.c.size, a.c.digest, a.c.created_at).where(a.c.run_id == run_id)
        if prefix:
            stmt = stmt.where(a.c.key.startswith(prefix, autoescape=True))
        with self._read() as conn:
            self._require_run(conn, run_id)
            return [ArtifactInfo(key=k, size=int(size), digest=digest, created_at=created)
                    for k, size, digest, created in conn.execute(stmt.order_by(a.c.key))]


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


_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge,
}


def _implied_prefilters(expr: Any) -> list[sa.ColumnElement[bool]]:
    """``runs.id IN (SELECT run_id ... WHERE key = ? AND value op ?)`` for each top-level comparison.

    A run can only satisfy ``params.x op v`` (in an AND at the top, outside any NOT) if it has a row with
    that key whose value satisfies it, so these conditions are implied by the filter and change nothing
    about which runs match, while the (key, value) indexes of schema version 3 let SQLite start from the
    few matching rows instead of probing every run. The exact three-valued condition is still applied.
    """
    from labvault import query

    items = expr.items if isinstance(expr, query.And) else (expr,)
    out: list[sa.ColumnElement[bool]] = []
    for item in items:
        if not isinstance(item, query.Compare):
            continue
        key, number = item.field.key, isinstance(item.value, float)
        if item.field.kind == "params":
            table, column = t_params, t_params.c.value_num if number else t_params.c.value_text
        elif item.field.kind == "metrics" and number:
            table, column = t_latest, t_latest.c.value
        elif item.field.kind == "tags" and not number:
            table, column = t_tags, t_tags.c.value
        else:
            continue
        holders = sa.select(table.c.run_id).where(table.c.key == key, _OPS[item.op](column, item.value))
        out.append(t_runs.c.id.in_(holders))
    return out


def upgrade(uri: str) -> tuple[int, int]:
    """Upgrade the store at ``uri`` to this labvault's schema; return (old, new) versions.

    This is what ``labvault db upgrade --uri sqlite:///...`` runs.
    """
    backend = SQLBackend.from_uri(uri)
    try:
        return backend.upgrade()
    finally:
        backend.close()
