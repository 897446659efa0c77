"""Metadata as objects in any ``BlobStore``: ``s3://`` as a full backend, shared through a bucket, no server.

``BlobBackend`` keeps a vault's experiments, runs, params, tags, results, latest metric values, metric
segments and artifact index as small objects in one blob store, and (unless ``artifacts=`` names another
store) the artifact bytes in the same store, content-addressed under ``sha256/``. ``S3Backend`` is that
backend over ``S3BlobStore``::

    vault = labvault.open("s3://bucket/team-a?endpoint_url=http://127.0.0.1:8333")

The URI's query options are ``S3BlobStore``'s (``endpoint_url``, ``region``, ``profile``, ``part_size``,
...); credentials come from the usual AWS variables or profile, never from the URI.

Layout under the store's prefix (format 1)::

    meta/experiments/<project>/<name>.json   the experiment {id, name, project, created_at}; created once
    meta/experiment-ids/<experiment id>.json {project, name}: finds an experiment by id
    meta/numbers/<experiment id>/<n:012d>    the id of the run that holds number n (a claim)
    meta/runs/<run id>/run.json              the run: status, times, params, tags, results, latest metrics
    meta/runs/<run id>/artifacts/<xx>.json   artifact index, 256 shards by a hash of the artifact key:
                                             {key: [size, sha256, created_at]}
    meta/runs/<run id>/metrics/<seq:012d>    one flushed batch of metric points (all keys of the flush)
    meta/runs/<run id>/metrics/c<seq:012d>   a compaction: every point of segments 1..seq
    meta/runs/<run id>/batches/<batch id>    empty: the batch appended with ``batch_id=`` is stored
    sha256/ab/cd/<digest>                    artifact bytes (``BlobStore.put_content``; ``labvault gc``)

Concurrency guarantee (several processes or machines writing the same bucket, no locks, no server):

* Every object that is created once is written with a conditional put ``If-None-Match: *``
  (``put(..., if_absent=True)``); the S3 server answers ``412 PreconditionFailed`` to every writer but
  the first. Run numbers are claimed that way: a writer claims ``numbers/<experiment>/<n>`` for the
  next free ``n`` and, on 412, tries ``n + 1`` (re-listing the claims now and then), so numbers are
  **unique and dense** per experiment however many writers race. Experiment names, chosen run ids
  (``create_run(run_id=...)``) and metric segments are claimed the same way.
* Every document that changes (run, artifact index shard) is updated by compare-and-swap: read it with its
  ETag, change it, write it back with ``If-Match: <etag>``; on 412 re-read and re-apply. Each document
  carries a revision counter, so its content never repeats and an ETag never matches a stale read.
  Updates are therefore never lost: params stay write-once (a different value is ``ConflictError``
  even when two processes race), tags last-write-wins, results and metric latest values merge.
* Metric points are append-only segments; a reader sees whole segments only (an object is visible
  complete or not at all), so a killed writer loses at most its unflushed buffer. A history read that
  finds more than ``COMPACT_AFTER`` segments writes a compaction ``c<N>`` holding segments 1..N (stopping
  at a number still being written); readers then fetch it plus the later segments. Compacted objects
  are deleted only after ``COMPACTED_GRACE``, and a writer re-lists the segments unless it wrote one
  lately, so no write can land under a compaction unseen.
* A batch appended with ``log_metrics(..., batch_id=)`` is skipped when its marker
  ``batches/<batch id>`` exists; the marker is written right after the batch's segment. Within one
  process, appends of one run's batches are serialized around that check, so a re-sent batch waits for
  its first attempt. Across processes, two attempts of one batch racing at the same moment, or a writer
  killed between the segment and the marker, can still store that batch twice.
* This needs a store whose conditional puts are atomic: S3 itself, SeaweedFS (4.48+), MinIO, the
  ``file`` and ``memory`` blob stores. A server that ignores ``If-None-Match`` / ``If-Match`` would
  silently break the guarantee; SeaweedFS's behaviour is pinned by ``tests/test_conformance_s3.py``.
* A writer killed between two of its objects leaves nothing half-done that readers trip over: an
  experiment whose id object is missing is found by name (and the id object rewritten); a run created
  up to its number claim gets its number from the claim; an unclaimed run document is invisible.

Writes answer from a small in-process cache of the documents this object wrote last (the expected
ETag is computed from the bytes, so an uncontended update is one PUT); reads always go to the store,
so other processes' writes are seen at once. Listings (``list_runs``, ``search_runs``) fetch the run
documents concurrently (``BlobStore.get_many``). The change feed is the log under ``meta/events/``
(``labvault.store.eventlog``), shared by every process and machine using the bucket.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import numpy as np

import labvault.blobs
from labvault._retry import Backoff, Retry
from labvault.blobs.abc import BlobStore
from labvault.blobs.s3 import S3BlobStore
from labvault.domain import ArtifactInfo, ExperimentInfo, MetricSeries, RunInfo, now
from labvault.errors import (
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
)
from labvault.store.abc import Backend, check_params_conflict, run_exists_error

__all__ = ["BlobBackend", "S3Backend"]

META = "meta/"
_EXPERIMENTS = META + "experiments/"
_EXPERIMENT_IDS = META + "experiment-ids/"
_NUMBERS = META + "numbers/"
_RUNS = META + "runs/"
#: How often a compare-and-swap is retried before giving up with ``ConflictError``.
CAS_ATTEMPTS = 64
#: Pauses between compare-and-swap attempts: none before the second, then 4 ms doubling to 0.2 s (this loop's
#: schedule before ``labvault._retry``; its default, 0.05 s to 2 s, is far too slow for colliding writers).
_CAS_BACKOFF = Backoff(first=0.004, cap=0.2)
_SEGMENT_MAGIC = b"LVMSEG1\n"
#: A history read that finds more segments than this after the last compaction writes a new one.
COMPACT_AFTER = 64
#: Compacted segments are deleted only once older than this, so a writer that numbered its next
#: segment before the compaction collides with the old one (and re-numbers) instead of writing a
#: number the compaction covers.
COMPACTED_GRACE = 3600.0
#: A writer trusts its own count of a run's segments for this long after its last write; later it lists.
SEQ_CACHE_SECONDS = 600.0
_CACHE_LIMIT = 4096
_BATCH_STRIPES = 64
#: (number, key, modified time) of a metric segment or compaction
_Obj = tuple[int, str, float]


def _new_id() -> str:
    return uuid.uuid4().hex


def _dumps(doc: Any) -> bytes:
    # allow_nan: latest metric values may be NaN or infinite (they are data)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode("utf-8")


def _loads(body: bytes, key: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise CorruptDataError(f"metadata object {key!r} is not valid JSON: {exc}") from exc


def _number_key(experiment_id: str, number: int) -> str:
    return f"{_NUMBERS}{experiment_id}/{number:012d}"


def _run_key(run_id: str) -> str:
    return f"{_RUNS}{run_id}/run.json"


def _artifacts_prefix(run_id: str) -> str:
    return f"{_RUNS}{run_id}/artifacts/"


def _artifact_shard_key(run_id: str, key: str) -> str:
    """The index shard holding artifact ``key``: one of 256, chosen by a hash of the key."""
    shard = hashlib.sha1(key.encode("utf-8"), usedforsecurity=False).hexdigest()[:2]
    return f"{_artifacts_prefix(run_id)}{shard}.json"


def _artifact_info(key: str, item: list[Any]) -> ArtifactInfo:
    size, digest, created = item
    return ArtifactInfo(key, int(size), str(digest), float(created))


def _metrics_prefix(run_id: str) -> str:
    return f"{_RUNS}{run_id}/metrics/"


def _batches_prefix(run_id: str) -> str:
    return f"{_RUNS}{run_id}/batches/"


def _tail_number(key: str) -> int | None:
    tail = key.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None


def encode_segment(series: Iterable[MetricSeries]) -> bytes:
    """Pack metric series into one segment: a magic line, a JSON header, then little-endian arrays."""
    items = list(series)
    header = _dumps([[s.key, len(s)] for s in items])
    parts = [_SEGMENT_MAGIC, struct.pack("<I", len(header)), header]
    for s in items:
        parts.append(np.ascontiguousarray(s.steps, dtype="<i8").tobytes())
        parts.append(np.ascontiguousarray(s.values, dtype="<f8").tobytes())
        parts.append(np.ascontiguousarray(s.timestamps, dtype="<f8").tobytes())
    return b"".join(parts)


def decode_segment(body: bytes, where: str) -> list[MetricSeries]:
    """Unpack ``encode_segment``'s bytes (``CorruptDataError`` naming ``where`` when they are damaged)."""
    start = len(_SEGMENT_MAGIC) + 4
    if len(body) < start or not body.startswith(_SEGMENT_MAGIC):
        raise CorruptDataError(f"metric segment {where!r} has no labvault segment header")
    (hlen,) = struct.unpack_from("<I", body, len(_SEGMENT_MAGIC))
    header = _loads(body[start:start + hlen], where)
    pos = start + hlen
    out = []
    try:
        for key, n in header:
            size = 8 * int(n)
            if pos + 3 * size > len(body):
                raise CorruptDataError(f"metric segment {where!r} is truncated")
            steps = np.frombuffer(body, dtype="<i8", count=n, offset=pos).astype(np.int64)
            values = np.frombuffer(body, dtype="<f8", count=n, offset=pos + size).astype(np.float64)
            stamps = np.frombuffer(body, dtype="<f8", count=n, offset=pos + 2 * size).astype(np.float64)
            pos += 3 * size
            out.append(MetricSeries(str(key), steps, values, stamps))
    except (TypeError, ValueError) as exc:
        raise CorruptDataError(f"metric segment {where!r} has a damaged header: {exc}") from exc
    if pos != len(body):
        raise CorruptDataError(f"metric segment {where!r} has {len(body) - pos} trailing bytes")
    return out


def _run_from_doc(doc: dict[str, Any], number: int | None = None) -> RunInfo:
    return RunInfo(
        id=doc["id"], experiment_id=doc["experiment_id"], number=number or int(doc["number"]),
        name=doc.get("name"), parent_id=doc.get("parent_id"), status=doc["status"],
        start_time=float(doc["start_time"]), end_time=doc.get("end_time"), error=doc.get("error"),
        heartbeat=doc.get("heartbeat"), params=dict(doc.get("params", {})), tags=dict(doc.get("tags", {})),
        metrics={k: float(x) for k, x in doc.get("metrics", {}).items()},
        results=dict(doc.get("results", {})),
    )


def _experiment_from_doc(doc: dict[str, Any]) -> ExperimentInfo:
    return ExperimentInfo(str(doc["id"]), str(doc["name"]), str(doc["project"]), float(doc["created_at"]))


class BlobBackend(Backend):
    """A metadata backend over any ``BlobStore`` (see the module docstring for layout and guarantees).

    ``store`` holds the metadata objects; ``blobs`` (``artifacts=``) the artifact bytes, by default
    ``store`` itself. ``BlobBackend.from_uri(url)`` opens ``labvault.blobs.open(url)`` as the store, so
    any blob store URL works; ``S3Backend`` registers the ``s3`` scheme.
    """

    def __init__(self, uri: str, store: BlobStore, blobs: BlobStore | None = None) -> None:
        super().__init__(uri, blobs)
        if not isinstance(store, BlobStore):
            raise InvalidArgumentError(f"BlobBackend needs a BlobStore, got {type(store).__name__}")
        self.store = store
        self._lock = threading.RLock()
        #: key -> (etag, body) of documents as this object last wrote or read them (write hints only)
        self._docs: dict[str, tuple[str, bytes]] = {}
        #: how the store's etag follows from the bytes ("md5", "sha256") or None (ask ``info``)
        self._etag_kind: str | None = None
        self._etag_learned = False
        self._next_number: dict[str, int] = {}  # experiment id -> next number to try
        self._claims: dict[str, dict[int, str]] = {}  # experiment id -> number -> run id (immutable)
        self._next_seq: dict[str, int] = {}  # run id -> next metric segment number
        self._seq_written: dict[str, float] = {}  # run id -> monotonic time of this object's last segment
        self._known_runs: set[str] = set()
        self._known_experiments: set[str] = set()
        #: appends that carry a batch id check, write and mark under the lock of their run's stripe
        self._batch_locks = [threading.Lock() for _ in range(_BATCH_STRIPES)]

    @classmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> BlobBackend:
        """Open ``labvault.blobs.open(uri, **options)`` as the store (no I/O yet)."""
        return cls(uri, labvault.blobs.open(uri, **options), artifacts)

    def _default_blobs(self) -> BlobStore:
        return self.store

    supports_events = True
    event_log = True
    _event_prefix = "meta/events/"

    def _event_store(self) -> BlobStore:
        """The change log is the objects under ``meta/events/`` (``labvault.store.eventlog``)."""
        return self.store

    def close(self) -> None:
        """Close the artifact store and the metadata store (when they differ)."""
        super().close()
        if self._blobs is not self.store:
            self.store.close()

    def destroy(self) -> int:
        """Delete every object of this vault (everything under the store's prefix); return how many."""
        keys = self.store.list("")
        self.store.delete_many(keys)
        with self._lock:
            self._docs.clear()
            self._next_number.clear()
            self._claims.clear()
            self._next_seq.clear()
            self._known_runs.clear()
            self._known_experiments.clear()
        return len(keys)

    # -- documents: conditional create, compare-and-swap update ----------------------------------------------
    def _etag_of(self, body: bytes) -> str | None:
        if self._etag_kind == "md5":
            return hashlib.md5(body, usedforsecurity=False).hexdigest()
        if self._etag_kind == "sha256":
            return hashlib.sha256(body).hexdigest()
        return None

    def _remember(self, key: str, body: bytes, etag: str | None = None) -> None:
        """Cache what ``key`` now holds; learn once how this store derives ETags from bytes."""
        if not self._etag_learned:
            try:
                actual = self.store.info(key).etag
            except NotFoundError:
                return
            for kind, fn in (("md5", hashlib.md5), ("sha256", hashlib.sha256)):
                if fn(body).hexdigest() == actual:
                    self._etag_kind = kind
            self._etag_learned = True
            etag = actual
        etag = etag or self._etag_of(body)
        if etag is None:
            return
        with self._lock:
            if len(self._docs) >= _CACHE_LIMIT:
                self._docs.clear()
            self._docs[key] = (etag, body)

    def _forget(self, key: str) -> None:
        with self._lock:
            self._docs.pop(key, None)

    def _fetch(self, key: str, exact: bool = False) -> tuple[str, bytes]:
        """(etag, body) of ``key`` as stored now (``NotFoundError`` when absent).

        The etag is computed from the bytes when the store's etags are digests (one GET); ``exact`` asks
        the store instead (an object written in parts, by another tool, has an etag of another kind).
        """
        if self._etag_learned and self._etag_kind is not None and not exact:
            body = self.store.get(key)
            etag = self._etag_of(body)
            assert etag is not None
            return etag, body
        # The etag is read first: if the body read after it is newer, the If-Match write fails and retries.
        etag = self.store.info(key).etag
        return etag, self.store.get(key)

    def _create(self, key: str, doc: dict[str, Any]) -> bool:
        """Write ``doc`` to ``key`` unless it exists (If-None-Match: *); False when it existed."""
        body = _dumps(doc)
        try:
            self.store.put(key, body, if_absent=True)
        except ConflictError:
            return False
        self._remember(key, body)
        return True

    def _update(
        self,
        key: str,
        change: Callable[[dict[str, Any]], None],
        missing: Callable[[], LabvaultError],
        initial: Callable[[], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Apply ``change`` to the document at ``key`` by compare-and-swap (If-Match), retrying on 412.

        A missing document is created from ``initial()`` (conditionally) when given, else
        ``missing()`` is raised. ``change`` may raise to abort without writing.
        """
        with self._lock:
            cached = self._docs.get(key)
        attempt = 0  # failed attempts so far
        retry = Retry(tries=CAS_ATTEMPTS - 1, policy=_CAS_BACKOFF)  # the first re-read is not counted
        while True:
            etag: str | None
            doc: dict[str, Any]
            if cached is not None:
                etag, body = cached
                doc = _loads(body, key)
            else:
                try:
                    etag, body = self._fetch(key, exact=attempt >= 2)
                    doc = _loads(body, key)
                except NotFoundError:
                    if initial is None:
                        raise missing() from None
                    etag, doc = None, initial()
            change(doc)
            doc["rev"] = int(doc.get("rev", 0)) + 1
            new = _dumps(doc)
            try:
                if etag is None:
                    self.store.put(key, new, if_absent=True)
                else:
                    self.store.put(key, new, if_match=etag)
            except ConflictError:
                cached = None
                self._forget(key)
                attempt += 1
                # The first conflict usually means a stale cached document: re-read at once, no pause.
                if attempt == 1 or retry.wait():
                    continue
                raise ConflictError(
                    f"could not update {key!r}: it kept changing under {CAS_ATTEMPTS} attempts (too many "
                    "concurrent writers); retry"
                ) from None
            self._remember(key, new)
            return doc

    def _get_doc(self, key: str) -> dict[str, Any]:
        doc = _loads(self.store.get(key), key)
        if not isinstance(doc, dict):
            raise CorruptDataError(f"metadata object {key!r} is not a JSON object")
        return doc

    def _get_docs(self, keys: list[str]) -> list[dict[str, Any] | None]:
        """The documents at ``keys`` fetched concurrently; None for a key that is missing."""
        if not keys:
            return []
        try:
            bodies: list[bytes | None] = list(self.store.get_many(keys))
        except NotFoundError:  # one vanished (deleted meanwhile): fetch one by one, skipping the missing
            bodies = []
            for key in keys:
                try:
                    bodies.append(self.store.get(key))
                except NotFoundError:
                    bodies.append(None)
        return [None if b is None else _loads(b, k) for k, b in zip(keys, bodies, strict=True)]

    # -- experiments -----------------------------------------------------------------------------------------
    def _ensure_experiment(self, name: str, project: str) -> ExperimentInfo:
        key = f"{_EXPERIMENTS}{project}/{name}.json"
        try:
            info = _experiment_from_doc(self._get_doc(key))
        except NotFoundError:
            info = ExperimentInfo(_new_id(), name, project, now())
            doc = {"id": info.id, "name": name, "project": project, "created_at": info.created_at}
            if self._create(key, doc):
                self.store.put(f"{_EXPERIMENT_IDS}{info.id}.json", _dumps({"project": project, "name": name}))
            else:  # another writer created it first: theirs is the experiment
                info = _experiment_from_doc(self._get_doc(key))
        with self._lock:
            self._known_experiments.add(info.id)
        return info

    def _list_experiments(self, project: str | None) -> list[ExperimentInfo]:
        prefix = f"{_EXPERIMENTS}{project}/" if project is not None else _EXPERIMENTS
        keys = [k for k in self.store.list(prefix) if k.endswith(".json")]
        return [_experiment_from_doc(d) for d in self._get_docs(keys) if d is not None]

    def _locate_experiment(self, experiment_id: str) -> ExperimentInfo:
        """The experiment with this id, or ``NotFoundError``."""
        try:
            where = self._get_doc(f"{_EXPERIMENT_IDS}{experiment_id}.json")
            key = f"{_EXPERIMENTS}{where['project']}/{where['name']}.json"
            info = _experiment_from_doc(self._get_doc(key))
            if info.id == experiment_id:
                return info
        except NotFoundError:
            pass
        # The id object is written just after the experiment; a writer killed in between leaves it out.
        for info in self._list_experiments(None):
            if info.id == experiment_id:
                self.store.put(f"{_EXPERIMENT_IDS}{info.id}.json",
                               _dumps({"project": info.project, "name": info.name}))
                return info
        raise NotFoundError(f"experiment {experiment_id} not found")

    def _check_experiment(self, experiment_id: str) -> None:
        with self._lock:
            if experiment_id in self._known_experiments:
                return
        if not self.store.exists(f"{_EXPERIMENT_IDS}{experiment_id}.json"):
            self._locate_experiment(experiment_id)
        with self._lock:
            self._known_experiments.add(experiment_id)

    def _delete_experiment(self, experiment_id: str) -> None:
        info = self._locate_experiment(experiment_id)
        name_key = f"{_EXPERIMENTS}{info.project}/{info.name}.json"
        self.store.delete(name_key)  # first: the experiment disappears from listings at once
        self.store.delete(f"{_EXPERIMENT_IDS}{experiment_id}.json")
        claims = self._claims_of(experiment_id)
        run_ids = list(claims.values())
        if run_ids:
            with ThreadPoolExecutor(min(8, len(run_ids)), thread_name_prefix="labvault-delete") as pool:
                per_run = list(pool.map(lambda rid: self.store.list(f"{_RUNS}{rid}/"), run_ids))
            self.store.delete_many([k for keys in per_run for k in keys])
        self.store.delete_many(self.store.list(f"{_NUMBERS}{experiment_id}/"))
        with self._lock:
            self._known_experiments.discard(experiment_id)
            self._claims.pop(experiment_id, None)
            self._next_number.pop(experiment_id, None)
            for rid in run_ids:
                self._known_runs.discard(rid)
                self._next_seq.pop(rid, None)
                self._docs.pop(_run_key(rid), None)
                for key in [k for k in self._docs if k.startswith(_artifacts_prefix(rid))]:
                    self._docs.pop(key, None)

    # -- runs ------------------------------------------------------------------------------------------------
    def _claims_of(self, experiment_id: str) -> dict[int, str]:
        """number -> run id of every claimed number of the experiment (claims never change: cached)."""
        keys = self.store.list(f"{_NUMBERS}{experiment_id}/")
        with self._lock:
            known = dict(self._claims.get(experiment_id, {}))
        fresh = [(n, k) for k in keys if (n := _tail_number(k)) is not None and n not in known]
        if fresh:
            bodies = self._get_docs_raw([k for _n, k in fresh])
            for (n, _k), body in zip(fresh, bodies, strict=True):
                if body is not None:
                    known[n] = body.decode("ascii")
            with self._lock:
                self._claims.setdefault(experiment_id, {}).update(known)
        return known

    def _get_docs_raw(self, keys: list[str]) -> list[bytes | None]:
        try:
            return list(self.store.get_many(keys))
        except NotFoundError:
            out: list[bytes | None] = []
            for key in keys:
                try:
                    out.append(self.store.get(key))
                except NotFoundError:
                    out.append(None)
            return out

    def _claim_number(self, experiment_id: str, run_id: str) -> int:
        """Claim the next free run number with If-None-Match: * (dense and unique across writers)."""
        with self._lock:
            number = self._next_number.get(experiment_id)
        if number is None:
            number = max(self._claims_of(experiment_id), default=0) + 1
        misses = 0
        while True:
            try:
                self.store.put(_number_key(experiment_id, number), run_id.encode("ascii"), if_absent=True)
                break
            except ConflictError:
                misses += 1
                if misses % 4 == 0:  # far behind: jump to the end of the claims
                    number = max(number, max(self._claims_of(experiment_id), default=0) + 1)
                else:
                    number += 1
        with self._lock:
            self._next_number[experiment_id] = number + 1
            self._claims.setdefault(experiment_id, {})[number] = run_id
        return number

    def _create_run(
        self, experiment_id: str, name: str | None, parent_id: str | None, start_time: float,
        params: dict[str, Any], tags: dict[str, str], *, run_id: str | None = None,
    ) -> RunInfo:
        self._check_experiment(experiment_id)
        if parent_id is not None and not self._run_exists(parent_id):
            raise NotFoundError(f"parent run {parent_id} not found")
        rid = run_id or _new_id()
        doc: dict[str, Any] = {
            "id": rid, "experiment_id": experiment_id, "number": 0, "name": name, "parent_id": parent_id,
            "status": "running", "start_time": start_time, "end_time": None, "error": None,
            "heartbeat": start_time, "params": params, "tags": tags, "metrics": {}, "results": {}, "rev": 0,
        }
        # 1. the run document, created once (a chosen id that exists already -> AlreadyExistsError)
        if not self._create(_run_key(rid), doc):
            raise run_exists_error(rid)
        # 2. the number: claimed after the document, so a claim always finds its run
        number = self._claim_number(experiment_id, rid)
        # 3. the number recorded in the document (until then readers take it from the claim)
        self._update(_run_key(rid), lambda d: d.update(number=number),
                     lambda: NotFoundError(f"run {rid} not found"))
        with self._lock:
            self._known_runs.add(rid)
            self._next_seq[rid] = 1
            self._seq_written[rid] = time.monotonic()
        doc["number"] = number
        return _run_from_doc(doc)

    def _run_exists(self, run_id: str) -> bool:
        with self._lock:
            if run_id in self._known_runs:
                return True
        return self.store.exists(_run_key(run_id))

    def _check_run(self, run_id: str) -> None:
        if not self._run_exists(run_id):
            raise NotFoundError(f"run {run_id} not found")

    def _number_from_claims(self, doc: dict[str, Any]) -> int | None:
        """The number of a run whose creator was killed before recording it (None: not claimed yet)."""
        for number, rid in self._claims_of(doc["experiment_id"]).items():
            if rid == doc["id"]:
                return number
        return None

    def _get_run(self, run_id: str) -> RunInfo:
        try:
            doc = self._get_doc(_run_key(run_id))
        except NotFoundError:
            raise NotFoundError(f"run {run_id} not found") from None
        if not doc.get("number"):
            number = self._number_from_claims(doc)
            if number is None:
                raise NotFoundError(f"run {run_id} not found (its creation has not finished)")
            return _run_from_doc(doc, number)
        return _run_from_doc(doc)

    def _list_runs(self, experiment_ids: list[str]) -> list[RunInfo]:
        claimed: list[tuple[int, str]] = []
        if len(experiment_ids) > 1:
            with ThreadPoolExecutor(min(8, len(experiment_ids)), thread_name_prefix="labvault-list") as pool:
                per_exp = list(pool.map(self._claims_of, experiment_ids))
        else:
            per_exp = [self._claims_of(e) for e in experiment_ids]
        for claims in per_exp:
            claimed.extend(sorted(claims.items()))
        docs = self._get_docs([_run_key(rid) for _n, rid in claimed])
        return [_run_from_doc(doc, number) for (number, _rid), doc in zip(claimed, docs, strict=True)
                if doc is not None]

    def _mutate_run(self, run_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        return self._update(_run_key(run_id), change, lambda: NotFoundError(f"run {run_id} not found"))

    def _update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        self._mutate_run(run_id, lambda d: d.update(fields))

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        def change(doc: dict[str, Any]) -> None:
            check_params_conflict(run_id, doc["params"], params)
            doc["params"].update(params)

        self._mutate_run(run_id, change)

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self._mutate_run(run_id, lambda d: d["tags"].update(tags))

    def _log_results(self, run_id: str, results: dict[str, Any]) -> None:
        self._mutate_run(run_id, lambda d: d["results"].update(results))

    # -- metrics ---------------------------------------------------------------------------------------------
    def _metric_objects(self, run_id: str) -> tuple[list[_Obj], list[_Obj]]:
        """(compactions, segments) of a run's metrics as sorted (number, key, modified) triples."""
        compacts: list[_Obj] = []
        segments: list[_Obj] = []
        for info in self.store.scan(_metrics_prefix(run_id)):
            tail = info.key.rsplit("/", 1)[-1]
            if tail.isdigit():
                segments.append((int(tail), info.key, info.modified))
            elif tail.startswith("c") and tail[1:].isdigit():
                compacts.append((int(tail[1:]), info.key, info.modified))
        return sorted(compacts), sorted(segments)

    def _next_segment(self, run_id: str) -> int:
        """The segment number to write next: this object's own count when it wrote lately, else listed."""
        with self._lock:
            cached = self._next_seq.get(run_id)
            fresh = time.monotonic() - self._seq_written.get(run_id, -1e18) < SEQ_CACHE_SECONDS
            if cached is not None and fresh:
                self._next_seq[run_id] = cached + 1
                return cached
        compacts, segments = self._metric_objects(run_id)
        seq = max([n for n, _k, _m in compacts] + [n for n, _k, _m in segments], default=0) + 1
        with self._lock:
            self._next_seq[run_id] = seq + 1
        return seq

    def _log_metrics(self, run_id: str, series: list[MetricSeries], batch_id: str | None) -> bool:
        if batch_id is None:
            self._append_segment(run_id, series)
            return True
        marker = f"{_batches_prefix(run_id)}{batch_id}"
        with self._batch_locks[zlib.crc32(run_id.encode()) % _BATCH_STRIPES]:
            if self.store.exists(marker):
                return False
            self._append_segment(run_id, series)
            with contextlib.suppress(ConflictError):  # another process wrote the same batch at once
                self.store.put(marker, b"", if_absent=True)
        return True

    def _append_segment(self, run_id: str, series: list[MetricSeries]) -> None:
        """Write one metric segment (the next free number) and merge its latest values into the run."""
        self._check_run(run_id)
        body = encode_segment(series)
        while True:
            seq = self._next_segment(run_id)
            try:
                self.store.put(f"{_metrics_prefix(run_id)}{seq:012d}", body, if_absent=True)
                break
            except ConflictError:  # another process appended to this run: re-list and go after it
                with self._lock:
                    self._next_seq.pop(run_id, None)
            except BaseException:  # nothing written: the next flush lists again (no gap in the numbers)
                with self._lock:
                    self._next_seq.pop(run_id, None)
                raise
        with self._lock:
            self._known_runs.add(run_id)
            self._seq_written[run_id] = time.monotonic()
        latest = {s.key: float(s.values[-1]) for s in series}
        self._mutate_run(run_id, lambda d: d["metrics"].update(latest))

    def _metric_history(self, run_id: str, key: str) -> MetricSeries:
        for attempt in range(3):
            compacts, segments = self._metric_objects(run_id)
            if not compacts and not segments:
                self._check_run(run_id)
                return MetricSeries.empty(key)
            base = compacts[-1] if compacts else None
            covered = base[0] if base else 0
            live = [seg for seg in segments if seg[0] > covered]
            keys = ([base[1]] if base else []) + [k for _n, k, _m in live]
            try:
                bodies = self.store.get_many(keys)
            except NotFoundError:  # a compaction removed what was listed: list again
                if attempt == 2:
                    raise
                continue
            decoded = [decode_segment(body, k) for k, body in zip(keys, bodies, strict=True)]
            if len(live) > COMPACT_AFTER:
                self._compact(run_id, covered, decoded, live)
            self._expire(compacts, segments)
            return MetricSeries.concat(key, [s for seg in decoded for s in seg if s.key == key])
        raise AssertionError("unreachable")  # pragma: no cover

    def _compact(self, run_id: str, covered: int, decoded: list[list[MetricSeries]],
                 live: list[_Obj]) -> None:
        """Write ``c<N>``: every point of segments 1..N (the last compaction plus the gap-free run of
        segments after it). Readers then fetch it and the segments after N only."""
        base_parts = decoded[: len(decoded) - len(live)]
        upto, used = covered, 0
        for n, _k, _m in live:
            if n != upto + 1:
                break  # a number still being written: compact only what precedes it
            upto, used = n, used + 1
        if used < 2:
            return
        per_key: dict[str, list[MetricSeries]] = {}
        for seg in base_parts + decoded[len(base_parts): len(base_parts) + used]:
            for s in seg:
                per_key.setdefault(s.key, []).append(s)
        merged = [MetricSeries.concat(k, parts) for k, parts in per_key.items()]
        with contextlib.suppress(ConflictError):  # another reader compacted the same segments
            self.store.put(f"{_metrics_prefix(run_id)}c{upto:012d}", encode_segment(merged), if_absent=True)

    def _expire(self, compacts: list[_Obj], segments: list[_Obj]) -> None:
        """Delete segments and compactions that a newer compaction holds, once they are old enough that
        no writer can still be about to write a number they cover (see ``COMPACTED_GRACE``)."""
        if not compacts:
            return
        newest = compacts[-1][0]
        cutoff = time.time() - COMPACTED_GRACE
        doomed = [k for n, k, m in segments if n <= newest and m < cutoff]
        doomed += [k for n, k, m in compacts[:-1] if m < cutoff]
        if doomed:
            self.store.delete_many(doomed)

    # -- artifacts -------------------------------------------------------------------------------------------
    def _add_artifact(self, run_id: str, info: ArtifactInfo) -> None:
        self._check_run(run_id)

        def change(doc: dict[str, Any]) -> None:
            doc["items"][info.key] = [info.size, info.digest, info.created_at]

        self._update(_artifact_shard_key(run_id, info.key), change,
                     lambda: NotFoundError(f"run {run_id} not found"),
                     initial=lambda: {"items": {}, "rev": 0})

    def _list_artifacts(self, run_id: str, prefix: str) -> list[ArtifactInfo]:
        keys = self.store.list(_artifacts_prefix(run_id))
        if not keys:
            self._check_run(run_id)
            return []
        out = []
        for doc in self._get_docs(keys):
            for k, item in (doc or {}).get("items", {}).items():
                if k.startswith(prefix):
                    out.append(_artifact_info(k, item))
        return out

    def _get_artifact_info(self, run_id: str, key: str) -> ArtifactInfo | None:
        """Read the one index shard that holds ``key`` (None when the run has no such artifact)."""
        try:
            item = self._get_doc(_artifact_shard_key(run_id, key)).get("items", {}).get(key)
        except NotFoundError:
            item = None
        if item is None:
            self._check_run(run_id)
            return None
        return _artifact_info(key, item)


class S3Backend(BlobBackend, scheme="s3"):
    """``s3://bucket/prefix?endpoint_url=...``: a whole vault in an S3 bucket (see the module docstring).

    Unless the URI or the options say otherwise, large artifacts go up in parts of ``part_size=8MiB``,
    ``max_concurrency=4`` at a time, which bounds an upload's buffers to about 40 MB whatever the file
    size (``S3BlobStore``'s own defaults, 16 MiB x 8, buffer about 150 MB); raise both for more
    throughput on a fast network, e.g. ``s3://bucket/p?part_size=16MiB&max_concurrency=8``.
    """

    config_schema: ClassVar[dict[str, Any]] = {"type": "object"}
    #: Memory-bounded multipart defaults of a vault (see the class docstring).
    DEFAULT_OPTIONS: ClassVar[dict[str, str]] = {"part_size": "8MiB", "max_concurrency": "4"}

    @classmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> S3Backend:
        """Build the backend on ``S3BlobStore.from_url(uri, **options)`` (no I/O yet)."""
        given = set(options) | {k for k, _ in parse_qsl(urlsplit(uri).query, keep_blank_values=True)}
        merged = {k: val for k, val in cls.DEFAULT_OPTIONS.items() if k not in given}
        merged.update(options)
        return cls(uri, S3BlobStore.from_url(uri, **merged), artifacts)
