"""Readers of the built-in backends' raw media, for ``BackendHookTests`` (import them into a test module).

Each class supplies the four readers of ``labvault.testing.BackendHookTests`` (``raw_experiment``,
``raw_run``, ``raw_metric``, ``raw_blob``) for one storage layout, read behind the backend's back with
the medium's own client and the layout its backend module documents; a test class mixes one in before
``BackendHookTests`` and gives the ``raw`` fixture it reads::

    class TestFileBackendHooks(FileLayout, BackendHookTests):
        @pytest.fixture
        def raw(self, tmp_path): return tmp_path / "store"

The decoders here are written from the documented formats, not imported from the backends, so a backend
that writes something other than what it documents fails its raw checks.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from labvault.errors import NotFoundError
from labvault.store.abc import Backend

#: A Redis metric list item: packed (int64 step, float64 value, float64 timestamp) points.
_REDIS_POINT = np.dtype([("step", "<i8"), ("value", "<f8"), ("ts", "<f8")])


def _points(steps: Any, values: Any) -> list[tuple[int, float]]:
    return [(int(s), float(v)) for s, v in zip(steps, values, strict=True)]


def _packed_points(data: bytes, n: int, offset: int) -> list[tuple[int, float]]:
    """n little-endian int64 steps at ``offset`` followed by n float64 values (then the timestamps)."""
    return _points(np.frombuffer(data, "<i8", n, offset), np.frombuffer(data, "<f8", n, offset + 8 * n))


# -- the file backend: a directory (labvault.store.file.backend) ---------------------------------------------
class FileLayout:
    """``raw`` is the store's root directory: JSON documents, the run journal, segment files, blob files."""

    def raw_experiment(self, raw: Path, experiment_id: str) -> Mapping[str, Any] | None:
        """``experiments/<id>/experiment.json``."""
        path = raw / "experiments" / experiment_id / "experiment.json"
        return json.loads(path.read_text()) if path.exists() else None

    def raw_run(self, raw: Path, run_id: str) -> Mapping[str, Any] | None:
        """The run folded from its lines in an experiment's ``journal.jsonl``."""
        for journal in sorted(raw.glob("experiments/*/journal.jsonl")):
            run: dict[str, Any] | None = None
            for line in journal.read_text().splitlines():
                entry = json.loads(line)
                if entry["id"] != run_id:
                    continue
                if entry["op"] == "create":
                    run = {"experiment_id": journal.parent.name, "number": entry["number"],
                           "status": "running", "params": dict(entry["params"]), "tags": dict(entry["tags"]),
                           "results": {}}
                elif run is not None and entry["op"] in ("params", "tags", "results"):
                    run[entry["op"]].update(entry[entry["op"]])
                elif run is not None and entry["op"] == "update":
                    run.update(entry["fields"])
            if run is not None:
                return run
        return None

    def raw_metric(self, raw: Path, run_id: str, key: str) -> list[tuple[int, float]]:
        """The records of ``runs/<run id>/metrics/<quoted key>.seg``: a 16-byte header (``LVS1``, n, crc,
        flags), then n steps (int64), n values and n timestamps (float64), little-endian."""
        out: list[tuple[int, float]] = []
        for path in raw.glob(f"experiments/*/runs/{run_id}/metrics/{quote(key, safe='')}.seg"):
            data, pos = path.read_bytes(), 0
            while pos < len(data):
                magic, n, _crc, _flags = struct.unpack_from("<4sIII", data, pos)
                assert magic == b"LVS1", f"{path}: no segment record at byte {pos}"
                body = pos + 16
                out += _packed_points(data, n, body)
                pos = body + 24 * n
        return out

    def raw_blob(self, raw: Path, key: str) -> bytes | None:
        """``blobs/<key>`` (the ``FileBlobStore`` of the store)."""
        path = raw.joinpath("blobs", *key.split("/"))
        return path.read_bytes() if path.exists() else None


# -- SQLite and PostgreSQL: the tables (labvault.store.sql.schema) ------------------------------------------
class SQLTables:
    """``raw`` is a SQLAlchemy engine on the store's database (its schema on the search path).

    Every read takes a connection of its own: a long-lived transaction would keep reading one snapshot.
    """

    def _rows(self, raw: Any, sql: str, **params: Any) -> list[Any]:
        import sqlalchemy as sa

        with raw.connect() as conn:
            return list(conn.execute(sa.text(sql), params))

    def raw_experiment(self, raw: Any, experiment_id: str) -> Mapping[str, Any] | None:
        """The ``experiments`` row."""
        rows = self._rows(raw, "SELECT name, project FROM experiments WHERE id = :id", id=experiment_id)
        return {"name": rows[0][0], "project": rows[0][1]} if rows else None

    def raw_run(self, raw: Any, run_id: str) -> Mapping[str, Any] | None:
        """The ``runs`` row with its ``run_params``, ``run_tags`` and ``run_results`` rows."""
        rows = self._rows(raw, "SELECT experiment_id, number, status FROM runs WHERE id = :id", id=run_id)
        if not rows:
            return None
        params = self._rows(raw, "SELECT key, value_json FROM run_params WHERE run_id = :id", id=run_id)
        tags = self._rows(raw, "SELECT key, value FROM run_tags WHERE run_id = :id", id=run_id)
        results = self._rows(raw, "SELECT key, value_json FROM run_results WHERE run_id = :id", id=run_id)
        return {"experiment_id": rows[0][0], "number": rows[0][1], "status": rows[0][2],
                "params": {k: json.loads(val) for k, val in params}, "tags": dict(tags),
                "results": {k: json.loads(val) for k, val in results}}

    def raw_metric(self, raw: Any, run_id: str, key: str) -> list[tuple[int, float]]:
        """The ``metric_segments`` rows in ``seq`` order: raw little-endian int64 steps, float64 values."""
        rows = self._rows(raw, 'SELECT steps, "values" FROM metric_segments WHERE run_id = :id '
                               "AND key = :key ORDER BY seq", id=run_id, key=key)
        return [p for steps, values in rows for p in _points(np.frombuffer(steps, "<i8"),
                                                             np.frombuffer(values, "<f8"))]

    def raw_blob(self, raw: Any, key: str) -> bytes | None:
        """The ``blobs`` row and its ``blob_chunks`` (``SQLBlobStore``; SQLite keeps small blobs there)."""
        rows = self._rows(raw, "SELECT blob_id FROM blobs WHERE key = :key", key=key)
        if not rows:
            return None
        chunks = self._rows(raw, "SELECT data FROM blob_chunks WHERE blob_id = :b ORDER BY idx", b=rows[0][0])
        return b"".join(bytes(c[0]) for c in chunks)


# -- Redis: keys under the prefix (labvault.store.redis.backend, labvault.blobs.redis) ----------------------
@dataclass(frozen=True)
class RedisMedium:
    """A ``redis.Redis`` client on the store's database and the vault's key prefix."""

    client: Any
    prefix: str


class RedisKeys:
    """``raw`` is a ``RedisMedium``: every key the readers look at is under its prefix."""

    def raw_experiment(self, raw: RedisMedium, experiment_id: str) -> Mapping[str, Any] | None:
        """The ``<P>experiments`` hash's field for the id (a JSON document)."""
        doc = raw.client.hget(raw.prefix + "experiments", experiment_id)
        return json.loads(doc) if doc is not None else None

    def raw_run(self, raw: RedisMedium, run_id: str) -> Mapping[str, Any] | None:
        """The ``<P>run:<id>`` hash: JSON text fields, ``p:``/``t:``/``r:`` for params, tags, results."""
        stored = raw.client.hgetall(f"{raw.prefix}run:{run_id}")
        fields = {k.decode(): json.loads(val) for k, val in stored.items()}
        if not fields:
            return None
        parts: dict[str, dict[str, Any]] = {"p": {}, "t": {}, "r": {}}
        for name, value in fields.items():
            kind, _, key = name.partition(":")
            if key and kind in parts:
                parts[kind][key] = value
        return {"experiment_id": fields["experiment_id"], "number": fields["number"],
                "status": fields["status"], "params": parts["p"], "tags": parts["t"], "results": parts["r"]}

    def raw_metric(self, raw: RedisMedium, run_id: str, key: str) -> list[tuple[int, float]]:
        """The ``<P>run:<id>:metric:<key>`` list: packed (int64 step, float64 value, float64 time) points."""
        items = raw.client.lrange(f"{raw.prefix}run:{run_id}:metric:{key}", 0, -1)
        points = [np.frombuffer(item, _REDIS_POINT) for item in items]
        return [p for batch in points for p in _points(batch["step"], batch["value"])]

    def raw_blob(self, raw: RedisMedium, key: str) -> bytes | None:
        """The ``<P>blob:<key>`` manifest and its ``<P>chunk:<upload>:<i>`` strings."""
        manifest = raw.client.hgetall(f"{raw.prefix}blob:{key}")
        if not manifest:
            return None
        upload, chunks = manifest[b"upload"].decode(), int(manifest[b"chunks"])
        return b"".join(raw.client.get(f"{raw.prefix}chunk:{upload}:{i}") for i in range(chunks))


# -- S3 and any BlobStore: objects under the prefix (labvault.store.objectstore) -----------------------------
class ObjectLayout:
    """The object layout of ``BlobBackend``; subclasses read one object (``raw_object``) and list keys."""

    def raw_object(self, raw: Any, key: str) -> bytes | None:
        """The object under ``key`` (relative to the vault's prefix), or None."""
        raise NotImplementedError

    def raw_keys(self, raw: Any, prefix: str) -> list[str]:
        """The keys under ``prefix`` (relative to the vault's prefix), sorted."""
        raise NotImplementedError

    def raw_experiment(self, raw: Any, experiment_id: str) -> Mapping[str, Any] | None:
        """``meta/experiment-ids/<id>.json`` names the experiment; ``meta/experiments/<project>/<name>.json``
        holds it (both must be there)."""
        ref = self.raw_object(raw, f"meta/experiment-ids/{experiment_id}.json")
        if ref is None:
            return None
        names = json.loads(ref)
        doc = self.raw_object(raw, f"meta/experiments/{names['project']}/{names['name']}.json")
        return json.loads(doc) if doc is not None else None

    def raw_run(self, raw: Any, run_id: str) -> Mapping[str, Any] | None:
        """``meta/runs/<id>/run.json``."""
        doc = self.raw_object(raw, f"meta/runs/{run_id}/run.json")
        return json.loads(doc) if doc is not None else None

    def raw_metric(self, raw: Any, run_id: str, key: str) -> list[tuple[int, float]]:
        """The segments ``meta/runs/<id>/metrics/<seq>``: ``LVMSEG1\\n``, a uint32 header length, the JSON
        header ``[[key, n], ...]``, then per key n steps (int64), n values, n timestamps (float64)."""
        out: list[tuple[int, float]] = []
        for name in self.raw_keys(raw, f"meta/runs/{run_id}/metrics/"):
            body = self.raw_object(raw, name)
            assert body is not None and body.startswith(b"LVMSEG1\n"), name
            (size,) = struct.unpack_from("<I", body, 8)
            pos = 12 + size
            for seg_key, n in json.loads(body[12:pos]):
                if seg_key == key:
                    out += _packed_points(body, n, pos)
                pos += 24 * n
        return out

    def raw_blob(self, raw: Any, key: str) -> bytes | None:
        """The object under the blob key (artifacts share the vault's prefix by default)."""
        return self.raw_object(raw, key)


@dataclass(frozen=True)
class S3Medium:
    """A boto3 S3 client, the bucket and the vault's prefix in it."""

    client: Any
    bucket: str
    prefix: str


class S3Objects(ObjectLayout):
    """``raw`` is an ``S3Medium``: objects read with boto3."""

    def raw_object(self, raw: S3Medium, key: str) -> bytes | None:
        """``GetObject`` of ``<prefix>/<key>``."""
        try:
            body: bytes = raw.client.get_object(Bucket=raw.bucket, Key=f"{raw.prefix}/{key}")["Body"].read()
        except raw.client.exceptions.NoSuchKey:
            return None
        return body

    def raw_keys(self, raw: S3Medium, prefix: str) -> list[str]:
        """``ListObjectsV2`` under ``<prefix>/<prefix>``."""
        pages = raw.client.get_paginator("list_objects_v2").paginate(Bucket=raw.bucket,
                                                                      Prefix=f"{raw.prefix}/{prefix}")
        return sorted(o["Key"][len(raw.prefix) + 1:] for page in pages for o in page.get("Contents", []))


class BlobStoreObjects(ObjectLayout):
    """``raw`` is the ``BlobStore`` the backend keeps its objects in (e.g. a ``MemoryBlobStore``)."""

    def raw_object(self, raw: Any, key: str) -> bytes | None:
        """The store's object."""
        return raw.get(key) if raw.exists(key) else None

    def raw_keys(self, raw: Any, prefix: str) -> list[str]:
        """The store's listing."""
        return sorted(raw.list(prefix))


# -- a labvault server: the store it serves (labvault.server) -----------------------------------------------
class ServedStore:
    """``raw`` is the ``Backend`` a labvault server serves: what the client wrote must be in it."""

    def raw_experiment(self, raw: Backend, experiment_id: str) -> Mapping[str, Any] | None:
        """The served store's experiment."""
        found = [e for e in raw.list_experiments() if e.id == experiment_id]
        return {"name": found[0].name, "project": found[0].project} if found else None

    def raw_run(self, raw: Backend, run_id: str) -> Mapping[str, Any] | None:
        """The served store's run."""
        try:
            run = raw.get_run(run_id)
        except NotFoundError:
            return None
        return {"experiment_id": run.experiment_id, "number": run.number, "status": run.status,
                "params": run.params, "tags": run.tags, "results": run.results}

    def raw_metric(self, raw: Backend, run_id: str, key: str) -> list[tuple[int, float]]:
        """The served store's history."""
        try:
            hist = raw.metric_history(run_id, key)
        except NotFoundError:
            return []
        return _points(hist.steps, hist.values)

    def raw_blob(self, raw: Backend, key: str) -> bytes | None:
        """The served store's blob."""
        return raw.blobs.get(key) if raw.blobs.exists(key) else None
