"""The PostgreSQL backend: ``SQLBackend``'s SQLAlchemy Core code on psycopg 3, for teams and scale-out.

URIs: ``postgresql://user[:password]@host[:port]/database`` (also ``postgres://`` and
``postgresql+psycopg://``). Options, as URI query parameters or keyword arguments of ``labvault.open``:

``schema``           keep the tables in this schema (created on first use) instead of the default one,
                     so several vaults share one database without seeing each other
``connect_timeout``  seconds one connection attempt may take (default 10)
``retry_timeout``    seconds to keep retrying a transaction after a lost connection (default 30); an
                     unreachable server raises ``BackendUnavailableError`` naming host:port after that
``pool_size``        connections kept open per process (default 5)
``sslmode``          passed to libpq (``disable`` ... ``verify-full``)

Any other option raises ``InvalidArgumentError`` naming it. The password may also come from
``PGPASSWORD`` or ``~/.pgpass`` as libpq reads them; it never appears in messages or ``repr``.
Construction does no I/O and imports no driver: the engine is created on first use, and the schema
with it when the database (or schema) is empty, under ``pg_advisory_xact_lock`` so any number of
processes may start at once. An older schema is refused until ``labvault db upgrade --uri ...`` ran
(also under the lock, so concurrent upgrades are safe).

What differs from SQLite, all of it here: the engine (psycopg, ``pool_pre_ping``, an
``application_name`` of ``labvault-<random>`` per backend object so its connections can be told apart
in ``pg_stat_activity``), ``INSERT ... ON CONFLICT`` from the PostgreSQL dialect, the schema lock and
``CREATE SCHEMA``, ``json_object_agg`` for the JSON details of listings, which errors are retried, and
the change feed. Metric batches are one multi-row INSERT of columnar segments (psycopg pipelines
executemany) plus an upsert of the latest values, in one transaction; run numbers come from
``UPDATE experiments SET run_counter = run_counter + 1 ... RETURNING``, whose row lock serializes the
runs of one experiment until the commit (dense, unique, no deadlock: each transaction locks one row).

Connection loss: every transaction is a function the base class runs again after a lost connection
(``labvault._retry``'s backoff, 50 ms doubling to 2 s, for ``retry_timeout`` seconds); writes whose
commit may have happened check for their own effect first (a metric batch looks for its ``batch_id``, a
run for its id), so a point is stored exactly once. The pool pings connections before handing them out.
Failures read by SQLSTATE (``_STATE_ERRORS``): a missing database, a refused login, a missing privilege.

Artifacts live in the database by default (``labvault.blobs.sql.SQLBlobStore``: 1 MiB ``bytea``
chunks, streamed both ways, visible only once complete); ``artifacts="s3://..."`` or any other store is
used instead.

Change feed (``supports_events``): every mutation sends ``pg_notify(channel, payload)`` right after its
transaction commits, the payload the JSON of the event (``data`` dropped when it would exceed NOTIFY's
8000 bytes); ``watch()`` opens a dedicated connection that LISTENs on the channel, read by a daemon
thread until the feed is closed. The channel is derived from the database and schema, so vaults in
other schemas never see each other's events. A listener that loses its connection reconnects; events
sent meanwhile are lost (the feed is a notification, not a log).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import queue
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import orjson
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from labvault._retry import Retry
from labvault._uri import check_options, float_option, int_option, redact
from labvault.blobs.abc import BlobStore
from labvault.blobs.sql import SQLBlobStore
from labvault.domain import ChangeEvent, RunInfo
from labvault.errors import (
    AuthenticationError,
    BackendUnavailableError,
    ConflictError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
    PermissionDeniedError,
    UnsupportedOperationError,
)
from labvault.store.feed import ChangeFeed, LocalChangeFeed
from labvault.store.search.runindex import RunIndex
from labvault.store.sql.backend import SQLBackend
from labvault.store.sql.engine import Mode
from labvault.store.sql.runs import new_id, param_rows, to_json
from labvault.store.sql.schema import (
    S_RUN_NUMBER,
    U_RUN,
    t_experiments,
    t_latest,
    t_params,
    t_results,
    t_runs,
    t_tags,
)

__all__ = ["PostgresBackend"]

log = logging.getLogger(__name__)

_DEFAULTS: dict[str, Any] = {"connect_timeout": 10.0, "retry_timeout": 30.0, "pool_size": 5, "schema": None,
                             "sslmode": None}
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: NOTIFY payloads must be shorter than 8000 bytes.
_MAX_PAYLOAD = 7900
#: Errors worth running the transaction again for: lost connections, server shutting down or starting,
#: too many connections, serialization failures and deadlocks.
_RETRY_STATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})
_CONNECT_FAILURES = (
    (re.compile(r'FATAL: +database ".*" does not exist'), "3D000"),
    (re.compile(r"FATAL: +(password authentication failed|no pg_hba\.conf entry|role \".*\" does not exist)"),
     "28000"),
    (re.compile(r"FATAL: +permission denied"), "42501"),
)
#: Several notifications in one statement, in array order (a function scan returns its rows in order).
_NOTIFY = sa.text("SELECT pg_notify(:b_channel, payload) FROM unnest(CAST(:b_payloads AS text[])) AS payload")


def _parse_uri(uri: str) -> tuple[sa.URL, dict[str, Any]]:
    """The SQLAlchemy URL (driver psycopg) and the query options of a postgresql:// URI."""
    if not isinstance(uri, str) or "://" not in uri:
        raise InvalidArgumentError(f"{uri!r} is not a postgresql:// URI")
    if "\x00" in uri:
        raise InvalidArgumentError(f"{uri!r} contains a NUL character")
    scheme, rest = uri.split("://", 1)
    base, _, driver = scheme.lower().partition("+")
    if base not in ("postgresql", "postgres"):
        raise InvalidArgumentError(f"{uri!r} is not a postgresql:// URI")
    if driver not in ("", "psycopg"):
        raise InvalidArgumentError(
            f"{_redact(uri)!r}: labvault talks to PostgreSQL through psycopg 3; write postgresql:// or "
            f"postgresql+psycopg://, not {scheme}://")
    rest, _, raw_query = rest.partition("?")
    try:
        url = sa.engine.make_url(f"postgresql+psycopg://{rest}")
        port = url.port
    except (sa_exc.ArgumentError, ValueError) as exc:
        raise InvalidArgumentError(f"{_redact(uri)!r} is not a valid PostgreSQL URI: {exc}") from exc
    if port is not None and not 0 < port < 65536:
        raise InvalidArgumentError(f"{_redact(uri)!r}: port {port} is out of range")
    if not url.database:
        raise InvalidArgumentError(
            f"{_redact(uri)!r} names no database: write postgresql://user@host:port/database")
    try:
        pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=bool(raw_query))
    except ValueError as exc:
        raise InvalidArgumentError(f"{_redact(uri)!r} has a malformed query string: {exc}") from exc
    options: dict[str, Any] = {}
    for key, value in pairs:
        if key in options:
            raise InvalidArgumentError(f"{_redact(uri)!r} gives option {key!r} more than once")
        options[key] = value
    return url, options


def _redact(uri: str) -> str:
    """``uri`` with its secrets hidden (see :func:`labvault._uri.redact`)."""
    return redact(uri)


def _sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a driver error; for failures while connecting (which psycopg reports without
    one) inferred from the server's message."""
    state = getattr(exc, "sqlstate", None)
    if state is not None or exc is None:
        return state
    text = str(exc)
    for pattern, inferred in _CONNECT_FAILURES:
        if pattern.search(text):
            return inferred
    return None


def _signed64(text: str) -> int:
    """A stable signed 64-bit integer for ``text`` (advisory lock keys)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def _payload(event: ChangeEvent) -> str:
    """The NOTIFY payload of an event: its JSON, without ``data`` when that would be too long."""
    doc = event.to_json()
    raw = orjson.dumps(doc, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
    if len(raw) > _MAX_PAYLOAD:
        doc["data"] = {"truncated": True}
        raw = orjson.dumps(doc, default=str)
    return raw.decode()


#: The 64-bit id of the writing transaction: PostgreSQL's change number of a run (``runs.rev``).
_THIS_TRANSACTION = sa.func.txid_current()


def _create_run_statement() -> sa.Select[Any]:
    """A run, its number, params and tags in ONE statement (data-modifying CTEs), so creating a run is
    one round trip in autocommit instead of a transaction of six.

    ``UPDATE experiments ... RETURNING run_counter`` takes the number (its row lock serializes the runs
    of one experiment until the statement commits), the run row is inserted from it, and the params
    and tags come from ``unnest`` of parallel arrays, inserted only if the run was (so an unknown
    experiment inserts nothing and returns no row). Foreign keys are checked at the end of the
    statement, when the run row exists.
    """
    def array(name: str, item: Any) -> Any:
        return sa.cast(sa.bindparam(name), ARRAY(item))

    counter = (sa.update(t_experiments).where(t_experiments.c.id == sa.bindparam("b_exp"))
               .values(run_counter=t_experiments.c.run_counter + 1)
               .returning(t_experiments.c.run_counter).cte("counter"))
    run_columns = ["id", "experiment_id", "number", "name", "parent_id", "status", "start_time", "heartbeat",
                   "params_json", "tags_json", "rev"]
    run = (sa.insert(t_runs).from_select(run_columns, sa.select(
        sa.bindparam("b_id", type_=sa.String), sa.bindparam("b_exp", type_=sa.String), counter.c.run_counter,
        sa.bindparam("b_name", type_=sa.Text), sa.null(), sa.literal("running"),
        sa.bindparam("b_start", type_=sa.Double), sa.bindparam("b_start", type_=sa.Double),
        sa.bindparam("b_params_json", type_=sa.Text), sa.bindparam("b_tags_json", type_=sa.Text),
        _THIS_TRANSACTION))
        .returning(t_runs.c.number).cte("run"))
    created = sa.exists(sa.select(run.c.number))
    p = sa.func.unnest(
        array("b_pkeys", sa.Text), array("b_pjson", sa.Text), array("b_pnum", sa.Double),
        array("b_ptext", sa.Text),
    ).table_valued("key", "value_json", "value_num", "value_text").render_derived()
    params = sa.insert(t_params).from_select(
        ["run_id", "key", "value_json", "value_num", "value_text"],
        sa.select(sa.bindparam("b_id", type_=sa.String), p.c.key, p.c.value_json, p.c.value_num,
                  p.c.value_text).where(created)).cte("params")
    t = sa.func.unnest(array("b_tkeys", sa.Text), array("b_tvals", sa.Text)).table_valued(
        "key", "value").render_derived()
    tags = sa.insert(t_tags).from_select(
        ["run_id", "key", "value"], sa.select(sa.bindparam("b_id", type_=sa.String), t.c.key, t.c.value)
        .where(created)).cte("tags")
    return sa.select(run.c.number).add_cte(params, tags)


_CREATE_RUN = _create_run_statement()
#: Finishing / heartbeating a run, stamped for the run index.
_U_RUN_STAMPED = U_RUN.values(rev=_THIS_TRANSACTION)
#: Stamp a run changed by the current transaction (see ``PostgresBackend._stamp``).
_STAMP_RUN = sa.update(t_runs).where(t_runs.c.id == sa.bindparam("b_run")).values(rev=_THIS_TRANSACTION)
#: The oldest transaction still running (every one before it has committed or rolled back), and the ids of
#: the experiments that exist, in one round trip.
_S_HORIZON = sa.select(sa.func.txid_snapshot_xmin(sa.func.txid_current_snapshot()),
                       sa.select(sa.func.array_agg(t_experiments.c.id)).scalar_subquery())


class PostgresBackend(SQLBackend, scheme="postgresql"):
    """Metadata (and, by default, artifacts) in PostgreSQL; cross-process change feed via LISTEN/NOTIFY."""

    config_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "properties": {
            "backend": {"enum": ["postgresql", "postgres", "postgresql+psycopg"]},
            "module": {"type": "string"},
            "uri": {"type": "string", "pattern": "^[pP][oO][sS][tT][gG][rR][eE][sS]([qQ][lL])?(\\+psycopg)?://"},
            "schema": {"type": "string", "pattern": _SCHEMA_NAME.pattern},
            "connect_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
            "retry_timeout": {"type": "number", "minimum": 0, "maximum": 86400},
            "pool_size": {"type": "integer", "minimum": 1, "maximum": 100},
            "sslmode": {"enum": list(_SSLMODES)},
        },
        "required": ["uri"],
        "additionalProperties": False,
    }
    _dialect: ClassVar[str] = "postgresql"
    _revs_follow_commits: ClassVar[bool] = False  # concurrent writers: see _index_horizon
    #: Index refreshes need no snapshot across statements (the horizon is read first): no BEGIN/ROLLBACK.
    _index_read_mode: ClassVar[Mode] = "autocommit"
    supports_events: ClassVar[bool] = True
    event_log: ClassVar[bool] = False  # LISTEN/NOTIFY keeps nothing

    def __init__(self, uri: str, url: sa.URL, *, blobs: BlobStore | None = None, schema: str | None = None,
                 connect_timeout: float = 10.0, retry_timeout: float = 30.0, pool_size: int = 5,
                 sslmode: str | None = None) -> None:
        super(SQLBackend, self).__init__(uri, blobs)  # Backend.__init__: no SQLite path here
        self._init_sql()
        self.url = url
        self.schema = None if schema in (None, "public") else schema
        self.connect_timeout = connect_timeout
        self.retry_timeout = retry_timeout
        self.pool_size = pool_size
        self.sslmode = sslmode
        #: Every connection of this backend object carries this name (see ``pg_stat_activity``).
        self.application_name = f"labvault-{secrets.token_hex(6)}"
        namespace = f"{url.database}/{self.schema or ''}"
        #: The LISTEN/NOTIFY channel of this store (database and schema).
        self.channel = "labvault_" + hashlib.sha256(namespace.encode()).hexdigest()[:24]
        self._lock_key = _signed64(f"labvault-schema:{namespace}")
        self._listeners: set[_Listener] = set()
        self._listeners_lock = threading.Lock()
        self._notifier: _Notifier | None = None
        self._index = RunIndex()

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> PostgresBackend:
        """``postgresql://user@host:port/db`` (``postgres://``, ``postgresql+psycopg://``); see the module."""
        url, query = _parse_uri(uri)
        merged = {**query, **options}
        check_options("postgresql", merged, _DEFAULTS)
        opts = {**_DEFAULTS, **merged}
        schema = opts["schema"]
        if schema is not None and (not isinstance(schema, str) or not _SCHEMA_NAME.match(schema)):
            raise InvalidArgumentError(
                f"schema must be a name of letters, digits and underscores (at most 63), got {schema!r}")
        sslmode = opts["sslmode"]
        if sslmode is not None and sslmode not in _SSLMODES:
            raise InvalidArgumentError(f"sslmode must be one of {', '.join(_SSLMODES)}, got {sslmode!r}")
        return cls(
            uri, url, blobs=artifacts, schema=schema, sslmode=sslmode,
            connect_timeout=float_option("postgresql", "connect_timeout", opts["connect_timeout"], 0, 3600,
                                         exclusive_low=True),
            retry_timeout=float_option("postgresql", "retry_timeout", opts["retry_timeout"], 0, 86400),
            pool_size=int_option("postgresql", "pool_size", opts["pool_size"], 1, 100),
        )

    def _create_run(
        self, experiment_id: str, name: str | None, parent_id: str | None, start_time: float,
        params: dict[str, Any], tags: dict[str, str], *, run_id: str | None = None,
    ) -> RunInfo:
        """The common case (a new top-level run) as one statement in autocommit: one round trip and one
        commit; a nested run or a chosen id take the base class's checked transaction."""
        if parent_id is not None or run_id is not None:
            return super()._create_run(experiment_id, name, parent_id, start_time, params, tags,
                                       run_id=run_id)
        new = new_id()
        rows = param_rows(new, params)
        values = {
            "b_exp": experiment_id, "b_id": new, "b_name": name, "b_start": start_time,
            "b_params_json": to_json(params), "b_tags_json": to_json(tags),
            "b_pkeys": [r["key"] for r in rows], "b_pjson": [r["value_json"] for r in rows],
            "b_pnum": [r["value_num"] for r in rows], "b_ptext": [r["value_text"] for r in rows],
            "b_tkeys": list(tags), "b_tvals": list(tags.values()),
        }
        statement = _CREATE_RUN

        def work(conn: Connection, attempt: int) -> int:
            if attempt:  # an earlier attempt may have committed: then the run exists
                done = conn.execute(S_RUN_NUMBER, {"b_run": new}).scalar()
                if done is not None:
                    return int(done)
            number = conn.execute(statement, values).scalar()
            if number is None:
                raise NotFoundError(f"experiment {experiment_id} not found")
            return int(number)

        number = self._run(work, "autocommit")
        return RunInfo(id=new, experiment_id=experiment_id, number=number, name=name, parent_id=None,
                       status="running", start_time=start_time, heartbeat=start_time, params=dict(params),
                       tags=dict(tags))

    def _update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        """One UPDATE in autocommit (one round trip; repeating it after a lost connection is harmless)."""
        def work(conn: Connection, _attempt: int) -> None:
            if conn.execute(_U_RUN_STAMPED, {**fields, "b_run": run_id}).rowcount == 0:
                raise NotFoundError(f"run {run_id} not found")

        self._run(work, "autocommit")

    # -- the run index (see labvault.store.search.runindex) -------------------------------------------
    def _stamp(self, conn: Connection, run_id: str | None) -> None:
        """Stamp ``run_id`` with the id of the writing transaction (deletions need no stamp: a refresh
        drops the experiments that no longer exist)."""
        if run_id is not None:
            conn.execute(_STAMP_RUN, {"b_run": run_id})

    def _index_horizon(self, conn: Connection) -> tuple[int, set[str] | None]:
        """The oldest transaction still running (``txid_snapshot_xmin``), and the experiments that exist.

        Transaction ids are handed out at a transaction's first write, not in commit order, so "the
        highest stamp seen" would skip a slow writer that commits after a faster one with a higher id.
        Every transaction older than this horizon has finished, so all its stamps are visible now; the
        next refresh re-reads every run stamped at or after it (``_changed_since``), which includes each
        transaction that was still running. A long-open writing transaction elsewhere holds the horizon
        back and makes refreshes re-read more, never less.
        """
        horizon, experiments = conn.execute(_S_HORIZON).one()
        return int(horizon), set(experiments or ())

    @staticmethod
    def _changed_since(horizon: int) -> sa.ColumnElement[bool]:
        # The upper bound (2^40 transactions later: never reached) changes no result; it makes the planner
        # estimate a narrow range and use ix_runs_rev even before the table has statistics (right after a
        # bulk load it would otherwise scan every run: 0.9 ms instead of 0.1 ms at 3,000 runs).
        return sa.and_(t_runs.c.rev >= horizon, t_runs.c.rev < horizon + 2**40)

    def _latest_rev(self) -> int | None:
        """No shortcut: every search refreshes from the horizon (one indexed query)."""
        return None

    def _default_blobs(self) -> BlobStore:
        """Artifacts in the database: chunked ``bytea`` rows (see ``SQLBlobStore``)."""
        return SQLBlobStore(self)

    def close(self) -> None:
        """Send the queued notifications, stop the feed listeners, dispose of the pool. Safe to call twice."""
        with self._listeners_lock:
            listeners, self._listeners = list(self._listeners), set()
            notifier, self._notifier = self._notifier, None
        if notifier is not None and notifier.pid == os.getpid():
            notifier.close()
        for listener in listeners:
            listener.stop()
        super().close()

    def __repr__(self) -> str:
        return f"PostgresBackend({self.display_uri!r})"

    # -- the dialect hooks of SQLBackend --------------------------------------------------------------------
    def _connect_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"application_name": self.application_name,
                                "connect_timeout": max(1, math.ceil(self.connect_timeout))}
        if self.sslmode is not None:
            args["sslmode"] = self.sslmode
        return args

    def _create_engine(self) -> Engine:
        try:
            import psycopg  # noqa: F401  # lazy: optional driver (extra [postgres])
        except ImportError as exc:
            raise UnsupportedOperationError(
                "the PostgreSQL backend needs psycopg 3: pip install 'labvault[postgres]'") from exc
        return sa.create_engine(
            self.url, pool_pre_ping=True, pool_size=self.pool_size, max_overflow=2 * self.pool_size,
            pool_timeout=max(30.0, self.connect_timeout), connect_args=self._connect_args(),
        )

    def _engine_options(self) -> dict[str, Any]:
        return {"schema_translate_map": {None: self.schema}} if self.schema else {}

    def _insert(self, table: sa.Table) -> Any:
        return pg_insert(table)

    def _lock_schema(self, conn: Connection) -> None:
        """Serialize schema creation and upgrades of this database/schema across processes."""
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": self._lock_key})

    def _tune_schema(self, conn: Connection) -> None:
        """Store metric arrays and blob chunks uncompressed and out of line (``STORAGE EXTERNAL``).

        Float arrays hardly compress, and trying costs more than the whole rest of an insert: a batch of
        1,000 points spent 2.3 ms of its 4 ms in pglz. Blob chunks skip compression likewise, so
        uploads stream at network speed.
        """
        quote = conn.dialect.identifier_preparer
        prefix = f"{quote.quote(self.schema)}." if self.schema else ""
        for table, columns in (("metric_segments", ("steps", "values", "timestamps")),
                               ("blob_chunks", ("data",))):
            alters = ", ".join(f"ALTER COLUMN {quote.quote(c)} SET STORAGE EXTERNAL" for c in columns)
            conn.exec_driver_sql(f"ALTER TABLE {prefix}{quote.quote(table)} {alters}")

    def _prepare_schema(self, conn: Connection) -> None:
        if self.schema:
            name = conn.dialect.identifier_preparer.quote(self.schema)
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {name}")

    def _table_names(self, conn: Connection) -> set[str]:
        return set(sa.inspect(conn).get_table_names(schema=self.schema))

    def _retryable(self, exc: sa_exc.DBAPIError) -> bool:
        if isinstance(exc, sa_exc.IntegrityError | sa_exc.ProgrammingError | sa_exc.DataError):
            return False
        if exc.connection_invalidated:
            return True
        state = _sqlstate(exc.orig)
        if state is None:  # a client-side failure: refused, reset, timed out, lost
            return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
        return state.startswith("08") or state in _RETRY_STATES

    @property
    def host_port(self) -> str:
        """``host:port`` of the server, for messages."""
        return f"{self.url.host or 'localhost'}:{self.url.port or 5432}"

    @property
    def location(self) -> str:
        """``host:port/database`` and the schema, for messages."""
        where = f"{self.host_port}/{self.url.database}"
        return f"{where} (schema {self.schema})" if self.schema else where

    @property
    def display_uri(self) -> str:
        """The URI with its password replaced by ``***``."""
        return _redact(self.uri)

    def _where(self) -> str:
        return f"PostgreSQL store at {self.location}"

    def _translate_error(self, exc: sa_exc.DBAPIError) -> LabvaultError:
        """A constraint -> ``ConflictError``; else by SQLSTATE (``_STATE_ERRORS``); else unavailable."""
        orig = getattr(exc, "orig", None)
        detail = str(orig or exc).strip()
        if isinstance(exc, sa_exc.IntegrityError):
            return ConflictError(f"{self._where()} rejected a write: {detail}")
        make = _STATE_ERRORS.get(_sqlstate(orig) or "")
        return make(self, detail) if make is not None else self._unavailable(detail)

    def _unavailable(self, detail: str) -> BackendUnavailableError:
        return BackendUnavailableError(f"PostgreSQL at {self.host_port} is unavailable "
                                       f"(database {self.url.database}): {detail}")

    def _detail_columns(self) -> tuple[sa.ColumnElement[Any], sa.ColumnElement[Any]]:
        """The latest metrics and results as JSON text (an infinity arrives as ``"Infinity"``)."""
        metrics = (sa.select(sa.cast(sa.func.json_object_agg(t_latest.c.key, t_latest.c.value), sa.Text))
                   .where(t_latest.c.run_id == t_runs.c.id).scalar_subquery())
        results = (sa.select(sa.cast(sa.func.json_object_agg(t_results.c.key,
                                                             sa.cast(t_results.c.value_json, sa.JSON)),
                                     sa.Text))
                   .where(t_results.c.run_id == t_runs.c.id).scalar_subquery())
        return metrics, results

    # -- change feed ----------------------------------------------------------------------------------------
    def _publish(self, event: ChangeEvent) -> None:
        """Queue ``pg_notify`` for an event whose write just committed (see ``_Notifier``)."""
        notifier = self._notifier
        if notifier is None or notifier.pid != os.getpid():
            with self._listeners_lock:
                notifier = self._notifier
                if notifier is None or notifier.pid != os.getpid():
                    notifier = self._notifier = _Notifier(self)
        notifier.send(_payload(event))

    def _notify(self, payloads: list[str]) -> None:
        """Send notifications in order, in one statement. A failure is logged, never raised: the writes
        themselves succeeded, and raising would make a caller repeat one."""
        params = {"b_channel": self.channel, "b_payloads": payloads}
        try:
            self._run(lambda conn, _: conn.execute(_NOTIFY, params), "autocommit")
        except LabvaultError as exc:
            log.warning("labvault: could not notify %s of %d change(s): %s", self.location, len(payloads),
                        exc)

    def _event_store(self) -> None:
        """LISTEN/NOTIFY carries PostgreSQL's changes; it keeps no log (``watch(after=)`` is refused)."""
        return None

    def _watch(self, after: str | None) -> ChangeFeed:
        if after is not None:
            raise UnsupportedOperationError(
                "PostgreSQL's change feed is LISTEN/NOTIFY, which keeps no log: a feed cannot resume after "
                "an event (events sent while no feed listens are not kept)")
        listener = _Listener(self)
        with self._listeners_lock:
            self._listeners.add(listener)
        return listener.feed

    def _drop_listener(self, listener: _Listener) -> None:
        with self._listeners_lock:
            self._listeners.discard(listener)

    def _listen_connection(self) -> Any:
        """A new autocommit psycopg connection LISTENing on the channel (retried like a transaction)."""
        import psycopg  # lazy: optional driver (extra [postgres])

        retry = Retry(timeout=self.retry_timeout)
        url = self.url
        while True:
            try:
                conn = psycopg.connect(
                    host=url.host, port=url.port, dbname=url.database, user=url.username,
                    password=url.password, autocommit=True, **self._connect_args(),
                )
                try:
                    conn.execute(f'LISTEN "{self.channel}"')
                except BaseException:
                    conn.close()
                    raise
                return conn
            except psycopg.OperationalError as exc:
                if not retry.wait():
                    raise self._unavailable(str(exc)) from exc


def _no_database(backend: PostgresBackend, detail: str) -> LabvaultError:
    url = backend.url
    return BackendUnavailableError(
        f"PostgreSQL at {backend.host_port} has no database {url.database!r}: create it "
        f"(createdb -h {url.host or 'localhost'} -p {url.port or 5432} {url.database}); "
        "labvault creates its tables itself")


def _login_refused(backend: PostgresBackend, detail: str) -> LabvaultError:
    return AuthenticationError(f"PostgreSQL at {backend.host_port} refused the login: {detail}")


def _permission_denied(backend: PostgresBackend, detail: str) -> LabvaultError:
    return PermissionDeniedError(f"{backend._where()}: {detail}")


#: The SQLSTATEs whose failures read as something else than "unavailable" (see ``_translate_error``).
_STATE_ERRORS: dict[str, Callable[[PostgresBackend, str], LabvaultError]] = {
    "3D000": _no_database,  # invalid catalog name: the database does not exist
    "28000": _login_refused,  # invalid authorization specification
    "28P01": _login_refused,  # invalid password
    "42501": _permission_denied,  # insufficient privilege
}


class _Notifier:
    """Sends one backend's notifications from a daemon thread: in order, all queued ones per round trip.

    A write enqueues its event right after its transaction committed and returns at once, so NOTIFY
    costs the writer nothing; listeners still see events in the order this process made its writes,
    within milliseconds. ``close()`` (called by the backend's) sends what is queued before returning.
    """

    def __init__(self, backend: PostgresBackend) -> None:
        self._backend = backend
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._loop, name="labvault-pg-notify", daemon=True)
        self._thread.start()

    def send(self, payload: str) -> None:
        """Queue one notification (sent by the thread, in order)."""
        self._queue.put(payload)

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued, then stop the thread (waiting ``timeout`` seconds at most)."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[str] = []
            while item is not None:
                batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._backend._notify(batch)
            if item is None:
                return


class _Listener:
    """One ``watch()`` feed: a dedicated LISTEN connection read by a daemon thread until the feed closes."""

    def __init__(self, backend: PostgresBackend) -> None:
        self._backend = backend
        self._stopping = threading.Event()
        # Connect and LISTEN before returning, so no event after watch() returned can be missed.
        self._conn = backend._listen_connection()
        self.feed = LocalChangeFeed(on_close=lambda _feed: self.stop())
        self._thread = threading.Thread(target=self._loop, name="labvault-pg-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (the thread closes its connection within a fraction of a second)."""
        self._stopping.set()
        if not self.feed.closed:
            self.feed.close()
        self._backend._drop_listener(self)

    def _loop(self) -> None:
        import psycopg  # lazy: optional driver (extra [postgres])

        conn = self._conn
        try:
            while not self._stopping.is_set():
                try:
                    for note in conn.notifies(timeout=0.2):
                        self._deliver(note.payload)
                        if self._stopping.is_set():
                            break
                except psycopg.Error:
                    conn.close()
                    conn = self._reconnect()
                    if conn is None:
                        return
        finally:
            if conn is not None:
                conn.close()

    def _reconnect(self) -> Any:
        """A fresh LISTEN connection after losing one (events sent in between are lost), or None."""
        while not self._stopping.is_set():
            try:
                return self._backend._listen_connection()
            except LabvaultError:
                self._stopping.wait(1.0)
        return None

    def _deliver(self, payload: str) -> None:
        try:
            event = ChangeEvent.from_json(orjson.loads(payload))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("labvault: ignoring a malformed notification on %s", self._backend.channel)
            return
        self.feed.put(event)
