"""Helpers for the tests that run a real ``labvault server`` subprocess on a loopback port: a free port, an
auth database with an admin, starting the server over SQLite (healthy before it returns) and stopping it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from labvault.server.auth import AuthStore


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


def add_admin(db: Path, user: str) -> tuple[AuthStore, str, str]:
    """The auth database ``db`` with ``user`` added as an admin: (the open store, a token's id, the token)."""
    store = AuthStore(db)
    store.add_user(user, "admin")
    token_id, token = store.create_token(user)
    return store, token_id, token


def start_server(root: Path, port: int, *options: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """``labvault server`` on ``127.0.0.1:port`` over ``root/store.db``, its auth database ``root/auth.db``,
    one worker, logging warnings; returns once it is healthy (stopped again if it never gets there).

    Its output goes to a pipe, or to the file ``log``: a pipe nobody reads fills up (64 KiB of logged
    tracebacks) and the server then blocks on its next log line, hanging every request.
    """
    args = [sys.executable, "-m", "labvault", "server", "--backend", f"sqlite:///{root / 'store.db'}",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--log-level", "warning", *options]
    env = {**os.environ, "LABVAULT_AUTH_DB": str(root / "auth.db"), "LABVAULT_TOKEN": ""}
    if log is None:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    else:
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log=log)
    except BaseException:
        stop_server(proc)
        raise
    return proc


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server; kill it if it has not exited 15 s later."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def running_server(root: Path, *options: str, log: Path | None = None
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``start_server`` on a free port for the ``with`` block: (its URL, the process); stopped afterwards."""
    port = free_port()
    proc = start_server(root, port, *options, log=log)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop_server(proc)
