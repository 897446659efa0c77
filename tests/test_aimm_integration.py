"""labvault as aimm's backend (``labvault.integrations.aimm``): a real ``aimm-server`` subprocess keeps its
models in a labvault store (SQLite in ``tmp_path``, and a throwaway PostgreSQL database), driven through
aimm's own REPL client; the store is then read with ``labvault.open``. Unit tests drive the backend
object directly.

The server runs through ``tests/aimm_server_compat.py`` (aimm-server's own ``main`` plus a fix for a
hat-json version skew that otherwise drops every REPL client at the first model change, whatever the
backend). aimm's client asks for a user name and password at the terminal (``input``/``getpass``): the
``login`` fixture answers them. The model type is ``aimm_plugins.Line`` (tests/aimm_plugins.py).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from server_process import free_port, stop_server
from test_conformance_postgres import fresh_database

import labvault
from labvault import serializers
from labvault.errors import NotFoundError, UnsupportedOperationError
from labvault.testing.plugin import services_required

if importlib.util.find_spec("aimm") is None and not services_required():
    pytest.skip("aimm is not installed: pip install 'labvault[aimm]'", allow_module_level=True)

from aimm.client import repl  # after the skip: aimm is an optional extra
from aimm.server import common
from aimm_plugins import LINE, Line

from labvault.integrations import aimm as lv_aimm

TESTS = Path(__file__).resolve().parent
USER, PASSWORD = "tester", "secret"


@pytest.fixture
def login(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answer the REPL client's user name and password prompts."""
    monkeypatch.setattr(builtins, "input", lambda prompt="": USER)
    monkeypatch.setattr(repl, "getpass", lambda prompt="": PASSWORD)


@pytest.fixture
def aimm_types() -> Iterator[None]:
    """Forget the labvault serializers the backend registers for aimm's types (global state) afterwards."""
    yield
    serializers.unregister(LINE)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store: a SQLite file in ``tmp_path``, or a database created on the local PostgreSQL (and
    dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with fresh_database() as uri:
        yield uri


def _conf(uri: str, port: int) -> dict[str, Any]:
    return {
        "name": "labvault-aimm-test",
        "engine": {"sigterm_timeout": 2, "max_children": 2, "check_children_period": 0.1},
        "backend": {"module": "labvault.integrations.aimm", "uri": uri},
        "control": [{"module": "aimm.server.control.repl",
                     "server": {"host": "127.0.0.1", "port": port},
                     "users": [{"username": USER,
                                "password": hashlib.sha256(PASSWORD.encode()).hexdigest()}]}],
        "plugins": {"names": ["aimm_plugins"]},
        "log": {"version": 1, "disable_existing_loggers": False,
                "handlers": {"err": {"class": "logging.StreamHandler"}},
                "root": {"level": "WARNING", "handlers": ["err"]}},
    }


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"aimm-server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"aimm-server did not listen on {port} in {timeout} s:\n{log.read_text()}")


@contextmanager
def aimm_server(root: Path, uri: str) -> Iterator[str]:
    """aimm-server with the labvault backend over ``uri`` for the ``with`` block; yields its REPL address."""
    port = free_port()
    conf, log = root / f"aimm-{port}.json", root / f"aimm-{port}.log"
    conf.write_text(json.dumps(_conf(uri, port)), encoding="utf-8")
    path = os.pathsep.join(p for p in (str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH")) if p)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(TESTS / "aimm_server_compat.py"), "--conf", str(conf)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=root,
                                env={**os.environ, "PYTHONPATH": path})
    try:
        _wait_listening(port, proc, log)
        yield f"ws://127.0.0.1:{port}/"
    finally:
        stop_server(proc)
    assert "Traceback" not in log.read_text(), log.read_text()


async def _listed(client: repl.AIMM, ids: set[int], timeout: float = 10.0) -> dict[int, str]:
    """The models the client's state lists (id -> model type), once they are ``ids``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.state
        if state is not None and set(state["models"]) == ids:
            return {i: m._model_type for i, m in state["models"].items()}
        await asyncio.sleep(0.05)
    raise AssertionError(f"the client lists {client.state} after {timeout} s, not the models {ids}")


async def _close(client: repl.AIMM) -> None:
    """Close the client and its connection (``AIMM.async_close`` leaves the connection closing, and an
    aiohttp session collected after its loop ended raises in ``__del__``)."""
    connection = client._connection
    await client.async_close()
    if connection is not None:
        await connection.async_close()


async def _first_server(address: str) -> None:
    client = repl.AIMM()
    await client.connect(address)
    try:
        added = await client.add_instance(LINE, Line(2, 1))
        created = await client.create_instance(LINE, 3.0, intercept=1.0)  # instantiated in a child process
        assert (added._instance_id, created._instance_id) == (1, 2)
        await client.update_instance(LINE, 1, Line(5, 0))
        await created.fit([0, 1, 2], [1, 3, 5])  # -> Line(2, 1)
        assert await _listed(client, {1, 2}) == {1: LINE, 2: LINE}
    finally:
        await _close(client)


async def _second_server(address: str) -> None:
    client = repl.AIMM()
    await client.connect(address)
    try:
        third = await client.add_instance(LINE, Line(0, 7))
        assert third._instance_id == 3  # ids continue from the store
        assert await _listed(client, {1, 2, 3}) == {1: LINE, 2: LINE, 3: LINE}  # two of them from the store
        # the instances aimm loaded from the store, as the REPL control publishes them (aimm's client keeps
        # only their ids and types; fit and predict fail on a model loaded at start in aimm 1.2.dev1: its
        # engine makes the per-model locks only for models set after start)
        published = client._connection.state.data["models"]
        assert {k: base64.b64decode(m["instance"]) for k, m in published.items()} == {
            "1": Line(5, 0).serialize(), "2": Line(2, 1).serialize(), "3": Line(0, 7).serialize()}
        await client.update_instance(LINE, 1, Line(6, 1))
    finally:
        await _close(client)


@pytest.mark.usefixtures("login", "aimm_types")
def test_aimm_server_keeps_its_models_in_a_labvault_store(tmp_path: Path, store_uri: str) -> None:
    with aimm_server(tmp_path, store_uri) as address:
        asyncio.run(_first_server(address))
    with aimm_server(tmp_path, store_uri) as address:  # a restarted server reads them back
        asyncio.run(_second_server(address))

    with labvault.open(store_uri) as vault:
        models = vault.get_models()
        assert [(m.instance_id, m.version, m.model_type, m.format) for m in models] == [
            (1, 3, LINE, "registered"), (2, 2, LINE, "registered"), (3, 1, LINE, "registered")]
        with pytest.raises(UnsupportedOperationError, match=re.escape(LINE)):  # labvault alone cannot
            vault.load_model(1)
        assert lv_aimm.register_serializers([LINE]) == [LINE]  # aimm's plugins (imported here) can
        assert [vault.load_model(1, v) for v in (1, 2, 3)] == [Line(2, 1), Line(5, 0), Line(6, 1)]
        assert [vault.load_model(2, v) for v in (1, 2)] == [Line(3, 1), Line(2, 1)]
        assert vault.load_model(3) == Line(0, 7)
        assert vault.get_model(2, 1).model_type == LINE
        assert [m.version for m in vault.model_versions(1)] == [1, 2, 3]
        # the payload is aimm's own serialized bytes (content-addressed: unchanged versions share them)
        assert vault.backend.blobs.get_content(vault.get_model(1, 2).digest) == Line(5, 0).serialize()


# -- the backend object itself --------------------------------------------------------------------------
def _backend_conf(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"module": "labvault.integrations.aimm", "uri": f"sqlite:///{tmp_path / 'unit.db'}", **extra}


@pytest.mark.parametrize(("conf", "key"), [
    ({"module": "labvault.integrations.aimm"}, "'uri' is a required property"),
    ({"module": "labvault.integrations.aimm", "uri": 5}, "key 'uri'"),
    ({"module": "labvault.integrations.aimm", "uri": ""}, "key 'uri'"),
    ({"module": "labvault.integrations.aimm", "uri": "memory://", "url": "x"}, "'url' was unexpected"),
    ({"module": "labvault.integrations.aimm", "uri": "memory://", "artifacts": 1}, "key 'artifacts'"),
    ({"module": "labvault.integrations.aimm", "uri": "memory://", "trusted": "yes"}, "key 'trusted'"),
    ({"uri": "memory://"}, "'module' is a required property"),
    ([], "is not of type 'object'"),
])
def test_an_invalid_config_is_refused_naming_the_key(conf: Any, key: str) -> None:
    with pytest.raises(jsonschema.ValidationError, match=r"integrations\.aimm backend config") as info:
        asyncio.run(lv_aimm.create(conf, None))
    assert key in str(info.value)
    with pytest.raises(jsonschema.ValidationError):
        lv_aimm.create_subscription(conf)


def test_a_valid_config_passes_and_needs_no_hat_events(tmp_path: Path) -> None:
    conf = _backend_conf(tmp_path, artifacts=None, trusted=False)
    lv_aimm.validate_config(conf)
    assert lv_aimm.create_subscription(conf) == []


def test_a_bad_store_uri_fails_at_create() -> None:
    with pytest.raises(labvault.LabvaultError):
        asyncio.run(lv_aimm.create({"module": "labvault.integrations.aimm", "uri": "nope://x"}, None))


@pytest.mark.usefixtures("aimm_types")
def test_create_update_and_get_models_through_the_backend(tmp_path: Path) -> None:
    seen: list[Any] = []

    async def scenario() -> list[Any]:
        backend = await lv_aimm.create(_backend_conf(tmp_path), None)
        try:
            assert isinstance(backend, common.Backend)
            backend.register_model_change_cb(seen.append)
            first = await backend.create_model(LINE, Line(1, 1))
            second = await backend.create_model(LINE, Line(2, 2))
            assert (first.instance_id, second.instance_id) == (1, 2)
            await backend.update_model(first._replace(instance=Line(9, 9)))
            await _until(lambda: len({(m.instance_id, m.instance) for m in seen}) == 3)
            with pytest.raises(NotFoundError):
                await backend.update_model(common.Model(instance=Line(), model_type=LINE, instance_id=99))
            with pytest.raises(UnsupportedOperationError, match=r"no\.such\.Type"):
                await backend.create_model("no.such.Type", object())
            return list(await backend.get_models())
        finally:
            await backend.async_close()

    assert asyncio.run(scenario()) == [common.Model(instance=Line(9, 9), model_type=LINE, instance_id=1),
                                       common.Model(instance=Line(2, 2), model_type=LINE, instance_id=2)]
    # labvault's subscription delivers at least once, in order per model
    assert {(m.instance_id, m.instance) for m in seen} == {(1, Line(1, 1)), (2, Line(2, 2)), (1, Line(9, 9))}
    with labvault.open(_backend_conf(tmp_path)["uri"]) as vault:
        assert [(m.instance_id, m.version) for m in vault.get_models()] == [(1, 2), (2, 1)]
        assert vault.load_model(1, 1) == Line(1, 1)


async def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not so after {timeout} s"
        await asyncio.sleep(0.02)


@pytest.mark.usefixtures("aimm_types")
def test_models_another_vault_stores_reach_the_aimm_callbacks(tmp_path: Path) -> None:
    """labvault's register_model_change_cb tells the backend of every writer's models, not just its own."""
    seen: list[Any] = []

    async def scenario() -> None:
        backend = await lv_aimm.create(_backend_conf(tmp_path), None)
        try:
            backend.register_model_change_cb(seen.append)
            lv_aimm.register_serializers([LINE])
            with labvault.open(_backend_conf(tmp_path)["uri"]) as other:
                other.create_model(LINE, Line(8, 1))  # through labvault, with aimm's serializer
                other.create_model(None, [1, 2])  # a type aimm cannot handle: not reported
            await _until(lambda: bool(seen))
            await asyncio.sleep(0.3)
        finally:
            await backend.async_close()

    asyncio.run(scenario())
    assert {(m.instance_id, m.model_type, m.instance) for m in seen} == {(1, LINE, Line(8, 1))}


@pytest.mark.usefixtures("aimm_types")
def test_labvault_reads_aimm_models_once_it_has_the_plugins(tmp_path: Path) -> None:
    async def store() -> None:
        backend = await lv_aimm.create(_backend_conf(tmp_path), None)
        try:
            await backend.create_model(LINE, Line(4, 2))
        finally:
            await backend.async_close()

    asyncio.run(store())
    serializers.unregister(LINE)  # as a fresh process would be
    with labvault.open(_backend_conf(tmp_path)["uri"]) as vault:
        with pytest.raises(UnsupportedOperationError, match=re.escape(LINE)):
            vault.load_model(1)
        assert lv_aimm.register_serializers() == [LINE]  # every type aimm's loaded plugins handle
        assert lv_aimm.register_serializers([LINE, "no.such.Type"]) == []  # registered already / unknown
        assert vault.load_model(1) == Line(4, 2)


@pytest.mark.usefixtures("aimm_types")
def test_models_aimm_cannot_handle_are_left_out(tmp_path: Path) -> None:
    uri = _backend_conf(tmp_path)["uri"]
    with labvault.open(uri) as vault:
        vault.create_model(None, {"lr": 0.1}, name="labvault-own")  # type dict: no aimm plugin

    async def listed() -> list[Any]:
        backend = await lv_aimm.create(_backend_conf(tmp_path), None)
        try:
            created = await backend.create_model(LINE, Line(1, 0))
            assert created.instance_id == 2  # ids stay shared with labvault's own models
            return list(await backend.get_models())
        finally:
            await backend.async_close()

    assert [m.instance_id for m in asyncio.run(listed())] == [2]
