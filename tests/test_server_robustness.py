"""The server under bad input and failures, against real ``labvault server`` processes: no 500 for bad
input, a client's keep-alive connection survives 4xx and 5xx answers, metric appends through the server
are stored exactly once even when the database stalls past the client's timeout, in-flight uploads stay
private, artifact sizes are checked, and every ``$ref`` of the OpenAPI document resolves.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from test_server import API, MB, ServerProc

import labvault
from labvault import wire
from labvault.domain import MetricSeries
from labvault.errors import LabvaultError
from labvault.server.app import create_app
from labvault.server.auth import AuthStore
from labvault.testing.plugin import require_service

PG_ADMIN = os.environ.get("LABVAULT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass
class Server:
    proc: ServerProc
    store: Path  # the SQLite file behind it
    admin: str
    writer: str
    reader: str

    @property
    def url(self) -> str:
        return self.proc.url

    def client(self, token: str, **kw: Any) -> httpx.Client:
        """One connection at most, so every request of the client travels on the same socket if it can."""
        return httpx.Client(base_url=self.url + API, headers={"Authorization": f"Bearer {token}"},
                            limits=httpx.Limits(max_connections=1), timeout=30, **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A SQLite-backed server with token auth and a 0.5 MB request limit."""
    root = tmp_path_factory.mktemp("robust")
    auth = AuthStore(root / "auth.db")
    tokens = []
    for name, role in (("ana", "admin"), ("wes", "writer"), ("rita", "reader")):
        auth.add_user(name, role)
        tokens.append(auth.create_token(name)[1])
    auth.close()
    proc = ServerProc(["--backend", f"sqlite:///{root / 'store.db'}", "--max-request-mb", "0.5",
                       "--workers", "1", "--log-level", "warning"],
                      {"LABVAULT_AUTH_DB": str(root / "auth.db"), "LABVAULT_TOKEN": ""}, root / "server.log")
    try:
        yield Server(proc.wait(), root / "store.db", *tokens)
    finally:
        proc.stop()


def _local_port(resp: httpx.Response) -> int:
    """The client-side port of the connection that carried ``resp``."""
    port: int = resp.extensions["network_stream"].get_extra_info("client_addr")[1]
    return port


def _new_run(c: httpx.Client) -> tuple[str, str]:
    exp = c.post("/experiments", json={"name": f"e{secrets.token_hex(3)}"}).json()["id"]
    return exp, c.post(f"/experiments/{exp}/runs", json={}).json()["id"]


def _metrics(c: httpx.Client, run_id: str, step: int) -> httpx.Response:
    return c.post(f"/runs/{run_id}/metrics", json={"metrics": [
        {"key": "m", "steps": [step], "values": [1.0], "timestamps": [1.0]}]})


# -- bad input: a 4xx naming the problem, and the connection stays ----------------------------------------
BAD_JSON = [  # bodies that parse as Python's JSON but are no valid request (they used to give 500s)
    ("/runs/{run}/params", b'{"a": "\\udcff"}', "lone UTF-16 surrogate"),
    ("/runs/{run}/params", b'{"\\ud800": 1}', "lone UTF-16 surrogate"),
    ("/runs/{run}/tags", b'{"t": "x\\udfff"}', "lone UTF-16 surrogate"),
    ("/runs/{run}/results", b'{"r": ["\\udcff"]}', "lone UTF-16 surrogate"),
    ("/runs/search", b'{"filter": "params.a = \'\\udcff\'"}', "lone UTF-16 surrogate"),
    ("/runs/{run}/params", b'{"a": "\xff"}', "not UTF-8"),
    ("/runs/{run}/params", b'{"a": ' + b"1" * 5000 + b"}", "too long"),
    ("/runs/{run}/params", b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too deeply"),
    ("/runs/search", b'{"limit": 99999999999999999999}', "less than or equal"),
]


def test_bad_json_gets_a_4xx_naming_it_and_keeps_the_connection(server: Server) -> None:
    with server.client(server.writer) as c:
        _, run = _new_run(c)
        port = _local_port(c.get("/info"))
        for path, body, reason in BAD_JSON:
            resp = c.post(path.format(run=run), content=body, headers={"Content-Type": "application/json"})
            assert 400 <= resp.status_code < 500, (path, body[:40], resp.status_code, resp.text)
            assert reason in resp.json()["message"], (body[:40], resp.text)
            assert resp.headers.get("connection") != "close"
            ok = _metrics(c, run, 0)  # the next request, on the same connection
            assert ok.status_code == 204 and _local_port(ok) == port, (body[:40], ok.text)
        assert c.get(f"/runs/{run}").json()["params"] == {}  # nothing was written


def test_pathological_headers_and_parameters_get_4xx(server: Server) -> None:
    with server.client(server.writer) as c:
        _, run = _new_run(c)
        digest = c.post("/content", content=b"hello").json()["digest"]
        port = _local_port(c.get("/info"))
        cases = [
            ("GET", f"/content/{digest}", {"Range": "bytes=" + "9" * 5000 + "-"}, b"", 416),
            ("GET", f"/content/{digest}", {"Range": "bytes=-" + "9" * 5000}, b"", 206),
            ("GET", f"/content/{digest}", {"Range": "bytes=1-" + "9" * 5000}, b"", 206),
            ("POST", "/experiments", {"Content-Type": "text/plain"}, b'{"name": "x"}', 422),
            ("POST", "/experiments", {"Content-Type": b"application/json; charset=\xff"}, b"{", 422),
            ("POST", f"/runs/{run}/metrics", {"Content-Type": wire.METRICS_MEDIA_TYPE}, b"LVM", 400),
            ("POST", f"/runs/{run}/metrics?batch_id=not%20an%20id", {}, b'{"metrics": []}', 400),
            ("GET", "/runs/%ff", {}, b"", 400),
            ("GET", f"/runs/{run}/metric-history?key=%00", {}, b"", 400),
            ("PUT", "/uploads/%ff?offset=0", {}, b"x", 400),
            ("PUT", "/uploads/" + "0" * 32 + "?offset=" + "9" * 30, {}, b"x", 404),
        ]
        for method, path, headers, body, status in cases:
            resp = c.request(method, path, headers=headers, content=body)
            assert resp.status_code == status, (method, path, headers, resp.status_code, resp.text[:200])
            assert _metrics(c, run, 1).status_code == 204 and _local_port(resp) == port
        whole = c.get(f"/content/{digest}", headers={"Range": "bytes=-" + "9" * 5000})
        assert whole.content == b"hello"


def test_ranges_promise_no_length_the_content_may_not_have() -> None:
    from starlette.exceptions import HTTPException

    from labvault.server.protocol import parse_range

    assert parse_range("bytes=0-99", None) is None  # unknown size: an end cannot be honoured, send all
    assert parse_range("bytes=-5", None) is None
    assert parse_range("bytes=5-", None) == (5, -1)
    assert parse_range("bytes=2-" + "9" * 5000, 10) == (2, 10)
    assert parse_range("bytes=-" + "9" * 5000, 10) == (0, 10)
    assert parse_range("bytes=\u0661-", 10) is None  # a non-ASCII digit is no number
    with pytest.raises(HTTPException) as info:
        parse_range("bytes=" + "9" * 5000 + "-", 10)
    assert info.value.status_code == 416


def test_a_500_does_not_drop_the_connection(server: Server) -> None:
    """A run row corrupted from another handle makes the SQLite backend fail with a raw exception: the
    server answers 500 and the client's next request travels on the same connection."""
    with server.client(server.writer) as c:
        _, run = _new_run(c)
        with sqlite3.connect(server.store) as db:
            db.execute("UPDATE runs SET params_json = '{broken' WHERE id = ?", (run,))
        first = c.get(f"/runs/{run}")
        assert first.status_code == 500 and first.json()["error"] == "LabvaultError", first.text
        after = _metrics(c, run, 0)
        assert after.status_code == 204 and _local_port(after) == _local_port(first)
    with labvault.open(server.url, token=server.writer, retries=0) as vault:
        with pytest.raises(LabvaultError):
            vault.backend.get_run(run)
        series = [MetricSeries("m", np.array([5]), np.array([1.0]), np.array([1.0]))]
        vault.backend.log_metrics(run, series)  # no retry allowed: must work on the pooled connection
        assert vault.backend.metric_history(run, "m").steps.tolist() == [0, 5]


def test_refused_bodies_keep_the_connection_unless_large(server: Server) -> None:
    with server.client(server.writer) as c:
        _, run = _new_run(c)
        port = _local_port(c.get("/info"))
        # over the 0.5 MB request limit, and within the drain limit: read and discarded, connection kept
        resp = c.post(f"/runs/{run}/params", content=b"x" * 800_000,
                      headers={"Content-Type": "application/json"})
        assert resp.status_code == 413 and resp.headers.get("connection") != "close"
        assert _local_port(resp) == port and _metrics(c, run, 0).status_code == 204
        # refused before the body is read (no such run): a small body is drained too
        resp = c.put(f"/runs/{'0' * 32}/artifacts/a.bin", content=b"y" * 200_000)
        assert resp.status_code == 404 and _local_port(resp) == port
        assert _local_port(_metrics(c, run, 1)) == port
        # a large unread rest is not worth reading: that answer closes, the next request reconnects
        resp = c.put(f"/runs/{'0' * 32}/artifacts/b.bin", content=b"z" * (16 * MB))
        assert resp.status_code == 404 and resp.headers.get("connection") == "close"
        again = _metrics(c, run, 2)
        assert again.status_code == 204 and _local_port(again) != port
        steps = c.get(f"/runs/{run}/metric-history", params={"key": "m"}).json()["metrics"][0]["steps"]
        assert steps == [0, 1, 2]


# -- uploads, artifact sizes, OpenAPI --------------------------------------------------------------------
def test_in_flight_uploads_are_hidden_from_readers(server: Server) -> None:
    with server.client(server.writer) as w, server.client(server.reader) as r, \
            server.client(server.admin) as a:
        upload = w.post("/uploads", json={"size": 6}).json()["upload_id"]
        assert w.put(f"/uploads/{upload}", params={"offset": 0}, content=b"secret").status_code == 200
        admin_keys = a.get("/blobs", params={"prefix": "uploads/"}).json()
        assert any(k.startswith(f"uploads/{upload}/") for k in admin_keys), admin_keys  # admins see them
        part = next(k for k in admin_keys if k.startswith(f"uploads/{upload}/c"))
        for client in (r, w):
            assert [k for k in client.get("/blobs").json() if k.startswith("uploads/")] == []
            assert client.get("/blobs", params={"prefix": "uploads/"}).json() == []
            assert client.get(f"/blobs/{part}").status_code == 404
            assert client.head(f"/blobs/{part}").status_code == 404
        assert a.get(f"/blobs/{part}").content == b"secret"
        assert w.get(f"/uploads/{upload}").json()["offset"] == 6  # the uploader still sees its upload
        done = w.post(f"/uploads/{upload}/complete", json={}).json()
        assert r.get(f"/content/{done['digest']}").content == b"secret"  # finished content is anyone's


def test_artifact_size_must_match_the_blob(server: Server) -> None:
    with server.client(server.writer) as c:
        _, run = _new_run(c)
        doc = c.post("/content", content=b"0123456789").json()
        for size in (9, 11, 0, 2**40):
            body = {"key": "a.txt", "size": size, "digest": doc["digest"]}
            resp = c.post(f"/runs/{run}/artifacts", json=body)
            assert resp.status_code == 400, resp.text
            assert "does not match the 10 bytes" in resp.json()["message"], resp.text
        assert c.get(f"/runs/{run}/artifacts").json() == []  # nothing stored
        resp = c.post(f"/runs/{run}/artifacts", json={"key": "a.txt", "size": 10, "digest": doc["digest"]})
        assert resp.status_code == 204
        assert [a["size"] for a in c.get(f"/runs/{run}/artifacts").json()] == [10]


def test_content_with_a_wrong_digest_is_not_stored(server: Server) -> None:
    """``POST /content`` with an ``X-...-Sha256`` the bytes do not have is refused before the blob store
    commits: no blob appears under the real digest (before, a 400 came back but the bytes were kept)."""
    import hashlib

    with server.client(server.writer) as c:
        for size in (10, 300_000):  # inline and streamed sizes
            payload = secrets.token_bytes(size)
            digest = hashlib.sha256(payload).hexdigest()
            resp = c.post("/content", content=payload, headers={wire.SHA256_HEADER: "0" * 64})
            assert resp.status_code == 400 and "0" * 64 in resp.json()["message"], resp.text
            assert c.head(f"/content/{digest}").status_code == 404, f"{size} bytes were stored"
            bad = c.post("/content", content=payload, headers={wire.SHA256_HEADER: "xyz"})
            assert bad.status_code == 400 and "'xyz'" in bad.json()["message"], bad.text
            ok = c.post("/content", content=payload, headers={wire.SHA256_HEADER: digest.upper()})
            assert ok.status_code == 200 and ok.json() == {"digest": digest, "size": size}
            assert c.head(f"/content/{digest}").status_code == 200


def test_openapi_document_is_valid_and_every_ref_resolves(tmp_path: Path) -> None:
    from jsonschema.validators import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    app = create_app("memory://", auth=tmp_path / "auth.db")
    doc = app.openapi()
    uri = "urn:labvault-openapi"
    resolver = Registry().with_resource(uri, Resource.from_contents(doc, DRAFT202012)).resolver(uri)
    refs: list[str] = []
    stack: list[Any] = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("$ref"), str):
                refs.append(item["$ref"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    unresolved = []
    for ref in sorted(set(refs)):
        try:
            resolver.lookup(ref)
        except Exception as exc:  # referencing's Unresolvable and its subclasses
            unresolved.append(f"{ref}: {type(exc).__name__}")
    assert unresolved == []
    assert len(refs) > 20 and "#/components/schemas/MetricsIn" in refs
    for schema in doc["components"]["schemas"].values():  # each a valid JSON Schema (OpenAPI 3.1)
        Draft202012Validator.check_schema(schema)
    assert "$defs" not in json.dumps(doc["paths"])


# -- metric appends stay exactly-once through a stalled database -------------------------------------------
@pytest.fixture(scope="module")
def pg_uri() -> Iterator[str]:
    """A fresh PostgreSQL database ``labvault_test_<hex>``, dropped afterwards."""
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except Exception:
        admin = None
    require_service("PostgreSQL", admin is not None,
                    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start")
    assert admin is not None
    name = f"labvault_test_{secrets.token_hex(6)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _stall(pg_uri: str, stalls: int, hold: float, gap: float, done: threading.Event) -> None:
    """Lock the metric table from another connection ``stalls`` times for ``hold`` seconds each."""
    import psycopg

    with psycopg.connect(pg_uri, autocommit=True) as conn:
        for _ in range(stalls):
            time.sleep(gap)
            with conn.transaction():
                conn.execute("LOCK TABLE metric_segments IN ACCESS EXCLUSIVE MODE")
                time.sleep(hold)
    done.set()


@pytest.mark.parametrize("retries", [3, 1], ids=["request-retries", "flush-retries"])
def test_metric_points_are_stored_once_through_database_stalls(pg_uri: str, tmp_path: Path, retries: int,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A client with a 2 s timeout logs points while the server's database stalls for 5 s at a time:
    timed-out requests are re-sent (by the HTTP client; with ``retries=1`` its retries run out within a
    stall and the run's next flush re-sends the batch), and every point is stored exactly once."""
    proc = ServerProc(["--backend", pg_uri, "--insecure", "--workers", "1", "--log-level", "warning"],
                      {"LABVAULT_TOKEN": ""}, tmp_path / "server.log").wait()
    try:
        with labvault.open(proc.url, timeout=2.0, retries=retries, flush_interval=0.1) as vault:
            run = vault.experiment("stalls").start_run()
            run.log_metric("m", 0.0, step=0)
            run.flush()  # the tables exist before they are locked
            done = threading.Event()
            staller = threading.Thread(target=_stall, args=(pg_uri, 3, 5.0, 1.0, done), daemon=True)
            staller.start()
            step = 1
            deadline = time.monotonic() + 120  # a hang guard, not a timing assertion
            while not done.is_set() and time.monotonic() < deadline:
                run.log_metric("m", float(step), step=step)
                step += 1
                time.sleep(0.002)
            staller.join(timeout=30)
            assert done.is_set(), "the staller did not finish"
            for _ in range(20):  # the flusher may have failed during a stall: flush until it succeeds
                try:
                    run.flush()
                    break
                except LabvaultError:
                    time.sleep(0.5)
            run.end()
            steps = vault.backend.metric_history(run.id, "m").steps
            if retries == 1:  # the case is what it says: some flush failed and was re-sent later
                failed = [r.getMessage() for r in caplog.records if "background flush" in r.getMessage()]
                assert any("BackendUnavailableError" in m for m in failed), failed
        counts = np.bincount(steps, minlength=step)
        duplicated = int((counts[counts > 1] - 1).sum())
        missing = int((counts == 0).sum())
        print(f"\n{step} points logged through 3 database stalls: {duplicated} duplicated, {missing} missing")
        assert (duplicated, missing) == (0, 0)
        assert len(steps) == step
    finally:
        proc.stop()
