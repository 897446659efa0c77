"""The import paths of before the restructure keep working for one release, warning where things live now
(docs/development.md, "Writing a backend plugin", still shows ``labvault.backends`` for the entry-point
group)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

OLD_PATHS = [
    ("labvault.api", "Vault", "labvault.client.vault"),
    ("labvault.api", "Run", "labvault.client.run"),
    ("labvault.gc", "collect_garbage", "labvault.client.gc"),
    ("labvault.backends.base", "Backend", "labvault.store.abc"),
    ("labvault.backends.base", "BlobStore", "labvault.blobs.abc"),
    ("labvault.backends.base", "ChangeFeed", "labvault.store.feed"),
    ("labvault.backends.base", "check_options", "labvault._uri"),
    ("labvault.backends.registry", "register_backend", "labvault._registry"),
    ("labvault.backends.memory", "MemoryBackend", "labvault.store.memory"),
    ("labvault.backends.memory", "MemoryBlobStore", "labvault.blobs.memory"),
    ("labvault.backends.localfs", "FileBlobStore", "labvault.blobs.local"),
    ("labvault.backends.localfs", "atomic_writer", "labvault._fs"),
    ("labvault.backends.s3", "S3BlobStore", "labvault.blobs.s3"),
    ("labvault.backends.file", "FileBackend", "labvault.store.file.backend"),
    ("labvault.backends.file", "upgrade", "labvault.store.file.upgrade"),
    ("labvault.backends.file", "seg_name", "labvault.store.file.segments"),
    ("labvault.backends.file", "encode_record", "labvault.store.file.segments"),
    ("labvault.backends.sql", "SQLBackend", "labvault.store.sql.backend"),
    ("labvault.backends.sql", "SQLBlobStore", "labvault.blobs.sql"),
    ("labvault.backends.sql", "TieredBlobStore", "labvault.blobs.tiered"),
    ("labvault.backends.sql", "SMALL_BLOB_LIMIT", "labvault.blobs.tiered"),
    ("labvault.backends.sql", "schema_metadata", "labvault.store.sql.schema"),
    ("labvault.backends.sql", "SCHEMA_VERSION", "labvault.store.sql.schema"),
    ("labvault.backends.sql", "upgrade", "labvault.store.sql.migrations"),
    ("labvault.backends.sql", "MIGRATIONS", "labvault.store.sql.migrations"),
    ("labvault.backends.postgresql", "PostgresBackend", "labvault.store.sql.postgresql"),
    ("labvault.backends.redis", "RedisBackend", "labvault.store.redis.backend"),
    ("labvault.backends.redis", "RedisBlobStore", "labvault.blobs.redis"),
    ("labvault.backends.redis", "validate_prefix", "labvault.blobs.redis_connection"),
    ("labvault.backends.redis", "BATCH_MEMORY", "labvault.store.redis.scripts"),
    ("labvault.backends.objectstore", "S3Backend", "labvault.store.objectstore"),
    ("labvault.backends.http", "HTTPBackend", "labvault.store.http.backend"),
    ("labvault.server.wire", "encode_series", "labvault.wire.codecs"),
    ("labvault.server.wire", "status_for", "labvault.wire.errors"),
    ("labvault.backends.http", "save_token", "labvault.store.http.credentials"),
    ("labvault.backends.http", "HTTPBlobStore", "labvault.blobs.http"),
    ("labvault.testing.suite", "BackendTests", "labvault.testing.backend_suite"),
    ("labvault.testing.blobs_suite", "BlobStoreTests", "labvault.testing.blob_suite"),
]


@pytest.mark.parametrize(("old", "name", "new"), OLD_PATHS, ids=[f"{o}.{n}" for o, n, _ in OLD_PATHS])
def test_old_import_paths_give_the_same_objects_and_warn(old: str, name: str, new: str) -> None:
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        obj = getattr(module, name)
    assert obj is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError, match="moved to"):
        module.no_such_name  # noqa: B018


def test_a_backend_written_against_the_old_paths_still_registers() -> None:
    """A third-party backend module of the old style (``from labvault.backends.base import Backend``)
    still subclasses the one ``Backend`` and registers its scheme."""
    code = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "from labvault.backends.base import Backend\n"
        "from labvault.backends.memory import MemoryBackend\n"
        "class Old(MemoryBackend, scheme='oldstyle'):\n"
        "    pass\n"
        "import labvault\n"
        "from labvault.store.abc import Backend as New\n"
        "assert Backend is New\n"
        "v = labvault.open('oldstyle://x')\n"
        "print(type(v.backend).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Old"
