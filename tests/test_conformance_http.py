"""The HTTP backend runs the whole conformance suite twice: against the server app in this process (no
socket; ``asgi://`` URIs over a streaming ASGI bridge) and against a real ``labvault server`` subprocess
on a loopback port (one server for the module, over SQLite, with token authentication). The hook checks
run on both too, their raw medium the served store: the in-process server's backend, the subprocess's
SQLite tables.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from raw_media import ServedStore, SQLTables

import labvault
from labvault.server.app import create_app
from labvault.server.auth import AuthStore
from labvault.server.inprocess import serve_in_process
from labvault.store.abc import Backend
from labvault.testing import BackendHookTests, BackendTests


@pytest.fixture(scope="module")
def auth_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[AuthStore, str]:
    store = AuthStore(tmp_path_factory.mktemp("auth") / "auth.db")
    store.add_user("suite", "admin")
    _, token = store.create_token("suite")
    return store, token


class TestInProcessHTTPBackend(BackendTests):
    """Server app over a fresh memory store per test, reached through the in-process bridge."""

    @pytest.fixture
    def uri(self, auth_store: tuple[AuthStore, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
        store, token = auth_store
        monkeypatch.setenv("LABVAULT_TOKEN", token)
        with serve_in_process(create_app("memory://", auth=store)) as uri:
            yield uri


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0, log: Path | None = None,
                 **kw: object) -> None:
    """Wait until the server answers its health check; show its output (pipe or ``log`` file) if it died."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            if log is not None:
                out = log.read_text(errors="replace")
            else:
                out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"server exited with {proc.returncode}:\n{out}")
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1.0, **kw).status_code == 200:  # type: ignore[arg-type]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server at {url} did not become healthy in {timeout} s")


@pytest.fixture(scope="module")
def socket_server_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the socket server's auth database, store (``store.db``) and log."""
    return tmp_path_factory.mktemp("http-server")


@pytest.fixture(scope="module")
def socket_server(socket_server_root: Path) -> Iterator[tuple[str, str]]:
    """``labvault server`` on a free loopback port over SQLite; yields (url, admin token)."""
    root = socket_server_root
    auth = AuthStore(root / "auth.db")
    auth.add_user("suite", "admin")
    _, token = auth.create_token("suite")
    auth.close()
    port = free_port()
    env = {**os.environ, "LABVAULT_AUTH_DB": str(root / "auth.db"), "LABVAULT_TOKEN": ""}
    log = root / "server.log"
    # The output goes to a file: a pipe nobody reads fills up (64 KiB of logged tracebacks) and the
    # server then blocks on its next log line, hanging every request.
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labvault", "server", "--backend", f"sqlite:///{root / 'store.db'}",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log=log)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
