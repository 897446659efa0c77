"""User + password login (issue 16): ``labvault users passwd``, ``POST /api/v1/auth/token`` and
``labvault login URL --user NAME``. Passwords are kept as argon2 hashes only, never echoed or logged,
and a wrong one is refused under the same failure limit as a bad token; scripts store the token."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_server import API, ServerProc
from typer.testing import CliRunner

from labvault.cli import app
from labvault.errors import AuthenticationError, InvalidArgumentError, NotFoundError
from labvault.server.app import create_app
from labvault.server.auth import BAD_LOGIN, AuthStore
from labvault.server.inprocess import ASGIBridge
from labvault.server.state import ServerConfig

PASSWORD = "correct horse battery"


@pytest.fixture
def store(tmp_path: Path) -> AuthStore:
    auth = AuthStore(tmp_path / "auth.db")
    auth.add_user("ana", "writer")
    auth.add_user("bob", "reader")
    auth.set_password("ana", PASSWORD)
    return auth


def test_the_store_keeps_only_an_argon2_hash(store: AuthStore) -> None:
    rows = sqlite3.connect(store.path).execute(
        "SELECT name, password_hash FROM users ORDER BY name").fetchall()
    assert rows[0][0] == "ana" and rows[0][1].startswith("$argon2") and PASSWORD not in rows[0][1]
    assert rows[1] == ("bob", None)
    assert store.verify_login(store.check_login("ana", PASSWORD)).role == "writer"
    for user, password in (("ana", "wrong password"), ("bob", PASSWORD), ("nobody", PASSWORD), ("ana", "")):
        with pytest.raises(AuthenticationError, match=BAD_LOGIN):
            store.verify_login(store.check_login(user, password))
    with pytest.raises(InvalidArgumentError, match="8 to 1024") as info:
        store.set_password("ana", "short")
    assert "short" not in str(info.value)  # a refused password is never echoed
    with pytest.raises(NotFoundError):
        store.set_password("nobody", PASSWORD)
    store.set_password("ana", None)
    with pytest.raises(AuthenticationError):
        store.check_login("ana", PASSWORD)


def test_an_auth_store_from_before_passwords_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE users (name TEXT PRIMARY KEY, role TEXT NOT NULL, "
                       "created_at REAL NOT NULL); INSERT INTO users VALUES ('old', 'admin', 1.0);")
    conn.close()
    store = AuthStore(path)
    assert store.users() == [("old", "admin", 1.0)]
    store.set_password("old", PASSWORD)
    assert store.verify_login(store.check_login("old", PASSWORD)).user == "old"


@pytest.fixture
def client(store: AuthStore) -> Iterator[httpx.Client]:
    config = ServerConfig(auth_failure_burst=3, auth_failure_rate=0.01)
    with httpx.Client(transport=ASGIBridge(create_app("memory://", auth=store, config=config)),
                      base_url=f"http://test{API}", timeout=30) as c:
        yield c


def test_the_token_endpoint(client: httpx.Client, store: AuthStore) -> None:
    resp = client.post("/auth/token", json={"user": "ana", "password": PASSWORD, "expires_in": 3600})
    assert resp.status_code == 201, resp.text
    answer = resp.json()
    assert (answer["user"], answer["role"]) == ("ana", "writer") and answer["token"].startswith("lv_")
    assert PASSWORD not in resp.text
    me = client.get("/experiments", headers={"Authorization": f"Bearer {answer['token']}"})
    assert me.status_code == 200
    [token] = [t for t in store.tokens("ana") if t.id == answer["id"]]
    assert token.description == "password login" and token.expires_at is not None
    bad = client.post("/auth/token", json={"user": "ana", "password": "wrong password"})
    assert bad.status_code == 401 and bad.json() == {"error": "AuthenticationError", "message": BAD_LOGIN}
    typed = client.post("/auth/token", json={"user": "ana", "password": 12345678})
    assert typed.status_code == 422 and "12345678" not in typed.text


def test_failed_logins_hit_the_failure_limit(client: httpx.Client) -> None:
    codes = [client.post("/auth/token", json={"user": "ana", "password": f"guess-{i:04d}"}).status_code
             for i in range(8)]
    assert codes[:3] == [401, 401, 401] and set(codes[4:]) == {429}, codes
    limited = client.post("/auth/token", json={"user": "ana", "password": PASSWORD})
    assert limited.status_code == 429 and "Retry-After" in limited.headers  # no argon2 for this address now


def test_a_server_without_auth_has_no_logins() -> None:
    with httpx.Client(transport=ASGIBridge(create_app("memory://", insecure=True)),
                      base_url=f"http://test{API}") as c:
        assert c.post("/auth/token", json={"user": "ana", "password": PASSWORD}).status_code == 501


def test_cli_passwd_then_login_with_user(tmp_path: Path, store: AuthStore) -> None:
    env = {"LABVAULT_AUTH_DB": str(store.path), "LABVAULT_TOKEN": "",
           "LABVAULT_CONFIG_DIR": str(tmp_path / "cfg"), "COLUMNS": "200"}
    runner = CliRunner()
    result = runner.invoke(app, ["users", "passwd", "bob"], input="bob's new password\nbob's new password\n",
                           env=env)
    assert result.exit_code == 0, result.output
    assert "bob's new password" not in result.output  # prompted without echo
    server = ServerProc(["--backend", f"sqlite:///{tmp_path / 'store.db'}", "--log-level", "info"],
                        {"LABVAULT_AUTH_DB": str(store.path), "LABVAULT_TOKEN": ""}, tmp_path / "server.log")
    try:
        server.wait()
        result = runner.invoke(app, ["login", server.url, "--user", "bob", "--password-stdin"],
                               input="bob's new password\n", env=env)
        assert result.exit_code == 0, result.output
        assert "as 'bob' (reader)" in result.output
        saved = (tmp_path / "cfg").rglob("*")
        assert any(p.is_file() for p in saved)
        runs = runner.invoke(app, ["--uri", server.url, "experiments"], env=env)
        assert runs.exit_code == 0, runs.output  # the stored token works for later commands
        wrong = runner.invoke(app, ["login", server.url, "--user", "bob", "--password-stdin"],
                              input="not the password\n", env=env)
        assert wrong.exit_code == 1 and BAD_LOGIN in wrong.output
    finally:
        server.stop()
    assert "bob's new password" not in server.log() and "not the password" not in server.log()
