"""Bad input at the HTTP level, against a real ``labvault server`` subprocess (SQLite store, token auth).

Every case sends one request with something wrong in its body, headers, path or query, and checks the
exact 4xx status, the error class named in the JSON body (``{"error": ..., "message": ...}``), that the
message names the bad input, and that the store (snapshot through the API) is unchanged. Requests are
written by hand on a raw socket, so the bytes on the wire are exactly the ones in the table (a JSON
``"\\udcff"`` escape, a percent-encoded lone surrogate, a malformed header).

The schemathesis run at the end fuzzes every endpoint (the metric ones weighted 5x) and mixes strings
with lone surrogates and NULs into the generated bodies, query and path parameters: any 5xx is a failure.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from server_process import add_admin, running_server

import labvault
from labvault import wire
from labvault.client.vault import Vault
from labvault.store.abc import Backend
from labvault.testing.bad_input import store_snapshot

API = wire.API_PREFIX


# -- the server ----------------------------------------------------------------------------------------------
@dataclass
class Server:
    """A running ``labvault server``: its port, an admin token and a backend on it for snapshots."""

    port: int
    token: str
    backend: Backend
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def _served(root: Path) -> Iterator[tuple[int, str, Vault]]:
    """A server over ``root`` (4 MB request limit) for the block: (its port, an admin token, a vault)."""
    auth, _, token = add_admin(root / "auth.db", "ana")
    auth.close()
    with running_server(root, "--max-request-mb", "4", log=root / "server.log") as (url, _), \
            labvault.open(url, token=token) as vault:
        yield int(url.rsplit(":", 1)[1]), token, vault


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the table, holding an experiment ``valid`` with a run that has a bit of everything."""
    with _served(tmp_path_factory.mktemp("bad-input-server")) as (port, token, vault):
        exp = vault.experiment("valid")
        with exp.start_run(name="target", params={"keep": 1}, tags={"team": "a"}) as done:
            done.log_artifact("a.txt", b"artifact")  # 8 bytes
        run = exp.start_run(params={"lr": 0.1}, tags={"t": "v"})
        run.log_result("r", {"score": 1})
        run.log_metric("loss", 0.5, step=0)
        run.log_artifact("b.txt", b"bytes")
        run.flush()
        yield Server(port, token, vault.backend, {"exp": exp.id, "run": run.id, "done": done.id})
        run.end()


# -- raw requests --------------------------------------------------------------------------------------------
def send(port: int, method: str, target: bytes | str, headers: list[tuple[bytes, bytes]], body: bytes = b""
         ) -> tuple[int, bytes]:
    """Send exactly these bytes as one HTTP/1.1 request; return (status, body)."""
    if isinstance(target, str):
        target = target.encode("ascii")
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    if body and not any(k.lower() == b"content-length" for k, _ in headers):
        headers = [*headers, (b"Content-Length", str(len(body)).encode())]
    lines += [k + b": " + v for k, v in headers]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        return resp.status, resp.read()


def quote(text: str) -> str:
    """Percent-encode text for a URL path or query; a lone surrogate becomes its (invalid) UTF-8 bytes."""
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


# -- the table -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HTTPCase:
    """A request (``{run}``, ``{exp}``, ``{done}`` in the path are filled in) and the answer it must get."""

    label: str
    method: str
    path: str
    status: int
    error: str
    named: str
    body: bytes = b""
    ctype: str | None = "application/json"
    headers: tuple[tuple[bytes, bytes], ...] = ()
    auth: bool = True


def _j(doc: Any) -> bytes:
    """JSON with every non-ASCII character (and so every lone surrogate) as a \\u escape."""
    return json.dumps(doc, ensure_ascii=True).encode()


INVALID, NOT_FOUND, AUTH = "InvalidArgumentError", "NotFoundError", "AuthenticationError"
HUGE = "1" + "0" * 4400  # an integer of more digits than labvault keeps (4,300), as JSON text
R = "/runs/{run}"


def _c(label: str, method: str, path: str, status: int, error: str, named: str, body: bytes = b"",
       **kw: Any) -> HTTPCase:
    return HTTPCase(label, method, path, status, error, named, body, **kw)


def _body_cases() -> list[HTTPCase]:
    """Malformed JSON, wrong JSON types, surrogate / NUL escapes and oversize numbers in bodies."""
    return [
        _c("experiment JSON truncated", "POST", "/experiments", 422, INVALID, "JSON", b'{"name": '),
        _c("experiment JSON not UTF-8", "POST", "/experiments", 422, INVALID, "body", b'{"name": "\xff"}'),
        _c("experiment body a list", "POST", "/experiments", 422, INVALID, "body", b"[]"),
        _c("experiment name a number", "POST", "/experiments", 422, INVALID, "name", _j({"name": 42})),
        _c("experiment unknown field", "POST", "/experiments", 422, INVALID, "extra",
           _j({"name": "ok", "extra": 1})),
        _c("experiment name traversal", "POST", "/experiments", 400, INVALID, "'../x'", _j({"name": "../x"})),
        _c("experiment name lone surrogate", "POST", "/experiments", 422, INVALID, "\\udcff",
           _j({"name": "a\udcff"})),
        _c("experiment name NUL", "POST", "/experiments", 400, INVALID, "\\x00", _j({"name": "a\x00b"})),
        _c("project lone surrogate", "POST", "/experiments", 422, INVALID, "\\ud800",
           _j({"name": "ok", "project": "\ud800"})),
        _c("run params lone surrogate", "POST", "/experiments/{exp}/runs", 422, INVALID, "\\udcff",
           _j({"params": {"p": "\udcff"}})),
        _c("run params nested NUL key", "POST", "/experiments/{exp}/runs", 400, INVALID, "'p'",
           _j({"params": {"p": {"k\x00": 1}}})),
        _c("run params 1e400", "POST", "/experiments/{exp}/runs", 400, INVALID, "'p'",
           b'{"params": {"p": 1e400}}'),
        _c("run params huge int", "POST", "/experiments/{exp}/runs", 422, INVALID, "4300",
           b'{"params": {"p": ' + HUGE.encode() + b"}}"),
        _c("run tags 1e999", "POST", "/experiments/{exp}/runs", 400, INVALID, "'t'",
           b'{"tags": {"t": 1e999}}'),
        _c("run tags 5000 digits", "POST", "/experiments/{exp}/runs", 422, INVALID, "body",
           b'{"tags": {"t": 1' + b"0" * 5000 + b"}}"),
        _c("run tags lone surrogate", "POST", "/experiments/{exp}/runs", 422, INVALID, "\\udcff",
           _j({"tags": {"t": "x\udcff"}})),
        _c("run name lone surrogate", "POST", "/experiments/{exp}/runs", 422, INVALID, "\\udcff",
           _j({"name": "\udcff"})),
        _c("run start_time NaN", "POST", "/experiments/{exp}/runs", 422, INVALID, "start_time",
           b'{"start_time": NaN}'),
        _c("run start_time a string", "POST", "/experiments/{exp}/runs", 422, INVALID, "start_time",
           _j({"start_time": "now"})),
        _c("run id traversal", "POST", "/experiments/{exp}/runs", 400, INVALID, "'../x'", _j({"id": "../x"})),
        _c("run parent NUL", "POST", "/experiments/{exp}/runs", 400, INVALID, "\\x00",
           _j({"parent_id": "a\x00"})),
        _c("run parent missing", "POST", "/experiments/{exp}/runs", 404, NOT_FOUND, "e" * 32,
           _j({"parent_id": "e" * 32})),
        _c("patch status bogus", "PATCH", R, 400, INVALID, "'bogus'", _j({"status": "bogus"})),
        _c("patch error lone surrogate", "PATCH", R, 422, INVALID, "\\udcff", _j({"error": "boom \udcff"})),
        _c("patch error NUL", "PATCH", R, 400, INVALID, "error", _j({"error": "bo\x00om"})),
        _c("patch error a number", "PATCH", R, 422, INVALID, "error", _j({"error": 42})),
        _c("patch end_time 1e400", "PATCH", R, 422, INVALID, "end_time", b'{"end_time": 1e400}'),
        _c("params body a list", "POST", R + "/params", 422, INVALID, "body", b"[1]"),
        _c("params body null", "POST", R + "/params", 422, INVALID, "body", b"null"),
        # every params case logs its own key: a defect that stores one must not turn the next into a conflict
        _c("params key traversal", "POST", R + "/params", 400, INVALID, "'../k'", _j({"../k": 1})),
        _c("params key lone surrogate", "POST", R + "/params", 422, INVALID, "\\udcff", _j({"k\udcff": 1})),
        _c("params value lone surrogate", "POST", R + "/params", 422, INVALID, "\\udcff",
           _j({"k1": "\udcff"})),
        _c("params value NaN", "POST", R + "/params", 400, INVALID, "nan", b'{"k2": NaN}'),
        _c("params value Infinity", "POST", R + "/params", 400, INVALID, "inf", b'{"k3": -Infinity}'),
        _c("params value huge int", "POST", R + "/params", 422, INVALID, "4300",
           b'{"k4": ' + HUGE.encode() + b"}"),
        _c("params nested NUL key", "POST", R + "/params", 400, INVALID, "'k5'", _j({"k5": [{"a\x00": 1}]})),
        _c("tags value a list", "POST", R + "/tags", 400, INVALID, "'t'", _j({"t": [1]})),
        _c("tags value lone surrogate", "POST", R + "/tags", 422, INVALID, "\\udcff", _j({"t": "\udcff"})),
        _c("tags value NUL", "POST", R + "/tags", 400, INVALID, "'t'", _j({"t": "\x00"})),
        _c("results nested surrogate key", "POST", R + "/results", 422, INVALID, "\\udcff",
           _j({"r": {"\udcff": 1}})),
        _c("results value huge int", "POST", R + "/results", 422, INVALID, "4300",
           b'{"r": [' + HUGE.encode() + b"]}"),
    ]


def _series(**kw: Any) -> bytes:
    doc = {"key": "loss", "steps": [5], "values": [1.0], "timestamps": [1.0], **kw}
    return _j({"metrics": [doc]})


M = R + "/metrics"


def _metric_cases() -> list[HTTPCase]:
    """The metric endpoints: JSON and binary bodies, history queries."""
    frame = "application/vnd.labvault.metrics"
    return [
        _c("metrics JSON truncated", "POST", M, 400, INVALID, "JSON", b'{"metrics": ['),
        _c("metrics not a list", "POST", M, 400, INVALID, "metrics", _j({"metrics": 1})),
        _c("metrics series not an object", "POST", M, 400, INVALID, "object", _j({"metrics": [1]})),
        _c("metrics key missing", "POST", M, 400, INVALID, "'key'", _j({"metrics": [{"steps": []}]})),
        _c("metrics key lone surrogate", "POST", M, 400, INVALID, "surrogate", _series(key="m\udcff")),
        _c("metrics key NUL", "POST", M, 400, INVALID, "\\x00", _series(key="m\x00")),
        _c("metrics key glob", "POST", M, 400, INVALID, "'m*'", _series(key="m*")),
        _c("metrics step negative", "POST", M, 400, INVALID, "steps", _series(steps=[-1])),
        _c("metrics step 2**63", "POST", M, 400, INVALID, "steps", _series(steps=[2**63])),
        _c("metrics step 2**64", "POST", M, 400, INVALID, "steps", _series(steps=[2**64])),
        _c("metrics step float", "POST", M, 400, INVALID, "steps", _series(steps=[1.5])),
        _c("metrics step a string", "POST", M, 400, INVALID, "steps", _series(steps=["1"])),
        _c("metrics value a string", "POST", M, 400, INVALID, "'abc'", _series(values=["abc"])),
        _c("metrics value lone surrogate", "POST", M, 400, INVALID, "surrogate", _series(values=["\udcff"])),
        _c("metrics value huge int", "POST", M, 400, INVALID, "number",
           b'{"metrics": [{"key": "loss", "steps": [5], "values": [1' + b"0" * 400
           + b'], "timestamps": [1]}]}'),
        _c("metrics lengths differ", "POST", M, 400, INVALID, "'loss'", _series(values=[1.0, 2.0])),
        _c("metrics timestamp NaN", "POST", M, 400, INVALID, "timestamps", _series(timestamps=["NaN"])),
        _c("metrics frame bad magic", "POST", M, 400, INVALID, "LVM1", b"XXXX\x01\x00\x00\x00", ctype=frame),
        _c("metrics frame truncated", "POST", M, 400, INVALID, "truncated", b"LVM1\x01\x00\x00\x00\xff",
           ctype=frame),
        _c("metrics frame key not UTF-8", "POST", M, 400, INVALID, "UTF-8",
           b"LVM1\x01\x00\x00\x00\x02\x00\x00\x00\xed\xb3" + b"\x00" * 8, ctype=frame),
        _c("metrics frame with a JSON body", "POST", M, 400, INVALID, "LVM1", _series(), ctype=frame),
        _c("batch run id traversal", "POST", "/batch", 400, INVALID, "'../x'",
           _j({"items": [{"run_id": "../x", "params": {"a": 1}}]})),
        _c("batch items not a list", "POST", "/batch", 422, INVALID, "items", _j({"items": 1})),
        _c("batch tags lone surrogate", "POST", "/batch", 422, INVALID, "\\udcff",
           _j({"items": [{"run_id": "{run}", "tags": {"t": "\udcff"}}]})),
        _c("batch second item bad", "POST", "/batch", 400, INVALID, "batch item 1",
           _j({"items": [{"run_id": "{run}", "params": {"fresh": 1}},
                         {"run_id": "{run}", "params": {"../bad": 1}}]})),
        _c("history key glob", "GET", R + "/metric-history?key=loss%3F", 400, INVALID, "'loss?'", ctype=None),
        _c("history key missing", "GET", R + "/metric-history", 422, INVALID, "key", ctype=None),
        _c("history key empty", "GET", R + "/metric-history?key=", 400, INVALID, "empty", ctype=None),
        _c("history key NUL", "GET", R + "/metric-history?key=a%00", 400, INVALID, "\\x00", ctype=None),
        _c("history key lone surrogate", "GET", R + "/metric-history?key=" + quote("a\udcff"), 400, INVALID,
           "metric key", ctype=None),
        _c("history format xml", "GET", R + "/metric-history?key=loss&format=xml", 422, INVALID, "format",
           ctype=None),
        _c("history too many keys", "GET", R + "/metric-history?" + "&".join(["key=loss"] * 1001), 400,
           INVALID, "1000", ctype=None),
    ]


def _search_and_artifact_cases() -> list[HTTPCase]:
    search = "/runs/search"
    digest = "0" * 64
    return [
        _c("search filter syntax", "POST", search, 400, INVALID, "column", _j({"filter": "params.lr >> 1"})),
        _c("search filter lone surrogate", "POST", search, 422, INVALID, "\\udcff",
           _j({"filter": "tags.t = '\udcff'"})),
        _c("search filter NUL", "POST", search, 400, INVALID, "NUL", _j({"filter": "tags.t = '\x00'"})),
        _c("search filter a number", "POST", search, 422, INVALID, "filter", _j({"filter": 42})),
        _c("search limit negative", "POST", search, 422, INVALID, "limit", _j({"limit": -1})),
        _c("search order_by a string", "POST", search, 422, INVALID, "order_by", _j({"order_by": "number"})),
        _c("search order_by junk", "POST", search, 400, INVALID, "'number sideways'",
           _j({"order_by": ["number sideways"]})),
        _c("search experiment id traversal", "POST", search, 400, INVALID, "'../x'",
           _j({"experiment_ids": ["../x"]})),
        _c("artifact index key traversal", "POST", R + "/artifacts", 400, INVALID, "'../x'",
           _j({"key": "../x", "size": 1, "digest": digest})),
        _c("artifact index digest junk", "POST", R + "/artifacts", 422, INVALID, "digest",
           _j({"key": "x.txt", "size": 1, "digest": "abc"})),
        _c("artifact index size negative", "POST", R + "/artifacts", 422, INVALID, "size",
           _j({"key": "x.txt", "size": -1, "digest": digest})),
        _c("artifact index blob missing", "POST", R + "/artifacts", 404, NOT_FOUND, digest,
           _j({"key": "x.txt", "size": 1, "digest": digest})),
        _c("artifact put key traversal", "PUT", R + "/artifacts/%2E%2E/etc", 400, INVALID, "'../etc'",
           b"x", ctype="application/octet-stream"),
        _c("artifact put key NUL", "PUT", R + "/artifacts/a%00b", 400, INVALID, "'a\\x00b'", b"x",
           ctype="application/octet-stream"),
        _c("artifact put key lone surrogate", "PUT", R + "/artifacts/" + quote("a\udcff"), 400, INVALID,
           "artifact key", b"x", ctype="application/octet-stream"),
        _c("artifact put key glob", "PUT", R + "/artifacts/%2A.png", 400, INVALID, "'*.png'", b"x",
           ctype="application/octet-stream"),
        _c("artifact get missing", "GET", R + "/artifacts/missing.txt", 404, NOT_FOUND, "'missing.txt'",
           ctype=None),
        _c("artifact list prefix traversal", "GET", R + "/artifacts?prefix=..%2F", 400, INVALID, "'..'",
           ctype=None),
        _c("content digest junk", "GET", "/content/not-a-digest", 400, INVALID, "'not-a-digest'", ctype=None),
        _c("upload id junk", "GET", "/uploads/xyz", 400, INVALID, "'xyz'", ctype=None),
        _c("upload missing", "PUT", "/uploads/" + "a" * 32 + "?offset=0", 404, NOT_FOUND, "a" * 32, b"x",
           ctype="application/octet-stream"),
    ]


def _path_query_cases() -> list[HTTPCase]:
    return [
        _c("path run id punctuation", "GET", "/runs/not-an-id!", 400, INVALID, "'not-an-id!'", ctype=None),
        _c("path run id NUL", "GET", "/runs/ab%00cd", 400, INVALID, "'ab\\x00cd'", ctype=None),
        _c("path run id lone surrogate", "GET", "/runs/" + quote("ab\udcff"), 400, INVALID, "run id",
           ctype=None),
        _c("path run id too long", "GET", "/runs/" + "a" * 65, 400, INVALID, "aaaaaaaa", ctype=None),
        _c("path run missing", "GET", "/runs/" + "f" * 32, 404, NOT_FOUND, "f" * 32, ctype=None),
        _c("path run id junk, empty params", "POST", "/runs/not-an-id!/params", 400, INVALID, "'not-an-id!'",
           b"{}"),
        _c("path run id junk, no metrics", "POST", "/runs/not-an-id!/metrics", 400, INVALID, "'not-an-id!'",
           _j({"metrics": []})),
        _c("path experiment id junk", "DELETE", "/experiments/not-an-id!", 400, INVALID, "'not-an-id!'",
           ctype=None),
        _c("path experiment missing", "POST", "/experiments/" + "f" * 32 + "/runs", 404, NOT_FOUND, "f" * 32,
           b"{}"),
        _c("query project traversal", "GET", "/experiments?project=..%2Fx", 400, INVALID, "'../x'",
           ctype=None),
        _c("query project NUL", "GET", "/experiments?project=a%00", 400, INVALID, "'a\\x00'", ctype=None),
        _c("query project lone surrogate", "GET", "/experiments?project=" + quote("\udcff"), 400, INVALID,
           "project name", ctype=None),
        _c("query experiment_id junk", "GET", "/runs?experiment_id=..%2Fx", 400, INVALID, "'../x'",
           ctype=None),
        _c("query experiment_id missing", "GET", "/runs", 422, INVALID, "experiment_id", ctype=None),
        _c("query blob prefix traversal", "GET", "/blobs?prefix=..%2F", 400, INVALID, "'..'", ctype=None),
    ]


def _header_cases() -> list[HTTPCase]:
    ab = R.replace("{run}", "{done}") + "/artifacts/a.txt"
    json_ctype = "application/json"
    return [
        _c("auth missing", "GET", "/experiments", 401, AUTH, "token", ctype=None, auth=False),
        _c("auth scheme basic", "GET", "/experiments", 401, AUTH, "token", ctype=None, auth=False,
           headers=((b"Authorization", b"Basic YTpi"),)),
        _c("auth bearer empty", "GET", "/experiments", 401, AUTH, "token", ctype=None, auth=False,
           headers=((b"Authorization", b"Bearer "),)),
        _c("auth token wrong", "GET", "/experiments", 401, AUTH, "token", ctype=None, auth=False,
           headers=((b"Authorization", b"Bearer lv_0000_notatoken"),)),
        _c("auth token not ASCII", "GET", "/experiments", 401, AUTH, "token", ctype=None, auth=False,
           headers=((b"Authorization", b"Bearer lv_\xff\xfe"),)),
        _c("auth token huge", "GET", "/experiments", 401, AUTH, "token", ctype=None, auth=False,
           headers=((b"Authorization", b"Bearer " + b"x" * 8000),)),
        _c("content-type text for JSON", "POST", "/experiments", 422, INVALID, "body", _j({"name": "ctype"}),
           ctype="text/plain"),
        _c("content-type frame for params", "POST", R + "/params", 422, INVALID, "body", _j({"k": 1}),
           ctype="application/vnd.labvault.metrics"),
        _c("content-length too large", "POST", "/experiments", 413, INVALID, "larger than", b"{}",
           ctype=json_ctype, headers=((b"Content-Length", b"99999999999"),)),
        _c("range beyond the end", "GET", ab, 416, INVALID, "bytes=100-200", ctype=None,
           headers=((b"Range", b"bytes=100-200"),)),
        _c("range empty suffix", "GET", ab, 416, INVALID, "bytes=-0", ctype=None,
           headers=((b"Range", b"bytes=-0"),)),
        _c("range start after end", "GET", ab, 416, INVALID, "bytes=5-2", ctype=None,
           headers=((b"Range", b"bytes=5-2"),)),
        _c("sha256 header mismatch", "POST", "/content", 400, INVALID, "'" + "0" * 64 + "'", b"data",
           ctype="application/octet-stream", headers=((wire.SHA256_HEADER.encode(), b"0" * 64),)),
    ]


HTTP_CASES = [*_body_cases(), *_metric_cases(), *_search_and_artifact_cases(), *_path_query_cases(),
              *_header_cases()]


def _fill(text: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        text = text.replace("{" + name + "}", value)
    return text


def _request(server: Server, case: HTTPCase) -> tuple[int, bytes]:
    headers = list(case.headers)
    if case.auth:
        headers.append((b"Authorization", f"Bearer {server.token}".encode()))
    if case.ctype is not None:
        headers.append((b"Content-Type", case.ctype.encode()))
    body = _fill(case.body.decode("latin-1"), server.ids).encode("latin-1")
    return send(server.port, case.method, API + _fill(case.path, server.ids), headers, body)


def test_the_table_is_large_and_unambiguous() -> None:
    labels = [c.label for c in HTTP_CASES]
    assert len(labels) == len(set(labels)) and len(labels) >= 100, len(labels)


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c.label for c in HTTP_CASES])
def test_bad_request_gets_4xx_and_writes_nothing(server: Server, case: HTTPCase) -> None:
    before = store_snapshot(server.backend)
    status, raw = _request(server, case)
    after = store_snapshot(server.backend)
    assert status == case.status, f"{case.method} {case.path}: {status} {raw[:300]!r}"
    doc = json.loads(raw)
    assert set(doc) == {"error", "message"}, doc
    assert doc["error"] == case.error, doc
    assert case.named in doc["message"], f"{doc['message'][:300]!r} does not name {case.named!r}"
    assert after == before, "the refused request changed the store"


# -- fuzzing -------------------------------------------------------------------------------------------------
#: Strings no request may turn into a 5xx: lone surrogates (high, low, reversed pair) and NULs.
EVIL = ["\udcff", "\ud800", "a\udcffb", "\udc00\ud800", "\x00", "a\x00b", "\ud800\x00", "x" * 70 + "\udcff"]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own for the fuzzer (the junk it writes stays out of the table's store)."""
    with _served(tmp_path_factory.mktemp("fuzz-server")) as (port, token, vault):
        exp = vault.experiment("fuzz")
        with exp.start_run(params={"lr": 0.1}) as run:
            run.log_metric("loss", 1.0)
            run.log_artifact("a.txt", b"artifact")
        yield Server(port, token, vault.backend, {"experiment_id": exp.id, "run_id": run.id})


def _poison(value: Any, draw: Any, st: Any) -> tuple[Any, int]:
    """``value`` with some of its strings (values and object keys) given an evil suffix; (new, how many)."""
    if isinstance(value, str):
        if draw(st.booleans()):
            return value + draw(st.sampled_from(EVIL)), 1
        return value, 0
    if isinstance(value, list):
        parts = [_poison(item, draw, st) for item in value]
        return [p for p, _ in parts], sum(n for _, n in parts)
    if isinstance(value, dict):
        out, total = {}, 0
        for key, item in value.items():
            new_key, n = _poison(key, draw, st)
            out[new_key], m = _poison(item, draw, st)
            total += n + m
        return out, total
    return value, 0


def _body_bytes(case: Any) -> tuple[bytes, str | None]:
    from schemathesis.core import NotSet

    if isinstance(case.body, NotSet):
        return b"", None
    if isinstance(case.body, bytes):
        return case.body, case.media_type
    if case.media_type and "json" in case.media_type:
        return json.dumps(case.body, ensure_ascii=True, allow_nan=True).encode(), case.media_type
    return str(case.body).encode("utf-8", "surrogatepass"), case.media_type


def _target(case: Any, params: dict[str, str], query: dict[str, Any]) -> str:
    """The request target: path parameters and query percent-encoded (a lone surrogate as its bytes)."""
    path = case.path
    for name, value in params.items():
        path = path.replace("{" + name + "}", quote(value)).replace("{" + name + ":path}", quote(value))
    pairs = []
    for name, value in query.items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append(f"{quote(str(name))}={quote(str(item))}")
    return path + ("?" + "&".join(pairs) if pairs else "")


def _path_params(case: Any, ids: dict[str, str], draw: Any, st: Any) -> dict[str, str]:
    """Every path parameter of the operation: a real id half of the time (so bodies reach a real run),
    else what schemathesis generated (it percent-encodes them: decoded here, encoded once by ``_target``)."""
    generated = dict(case.path_parameters or {})
    out = {}
    for name in case.operation.path_parameters or ():
        pname = getattr(name, "name", name)
        if pname in ids and draw(st.booleans()):
            out[pname] = ids[pname]
        else:
            out[pname] = urllib.parse.unquote(str(generated.get(pname, "x")))
    for pname in _names_in(case.path):
        out.setdefault(pname, ids.get(pname, "x"))
    return out


def _names_in(path: str) -> list[str]:
    return [m.split(":")[0] for m in re.findall(r"{([^}]+)}", path)]


def _poisoned_request(case: Any, ids: dict[str, str], draw: Any, st: Any
                      ) -> tuple[str, bytes, str | None, int]:
    """(target, body, content type, how many evil strings went in) for one generated case."""
    from schemathesis.core import NotSet

    params = _path_params(case, ids, draw, st)
    query: dict[str, Any] = dict(case.query or {})
    poisoned = 0
    if not isinstance(case.body, bytes | NotSet) and draw(st.integers(0, 3)) > 0:
        case.body, n = _poison(case.body, draw, st)
        poisoned += n
    if query and draw(st.integers(0, 3)) == 0:
        query, n = _poison(query, draw, st)
        poisoned += n
    if params and draw(st.integers(0, 3)) == 0:
        for name, value in params.items():  # the values: a poisoned name would leave its {slot} unfilled
            params[name], n = _poison(value, draw, st)
            poisoned += n
    body, ctype = _body_bytes(case)
    return _target(case, params, query), body, ctype, poisoned


def _evil_request(data: Any, st: Any, ids: dict[str, str], serial: int) -> tuple[str, str, bytes]:
    """A well-formed request to a real run or experiment whose strings carry lone surrogates or NULs where
    the server must look at them: values (top level and nested, dict keys inside values), names, error
    texts, filters, query parameters and artifact paths. (method, target, JSON body)."""
    evil = st.builds(lambda a, e, b: a + e + b, st.text("abc", max_size=3), st.sampled_from(EVIL),
                     st.text("xyz", max_size=3))
    scalar = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False)
    keys = evil | st.sampled_from(["a", "b"])
    value = st.recursive(evil | scalar, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(keys, inner, max_size=3), max_leaves=6)
    text, run, exp = data.draw(evil), "/runs/" + ids["run_id"], "/experiments/" + ids["experiment_id"]
    series = {"key": data.draw(evil | st.just("loss")), "steps": [serial], "values": [1.0],
              "timestamps": [1.0]}
    choices: list[tuple[str, str, Any]] = [
        ("POST", run + "/params", {f"k{serial}": data.draw(value)}),
        ("POST", run + "/tags", {"t": text}),
        ("POST", run + "/results", {"r": data.draw(value)}),
        ("POST", run + "/metrics", {"metrics": [series]}),
        ("POST", "/batch", {"items": [{"run_id": ids["run_id"], "params": {f"b{serial}": data.draw(value)},
                                       "tags": {"t": text}, "metrics": [series]}]}),
        ("POST", "/experiments", {"name": text, "project": data.draw(evil | st.just("default"))}),
        ("POST", exp + "/runs", {"name": data.draw(evil | st.none()), "params": {"p": data.draw(value)},
                                 "tags": {"t": data.draw(evil | st.just("v"))}}),
        ("PATCH", run, {"error": text}),
        ("POST", "/runs/search", {"filter": f"tags.t = '{text}'", "order_by": [data.draw(
            evil.map(lambda e: "params." + e) | st.just("number"))]}),
        ("GET", run + "/metric-history?key=" + quote(text), None),
        ("GET", "/experiments?project=" + quote(text), None),
        ("GET", run + "/artifacts?prefix=" + quote(text), None),
        ("PUT", run + "/artifacts/" + quote(text), b"content"),
    ]
    method, path, doc = data.draw(st.sampled_from(choices))
    if isinstance(doc, bytes) or doc is None:
        return method, API + path, doc or b""
    body = json.dumps(doc, ensure_ascii=True).encode()
    return method, API + path, body


def test_schemathesis_finds_no_server_errors(fuzz_server: Server) -> None:
    """Every endpoint, positive and negative cases, with lone surrogates and NULs mixed into bodies, query
    and path parameters (sent as JSON \\u escapes and as invalid percent-encoded UTF-8): never a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @schemathesis.serializer(wire.METRICS_MEDIA_TYPE)
    def metrics_frame(ctx: Any, value: Any) -> bytes:  # any bytes: a bad frame must get a 4xx, not a 500
        return value if isinstance(value, bytes) else json.dumps(value, default=str).encode()

    schema = schemathesis.openapi.from_dict(json.loads(send(fuzz_server.port, "GET", API + "/openapi.json",
                                                            [])[1]))
    strategies = []
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path.endswith("/events"):
            continue  # an endless stream; covered by tests/test_server.py::test_event_stream
        weight = 5 if "metric" in op.path else 1  # the metric endpoints get more of the examples
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            strategies += [op.as_strategy(generation_mode=mode)] * weight
    kinds: dict[str, list[bytes]] = {}  # one entry per (route, answer): the same defect is listed once
    counts = {"calls": 0, "poisoned": 0, "metric": 0}
    auth = (b"Authorization", f"Bearer {fuzz_server.token}".encode())

    @settings(max_examples=500, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        if data.draw(st.integers(0, 2)) == 0:  # a third: hand-aimed requests with evil strings
            method, target, body = _evil_request(data, st, fuzz_server.ids, counts["calls"])
            ctype: str | None = "application/json" if body and "/artifacts/" not in target else None
            poisoned = 1
        else:
            case = data.draw(st.sampled_from(strategies).flatmap(lambda s: s))
            method = case.method.upper()
            target, body, ctype, poisoned = _poisoned_request(case, fuzz_server.ids, data.draw, st)
        headers = [auth, (b"Content-Type", ctype.encode())] if ctype else [auth]
        status, raw = send(fuzz_server.port, method, target, headers, body)
        counts["calls"] += 1
        counts["poisoned"] += bool(poisoned)
        counts["metric"] += "metric" in target
        if status >= 500 and status != 501:
            route = re.sub(r"[0-9a-f]{32}", "{id}", target.split("?")[0])
            kinds.setdefault(f"{method} {route} -> {status} {raw[:120]!r}", []).append(body[:160])

    fuzz()
    assert counts["calls"] >= 400 and counts["poisoned"] >= 100 and counts["metric"] >= 50, counts
    report = [f"{len(bodies)} x {kind}\n    e.g. {bodies[0]!r}" for kind, bodies in sorted(kinds.items())]
    assert not kinds, f"{sum(map(len, kinds.values()))} requests got a 5xx:\n" + "\n".join(report)
