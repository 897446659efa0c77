"""``SQLEngine``: the connections, transactions, retries and error translation every SQL backend shares.

Every database access is a function ``work(conn, attempt)`` run by ``_run`` in one transaction, in one of
three modes: "write" (on SQLite every write transaction starts with ``BEGIN IMMEDIATE``: the driver runs
in autocommit mode and the engine's ``begin`` event emits the statement, see ``SQLBackend._create_engine``,
so concurrent writer processes queue on the database lock for ``busy_timeout`` seconds instead of failing
when a read transaction tries to upgrade to a write), "read" (a plain deferred ``BEGIN``: a consistent WAL
snapshot across the few queries of a listing) or "autocommit" (single statements, no BEGIN/COMMIT).

Where the dialect says a failure is transient (``_retryable``: a lost connection, a deadlock, SQLite's
immediate "database is locked"), the whole transaction runs again with the shared backoff
(``labvault._retry``: 50 ms doubling to 2 s, with jitter) for ``retry_timeout`` seconds; ``attempt > 0``
tells ``work`` that an earlier attempt may have committed, and every write is written to be idempotent
under that rule. Driver errors are translated at this one boundary by the dialect's ``_translate_error``
(SQLite: locked / unable to open / connection lost -> ``BackendUnavailableError``, "file is not a
database" / malformed -> ``CorruptDataError``, a constraint -> ``ConflictError``; PostgreSQL by SQLSTATE).

Engines are created on first use (construction does no I/O), once per process: a forked child starts a
fresh pool. The schema is checked (or created) with them (``_open_schema``, see
``labvault.store.sql.migrations``).

The dialect hooks (SQLite's in ``labvault.store.sql.backend``, PostgreSQL's overrides in
``labvault.store.sql.postgresql``): engine and connection setup (``_create_engine``, ``_engine_options``),
the dialect's ``insert`` for upserts (``_insert``), the schema lock and table listing (``_lock_schema``,
``_prepare_schema``, ``_table_names``), which errors are worth a retry (``_retryable``), how they read
(``_translate_error``) and how the store is named in messages (``location``, ``display_uri``, ``_where``).
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from labvault._retry import Retry
from labvault.errors import LabvaultError
from labvault.store.sql.schema import t_artifacts, t_latest, t_results, t_tags

__all__ = ["WRITE_OPTION", "Mode", "SQLEngine", "Work"]

T = TypeVar("T")
#: One database access: ``work(conn, attempt)`` inside a transaction (see ``SQLEngine._run``).
Work = Callable[[Connection, int], T]
Mode = Literal["read", "write", "autocommit"]
#: The execution option of the writer engine (SQLite's ``begin`` event then emits ``BEGIN IMMEDIATE``).
WRITE_OPTION = "labvault_write"

_Compiled = tuple[Any, str, tuple[str, ...], dict[str, Any]]  # (statement, SQL, bind order, constants)


class SQLEngine(ABC):
    """Engines created on first use, transactions with retries, driver errors translated (see the module)."""

    #: Seconds spent retrying a transaction after a lost connection or an immediate lock conflict.
    retry_timeout: float

    def _init_sql(self) -> None:
        """The state every SQL backend keeps (engines are created on first use)."""
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

    # -- the dialect hooks -----------------------------------------------------------------------------------
    @abstractmethod
    def _create_engine(self) -> Engine:
        """A new engine for this store (called once per process, on first use)."""

    def _engine_options(self) -> dict[str, Any]:
        """Execution options every connection of this backend runs with (PostgreSQL: the schema map)."""
        return {}

    @abstractmethod
    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which has ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""

    @abstractmethod
    def _retryable(self, exc: sa_exc.DBAPIError) -> bool:
        """Whether a failed transaction may succeed when run again (a lost connection, a deadlock)."""

    @abstractmethod
    def _translate_error(self, exc: sa_exc.DBAPIError) -> LabvaultError:
        """The labvault error a driver error becomes at the boundary."""

    def _lock_schema(self, conn: Connection) -> None:
        """Serialize schema creation and upgrades across processes (SQLite: BEGIN IMMEDIATE already does)."""

    def _prepare_schema(self, conn: Connection) -> None:
        """Make the namespace the tables go into exist (PostgreSQL: ``CREATE SCHEMA``), under the lock."""

    def _table_names(self, conn: Connection) -> set[str]:
        """The tables of the store's namespace."""
        return set(sa.inspect(conn).get_table_names())

    @abstractmethod
    def _open_schema(self, engine: Engine, writer: Engine) -> None:
        """Check the store's schema version on first use; create the schema in an empty database."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the store lives, for messages (the database path; a server address for PostgreSQL)."""

    @property
    @abstractmethod
    def display_uri(self) -> str:
        """The URI without secrets, for messages."""

    @abstractmethod
    def _where(self) -> str:
        """The store named for the start of a message ("SQLite store at ...")."""

    # -- statements ------------------------------------------------------------------------------------------
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

    # -- engines and transactions ----------------------------------------------------------------------------
    def _engines(self) -> tuple[Engine, Engine]:
        """The (reader, writer) engines of this process, created on first use."""
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
                self._writer = base.execution_options(**options, **{WRITE_OPTION: True})
                self._autocommit = base.execution_options(**options, isolation_level="AUTOCOMMIT")
            return self._engine, self._writer

    def _ready(self) -> tuple[Engine, Engine]:
        """The engines, the schema checked (once per process)."""
        engine, writer = self._engine, self._writer
        if self._schema_ok and engine is not None and writer is not None and self._pid == os.getpid():
            return engine, writer
        engine, writer = self._engines()
        self._open_schema(engine, writer)
        self._schema_ok = True
        return engine, writer

    def _dispose_engines(self) -> None:
        """Close the connection pool (the next access creates a new one)."""
        with self._init_lock:
            engine, self._base_engine = self._base_engine, None
            self._engine = self._writer = self._autocommit = None
            self._schema_ok = False
        if engine is not None:
            engine.dispose()

    def _run(self, work: Work[T], mode: Mode = "write", *, retry: bool = True, schema: bool = True) -> T:
        """Run ``work(conn, attempt)`` in one transaction (``mode`` "read", "write" or "autocommit").

        Driver errors become labvault errors. Where ``_retryable`` says so (PostgreSQL after a lost
        connection), the whole transaction runs again after a pause growing from 50 ms to 2 s, for up to
        ``retry_timeout`` seconds; ``attempt`` (0, 1, ...) tells ``work`` that an earlier attempt may have
        committed, so writes check for their own effect before repeating it. ``schema=False`` skips the
        schema check (for the upgrade itself).
        """
        attempt = 0
        retrying: Retry | None = None  # created by the first failure: nothing to pay on the hot path
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
                if retrying is None:
                    retrying = Retry(timeout=self.retry_timeout)
                if not retrying.wait():
                    error = self._translate_error(exc)
                    raise type(error)(f"{error} (gave up after {retrying.attempts} attempts in "
                                      f"{self.retry_timeout:g} s)") from exc
                attempt = retrying.attempts - 1
