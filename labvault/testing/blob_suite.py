"""The shared ``BlobStore`` contract tests (zarr-python's ``StoreTests`` pattern).

Subclass ``BlobStoreTests`` and provide a ``store`` fixture returning a fresh, empty store::

    from labvault.testing.blob_suite import BlobStoreTests

    class TestMyStore(BlobStoreTests):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(tmp_path)

Every test then runs against that store. ``large_size`` (default 12 MiB) sizes the large-object round
trip; a store with a multipart path should configure its threshold below it.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from labvault.blobs.abc import BlobStore
from labvault.domain.model import BlobInfo
from labvault.errors import ConflictError, CorruptDataError, InvalidArgumentError, NotFoundError

__all__ = ["BlobStoreTests"]

BAD_KEYS: tuple[Any, ...] = ("../escape", "/etc/passwd", "a//b", "a/../b", "", "./a", "a\\b", 42, None)


class _Exploding(io.RawIOBase):
    """A binary file that yields ``good`` bytes, then raises (a source failing mid-transfer)."""

    def __init__(self, good: int) -> None:
        self._left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            raise OSError("disk on fire")
        n = min(len(buffer), self._left, 64 * 1024)
        buffer[:n] = b"x" * n
        self._left -= n
        return n


def _payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest() * 128
        counter += 1
    return bytes(out[:size])


class BlobStoreTests:
    """Contract tests every ``BlobStore`` passes. Provide ``store``; optionally ``large_size``."""

    @pytest.fixture
    def store(self) -> Iterator[BlobStore]:
        raise NotImplementedError("subclasses provide a `store` fixture returning a fresh empty store")

    @pytest.fixture
    def large_size(self) -> int:
        return 12 * 1024 * 1024

    # -- basic round trips ------------------------------------------------------------------------------
    def test_put_get_bytes(self, store: BlobStore) -> None:
        assert store.put("a/b.txt", b"hello") == 5
        assert store.get("a/b.txt") == b"hello"
        assert store.exists("a/b.txt")
        assert not store.exists("a/c.txt")

    def test_put_bytearray_memoryview_and_empty(self, store: BlobStore) -> None:
        assert store.put("ba", bytearray(b"xyz")) == 3
        assert store.put("mv", memoryview(b"0123456789")[2:5]) == 3
        assert store.put("empty", b"") == 0
        assert store.get("ba") == b"xyz"
        assert store.get("mv") == b"234"
        assert store.get("empty") == b""
        assert store.info("empty").size == 0

    def test_put_path_and_file_objects(self, store: BlobStore, tmp_path: Path) -> None:
        src = tmp_path / "src.bin"
        src.write_bytes(b"from a path")
        assert store.put("p", src) == 11
        assert store.put("s", str(src)) == 11
        with src.open("rb") as fh:
            assert store.put("f", fh) == 11
        assert store.put("bio", io.BytesIO(b"buffer")) == 6
        assert [store.get(k) for k in ("p", "s", "f", "bio")] == [b"from a path"] * 3 + [b"buffer"]

    def test_overwrite_replaces(self, store: BlobStore) -> None:
        store.put("k", b"first version")
        store.put("k", b"second")
        assert store.get("k") == b"second"
        assert store.info("k").size == 6

    def test_missing_key_is_not_found(self, store: BlobStore) -> None:
        for call in (lambda: store.get("no/such"), lambda: store.open("no/such"),
                     lambda: store.info("no/such"), lambda: store.copy("no/such", "x")):
            with pytest.raises(NotFoundError, match="no/such"):
                call()
        store.delete("no/such")  # deleting a missing key is fine

    def test_open_streams_and_rejects_write_modes(self, store: BlobStore) -> None:
        data = _payload(300_000)
        store.put("stream", data)
        with store.open("stream") as fh:
            first = fh.read(1000)
            rest = fh.read()
        assert first + rest == data
        for mode in ("wb", "r", "ab", "rb+"):
            with pytest.raises(InvalidArgumentError, match=repr(mode)):
                store.open("stream", mode)

    def test_delete_and_list(self, store: BlobStore) -> None:
        for key in ("x/2", "x/1", "x/sub/3", "y/1", "xz"):
            store.put(key, key.encode())
        assert store.list("x/") == ["x/1", "x/2", "x/sub/3"]
        assert store.list() == ["x/1", "x/2", "x/sub/3", "xz", "y/1"]
        assert store.list("nothing/") == []
        store.delete("x/2")
        assert not store.exists("x/2")
        assert store.list("x/") == ["x/1", "x/sub/3"]
        store.delete_many(["x/1", "y/1", "never/was"])
        assert store.list() == ["x/sub/3", "xz"]

    def test_copy(self, store: BlobStore) -> None:
        store.put("src/a", b"payload")
        store.put("dst/a", b"old")
        assert store.copy("src/a", "dst/a") == 7
        assert store.get("dst/a") == b"payload"
        assert store.get("src/a") == b"payload"
        store.copy("src/a", "deep/new/place")
        assert store.get("deep/new/place") == b"payload"

    # -- info / etags -----------------------------------------------------------------------------------
    def test_info(self, store: BlobStore) -> None:
        before = time.time()
        store.put("i/k", b"some bytes")
        info = store.info("i/k")
        assert isinstance(info, BlobInfo)
        assert info.key == "i/k"
        assert info.size == 10
        assert info.etag
        assert info.digest in (hashlib.sha256(b"some bytes").hexdigest(), info.etag)
        assert before - 5 <= info.modified <= time.time() + 5

    def test_etag_changes_when_content_changes(self, store: BlobStore) -> None:
        store.put("e", b"one")
        first = store.info("e").etag
        store.put("e", b"two!")
        assert store.info("e").etag != first

    def test_scan(self, store: BlobStore) -> None:
        digest, _ = store.put_content(b"content")
        store.put("plain/a", b"aa")
        found = {i.key: i for i in store.scan()}
        assert set(found) == {store.digest_key(digest), "plain/a"}
        assert found[store.digest_key(digest)].digest == digest
        assert found["plain/a"].size == 2
        assert [i.key for i in store.scan("plain/")] == ["plain/a"]

    # -- conditional writes -----------------------------------------------------------------------------
    def test_if_absent(self, store: BlobStore) -> None:
        assert store.put("lock", b"mine", if_absent=True) == 4
        with pytest.raises(ConflictError, match=r"precondition failed.*'lock'"):
            store.put("lock", b"yours", if_absent=True)
        assert store.get("lock") == b"mine"

    def test_if_match(self, store: BlobStore) -> None:
        store.put("state", b"v1")
        etag = store.info("state").etag
        store.put("state", b"v2", if_match=etag)
        assert store.get("state") == b"v2"
        with pytest.raises(ConflictError, match=r"precondition failed.*'state'"):
            store.put("state", b"v3", if_match=etag)  # stale
        assert store.get("state") == b"v2"
        with pytest.raises(ConflictError, match=r"precondition failed.*'absent'"):
            store.put("absent", b"x", if_match=etag)
        assert not store.exists("absent")

    def test_conditional_arguments_are_validated(self, store: BlobStore) -> None:
        with pytest.raises(InvalidArgumentError, match="not both"):
            store.put("k", b"x", if_absent=True, if_match="abc")
        for bad in ("", 5):
            with pytest.raises(InvalidArgumentError, match="if_match"):
                store.put("k", b"x", if_match=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="if_absent"):
            store.put("k", b"x", if_absent="yes")  # type: ignore[arg-type]
        assert not store.exists("k")

    def test_if_absent_has_one_winner_among_threads(self, store: BlobStore) -> None:
        results: list[str] = []
        barrier = threading.Barrier(6)

        def racer(i: int) -> None:
            barrier.wait()
            try:
                store.put("race", f"writer {i}".encode(), if_absent=True)
                results.append("won")
            except ConflictError:
                results.append("lost")

        threads = [threading.Thread(target=racer, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == ["lost"] * 5 + ["won"]

    def test_compare_and_swap_counter(self, store: BlobStore) -> None:
        store.put("counter", b"0")

        def bump(times: int) -> None:
            for _ in range(times):
                while True:
                    info = store.info("counter")
                    value = int(store.get("counter"))
                    try:
                        store.put("counter", str(value + 1).encode(), if_match=info.etag)
                        break
                    except ConflictError:
                        continue

        threads = [threading.Thread(target=bump, args=(5,)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.get("counter") == b"15"

    # -- validation -------------------------------------------------------------------------------------
    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_bad_keys_are_rejected_everywhere(self, store: BlobStore, key: Any) -> None:
        calls: list[Callable[[], object]] = [
            lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.open(key),
            lambda: store.exists(key), lambda: store.delete(key), lambda: store.info(key),
            lambda: store.copy(key, "ok"), lambda: store.copy("ok", key),
            lambda: store.put_many([(key, b"x")]), lambda: store.get_many([key]),
            lambda: store.delete_many([key]),
        ]
        store.put("ok", b"fine")
        for call in calls:
            with pytest.raises(InvalidArgumentError) as err:
                call()
            shown = repr(key) if isinstance(key, str) and key else ""
            assert shown in str(err.value) or "empty" in str(err.value) or "string" in str(err.value)
        assert store.list() == ["ok"]

    def test_bad_prefix_is_rejected(self, store: BlobStore) -> None:
        with pytest.raises(InvalidArgumentError):
            store.list("../up")
        with pytest.raises(InvalidArgumentError):
            list(store.scan("/abs"))

    def test_bad_sources_are_rejected_before_writing(self, store: BlobStore, tmp_path: Path) -> None:
        with pytest.raises(InvalidArgumentError, match="int"):
            store.put("k", 123)  # type: ignore[arg-type]
        missing = tmp_path / "missing.bin"
        with pytest.raises(InvalidArgumentError, match=r"missing\.bin"):
            store.put("k", missing)
        with pytest.raises(InvalidArgumentError, match="binary"), io.StringIO("text") as text:
            store.put("k", text)  # type: ignore[arg-type]
        assert not store.exists("k")

    def test_failing_source_leaves_no_partial_object(self, store: BlobStore, large_size: int) -> None:
        store.put("keep", b"old content")
        with pytest.raises(OSError, match="disk on fire"):
            store.put("keep", _Exploding(large_size // 2))  # type: ignore[arg-type]
        with pytest.raises(OSError, match="disk on fire"):
            store.put("new", _Exploding(large_size))  # type: ignore[arg-type]
        assert store.get("keep") == b"old content"
        assert not store.exists("new")
        assert store.list() == ["keep"]

    # -- large objects ----------------------------------------------------------------------------------
    def test_large_object_round_trip(self, store: BlobStore, tmp_path: Path, large_size: int) -> None:
        data = _payload(large_size + 12345, seed=7)
        src = tmp_path / "large.bin"
        src.write_bytes(data)
        assert store.put("big/from-path", src) == len(data)
        with src.open("rb") as fh:
            assert store.put("big/from-stream", io.BufferedReader(fh)) == len(data)
        for key in ("big/from-path", "big/from-stream"):
            with store.open(key) as fh:
                sha = hashlib.sha256()
                while chunk := fh.read(1 << 20):
                    sha.update(chunk)
            assert sha.hexdigest() == hashlib.sha256(data).hexdigest()
            assert store.info(key).size == len(data)
        assert store.copy("big/from-path", "big/copy") == len(data)
        assert store.get("big/copy") == data
        etag = store.info("big/from-path").etag
        store.put("big/from-path", src, if_match=etag)
        with pytest.raises(ConflictError):
            store.put("big/from-path", src, if_absent=True)

    def test_copy_content_to_a_file_is_verified(self, store: BlobStore, tmp_path: Path,
                                                large_size: int) -> None:
        data = _payload(large_size + 4321, seed=11)
        digest, size = store.put_content(data)
        dest = tmp_path / "out" / "copy.bin"
        dest.parent.mkdir()
        assert store.copy_content_to(digest, dest) == size == len(data)
        assert dest.read_bytes() == data
        small_digest, _ = store.put_content(b"tiny")
        assert store.copy_content_to(small_digest, tmp_path / "tiny.bin") == 4
        assert (tmp_path / "tiny.bin").read_bytes() == b"tiny"
        # Bytes that do not match their digest never appear at the destination.
        fake = hashlib.sha256(b"something else").hexdigest()
        store.put(store.digest_key(fake), data)
        with pytest.raises(CorruptDataError):
            store.copy_content_to(fake, tmp_path / "bad.bin")
        assert not (tmp_path / "bad.bin").exists()
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".bad")) == []
        with pytest.raises(NotFoundError):
            store.copy_content_to(hashlib.sha256(b"never stored").hexdigest(), tmp_path / "none.bin")

    # -- content addressing and batches -------------------------------------------------------------------
    def test_put_content_deduplicates_and_verifies(self, store: BlobStore) -> None:
        d1, size = store.put_content(b"same bytes")
        d2, _ = store.put_content(io.BytesIO(b"same bytes"))
        assert d1 == d2 == hashlib.sha256(b"same bytes").hexdigest()
        assert size == 10
        assert store.list("sha256/") == [store.digest_key(d1)]
        with store.open_content(d1) as fh:
            assert fh.read() == b"same bytes"
        assert store.get_content(d1) == b"same bytes"
        with pytest.raises(NotFoundError):
            store.open_content(hashlib.sha256(b"never stored").hexdigest())

    def test_corrupt_content_is_detected(self, store: BlobStore) -> None:
        digest, _ = store.put_content(b"precious")
        store.put(store.digest_key(digest), b"tampered")
        with pytest.raises(CorruptDataError, match=digest):
            store.get_content(digest)
        with pytest.raises(CorruptDataError), store.open_content(digest) as fh:
            fh.read()

    def test_batches(self, store: BlobStore) -> None:
        items = [(f"batch/{i:03d}", f"value {i}".encode()) for i in range(40)]
        assert store.put_many(items, workers=4) == [len(v) for _, v in items]
        assert store.get_many([k for k, _ in items], workers=4) == [v for _, v in items]
        sources = [f"content {i % 10}".encode() for i in range(30)]
        results = store.put_content_many(sources, workers=4)
        assert [d for d, _ in results] == [hashlib.sha256(s).hexdigest() for s in sources]
        assert len(store.list("sha256/")) == 10
        with pytest.raises(InvalidArgumentError, match="workers"):
            store.put_many(items, workers=0)

    def test_context_manager(self, store: BlobStore) -> None:
        with store as same:
            assert same is store
