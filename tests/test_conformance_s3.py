"""``s3://`` as a full metadata backend: the whole conformance suite on the real SeaweedFS server, the
same suite over an in-memory blob store (fast feedback on ``BlobBackend`` itself), the hook checks of
both against their objects (read with boto3 / from the blob store), and the guarantees the S3 layout
adds: numbers claimed with If-None-Match, documents swapped with If-Match."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np
import pytest
from raw_media import BlobStoreObjects, S3Medium, S3Objects
from s3_server import BUCKET, s3_server, s3_url  # noqa: F401 - pytest fixtures

import labvault
import labvault.blobs
from labvault._uri import check_options
from labvault.blobs.abc import BlobStore
from labvault.blobs.memory import MemoryBlobStore
from labvault.domain import MetricSeries
from labvault.errors import ConflictError, CorruptDataError, InvalidArgumentError, NotFoundError
from labvault.store.objectstore import BlobBackend, S3Backend, decode_segment, encode_segment
from labvault.testing import BackendHookTests, BackendTests
from labvault.testing.seaweed import SeaweedServer

_MEMORY_STORES: dict[str, MemoryBlobStore] = {}
_MEMORY_LOCK = threading.Lock()


class MemoryObjectBackend(BlobBackend, scheme="lvtest-objmem"):
    """``BlobBackend`` over a named, process-wide ``MemoryBlobStore`` (``lvtest-objmem://name``)."""

    persistent: ClassVar[bool] = False
    multiprocess: ClassVar[bool] = False

    @classmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> BlobBackend:
        check_options("lvtest-objmem", options, ())
        name = uri.split("://", 1)[1]
        with _MEMORY_LOCK:
            store = _MEMORY_STORES.setdefault(name, MemoryBlobStore())
        return cls(uri, store, artifacts)


class TestBlobBackendOverMemory(BackendTests):
    @pytest.fixture
    def uri(self) -> Iterator[str]:
        name = uuid.uuid4().hex
        yield f"lvtest-objmem://{name}"
        _MEMORY_STORES.pop(name, None)


@pytest.fixture
def s3_vault_uri(s3_url: str) -> Iterator[str]:  # noqa: F811 - the imported fixture
    """A fresh prefix in the test bucket as a vault URI; every object under it is deleted afterwards."""
    yield s3_url
    with contextlib.closing(S3Backend.from_uri(s3_url)) as backend:
        backend.destroy()


class TestS3Backend(BackendTests):
    heavy = True

    @pytest.fixture
    def uri(self, s3_vault_uri: str) -> str:
        return s3_vault_uri


class TestBlobBackendOverMemoryHooks(BlobStoreObjects, BackendHookTests):
    @pytest.fixture
    def store_name(self) -> Iterator[str]:
        name = uuid.uuid4().hex
        yield name
        _MEMORY_STORES.pop(name, None)

    @pytest.fixture
    def uri(self, store_name: str) -> str:
        return f"lvtest-objmem://{store_name}"

    @pytest.fixture
    def raw(self, store_name: str) -> MemoryBlobStore:
        """The named store the backend keeps its objects in."""
        with _MEMORY_LOCK:
            return _MEMORY_STORES.setdefault(store_name, MemoryBlobStore())


class TestS3BackendHooks(S3Objects, BackendHookTests):
    @pytest.fixture
    def uri(self, s3_vault_uri: str) -> str:
        return s3_vault_uri

    @pytest.fixture
    def raw(self, uri: str, s3_server: SeaweedServer) -> S3Medium:  # noqa: F811 - the imported fixture
        """A boto3 client on the server, the bucket and the URI's prefix."""
        import boto3

        client = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                              aws_access_key_id=s3_server.access_key,
                              aws_secret_access_key=s3_server.secret_key)
        parts = urlsplit(uri)
        assert parts.netloc == BUCKET
        return S3Medium(client, parts.netloc, parts.path.strip("/"))


# -- what the S3 layout adds --------------------------------------------------------------------------------
def test_s3_uri_opens_the_object_backend(s3_vault_uri: str) -> None:
    with labvault.open(s3_vault_uri) as vault:
        assert type(vault.backend) is S3Backend
        with vault.experiment("e").start_run(params={"a": 1}) as run:
            run.log_artifact("x.txt", b"hi")
        store = labvault.blobs.open(s3_vault_uri)
        keys = store.list("")
        assert f"meta/runs/{run.id}/run.json" in keys
        assert any(k.startswith("sha256/") for k in keys)  # artifacts in the same prefix by default
        assert any(k.startswith("meta/numbers/") for k in keys)


def test_s3_metadata_with_artifacts_elsewhere(s3_vault_uri: str, tmp_path: Any) -> None:
    with labvault.open(s3_vault_uri, artifacts=f"file://{tmp_path / 'blobs'}") as vault:
        with vault.experiment("e").start_run() as run:
            info = run.log_artifact("x.bin", b"payload")
        assert run.get_artifact("x.bin") == b"payload"
        assert not any(k.startswith("sha256/") for k in labvault.blobs.open(s3_vault_uri).list(""))
        assert (tmp_path / "blobs").exists() and vault.backend.blobs.exists(
            vault.backend.blobs.digest_key(info.digest))


def test_bad_s3_uri_options_are_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="nosuchoption"):
        labvault.open("s3://bucket-x/p?nosuchoption=1")
    with pytest.raises(InvalidArgumentError, match="credentials"):
        labvault.open("s3://key:secret@bucket-x/p")


def test_concurrent_writers_threads_get_dense_numbers_and_lose_no_update(s3_vault_uri: str) -> None:
    """Eight backend objects (no shared cache) race on numbers, tags and params of one run."""
    backends = [S3Backend.from_uri(s3_vault_uri) for _ in range(8)]
    try:
        exp = backends[0].ensure_experiment("race", "default")
        target = backends[0].create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={},
                                        tags={})

        winners: list[int] = []

        def work(i: int) -> list[int]:
            b = backends[i]
            numbers = []
            for j in range(4):
                numbers.append(b.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={},
                                            tags={}).number)
                b.set_tags(target.id, {f"w{i}-{j}": "x"})
                b.log_params(target.id, {f"p{i}-{j}": j})
                try:
                    b.log_params(target.id, {"shared": i})  # write-once: exactly one value wins
                    winners.append(i)
                except ConflictError:
                    assert i not in winners
            return numbers

        with ThreadPoolExecutor(8) as pool:
            numbers = sorted(n for nums in pool.map(work, range(8)) for n in nums)
        assert numbers == list(range(2, 34))
        final = backends[0].get_run(target.id)
        assert set(final.tags) == {f"w{i}-{j}" for i in range(8) for j in range(4)}
        assert set(final.params) == {f"p{i}-{j}" for i in range(8) for j in range(4)} | {"shared"}
        assert len(set(winners)) == 1 and final.params["shared"] == winners[0]
        assert [r.number for r in backends[3].list_runs([exp.id])] == list(range(1, 34))
    finally:
        for b in backends:
            b.close()


def test_killed_creator_leaves_no_gap(s3_vault_uri: str) -> None:
    """A run whose creator died after claiming its number (document still at number 0) keeps it."""
    backend = S3Backend.from_uri(s3_vault_uri)
    try:
        exp = backend.ensure_experiment("e", "default")
        first = backend.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
        # Simulate the crash window: the document says 0, only the claim knows the number.
        doc_key = f"meta/runs/{first.id}/run.json"
        import json

        doc = json.loads(backend.store.get(doc_key))
        doc["number"] = 0
        backend.store.put(doc_key, json.dumps(doc).encode())
        fresh = S3Backend.from_uri(s3_vault_uri)
        try:
            assert fresh.get_run(first.id).number == 1
            assert [r.number for r in fresh.list_runs([exp.id])] == [1]
            second = fresh.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
            assert second.number == 2
        finally:
            fresh.close()
    finally:
        backend.close()


def test_stale_write_cache_never_loses_another_writers_update(s3_vault_uri: str) -> None:
    a, b = S3Backend.from_uri(s3_vault_uri), S3Backend.from_uri(s3_vault_uri)
    try:
        exp = a.ensure_experiment("e", "default")
        run = a.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={"x": 1}, tags={})
        a.set_tags(run.id, {"a": "1"})  # a's cache now holds this version
        b.set_tags(run.id, {"b": "2"})  # b changes it behind a's back
        b.log_params(run.id, {"y": 2})
        a.set_tags(run.id, {"a": "3"})  # a's If-Match fails, it re-reads and re-applies
        with pytest.raises(ConflictError, match="'y'"):
            a.log_params(run.id, {"y": 3})
        assert b.get_run(run.id).tags == {"a": "3", "b": "2"}
        assert a.get_run(run.id).params == {"x": 1, "y": 2}
    finally:
        a.close()
        b.close()


def test_segments_roundtrip_and_detect_damage() -> None:
    s = [MetricSeries("a", np.arange(3, dtype=np.int64), np.array([1.0, np.nan, np.inf]),
                      np.array([1.0, 2.0, 3.0])),
         MetricSeries("b/c d", np.array([7], dtype=np.int64), np.array([-0.5]), np.array([9.0]))]
    body = encode_segment(s)
    back = decode_segment(body, "seg")
    assert [x.key for x in back] == ["a", "b/c d"]
    np.testing.assert_array_equal(back[0].values, s[0].values)
    assert back[1].steps.tolist() == [7] and back[1].timestamps.tolist() == [9.0]
    with pytest.raises(CorruptDataError, match="seg"):
        decode_segment(body[:-3], "seg")
    with pytest.raises(CorruptDataError, match="header"):
        decode_segment(b"garbage" * 4, "seg")


def test_missing_run_and_experiment_errors(s3_vault_uri: str) -> None:
    backend = S3Backend.from_uri(s3_vault_uri)
    try:
        with pytest.raises(NotFoundError, match="f" * 32):
            backend.create_run("f" * 32, name=None, parent_id=None, start_time=1.0, params={}, tags={})
        with pytest.raises(NotFoundError, match="e" * 32):
            backend.log_metrics("e" * 32, [MetricSeries("m", np.zeros(1, dtype=np.int64), np.zeros(1),
                                                          np.zeros(1))])
        with pytest.raises(NotFoundError, match="d" * 32):
            backend.list_artifacts("d" * 32)
        assert backend.list_experiments() == []
    finally:
        backend.close()


def test_destroy_removes_only_its_prefix(s3_server: SeaweedServer) -> None:  # noqa: F811
    base = f"s3://labvault-test/iso-{uuid.uuid4().hex[:8]}"
    query = f"?endpoint_url={s3_server.endpoint}"
    mine, theirs = f"{base}/a{query}", f"{base}/ab{query}"
    for uri in (mine, theirs):
        with labvault.open(uri) as vault, vault.experiment("e").start_run() as run:
            run.log_metric("m", 1.0)
    backend = S3Backend.from_uri(mine)
    assert backend.destroy() > 0
    backend.close()
    with labvault.open(mine) as vault:
        assert vault.experiments() == []
    with labvault.open(theirs) as vault:
        assert [e.name for e in vault.experiments()] == ["e"]
        S3Backend.destroy(vault.backend)  # type: ignore[arg-type]


def _points(backend: BlobBackend, run_id: str, start: int, count: int) -> None:
    for i in range(start, start + count):
        one = np.array([i], dtype=np.int64)
        backend.log_metrics(run_id, [MetricSeries("a", one, one.astype(np.float64), np.array([1.0 * i])),
                                     MetricSeries("b", one, -one.astype(np.float64), np.array([1.0 * i]))])


def test_metric_segments_compacted_on_read(s3_vault_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from labvault.store import objectstore

    monkeypatch.setattr(objectstore, "COMPACT_AFTER", 8)
    backend = S3Backend.from_uri(s3_vault_uri)
    try:
        exp = backend.ensure_experiment("e", "default")
        run = backend.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
        _points(backend, run.id, 0, 20)
        prefix = f"meta/runs/{run.id}/metrics/"
        # (the name after the prefix: a run id is hex, so "/c" can occur in the prefix itself, 1 run in 16)
        assert not any(k[len(prefix):].startswith("c") for k in backend.store.list(prefix))
        assert backend.metric_history(run.id, "a").values.tolist() == list(range(20))
        assert backend.store.list(prefix)[-1] == f"{prefix}c{20:012d}"  # written by that read
        _points(backend, run.id, 20, 3)
        other = S3Backend.from_uri(s3_vault_uri)  # a reader that never wrote: compaction + 3 segments
        try:
            assert other.metric_history(run.id, "b").values.tolist() == [-float(i) for i in range(23)]
            monkeypatch.setattr(objectstore, "COMPACTED_GRACE", 0.0)
            assert other.metric_history(run.id, "a").steps.tolist() == list(range(23))
            left = backend.store.list(prefix)  # the compacted segments are gone, the later three stay
            assert left == [f"{prefix}{n:012d}" for n in (21, 22, 23)] + [f"{prefix}c{20:012d}"]
            _points(other, run.id, 23, 1)  # a new writer numbers after the compaction
            assert f"{prefix}{24:012d}" in backend.store.list(prefix)
            assert backend.metric_history(run.id, "a").values.tolist() == list(range(24))
        finally:
            other.close()
    finally:
        backend.close()


def test_writer_numbering_from_before_a_compaction_loses_nothing(
    s3_vault_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle writer (SEQ_CACHE_SECONDS) re-lists; compacted objects live COMPACTED_GRACE (longer)."""
    import time

    from labvault.store import objectstore

    monkeypatch.setattr(objectstore, "COMPACT_AFTER", 4)
    monkeypatch.setattr(objectstore, "SEQ_CACHE_SECONDS", 1.0)
    monkeypatch.setattr(objectstore, "COMPACTED_GRACE", 2.0)
    idle, busy = S3Backend.from_uri(s3_vault_uri), S3Backend.from_uri(s3_vault_uri)
    try:
        exp = idle.ensure_experiment("e", "default")
        run = idle.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
        _points(idle, run.id, 0, 1)  # idle now expects to write segment 2 next
        _points(busy, run.id, 1, 10)  # segments 2..11
        assert busy.metric_history(run.id, "a").values.tolist() == list(range(11))  # compacts 1..11
        time.sleep(3.0)
        busy.metric_history(run.id, "a")  # deletes the compacted segments (now older than the grace)
        assert not [k for k in busy.store.list(f"meta/runs/{run.id}/metrics/") if k.endswith(f"{2:012d}")]
        _points(idle, run.id, 11, 1)  # must not reuse number 2 (hidden under the compaction)
        assert busy.metric_history(run.id, "a").values.tolist() == list(range(12))
    finally:
        idle.close()
        busy.close()


def test_update_of_a_document_whose_etag_is_not_its_md5(s3_vault_uri: str) -> None:
    """A run document rewritten as a multipart object (etag "<md5>-<parts>") is still updated."""
    import json

    backend = S3Backend.from_uri(s3_vault_uri)
    try:
        exp = backend.ensure_experiment("e", "default")
        run = backend.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
        key = f"meta/runs/{run.id}/run.json"
        doc = json.loads(backend.store.get(key))
        doc["results"] = {"pad": "x" * (6 * 1024 * 1024)}  # over the 5 MiB threshold: multipart
        store = labvault.blobs.open(s3_vault_uri, part_size="5MiB", multipart_threshold="5MiB")
        store.put(key, json.dumps(doc).encode())
        assert "-" in store.info(key).etag
        backend.set_tags(run.id, {"t": "v"})
        got = backend.get_run(run.id)
        assert got.tags == {"t": "v"} and got.results["pad"] == "x" * (6 * 1024 * 1024)
        store.close()
    finally:
        backend.close()
