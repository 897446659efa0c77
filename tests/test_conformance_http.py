"""The HTTP backend runs the whole conformance suite twice: against the server app in this process (no
socket; ``asgi://`` URIs over a streaming ASGI bridge) and against a real ``labvault server`` subprocess
on a loopback port (one server for the module, over SQLite, with token authentication). The hook checks
run on both too, their raw medium the served store: the in-process server's backend, the subprocess's
SQLite tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from raw_media import ServedStore, SQLTables
from server_process import add_admin, running_server

import labvault
from labvault.server.app import create_app
from labvault.server.auth import AuthStore
from labvault.server.inprocess import serve_in_process
from labvault.store.abc import Backend
from labvault.testing import BackendHookTests, BackendTests


@pytest.fixture(scope="module")
def auth_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[AuthStore, str]:
    store, _, token = add_admin(tmp_path_factory.mktemp("auth") / "auth.db", "suite")
    return store, token


class TestInProcessHTTPBackend(BackendTests):
    """Server app over a fresh memory store per test, reached through the in-process bridge."""

    @pytest.fixture
    def uri(self, auth_store: tuple[AuthStore, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
        store, token = auth_store
        monkeypatch.setenv("LABVAULT_TOKEN", token)
        with serve_in_process(create_app("memory://", auth=store)) as uri:
            yield uri


@pytest.fixture(scope="module")
def socket_server_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the socket server's auth database, store (``store.db``) and log."""
    return tmp_path_factory.mktemp("http-server")


@pytest.fixture(scope="module")
def socket_server(socket_server_root: Path) -> Iterator[tuple[str, str]]:
    """``labvault server`` on a free loopback port over SQLite; yields (url, admin token)."""
    root = socket_server_root
    auth, _, token = add_admin(root / "auth.db", "suite")
    auth.close()
    with running_server(root, log=root / "server.log") as (url, _):
        yield url, token


class TestSocketHTTPBackend(BackendTests):
    """A real server process on loopback: every test starts from an emptied store."""

    @pytest.fixture
    def uri(self, socket_server: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
        url, token = socket_server
        monkeypatch.setenv("LABVAULT_TOKEN", token)  # inherited by the suite's worker processes
        with labvault.open(url) as vault:
            for exp in vault.backend.list_experiments():  # the models' hidden project too
                vault.backend.delete_experiment(exp.id)
        return url


class TestInProcessHTTPBackendHooks(ServedStore, BackendHookTests):
    """The client's hooks against the in-process server; the raw medium is the memory store it serves."""

    @pytest.fixture
    def served(self, auth_store: tuple[AuthStore, str], monkeypatch: pytest.MonkeyPatch
               ) -> Iterator[tuple[str, Backend]]:
        store, token = auth_store
        monkeypatch.setenv("LABVAULT_TOKEN", token)
        backend = labvault.open_backend("memory://")
        with serve_in_process(create_app(backend, auth=store)) as uri:
            yield uri, backend
        backend.close()

    @pytest.fixture
    def uri(self, served: tuple[str, Backend]) -> str:
        return served[0]

    @pytest.fixture
    def raw(self, served: tuple[str, Backend]) -> Backend:
        return served[1]


class TestSocketHTTPBackendHooks(SQLTables, BackendHookTests):
    """The client's hooks against the server process; the raw medium is its SQLite database."""

    @pytest.fixture
    def uri(self, socket_server: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
        url, token = socket_server
        monkeypatch.setenv("LABVAULT_TOKEN", token)
        return url

    @pytest.fixture
    def raw(self, socket_server_root: Path) -> Iterator[Any]:
        import sqlalchemy as sa

        engine = sa.create_engine(f"sqlite:///{socket_server_root / 'store.db'}")
        yield engine
        engine.dispose()


def test_socket_server_is_really_a_socket(socket_server: tuple[str, str], tmp_path: Path) -> None:
    url, token = socket_server
    with labvault.open(url, token=token) as vault:
        assert vault.backend.check_online()
        info = vault.backend.server_info()
    assert info["backend"] == "sqlite" and info["auth"] == "token" and info["user"]["role"] == "admin"
