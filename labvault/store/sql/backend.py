"""The SQLite backend (the embedded default), on SQLAlchemy Core; the base class of the PostgreSQL one.

URIs: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``; parent directories are created.
Options: ``busy_timeout`` (seconds a writer waits for another process's write lock, default 30), also
accepted as a URI query parameter.

Artifact bytes (unless a store is given with ``artifacts=``) go to a ``TieredBlobStore``: blobs of at most
``SMALL_BLOB_LIMIT`` bytes (64 KiB) live inside the database (``SQLBlobStore``: one transaction, no file
to create or fsync), larger ones in a ``FileBlobStore`` in the sibling directory ``<stem>-blobs``
(``./data/lv.db`` -> ``./data/lv-blobs``), created when the first large blob arrives. Reads try the
database first, then the folder.

Where the parts of the SQL stores live (``labvault.store.sql``):

* ``schema``: the tables of every schema version and the statements of the hot paths;
* ``engine``: ``SQLEngine``, connections, transactions (``_run``), retries and error translation;
* ``migrations``: ``SchemaVersions`` (create on first use, refuse old stores) and ``upgrade()``;
* ``runs``: value encoding, row decoding and the search compiler;
* ``backend`` (here): ``SQLBackend``, the ``Backend`` operations in portable SQL plus SQLite's hooks;
* ``postgresql``: ``PostgresBackend``, PostgreSQL's hooks, one-statement run creation, LISTEN/NOTIFY.

On SQLite searches answer from an in-process run index (``labvault.store.search.runindex``) that every
write keeps current through a store-wide change number (``runs.rev``, see ``_stamp``); the SQL search
(``runs.search_statement``) is the fallback for filters the index cannot answer, and PostgreSQL's path.

Metric flushes are idempotent: every flush carries a ``batch_id`` written on its segments (the caller's,
``log_metrics(..., batch_id=)``, else a random one): a retried flush whose first commit may have
succeeded, and any append that names a caller's id, looks for it among the newest ``BATCH_MEMORY``
segments of the batch's first key before inserting, under the run's row lock, so a point is never
stored twice (see ``_log_metrics``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from labvault._uri import check_options, float_option
from labvault.blobs.abc import BlobStore
from labvault.blobs.local import FileBlobStore
from labvault.blobs.sql import SQLBlobStore
from labvault.blobs.tiered import SMALL_BLOB_LIMIT, TieredBlobStore
from labvault.domain import ArtifactInfo, ExperimentInfo, MetricSeries, RunInfo, now
from labvault.errors import (
    BackendUnavailableError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
)
from labvault.store.abc import BATCH_MEMORY, Backend, check_params_conflict, run_exists_error
from labvault.store.search.columns import no_gc
from labvault.store.search.runindex import Record, RunIndex
from labvault.store.sql.engine import WRITE_OPTION, Mode
from labvault.store.sql.migrations import SchemaVersions
from labvault.store.sql.runs import (
    PAGE_FIRST_LIMIT,
    from_json,
    index_records,
    metric_rows,
    metric_series,
    new_id,
    param_rows,
    run_infos,
    search_statement,
    to_json,
)
from labvault.store.sql.schema import (
    I_PARAMS,
    I_RUN,
    I_SEGMENTS,
    I_TAGS,
    RUN_COLUMNS,
    S_BATCH_STORED,
    S_EXPERIMENT_IDS,
    S_HISTORY,
    S_LAST_SEQ,
    S_LAST_SEQ_ONE,
    S_RUN_DOC,
    S_RUN_EXISTS,
    S_RUN_LOCK,
    S_RUN_NUMBER,
    U_COUNTER,
    U_RUN,
    t_artifacts,
    t_experiments,
    t_latest,
    t_results,
    t_runs,
)

if TYPE_CHECKING:
    from labvault.query import Expr, OrderKey

__all__ = ["SMALL_BLOB_LIMIT", "SQLBackend"]

_DEFAULT_BUSY_TIMEOUT = 30.0
_DBL_MAX = 1.7976931348623157e308

# The change number of the SQLite run index (``SQLBackend._stamp``), run on the driver's cursor: the
# highest ``runs.rev`` (the last entry of its index), or the floor a deletion left in ``meta`` when that
# is higher (so deleting the most recently changed runs never lets a number be given out twice).
_TOP_REV = ("max(coalesce((SELECT max(rev) FROM runs), 0), "
            "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'runs_rev'), 0))")
_STAMP_RUN = f"UPDATE runs SET rev = {_TOP_REV} + 1 WHERE id = ?"
_STAMP_DELETION = (f"INSERT INTO meta (key, value) VALUES ('runs_rev', CAST({_TOP_REV} + 1 AS TEXT)) "
                   f"ON CONFLICT (key) DO UPDATE SET value = excluded.value")
_S_RUNS_REV = f"SELECT {_TOP_REV}"


class SQLBackend(SchemaVersions, Backend, scheme="sqlite"):
    """Metadata in SQLite (WAL) through SQLAlchemy Core; small artifacts inside, large ones beside it.

    The ``Backend`` operations are portable SQL (``PostgresBackend`` inherits them); transactions come
    from ``SQLEngine`` and schema versions from ``SchemaVersions``; what is SQLite's own are the dialect
    hooks under "connections" and the run index's change numbers (``_stamp``, ``_latest_rev``).
    """

    config_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "properties": {
            "backend": {"const": "sqlite"},
            "module": {"type": "string"},
            "uri": {"type": "string", "pattern": "^[sS][qQ][lL][iI][tT][eE]:///."},
            "path": {"type": "string", "minLength": 1},  # aimm's {"backend": "sqlite", "path": "x.db"}
            "busy_timeout": {"type": "number", "minimum": 0, "maximum": 86400},
        },
        "oneOf": [{"required": ["uri"]}, {"required": ["path"]}],
        "additionalProperties": False,
    }
    _dialect: ClassVar[str] = "sqlite"

    @classmethod
    def _uri_for_path(cls, path: str) -> str:
        """``sqlite:///<absolute path>`` (relative paths are taken from the working directory)."""
        return f"sqlite:///{Path(path).expanduser().absolute()}"
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

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> SQLBackend:
        """``sqlite:///relative.db`` or ``sqlite:////abs.db``, options ``busy_timeout`` (seconds)."""
        path, query = _parse_sqlite_uri(uri)
        merged = {**query, **options}
        check_options("sqlite", merged, cls._options)
        busy = float_option("sqlite", "busy_timeout", merged.get("busy_timeout", _DEFAULT_BUSY_TIMEOUT),
                            0, 86400)
        return cls(uri, path, blobs=artifacts, busy_timeout=busy)

    def _default_blobs(self) -> BlobStore:
        """Small blobs in the database, large ones in the sibling ``<stem>-blobs`` folder."""
        folder = FileBlobStore(self.path.with_name(f"{self.path.stem}-blobs"))
        return TieredBlobStore(SQLBlobStore(self), folder, SMALL_BLOB_LIMIT)

    supports_events = True
    event_log = True
    _event_prefix = ""

    def _event_store(self) -> BlobStore | None:
        """The change log lives in the sibling folder ``<stem>-events`` (``labvault.store.eventlog``), so
        it costs the database no transaction."""
        return FileBlobStore(self.path.with_name(f"{self.path.stem}-events"), durable=False)

    def close(self) -> None:
        """Dispose of the connection pool and close the blob store. Safe to call twice."""
        self._dispose_engines()
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
            sql = "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN"
            try:  # on the driver's connection: this runs for every transaction, so skip SQLAlchemy's layers
                conn.connection.driver_connection.execute(sql)  # type: ignore[union-attr]
            except sqlite3.Error as exc:
                raise sa_exc.DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc

        event.listen(engine, "connect", on_connect)
        event.listen(engine, "begin", on_begin)
        return engine

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which has ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert  # lazy: ~20 ms, unused by PostgreSQL

        return sqlite_insert(table)

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

    def _translate_error(self, exc: sa_exc.DBAPIError) -> LabvaultError:
        detail = str(getattr(exc, "orig", None) or exc).strip()
        lowered = detail.lower()
        if any(s in lowered for s in ("not a database", "malformed", "file is encrypted", "corrupt")):
            return CorruptDataError(f"{self._where()} is corrupt or not a labvault database: {detail}")
        if isinstance(exc, sa_exc.IntegrityError):
            return ConflictError(f"{self._where()} rejected a write: {detail}")
        return BackendUnavailableError(f"{self._where()} is unavailable: {detail}")

    # -- helpers --------------------------------------------------------------------------------------------
    @staticmethod
    def _require_run(conn: Connection, run_id: str, *, lock: bool = False) -> None:
        """``NotFoundError`` unless the run exists; ``lock`` also locks its row until the commit."""
        if conn.execute(S_RUN_LOCK if lock else S_RUN_EXISTS, {"b_run": run_id}).first() is None:
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
        params_json, tags_json = to_json(params), to_json(tags)
        params_rows = param_rows(run_id, params) if params else None
        tag_rows = [{"run_id": run_id, "key": k, "value": val} for k, val in tags.items()]

        def work(conn: Connection, attempt: int) -> int:
            if attempt or chosen:  # an earlier attempt may have committed: then the run exists
                done = conn.execute(S_RUN_NUMBER, {"b_run": run_id}).scalar()
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
            found = self._execute(conn, U_COUNTER, {"b_exp": experiment_id}).fetchone()
            if found is None:
                raise NotFoundError(f"experiment {experiment_id} not found")
            number = found[0]
            self._execute(conn, I_RUN, {
                "id": run_id, "experiment_id": experiment_id, "number": number, "name": name,
                "parent_id": parent_id, "status": "running", "start_time": start_time,
                "heartbeat": start_time, "params_json": params_json, "tags_json": tags_json,
            })
            if params_rows:
                self._execute(conn, I_PARAMS, params_rows)
            if tag_rows:
                self._execute(conn, I_TAGS, tag_rows)
            self._stamp(conn, run_id)
            return int(number)

        number = self._run(work)
        return RunInfo(
            id=run_id, experiment_id=experiment_id, number=number, name=name, parent_id=parent_id,
            status="running", start_time=start_time, heartbeat=start_time,
            params=dict(params), tags=dict(tags),
        )

    def _get_run(self, run_id: str) -> RunInfo:
        stmt = sa.select(*RUN_COLUMNS, *self._detail_columns()).where(t_runs.c.id == run_id)
        row = self._run(lambda conn, _: conn.execute(stmt).first(), "read")
        if row is None:
            raise NotFoundError(f"run {run_id} not found")
        return run_infos([row])[0]

    def _list_runs(self, experiment_ids: list[str]) -> list[RunInfo]:
        if not experiment_ids:
            return []
        r = t_runs
        stmt = (sa.select(*RUN_COLUMNS, *self._detail_columns()).where(r.c.experiment_id.in_(experiment_ids))
                .order_by(r.c.start_time, r.c.experiment_id, r.c.number))
        rows = self._run(lambda conn, _: conn.execute(stmt).all(), "read")
        with no_gc(len(rows) > 500):
            return run_infos(rows)

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
        if limit is not None and limit <= PAGE_FIRST_LIMIT:
            # A page: order and cut the matching ids first (narrow rows, a top-N sort the database keeps
            # in memory), then load the page's details; sorting whole rows spilled to disk at 100,000 runs.
            page = self.search_statement(experiment_ids, expr, order, limit, offset, ids_only=True)

            def read_page(conn: Connection, _: int) -> Sequence[Any]:
                ids = list(conn.execute(page).scalars())
                if not ids:
                    return []
                details = sa.select(*RUN_COLUMNS, *self._detail_columns()).where(t_runs.c.id.in_(ids))
                by_id = {row.id: row for row in conn.execute(details)}
                return [by_id[i] for i in ids if i in by_id]

            return run_infos(self._run(read_page, "read"))
        stmt = self.search_statement(experiment_ids, expr, order, limit, offset)
        rows = self._run(lambda conn, _: conn.execute(stmt).all(), "read")
        with no_gc(len(rows) > 500):
            return run_infos(rows)

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
                            experiments = set(conn.execute(S_EXPERIMENT_IDS).scalars())
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
        return index_records(conn.execute(sa.select(*RUN_COLUMNS, *self._detail_columns()).where(condition))
                             .all())

    def search_statement(self, experiment_ids: Sequence[str], expr: Expr, order: Sequence[OrderKey],
                         limit: int | None = None, offset: int = 0, *,
                         ids_only: bool = False) -> sa.Select[Any]:
        """The SELECT a search runs (public so its plan can be inspected with EXPLAIN).

        ``ids_only`` selects just the ordered run ids (the first of the two queries of a paged search).
        """
        return search_statement(experiment_ids, expr, order, limit, offset, self._detail_columns(),
                                ids_only=ids_only)

    def _detail_columns(self) -> tuple[sa.ColumnElement[Any], sa.ColumnElement[Any]]:
        """Correlated subqueries giving a run's latest metrics and its results as JSON object texts.

        An infinite latest value travels as the string ``"inf"`` / ``"-inf"`` (SQLite writes infinities
        into JSON as ``Inf``, which no JSON parser reads); ``runs.run_infos`` converts it back.
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

    def _update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        def work(conn: Connection, _attempt: int) -> None:
            if self._execute(conn, U_RUN, {**fields, "b_run": run_id}).rowcount == 0:
                raise NotFoundError(f"run {run_id} not found")
            self._stamp(conn, run_id)

        self._run(work)

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        def work(conn: Connection, _attempt: int) -> None:
            doc = self._run_document(conn, run_id, t_runs.c.params_json)
            check_params_conflict(run_id, doc, params)
            new = {k: val for k, val in params.items() if k not in doc}
            if new:
                conn.execute(I_PARAMS, param_rows(run_id, new))
                doc.update(new)
                conn.execute(U_RUN, {"b_run": run_id, "params_json": to_json(doc)})
                self._stamp(conn, run_id)

        self._run(work)

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        rows = [{"run_id": run_id, "key": k, "value": val} for k, val in tags.items()]

        def work(conn: Connection, _attempt: int) -> None:
            doc = self._run_document(conn, run_id, t_runs.c.tags_json)
            conn.execute(self._upserts()["run_tags"], rows)
            doc.update(tags)
            conn.execute(U_RUN, {"b_run": run_id, "tags_json": to_json(doc)})
            self._stamp(conn, run_id)

        self._run(work)

    @staticmethod
    def _run_document(conn: Connection, run_id: str, column: sa.Column[Any]) -> dict[str, Any]:
        """A run's params or tags document, its row locked until the commit (read-modify-write)."""
        raw = conn.execute(S_RUN_DOC[column.name], {"b_run": run_id}).scalar()
        if raw is None:
            raise NotFoundError(f"run {run_id} not found")
        doc: dict[str, Any] = from_json(raw)
        return doc

    def _log_results(self, run_id: str, results: dict[str, Any]) -> None:
        rows = [{"run_id": run_id, "key": k, "value_json": to_json(val)} for k, val in results.items()]

        def work(conn: Connection, _attempt: int) -> None:
            self._require_run(conn, run_id)
            conn.execute(self._upserts()["run_results"], rows)
            self._stamp(conn, run_id)

        self._run(work)

    # -- metrics --------------------------------------------------------------------------------------------
    def _log_metrics(self, run_id: str, series: list[MetricSeries], batch_id: str | None) -> bool:
        given = batch_id is not None
        batch_id = batch_id or new_id()  # without a caller's id, still one per flush: our own retries
        pieces, latest = metric_rows(run_id, series, batch_id)
        keys = list({s.key for s in series})
        first_key = pieces[0][0]

        execute = self._execute

        def work(conn: Connection, attempt: int) -> bool:
            # one writer of a run's series at a time: the run's row stays locked until the commit, so a
            # re-sent batch waits for its first attempt and then finds its segments
            if execute(conn, S_RUN_LOCK, {"b_run": run_id}).fetchone() is None:
                raise NotFoundError(f"run {run_id} not found")
            next_seq: dict[str, int]
            if len(keys) == 1:
                top = execute(conn, S_LAST_SEQ_ONE, {"b_run": run_id, "b_key": keys[0]}).fetchone()[0]
                next_seq = {} if top is None else {keys[0]: int(top) + 1}
            else:
                next_seq = {key: int(top) + 1
                            for key, top in conn.execute(S_LAST_SEQ, {"b_run": run_id, "b_keys": keys})}
            if (given or attempt) and first_key in next_seq and conn.execute(S_BATCH_STORED, {
                    "b_run": run_id, "b_key": first_key, "b_batch": batch_id,
                    "b_from": next_seq[first_key] - BATCH_MEMORY}).first():
                return False  # applied before (all of it: one transaction)
            segments = []
            for key, row in pieces:
                seq = next_seq.get(key, 0)
                next_seq[key] = seq + 1
                segments.append({**row, "seq": seq})
            execute(conn, I_SEGMENTS, segments[0] if len(segments) == 1 else segments)
            rows = list(latest.values())
            execute(conn, self._upserts()["metric_latest"], rows[0] if len(rows) == 1 else rows)
            self._stamp(conn, run_id)
            return True

        return bool(self._run(work))

    def _metric_history(self, run_id: str, key: str) -> MetricSeries:
        def work(conn: Connection, _attempt: int) -> Sequence[Any]:
            self._require_run(conn, run_id)
            return conn.execute(S_HISTORY, {"b_run": run_id, "b_key": key}).all()

        return metric_series(run_id, key, self._run(work, "read"), self._where())

    # -- artifacts ------------------------------------------------------------------------------------------
    def _add_artifact(self, run_id: str, info: ArtifactInfo) -> None:
        self._upsert_artifacts(run_id, _artifact_row(run_id, info))

    def _add_artifacts(self, run_id: str, infos: list[ArtifactInfo]) -> None:
        self._upsert_artifacts(run_id, [_artifact_row(run_id, i) for i in infos])

    def _upsert_artifacts(self, run_id: str, rows: dict[str, Any] | list[dict[str, Any]]) -> None:
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


def _artifact_row(run_id: str, info: ArtifactInfo) -> dict[str, Any]:
    return {"run_id": run_id, "key": info.key, "digest": info.digest, "size": info.size,
            "created_at": info.created_at}
