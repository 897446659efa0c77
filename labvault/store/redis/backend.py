"""The Redis backend: daskperiment's team store, rebuilt on hashes, lists, sorted sets and a stream.

URIs (options go in the query string or as keyword arguments of ``labvault.open``)::

    redis://[[user]:password@]host[:port][/db][?prefix=myvault:&...]
    rediss://...                                    (TLS; ssl_* options)
    unix:///path/to/redis.sock[?db=N&prefix=...]
    labvault.open(redis.ConnectionPool(...))        (daskperiment's form; prefix=... as a keyword)

Options: ``prefix`` (key namespace, default ``labvault:``), ``db``, ``chunk_size`` (artifact chunk bytes,
default 1 MiB), ``retries`` (reconnect attempts before ``BackendUnavailableError``, default 6),
``socket_timeout`` / ``socket_connect_timeout`` (seconds), ``client_name``, ``max_connections`` and,
for ``rediss://``, ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_check_hostname``. An unknown option raises ``InvalidArgumentError`` naming it. Construction does
no I/O: the connection pool is made, and the first connection opened, on first use.

Key layout, every key under the vault's prefix ``P`` (letters, digits, ``_ - .`` and one trailing
``:``, so no vault's prefix can match another vault's keys, and none can hold a glob character)::

    P meta                         hash    format -> "1"
    P experiments                  hash    experiment id -> {"id","name","project","created_at"} JSON
    P experiment-names             hash    "project/name" -> experiment id   (get-or-create index)
    P exp:<eid>:counter            string  INCR'd run counter (dense run numbers)
    P exp:<eid>:runs               zset    run id scored by run number
    P run:<rid>                    hash    id, experiment_id, number, name, parent_id, status, start_time,
                                           end_time, error, heartbeat; p:<param>, t:<tag>, m:<metric
                                           latest value>, r:<result>; every value JSON text
    P run:<rid>:summary            string  the whole run as one JSON document (what listings read)
    P run:<rid>:metric:<key>       list    packed batches of (int64 step, float64 value, float64 time)
    P run:<rid>:batches            zset    ids of applied metric batches (last hour), for exactly-once
    P run:<rid>:artifacts          hash    artifact key -> {"size","digest","created_at"} JSON
    P rev                          string  the vault's change number (INCR'd by every write to a run)
    P changes                      zset    run id scored by the change number of its last write
    P events                       stream  change events (field "e": JSON), MAXLEN ~ 10000
    P blobs                        zset    every blob key (lexicographic listing)
    P blob:<key>                   hash    a published blob's manifest: upload, size, chunks, chunk_size
    P chunk:<upload>:<i>           string  the i-th chunk of an upload (expires until published)

Every write that touches a run is one Lua script (atomic, one round trip): it checks the run exists,
applies the write and rebuilds the run's summary document from its hash by string concatenation (no
JSON decoding in Lua, so numbers keep their exact text) and stamps the run with the vault's next change
number (``INCR rev``, ``ZADD changes``). Listings read one summary per run with a single ``SORT ... GET``
and parse them with one ``orjson.loads``.

Searches answer from an in-process run index (``labvault.store.search.runindex``, as on SQLite and
PostgreSQL): a search first reads ``rev`` (one ``GET``); when it moved, one read-only script returns the new
change number, the experiments that exist and the summaries of the runs stamped since the last refresh,
atomically (Redis runs a script alone, so the change numbers follow the order of the writes and the
refresh sees exactly the writes up to its number). An experiment is loaded whole the first time a
search names it. The filter and ordering then run over numpy columns; a filter the vectorised evaluator
does not handle falls back to ``labvault.query`` over every summary (the reference semantics).

Run numbers come from ``INCR`` inside the creating script, which first checks whether the (client-made)
run id already exists, so a retried creation never burns a number. Params are write-once inside a script
that writes nothing when any key holds a different value; the client then decides whether the stored
text is really a different value (``1`` and ``1.0`` are the same param) and raises ``ConflictError``
naming the param, the stored and the new value. Metric batches carry a batch id (the caller's
``log_metrics(..., batch_id=)``, else a fresh one); the appending script applies a batch only if its id
is not in the run's ``batches`` set (ids of the last ``BATCH_MEMORY`` seconds), so a batch re-sent after
a lost reply is stored exactly once.

Connection loss: every call goes through ``RedisConnection.call`` (``labvault.blobs.redis_connection``),
which retries on connection errors and timeouts with exponential backoff and jitter (``labvault._retry``),
reconnecting through the pool, and translates driver errors through one table; every operation is
idempotent (see above), so a retry never duplicates data. When the server stays unreachable the call
raises ``BackendUnavailableError`` naming host:port (or the socket path). Driver exceptions never escape.

Artifacts go to ``RedisBlobStore`` (``labvault.blobs.redis``) unless ``artifacts=`` names another store:
blobs are cut into chunks of ``chunk_size`` bytes written under a fresh upload id (with a one-day expiry
while uploading), and a script publishes the manifest last, so a blob is visible only when complete and
an abandoned upload disappears by itself. Reads fetch a few chunks per round trip, so memory stays flat
for any size.

Change feed (``labvault.store.redis.events``): every mutation is appended to the ``events`` stream
(``XADD ... MAXLEN ~ 10000``); a feed from ``watch()`` is fed by a daemon thread doing blocking ``XREAD``
from the stream's last id at the moment ``watch()`` was called, so every process sharing the vault sees
every change.

Durability is the server's: Redis keeps data in memory and persists it as configured (RDB snapshots,
AOF with ``appendfsync``); labvault does not change the server's configuration.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import threading
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import orjson
import redis

from labvault import query
from labvault.blobs.abc import BlobStore
from labvault.blobs.redis import BLOB_SCRIPTS, RedisBlobStore
from labvault.blobs.redis_connection import (
    DEFAULT_PREFIX,
    RedisConnection,
    RedisSettings,
    as_text,
    parse_uri,
    settings_from_pool,
)
from labvault.domain import ArtifactInfo, ChangeEvent, ExperimentInfo, MetricSeries, RunInfo, now
from labvault.errors import (
    AuthenticationError,
    BackendUnavailableError,
    CorruptDataError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from labvault.store.abc import Backend, check_params_conflict, run_exists_error
from labvault.store.feed import ChangeFeed, LocalChangeFeed
from labvault.store.redis.events import StreamPump, check_stream_id, make_event, payload, same_event
from labvault.store.redis.scripts import BATCH_MEMORY, EVENTS_MAXLEN, RUN_SCRIPTS, pack
from labvault.store.search.runindex import Record, RunIndex, make_record

if TYPE_CHECKING:
    from labvault.query import Expr, OrderKey

__all__ = ["BATCH_MEMORY", "DEFAULT_PREFIX", "SEGMENT_POINTS", "RedisBackend"]

#: Points per list element at most (1.5 MiB); larger batches are split.
SEGMENT_POINTS = 65_536
#: Every script the backend's connection registers: the run scripts and the blob store's.
_SCRIPTS: Mapping[str, str] = {**RUN_SCRIPTS, **BLOB_SCRIPTS}
_POINT = np.dtype([("step", "<i8"), ("value", "<f8"), ("ts", "<f8")])
_RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(RunInfo))
_FAST_RUNINFO = not hasattr(RunInfo, "__slots__")


class RedisBackend(Backend, scheme="redis"):
    """Metadata, metric batches, blobs and change events in one Redis database, under a key prefix."""

    persistent: ClassVar[bool] = True
    multiprocess: ClassVar[bool] = True
    supports_events: ClassVar[bool] = True
    event_log: ClassVar[bool] = True  # the events stream (about EVENTS_MAXLEN entries)
    config_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "properties": {
            "backend": {"enum": ["redis", "rediss", "unix"]},
            "module": {"type": "string"},
            "uri": {"type": "string", "pattern": "^([rR][eE][dD][iI][sS][sS]?|[uU][nN][iI][xX])://"},
            "url": {"type": "string", "pattern": "^([rR][eE][dD][iI][sS][sS]?|[uU][nN][iI][xX])://"},
            "prefix": {"type": "string"},
            "db": {"type": "integer", "minimum": 0},
            "chunk_size": {"type": "integer", "minimum": 1024},
            "retries": {"type": "integer", "minimum": 0, "maximum": 100},
            "socket_timeout": {"type": "number", "exclusiveMinimum": 0},
            "socket_connect_timeout": {"type": "number", "exclusiveMinimum": 0},
            "client_name": {"type": "string"},
            "max_connections": {"type": "integer", "minimum": 1},
        },
        "additionalProperties": False,
    }

    def __init__(self, uri: str, settings: RedisSettings, *, blobs: BlobStore | None = None,
                 pool: Any = None) -> None:
        super().__init__(uri, blobs)
        self._settings = settings
        self.prefix = settings.prefix
        self._conn = RedisConnection(settings, _SCRIPTS, pool)
        self._stopping = threading.Event()
        self._events_key = self.prefix + "events"
        self._sent = threading.local()  # the event the last write script of this thread appended
        #: Searches answer from this (see the module doc); None makes them read every summary instead.
        self._index: RunIndex | None = RunIndex()

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> RedisBackend:
        """``redis://host:port/db``, ``rediss://...`` or ``unix:///path?db=N``; options as documented."""
        return cls(uri, parse_uri(uri, options), blobs=artifacts)

    @classmethod
    def from_pool(cls, pool: Any, *, artifacts: BlobStore | None = None, **options: Any) -> RedisBackend:
        """Use an existing ``redis.ConnectionPool`` (or a ``redis.Redis`` client's), as daskperiment does.

        Options: ``prefix``, ``chunk_size``, ``retries``; the pool's own settings are used as they are.
        """
        if isinstance(pool, redis.Redis):
            pool = pool.connection_pool
        if not isinstance(pool, redis.ConnectionPool):
            raise InvalidArgumentError(
                f"expected a redis.ConnectionPool or redis.Redis, got {type(pool).__name__}")
        settings = settings_from_pool(pool, options)
        if pool.connection_kwargs.get("decode_responses"):
            # labvault reads bytes: same server and settings, replies left undecoded
            settings = dataclasses.replace(
                settings, pool_kwargs={**settings.pool_kwargs, "decode_responses": False})
            pool = redis.ConnectionPool(connection_class=settings.connection_class, **settings.pool_kwargs)
        return cls(settings.identity, settings, blobs=artifacts, pool=pool)

    def _default_blobs(self) -> BlobStore:
        return RedisBlobStore(self._conn)

    # -- identity, pickling ---------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, RedisBackend) and other._settings.identity == self._settings.identity

    def __hash__(self) -> int:
        return hash(("labvault.redis", self._settings.identity))

    def __repr__(self) -> str:
        return f"RedisBackend({self._settings.identity!r})"

    def __getstate__(self) -> dict[str, Any]:
        blobs = self._blobs if not isinstance(self._blobs, RedisBlobStore) else None
        return {"uri": self.uri, "settings": self._settings, "blobs": blobs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"], state["settings"], blobs=state["blobs"])  # type: ignore[misc]

    @property
    def location(self) -> str:
        """Where the vault lives, for messages: host:port (or the socket path) and the prefix."""
        return f"Redis {self._settings.where} prefix {self.prefix!r}"

    def close(self) -> None:
        """Stop the feeds' listener threads and release the connections (a pool you gave stays open)."""
        self._stopping.set()
        with self._feeds_lock:
            feeds = list(self._feeds)
        for feed in feeds:
            feed.close()
        super().close()
        self._conn.close()
        self._stopping = threading.Event()

    def destroy(self) -> int:
        """Delete every key of this vault (SCAN + UNLINK under its prefix, in batches); return how many.

        Other vaults in the same Redis database are untouched: their prefixes never match this one's.
        """
        pattern = self.prefix + "*"  # the prefix holds no glob characters (validated)
        mine = self.prefix.encode()
        deleted = 0
        cursor = 0

        def scan(client: Any) -> tuple[int, list[bytes]]:
            found: tuple[int, list[bytes]] = client.scan(cursor=cursor, match=pattern, count=1000)
            return found

        def unlink(names: list[bytes]) -> Callable[[Any], int]:
            return lambda client: int(client.unlink(*names))

        if self._index is not None:
            with self._index.lock:
                self._index.forget()
        while True:
            cursor, names = self._conn.call(scan, "scan")
            names = [n for n in names if bytes(n).startswith(mine)]
            for start in range(0, len(names), 500):
                deleted += self._conn.call(unlink(names[start:start + 500]), "unlink")
            if int(cursor) == 0:
                return deleted

    # -- keys and scripts -----------------------------------------------------------------------------------
    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _run_keys(self, run_id: str) -> tuple[str, str]:
        base = f"{self.prefix}run:{run_id}"
        return base, base + ":summary"

    def _run_script(self, name: str, keys: list[str], args: list[Any], what: str,
                    event: ChangeEvent | None = None) -> Any:
        """Run a write script with the events stream as KEYS[1] and ``event``'s payload as ARGV[1]."""
        script = self._conn.script(name)
        full_keys = [self._events_key, *keys]
        full_args = [payload(event) if event is not None else b"", *args]
        return self._conn.call(lambda c: script(keys=full_keys, args=full_args, client=c), what)

    def _mark_sent(self, event: ChangeEvent) -> None:
        self._sent.event = event

    # -- change feed ----------------------------------------------------------------------------------------
    def _publish(self, event: ChangeEvent) -> None:
        """Append an event to the vault's stream, unless the write's own script appended it already.

        Every write hook passes its event to its script (a transactional outbox: one round trip, and the
        event exists exactly when the write does); the base class then hands the same event here, where
        it is recognised and skipped. Any other event is appended with its own ``XADD``; when Redis stays
        unreachable it is dropped with a warning rather than failing a write that succeeded.
        """
        sent = getattr(self._sent, "event", None)
        self._sent.event = None
        if sent is not None and same_event(sent, event):
            return
        data = payload(event)
        stream = self._events_key
        try:
            self._conn.call(lambda c: c.xadd(stream, {"e": data}, maxlen=EVENTS_MAXLEN, approximate=True),
                            "event publish")
        except (BackendUnavailableError, PermissionDeniedError, AuthenticationError) as exc:
            warnings.warn(f"labvault: change event {event.kind!r} not published: {exc}", RuntimeWarning,
                          stacklevel=3)

    def _watch(self, after: str | None) -> ChangeFeed:
        """A feed from the stream's newest entry, or from right after the entry ``after`` (replay of what
        the stream still holds: about the last ``EVENTS_MAXLEN`` events)."""
        stream = self._events_key

        def last_id(client: Any) -> bytes:
            newest = client.xrevrange(stream, count=1)
            return bytes(newest[0][0]) if newest else b"0-0"

        start = check_stream_id(after) if after is not None else self._conn.call(last_id, "watch")
        feed = LocalChangeFeed(on_close=self._drop_feed)
        with self._feeds_lock:
            self._feeds.append(feed)
        StreamPump(self._conn, stream, start, feed, self._stopping).thread.start()
        return feed

    # -- experiments ----------------------------------------------------------------------------------------
    @staticmethod
    def _experiment(doc: Any) -> ExperimentInfo:
        d = _loads(doc)
        return ExperimentInfo(d["id"], d["name"], d["project"], float(d["created_at"]))

    def _ensure_experiment(self, name: str, project: str) -> ExperimentInfo:
        eid = uuid.uuid4().hex
        doc = _dumps({"id": eid, "name": name, "project": project, "created_at": now()})
        event = make_event("experiment.created", eid, None, name=name, project=project)
        keys = [self._k("experiment-names"), self._k("experiments"), self._k("meta")]
        stored, _created = self._run_script("ensure_experiment", keys, [f"{project}/{name}", eid, doc],
                                            "experiment creation", event)
        if stored is None:
            raise CorruptDataError(
                f"{self.location}: experiment {project}/{name} is indexed but has no record")
        info = self._experiment(stored)
        if info.id == eid:  # created by this call (possibly by an attempt whose reply was lost)
            self._mark_sent(event)
        return info

    def _list_experiments(self, project: str | None) -> list[ExperimentInfo]:
        key = self._k("experiments")
        docs = self._conn.call(lambda c: c.hvals(key), "experiment listing")
        infos = [self._experiment(d) for d in docs]
        return [e for e in infos if project is None or e.project == project]

    def _delete_experiment(self, experiment_id: str) -> None:
        script = self._conn.script("delete_experiment")
        event = make_event("experiment.deleted", experiment_id, None)
        keys = [self._events_key, self._k("experiments"), self._k("experiment-names"),
                self._k("exp", experiment_id, "runs"), self._k("exp", experiment_id, "counter")]
        args = [payload(event), self.prefix, experiment_id]
        attempts = 0

        def delete(client: Any) -> int:
            nonlocal attempts
            attempts += 1
            return int(script(keys=keys, args=args, client=client))

        if not self._conn.call(delete, "experiment deletion") and attempts == 1:
            # (after a retry, "missing" means the first attempt deleted it and its reply was lost)
            raise NotFoundError(f"experiment {experiment_id} not found")
        self._mark_sent(event)

    # -- runs -----------------------------------------------------------------------------------------------
    def _create_run(
        self, experiment_id: str, name: str | None, parent_id: str | None, start_time: float,
        params: dict[str, Any], tags: dict[str, str], *, run_id: str | None = None,
    ) -> RunInfo:
        chosen = run_id is not None
        run_id = run_id or uuid.uuid4().hex
        run_key, summary = self._run_keys(run_id)
        if chosen and self._conn.call(lambda c: c.exists(run_key), "run lookup"):
            raise run_exists_error(run_id)
        parent_key = self._run_keys(parent_id)[0] if parent_id else run_key
        stamp = _dumps(start_time)
        # The event's JSON around the run number, which only the script knows: head .. number .. tail.
        sample = payload(make_event("run.created", experiment_id, run_id, number=0, name=name,
                                    parent_id=parent_id))
        marker = b'"data":{"number":0'
        cut = sample.index(marker) + len(marker) - 1
        head, tail = sample[:cut], sample[cut + 1:]
        args: list[Any] = [experiment_id, run_id, "1" if parent_id else "0",
                           "id", _dumps(run_id), "experiment_id", _dumps(experiment_id), "name", _dumps(name),
                           "parent_id", _dumps(parent_id), "status", b'"running"', "start_time", stamp,
                           "end_time", b"null", "error", b"null", "heartbeat", stamp]
        for k, val in params.items():
            args += ["p:" + k, _dumps(val)]
        for k, text in tags.items():
            args += ["t:" + k, _dumps(text)]
        keys = [self._k("experiments"), self._k("exp", experiment_id, "counter"),
                self._k("exp", experiment_id, "runs"), run_key, summary, parent_key]
        script = self._conn.script("create_run")
        full_keys = [self._events_key, *keys]
        packed = [head, *args[:3], pack(args[3:]), tail]
        number = int(self._conn.call(lambda c: script(keys=full_keys, args=packed, client=c),
                                     "run creation"))
        if number == -1:
            raise NotFoundError(f"experiment {experiment_id} not found")
        if number == -2:
            raise NotFoundError(f"parent run {parent_id} not found")
        self._mark_sent(make_event("run.created", experiment_id, run_id, number=number, name=name,
                                   parent_id=parent_id))
        return RunInfo(
            id=run_id, experiment_id=experiment_id, number=number, name=name, parent_id=parent_id,
            status="running", start_time=start_time, heartbeat=start_time, params=dict(params),
            tags=dict(tags),
        )

    @staticmethod
    def _infos(docs: Sequence[bytes | None]) -> list[RunInfo]:
        """RunInfos from summary documents (missing ones skipped), parsed with one ``loads``.

        A summary's keys are exactly ``RunInfo``'s fields, so the parsed dict becomes the instance's
        ``__dict__`` directly (a quarter of the time of a listing otherwise goes to ``__init__``).
        """
        present = [d for d in docs if d is not None]
        if not present:
            return []
        big = len(present) > 500 and gc.isenabled()
        if big:  # many small acyclic objects: the cyclic GC would only slow the parse down
            gc.disable()
        try:
            raw = b"[" + b",".join(present) + b"]"
            parsed = _loads(raw)
            nonfinite = b'"NaN"' in raw or b'Infinity"' in raw  # stored as strings: make them floats
            new = object.__new__
            out = []
            for d in parsed:
                if nonfinite:
                    metrics = d["metrics"]
                    for key, value in metrics.items():
                        if value.__class__ is str:
                            metrics[key] = float(value)
                if _FAST_RUNINFO and d.keys() == _RUN_FIELDS:
                    info = new(RunInfo)
                    info.__dict__ = d
                else:
                    info = RunInfo(**{k: val for k, val in d.items() if k in _RUN_FIELDS})
                out.append(info)
            return out
        finally:
            if big:
                gc.enable()

    def _get_run(self, run_id: str) -> RunInfo:
        summary = self._run_keys(run_id)[1]
        doc = self._conn.call(lambda c: c.get(summary), "run lookup")
        if doc is None:
            raise NotFoundError(f"run {run_id} not found")
        return self._infos([doc])[0]

    def _summaries(self, experiment_ids: list[str]) -> list[bytes | None]:
        """Every summary document of the experiments' runs: one ``SORT ... GET`` each, pipelined."""
        pattern = f"{self.prefix}run:*:summary"  # the prefix holds no '*' (validated)
        indexes = [self._k("exp", eid, "runs") for eid in experiment_ids]

        def fetch(client: Any) -> list[bytes | None]:
            if len(indexes) == 1:
                docs: list[bytes | None] = client.sort(indexes[0], by="nosort", get=pattern)
                return docs
            pipe = client.pipeline(transaction=False)
            for index in indexes:
                pipe.sort(index, by="nosort", get=pattern)
            return [doc for docs in pipe.execute() for doc in docs]

        return self._conn.call(fetch, "run listing")

    def _list_runs(self, experiment_ids: list[str]) -> list[RunInfo]:
        if not experiment_ids:
            return []
        infos = self._infos(self._summaries(experiment_ids))
        infos.sort(key=lambda r: (r.start_time, r.experiment_id, r.number))
        return infos

    def _search_runs(
        self,
        experiment_ids: list[str],
        expr: Expr,
        order: Sequence[OrderKey],
        limit: int | None,
        offset: int,
    ) -> list[RunInfo]:
        """Evaluate the filter on the run summaries (``labvault.query``, the reference semantics).

        Before parsing, documents that cannot match are dropped by a necessary condition checked on the
        raw bytes: for each top-level ``tags.k = 'v'`` / ``params.k = 'v'`` (and ``IN`` lists) the
        document must contain ``"k":"v"`` exactly as stored. The full filter is then applied.
        """
        if not experiment_ids or limit == 0:
            return []
        if self._index is not None:
            found = self._indexed_search(experiment_ids, expr, order, limit, offset)
            if found is not None:
                return found
        docs = [d for d in self._summaries(experiment_ids) if d is not None]
        for needles in _required_needles(expr):
            docs = [d for d in docs if any(n in d for n in needles)]
        runs = query.sort_runs(query.filter_runs(expr, self._infos(docs)), order)
        end = None if limit is None else offset + limit
        return runs[offset:end]

    def _indexed_search(self, experiment_ids: list[str], expr: Expr, order: Sequence[OrderKey],
                        limit: int | None, offset: int) -> list[RunInfo] | None:
        """A search answered by the run index after bringing it up to date (None: the filter needs the
        reference evaluator)."""
        index = self._index
        assert index is not None
        rev_key = self.prefix + "rev"
        if index.rev >= 0 and all(map(index.has, experiment_ids)):
            raw = self._conn.call(lambda c: c.get(rev_key), "change number")
            if (int(raw) if raw is not None else 0) == index.rev:
                with index.lock:  # nothing changed since the last refresh
                    return index.search(experiment_ids, expr, order, limit, offset)
        script = self._conn.script("index_refresh")
        with index.lock:
            since = index.rev if index.loaded() else -1
            missing = [e for e in dict.fromkeys(experiment_ids) if not index.has(e)]
            keys = [rev_key, self.prefix + "changes", self._k("experiments"),
                    *(self._k("exp", e, "runs") for e in missing)]
            args = [since, self.prefix]
            reply = self._conn.call(lambda c: script(keys=keys, args=args, client=c), "run index refresh")
            top, existing = int(reply[0]), {as_text(e) for e in reply[1]}
            if top < since:  # the vault was destroyed and made again underneath: start over
                index.forget()
                return self._indexed_search(experiment_ids, expr, order, limit, offset)
            for rec in self._records(reply[2]):
                index.put(rec)
            for gone in index.loaded() - existing:
                index.forget(gone)
            for exp_id, docs in zip(missing, reply[3:], strict=True):
                if exp_id in existing:
                    index.load(exp_id, self._records(docs))
            index.rev = top
            return index.search(experiment_ids, expr, order, limit, offset)

    def _records(self, docs: Sequence[bytes | None]) -> list[Record]:
        """Run-index records from summary documents (missing ones skipped)."""
        return [make_record(i.id, i.experiment_id, i.number, i.name, i.parent_id, i.status, i.start_time,
                            i.end_time, i.error, i.heartbeat, i.params, i.tags, i.metrics, i.results)
                for i in self._infos(docs)]

    def _hset(self, run_id: str, target: str, pairs: list[Any], rebuild: bool, what: str,
              event: ChangeEvent) -> None:
        run_key, summary = self._run_keys(run_id)
        keys = [run_key, target, summary]
        if not int(self._run_script("hset", keys, ["1" if rebuild else "0", pack(pairs)], what, event)):
            raise NotFoundError(f"run {run_id} not found")
        self._mark_sent(event)

    def _update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        pairs: list[Any] = []
        for key, value in fields.items():
            pairs += [key, _dumps(value)]
        status = fields.get("status")
        event: ChangeEvent | None = None
        if set(fields) != {"heartbeat"}:  # the base class sends no event for heartbeats
            kind = f"run.{status}" if status in ("finished", "failed", "killed") else "run.updated"
            changed = {k: val for k, val in fields.items() if k != "heartbeat"}
            event = make_event(kind, None, run_id, **changed)
        run_key, summary = self._run_keys(run_id)
        if not int(self._run_script("hset", [run_key, run_key, summary], ["1", pack(pairs)], "run update",
                                    event)):
            raise NotFoundError(f"run {run_id} not found")
        if event is not None:
            self._mark_sent(event)

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        run_key, summary = self._run_keys(run_id)
        event = make_event("params.logged", None, run_id, keys=sorted(params))
        pending = dict(params)
        while True:
            args: list[Any] = []
            for k, val in pending.items():
                args += ["p:" + k, _dumps(val)]
            reply = self._run_script("params", [run_key, summary], [pack(args)], "param write", event)
            status = as_text(reply[0])
            if status == "missing":
                raise NotFoundError(f"run {run_id} not found")
            if status == "ok":
                self._mark_sent(event)
                return
            stored = {as_text(reply[i])[2:]: _loads(reply[i + 1]) for i in range(1, len(reply), 2)}
            check_params_conflict(run_id, stored, pending)  # raises unless the texts differ only in form
            pending = {k: val for k, val in pending.items() if k not in stored}

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        pairs: list[Any] = []
        for k, text in tags.items():
            pairs += ["t:" + k, _dumps(text)]
        event = make_event("tags.set", None, run_id, keys=sorted(tags))
        self._hset(run_id, self._run_keys(run_id)[0], pairs, True, "tag write", event)

    def _log_results(self, run_id: str, results: dict[str, Any]) -> None:
        pairs: list[Any] = []
        for k, val in results.items():
            pairs += ["r:" + k, _dumps(val)]
        event = make_event("results.logged", None, run_id, keys=sorted(results))
        self._hset(run_id, self._run_keys(run_id)[0], pairs, True, "result write", event)

    # -- metrics --------------------------------------------------------------------------------------------
    def _metric_key(self, run_id: str, key: str) -> str:
        return f"{self.prefix}run:{run_id}:metric:{key}"

    def _log_metrics(self, run_id: str, series: list[MetricSeries], batch_id: str | None) -> bool:
        run_key, summary = self._run_keys(run_id)
        keys = [run_key, summary, run_key + ":batches"]
        # the batch id (the caller's, else a fresh one for our own retries) makes a re-sent batch a no-op
        args: list[Any] = [batch_id or uuid.uuid4().hex, len(series)]
        for s in series:
            n = len(s)
            packed = np.empty(n, dtype=_POINT)
            packed["step"] = s.steps
            packed["value"] = s.values
            packed["ts"] = s.timestamps
            segments = [packed[i:i + SEGMENT_POINTS].tobytes() for i in range(0, n, SEGMENT_POINTS)]
            keys.append(self._metric_key(run_id, s.key))
            args += ["m:" + s.key, _number_json(float(s.values[-1])), len(segments), *segments]
        event = make_event("metric.logged", None, run_id, keys=sorted({s.key for s in series}),
                           points=sum(len(s) for s in series))
        applied = int(self._run_script("log_metrics", keys, args, "metric write", event))
        if applied == -1:
            raise NotFoundError(f"run {run_id} not found")
        self._mark_sent(event)
        return applied == 1 or batch_id is None  # 0 without a caller's id: our own retry found its batch

    def _metric_history(self, run_id: str, key: str) -> MetricSeries:
        run_key = self._run_keys(run_id)[0]
        name = self._metric_key(run_id, key)

        def fetch(client: Any) -> tuple[int, list[bytes]]:
            pipe = client.pipeline(transaction=True)  # a consistent snapshot of the run and the series
            pipe.exists(run_key)
            pipe.lrange(name, 0, -1)
            exists, parts = pipe.execute()
            return int(exists), parts

        exists, parts = self._conn.call(fetch, "metric read")
        if not exists:
            raise NotFoundError(f"run {run_id} not found")
        if not parts:
            return MetricSeries.empty(key)
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        if len(raw) % _POINT.itemsize:
            raise CorruptDataError(f"{self.location}: metric {key!r} of run {run_id} has a torn batch")
        points = np.frombuffer(raw, dtype=_POINT)
        return MetricSeries(key, points["step"].astype(np.int64), points["value"].astype(np.float64),
                            points["ts"].astype(np.float64))

    # -- artifacts ------------------------------------------------------------------------------------------
    def _add_artifact(self, run_id: str, info: ArtifactInfo) -> None:
        doc = _dumps({"size": info.size, "digest": info.digest, "created_at": info.created_at})
        target = self._run_keys(run_id)[0] + ":artifacts"
        event = make_event("artifact.logged", None, run_id, key=info.key, size=info.size, digest=info.digest)
        self._hset(run_id, target, [info.key, doc], False, "artifact record", event)

    def _list_artifacts(self, run_id: str, prefix: str) -> list[ArtifactInfo]:
        run_key = self._run_keys(run_id)[0]

        def fetch(client: Any) -> tuple[int, dict[bytes, bytes]]:
            pipe = client.pipeline(transaction=True)
            pipe.exists(run_key)
            pipe.hgetall(run_key + ":artifacts")
            exists, entries = pipe.execute()
            return int(exists), entries

        exists, entries = self._conn.call(fetch, "artifact listing")
        if not exists:
            raise NotFoundError(f"run {run_id} not found")
        out = []
        for raw_key, raw_doc in entries.items():
            key = as_text(raw_key)
            if key.startswith(prefix):
                out.append(_artifact_info(key, raw_doc))
        return out

    def _get_artifact_info(self, run_id: str, key: str) -> ArtifactInfo | None:
        run_key = self._run_keys(run_id)[0]

        def fetch(client: Any) -> tuple[int, bytes | None]:
            pipe = client.pipeline(transaction=True)
            pipe.exists(run_key)
            pipe.hget(run_key + ":artifacts", key)
            exists, doc = pipe.execute()
            return int(exists), doc

        exists, doc = self._conn.call(fetch, "artifact lookup")
        if not exists:
            raise NotFoundError(f"run {run_id} not found")
        return None if doc is None else _artifact_info(key, doc)


# -- stored values ------------------------------------------------------------------------------------------
def _dumps(value: Any) -> bytes:
    """Compact JSON bytes (orjson; json for integers beyond 64 bits)."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _loads(raw: bytes | str) -> Any:
    """Parse stored JSON (orjson; json for integers beyond 64 bits)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise CorruptDataError(f"a stored labvault document is not valid JSON: {exc}") from exc


def _number_json(value: float) -> bytes:
    """A metric value as JSON: a number, or a string for NaN and the infinities (read back by float())."""
    if math.isfinite(value):
        return orjson.dumps(value)
    return b'"NaN"' if math.isnan(value) else (b'"Infinity"' if value > 0 else b'"-Infinity"')


def _artifact_info(key: str, raw_doc: bytes) -> ArtifactInfo:
    """An artifact index entry from its stored JSON document."""
    d = _loads(raw_doc)
    return ArtifactInfo(key=key, size=int(d["size"]), digest=d["digest"], created_at=float(d["created_at"]))


def _required_needles(expr: Expr) -> list[list[bytes]]:
    """Byte strings a run summary must contain (one of each list) to possibly match ``expr``.

    Only top-level (ANDed, not negated) equality and IN tests on tags, or on params with a value no
    non-string param could render as (``true``, JSON, digits), are used; everything else is left to the
    full evaluation, so this never drops a matching run.
    """
    items = expr.items if isinstance(expr, query.And) else (expr,)
    out: list[list[bytes]] = []
    for item in items:
        values: tuple[Any, ...]
        if isinstance(item, query.Compare) and item.op == "=":
            field, values = item.field, (item.value,)
        elif isinstance(item, query.InList) and not item.negated:
            field, values = item.field, item.values
        else:
            continue
        if field.kind not in ("tags", "params") or not all(isinstance(val, str) for val in values):
            continue
        if field.kind == "params" and not all(_plain_text(str(val)) for val in values):
            continue
        key = orjson.dumps(field.key)
        out.append([key + b":" + orjson.dumps(val) for val in values])
    return out


def _plain_text(value: str) -> bool:
    """Whether only a string param can have this text (not a bool, a JSON list/object or a huge int)."""
    stripped = value.strip()
    return not (value in ("true", "false") or stripped[:1] in ("[", "{", "-", "+")
                or stripped[:1].isdigit() or not stripped)
