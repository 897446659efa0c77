"""``RedisBlobStore``: blobs as chunk keys under a Redis vault's prefix, published by a manifest written last.

Used by ``RedisBackend`` for artifacts unless ``artifacts=`` names another store; it shares the backend's
``RedisConnection`` (``labvault.blobs.redis_connection``: retries, error translation), so it works on
any connection whose scripts include ``BLOB_SCRIPTS``. Key layout under the prefix ``P``::

    P blobs                        zset    every blob key (lexicographic listing)
    P blob:<key>                   hash    a published blob's manifest: upload, size, chunks, chunk_size,
                                           mtime
    P chunk:<upload>:<i>           string  the i-th chunk of an upload (expires until published)

Blobs are cut into chunks of ``chunk_size`` bytes written under a fresh upload id (with a one-day expiry
while uploading), and a script publishes the manifest last, so a blob is visible only when complete and
an abandoned upload disappears by itself. Reads fetch a few chunks per round trip, so memory stays flat
for any size.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from labvault.blobs.abc import BlobStore, iter_source
from labvault.blobs.redis_connection import RedisConnection, as_text
from labvault.errors import BackendUnavailableError, CorruptDataError, NotFoundError

__all__ = ["BLOB_SCRIPTS", "UPLOAD_TTL", "RedisBlobStore"]

#: How long the chunks of an unfinished upload live (seconds).
UPLOAD_TTL = 24 * 3600
_READ_AHEAD = 4  # chunks fetched per round trip when reading a blob
_WRITE_AHEAD = 4  # chunks sent per round trip when writing one
_REOPEN_TRIES = 8  # manifests read by one open while writers keep replacing the blob

#: The blob store's Lua scripts (register them on the connection the store is given).
BLOB_SCRIPTS: dict[str, str] = {
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

    def prefetch(self) -> bool:
        """Fetch the first chunks now; False when they are gone already (the blob was replaced or deleted
        since its manifest was read: nothing was read, so the caller may start over from the manifest)."""
        return self._chunks == 0 or self._fetch()

    def _fetch(self) -> bool:
        """Fetch the next few chunks into ``_pending``; False when one of them is missing."""
        upto = min(self._chunks, self._next + _READ_AHEAD)
        names = [self._store._chunk_key(self._upload, i) for i in range(self._next, upto)]
        got = self._store._conn.call(lambda c: c.mget(names), "blob read")
        if any(part is None for part in got):
            return False
        self._pending = list(reversed(got))
        self._next = upto
        return True

    def _fill(self) -> bool:
        if not self._pending:
            if self._next >= self._chunks:
                return False
            if not self._fetch():
                raise CorruptDataError(
                    f"blob {self._key!r} lost chunks while being read (replaced or deleted meanwhile)")
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

    def __init__(self, conn: RedisConnection) -> None:
        self._conn = conn
        self.prefix = conn.settings.prefix
        self.chunk_size = conn.settings.chunk_size

    def _manifest_key(self, key: str) -> str:
        return f"{self.prefix}blob:{key}"

    def _chunk_key(self, upload: str, index: int) -> str:
        return f"{self.prefix}chunk:{upload}:{index}"

    def _script(self, name: str, keys: list[str], args: list[Any], what: str) -> Any:
        """Run one of ``BLOB_SCRIPTS`` through the connection (retried, errors translated)."""
        script = self._conn.script(name)
        return self._conn.call(lambda c: script(keys=keys, args=args, client=c), what)

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
        keys = [self._manifest_key(key), self.prefix + "blobs"]
        args: list[Any] = [self.prefix, key, upload, size, count, self.chunk_size,
                           "1" if only_if_absent else "0", repr(time.time())]
        result = int(self._script("publish_blob", keys, args, "blob publish"))
        if result < 0:
            raise BackendUnavailableError(
                f"Redis at {self._conn.settings.where}: chunks of the upload of {key!r} expired before it "
                "was published; upload it again")
        return result == 1

    def _put_small(self, key: str, blob: bytes, only_if_absent: bool) -> bool:
        """Write and publish a blob of at most one chunk with one script call."""
        keys = [self._manifest_key(key), self.prefix + "blobs"]
        args: list[Any] = [self.prefix, key, uuid.uuid4().hex, len(blob), self.chunk_size,
                           "1" if only_if_absent else "0", repr(time.time()), blob]
        return int(self._script("put_small_blob", keys, args, "blob write")) == 1

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
        self._script("touch_blob", [self._manifest_key(key)], [repr(time.time())], "blob touch")

    def _manifest(self, key: str) -> tuple[str, int, int] | None:
        name = self._manifest_key(key)
        upload, size, chunks = self._conn.call(lambda c: c.hmget(name, "upload", "size", "chunks"),
                                               "blob lookup")
        if upload is None:
            return None
        return as_text(upload), int(size), int(chunks)

    def _open(self, key: str) -> BinaryIO:
        """A reader of the blob as published now: when a writer replaces it between the manifest and the
        first chunks (a compare-and-swap loop does), the new manifest is read and the reader starts over."""
        for _ in range(_REOPEN_TRIES):
            manifest = self._manifest(key)
            if manifest is None:
                raise NotFoundError(f"no blob {key!r}")
            upload, size, chunks = manifest
            reader = _ChunkReader(self, key, upload, size, chunks)
            if reader.prefetch():
                return io.BufferedReader(reader, self.chunk_size)
        raise CorruptDataError(f"blob {key!r} lost chunks while being read (replaced or deleted meanwhile)")

    def _exists(self, key: str) -> bool:
        name = self._manifest_key(key)
        return bool(self._conn.call(lambda c: c.hexists(name, "upload"), "blob lookup"))

    def _delete(self, key: str) -> None:
        self._script("delete_blob", [self._manifest_key(key), self.prefix + "blobs"], [self.prefix, key],
                     "blob delete")

    def _list(self, prefix: str) -> Iterator[str]:
        index = self.prefix + "blobs"
        low = b"[" + prefix.encode() if prefix else b"-"
        high = b"[" + prefix.encode() + b"\xff" if prefix else b"+"
        names = self._conn.call(lambda c: c.zrangebylex(index, low, high), "blob listing")
        return iter([as_text(n) for n in names])
