"""Schema versions of the SQL stores: created on first use, checked on open, upgraded explicitly.

A new, empty store is created at the current version on first use (no setup step), serialized across
processes by the write lock (SQLite) or an advisory lock (PostgreSQL). A store at an older version is
never upgraded silently: opening it raises ``UnsupportedOperationError`` naming ``labvault db upgrade``,
which runs ``upgrade()``: every pending migration in ``MIGRATIONS`` in one write transaction that re-reads
the version under the lock, so several processes may run it at once (all but the first find nothing to
do). A store newer than this code is refused too.

``SchemaVersions`` is the part of the SQL backends that does this (``SQLBackend`` inherits it); the
tables of each version are described by ``labvault.store.sql.schema.schema_metadata``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from labvault.errors import CorruptDataError, InvalidArgumentError, UnsupportedOperationError
from labvault.store import registry
from labvault.store.sql.engine import SQLEngine
from labvault.store.sql.schema import (
    LABVAULT_TABLES,
    SCHEMA_VERSION,
    schema_metadata,
    t_latest,
    t_meta,
    t_runs,
    t_segments,
)

__all__ = ["MIGRATIONS", "SchemaVersions", "upgrade"]


def _add_column(conn: Connection, table: sa.Table, column: str, ddl: str) -> None:
    """``ALTER TABLE table ADD COLUMN column ddl`` unless the column exists (in the store's namespace)."""
    schema = conn.schema_for_object(table)
    if column in {c["name"] for c in sa.inspect(conn).get_columns(table.name, schema=schema)}:
        return
    quote = conn.dialect.identifier_preparer
    name = quote.quote(table.name)
    if schema:
        name = f"{quote.quote_schema(schema)}.{name}"
    conn.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN {column} {ddl}")


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
    _add_column(conn, t_segments, "batch_id", "VARCHAR(32)")


def _migrate_4_to_5(conn: Connection) -> None:
    """Version 5 adds ``runs.rev`` (the change number the SQLite run index refreshes by) and its index."""
    _add_column(conn, t_runs, "rev", "BIGINT DEFAULT '0' NOT NULL")
    for index in schema_metadata(5).tables["runs"].indexes:
        if index.name == "ix_runs_rev":
            index.create(conn, checkfirst=True)


#: ``MIGRATIONS[i]`` takes a store from version ``i + 1`` to ``i + 2`` inside the caller's transaction.
MIGRATIONS: list[Callable[[Connection], None]] = [
    _migrate_1_to_2, _migrate_2_to_3, _migrate_3_to_4, _migrate_4_to_5]
assert len(MIGRATIONS) == SCHEMA_VERSION - 1


class SchemaVersions(SQLEngine):
    """Reads, checks, creates and upgrades the schema version of an SQL store (see the module)."""

    def _read_version(self, conn: Connection) -> int | None:
        """The store's schema version; None for an empty database."""
        names = self._table_names(conn)
        if "meta" not in names:
            if names & LABVAULT_TABLES:
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

    def _create_if_empty(self, conn: Connection) -> int | None:
        """Under the schema lock: the store's version, or None after creating the schema of an empty one."""
        self._lock_schema(conn)
        self._prepare_schema(conn)
        version = self._read_version(conn)
        if version is None:
            self._create_schema(conn)
        return version

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
                version = self._create_if_empty(conn)
        self._check_version(SCHEMA_VERSION if version is None else version)

    def schema_version(self) -> int | None:
        """The store's schema version without creating or upgrading anything (None: an empty store)."""
        return self._run(lambda conn, _: self._read_version(conn), "read", schema=False)

    def upgrade(self) -> tuple[int, int]:
        """Bring the store to ``SCHEMA_VERSION``; return (old version, new version).

        An empty store is created, reported as version 0. Runs every pending migration in one write
        transaction after re-reading the version under the lock, so concurrent upgrades are safe.
        """

        def work(conn: Connection, _attempt: int) -> tuple[int, int]:
            version = self._create_if_empty(conn)
            if version is None:
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


def upgrade(uri: str) -> tuple[int, int]:
    """Upgrade the SQL store at ``uri`` (SQLite or PostgreSQL) to this labvault's schema; return (old, new).

    This is what ``labvault db upgrade --uri ...`` runs. Safe when several processes run it at once.
    """
    scheme = uri.split("://", 1)[0].lower() if isinstance(uri, str) and "://" in uri else ""
    cls = registry.backend_class(scheme) if scheme else None
    if cls is None or not issubclass(cls, SchemaVersions):
        raise InvalidArgumentError(f"{uri!r} is not an SQL store (sqlite:// or postgresql://)")
    backend = cls.from_uri(uri)
    assert isinstance(backend, SchemaVersions)  # from_uri returns its class's instances
    try:
        return backend.upgrade()
    finally:
        backend.close()
