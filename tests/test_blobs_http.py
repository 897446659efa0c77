"""``HTTPBlobStore`` (``labvault.blobs.http``) passes the shared blob store contract against an in-process
labvault server: a fresh memory store per test, reached through the real ASGI app and streaming bridge."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labvault.blobs.abc import BlobStore
from labvault.blobs.http import HTTPBlobStore
from labvault.server.app import create_app
from labvault.server.inprocess import serve_in_process
from labvault.store.registry import open_backend
from labvault.testing.blob_suite import BlobStoreTests

MB = 1024 * 1024


class TestHTTPBlobStore(BlobStoreTests):
    @pytest.fixture
    def store(self) -> Iterator[BlobStore]:
        # Resumable uploads from 8 MiB on, in 3 MiB parts: the suite's large objects take that path.
        with serve_in_process(create_app("memory://", insecure=True)) as uri:
            backend = open_backend(uri, resumable_threshold=8 * MB, upload_chunk_size=3 * MB)
            assert isinstance(backend.blobs, HTTPBlobStore)
            yield backend.blobs
            backend.close()
