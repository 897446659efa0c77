"""SQLite-specific behaviour of ``labvault.store.sql`` (shared semantics: the conformance suite)."""

from __future__ import annotations

import io
import json
import math
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

import labvault
from labvault import query
from labvault.blobs.local import FileBlobStore
from labvault.blobs.memory import MemoryBlobStore
from labvault.blobs.sql import SQLBlobStore
from labvault.blobs.tiered import SMALL_BLOB_LIMIT, TieredBlobStore
from labvault.domain import MetricSeries
from labvault.errors import (
    BackendUnavailableError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    NotFoundError,
    UnsupportedOperationError,
)
from labvault.store.sql import migrations as sql
from labvault.store.sql.backend import SQLBackend
from labvault.store.sql.schema import SCHEMA_VERSION, SEGMENT_POINTS, schema_metadata


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def backend(db: Path) -> Iterator[SQLBackend]:
    b = SQLBackend.from_uri(f"sqlite:///{db}")
    yield b
    b.close()


def _raw(db: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(query, args).fetchall()
    finally:
        con.close()


def _series(key: str, values: list[float], first_step: int = 0) -> MetricSeries:
    n = len(values)
    return MetricSeries(key, np.arange(first_step, first_step + n, dtype=np.int64),
                        np.asarray(values, dtype=np.float64), np.full(n, 1000.0))


# -- URIs, options, construction ----------------------------------------------------------------------------
def test_construction_does_no_io_and_first_use_creates_the_schema(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "er" / "lv.db"
    b = SQLBackend.from_uri(f"sqlite:///{db}")
    assert not (tmp_path / "deep").exists()
    assert b.path == db
    assert b.list_experiments() == []
    assert db.is_file()
    names = {r[0] for r in _raw(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meta", "experiments", "runs", "run_params", "run_tags", "run_results", "metric_segments",
            "metric_latest", "artifacts"} <= names
    assert _raw(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert _raw(db, "PRAGMA journal_mode") == [("wal",)]
    assert b.schema_version() == SCHEMA_VERSION
    b.close()
    b.close()  # twice is fine


def test_relative_uri_and_sibling_blob_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    b = SQLBackend.from_uri("sqlite:///labvault-data/labvault.db")
    assert b.path == Path("labvault-data/labvault.db")
    blobs = b.blobs
    assert isinstance(blobs, TieredBlobStore) and isinstance(blobs.small, SQLBlobStore)
    assert isinstance(blobs.large, FileBlobStore) and blobs.large.root == Path("labvault-data/labvault-blobs")
    b.ensure_experiment("e", "default")
    assert (tmp_path / "labvault-data" / "labvault.db").is_file()
    assert not (tmp_path / "labvault-data" / "labvault-blobs").exists()  # created by the first large blob
    b.close()
    store = MemoryBlobStore()
    assert SQLBackend.from_uri("sqlite:///x.db", artifacts=store).blobs is store


def test_pragmas_on_every_connection(backend: SQLBackend) -> None:
    backend.list_experiments()
    engine, _ = backend._engines()
    with engine.connect() as conn:
        got = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
               for name in ("journal_mode", "busy_timeout", "synchronous", "foreign_keys")}
    assert got == {"journal_mode": "wal", "busy_timeout": 30_000, "synchronous": 1, "foreign_keys": 1}


@pytest.mark.parametrize("uri", ["sqlite://", "sqlite:///", "sqlite://host/x.db", "sqlite:///:memory:",
                                 "file:///x.db", "sqlite:///dir/", "sqlite:///a\x00b.db"])
def test_bad_uris_rejected(uri: str) -> None:
    with pytest.raises(InvalidArgumentError):
        SQLBackend.from_uri(uri)


def test_options(db: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="bogus") as info:
        SQLBackend.from_uri(f"sqlite:///{db}", bogus=1, busy_timeout=3)
    assert "busy_timeout" in str(info.value)  # the message lists what is known
    with pytest.raises(InvalidArgumentError, match="token"):
        labvault.open(f"sqlite:///{db}", token="secret")
    for bad in (-1, "soon", True, math.inf):
        with pytest.raises(InvalidArgumentError, match="busy_timeout"):
            SQLBackend.from_uri(f"sqlite:///{db}", busy_timeout=bad)
    assert SQLBackend.from_uri(f"sqlite:///{db}", busy_timeout=2).busy_timeout == 2.0
    assert SQLBackend.from_uri(f"sqlite:///{db}?busy_timeout=0.5").busy_timeout == 0.5
    with pytest.raises(InvalidArgumentError, match="nope"):
        SQLBackend.from_uri(f"sqlite:///{db}?nope=1")
    assert not db.exists()


def test_config_schema(db: Path) -> None:
    with labvault.open(config={"backend": "sqlite", "uri": f"sqlite:///{db}", "busy_timeout": 5}) as vault:
        assert isinstance(vault.backend, SQLBackend) and vault.backend.busy_timeout == 5.0
    with pytest.raises(InvalidArgumentError):
        labvault.open(config={"backend": "sqlite", "uri": f"sqlite:///{db}", "extra": 1})
    with pytest.raises(InvalidArgumentError):
        labvault.open(config={"backend": "sqlite", "uri": "postgresql://x/y"})
    with pytest.raises(InvalidArgumentError):
        labvault.open(config={"backend": "sqlite"})


# -- storage layout -----------------------------------------------------------------------------------------
def test_params_typed_columns(backend: SQLBackend, db: Path) -> None:
    exp = backend.ensure_experiment("e", "default")
    params = {"i": 3, "f": 2.5, "s": "adam", "b": True, "n": None, "l": [1, "a"], "d": {"z": 1, "a": [2]}}
    run = backend.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params=params, tags={})
    rows = {k: (num, text) for k, num, text in
            _raw(db, "SELECT key, value_num, value_text FROM run_params WHERE run_id = ?", run.id)}
    assert rows == {"i": (3.0, None), "f": (2.5, None), "s": (None, "adam"), "b": (None, "true"),
                    "n": (None, None), "l": (None, '[1,"a"]'), "d": (None, '{"a":[2],"z":1}')}
    assert backend.get_run(run.id).params == params


def test_params_conflict_writes_nothing(backend: SQLBackend, db: Path) -> None:
    exp = backend.ensure_experiment("e", "default")
    run = backend.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={"a": 1}, tags={})
    with pytest.raises(ConflictError, match="'a'"):
        backend.log_params(run.id, {"new": 1, "a": 2})
    assert backend.get_run(run.id).params == {"a": 1}
    with pytest.raises(ConflictError):
        backend.log_params(run.id, {"a": 1.5})
    backend.log_params(run.id, {"a": 1.0, "b": 2})  # 1 == 1.0: the memory backend's rule
    assert backend.get_run(run.id).params == {"a": 1, "b": 2}


def test_missing_entities(backend: SQLBackend) -> None:
    exp = backend.ensure_experiment("e", "default")
    missing = "0" * 32
    with pytest.raises(NotFoundError, match="experiment"):
        backend.create_run(missing, name=None, parent_id=None, start_time=1.0, params={}, tags={})
    with pytest.raises(NotFoundError, match="parent"):
        backend.create_run(exp.id, name=None, parent_id=missing, start_time=1.0, params={}, tags={})
    for call in (lambda: backend.get_run(missing), lambda: backend.update_run(missing, status="finished"),
                 lambda: backend.log_params(missing, {"a": 1}), lambda: backend.set_tags(missing, {"a": 1}),
                 lambda: backend.log_results(missing, {"a": 1}),
                 lambda: backend.log_metrics(missing, [_series("m", [1.0])]),
                 lambda: backend.metric_history(missing, "m"), lambda: backend.list_artifacts(missing),
                 lambda: backend.delete_experiment(missing)):
        with pytest.raises(NotFoundError):
            call()
    # Nothing was numbered by the failed creations.
    run = backend.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
    assert run.number == 1


def test_metric_segments_and_latest(backend: SQLBackend, db: Path) -> None:
    exp = backend.ensure_experiment("e", "default")
    run = backend.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
    n = 2 * SEGMENT_POINTS + 10
    big = MetricSeries("big", np.arange(n, dtype=np.int64), np.arange(n, dtype=np.float64) / 2,
                       np.linspace(0, 1, n))
    backend.log_metrics(run.id, [big, _series("loss", [0.5, 0.25])])
    backend.log_metrics(run.id, [_series("loss", [0.3, math.nan], first_step=2), _series("acc", [0.1])])
    segs = _raw(db, "SELECT key, seq, n FROM metric_segments WHERE run_id = ? ORDER BY key, seq", run.id)
    assert segs == [("acc", 0, 1), ("big", 0, SEGMENT_POINTS), ("big", 1, SEGMENT_POINTS), ("big", 2, 10),
                    ("loss", 0, 2), ("loss", 1, 2)]
    hist = backend.metric_history(run.id, "big")
    np.testing.assert_array_equal(hist.values, big.values)
    np.testing.assert_array_equal(hist.timestamps, big.timestamps)
    assert hist.steps.flags.writeable and hist.values.dtype == np.float64
    loss = backend.metric_history(run.id, "loss")
    assert loss.steps.tolist() == [0, 1, 2, 3] and loss.values[2] == 0.3 and math.isnan(loss.values[3])
    metrics = backend.get_run(run.id).metrics
    assert metrics["big"] == (n - 1) / 2 and metrics["acc"] == 0.1 and math.isnan(metrics["loss"])
    latest = _raw(db, "SELECT key, step, timestamp FROM metric_latest WHERE run_id = ? ORDER BY key", run.id)
    assert latest == [("acc", 0, 1000.0), ("big", n - 1, 1.0), ("loss", 3, 1000.0)]


def test_infinite_latest_metric_reads_back(backend: SQLBackend) -> None:
    exp = backend.ensure_experiment("e", "default")
    run = backend.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
    backend.log_metrics(run.id, [_series("up", [math.inf]), _series("down", [-math.inf]),
                                 _series("big", [1e308])])
    assert backend.get_run(run.id).metrics == {"up": math.inf, "down": -math.inf, "big": 1e308}
    assert [r.id for r in backend.list_runs([exp.id])] == [run.id]


def test_million_point_history_reads_fast(backend: SQLBackend) -> None:
    exp = backend.ensure_experiment("e", "default")
    run = backend.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
    n = 1_000_000
    rng = np.random.default_rng(0)
    series = MetricSeries("x", np.arange(n, dtype=np.int64), rng.standard_normal(n),
                          1.7e9 + np.arange(n, dtype=np.float64) * 1e-3)
    backend.log_metrics(run.id, [series])
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        hist = backend.metric_history(run.id, "x")
        best = min(best, time.perf_counter() - start)
    np.testing.assert_array_equal(hist.steps, series.steps)
    np.testing.assert_array_equal(hist.values, series.values)
    np.testing.assert_array_equal(hist.timestamps, series.timestamps)
    assert best < 0.1, f"reading 1,000,000 points took {best * 1000:.0f} ms"


def test_list_runs_uses_a_constant_number_of_queries(backend: SQLBackend) -> None:
    exp = backend.ensure_experiment("e", "default")

    def make(count: int) -> None:
        for i in range(count):
            run = backend.create_run(exp.id, name=None, parent_id=None, start_time=float(i),
                                     params={"i": i, "s": "x"}, tags={"t": "v"})
            backend.log_results(run.id, {"r": i})
            backend.log_metrics(run.id, [_series("m", [float(i)])])

    statements: list[str] = []
    engine, _ = backend._engines()
    sa.event.listen(engine, "before_cursor_execute",
                    lambda _c, _cur, stmt, *_a: statements.append(stmt))
    counts = []
    for batch in (3, 30):
        make(batch)
        statements.clear()
        runs = backend.list_runs([exp.id])
        counts.append(len(statements))
    assert len(runs) == 33 and counts[0] == counts[1] <= 8
    assert all(r.params["s"] == "x" and r.tags == {"t": "v"} and r.metrics["m"] == r.params["i"]
               and r.results == {"r": r.params["i"]} for r in runs)


def test_run_index_follows_writes_of_other_connections(db: Path) -> None:
    """Searches answer from the in-process run index; another backend object (its own connections and
    index, as another process would have) sees every kind of change at its next search."""
    uri = f"sqlite:///{db}"
    writer, reader = SQLBackend.from_uri(uri), SQLBackend.from_uri(uri)
    try:
        check_index_follows_writes(writer, reader)
    finally:
        writer.close()
        reader.close()


def check_index_follows_writes(writer: Any, reader: Any) -> None:
    """Every kind of change ``writer`` makes is seen by ``reader``'s run index at its next search (shared
    with the PostgreSQL and Redis tests; any backend with a ``_index``)."""
    exp = writer.ensure_experiment("e", "default")
    first = writer.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={"lr": 0.1},
                              tags={})
    everything = query.parse(None)

    def search(text: str | None = None, order: str | None = None) -> list[int]:
        return [r.number for r in reader.search_runs([exp.id], query.parse(text),
                                                     query.parse_order_by(order), None, 0)]

    assert search() == [1] and reader._index is not None and reader._index.has(exp.id)
    second = writer.create_run(exp.id, name="b", parent_id=first.id, start_time=2.0,
                               params={"lr": 0.01}, tags={"team": "a"})
    assert search() == [1, 2]
    writer.log_metrics(first.id, [_series("acc", [0.5, 0.9])])
    assert search("metrics.acc > 0.8") == [1]
    writer.set_tags(first.id, {"team": "b"})
    writer.log_params(first.id, {"opt": "adam"})
    writer.log_results(second.id, {"score": 3})
    writer.update_run(second.id, status="finished", end_time=5.0)
    assert search("tags.team = 'b' and params.opt = 'adam'") == [1]
    assert search("status = 'finished'") == [2]
    assert search(None, "params.lr") == [2, 1]
    (info,) = reader.search_runs([exp.id], query.parse("number = 2"), [], None, 0)
    assert info.results == {"score": 3} and info.end_time == 5.0 and info.name == "b"
    # What a caller gets is a copy: changing it changes nothing stored or indexed.
    info.params["lr"] = 99
    info.tags.clear()
    assert search("params.lr = 0.01 and tags.team = 'a'") == [2]
    # Deleting the experiment whose run changed last must not let a change number be given out
    # twice: a later change elsewhere is still seen.
    other = writer.ensure_experiment("other", "default")
    third = writer.create_run(other.id, name=None, parent_id=None, start_time=3.0, params={}, tags={})
    assert [r.number for r in reader.search_runs([other.id], everything, [], None, 0)] == [1]
    writer.log_metrics(first.id, [_series("acc", [0.1])])
    writer.log_results(third.id, {"late": 1})
    writer.delete_experiment(other.id)
    assert reader.search_runs([other.id], everything, [], None, 0) == []
    assert search("metrics.acc > 0.8") == []
    writer.set_tags(second.id, {"team": "c"})
    assert search("tags.team = 'c'") == [2]
    writer.delete_experiment(exp.id)
    assert reader.search_runs([exp.id], everything, [], None, 0) == []


def test_run_index_and_sql_search_agree_across_experiments(db: Path) -> None:
    uri = f"sqlite:///{db}"
    indexed, plain = SQLBackend.from_uri(uri), SQLBackend.from_uri(uri)
    try:
        check_index_agrees_with_sql(indexed, plain)
    finally:
        indexed.close()
        plain.close()


def check_index_agrees_with_sql(indexed: Any, plain: Any) -> None:
    """Searches from ``indexed``'s run index and ``plain``'s own path (its index switched off) agree."""
    plain._index = None
    ids = []
    for e in range(3):
        exp = indexed.ensure_experiment(f"e{e}", "default")
        ids.append(exp.id)
        for i in range(20):
            run = indexed.create_run(exp.id, name=f"r{i % 4}", parent_id=None, start_time=float(i),
                                     params={"i": i, "mixed": i if i % 3 else f"s{i}"},
                                     tags={"k": str(i % 5)})
            if i % 2:
                indexed.log_metrics(run.id, [_series("m", [float((i * 7) % 11)])])
    for text, order in [(None, None), ("metrics.m > 3", "metrics.m desc"), ("params.mixed >= 5", "name"),
                        ("tags.k in ('1', '2') or metrics.m is null", "params.mixed"),
                        ("name like 'r1%'", "tags.k desc, metrics.m")]:
        expr, keys = query.parse(text), query.parse_order_by(order)
        for limit, offset in [(None, 0), (7, 3)]:
            want = [r.id for r in plain.search_runs(ids, expr, keys, limit, offset)]
            assert [r.id for r in indexed.search_runs(ids, expr, keys, limit, offset)] == want, text


def test_delete_experiment_cascades(backend: SQLBackend, db: Path) -> None:
    from labvault.domain import ArtifactInfo

    doomed = backend.ensure_experiment("doomed", "default")
    kept = backend.ensure_experiment("kept", "default")
    for exp in (doomed, kept):
        run = backend.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={"a": 1},
                                 tags={"t": "v"})
        backend.log_results(run.id, {"r": 1})
        backend.log_metrics(run.id, [_series("m", [1.0])])
        backend.add_artifact(run.id, ArtifactInfo("f.txt", 1, "a" * 64, 1.0))
    backend.delete_experiment(doomed.id)
    for table in ("runs", "run_params", "run_tags", "run_results", "metric_segments", "metric_latest",
                  "artifacts"):
        assert _raw(db, f"SELECT count(*) FROM {table}") == [(1,)], table
    assert [e.name for e in backend.list_experiments()] == ["kept"]


# -- schema versions and migrations -------------------------------------------------------------------------
def _build_v1_store(db: Path) -> tuple[str, str]:
    """A store as labvault with schema version 1 wrote it (no metric_latest); return (run id, other id)."""
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        schema_metadata(1).create_all(conn)
        conn.execute(sa.text("INSERT INTO meta (key, value) VALUES ('schema_version', '1')"))
        conn.execute(sa.text("INSERT INTO experiments VALUES ('e1', 'old', 'default', 1.0, 2)"))
        for rid, number in (("r1", 1), ("r2", 2)):
            conn.execute(sa.text("INSERT INTO runs (id, experiment_id, number, status, start_time, "
                                 "params_json) VALUES (:id, 'e1', :n, 'finished', 1.0, :p)"),
                         {"id": rid, "n": number, "p": '{"lr":0.1}' if rid == "r1" else "{}"})
        conn.execute(sa.text("INSERT INTO run_params VALUES ('r1', 'lr', '0.1', 0.1, NULL)"))
        segs = [("r1", "loss", 0, [0.9, 0.5]), ("r1", "loss", 1, [0.4, 0.3, 0.2]), ("r1", "acc", 0, [0.7]),
                ("r2", "loss", 0, [math.nan])]
        for rid, key, seq, vals in segs:
            n = len(vals)
            conn.execute(
                sa.text('INSERT INTO metric_segments (run_id, key, seq, n, steps, "values", timestamps) '
                        "VALUES (:r, :k, :s, :n, :st, :v, :t)"),
                {"r": rid, "k": key, "s": seq, "n": n,
                 "st": np.arange(seq * 10, seq * 10 + n, dtype="<i8").tobytes(),
                 "v": np.asarray(vals, dtype="<f8").tobytes(), "t": np.full(n, 5.0, dtype="<f8").tobytes()},
            )
    engine.dispose()
    return "r1", "r2"


def _schema_of(db: Path) -> list[tuple[Any, ...]]:
    tables = [r[0] for r in _raw(db, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    out: list[tuple[Any, ...]] = []
    for t in tables:
        out.append((t, _raw(db, f"PRAGMA table_info({t})"), _raw(db, f"PRAGMA foreign_key_list({t})"),
                    sorted(r[1:3] for r in _raw(db, f"PRAGMA index_list({t})"))))
    return out


def test_old_store_refused_then_upgraded(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    uri = f"sqlite:///{db}"
    r1, r2 = _build_v1_store(db)
    with pytest.raises(UnsupportedOperationError) as info:
        labvault.open(uri).experiments()
    assert str(info.value) == (
        f"store at {db} has schema version 1, this labvault needs {SCHEMA_VERSION}: "
        f"run 'labvault db upgrade --uri {uri}'"
    )
    assert _raw(db, "SELECT value FROM meta") == [("1",)]  # refusing changed nothing
    assert sql.upgrade(uri) == (1, SCHEMA_VERSION)
    assert sql.upgrade(uri) == (SCHEMA_VERSION, SCHEMA_VERSION)
    with labvault.open(uri) as vault:
        run = vault.get_run(r1)
        assert run.params == {"lr": 0.1}
        assert run.metrics == {"loss": 0.2, "acc": 0.7}
        hist = run.metric_history("loss")
        assert hist.values.tolist() == [0.9, 0.5, 0.4, 0.3, 0.2] and hist.steps.tolist() == [0, 1, 10, 11, 12]
        assert math.isnan(vault.get_run(r2).metrics["loss"])
        with vault.experiment("old").start_run() as new:  # the counter survived
            new.log_metric("loss", 1.0)
        assert new.number == 3 and new.metrics == {"loss": 1.0}
    # An upgraded store has exactly the layout of a fresh one.
    fresh = tmp_path / "fresh.db"
    SQLBackend.from_uri(f"sqlite:///{fresh}").list_experiments()
    assert _schema_of(db) == _schema_of(fresh)


def test_version_3_store_upgraded_to_4_keeps_its_blob_folder(tmp_path: Path) -> None:
    """A store written before blobs moved into the database: its folder blobs stay readable."""
    db = tmp_path / "v3.db"
    uri = f"sqlite:///{db}"
    folder = FileBlobStore(tmp_path / "v3-blobs")
    digest, size = folder.put_content(b"old small artifact")
    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        schema_metadata(3).create_all(conn)
        conn.execute(sa.text("INSERT INTO meta (key, value) VALUES ('schema_version', '3')"))
        conn.execute(sa.text("INSERT INTO experiments VALUES ('e1', 'old', 'default', 1.0, 1)"))
        conn.execute(sa.text("INSERT INTO runs (id, experiment_id, number, status, start_time) "
                             "VALUES ('r1', 'e1', 1, 'finished', 1.0)"))
        conn.execute(sa.text("INSERT INTO artifacts VALUES ('r1', 'a.txt', :d, :s, 1.0)"),
                     {"d": digest, "s": size})
        conn.execute(sa.text('INSERT INTO metric_segments (run_id, key, seq, n, steps, "values", timestamps) '
                             "VALUES ('r1', 'm', 0, 1, :st, :v, :t)"),
                     {"st": np.zeros(1, "<i8").tobytes(), "v": np.ones(1, "<f8").tobytes(),
                      "t": np.ones(1, "<f8").tobytes()})
    engine.dispose()
    with pytest.raises(UnsupportedOperationError, match="schema version 3"):
        labvault.open(uri).experiments()
    assert sql.upgrade(uri) == (3, SCHEMA_VERSION)
    names = {r[0] for r in _raw(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"blobs", "blob_chunks"} <= names
    with labvault.open(uri) as vault:
        run = vault.get_run("r1")
        assert run.get_artifact("a.txt") == b"old small artifact"  # found in the folder tier
        assert run.metric_history("m").values.tolist() == [1.0]
        with vault.experiment("old").start_run() as new:
            new.log_artifact("b.txt", b"new small artifact")
            new.log_metric("m", 2.0)
        assert new.number == 2 and new.get_artifact("b.txt") == b"new small artifact"
    assert _raw(db, "SELECT count(*) FROM blobs") == [(1,)]  # the new small blob went into the database
    fresh = tmp_path / "fresh.db"
    SQLBackend.from_uri(f"sqlite:///{fresh}").list_experiments()
    assert _schema_of(db) == _schema_of(fresh)


def test_newer_store_refused(db: Path) -> None:
    SQLBackend.from_uri(f"sqlite:///{db}").list_experiments()
    _raw_exec(db, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(UnsupportedOperationError, match="schema version 99, newer"):
        SQLBackend.from_uri(f"sqlite:///{db}").list_experiments()
    with pytest.raises(UnsupportedOperationError, match="99"):
        sql.upgrade(f"sqlite:///{db}")


def test_upgrade_of_an_empty_store_creates_it(db: Path) -> None:
    assert sql.upgrade(f"sqlite:///{db}") == (0, SCHEMA_VERSION)
    assert SQLBackend.from_uri(f"sqlite:///{db}").schema_version() == SCHEMA_VERSION


def _raw_exec(db: Path, statement: str) -> None:
    con = sqlite3.connect(db)
    try:
        con.execute(statement)
        con.commit()
    finally:
        con.close()


_BARRIER_WAIT = (
    "import os, sys, time\n"
    "deadline = time.time() + 30\n"
    "while not os.path.exists(sys.argv[2]) and time.time() < deadline: time.sleep(0.002)\n"
)


def _race(script: str, args: list[str], count: int, barrier: Path) -> list[Any]:
    procs = [subprocess.Popen([sys.executable, "-c", _BARRIER_WAIT + script, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(count)]
    time.sleep(1.0)  # let every interpreter start and wait at the barrier
    barrier.touch()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout))
    return out


@pytest.mark.multiprocess
def test_concurrent_upgrades(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    _build_v1_store(db)
    script = "from labvault.store.sql import migrations as sql\nprint(list(sql.upgrade(sys.argv[1])))\n"
    results = _race(script, [f"sqlite:///{db}", str(tmp_path / "go")], 4, tmp_path / "go")
    assert sorted(map(tuple, results)) == [(1, SCHEMA_VERSION)] + [(SCHEMA_VERSION, SCHEMA_VERSION)] * 3
    assert _raw(db, "SELECT count(*) FROM metric_latest") == [(3,)]


@pytest.mark.multiprocess
def test_eight_processes_open_a_fresh_file_at_once(tmp_path: Path) -> None:
    db = tmp_path / "new" / "race.db"
    script = (
        "import json, labvault\n"
        "with labvault.open(sys.argv[1]) as vault:\n"
        "    exp = vault.experiment('shared')\n"
        "    nums = []\n"
        "    for i in range(5):\n"
        "        with exp.start_run(params={'pid': os.getpid(), 'i': i}, tags={'t': 'x'}) as run:\n"
        "            run.log_metric('m', float(i))\n"
        "            nums.append(run.number)\n"
        "print(json.dumps(nums))\n"
    )
    results = _race(script, [f"sqlite:///{db}", str(tmp_path / "go")], 8, tmp_path / "go")
    assert sorted(n for nums in results for n in nums) == list(range(1, 41))
    with labvault.open(f"sqlite:///{db}") as vault:
        assert [e.name for e in vault.experiments()] == ["shared"]
        runs = vault.backend.list_runs([vault.experiment("shared").id])
        assert sorted(r.number for r in runs) == list(range(1, 41))
        assert all(r.status == "finished" and r.metrics == {"m": float(r.params["i"])} for r in runs)


# -- blobs: small ones inside the database, large ones in the folder -------------------------------------
def test_small_artifacts_live_in_the_database(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    folder = tmp_path / "s-blobs"
    with labvault.open(f"sqlite:///{db}") as vault:
        blobs = vault.backend.blobs
        assert isinstance(blobs, TieredBlobStore)
        with vault.experiment("e").start_run() as run:
            small = run.log_artifact("small.bin", b"s" * SMALL_BLOB_LIMIT)
            big = run.log_artifact("big.bin", b"b" * (SMALL_BLOB_LIMIT + 1))
            src = tmp_path / "src.txt"
            src.write_bytes(b"from a path")
            run.log_artifact("path.txt", src)
            run.log_artifact("file.txt", io.BytesIO(b"from a file object"))
            run.log_artifact("again.bin", b"s" * SMALL_BLOB_LIMIT)  # same content: stored once
        assert run.get_artifact("small.bin") == b"s" * SMALL_BLOB_LIMIT
        assert run.get_artifact("big.bin") == b"b" * (SMALL_BLOB_LIMIT + 1)
        assert run.get_artifact("path.txt") == b"from a path"
        with run.open_artifact("file.txt") as fh:
            assert fh.read() == b"from a file object"
        out = run.download_artifact("small.bin", tmp_path / "out.bin")
        assert out.read_bytes() == b"s" * SMALL_BLOB_LIMIT
        keys = blobs.list("sha256")
        assert len(keys) == 4
        assert blobs.digest_key(small.digest) in keys and blobs.digest_key(big.digest) in keys
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert [p.name for p in files] == [big.digest]  # only the large blob became a file
    assert _raw(db, "SELECT count(*), sum(size) FROM blobs") == [(3, SMALL_BLOB_LIMIT + 11 + 18)]


def test_tiered_keyed_writes_move_between_tiers(backend: SQLBackend) -> None:
    blobs = backend.blobs
    assert isinstance(blobs, TieredBlobStore)
    blobs.put("k/x", b"small")
    assert blobs.small.exists("k/x") and not blobs.large.exists("k/x")
    blobs.put("k/x", b"L" * (SMALL_BLOB_LIMIT + 5))  # replaced by a large value: only the folder has it
    assert not blobs.small.exists("k/x") and blobs.get("k/x") == b"L" * (SMALL_BLOB_LIMIT + 5)
    blobs.put("k/x", b"small again")
    assert blobs.get("k/x") == b"small again" and not blobs.large.exists("k/x")
    blobs.put("k/y", b"")
    assert blobs.get("k/y") == b"" and blobs.list("k/") == ["k/x", "k/y"]
    blobs.delete("k/x")
    blobs.delete("k/missing")
    assert blobs.list("k") == ["k/y"] and not blobs.exists("k/x")
    with pytest.raises(NotFoundError):
        blobs.get("k/x")


def test_corrupt_small_blob_detected(backend: SQLBackend, db: Path) -> None:
    digest, _ = backend.blobs.put_content(b"A" * 1000)
    _raw_exec(db, "UPDATE blob_chunks SET data = randomblob(1000)")
    with pytest.raises(CorruptDataError, match=digest):
        backend.blobs.get_content(digest)
    with pytest.raises(CorruptDataError), backend.blobs.open_content(digest) as fh:
        fh.read()


def test_sql_blob_store_chunks_and_streams(backend: SQLBackend, db: Path, tmp_path: Path) -> None:
    store = SQLBlobStore(backend)
    payload = np.random.default_rng(1).bytes(3 * (1 << 20) + 123)
    src = tmp_path / "p.bin"
    src.write_bytes(payload)
    digest, size = store.put_content(src)
    assert size == len(payload) and store.put_content(payload) == (digest, size)  # once
    assert _raw(db, "SELECT chunks, size FROM blobs") == [(4, len(payload))]
    assert _raw(db, "SELECT idx, length(data) FROM blob_chunks ORDER BY idx") == [
        (0, 1 << 20), (1, 1 << 20), (2, 1 << 20), (3, 123)]
    with store.open_content(digest) as fh:
        assert fh.read(10) == payload[:10] and fh.read() == payload[10:]
    assert store.get_content(digest) == payload


def test_partial_blob_is_never_visible(backend: SQLBackend, db: Path) -> None:
    store = SQLBlobStore(backend)

    def failing() -> Iterator[bytes]:
        yield b"x" * (1 << 20)
        yield b"y" * (1 << 20)
        raise OSError("the source broke")

    class Source(io.RawIOBase):
        def __init__(self) -> None:
            self.chunks = failing()

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            return next(self.chunks)

    with pytest.raises(OSError, match="broke"):
        store.put_content(Source())  # type: ignore[arg-type]
    with pytest.raises(OSError, match="broke"):
        store.put("some/key", Source())  # type: ignore[arg-type]
    assert store.list() == [] and not store.exists("some/key")
    assert _raw(db, "SELECT count(*) FROM blob_chunks") == [(0,)]  # rolled back with the upload


# -- driver errors ------------------------------------------------------------------------------------------
def test_not_a_database_is_corrupt_data(db: Path) -> None:
    db.write_bytes(b"this is certainly not an SQLite database file, just some text" * 100)
    with pytest.raises(CorruptDataError, match=str(db)) as info:
        SQLBackend.from_uri(f"sqlite:///{db}").list_experiments()
    assert isinstance(info.value.__cause__, sa.exc.DatabaseError)


def test_locked_database_is_unavailable(db: Path) -> None:
    b = SQLBackend.from_uri(f"sqlite:///{db}", busy_timeout=0.2)
    exp = b.ensure_experiment("e", "default")
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        start = time.monotonic()
        with pytest.raises(BackendUnavailableError, match="locked") as info:
            b.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
        assert 0.15 < time.monotonic() - start < 5
        assert str(db) in str(info.value) and isinstance(info.value.__cause__, sa.exc.OperationalError)
        assert [e.name for e in b.list_experiments()] == ["e"]  # WAL: readers are not blocked
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert b.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={}).number == 1
    b.close()


def test_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BackendUnavailableError, match="afile"):
        SQLBackend.from_uri(f"sqlite:///{tmp_path / 'afile' / 'db.sqlite'}").list_experiments()
    (tmp_path / "adir.db").mkdir()
    with pytest.raises(BackendUnavailableError, match="adir"):
        SQLBackend.from_uri(f"sqlite:///{tmp_path / 'adir.db'}").list_experiments()


def _child_creates_run(backend: SQLBackend, experiment_id: str) -> None:
    run = backend.create_run(experiment_id, name="child", parent_id=None, start_time=1.0, params={}, tags={})
    sys.exit(0 if run.number == 2 else 1)


@pytest.mark.multiprocess
def test_forked_child_gets_its_own_connections(backend: SQLBackend) -> None:
    import multiprocessing

    exp = backend.ensure_experiment("e", "default")
    backend.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
    proc = multiprocessing.get_context("fork").Process(target=_child_creates_run, args=(backend, exp.id))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    run = backend.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
    assert run.number == 3
