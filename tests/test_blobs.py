"""The BlobStore contract on the file, memory, S3, SQL, tiered and Redis stores; registration and
``labvault.blobs.open``."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from s3_server import s3_server, s3_url  # noqa: F401 - pytest fixtures
from test_conformance_redis import fresh_redis_uri

import labvault
import labvault.blobs
from labvault import _registry as registry
from labvault.blobs.abc import BlobStore
from labvault.blobs.local import PACK_BLOB_LIMIT, PACK_DIR, PACK_MIN_BLOBS, FileBlobStore
from labvault.blobs.memory import MemoryBlobStore
from labvault.blobs.sql import SQLBlobStore
from labvault.blobs.tiered import TieredBlobStore
from labvault.errors import (
    AlreadyExistsError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    NotFoundError,
)
from labvault.store.sql.backend import SQLBackend
from labvault.testing.blob_suite import BlobStoreTests


class TestFileBlobStore(BlobStoreTests):
    @pytest.fixture
    def store(self, tmp_path: Path) -> FileBlobStore:
        return FileBlobStore(tmp_path / "blobs")

    def test_creates_parents_and_leaves_no_temp_files(self, store: FileBlobStore) -> None:
        store.put("deep/ly/nested/key", b"x")
        assert (store.root / "deep" / "ly" / "nested" / "key").read_bytes() == b"x"
        with pytest.raises(ConflictError):
            store.put("deep/ly/nested/key", b"y", if_absent=True)
        leftovers = [p.name for p in store.root.rglob("*") if p.name.endswith(".tmp")]
        assert leftovers == []

    def test_put_content_of_a_path_is_hashed_as_written(self, store: FileBlobStore, tmp_path: Path) -> None:
        data = os.urandom(40 * 1024 * 1024 + 12345)  # several pipeline chunks and a ragged end
        src = tmp_path / "weights.bin"
        src.write_bytes(data)
        digest, size = store.put_content(src)
        assert (digest, size) == (hashlib.sha256(data).hexdigest(), len(data))
        assert (store.root / store.digest_key(digest)).read_bytes() == data
        empty = tmp_path / "empty.bin"
        empty.write_bytes(b"")
        assert store.put_content(empty) == (hashlib.sha256(b"").hexdigest(), 0)
        with pytest.raises(InvalidArgumentError, match="not a readable file"):
            store.put_content(tmp_path)  # a directory: refused by name, nothing stored
        assert sorted(p.name for p in (store.root / "tmp").iterdir()) == []

    @pytest.mark.multiprocess
    def test_conditional_writes_are_atomic_across_processes(self, store: FileBlobStore) -> None:
        store.put("counter", b"0")
        script = textwrap.dedent(f"""
            import sys
            from labvault.blobs.local import FileBlobStore
            from labvault.errors import ConflictError
            store = FileBlobStore({str(store.root)!r})
            try:
                store.put("winner", sys.argv[1].encode(), if_absent=True)
                print("won")
            except ConflictError:
                print("lost")
            for _ in range(10):
                while True:
                    etag = store.info("counter").etag
                    value = int(store.get("counter"))
                    try:
                        store.put("counter", str(value + 1).encode(), if_match=etag)
                        break
                    except ConflictError:
                        pass
        """)
        procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], stdout=subprocess.PIPE, text=True)
                 for i in range(4)]
        outs = [p.communicate(timeout=120)[0].strip() for p in procs]
        assert all(p.returncode == 0 for p in procs)
        assert sorted(outs) == ["lost", "lost", "lost", "won"]
        assert store.get("counter") == b"40"


def _packs(store: FileBlobStore) -> list[Path]:
    return sorted((store.root / PACK_DIR).glob("*.pack"))


def _loose(store: FileBlobStore) -> list[Path]:
    return [p for p in (store.root / "sha256").rglob("*") if p.is_file()]


class TestFileBlobStorePacks:
    """Small blobs stored in one batch go into a pack file; every read path finds them, in any process."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> FileBlobStore:
        return FileBlobStore(tmp_path / "blobs")

    def test_a_batch_of_small_blobs_is_one_pack(self, store: FileBlobStore, tmp_path: Path) -> None:
        payloads = [f"small {i}".encode() * (i + 1) for i in range(20)]
        results = store.put_content_many(payloads)
        assert results == [(hashlib.sha256(p).hexdigest(), len(p)) for p in payloads]
        assert len(_packs(store)) == 1 and _loose(store) == []
        for store_view in (store, FileBlobStore(store.root)):  # this process, and a fresh index
            for (digest, size), data in zip(results, payloads, strict=True):
                key = store_view.digest_key(digest)
                assert store_view.exists(key) and store_view.get(key) == data
                assert store_view.get_content(digest) == data
                with store_view.open_content(digest) as fh:
                    assert fh.read() == data
                info = store_view.info(key)
                assert (info.size, info.digest) == (size, digest)
                out = tmp_path / f"out-{digest}"
                assert store_view.copy_content_to(digest, out) == size and out.read_bytes() == data
                out.unlink()
            assert store_view.list("sha256/") == sorted(store_view.digest_key(d) for d, _ in results)
            assert [b.key for b in store_view.scan("sha256")] == store_view.list("sha256/")
        assert store.list() == store.list("sha256/")  # the pack folder is not listed as keys

    def test_stored_content_is_not_packed_twice(self, store: FileBlobStore) -> None:
        payloads = [f"blob {i}".encode() for i in range(10)]
        store.put_content_many(payloads)
        store.put_content_many([*payloads, b"one more"])  # one new blob: not worth a pack, a loose file
        assert len(_packs(store)) == 1 and len(_loose(store)) == 1
        digest = hashlib.sha256(payloads[0]).hexdigest()
        assert FileBlobStore(store.root).put_content(payloads[0])[0] == digest
        assert len(_loose(store)) == 1  # found in the pack by a fresh index: not stored again
        few = [f"few {i}".encode() for i in range(PACK_MIN_BLOBS - 1)]
        store.put_content_many(few)
        assert len(_packs(store)) == 1 and len(_loose(store)) == 1 + len(few)
        big = os.urandom(PACK_BLOB_LIMIT + 1)
        small = [f"mixed {i}".encode() for i in range(PACK_MIN_BLOBS)]
        store.put_content_many([big, *small])
        assert len(_packs(store)) == 2 and store.get_content(hashlib.sha256(big).hexdigest()) == big

    def test_delete_rewrites_the_pack_and_stale_readers_see_it(self, store: FileBlobStore) -> None:
        payloads = [f"value {i}".encode() for i in range(12)]
        digests = [d for d, _ in store.put_content_many(payloads)]
        stale = FileBlobStore(store.root)
        assert stale.get_content(digests[0]) == payloads[0]  # loads the index of the first pack
        (first,) = _packs(store)
        store.delete_many([store.digest_key(d) for d in digests[:4]])
        (second,) = _packs(store)
        assert second != first and not first.exists()
        for view in (store, stale, FileBlobStore(store.root)):
            for digest, data in zip(digests, payloads, strict=True):
                key = view.digest_key(digest)
                if digest in digests[:4]:
                    assert not view.exists(key)
                    with pytest.raises(NotFoundError):
                        view.get(key)
                else:
                    assert view.get_content(digest) == data
        store.delete(store.digest_key(digests[4]))
        stale.delete_many([stale.digest_key(d) for d in digests[5:]])
        assert _packs(store) == [] and store.list() == []
        store.delete(store.digest_key(digests[0]))  # deleting a missing key is not an error

    def test_a_corrupt_or_torn_pack_is_detected(self, store: FileBlobStore,
                                                caplog: pytest.LogCaptureFixture) -> None:
        payloads = [f"precious {i}".encode() for i in range(10)]
        digests = [d for d, _ in store.put_content_many(payloads)]
        (pack,) = _packs(store)
        raw = bytearray(pack.read_bytes())
        raw[0] ^= 0xFF  # flip a byte of the first blob behind the store's back
        pack.write_bytes(bytes(raw))
        with pytest.raises(CorruptDataError, match=digests[0]):
            FileBlobStore(store.root).get_content(digests[0])
        assert FileBlobStore(store.root).get_content(digests[1]) == payloads[1]
        pack.write_bytes(bytes(raw[:-5]))  # torn: its index trailer is gone
        fresh = FileBlobStore(store.root)
        with pytest.raises(NotFoundError):
            fresh.get_content(digests[1])
        assert "ignoring pack" in caplog.text
        assert fresh.put_content(payloads[1])[0] == digests[1]  # stored again, as a loose file
        assert fresh.get_content(digests[1]) == payloads[1]

    def test_the_pack_folder_is_not_a_key(self, store: FileBlobStore) -> None:
        for key in (PACK_DIR, f"{PACK_DIR}/x.pack"):
            with pytest.raises(InvalidArgumentError, match="pack files"):
                store.put(key, b"x")
            with pytest.raises(InvalidArgumentError, match="pack files"):
                store.get(key)

    @pytest.mark.multiprocess
    def test_packs_written_by_other_processes_are_found(self, store: FileBlobStore) -> None:
        store.put_content(b"loaded before")
        assert store.list("sha256/")  # this store's index is now built
        script = textwrap.dedent(f"""
            import sys
            from labvault.blobs.local import FileBlobStore
            store = FileBlobStore({str(store.root)!r})
            print(" ".join(d for d, _ in store.put_content_many(
                [f"from {{sys.argv[1]}}: {{i}}".encode() for i in range(10)])))
        """)
        procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], stdout=subprocess.PIPE, text=True)
                 for i in range(3)]
        outs = [p.communicate(timeout=120)[0].split() for p in procs]
        assert all(p.returncode == 0 for p in procs)
        assert len(_packs(store)) == 3
        for i, digests in enumerate(outs):
            assert [store.get_content(d) for d in digests] == [f"from {i}: {j}".encode() for j in range(10)]


class TestMemoryBlobStore(BlobStoreTests):
    @pytest.fixture
    def store(self) -> MemoryBlobStore:
        return MemoryBlobStore()


class TestSQLBlobStore(BlobStoreTests):
    """Blobs inside an SQLite database (on PostgreSQL: tests/test_postgres_backend.py)."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLBlobStore]:
        backend = SQLBackend.from_uri(f"sqlite:///{tmp_path / 'blobs.db'}")
        yield SQLBlobStore(backend)
        backend.close()


class TestTieredBlobStore(BlobStoreTests):
    """SQLite's default artifact store: blobs up to 64 KiB in the database, larger ones in a folder."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[BlobStore]:
        backend = SQLBackend.from_uri(f"sqlite:///{tmp_path / 'lv.db'}")
        assert isinstance(backend.blobs, TieredBlobStore)
        yield backend.blobs
        backend.close()


class TestTieredBlobStoreOverMemory(BlobStoreTests):
    """Two memory stores and a 16-byte limit: the suite's small payloads cross the limit both ways."""

    @pytest.fixture
    def store(self) -> TieredBlobStore:
        return TieredBlobStore(MemoryBlobStore(), MemoryBlobStore(), limit=16)


class TestS3BlobStore(BlobStoreTests):
    @pytest.fixture
    def store(self, s3_url: str) -> Iterator[BlobStore]:  # noqa: F811 - the imported fixture
        with labvault.blobs.open(s3_url, part_size="5MiB", multipart_threshold="5MiB",
                                 max_concurrency=4) as store:
            yield store

    @pytest.fixture
    def large_size(self) -> int:
        return 11 * 1024 * 1024  # three 5 MiB parts


class TestRedisBlobStore(BlobStoreTests):
    """The Redis backend's chunked blob store on its own connection (the server on 127.0.0.1:6379)."""

    @pytest.fixture
    def store(self) -> Iterator[BlobStore]:
        pytest.importorskip("redis")
        from labvault.blobs.redis import BLOB_SCRIPTS, RedisBlobStore
        from labvault.blobs.redis_connection import RedisConnection, parse_uri

        uris = fresh_redis_uri()  # a prefix of its own, every key under it deleted afterwards
        conn = RedisConnection(parse_uri(next(uris), {"chunk_size": 64 * 1024}), BLOB_SCRIPTS)
        try:
            yield RedisBlobStore(conn)
        finally:
            conn.close()
            next(uris, None)

    @pytest.fixture
    def large_size(self) -> int:
        return 3 * 1024 * 1024  # 48 chunks of 64 KiB, read 4 per round trip


class TestS3ManySmallObjects:
    """``put_many`` / ``put_content_many`` of small in-memory objects go through obstore: the same results,
    errors, bucket creation, deduplication and touch rules as one ``put`` / ``put_content`` at a time."""

    @pytest.mark.parametrize("client", ["obstore", "boto3"])
    def test_obstore_path_stores_what_boto3_reads_back(self, s3_url: str, client: str) -> None:  # noqa: F811
        items = [(f"k/{i}", os.urandom(100 + i)) for i in range(40)]
        with labvault.blobs.open(s3_url) as store:
            if client == "boto3":  # as without obstore installed
                store._small_obj = False  # type: ignore[attr-defined]
            assert (store._small_client() is not None) == (client == "obstore")  # type: ignore[attr-defined]
            assert store.put_many(items, workers=8) == [len(v) for _, v in items]
            digests = store.put_content_many([v for _, v in items[:5]])
            assert [store.get_content(d) for d, _ in digests] == [v for _, v in items[:5]]
            # boto3 reads verify the SHA-256 the server stored with each object (sent by obstore)
            assert store.get_many([k for k, _ in items]) == [v for _, v in items]
            assert store.info("k/7").size == 107
            assert sorted(store.list("k/")) == sorted(k for k, _ in items)

    def test_bucket_is_created_by_the_first_put_many(self, s3_server: Any) -> None:  # noqa: F811
        import uuid

        import boto3

        bucket = f"lv-new-{uuid.uuid4().hex[:12]}"
        try:
            with labvault.blobs.open(f"s3://{bucket}/p?endpoint_url={s3_server.endpoint}") as store:
                assert store.put_many([("a", b"1"), ("b", b"22")]) == [1, 2]
                assert store.get("b") == b"22"
        finally:
            client = boto3.client("s3", endpoint_url=s3_server.endpoint)
            for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
            client.delete_bucket(Bucket=bucket)

    def test_put_content_many_deduplicates_repairs_and_touches(self, s3_url: str,  # noqa: F811
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
        import time

        import labvault.blobs.s3 as s3_module

        payloads = [os.urandom(64) for _ in range(10)]
        with labvault.blobs.open(s3_url) as store:
            first = store.put_content_many(payloads)
            assert first == [(hashlib.sha256(p).hexdigest(), 64) for p in payloads]
            again = store.put_content_many([*payloads, b"one new blob"])  # conditional PUTs answer 412
            assert again[:10] == first and store.get_content(again[10][0]) == b"one new blob"
            store.put(store.digest_key(first[0][0]), b"damaged")  # the wrong bytes at an address
            store.put_content_many(payloads[:2])
            assert store.get_content(first[0][0]) == payloads[0]
            monkeypatch.setattr(s3_module, "TOUCH_AFTER_SECONDS", 0.0)
            before = store.info(store.digest_key(first[5][0])).modified
            time.sleep(1.1)  # S3 times have one-second resolution
            store.put_content_many(payloads[5:7])
            assert store.info(store.digest_key(first[5][0])).modified > before

    def test_refused_credentials_are_an_authentication_error(self, s3_url: str,  # noqa: F811
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
        from labvault.errors import AuthenticationError

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with labvault.blobs.open(s3_url, retry_deadline=0) as store:
            assert store._small_client() is not None  # type: ignore[attr-defined]
            with pytest.raises(AuthenticationError, match=r"refused the credentials"):
                store.put_many([("a", b"1"), ("b", b"2")])
            with pytest.raises(AuthenticationError):
                store.put_content_many([b"1", b"2"])


# -- opening by URL and registration -----------------------------------------------------------------------
def test_open_file_urls_and_bare_paths(tmp_path: Path) -> None:
    for url in (str(tmp_path / "a"), f"file://{tmp_path / 'b'}", tmp_path.joinpath("c").as_uri()):
        store = labvault.blobs.open(url)
        assert isinstance(store, FileBlobStore)
        store.put("x/y", b"1")
        assert store.get("x/y") == b"1"
    assert (tmp_path / "a" / "x" / "y").is_file()


def test_open_memory_and_options() -> None:
    assert isinstance(labvault.blobs.open("memory://"), MemoryBlobStore)
    store = labvault.blobs.open("s3://some-bucket/pre/fix?region=eu-west-1", part_size="8MiB")
    assert store.part_size == 8 * 1024 * 1024  # type: ignore[attr-defined]
    assert store.url == "s3://some-bucket/pre/fix"  # type: ignore[attr-defined]


def test_unknown_scheme_lists_known_ones() -> None:
    with pytest.raises(InvalidArgumentError) as err:
        labvault.blobs.open("nosuch://x")
    message = str(err.value)
    assert "'nosuch'" in message
    for scheme in ("file", "memory", "s3"):
        assert scheme in message
    assert {"file", "memory", "s3"} <= set(labvault.blobs.known_schemes())


@pytest.mark.parametrize("url", ["", 5, None])
def test_open_rejects_non_urls(url: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        labvault.blobs.open(url)


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(registry._blob_stores)
    yield
    registry._blob_stores.clear()
    registry._blob_stores.update(saved)


class _DictStore(BlobStore):
    """A minimal third-party store: only the five hooks and from_url."""

    shared: dict[str, bytes] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> _DictStore:
        return cls()

    def _put(self, key: str, chunks: Iterator[bytes]) -> int:
        data = b"".join(chunks)
        self.shared[key] = data
        return len(data)

    def _open(self, key: str) -> BinaryIO:
        import io

        if key not in self.shared:
            raise NotFoundError(f"no blob {key!r}")
        return io.BytesIO(self.shared[key])

    def _exists(self, key: str) -> bool:
        return key in self.shared

    def _delete(self, key: str) -> None:
        self.shared.pop(key, None)

    def _list(self, prefix: str) -> Iterator[str]:
        return iter([k for k in list(self.shared) if k.startswith(prefix)])


def test_register_by_subclassing(clean_registry: None) -> None:
    class Mine(_DictStore, scheme="mine-test"):
        pass

    store = labvault.blobs.open("mine-test://anything")
    assert isinstance(store, Mine)
    # the defaults in base.py give a minimal store the whole API
    store.put("k", b"v1", if_absent=True)
    with pytest.raises(ConflictError, match="precondition failed"):
        store.put("k", b"v2", if_absent=True)
    store.put("k", b"v2", if_match=store.info("k").etag)
    store.copy("k", "k2")
    assert store.get("k2") == b"v2"
    assert [i.key for i in store.scan()] == ["k", "k2"]


def test_duplicate_scheme_raises_unless_replace(clean_registry: None) -> None:
    class First(_DictStore, scheme="dup-test"):
        pass

    with pytest.raises(AlreadyExistsError, match="dup-test"):
        class Second(_DictStore, scheme="dup-test"):
            pass

    with pytest.raises(AlreadyExistsError, match="replace=True"):
        labvault.blobs.register("s3", "elsewhere:Store")

    class Third(_DictStore, scheme="dup-test", replace=True):
        pass

    assert isinstance(labvault.blobs.open("dup-test://"), Third)
    labvault.blobs.register("dup-test", First, replace=True)
    assert isinstance(labvault.blobs.open("dup-test://"), First)


def test_split_location() -> None:
    assert labvault.blobs.split_location("s3://b/p?endpoint_url=http://h:1#a/b.txt") == (
        "s3://b/p?endpoint_url=http://h:1", "a/b.txt")
    assert labvault.blobs.split_location("local/file.txt") is None
    for bad in ("s3://b#", "#key", ""):
        with pytest.raises(InvalidArgumentError):
            labvault.blobs.split_location(bad)


def test_file_store_permission_error_is_translated(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(labvault.BackendUnavailableError):
            FileBlobStore(root).put("k", b"x")
    finally:
        root.chmod(0o700)
