"""``SQLBlobStore``: blobs inside an SQL database, as ``blobs`` rows naming ``blob_chunks`` of up to 1 MiB.

The default artifact store of PostgreSQL stores and the small tier of SQLite's ``TieredBlobStore``. The
store owns its two tables (``blob_tables``; the SQL backends add them to their schema from version 4 on)
and reaches the database only through ``SQLDatabase``, the four members of an SQL backend it uses (run a
transaction, the dialect's INSERT, the hot-path executor, the store's name), so this module, a layer
below ``labvault.store``, never imports it.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, Literal, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from labvault.blobs.abc import CHUNK_SIZE, BlobSource, BlobStore, iter_source
from labvault.domain import now
from labvault.domain.model import BlobInfo
from labvault.errors import CorruptDataError, NotFoundError

__all__ = ["SQLBlobStore", "SQLDatabase", "blob_tables"]

T = TypeVar("T")


class SQLDatabase(Protocol):
    """What ``SQLBlobStore`` needs of the SQL store it lives in (``labvault.store.sql``'s backends)."""

    @property
    def location(self) -> str:
        """Where the store lives, for messages."""

    def _run(self, work: Callable[[Connection, int], T], mode: Literal["read", "write"] = "write", *,
             retry: bool = True) -> T:
        """Run ``work(conn, attempt)`` in one transaction (retried unless ``retry=False``), driver errors
        translated into labvault errors."""

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT (with ``on_conflict_do_nothing`` / ``on_conflict_do_update``)."""

    def _execute(self, conn: Connection, stmt: Any,
                 params: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Any:
        """Run a statement on the driver's cursor (the fast path); returns the cursor."""


def blob_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """Add ``blobs`` and ``blob_chunks`` to ``metadata``; return them.

    The chunks of one upload go under a fresh random ``blob_id``, and the row naming them is written in
    the same transaction, so a partial blob is never visible and replacing a key never disturbs a reader
    streaming the previous content.
    """
    Col = sa.Column
    # Keys compare and sort by code point (``COLLATE "C"`` on PostgreSQL), as every text column of the store.
    key_type = sa.String(1024).with_variant(sa.String(1024, collation="C"), "postgresql")
    blobs = sa.Table(
        "blobs", metadata,
        Col("key", key_type, primary_key=True),
        Col("blob_id", sa.BigInteger, nullable=False),
        Col("size", sa.BigInteger, nullable=False),
        Col("chunks", sa.Integer, nullable=False),
        Col("created_at", sa.Double, nullable=False),
    )
    chunks = sa.Table(
        "blob_chunks", metadata,
        Col("blob_id", sa.BigInteger, nullable=False),
        Col("idx", sa.Integer, nullable=False),
        Col("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("blob_id", "idx", name="pk_blob_chunks"),
    )
    return blobs, chunks


t_blobs, t_chunks = blob_tables(sa.MetaData())

# The statements, built once (SQLAlchemy then reuses their compiled form from its cache).
#: A blob's row and its first chunk in one query (all of a small blob).
_S_BLOB_HEAD = (
    sa.select(t_blobs.c.blob_id, t_blobs.c.size, t_blobs.c.chunks, t_chunks.c.data)
    .select_from(t_blobs.outerjoin(t_chunks, sa.and_(t_chunks.c.blob_id == t_blobs.c.blob_id,
                                                     t_chunks.c.idx == 0)))
    .where(t_blobs.c.key == sa.bindparam("b_key"))
)
_S_BLOB_CHUNK = sa.select(t_chunks.c.data).where(t_chunks.c.blob_id == sa.bindparam("b_id"),
                                                 t_chunks.c.idx == sa.bindparam("b_idx"))
_S_BLOB_ID = sa.select(t_blobs.c.blob_id).where(t_blobs.c.key == sa.bindparam("b_key"))
_S_BLOB_SIZE = sa.select(t_blobs.c.size).where(t_blobs.c.key == sa.bindparam("b_key"))
_I_CHUNK = sa.insert(t_chunks)
_D_CHUNKS = sa.delete(t_chunks).where(t_chunks.c.blob_id == sa.bindparam("b_id"))
_D_BLOB = sa.delete(t_blobs).where(t_blobs.c.key == sa.bindparam("b_key"))


class _AlreadyStored(Exception):
    """Raised inside an upload transaction to roll it back: the content was stored already."""


class _ChunkReader(io.RawIOBase):
    """A blob read back chunk by chunk, one query per chunk (the first came with the blob's row)."""

    def __init__(self, store: SQLBlobStore, key: str, blob_id: int, chunks: int, first: bytes) -> None:
        self._store = store
        self._key = key
        self._blob_id = blob_id
        self._chunks = chunks
        self._next = 1
        self._buffer = memoryview(first)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buffer:
            if self._next >= self._chunks:
                return 0
            self._buffer = memoryview(self._store._chunk(self._key, self._blob_id, self._next))
            self._next += 1
        n = min(len(buffer), len(self._buffer))
        memoryview(buffer).cast("B")[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


class SQLBlobStore(BlobStore):
    """Blobs inside an SQL backend's database: ``blobs`` rows naming ``blob_chunks`` of up to 1 MiB.

    An upload writes its chunks under a fresh random ``blob_id`` and the ``blobs`` row naming them in one
    transaction, so a partial blob is never visible (a failed or killed upload leaves nothing), and a
    replaced key never disturbs a reader still streaming the previous content. Reads fetch the blob's
    row with its first chunk in one query (all of a small blob), then one query per further chunk, so
    memory stays flat at any size. Content-addressed uploads (``put_content``) hash while they stream
    and roll back when the content is stored already. Small writes (one chunk) are retried after a lost
    connection like every transaction of the backend; a streamed upload cannot be replayed and fails
    with ``BackendUnavailableError`` instead.

    The default artifact store of PostgreSQL stores, and the small tier of SQLite's ``TieredBlobStore``.
    """

    def __init__(self, backend: SQLDatabase) -> None:
        self._db = backend
        self._new_row: Any = None  # INSERT ... ON CONFLICT (key) DO NOTHING RETURNING blob_id, built once

    def __repr__(self) -> str:
        return f"SQLBlobStore({self._db.location!r})"

    def _insert_new_row(self) -> Any:
        """The INSERT of a content-addressed blob's row, if new: RETURNING says whether it was (the rowcount
        of an INSERT is not reliable everywhere)."""
        stmt = self._new_row
        if stmt is None:
            stmt = self._new_row = (self._db._insert(t_blobs).on_conflict_do_nothing(index_elements=["key"])
                                    .returning(t_blobs.c.blob_id))
        return stmt

    # -- writes ----------------------------------------------------------------------------------------
    def _insert_chunks(self, conn: Connection, blob_id: int, chunks: Iterable[bytes],
                       sha: Any | None = None) -> tuple[int, int]:
        """Insert the chunks under ``blob_id``; return (size, number of chunks)."""
        size = count = 0
        for chunk in chunks:
            if not chunk:
                continue
            if sha is not None:
                sha.update(chunk)
            conn.execute(_I_CHUNK, {"blob_id": blob_id, "idx": count, "data": bytes(chunk)})
            size += len(chunk)
            count += 1
        return size, count

    def _replace(self, conn: Connection, key: str, blob_id: int, size: int, count: int) -> None:
        """Point ``key`` at ``blob_id`` and drop the chunks it named before (same transaction)."""
        old = conn.execute(_S_BLOB_ID.with_for_update(), {"b_key": key}).scalar()
        row = {"key": key, "blob_id": blob_id, "size": size, "chunks": count, "created_at": now()}
        if old is None:
            stmt = self._db._insert(t_blobs)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["key"], set_={c: stmt.excluded[c] for c in ("blob_id", "size", "chunks",
                                                                             "created_at")}), row)
        else:
            conn.execute(sa.update(t_blobs).where(t_blobs.c.key == key).values(
                blob_id=blob_id, size=size, chunks=count, created_at=row["created_at"]))
            conn.execute(_D_CHUNKS, {"b_id": old})

    def _put(self, key: str, chunks: Iterator[bytes]) -> int:
        first = next(chunks, b"")
        second = next(chunks, None)
        if second is None:  # all in memory already: one transaction, retried after a lost connection
            data = bytes(first)

            def small(conn: Connection, _attempt: int) -> int:
                blob_id = secrets.randbits(63)
                size, count = self._insert_chunks(conn, blob_id, [data])
                self._replace(conn, key, blob_id, size, count)
                return size

            return self._db._run(small)

        def streamed(conn: Connection, _attempt: int) -> int:
            blob_id = secrets.randbits(63)
            size, count = self._insert_chunks(conn, blob_id, itertools.chain([first, second], chunks))
            self._replace(conn, key, blob_id, size, count)
            return size

        return self._db._run(streamed, retry=False)

    def put_content(self, data: BlobSource) -> tuple[str, int]:
        """Store ``data`` under its sha256 digest once; hash while streaming into the database."""
        source = iter_source(data)
        first = next(source, b"")
        second = next(source, None)
        if second is None:
            return self._put_small_content(bytes(first))
        sha = hashlib.sha256()

        def streamed(conn: Connection, _attempt: int) -> tuple[str, int]:
            blob_id = secrets.randbits(63)
            size, count = self._insert_chunks(conn, blob_id, itertools.chain([first, second], source), sha)
            digest = sha.hexdigest()
            row = {"key": self.digest_key(digest), "blob_id": blob_id, "size": size, "chunks": count,
                   "created_at": now()}
            if conn.execute(self._insert_new_row(), row).first() is None:
                raise _AlreadyStored(digest, size)  # roll the chunks back: the content is there already
            return digest, size

        try:
            return self._db._run(streamed, retry=False)
        except _AlreadyStored as stored:
            return stored.args[0], stored.args[1]

    def _put_small_content(self, data: bytes) -> tuple[str, int]:
        """One chunk: one transaction inserting the row (if new) and the chunk."""
        digest = hashlib.sha256(data).hexdigest()
        row = {"key": self.digest_key(digest), "blob_id": secrets.randbits(63), "size": len(data),
               "chunks": 1 if data else 0, "created_at": now()}
        chunk = {"blob_id": row["blob_id"], "idx": 0, "data": data}

        def work(conn: Connection, _attempt: int) -> None:
            # A retry after a commit that did happen finds the row and inserts nothing.
            if conn.execute(self._insert_new_row(), row).first() is not None and data:
                conn.execute(_I_CHUNK, chunk)

        self._db._run(work)
        return digest, len(data)

    def _put_content_many(self, items: list[BlobSource], workers: int | None) -> list[tuple[str, int]]:
        """Many small in-memory blobs in ONE transaction (a row, if new, and one chunk each)."""
        if not all(isinstance(d, bytes | bytearray | memoryview) and len(d) <= CHUNK_SIZE for d in items):
            return super()._put_content_many(items, workers)
        datas = [bytes(d) for d in items]  # type: ignore[arg-type]
        digests = [hashlib.sha256(d).hexdigest() for d in datas]
        stamp = now()
        rows = [{"key": self.digest_key(h), "blob_id": secrets.randbits(63), "size": len(d),
                 "chunks": 1 if d else 0, "created_at": stamp} for h, d in zip(digests, datas, strict=True)]
        upsert = self._insert_new_row()

        def work(conn: Connection, _attempt: int) -> None:
            # A retry after a commit that did happen finds the rows and inserts nothing.
            chunks = []
            execute = self._db._execute
            for row, data in zip(rows, datas, strict=True):
                if execute(conn, upsert, row).fetchone() is not None and data:
                    chunks.append({"blob_id": row["blob_id"], "idx": 0, "data": data})
            if chunks:
                conn.execute(_I_CHUNK, chunks)

        self._db._run(work)
        return [(h, len(d)) for h, d in zip(digests, datas, strict=True)]

    # -- reads ------------------------------------------------------------------------------------------
    def _head(self, key: str) -> tuple[int, int, int, bytes]:
        row = self._db._run(lambda conn, _: conn.execute(_S_BLOB_HEAD, {"b_key": key}).first(), "read")
        if row is None:
            raise NotFoundError(f"no blob {key!r} in {self._db.location}")
        blob_id, size, chunks, first = row
        return int(blob_id), int(size), int(chunks), bytes(first or b"")

    def _chunk(self, key: str, blob_id: int, idx: int) -> bytes:
        data = self._db._run(
            lambda conn, _: conn.execute(_S_BLOB_CHUNK, {"b_id": blob_id, "b_idx": idx}).scalar(), "read")
        if data is None:
            raise NotFoundError(f"blob {key!r} in {self._db.location} was replaced or deleted while "
                                f"being read (chunk {idx} is gone)")
        return bytes(data)

    def _open(self, key: str) -> BinaryIO:
        blob_id, _size, chunks, first = self._head(key)
        return io.BufferedReader(_ChunkReader(self, key, blob_id, chunks, first), CHUNK_SIZE)

    def _info(self, key: str) -> BlobInfo:
        """A content-addressed blob's info from its row (its key names its digest: no chunk is read);
        any other key is read and hashed. The time is now, as for every store that keeps none (gc keeps
        what it cannot date)."""
        digest = self.key_digest(key)
        if digest is None:
            return super()._info(key)
        size = self._db._run(lambda conn, _: conn.execute(_S_BLOB_SIZE, {"b_key": key}).scalar(), "read")
        if size is None:
            raise NotFoundError(f"no blob {key!r} in {self._db.location}")
        return BlobInfo(key, int(size), digest, time.time(), digest)

    def get_content(self, digest: str) -> bytes:
        """Read a content-addressed blob whole (one query when it is one chunk) and verify its digest."""
        key = self.digest_key(digest)
        blob_id, size, chunks, first = self._head(key)
        if chunks <= 1:
            data = first
        else:
            with io.BufferedReader(_ChunkReader(self, key, blob_id, chunks, first), CHUNK_SIZE) as fh:
                data = fh.read()
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest or len(data) != size:
            raise CorruptDataError(f"blob {digest} is corrupt: its sha256 is {actual}")
        return data

    def _exists(self, key: str) -> bool:
        return self._db._run(
            lambda conn, _: conn.execute(_S_BLOB_ID, {"b_key": key}).first() is not None, "read")

    def _delete(self, key: str) -> None:
        def work(conn: Connection, _attempt: int) -> None:
            old = conn.execute(_S_BLOB_ID.with_for_update(), {"b_key": key}).scalar()
            if old is not None:
                conn.execute(_D_BLOB, {"b_key": key})
                conn.execute(_D_CHUNKS, {"b_id": old})

        self._db._run(work)

    def _list(self, prefix: str) -> Iterator[str]:
        stmt = sa.select(t_blobs.c.key).order_by(t_blobs.c.key)
        if prefix:
            stmt = stmt.where(t_blobs.c.key.startswith(prefix, autoescape=True))
        return iter(self._db._run(lambda conn, _: list(conn.execute(stmt).scalars()), "read"))

    def delete_orphans(self) -> int:
        """Delete chunks no blob names (left by two writers racing to replace one key); return how many.

        Safe while others write: an upload's chunks are invisible until its transaction commits them
        together with the row that names them.
        """
        stmt = sa.delete(t_chunks).where(t_chunks.c.blob_id.not_in(sa.select(t_blobs.c.blob_id)))
        return int(self._db._run(lambda conn, _: conn.execute(stmt).rowcount))

