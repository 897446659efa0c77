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

Connection loss: every call goes through ``_Connection.call``, which retries on connection errors and
timeouts with exponential backoff and jitter, reconnecting through the pool; every operation is
idempotent (see above), so a retry never duplicates data. When the server stays unreachable the call
raises ``BackendUnavailableError`` naming host:port (or the socket path). Driver exceptions never escape.

Artifacts go to ``RedisBlobStore`` unless ``artifacts=`` names another store: blobs are cut into chunks
of ``chunk_size`` bytes written under a fresh upload id (with a one-day expiry while uploading), and a
script publishes the manifest last, so a blob is visible only when complete and an abandoned upload
disappears by itself. Reads fetch a few chunks per round trip, so memory stays flat for any size.

Change feed: every mutation is appended to the ``events`` stream (``XADD ... MAXLEN ~ 10000``); a feed
from ``watch()`` is fed by a daemon thread doing blocking ``XREAD`` from the stream's last id at the
moment ``watch()`` was called, so every process sharing the vault sees every change.

Durability is the server's: Redis keeps data in memory and persists it as configured (RDB snapshots,
AOF with ``appendfsync``); labvault does not change the server's configuration.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import io
import itertools
import json
import math
import os
import random
import re
import struct
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import numpy as np
import orjson
import redis
from redis import exceptions as rexc

from labvault._uri import bool_option, check_options, float_option, int_option
from labvault.blobs.abc import BlobStore, iter_source
from labvault.domain import ArtifactInfo, ChangeEvent, ExperimentInfo, MetricSeries, RunInfo, now
from labvault.errors import (
    AuthenticationError,
    BackendUnavailableError,
    CorruptDataError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnsupportedOperationError,
)
from labvault.store.abc import Backend, check_params_conflict, run_exists_error
from labvault.store.feed import ChangeFeed, LocalChangeFeed
from labvault.store.search.runindex import Record, RunIndex, make_record

if TYPE_CHECKING:
    from labvault.query import Expr, OrderKey

__all__ = ["DEFAULT_PREFIX", "RedisBackend", "RedisBlobStore"]

T = TypeVar("T")

#: The key namespace of a vault when the URI names none.
DEFAULT_PREFIX = "labvault:"
#: The store layout this code reads and writes (``P meta`` field ``format``).
FORMAT_VERSION = "1"
#: Points per list element at most (1.5 MiB); larger batches are split.
SEGMENT_POINTS = 65_536
#: Default artifact chunk size.
DEFAULT_CHUNK_SIZE = 1024 * 1024
#: Approximate length the events stream is trimmed to.
EVENTS_MAXLEN = 10_000
#: How long an applied metric batch id is remembered (seconds): far beyond any retry.
BATCH_MEMORY = 3600
#: How long the chunks of an unfinished upload live (seconds).
UPLOAD_TTL = 24 * 3600
_DEFAULT_RETRIES = 6
_DEFAULT_SOCKET_TIMEOUT = 10.0
_DEFAULT_CONNECT_TIMEOUT = 5.0
_READ_AHEAD = 4  # chunks fetched per round trip when reading a blob
_WRITE_AHEAD = 4  # chunks sent per round trip when writing one
_BLOCK_MS = 250  # how long a feed's XREAD blocks before checking whether the feed was closed
#: Error replies meaning "not executed, try again later".
_TRANSIENT = ("BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN", "LOADING")

_PREFIX_RE = re.compile(r"[A-Za-z0-9_.\-]{1,100}:")
_CLIENT_NAME_RE = re.compile(r"[A-Za-z0-9_.\-:]{1,100}")
_POINT = np.dtype([("step", "<i8"), ("value", "<f8"), ("ts", "<f8")])
_KNOWN_OPTIONS = frozenset({
    "prefix", "db", "chunk_size", "retries", "socket_timeout", "socket_connect_timeout", "client_name",
    "max_connections", "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname",
})
_POOL_OPTIONS = frozenset({"prefix", "chunk_size", "retries"})
_RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(RunInfo))
_FAST_RUNINFO = not hasattr(RunInfo, "__slots__")
_PORTABLE_KWARGS = (
    "host", "port", "db", "path", "username", "password", "socket_timeout", "socket_connect_timeout",
    "socket_keepalive", "client_name", "health_check_interval", "protocol", "ssl_keyfile", "ssl_certfile",
    "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_check_hostname", "ssl_password",
)


# -- value encoding ------------------------------------------------------------------------------------------
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


def _pack(items: Sequence[bytes | str]) -> bytes:
    """A MessagePack array of raw strings (str 32), which the scripts open with ``cmsgpack.unpack``:
    one argument instead of many (redis-py packs every argument separately, Lua unpacks them in C)."""
    out = [struct.pack(">BI", 0xDD, len(items))]
    for item in items:
        data = item.encode() if isinstance(item, str) else item
        out.append(struct.pack(">BI", 0xDB, len(data)))
        out.append(data)
    return b"".join(out)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


# -- Lua scripts ---------------------------------------------------------------------------------------------
#: Shared by the write scripts. ``rebuild`` makes a run's summary document from its hash by concatenation
#: (keys are validated: no quotes or backslashes; values are stored as JSON text) and stamps the run with
#: the vault's next change number (``INCR rev``, ``ZADD changes``) for the run index. ``publish`` appends the
#: write's change event to the stream in the same script, so an event exists exactly when its write does.
#: Every write script takes the events stream (``<prefix>events``) as KEYS[1], which gives ``PREFIX``, and
#: the event payload (or "") as ARGV[1].
_COMMON = """
local PREFIX = string.sub(KEYS[1], 1, #KEYS[1] - 6)
local function rebuild(run_key, summary_key)
  local flat = redis.call('HGETALL', run_key)
  local core, p, t, m, r, rid = {}, {}, {}, {}, {}, nil
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    local kind = string.sub(f, 1, 2)
    if kind == 'p:' then p[#p + 1] = '"' .. string.sub(f, 3) .. '":' .. v
    elseif kind == 't:' then t[#t + 1] = '"' .. string.sub(f, 3) .. '":' .. v
    elseif kind == 'm:' then m[#m + 1] = '"' .. string.sub(f, 3) .. '":' .. v
    elseif kind == 'r:' then r[#r + 1] = '"' .. string.sub(f, 3) .. '":' .. v
    else
      core[#core + 1] = '"' .. f .. '":' .. v
      if f == 'id' then rid = string.sub(v, 2, -2) end
    end
  end
  redis.call('SET', summary_key, '{' .. table.concat(core, ',')
    .. ',"params":{' .. table.concat(p, ',') .. '},"tags":{' .. table.concat(t, ',')
    .. '},"metrics":{' .. table.concat(m, ',') .. '},"results":{' .. table.concat(r, ',') .. '}}')
  if rid then redis.call('ZADD', PREFIX .. 'changes', redis.call('INCR', PREFIX .. 'rev'), rid) end
end
local function hset_pairs(key, args, first)
  for i = first, #args, 200 do
    redis.call('HSET', key, unpack(args, i, math.min(i + 199, #args)))
  end
end
local function publish(payload)
  if payload ~= '' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', '""" + str(EVENTS_MAXLEN) + """', '*', 'e', payload)
  end
end
"""

_LUA: dict[str, str] = {
    # KEYS: events, index, experiments, meta. ARGV: event, index field, new id, new document.
    # -> {stored document, 1 if this call created it}
    "ensure_experiment": _COMMON + """
local id = redis.call('HGET', KEYS[2], ARGV[2])
if id then return {redis.call('HGET', KEYS[3], id), 0} end
redis.call('HSETNX', KEYS[4], 'format', '""" + FORMAT_VERSION + """')
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
publish(ARGV[1])
return {ARGV[4], 1}
""",
    # KEYS: events, experiments, counter, exp runs, run, summary, parent run.
    # ARGV: event head, eid, rid, has parent, packed field/value pairs, event tail; the event is
    # head .. number .. tail. -> the run number; -1 no experiment; -2 no parent run
    "create_run": _COMMON + """
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then return -1 end
local existing = redis.call('HGET', KEYS[5], 'number')
if existing then return tonumber(existing) end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[7]) == 0 then return -2 end
local n = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[4], n, ARGV[3])
redis.call('HSET', KEYS[5], 'number', n)
hset_pairs(KEYS[5], cmsgpack.unpack(ARGV[5]), 1)
rebuild(KEYS[5], KEYS[6])
publish(ARGV[1] .. n .. ARGV[6])
return n
""",
    # KEYS: events, run, target hash, summary. ARGV: event, rebuild flag, packed pairs. -> 0 when no run
    "hset": _COMMON + """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
hset_pairs(KEYS[3], cmsgpack.unpack(ARGV[3]), 1)
if ARGV[2] == '1' then rebuild(KEYS[2], KEYS[4]) end
publish(ARGV[1])
return 1
""",
    # KEYS: events, run, summary. ARGV: event, packed pairs of (p:key, JSON). Writes nothing when any key
    # holds other text. -> {'missing'} | {'ok'} | {'conflict', field, stored, ...}
    "params": _COMMON + """
if redis.call('EXISTS', KEYS[2]) == 0 then return {'missing'} end
local clashes, new = {'conflict'}, {}
local given = cmsgpack.unpack(ARGV[2])
for i = 1, #given, 2 do
  local stored = redis.call('HGET', KEYS[2], given[i])
  if stored then
    if stored ~= given[i + 1] then clashes[#clashes + 1] = given[i]; clashes[#clashes + 1] = stored end
  else
    new[#new + 1] = given[i]; new[#new + 1] = given[i + 1]
  end
end
if #clashes > 1 then return clashes end
if #new > 0 then
  hset_pairs(KEYS[2], new, 1)
  rebuild(KEYS[2], KEYS[3])
end
publish(ARGV[1])
return {'ok'}
""",
    # KEYS: events, run, summary, batches, one metric list per series. ARGV: event, batch id, number of
    # series, then per series: latest field, latest JSON, number of segments, segments...
    # -> 1 applied, 0 applied before (a re-sent batch), -1 no run
    "log_metrics": _COMMON + """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if redis.call('ZSCORE', KEYS[4], ARGV[2]) then return 0 end
local clock = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[4], clock, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', clock - """ + str(BATCH_MEMORY) + """)
local pos = 4
for s = 1, tonumber(ARGV[3]) do
  local field, latest, nseg = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2])
  pos = pos + 3
  for j = pos, pos + nseg - 1, 100 do
    redis.call('RPUSH', KEYS[4 + s], unpack(ARGV, j, math.min(j + 99, pos + nseg - 1)))
  end
  pos = pos + nseg
  redis.call('HSET', KEYS[2], field, latest)
end
rebuild(KEYS[2], KEYS[3])
publish(ARGV[1])
return 1
""",
    # KEYS: events, experiments, names index, exp runs, counter. ARGV: event, prefix, eid. -> 0 if missing
    "delete_experiment": _COMMON + """
local doc = redis.call('HGET', KEYS[2], ARGV[3])
if not doc then return 0 end
local info = cjson.decode(doc)
local runs = redis.call('ZRANGE', KEYS[4], 0, -1)
for _, rid in ipairs(runs) do
  local base = ARGV[2] .. 'run:' .. rid
  for _, f in ipairs(redis.call('HKEYS', base)) do
    if string.sub(f, 1, 2) == 'm:' then redis.call('UNLINK', base .. ':metric:' .. string.sub(f, 3)) end
  end
  redis.call('UNLINK', base, base .. ':summary', base .. ':batches', base .. ':artifacts')
  redis.call('ZREM', PREFIX .. 'changes', rid)
end
redis.call('INCR', PREFIX .. 'rev')
redis.call('UNLINK', KEYS[4], KEYS[5])
redis.call('HDEL', KEYS[2], ARGV[3])
local field = info['project'] .. '/' .. info['name']
if redis.call('HGET', KEYS[3], field) == ARGV[3] then redis.call('HDEL', KEYS[3], field) end
publish(ARGV[1])
return 1
""",
    # The run index's refresh, read atomically. KEYS: rev, changes, experiments, then the runs zset of each
    # experiment to load whole. ARGV: the change number the index has (-1: none), prefix.
    # -> {change number now, experiment ids, summaries changed since ARGV[1], summaries of each experiment}
    "index_refresh": """
local function summaries(ids)
  local docs = {}
  for i, rid in ipairs(ids) do docs[i] = redis.call('GET', ARGV[2] .. 'run:' .. rid .. ':summary') end
  return docs
end
local out = {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('HKEYS', KEYS[3]), {}}
if ARGV[1] ~= '-1' then out[3] = summaries(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')) end
for k = 4, #KEYS do out[k] = summaries(redis.call('ZRANGE', KEYS[k], 0, -1)) end
return out
""",
    # KEYS: manifest, blob index. ARGV: prefix, key, upload, size, chunks, chunk size, only-if-absent, mtime.
    # -> 1 published, 0 an identical blob exists already (ours dropped, its mtime refreshed), -1 a chunk
    # is missing (the upload expired)
    "publish_blob": """
local current = redis.call('HGET', KEYS[1], 'upload')
if current == ARGV[3] then return 1 end
local n = tonumber(ARGV[5])
local function chunk(upload, i) return ARGV[1] .. 'chunk:' .. upload .. ':' .. i end
if ARGV[7] == '1' and current then
  for i = 0, n - 1 do redis.call('UNLINK', chunk(ARGV[3], i)) end
  redis.call('HSET', KEYS[1], 'mtime', ARGV[8])
  return 0
end
for i = 0, n - 1 do
  if redis.call('PERSIST', chunk(ARGV[3], i)) == 0 then return -1 end
end
if current then
  local old = tonumber(redis.call('HGET', KEYS[1], 'chunks'))
  for i = 0, old - 1 do redis.call('UNLINK', chunk(current, i)) end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'upload', ARGV[3], 'size', ARGV[4], 'chunks', ARGV[5], 'chunk_size', ARGV[6],
           'mtime', ARGV[8])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
return 1
""",
    # A blob of at most one chunk in one call. KEYS: manifest, blob index. ARGV: prefix, key, upload, size,
    # chunk size, only-if-absent, mtime, data. -> 1 published, 0 exists already (mtime refreshed)
    "put_small_blob": """
local current = redis.call('HGET', KEYS[1], 'upload')
if current == ARGV[3] then return 1 end
if ARGV[6] == '1' and current then
  redis.call('HSET', KEYS[1], 'mtime', ARGV[7])
  return 0
end
local n = 0
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', ARGV[1] .. 'chunk:' .. ARGV[3] .. ':0', ARGV[8])
  n = 1
end
if current then
  local old = tonumber(redis.call('HGET', KEYS[1], 'chunks'))
  for i = 0, old - 1 do redis.call('UNLINK', ARGV[1] .. 'chunk:' .. current .. ':' .. i) end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'upload', ARGV[3], 'size', ARGV[4], 'chunks', n, 'chunk_size', ARGV[5],
           'mtime', ARGV[7])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
return 1
""",
    # KEYS: manifest. ARGV: mtime.
    "touch_blob": """
if redis.call('HEXISTS', KEYS[1], 'upload') == 1 then redis.call('HSET', KEYS[1], 'mtime', ARGV[1]) end
return 1
""",
    # KEYS: manifest, blob index. ARGV: prefix, key.
    "delete_blob": """
local current = redis.call('HMGET', KEYS[1], 'upload', 'chunks')
if current[1] then
  for i = 0, tonumber(current[2]) - 1 do
    redis.call('UNLINK', ARGV[1] .. 'chunk:' .. current[1] .. ':' .. i)
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
""",
}


# -- settings, URIs and connections --------------------------------------------------------------------------
def validate_prefix(prefix: object) -> str:
    """Check a key namespace: letters, digits, ``_ - .`` and exactly one ``:``, at the end."""
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise InvalidArgumentError(
            f"invalid Redis key prefix {prefix!r}: use 1 to 100 letters, digits, '_', '-' or '.' followed "
            "by one ':' (e.g. 'myvault:'); no wildcards (* ? [ ]), so a vault's keys never match another's"
        )
    return prefix


@dataclass(frozen=True)
class _Settings:
    """Everything a backend needs to (re)connect; picklable."""

    prefix: str
    chunk_size: int
    retries: int
    where: str  # host:port or the socket path, for messages
    identity: str  # canonical URI: equality and hashing
    connection_class: type[Any]
    pool_kwargs: Mapping[str, Any]


def _common_options(merged: Mapping[str, Any]) -> tuple[str, int, int]:
    prefix = validate_prefix(merged.get("prefix", DEFAULT_PREFIX))
    chunk = int_option("Redis", "chunk_size", merged.get("chunk_size", DEFAULT_CHUNK_SIZE), 1024,
                       512 * 1024 * 1024)
    retries = int_option("Redis", "retries", merged.get("retries", _DEFAULT_RETRIES), 0, 100)
    return prefix, chunk, retries


def _parse_uri(uri: object, options: Mapping[str, Any]) -> _Settings:
    """Validate a ``redis://``, ``rediss://`` or ``unix://`` URI and its options (no I/O)."""
    if not isinstance(uri, str) or "://" not in uri:
        raise InvalidArgumentError(f"{uri!r} is not a redis://, rediss:// or unix:// URI")
    if "\x00" in uri or any(ch.isspace() for ch in uri):
        raise InvalidArgumentError(f"{uri!r} contains a NUL or whitespace character")
    try:
        parts = urlsplit(uri)
        port = parts.port
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise InvalidArgumentError(f"malformed Redis URI {uri!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise InvalidArgumentError(f"{uri!r} is not a redis://, rediss:// or unix:// URI")
    query: dict[str, str] = {}
    for name, value in pairs:
        if name in query:
            raise InvalidArgumentError(f"Redis URI {uri!r} gives option {name!r} twice")
        query[name] = value
    clash = sorted(set(query) & set(options))
    if clash:
        raise InvalidArgumentError(
            f"Redis option(s) {', '.join(clash)} given both in the URI and as arguments")
    merged: dict[str, Any] = {**query, **options}
    check_options("redis", merged, _KNOWN_OPTIONS)
    prefix, chunk, retries = _common_options(merged)
    timeout = merged.get("socket_timeout", _DEFAULT_SOCKET_TIMEOUT)
    connect_timeout = merged.get("socket_connect_timeout", _DEFAULT_CONNECT_TIMEOUT)
    kwargs: dict[str, Any] = {
        "socket_timeout": float_option("Redis", "socket_timeout", timeout, 0, 3600, exclusive_low=True),
        "socket_connect_timeout": float_option("Redis", "socket_connect_timeout", connect_timeout, 0, 3600,
                                               exclusive_low=True),
    }
    if "client_name" in merged:
        name = merged["client_name"]
        if not isinstance(name, str) or not _CLIENT_NAME_RE.fullmatch(name):
            raise InvalidArgumentError(
                "Redis option client_name must be 1 to 100 letters, digits, '_', '-', '.', ':', "
                f"got {name!r}")
        kwargs["client_name"] = name
    if "max_connections" in merged:
        kwargs["max_connections"] = int_option("Redis", "max_connections", merged["max_connections"], 1,
                                               100_000)
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    ssl_names = sorted(k for k in merged if k.startswith("ssl_"))
    if ssl_names and scheme != "rediss":
        raise InvalidArgumentError(f"Redis option(s) {', '.join(ssl_names)} need a rediss:// URI")
    db = int_option("Redis", "db", merged["db"], 0, 1_000_000) if "db" in merged else None
    connection_class: type[Any]
    if scheme == "unix":
        if parts.hostname:
            raise InvalidArgumentError(
                f"Redis URI {uri!r} names a host {parts.hostname!r}: write unix:///absolute/path/redis.sock")
        path = unquote(parts.path)
        if not path.startswith("/") or path.endswith("/"):
            raise InvalidArgumentError(f"Redis URI {uri!r} names no socket path: write unix:///path/redis.sock")
        db = db or 0
        kwargs.update(path=path, db=db)
        connection_class = redis.UnixDomainSocketConnection
        where = f"unix socket {path}"
        identity = f"unix://{quote(path)}?db={db}&prefix={prefix}"
    else:
        host = parts.hostname or "localhost"
        port = port or 6379
        raw_path = unquote(parts.path)
        if raw_path not in ("", "/"):
            digits = raw_path[1:]
            if not digits.isdigit():
                raise InvalidArgumentError(
                    f"Redis URI {uri!r}: the path must be a database number (redis://host:port/0), "
                    f"got {raw_path!r}")
            path_db = int(digits)
            if db is not None and db != path_db:
                raise InvalidArgumentError(f"Redis URI {uri!r} names database {path_db} and db={db}")
            db = path_db
        db = db or 0
        kwargs.update(host=host, port=port, db=db)
        if scheme == "rediss":
            connection_class = redis.SSLConnection
            for name in ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
                if name in merged:
                    if not isinstance(merged[name], str) or not merged[name]:
                        raise InvalidArgumentError(f"Redis option {name} must be a non-empty string")
                    kwargs[name] = merged[name]
            if "ssl_check_hostname" in merged:
                kwargs["ssl_check_hostname"] = bool_option("Redis", "ssl_check_hostname",
                                                            merged["ssl_check_hostname"])
        else:
            connection_class = redis.Connection
        shown = f"[{host}]" if ":" in host else host
        where = f"{shown}:{port}"
        identity = f"{scheme}://{shown.lower()}:{port}/{db}?prefix={prefix}"
    return _Settings(prefix, chunk, retries, where, identity, connection_class, kwargs)


def _settings_from_pool(pool: Any, options: Mapping[str, Any]) -> _Settings:
    check_options("redis (ConnectionPool)", options, _POOL_OPTIONS)
    prefix, chunk, retries = _common_options(options)
    given = pool.connection_kwargs
    # what a new pool needs to reach the same server (the given pool's internals are not picklable)
    kwargs = {k: given[k] for k in _PORTABLE_KWARGS if given.get(k) is not None}
    cls = pool.connection_class
    db = kwargs.get("db", 0) or 0
    if isinstance(cls, type) and issubclass(cls, redis.UnixDomainSocketConnection):
        path = str(kwargs.get("path", ""))
        where = f"unix socket {path}"
        identity = f"unix://{quote(path)}?db={db}&prefix={prefix}"
    else:
        host = str(kwargs.get("host", "localhost"))
        port = kwargs.get("port", 6379)
        scheme = "rediss" if isinstance(cls, type) and issubclass(cls, redis.SSLConnection) else "redis"
        shown = f"[{host}]" if ":" in host else host
        where = f"{shown}:{port}"
        identity = f"{scheme}://{shown.lower()}:{port}/{db}?prefix={prefix}"
    return _Settings(prefix, chunk, retries, where, identity, cls, kwargs)


class _Connection:
    """A lazily made client plus the retry loop and error translation every call goes through."""

    def __init__(self, settings: _Settings, pool: Any = None) -> None:
        self.settings = settings
        self._pool = pool
        self._own_pool = pool is None
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._checked = False

    def client(self) -> Any:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                if self._pool is None:
                    from redis.backoff import NoBackoff
                    from redis.retry import Retry

                    # No retries inside redis-py: ``call`` retries whole idempotent operations itself.
                    kwargs = {**self.settings.pool_kwargs, "retry": Retry(NoBackoff(), 0)}
                    self._pool = redis.ConnectionPool(connection_class=self.settings.connection_class,
                                                      **kwargs)
                client = redis.Redis(connection_pool=self._pool)
                self._scripts = {name: client.register_script(src) for name, src in _LUA.items()}
                self._client = client
            return self._client

    def script(self, name: str) -> Any:
        self.client()
        return self._scripts[name]

    def call(self, fn: Callable[[Any], T], what: str = "request") -> T:
        """Run ``fn(client)``, retrying connection errors with backoff; translate driver errors."""
        failures = 0
        where = self.settings.where
        while True:
            try:
                client = self.client()
                if not self._checked:
                    self._check_format(client)
                return fn(client)
            except (rexc.AuthenticationError, rexc.AuthorizationError) as exc:
                raise AuthenticationError(f"Redis at {where} refused the credentials: {exc}") from exc
            except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
                failures += 1
                if failures > self.settings.retries:
                    raise BackendUnavailableError(
                        f"Redis at {where} is unavailable ({what} failed {failures} times): {exc}"
                    ) from exc
                delay = min(1.0, 0.05 * 2 ** failures)
                time.sleep(delay * (0.5 + random.random() / 2))
            except rexc.NoPermissionError as exc:
                raise PermissionDeniedError(f"Redis at {where} denied the {what}: {exc}") from exc
            except rexc.ResponseError as exc:
                text = str(exc)
                if text.startswith(_TRANSIENT) and failures < self.settings.retries:
                    failures += 1  # busy with a script, failing over, ...: the command did not run
                    time.sleep(min(1.0, 0.05 * 2 ** failures) * (0.5 + random.random() / 2))
                    continue
                if text.startswith("WRONGTYPE"):
                    raise CorruptDataError(
                        f"Redis at {where}: a key under prefix {self.settings.prefix!r} has an unexpected "
                        f"type ({text}); is another program using this prefix?") from exc
                raise BackendUnavailableError(f"Redis at {where} rejected the {what}: {text}") from exc
            except rexc.RedisError as exc:
                raise BackendUnavailableError(f"Redis at {where} failed the {what}: {exc}") from exc

    def _check_format(self, client: Any) -> None:
        stored = client.hget(self.settings.prefix + "meta", "format")
        if stored is not None and _text(stored) != FORMAT_VERSION:
            raise UnsupportedOperationError(
                f"the vault under prefix {self.settings.prefix!r} at Redis {self.settings.where} has layout "
                f"version {_text(stored)}, this labvault reads version {FORMAT_VERSION}: upgrade labvault")
        self._checked = True

    def close(self) -> None:
        with self._lock:
            pool, client = self._pool, self._client
            self._client = None
            self._scripts = {}
            if self._own_pool:
                self._pool = None
        if client is not None and self._own_pool and pool is not None:
            pool.disconnect()


# -- blobs ---------------------------------------------------------------------------------------------------
class _ChunkReader(io.RawIOBase):
    """Streams a published blob chunk by chunk (a few per round trip); memory stays flat."""

    def __init__(self, store: RedisBlobStore, key: str, upload: str, size: int, chunks: int) -> None:
        self._store = store
        self._key = key
        self._upload = upload
        self._size = size
        self._chunks = chunks
        self._next = 0  # next chunk index to fetch
        self._buffer = memoryview(b"")
        self._pending: list[bytes] = []
        self._read = 0

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        if not self._pending:
            if self._next >= self._chunks:
                return False
            upto = min(self._chunks, self._next + _READ_AHEAD)
            names = [self._store._chunk_key(self._upload, i) for i in range(self._next, upto)]
            got = self._store._conn.call(lambda c: c.mget(names), "blob read")
            if any(part is None for part in got):
                raise CorruptDataError(
                    f"blob {self._key!r} lost chunks while being read (replaced or deleted meanwhile)")
            self._pending = list(reversed(got))
            self._next = upto
        self._buffer = memoryview(self._pending.pop())
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        while not len(self._buffer):
            if not self._fill():
                if self._read != self._size:
                    raise CorruptDataError(
                        f"blob {self._key!r} has {self._read} bytes, expected {self._size}")
                return 0
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        self._read += n
        return n


class RedisBlobStore(BlobStore):
    """Blobs as chunk keys of bounded size under the vault's prefix, published by a manifest written last.

    ``put`` streams the source in ``chunk_size`` pieces under a fresh upload id (the chunks expire after a
    day until published); a script then checks every chunk is there, makes them permanent, points the
    manifest at them and drops the chunks of the blob it replaces. Readers only ever see published
    manifests, so an unfinished or crashed upload is invisible. Content-addressed puts hash while
    uploading (one pass, no spool file) and drop their chunks when the digest is stored already.
    """

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.prefix = conn.settings.prefix
        self.chunk_size = conn.settings.chunk_size

    def _manifest_key(self, key: str) -> str:
        return f"{self.prefix}blob:{key}"

    def _chunk_key(self, upload: str, index: int) -> str:
        return f"{self.prefix}chunk:{upload}:{index}"

    def _rechunk(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Chunks of exactly ``chunk_size`` bytes (the last may be shorter)."""
        size = self.chunk_size
        pending = bytearray()
        for chunk in chunks:
            if not pending and len(chunk) == size:
                yield chunk
                continue
            pending += chunk
            while len(pending) >= size:
                yield bytes(pending[:size])
                del pending[:size]
        if pending:
            yield bytes(pending)

    def _upload(self, chunks: Iterator[bytes], sha: Any = None) -> tuple[str, int, int]:
        """Write the chunks under a fresh upload id; return (upload id, size, chunk count)."""
        upload = uuid.uuid4().hex
        size = count = 0
        batch: list[tuple[str, bytes]] = []

        def send(items: list[tuple[str, bytes]]) -> None:
            def write(client: Any) -> None:
                pipe = client.pipeline(transaction=False)
                for name, data in items:
                    pipe.set(name, data, ex=UPLOAD_TTL)
                pipe.execute()

            self._conn.call(write, "blob upload")

        for chunk in self._rechunk(chunks):
            if sha is not None:
                sha.update(chunk)
            batch.append((self._chunk_key(upload, count), chunk))
            size += len(chunk)
            count += 1
            if len(batch) >= _WRITE_AHEAD:
                send(batch)
                batch = []
        if batch:
            send(batch)
        return upload, size, count

    def _publish_manifest(self, key: str, upload: str, size: int, count: int,
                          only_if_absent: bool) -> bool:
        script = self._conn.script("publish_blob")
        keys = [self._manifest_key(key), self.prefix + "blobs"]
        args = [self.prefix, key, upload, size, count, self.chunk_size, "1" if only_if_absent else "0",
                repr(time.time())]
        result = int(self._conn.call(lambda c: script(keys=keys, args=args, client=c), "blob publish"))
        if result < 0:
            raise BackendUnavailableError(
                f"Redis at {self._conn.settings.where}: chunks of the upload of {key!r} expired before it "
                "was published; upload it again")
        return result == 1

    def _put_small(self, key: str, blob: bytes, only_if_absent: bool) -> bool:
        """Write and publish a blob of at most one chunk with one script call."""
        script = self._conn.script("put_small_blob")
        keys = [self._manifest_key(key), self.prefix + "blobs"]
        args = [self.prefix, key, uuid.uuid4().hex, len(blob), self.chunk_size,
                "1" if only_if_absent else "0", repr(time.time()), blob]
        return int(self._conn.call(lambda c: script(keys=keys, args=args, client=c), "blob write")) == 1

    def _put(self, key: str, chunks: Iterator[bytes]) -> int:
        pieces = self._rechunk(chunks)
        first = next(pieces, b"")
        second = next(pieces, None)
        if second is None:
            self._put_small(key, first, only_if_absent=False)
            return len(first)
        upload, size, count = self._upload(itertools.chain((first, second), pieces))
        self._publish_manifest(key, upload, size, count, only_if_absent=False)
        return size

    def _rereadable(self, data: Any) -> Callable[[], Iterator[bytes]] | None:
        """A way to read ``data`` again from the start (bytes, a path, a seekable file), else None."""
        size = self.chunk_size
        if isinstance(data, bytes | bytearray | memoryview | str | os.PathLike):
            return lambda: iter_source(data, size)
        seekable = getattr(data, "seekable", None)
        if callable(seekable) and callable(getattr(data, "tell", None)):
            try:
                start = data.tell() if seekable() else None
            except OSError:
                start = None
            if start is not None:
                def again() -> Iterator[bytes]:
                    data.seek(start)
                    return iter_source(data, size)

                return again
        return None

    def _put_small_content(self, blob: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(blob).hexdigest()
        self._put_small(self.digest_key(digest), blob, only_if_absent=True)
        return digest, len(blob)

    def put_content(self, data: Any) -> tuple[str, int]:
        """Store ``data`` by its sha256 digest, once however often it is put; return (digest, size).

        What can be read twice (bytes, a path, a seekable file) is hashed first, so content stored
        already is never uploaded again; a blob of one chunk then takes a single round trip. A one-way
        stream is hashed while it uploads, and its chunks are dropped when the digest exists already.
        """
        reread = self._rereadable(data)
        if reread is None:
            pieces = self._rechunk(iter_source(data, self.chunk_size))
            first = next(pieces, b"")
            second = next(pieces, None)
            if second is None:
                return self._put_small_content(first)
            sha = hashlib.sha256()
            upload, size, count = self._upload(itertools.chain((first, second), pieces), sha)
            digest = sha.hexdigest()
            self._publish_manifest(self.digest_key(digest), upload, size, count, only_if_absent=True)
            return digest, size
        sha = hashlib.sha256()
        size = 0
        for chunk in reread():
            sha.update(chunk)
            size += len(chunk)
        if size <= self.chunk_size:
            return self._put_small_content(b"".join(reread()))
        key = self.digest_key(sha.hexdigest())
        if self._exists(key):
            self._touch(key)
            return sha.hexdigest(), size
        # Hash again while uploading: if the file changed between the reads, what was uploaded is
        # stored under its own digest, never under the first one.
        sha = hashlib.sha256()
        upload, size, count = self._upload(reread(), sha)
        digest = sha.hexdigest()
        self._publish_manifest(self.digest_key(digest), upload, size, count, only_if_absent=True)
        return digest, size

    def _touch(self, key: str) -> None:
        """Refresh a stored blob's modification time (content put again), if it still exists."""
        script = self._conn.script("touch_blob")
        keys, args = [self._manifest_key(key)], [repr(time.time())]
        self._conn.call(lambda c: script(keys=keys, args=args, client=c), "blob touch")

    def _manifest(self, key: str) -> tuple[str, int, int] | None:
        name = self._manifest_key(key)
        upload, size, chunks = self._conn.call(lambda c: c.hmget(name, "upload", "size", "chunks"),
                                               "blob lookup")
        if upload is None:
            return None
        return _text(upload), int(size), int(chunks)

    def _open(self, key: str) -> BinaryIO:
        manifest = self._manifest(key)
        if manifest is None:
            raise NotFoundError(f"no blob {key!r}")
        upload, size, chunks = manifest
        return io.BufferedReader(_ChunkReader(self, key, upload, size, chunks), self.chunk_size)

    def _exists(self, key: str) -> bool:
        name = self._manifest_key(key)
        return bool(self._conn.call(lambda c: c.hexists(name, "upload"), "blob lookup"))

    def _delete(self, key: str) -> None:
        script = self._conn.script("delete_blob")
        keys = [self._manifest_key(key), self.prefix + "blobs"]
        self._conn.call(lambda c: script(keys=keys, args=[self.prefix, key], client=c), "blob delete")

    def _list(self, prefix: str) -> Iterator[str]:
        index = self.prefix + "blobs"
        low = b"[" + prefix.encode() if prefix else b"-"
        high = b"[" + prefix.encode() + b"\xff" if prefix else b"+"
        names = self._conn.call(lambda c: c.zrangebylex(index, low, high), "blob listing")
        return iter([_text(n) for n in names])


# -- change feed ---------------------------------------------------------------------------------------------
class _StreamPump:
    """A daemon thread feeding one ``LocalChangeFeed`` from the events stream with blocking XREAD."""

    def __init__(self, conn: _Connection, stream: str, last_id: bytes, feed: LocalChangeFeed,
                 stopping: threading.Event) -> None:
        self._conn = conn
        self._stream = stream
        self._last = last_id
        self._feed = feed
        self._stopping = stopping
        self.thread = threading.Thread(target=self._run, name="labvault-redis-feed", daemon=True)

    def _run(self) -> None:
        failures = 0
        while not self._feed.closed and not self._stopping.is_set():
            try:
                client = self._conn.client()
                reply = client.xread({self._stream: self._last}, count=500, block=_BLOCK_MS)
                failures = 0
            except rexc.RedisError:
                failures += 1
                time.sleep(min(1.0, 0.05 * 2 ** min(failures, 5)))
                continue
            except Exception:  # never let the feed thread die with a traceback on shutdown
                return
            streams = reply.items() if isinstance(reply, dict) else (reply or ())
            for _stream, entries in streams:
                for entry_id, fields in entries:
                    self._last = entry_id
                    payload = fields.get(b"e")
                    if payload is None:
                        continue
                    try:
                        event = ChangeEvent.from_json(orjson.loads(payload))
                    except (ValueError, KeyError, TypeError):
                        continue
                    self._feed.put(event)


# -- the backend ---------------------------------------------------------------------------------------------
def _event(kind: str, experiment_id: str | None, run_id: str | None, **data: Any) -> ChangeEvent:
    return ChangeEvent(kind, experiment_id, run_id, data)


def _payload(event: ChangeEvent) -> bytes:
    return orjson.dumps(event.to_json(), default=str)


def _same_event(a: ChangeEvent, b: ChangeEvent) -> bool:
    return (a.kind, a.experiment_id, a.run_id, a.data) == (b.kind, b.experiment_id, b.run_id, b.data)


class RedisBackend(Backend, scheme="redis"):
    """Metadata, metric batches, blobs and change events in one Redis database, under a key prefix."""

    persistent: ClassVar[bool] = True
    multiprocess: ClassVar[bool] = True
    supports_events: ClassVar[bool] = True
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

    def __init__(self, uri: str, settings: _Settings, *, blobs: BlobStore | None = None,
                 pool: Any = None) -> None:
        super().__init__(uri, blobs)
        self._settings = settings
        self.prefix = settings.prefix
        self._conn = _Connection(settings, pool)
        self._stopping = threading.Event()
        self._events_key = self.prefix + "events"
        self._sent = threading.local()  # the event the last write script of this thread appended
        #: Searches answer from this (see the module doc); None makes them read every summary instead.
        self._index: RunIndex | None = RunIndex()

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> RedisBackend:
        """``redis://host:port/db``, ``rediss://...`` or ``unix:///path?db=N``; options as documented."""
        return cls(uri, _parse_uri(uri, options), blobs=artifacts)

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
        settings = _settings_from_pool(pool, options)
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
        full_args = [_payload(event) if event is not None else b"", *args]
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
        if sent is not None and _same_event(sent, event):
            return
        payload = _payload(event)
        stream = self._events_key
        try:
            self._conn.call(lambda c: c.xadd(stream, {"e": payload}, maxlen=EVENTS_MAXLEN, approximate=True),
                            "event publish")
        except (BackendUnavailableError, PermissionDeniedError, AuthenticationError) as exc:
            warnings.warn(f"labvault: change event {event.kind!r} not published: {exc}", RuntimeWarning,
                          stacklevel=3)

    def _watch(self) -> ChangeFeed:
        stream = self._events_key

        def last_id(client: Any) -> bytes:
            newest = client.xrevrange(stream, count=1)
            return bytes(newest[0][0]) if newest else b"0-0"

        start = self._conn.call(last_id, "watch")
        feed = LocalChangeFeed(on_close=self._drop_feed)
        with self._feeds_lock:
            self._feeds.append(feed)
        _StreamPump(self._conn, stream, start, feed, self._stopping).thread.start()
        return feed

    # -- experiments ----------------------------------------------------------------------------------------
    @staticmethod
    def _experiment(doc: Any) -> ExperimentInfo:
        d = _loads(doc)
        return ExperimentInfo(d["id"], d["name"], d["project"], float(d["created_at"]))

    def _ensure_experiment(self, name: str, project: str) -> ExperimentInfo:
        eid = uuid.uuid4().hex
        doc = _dumps({"id": eid, "name": name, "project": project, "created_at": now()})
        event = _event("experiment.created", eid, None, name=name, project=project)
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
        event = _event("experiment.deleted", experiment_id, None)
        keys = [self._events_key, self._k("experiments"), self._k("experiment-names"),
                self._k("exp", experiment_id, "runs"), self._k("exp", experiment_id, "counter")]
        args = [_payload(event), self.prefix, experiment_id]
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
        sample = _payload(_event("run.created", experiment_id, run_id, number=0, name=name,
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
        packed = [head, *args[:3], _pack(args[3:]), tail]
        number = int(self._conn.call(lambda c: script(keys=full_keys, args=packed, client=c),
                                     "run creation"))
        if number == -1:
            raise NotFoundError(f"experiment {experiment_id} not found")
        if number == -2:
            raise NotFoundError(f"parent run {parent_id} not found")
        self._mark_sent(_event("run.created", experiment_id, run_id, number=number, name=name,
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
        from labvault import query

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
            top, existing = int(reply[0]), {_text(e) for e in reply[1]}
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
        if not int(self._run_script("hset", keys, ["1" if rebuild else "0", _pack(pairs)], what, event)):
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
            event = _event(kind, None, run_id, **{k: val for k, val in fields.items() if k != "heartbeat"})
        run_key, summary = self._run_keys(run_id)
        if not int(self._run_script("hset", [run_key, run_key, summary], ["1", _pack(pairs)], "run update",
                                    event)):
            raise NotFoundError(f"run {run_id} not found")
        if event is not None:
            self._mark_sent(event)

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        run_key, summary = self._run_keys(run_id)
        event = _event("params.logged", None, run_id, keys=sorted(params))
        pending = dict(params)
        while True:
            args: list[Any] = []
            for k, val in pending.items():
                args += ["p:" + k, _dumps(val)]
            reply = self._run_script("params", [run_key, summary], [_pack(args)], "param write", event)
            status = _text(reply[0])
            if status == "missing":
                raise NotFoundError(f"run {run_id} not found")
            if status == "ok":
                self._mark_sent(event)
                return
            stored = {_text(reply[i])[2:]: _loads(reply[i + 1]) for i in range(1, len(reply), 2)}
            check_params_conflict(run_id, stored, pending)  # raises unless the texts differ only in form
            pending = {k: val for k, val in pending.items() if k not in stored}

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        pairs: list[Any] = []
        for k, text in tags.items():
            pairs += ["t:" + k, _dumps(text)]
        event = _event("tags.set", None, run_id, keys=sorted(tags))
        self._hset(run_id, self._run_keys(run_id)[0], pairs, True, "tag write", event)

    def _log_results(self, run_id: str, results: dict[str, Any]) -> None:
        pairs: list[Any] = []
        for k, val in results.items():
            pairs += ["r:" + k, _dumps(val)]
        event = _event("results.logged", None, run_id, keys=sorted(results))
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
        event = _event("metric.logged", None, run_id, keys=sorted({s.key for s in series}),
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
        event = _event("artifact.logged", None, run_id, key=info.key, size=info.size, digest=info.digest)
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
            key = _text(raw_key)
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
    from labvault import query

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
