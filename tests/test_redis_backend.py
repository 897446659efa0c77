"""Redis-specific behaviour: URIs and options, the pool form, key isolation, pickling, chunked blobs,
exactly-once metric points across killed connections, unreachable servers and many writer processes."""

from __future__ import annotations

import contextlib
import io
import pickle
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_conformance_redis import REDIS_HOST, REDIS_PORT, START_REDIS, redis_available
from test_query_equivalence import FILTERS, ORDERS, RUN, check_agrees_with_memory
from test_sql_backend import check_index_agrees_with_sql, check_index_follows_writes

import labvault
from labvault import query
from labvault.errors import BackendUnavailableError, ConflictError, InvalidArgumentError, NotFoundError
from labvault.testing.suite_base import run_at_once, start_runs_worker

redis = pytest.importorskip("redis")

from labvault.blobs.redis import RedisBlobStore  # noqa: E402
from labvault.store.redis.backend import RedisBackend  # noqa: E402


def _prefix() -> str:
    return f"lvtest-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def server() -> None:
    from labvault.testing.plugin import require_service

    require_service("Redis", redis_available(), START_REDIS)


@pytest.fixture
def prefix(server: None) -> Iterator[str]:
    """A fresh key prefix; every key under it is deleted afterwards (and nothing else)."""
    value = _prefix()
    yield value
    backend = RedisBackend.from_uri(f"redis://{REDIS_HOST}:{REDIS_PORT}/0", prefix=value)
    try:
        backend.destroy()
    finally:
        backend.close()


@pytest.fixture
def uri(prefix: str) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix={prefix}"


@pytest.fixture
def raw(server: None) -> Iterator[Any]:
    """A plain redis-py client on the test server (for looking behind labvault's back)."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    yield client
    client.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- URIs and options (no server needed: construction does no I/O) -----------------------------------------
@pytest.mark.parametrize(
    ("uri", "where", "identity"),
    [
        ("redis://127.0.0.1:6379/0", "127.0.0.1:6379", "redis://127.0.0.1:6379/0?prefix=labvault:"),
        ("redis://localhost", "localhost:6379", "redis://localhost:6379/0?prefix=labvault:"),
        ("redis://:secret@db.example:7000/3?prefix=team-a:", "db.example:7000",
         "redis://db.example:7000/3?prefix=team-a:"),
        ("rediss://user:pw@db.example:6380/1?ssl_cert_reqs=none", "db.example:6380",
         "rediss://db.example:6380/1?prefix=labvault:"),
        ("unix:///var/run/redis.sock?db=2&prefix=v1:", "unix socket /var/run/redis.sock",
         "unix:///var/run/redis.sock?db=2&prefix=v1:"),
        ("redis://[::1]:6379/0", "[::1]:6379", "redis://[::1]:6379/0?prefix=labvault:"),
    ],
)
def test_uri_forms(uri: str, where: str, identity: str) -> None:
    backend = RedisBackend.from_uri(uri)
    assert backend._settings.where == where
    assert backend._settings.identity == identity
    assert backend.uri == uri
    assert "secret" not in repr(backend) and "pw" not in repr(backend)


def test_options_from_query_and_keywords() -> None:
    backend = RedisBackend.from_uri("redis://h:1/0?prefix=q:&chunk_size=4096&retries=0")
    assert (backend.prefix, backend._settings.chunk_size, backend._settings.retries) == ("q:", 4096, 0)
    vault = labvault.open("redis://h:1/0", prefix="kw:", socket_timeout=2)  # no I/O: nothing listens
    assert isinstance(vault.backend, RedisBackend) and vault.backend.prefix == "kw:"
    assert vault.backend._settings.pool_kwargs["socket_timeout"] == 2.0
    with pytest.raises(InvalidArgumentError, match="prefix"):
        RedisBackend.from_uri("redis://h/0?prefix=a:", prefix="b:")


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("redis://h/0?bogus=1", "bogus"),
        ("redis://h/0?prefix=a:&colour=red&size=2", "colour, size"),
        ("redis://h/0?prefix=", "prefix"),
        ("redis://h/0?prefix=abc", "'abc'"),
        ("redis://h/0?prefix=a*:", "'a*:'"),
        ("redis://h/0?prefix=a?:", "'a?:'"),
        ("redis://h/0?prefix=[ab]:", "'[ab]:'"),
        ("redis://h/0?prefix=a:b:", "'a:b:'"),
        (f"redis://h/0?prefix={'x' * 101}:", "xxxxxxxx"),
        ("redis://h/zero", "'/zero'"),
        ("redis://h:99999/0", "99999"),
        ("redis://h/0?db=2", "database 0 and db=2"),
        ("redis://h/0?chunk_size=12", "chunk_size"),
        ("redis://h/0?retries=-1", "retries"),
        ("redis://h/0?socket_timeout=soon", "socket_timeout"),
        ("redis://h/0?ssl_certfile=/c.pem", "rediss"),
        ("unix://relative/redis.sock", "'relative'"),
        ("unix://", "no socket path"),
        ("redis://h/0?prefix=a:&prefix=b:", "twice"),
        ("mysql://h/0", "mysql"),
    ],
)
def test_bad_uris_and_options(uri: str, named: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        RedisBackend.from_uri(uri)
    assert named in str(info.value)


def test_open_routes_schemes_and_configs() -> None:
    for uri in ("redis://h/0", "rediss://h/0", "unix:///tmp/r.sock"):
        assert isinstance(labvault.open(uri).backend, RedisBackend)
    vault = labvault.open(config={"backend": "redis", "uri": "redis://h/0", "prefix": "cfg:"})
    assert vault.backend.prefix == "cfg:"  # type: ignore[attr-defined]
    with pytest.raises(InvalidArgumentError, match="bogus"):
        labvault.open(config={"backend": "redis", "uri": "redis://h/0", "bogus": 1})


# -- pool form, equality, pickling ---------------------------------------------------------------------------
def test_connection_pool_form(prefix: str, uri: str) -> None:
    pool = redis.ConnectionPool(host=REDIS_HOST, port=REDIS_PORT, db=0)
    with labvault.open(pool, prefix=prefix) as vault:
        assert vault.backend == RedisBackend.from_uri(uri)
        with vault.experiment("pooled").start_run(params={"a": 1}) as run:
            run.log_metric("m", 2.0)
    with labvault.open(uri) as other:  # the same vault through a URI
        assert other.get_run(run.id).metrics == {"m": 2.0}
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0, decode_responses=True)
    with labvault.open(client, prefix=prefix) as vault:  # a client is accepted; replies stay bytes for us
        assert vault.get_run(run.id).params == {"a": 1}
    pool.disconnect()
    with pytest.raises(InvalidArgumentError, match="ConnectionPool"):
        RedisBackend.from_pool(object())
    with pytest.raises(InvalidArgumentError, match="socket_timeout"):
        RedisBackend.from_pool(pool, socket_timeout=1)


def test_pickle_and_equality(uri: str, prefix: str) -> None:
    backend = RedisBackend.from_uri(uri)
    exp = backend.ensure_experiment("pickled", "default")  # connected before pickling
    clone = pickle.loads(pickle.dumps(backend))
    assert clone == backend and hash(clone) == hash(backend) and clone is not backend
    assert [e.id for e in clone.list_experiments()] == [exp.id]
    assert backend != RedisBackend.from_uri(uri.replace(prefix, "other:"))
    assert backend == RedisBackend.from_uri(f"redis://{REDIS_HOST}:{REDIS_PORT}/0", prefix=prefix)
    assert len({backend, clone}) == 1
    pooled = RedisBackend.from_pool(redis.ConnectionPool(host=REDIS_HOST, port=REDIS_PORT), prefix=prefix)
    pooled_clone = pickle.loads(pickle.dumps(pooled))
    assert pooled_clone == backend and [e.id for e in pooled_clone.list_experiments()] == [exp.id]
    for b in (backend, clone, pooled, pooled_clone):
        b.close()


# -- key isolation -------------------------------------------------------------------------------------------
def test_destroy_removes_only_own_keys(uri: str, prefix: str, raw: Any) -> None:
    stem = prefix[:-1]
    foreign = [f"{stem}x:key", f"{stem}", f"{stem}-other:run:1", f"lvforeign-{uuid.uuid4().hex[:8]}:k"]
    try:
        for name in foreign:
            raw.set(name, b"keep me")
        with labvault.open(uri) as vault:
            with vault.experiment("e").start_run(params={"p": 1}) as run:
                run.log_metric("m", 1.0)
                run.log_artifact("a.bin", b"x" * 5000)
            mine = set(raw.scan_iter(match=f"{prefix}*"))
            assert len(mine) >= 8 and all(k.startswith(prefix.encode()) for k in mine)
            assert vault.backend.destroy() == len(mine)  # type: ignore[attr-defined]
        assert list(raw.scan_iter(match=f"{prefix}*")) == []
        assert all(raw.get(name) == b"keep me" for name in foreign)
    finally:
        raw.delete(*foreign)


# -- params and events ---------------------------------------------------------------------------------------
def test_param_conflict_names_stored_and_new_values(uri: str) -> None:
    with labvault.open(uri) as vault, vault.experiment("p").start_run(params={"lr": 0.1, "n": 1}) as run:
        run.log_params({"n": 1.0, "d": {"b": 1, "a": 2}})  # 1 and 1.0 are the same value: no conflict
        run.log_params({"d": {"a": 2, "b": 1}})  # the same object, keys in another order
        with pytest.raises(ConflictError) as info:
            run.log_params({"lr": 0.2, "fresh": 3})
        assert "'lr'" in str(info.value) and "0.1" in str(info.value) and "0.2" in str(info.value)
        assert run.params == {"lr": 0.1, "n": 1, "d": {"b": 1, "a": 2}}


def test_each_write_appends_exactly_one_event(uri: str, prefix: str, raw: Any) -> None:
    with labvault.open(uri) as vault:
        with vault.experiment("ev").start_run() as run:
            run.set_tag("t", "v")
            run.log_metric("m", 1.0)
            run.flush()
            run.log_params({"a": 1})
            run.log_result("r", 2)
            run.log_artifact("f.txt", b"hi")
        vault.experiment("ev")  # exists: no event
        vault.backend.update_run(run.id, heartbeat=time.time())  # heartbeats: no event
    import orjson

    kinds = [orjson.loads(fields[b"e"])["kind"] for _, fields in raw.xrange(f"{prefix}events")]
    assert kinds == ["experiment.created", "run.created", "tags.set", "metric.logged", "params.logged",
                     "results.logged", "artifact.logged", "run.finished"]


# -- chunked blobs -------------------------------------------------------------------------------------------
class _OneWay(io.RawIOBase):
    """A binary stream that cannot seek (a pipe, a socket, an HTTP body)."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), len(self._data), 700)
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


def test_chunked_blob_roundtrip_and_streaming(uri: str, prefix: str, raw: Any) -> None:
    backend = RedisBackend.from_uri(uri, chunk_size=1024)
    store = backend.blobs
    assert isinstance(store, RedisBlobStore)
    payload = bytes(range(256)) * 19 + b"tail"  # 4,868 bytes: 5 chunks
    assert store.put("data/x.bin", io.BytesIO(payload)) == len(payload)
    upload = raw.hget(f"{prefix}blob:data/x.bin", "upload").decode()
    chunks = sorted(raw.scan_iter(match=f"{prefix}chunk:{upload}:*"))
    assert len(chunks) == 5 and all(raw.strlen(c) <= 1024 for c in chunks)
    assert all(raw.ttl(c) == -1 for c in chunks)  # published chunks are permanent
    assert store.get("data/x.bin") == payload
    with store.open("data/x.bin") as fh:
        parts = []
        while part := fh.read(300):
            parts.append(part)
    assert b"".join(parts) == payload
    digest, size = store.put_content(payload)
    chunk_keys = set(raw.scan_iter(match=f"{prefix}chunk:*", count=1000))
    manifest = raw.hgetall(f"{prefix}blob:{store.digest_key(digest)}")
    assert store.put_content(io.BytesIO(payload)) == (digest, size)  # a seekable file: hashed first
    assert store.put_content(_OneWay(payload)) == (digest, size)  # a one-way stream: hashed as it uploads
    assert set(raw.scan_iter(match=f"{prefix}chunk:*", count=1000)) == chunk_keys  # stored once
    assert raw.hget(f"{prefix}blob:{store.digest_key(digest)}", "upload") == manifest[b"upload"]
    assert float(raw.hget(f"{prefix}blob:{store.digest_key(digest)}", "mtime")) >= float(manifest[b"mtime"])
    assert store.list("sha256") == [store.digest_key(digest)]
    with store.open_content(digest) as fh:
        assert fh.read() == payload
    small, _ = store.put_content(_OneWay(b"tiny"))  # one chunk: one script call
    assert store.get_content(small) == b"tiny"
    store.put("data/x.bin", b"short")  # replacing drops the old chunks
    assert store.get("data/x.bin") == b"short"
    assert not any(raw.exists(c) for c in chunks)
    store.delete("data/x.bin")
    assert not store.exists("data/x.bin") and store.list("data") == []
    assert store.put("empty", b"") == 0 and store.get("empty") == b""
    backend.close()


def test_incomplete_upload_is_invisible(uri: str, prefix: str, raw: Any) -> None:
    backend = RedisBackend.from_uri(uri, chunk_size=1024)
    store = backend.blobs
    store.put("model.bin", b"old" * 1000)

    def failing() -> Iterator[bytes]:
        yield b"n" * 4096
        raise OSError("disk went away mid-upload")

    with pytest.raises(OSError, match="mid-upload"):
        store._put("model.bin", failing())
    assert store.get("model.bin") == b"old" * 1000  # the previous version is untouched
    upload, _size, count = store._upload(iter([b"z" * 3000]))  # written but never published
    assert count == 3 and not store.exists("sha256/zz/zz/never")
    leftovers = [c for c in raw.scan_iter(match=f"{prefix}chunk:*") if upload.encode() in c]
    assert len(leftovers) == 3 and all(0 < raw.ttl(c) <= 24 * 3600 for c in leftovers)
    assert store.list() == ["model.bin"]
    with pytest.raises(NotFoundError):
        store.get("missing.bin")
    backend.close()


# -- connection loss -----------------------------------------------------------------------------------------
def _kill_own_connections(raw: Any, name: str) -> int:
    """Kill the connections whose client name is ``name`` (ours), by id; never anybody else's."""
    killed = 0
    for entry in raw.client_list():
        if entry.get("name") == name:
            with contextlib.suppress(redis.ResponseError):  # it may have gone away by itself meanwhile
                killed += int(raw.execute_command("CLIENT", "KILL", "ID", entry["id"]))
    return killed


def test_killed_connections_lose_and_duplicate_no_point(prefix: str, raw: Any) -> None:
    name = f"lvkill-{uuid.uuid4().hex[:10]}"
    uri = f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix={prefix}&client_name={name}&retries=20"
    n, per_flush = 6000, 40
    stop = threading.Event()
    kills = 0

    def killer() -> None:
        nonlocal kills
        while not stop.is_set():
            kills += _kill_own_connections(raw, name)
            time.sleep(0.002)

    with labvault.open(uri, flush_interval=0.01) as vault:
        run = vault.experiment("kills").start_run()
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            for i in range(n):
                run.log_metric("x", i * 0.5, step=i, timestamp=1000.0 + i)
                if i % per_flush == per_flush - 1:
                    run.flush()
                    run.set_tag("progress", i)
        finally:
            stop.set()
            thread.join()
        run.end()
        assert kills >= 10, f"only {kills} connections were killed: the test proved nothing"
        hist = vault.backend.metric_history(run.id, "x")
    np.testing.assert_array_equal(hist.steps, np.arange(n))
    np.testing.assert_array_equal(hist.values, np.arange(n) * 0.5)
    np.testing.assert_array_equal(hist.timestamps, 1000.0 + np.arange(n))
    with labvault.open(uri) as vault:
        again = vault.get_run(run.id)
        assert again.status == "finished" and again.metrics == {"x": (n - 1) * 0.5}
        assert again.tags["progress"] == str(n - 1)


class _LoseReplies:
    """Make the next ``count`` replies to a command get lost *after* the server executed it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = 0
        self.lost = 0
        original = redis.connection.AbstractConnection.read_response

        def read_response(conn: Any, *args: Any, **kwargs: Any) -> Any:
            response = original(conn, *args, **kwargs)  # the server has run the command and replied
            if self.armed > 0:
                self.armed -= 1
                self.lost += 1
                conn.disconnect()
                raise redis.ConnectionError("simulated: connection lost before the reply arrived")
            return response

        monkeypatch.setattr(redis.connection.AbstractConnection, "read_response", read_response)


def test_lost_replies_are_retried_exactly_once(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with labvault.open(uri) as vault:
        exp = vault.experiment("lost")
        run = exp.start_run()
        lose = _LoseReplies(monkeypatch)
        lose.armed = 1
        run.log_metric_series("x", np.arange(100, dtype=np.float64))  # applied, reply lost, re-sent
        lose.armed = 1
        second = exp.start_run()  # created, reply lost, re-sent: must not burn a run number
        lose.armed = 1
        run.log_params({"p": 1})
        lose.armed = 1
        vault.backend.delete_experiment(vault.experiment("doomed").id)
        assert lose.lost == 4
        hist = run.metric_history("x")
        np.testing.assert_array_equal(hist.values, np.arange(100, dtype=np.float64))
        assert second.number == 2 and exp.start_run().number == 3
        assert run.params == {"p": 1}
        assert [e.name for e in vault.experiments()] == ["lost"]


def test_unreachable_server_raises_backend_unavailable() -> None:
    port = _closed_port()
    vault = labvault.open(f"redis://127.0.0.1:{port}/0?retries=2")  # opening does no I/O
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError) as info:
        vault.experiment("nowhere")
    assert f"127.0.0.1:{port}" in str(info.value)
    assert time.monotonic() - started < 10
    assert not isinstance(info.value.__cause__, BackendUnavailableError)  # translated at the boundary
    with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{port}"):
        vault.backend.get_run("a" * 32)
    vault.close()


# -- many processes ------------------------------------------------------------------------------------------
@pytest.mark.multiprocess
def test_16_processes_get_dense_run_numbers(uri: str, tmp_path: Path) -> None:
    barrier = tmp_path / "go"
    results = run_at_once(start_runs_worker, (uri, "crowd", 3, str(barrier)), 16, barrier)
    assert sorted(n for nums in results for n in nums) == list(range(1, 49))
    with labvault.open(uri) as vault:
        assert [e.name for e in vault.experiments()] == ["crowd"]
        runs = vault.search_runs("crowd")
        assert [r.number for r in runs] == list(range(1, 49)) and len({r.id for r in runs}) == 48


# -- search: the raw-bytes prefilter never changes an answer ------------------------------------------------
_ODD_VALUES: list[Any] = ["adam", True, False, "true", [1, 2], "[1,2]", {"a": 1}, '{"a":1}', 12, "12", 2**70,
                          str(2**70), None, 'q"uo\\te', "ünï", "-5", -5, 0.5, "0.5", ""]
_ODD_FILTERS = [
    "params.x = 'true'", "params.x = 'false'", "params.x = '[1,2]'", "params.x = '{\"a\":1}'",
    "params.x = '12'", f"params.x = '{2**70}'", "params.x = 'q\"uo\\te'", "params.x = 'ünï'",
    "params.x = '-5'", "params.x = ''", "params.x IN ('adam', 'true', '12')", "params.x = 'adam'",
    "tags.t = 'q\"uo\\te'", "tags.t IN ('True', '12', 'ünï')", "tags.t = ''",
    "params.x = 'adam' AND tags.t = 'adam'", "params.x = 12", "params.x NOT IN ('adam')",
    "NOT params.x = 'adam'", "params.x = 'adam' OR tags.t = '12'",
]


def test_search_matches_the_reference_model_on_odd_values(uri: str) -> None:
    reference = f"memory://{uuid.uuid4().hex}"
    for target in (uri, reference):
        with labvault.open(target) as vault:
            exp = vault.experiment("odd")
            for value in _ODD_VALUES:
                tag = value if isinstance(value, str | int | float) else str(value)
                with exp.start_run(params={"x": value}, tags={"t": tag}):
                    pass
    with labvault.open(uri) as mine, labvault.open(uri) as unindexed, labvault.open(reference) as oracle:
        unindexed.backend._index = None  # type: ignore[attr-defined]  # the summaries path with the prefilter
        for flt in _ODD_FILTERS:
            want = [r.number for r in oracle.search_runs("odd", filter=flt)]
            assert [r.number for r in mine.search_runs("odd", filter=flt)] == want, flt
            assert [r.number for r in unindexed.search_runs("odd", filter=flt)] == want, flt
        assert [r.number for r in mine.search_runs("odd", filter="params.x = 'true'")] == [2, 4]
        big = mine.search_runs("odd", filter="number = 11")[0]
        assert big.params == {"x": 2**70}


# -- the run index -------------------------------------------------------------------------------------------
def test_run_index_follows_writes_of_other_clients(uri: str) -> None:
    writer, reader = RedisBackend.from_uri(uri), RedisBackend.from_uri(uri)
    try:
        check_index_follows_writes(writer, reader)
    finally:
        writer.close()
        reader.close()


def test_run_index_and_summary_search_agree_across_experiments(uri: str) -> None:
    indexed, plain = RedisBackend.from_uri(uri), RedisBackend.from_uri(uri)
    try:
        check_index_agrees_with_sql(indexed, plain)
    finally:
        indexed.close()
        plain.close()


def test_run_index_reads_only_what_changed(uri: str, prefix: str, raw: Any) -> None:
    """After the first search, a search reads one change number; a write makes the next one fetch only the
    runs written since (the vault's change log), and destroying the vault underneath starts over."""
    backend = RedisBackend.from_uri(uri)
    everything = query.parse(None)
    try:
        exp = backend.ensure_experiment("e", "default")
        runs = [backend.create_run(exp.id, name=None, parent_id=None, start_time=float(i), params={"i": i},
                                   tags={}) for i in range(5)]
        assert len(backend.search_runs([exp.id], everything, [], None, 0)) == 5
        assert raw.zcard(prefix + "changes") == 5 and int(raw.get(prefix + "rev")) == 5
        backend.log_params(runs[2].id, {"late": "yes"})
        assert int(raw.get(prefix + "rev")) == 6
        assert raw.zrangebyscore(prefix + "changes", "(5", "+inf") == [runs[2].id.encode()]
        hit = backend.search_runs([exp.id], query.parse("params.late = 'yes'"), [], None, 0)
        assert [r.number for r in hit] == [3]
        # Keys changed behind labvault's back (not through a write script) are not seen until a stamp:
        raw.set(prefix + f"run:{runs[0].id}:summary", raw.get(prefix + f"run:{runs[1].id}:summary"))
        assert [r.number for r in backend.search_runs([exp.id], everything, [], None, 0)] == [1, 2, 3, 4, 5]
        # A vault destroyed and made again (change numbers start over, lower) is reloaded from scratch.
        backend.destroy()
        again = backend.ensure_experiment("e", "default")
        backend.create_run(again.id, name="new", parent_id=None, start_time=1.0, params={}, tags={})
        assert [r.name for r in backend.search_runs([again.id], everything, [], None, 0)] == ["new"]
        assert backend.search_runs([exp.id], everything, [], None, 0) == []
    finally:
        backend.close()


@pytest.fixture(scope="module")
def equivalence_vaults() -> Iterator[Any]:
    """One vault under a fresh prefix searched by its run index, and a second handle on it that evaluates
    every summary with the reference model; every key under the prefix is deleted afterwards."""
    from labvault.testing.plugin import require_service

    require_service("Redis", redis_available(), START_REDIS)
    uri = f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix={_prefix()}"
    with labvault.open(uri) as indexed, labvault.open(uri) as plain:
        plain.backend._index = None  # type: ignore[attr-defined]
        try:
            yield indexed, plain
        finally:
            indexed.backend.destroy()  # type: ignore[attr-defined]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(RUN, min_size=1, max_size=6), filters=st.lists(FILTERS, min_size=1, max_size=4),
       orders=st.lists(ORDERS, min_size=1, max_size=2))
def test_memory_and_redis_agree(equivalence_vaults: Any, runs: list[dict[str, Any]], filters: list[str],
                                orders: list[list[str]]) -> None:
    indexed, plain = equivalence_vaults
    check_agrees_with_memory("redis", indexed, plain, runs, filters, orders)


# -- unix sockets: a private server started (and stopped) by this test ---------------------------------------
@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[str]:
    import shutil
    import subprocess

    from labvault.testing.plugin import require_service

    binary = shutil.which("redis-server")
    require_service("redis-server (binary)", binary is not None, "apt-get install redis-server")
    assert binary is not None
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(sock), "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert sock.exists(), "the private redis-server did not start"
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_unix_socket_uri(unix_socket: str) -> None:
    uri = f"unix://{unix_socket}?db=3&prefix=sock:"
    with labvault.open(uri) as vault, vault.experiment("via-socket").start_run(params={"a": 1}) as run:
        run.log_metric("m", 1.0)
        run.log_artifact("f.txt", b"over a unix socket")
    with labvault.open(uri) as vault:
        again = vault.get_run(run.id)
        assert (again.params, again.metrics, again.get_artifact("f.txt")) == (
            {"a": 1}, {"m": 1.0}, b"over a unix socket")
    client = redis.Redis(unix_socket_path=unix_socket, db=3)
    assert client.exists("sock:experiments") and not redis.Redis(unix_socket_path=unix_socket).dbsize()
    client.close()
