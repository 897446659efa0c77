"""PostgreSQL-specific behaviour of ``labvault.store.sql.postgresql`` (shared semantics: conformance suite).

Every test works in a database this module creates (``labvault_test_<hex>``, ICU ``en-US`` collation)
and drops at the end, most in a fresh schema of it; nothing else on the server is touched. Connection
kills only ever target the connections of the backend under test (found by its ``application_name``).
"""

from __future__ import annotations

import json
import math
import random
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_conformance_postgres import BASE, connect_admin, create_database
from test_sql_backend import check_index_agrees_with_sql, check_index_follows_writes

import labvault
from labvault import query as sql_query
from labvault.blobs.memory import MemoryBlobStore
from labvault.blobs.sql import SQLBlobStore
from labvault.domain import MetricSeries
from labvault.errors import (
    BackendUnavailableError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    UnsupportedOperationError,
)
from labvault.store import sql
from labvault.store.sql.schema import SCHEMA_VERSION, schema_metadata
from labvault.testing.blob_suite import BlobStoreTests


@pytest.fixture(scope="module")
def admin() -> Iterator[Any]:
    """An autocommit admin connection; the databases it created are dropped at the end."""
    conn = connect_admin()
    conn.created = []  # type: ignore[attr-defined]
    yield conn
    for name in conn.created:  # type: ignore[attr-defined]
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def _new_database(admin: Any) -> str:
    name = create_database(admin)
    admin.created.append(name)
    return f"{BASE}/{name}"


@pytest.fixture(scope="module")
def database(admin: Any) -> str:
    """The URI of this module's database (created once)."""
    return _new_database(admin)


@pytest.fixture
def fresh_database(admin: Any) -> str:
    """The URI of a new, empty database (dropped with the module's)."""
    return _new_database(admin)


@pytest.fixture
def uri(database: str) -> str:
    """A fresh schema in the module's database."""
    return f"{database}?schema=t_{secrets.token_hex(6)}"


def _schema(uri: str) -> str:
    return uri.rsplit("schema=", 1)[1]


def _db_query(uri: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(uri.split("?", 1)[0], autocommit=True) as conn:
        cur = conn.execute(statement, args)
        return cur.fetchall() if cur.description else []


def _series(key: str, values: list[float], first_step: int = 0) -> MetricSeries:
    n = len(values)
    return MetricSeries(key, np.arange(first_step, first_step + n, dtype=np.int64),
                        np.asarray(values, dtype=np.float64), np.full(n, 1000.0))


# -- URIs, options, construction ----------------------------------------------------------------------------
def test_construction_does_no_io_and_uri_forms() -> None:
    from labvault.store.sql.postgresql import PostgresBackend

    for scheme in ("postgresql", "postgres", "postgresql+psycopg", "POSTGRESQL"):
        # Nothing listens on port 9: construction must not notice.
        backend = labvault.open(f"{scheme}://lab:secret@127.0.0.1:9/runs?schema=team_a").backend
        assert isinstance(backend, PostgresBackend)
        assert backend.location == "127.0.0.1:9/runs (schema team_a)" and backend.schema == "team_a"
        assert "secret" not in repr(backend) and "secret" not in backend.display_uri
        backend.close()
    b = PostgresBackend.from_uri("postgresql://db.example.org/runs", connect_timeout="2.5", pool_size=3,
                                 retry_timeout=0, sslmode="require")
    assert (b.connect_timeout, b.pool_size, b.retry_timeout, b.sslmode) == (2.5, 3, 0.0, "require")
    assert b.host_port == "db.example.org:5432" and b.application_name.startswith("labvault-")
    assert b.channel != PostgresBackend.from_uri("postgresql://db.example.org/runs?schema=x").channel
    assert b.channel == PostgresBackend.from_uri("postgresql://other-host/runs?schema=public").channel


@pytest.mark.parametrize(("uri", "named"), [
    ("postgresql://h/db?bogus=1", "bogus"),
    ("postgresql://h/db?connect_timeout=1&nope=2&also=3", "also, nope"),
    ("postgresql://h/db?schema=a&schema=b", "more than once"),
    ("postgresql://h/db?schema=bad-name", "schema"),
    ("postgresql://h/db?schema=", "schema"),
    ("postgresql://h/db?connect_timeout=soon", "connect_timeout"),
    ("postgresql://h/db?connect_timeout=0", "connect_timeout"),
    ("postgresql://h/db?retry_timeout=-1", "retry_timeout"),
    ("postgresql://h/db?pool_size=1.5", "pool_size"),
    ("postgresql://h/db?sslmode=maybe", "sslmode"),
    ("postgresql://h", "names no database"),
    ("postgresql://h/", "names no database"),
    ("postgresql://h:99999/db", "99999"),
    ("postgresql://h:port/db", "h:port"),
    ("postgresql+psycopg2://u:pw@h/db", "psycopg"),
    ("postgresql://h/d\x00b", "NUL"),
])
def test_bad_uris_and_options(uri: str, named: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        labvault.open(uri)
    assert named in str(info.value), str(info.value)
    assert "pw" not in str(info.value)


def test_options_as_keywords_and_config() -> None:
    from labvault.store.sql.postgresql import PostgresBackend

    with pytest.raises(InvalidArgumentError, match="token"):
        labvault.open("postgresql://h/db", token="x")
    with pytest.raises(InvalidArgumentError, match="busy_timeout") as info:
        PostgresBackend.from_uri("postgresql://h/db", busy_timeout=1)
    assert "connect_timeout" in str(info.value)  # the message lists what is known
    vault = labvault.open(config={"backend": "postgresql", "uri": "postgresql://h/db", "schema": "s",
                                  "retry_timeout": 1})
    assert isinstance(vault.backend, PostgresBackend) and vault.backend.schema == "s"
    vault.close()
    with pytest.raises(InvalidArgumentError):
        labvault.open(config={"backend": "postgresql", "uri": "postgresql://h/db", "extra": 1})
    with pytest.raises(InvalidArgumentError):
        labvault.open(config={"backend": "postgresql", "uri": "sqlite:///x.db"})


# -- availability --------------------------------------------------------------------------------------------
def test_unreachable_server_is_unavailable_after_bounded_retries() -> None:
    start = time.monotonic()
    with pytest.raises(BackendUnavailableError) as info, \
            labvault.open("postgresql://postgres@127.0.0.1:1/nothing?retry_timeout=1&connect_timeout=1") as v:
        v.experiments()
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "127.0.0.1:1" in message and "gave up after" in message, message
    assert 0.5 < elapsed < 10, elapsed
    assert isinstance(info.value.__cause__, sa.exc.DBAPIError)  # translated, never the raw driver error
    backend = labvault.open("postgresql://postgres@127.0.0.1:1/nothing?retry_timeout=0").backend
    with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1:1"):
        backend.watch()


def test_missing_database_says_so(database: str) -> None:
    missing = f"labvault_test_missing_{secrets.token_hex(4)}"
    uri = database.rsplit("/", 1)[0] + f"/{missing}?retry_timeout=5"
    start = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=r"has no database .* create it"):
        labvault.open(uri).experiments()
    assert time.monotonic() - start < 3  # not a transient failure: no retries


# -- schema: created on first use, upgraded explicitly, safe with 8 processes --------------------------------
_BARRIER_WAIT = (
    "import os, sys, time\n"
    "deadline = time.time() + 60\n"
    "while not os.path.exists(sys.argv[2]) and time.time() < deadline: time.sleep(0.002)\n"
)


def _race(script: str, args: list[str], count: int, barrier: Path, timeout: float = 180) -> list[str]:
    procs = [subprocess.Popen([sys.executable, "-c", _BARRIER_WAIT + script, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(count)]
    time.sleep(1.5)  # let every interpreter start and wait at the barrier
    barrier.touch()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        assert p.returncode == 0, stderr
        out.append(stdout)
    return out


@pytest.mark.multiprocess
def test_eight_processes_create_the_schema_of_an_empty_database(fresh_database: str, tmp_path: Path) -> None:
    script = (
        "import json, labvault\n"
        "with labvault.open(sys.argv[1]) as vault:\n"
        "    with vault.experiment('shared').start_run(params={'pid': os.getpid()}) as run:\n"
        "        run.log_metric('m', 1.0)\n"
        "    print(json.dumps(run.number))\n"
    )
    out = _race(script, [fresh_database, str(tmp_path / "go")], 8, tmp_path / "go")
    assert sorted(json.loads(o) for o in out) == list(range(1, 9))
    assert _db_query(fresh_database, "SELECT value FROM meta") == [(str(SCHEMA_VERSION),)]
    tables = {r[0] for r in _db_query(fresh_database,
                                      "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"meta", "runs", "blobs", "blob_chunks", "metric_latest"} <= tables


def _build_v3(uri: str) -> None:
    """A store as labvault with schema version 3 wrote it (no blob tables, no batch_id)."""
    from labvault.store.sql.postgresql import PostgresBackend

    backend = PostgresBackend.from_uri(uri)
    engine = backend._engines()[1]
    with engine.begin() as conn:
        backend._prepare_schema(conn)
        schema_metadata(3).create_all(conn)
        conn.execute(sa.insert(sql.t_meta).values(key="schema_version", value="3"))
        conn.execute(sa.insert(sql.t_experiments).values(id="e1", name="old", project="default",
                                                         created_at=1.0, run_counter=1))
        conn.execute(sa.insert(sql.t_runs).values(id="r1", experiment_id="e1", number=1, status="finished",
                                                  start_time=1.0, params_json='{"lr":0.1}'))
        conn.execute(sa.insert(sql.t_params).values(run_id="r1", key="lr", value_json="0.1", value_num=0.1))
        conn.execute(sa.text(f"INSERT INTO {_schema(uri)}.metric_segments "
                             '(run_id, key, seq, n, steps, "values", timestamps) '
                             "VALUES ('r1', 'm', 0, 2, :s, :v, :t)"),
                     {"s": np.arange(2, dtype="<i8").tobytes(), "v": np.array([0.5, 0.25], "<f8").tobytes(),
                      "t": np.ones(2, "<f8").tobytes()})
        conn.execute(sa.insert(sql.t_latest).values(run_id="r1", key="m", value=0.25, step=1, timestamp=1.0))
    backend.close()


@pytest.mark.multiprocess
def test_eight_concurrent_db_upgrades_of_a_version_3_store(uri: str, tmp_path: Path) -> None:
    _build_v3(uri)
    with pytest.raises(UnsupportedOperationError, match="labvault db upgrade"), labvault.open(uri) as v:
        v.experiments()
    script = (
        "from labvault.cli import main\n"
        "sys.argv = ['labvault', 'db', 'upgrade', '--uri', sys.argv[1]]\n"
        "main()\n"
    )
    out = _race(script, [uri, str(tmp_path / "go")], 8, tmp_path / "go")
    upgraded = [o for o in out if f"from schema version 3 to {SCHEMA_VERSION}" in o]
    assert len(upgraded) == 1, out
    assert sum(f"already at schema version {SCHEMA_VERSION}" in o for o in out) == 7, out
    with labvault.open(uri) as vault:
        run = vault.get_run("r1")
        assert run.params == {"lr": 0.1} and run.metrics == {"m": 0.25}
        assert run.metric_history("m").values.tolist() == [0.5, 0.25]
        with vault.experiment("old").start_run() as new:
            new.log_metric("m", 1.0)
            new.log_artifact("a.txt", b"in the database")
        assert new.number == 2 and new.get_artifact("a.txt") == b"in the database"
    # The upgraded schema has exactly the columns of a fresh one.
    fresh = uri.rsplit("=", 1)[0] + f"=t_{secrets.token_hex(6)}"
    with labvault.open(fresh) as vault:
        vault.experiments()
    columns = ("SELECT table_name, column_name, data_type, collation_name FROM information_schema.columns "
               "WHERE table_schema = %s ORDER BY table_name, column_name")
    assert _db_query(uri, columns, _schema(uri)) == _db_query(fresh, columns, _schema(fresh))
    indexes = "SELECT indexname FROM pg_indexes WHERE schemaname = %s ORDER BY indexname"
    assert _db_query(uri, indexes, _schema(uri)) == _db_query(fresh, indexes, _schema(fresh))


def test_newer_store_refused(uri: str) -> None:
    with labvault.open(uri) as vault:
        vault.experiments()
    _db_query(uri, f"UPDATE {_schema(uri)}.meta SET value = '99'")
    with pytest.raises(UnsupportedOperationError, match="schema version 99, newer"), labvault.open(uri) as v:
        v.experiments()
    with pytest.raises(UnsupportedOperationError, match="99"):
        sql.upgrade(uri)


# -- the run index ------------------------------------------------------------------------------------------
def test_run_index_follows_writes_of_other_connections(uri: str) -> None:
    from labvault.store.sql.postgresql import PostgresBackend

    writer, reader = PostgresBackend.from_uri(uri), PostgresBackend.from_uri(uri)
    try:
        check_index_follows_writes(writer, reader)
    finally:
        writer.close()
        reader.close()


def test_run_index_and_sql_search_agree_across_experiments(uri: str) -> None:
    from labvault.store.sql.postgresql import PostgresBackend

    indexed, plain = PostgresBackend.from_uri(uri), PostgresBackend.from_uri(uri)
    try:
        check_index_agrees_with_sql(indexed, plain)
    finally:
        indexed.close()
        plain.close()


def test_run_index_sees_a_slow_writer_that_commits_last(uri: str) -> None:
    """Transaction ids are not handed out in commit order: a writer that took its id first but commits
    after a later one must still be seen (a "highest stamp seen" refresh would skip it for good)."""
    import psycopg

    from labvault.store.sql.postgresql import PostgresBackend

    writer, reader = PostgresBackend.from_uri(uri), PostgresBackend.from_uri(uri)
    slow = psycopg.connect(uri.split("?", 1)[0])
    try:
        exp = writer.ensure_experiment("e", "default")
        first = writer.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
        second = writer.create_run(exp.id, name=None, parent_id=None, start_time=2.0, params={}, tags={})
        everything = sql_query.parse(None)

        def numbers(text: str) -> list[int]:
            return [r.number for r in reader.search_runs([exp.id], sql_query.parse(text), [], None, 0)]

        assert numbers("status = 'running'") == [1, 2]  # the reader's index is loaded
        # The slow writer takes its transaction id now and holds it open...
        slow.execute(f'UPDATE "{_schema(uri)}".runs SET status = %s, rev = txid_current() WHERE id = %s',
                     ("failed", first.id))
        writer.update_run(second.id, status="finished", end_time=3.0)  # ...a later one commits first
        assert numbers("status = 'finished'") == [2]
        assert numbers("status = 'failed'") == []  # not committed yet: invisible
        slow.commit()
        assert numbers("status = 'failed'") == [1]
        assert reader.search_runs([exp.id], everything, [], None, 0)[0].status == "failed"
    finally:
        slow.close()
        writer.close()
        reader.close()


def test_text_columns_compare_by_code_point(uri: str) -> None:
    """The database's collation is ICU en-US (where 'b' < 'B'); labvault still sorts like SQLite."""
    with labvault.open(uri) as vault:
        exp = vault.experiment("collate")
        for value in ["b", "B", "a_b", "ab", "É", "e"]:
            with exp.start_run(params={"s": value}, tags={"t": value}):
                pass
        order = [r.params["s"] for r in vault.search_runs("collate", order_by=["params.s"])]
        assert order == sorted(order) == ["B", "a_b", "ab", "b", "e", "É"]
        assert [r.tags["t"] for r in vault.search_runs("collate", filter="tags.t < 'a'")] == ["B"]
        # ILIKE folds ASCII letters only, like SQLite's lower() and the memory model.
        assert [r.params["s"] for r in vault.search_runs("collate", filter="params.s ILIKE 'é'")] == []
        assert [r.params["s"] for r in vault.search_runs("collate", filter="params.s ILIKE 'E'")] == ["e"]


# -- run numbers with 16 writer processes --------------------------------------------------------------------
@pytest.mark.multiprocess
def test_sixteen_writer_processes_get_dense_unique_numbers(uri: str, tmp_path: Path) -> None:
    with labvault.open(uri) as vault:
        vault.experiment("race")
    script = (
        "import json, labvault\n"
        "nums = []\n"
        "with labvault.open(sys.argv[1]) as vault:\n"
        "    exp = vault.experiment('race')\n"
        "    for i in range(6):\n"
        "        with exp.start_run(params={'pid': os.getpid(), 'i': i}, tags={'t': 'x'}) as run:\n"
        "            run.log_metric('m', float(i))\n"
        "            nums.append(run.number)\n"
        "print(json.dumps(nums))\n"
    )
    out = _race(script, [uri, str(tmp_path / "go")], 16, tmp_path / "go")
    numbers = sorted(n for o in out for n in json.loads(o))
    assert numbers == list(range(1, 97))
    with labvault.open(uri) as vault:
        runs = vault.search_runs("race")
        assert [r.number for r in runs] == list(range(1, 97))
        assert all(r.status == "finished" and r.metrics == {"m": float(r.params["i"])} for r in runs)


def test_concurrent_writers_of_one_run_lose_nothing(uri: str) -> None:
    """Threads writing params, tags and metrics of one run at once: no lost update, no deadlock."""
    with labvault.open(uri) as vault:
        run = vault.experiment("threads").start_run()
        errors: list[BaseException] = []

        def writer(t: int) -> None:
            try:
                for i in range(15):
                    vault.backend.log_params(run.id, {f"p{t}_{i}": i})
                    vault.backend.set_tags(run.id, {f"t{t}_{i}": str(i)})
                    vault.backend.log_metrics(run.id, [_series("m", [float(t * 100 + i)], first_step=i)])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert not errors, errors
        info = vault.backend.get_run(run.id)
        assert len(info.params) == 60 and len(info.tags) == 60
        assert len(vault.backend.metric_history(run.id, "m")) == 60
        with pytest.raises(ConflictError):
            vault.backend.log_params(run.id, {"p0_0": 99})
        run.end()


# -- lost connections: retried, exactly once -----------------------------------------------------------------
def _kill_connections(admin: Any, application_name: str) -> int:
    rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                         [application_name]).fetchall()
    return sum(1 for (ok,) in rows if ok)


def test_killed_connections_while_logging_lose_and_duplicate_nothing(uri: str, admin: Any) -> None:
    n = 6000
    with labvault.open(uri, flush_interval=0.05) as vault:
        backend = vault.backend
        run = vault.experiment("kills").start_run(params={"a": 1})
        stop = threading.Event()
        kills: list[int] = []

        def killer() -> None:
            rng = random.Random(7)
            while not stop.is_set():
                kills.append(_kill_connections(admin, backend.application_name))  # type: ignore[attr-defined]
                stop.wait(rng.uniform(0.02, 0.08))

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            for i in range(n):
                run.log_metric("x", float(i), step=i)
                run.log_metric("y", -float(i), step=i)
                if i % 40 == 39:
                    run.flush()  # in this thread: a failure would raise here
                if i % 1000 == 999:
                    run.set_tag("progress", str(i))
                    run.log_params({f"p{i}": i})
        finally:
            stop.set()
            thread.join(10)
        run.end()
        assert sum(kills) >= 20, f"only {sum(kills)} connections were killed"
    with labvault.open(uri) as vault:
        got = vault.get_run(run.id)
        for key, sign in (("x", 1.0), ("y", -1.0)):
            hist = got.metric_history(key)
            np.testing.assert_array_equal(hist.steps, np.arange(n))  # every point once, in order
            np.testing.assert_array_equal(hist.values, sign * np.arange(n, dtype=np.float64))
        assert got.metrics == {"x": n - 1.0, "y": 1.0 - n}
        assert got.status == "finished" and got.tags == {"progress": str(n - 1)}
        assert len(got.params) == 1 + n // 1000


def test_commit_with_unknown_outcome_is_not_repeated(uri: str) -> None:
    """The connection dies right after the server committed: the retry finds the write and stops."""
    import psycopg

    with labvault.open(uri) as vault:
        backend = vault.backend
        exp = vault.experiment("unknown")
        dialect = backend._engines()[0].dialect  # type: ignore[attr-defined]
        original = dialect.do_commit
        armed = {"n": 0}

        def commit_then_lose_the_connection(dbapi_conn: Any) -> None:
            original(dbapi_conn)
            if armed["n"]:
                armed["n"] -= 1
                dbapi_conn.dbapi_connection.close()  # the driver's connection under the pool's proxy
                raise psycopg.OperationalError("the connection is lost")

        dialect.do_commit = commit_then_lose_the_connection
        try:
            armed["n"] = 1
            run = exp.start_run()
            armed["n"] = 1
            backend.log_metrics(run.id, [_series("m", [1.0, 2.0, 3.0])])
            armed["n"] = 1
            run.log_artifact("a.txt", b"abc")
            armed["n"] = 1
            vault.delete_experiment("unknown")
            assert armed["n"] == 0
        finally:
            dialect.do_commit = original
        with pytest.raises(NotFoundError):
            vault.get_run(run.id)
        with vault.experiment("unknown").start_run() as again:
            pass
        armed["n"] = 0
    with labvault.open(uri) as vault:
        assert again.number == 1
        exp2 = vault.experiment("unknown2")
        dialect = vault.backend._engines()[0].dialect  # type: ignore[attr-defined]
        original = dialect.do_commit
        dialect.do_commit = commit_then_lose_the_connection
        try:
            armed["n"] = 1
            run = exp2.start_run()
            armed["n"] = 1
            vault.backend.log_metrics(run.id, [_series("m", [1.0, 2.0, 3.0])])
        finally:
            dialect.do_commit = original
        assert [r.number for r in exp2.runs()] == [1]  # the run was created once
        assert vault.get_run(run.id).metric_history("m").values.tolist() == [1.0, 2.0, 3.0]  # stored once


# -- change feed ---------------------------------------------------------------------------------------------
def test_feeds_of_other_schemas_stay_silent_and_big_events_are_trimmed(uri: str) -> None:
    other = uri.rsplit("=", 1)[0] + f"=t_{secrets.token_hex(6)}"
    with labvault.open(uri) as vault, labvault.open(other) as neighbour:
        with vault.watch() as mine, neighbour.watch() as theirs:
            run = vault.experiment("loud").start_run()
            run.end("failed", error="x" * 20_000)  # far beyond NOTIFY's 8000 bytes
            events = []
            while (event := mine.get(timeout=2)) is not None:
                events.append(event)
                if event.kind == "run.failed":
                    break
            assert [e.kind for e in events] == ["experiment.created", "run.created", "run.failed"]
            assert events[-1].data == {"truncated": True} and events[-1].run_id == run.id
            assert theirs.get(timeout=0.3) is None
        assert mine.get(timeout=0.1) is None
        time.sleep(0.5)
        app = vault.backend.application_name  # type: ignore[attr-defined]
        listening = _db_query(uri, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                                   "AND query LIKE 'LISTEN%%'", app)
        assert listening == [(0,)]  # the closed feed's connection is gone


def test_listener_survives_a_killed_connection(uri: str, admin: Any) -> None:
    with labvault.open(uri) as vault, vault.watch() as feed:
        vault.experiment("before")
        assert feed.get(timeout=5) is not None
        _kill_connections(admin, vault.backend.application_name)  # type: ignore[attr-defined]
        time.sleep(1.5)  # the listener reconnects
        vault.experiment("after")
        event = feed.get(timeout=10)
        assert event is not None and event.kind == "experiment.created" and event.data["name"] == "after"


# -- artifacts in the database ---------------------------------------------------------------------------
def test_blobs_are_chunked_and_streamed(uri: str) -> None:
    with labvault.open(uri) as vault:
        store = vault.backend.blobs
        assert isinstance(store, SQLBlobStore)
        payload = np.random.default_rng(3).bytes(2 * (1 << 20) + 1000)
        digest, size = store.put_content(payload)
        assert store.put_content(payload) == (digest, size)
        schema = _schema(uri)
        assert _db_query(uri, f"SELECT chunks, size FROM {schema}.blobs") == [(3, size)]
        assert _db_query(uri, f"SELECT idx, length(data) FROM {schema}.blob_chunks ORDER BY idx") == [
            (0, 1 << 20), (1, 1 << 20), (2, 1000)]
        statements: list[str] = []
        engine = vault.backend._engines()[0]  # type: ignore[attr-defined]
        sa.event.listen(engine, "before_cursor_execute", lambda _c, _cur, stmt, *_a: statements.append(stmt))
        with store.open_content(digest) as fh:
            assert fh.read(5) == payload[:5]
            assert len(statements) == 1  # the row and the first chunk in one query
            assert fh.read() == payload[5:]
        assert len([s for s in statements if "blob_chunks" in s]) == 3  # then one query per chunk
        with vault.experiment("a").start_run() as run:
            run.log_artifact("small.txt", b"tiny")
        assert run.get_artifact("small.txt") == b"tiny"


def test_a_blob_being_uploaded_is_invisible_until_complete(uri: str) -> None:
    with labvault.open(uri) as vault, labvault.open(uri) as reader:
        store = vault.backend.blobs
        proceed, halfway = threading.Event(), threading.Event()

        class SlowSource:
            def __init__(self) -> None:
                self.parts = [b"a" * (1 << 20), b"b" * (1 << 20), b"c" * 10]

            def read(self, size: int = -1) -> bytes:
                if len(self.parts) == 1:
                    halfway.set()
                    proceed.wait(30)
                return self.parts.pop(0) if self.parts else b""

        result: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: result.update(out=store.put_content(SlowSource())))  # type: ignore[arg-type]
        thread.start()
        assert halfway.wait(30)
        assert reader.backend.blobs.list() == []  # two chunks are written, nothing is visible
        proceed.set()
        thread.join(30)
        digest, size = result["out"]
        assert size == 2 * (1 << 20) + 10
        assert reader.backend.blobs.get_content(digest)[-10:] == b"c" * 10

        class Broken:
            def __init__(self) -> None:
                self.calls = 0

            def read(self, size: int = -1) -> bytes:
                self.calls += 1
                if self.calls > 2:
                    raise OSError("disk gone")
                return b"z" * (1 << 20)

        with pytest.raises(OSError, match="disk gone"):
            store.put_content(Broken())  # type: ignore[arg-type]
        assert len(reader.backend.blobs.list()) == 1
        assert _db_query(uri, f"SELECT count(*) FROM {_schema(uri)}.blob_chunks") == [(3,)]


class TestPostgresBlobStore(BlobStoreTests):
    """The shared blob contract on ``SQLBlobStore`` in PostgreSQL (chunked ``bytea`` rows)."""

    @pytest.fixture
    def store(self, uri: str) -> Iterator[SQLBlobStore]:
        from labvault.store.sql.postgresql import PostgresBackend

        backend = PostgresBackend.from_uri(uri)
        yield SQLBlobStore(backend)
        backend.close()


def test_artifacts_elsewhere_when_given(uri: str) -> None:
    store = MemoryBlobStore()
    with labvault.open(uri, artifacts=store) as vault:
        assert vault.backend.blobs is store
        with vault.experiment("elsewhere").start_run() as run:
            info = run.log_artifact("f.bin", b"payload")
        assert store.get_content(info.digest) == b"payload"
    assert _db_query(uri, f"SELECT count(*) FROM {_schema(uri)}.blobs") == [(0,)]


# -- non-finite values and the query compiler against the memory oracle -----------------------------------
def test_nonfinite_latest_values(uri: str) -> None:
    with labvault.open(uri) as vault:
        with vault.experiment("inf").start_run() as run:
            run.log_metrics({"up": math.inf, "down": -math.inf, "nan": math.nan, "big": 1e308})
        got = vault.get_run(run.id).metrics
        assert got["up"] == math.inf and got["down"] == -math.inf and math.isnan(got["nan"])
        assert got["big"] == 1e308
        assert [r.id for r in vault.search_runs("inf", filter="metrics.up > 1e300")] == [run.id]
        assert vault.search_runs("inf", filter="metrics.nan IS NULL")[0].id == run.id


def _equivalence_strategies() -> tuple[Any, Any, Any, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_query_equivalence import FILTERS, ORDERS, RUN, check_agrees_with_memory
    finally:
        sys.path.pop(0)
    return RUN, FILTERS, ORDERS, check_agrees_with_memory


_RUN, _FILTERS, _ORDERS, check_agrees_with_memory = _equivalence_strategies()


@pytest.fixture(scope="module")
def equivalence_vault(database: str) -> Iterator[Any]:
    """The store searched by its run index, and a second handle on it that searches in SQL."""
    with labvault.open(f"{database}?schema=equivalence") as vault, \
            labvault.open(f"{database}?schema=equivalence") as sql_only:
        sql_only.backend._index = None
        yield vault, sql_only


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(_RUN, min_size=1, max_size=6), filters=st.lists(_FILTERS, min_size=1, max_size=4),
       orders=st.lists(_ORDERS, min_size=1, max_size=2))
def test_memory_and_postgres_agree(equivalence_vault: Any, runs: list[dict[str, Any]], filters: list[str],
                                   orders: list[list[str]]) -> None:
    indexed, sql_only = equivalence_vault
    check_agrees_with_memory("postgres", indexed, sql_only, runs, filters, orders)
