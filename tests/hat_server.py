"""A real Hat event server (``hat-event-server`` from PyPI ``hat-event``) for the Hat tests.

    from hat_server import hat_server, hat_uri  # noqa: F401 - pytest fixtures

One server on a free loopback port serves the whole test session (started on first use, stopped at
exit), with a temporary YAML configuration and LMDB directory: a timeseries partition keeps every
``labvault/*`` event, and the latest database keeps every event type (aimm's model events among them).
Each test gets a namespace and a model prefix of its own. Without ``hat-event`` installed the tests are
skipped, or fail under ``LABVAULT_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from server_process import free_port

from labvault.testing.plugin import require_service

HOW_TO_INSTALL = "pip install hat-event (the hat-event-server command)"
CONF = """\
type: event
name: labvault-test
server_id: 1
backend:
  module: hat.event.backends.lmdb
  db_path: {db}
  identifier: null
  flush_period: 0.5
  cleanup_period: 3600
  conditions: []
  latest:
    subscriptions: [['*']]
  timeseries:
    - order_by: TIMESTAMP
      subscriptions: [['labvault', '*']]
    - order_by: TIMESTAMP
      subscriptions: [['labvault-feed', '*']]
      limit: {{max_entries: 100000}}
modules: []
eventer_server:
  host: 127.0.0.1
  port: {port}
"""


def server_command() -> list[str]:
    """How to run ``hat-event-server`` with this interpreter's packages."""
    exe = Path(sys.executable).with_name("hat-event-server")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "hat.event.server"]


class HatServer:
    """One ``hat-event-server`` process on a free loopback port, its data in ``root``."""

    def __init__(self, root: Path, conf: str = CONF) -> None:
        self.root = root
        self.conf = conf
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "hat-event.log"

    @property
    def address(self) -> str:
        """``host:port`` of the eventer server."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Write the configuration, start the server and wait until it accepts connections."""
        conf = self.root / "event.yaml"
        conf.write_text(self.conf.format(db=self.root / "events.db", port=self.port))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*server_command(), "--conf", str(conf)], stdout=out,
                                         stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hat-event-server exited with {self.proc.returncode}:\n"
                                     f"{self.log.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError(f"hat-event-server did not listen on {self.address} in {timeout} s")

    def stop(self) -> None:
        """Stop the server (SIGTERM; SIGKILL after 15 s)."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


_server: HatServer | None = None
_lock = threading.Lock()


def hat_available() -> bool:
    return importlib.util.find_spec("hat.event") is not None


def shared_server() -> HatServer:
    """The session's server, started on first call."""
    global _server
    with _lock:
        if _server is None:
            root = Path(tempfile.mkdtemp(prefix="labvault-hat-"))
            server = HatServer(root)
            server.start()
            _server = server

            def cleanup() -> None:
                server.stop()
                shutil.rmtree(root, ignore_errors=True)

            atexit.register(cleanup)
        return _server


@pytest.fixture(scope="session")
def hat_server() -> HatServer:
    """The running Hat event server of the session."""
    require_service("Hat event server", hat_available(), HOW_TO_INSTALL)
    return shared_server()


@pytest.fixture
def hat_uri(hat_server: HatServer, tmp_path: Path) -> str:
    """A fresh namespace and model prefix on the server, artifacts in the test's temporary folder."""
    tag = uuid.uuid4().hex[:12]
    return (f"hat://{hat_server.address}?namespace=t{tag}&model_prefix=aimm/t{tag}"
            f"&artifacts=file://{tmp_path / 'blobs'}")
