"""Local-filesystem helpers shared by the file and SQLite backends: atomic writes and ``FileBlobStore``.

Every write goes to a temporary file in the destination directory, is fsynced, then renamed over the
target, and the directory is fsynced: a crash leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import stat
import struct
import tempfile
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson

from labvault._fs import SyncQueue, atomic_write_bytes, atomic_writer, path_from_uri
from labvault.blobs.abc import BlobSource, BlobStore, iter_source, precondition_failed
from labvault.domain.model import BlobInfo
from labvault.errors import BackendUnavailableError, CorruptDataError, InvalidArgumentError, NotFoundError

#: Chunk size for large local copies: big enough to amortise the hand-off to the hashing thread.
PIPELINE_CHUNK = 8 * 1024 * 1024

#: Content-addressed blobs up to this size that arrive together in one ``put_content_many`` batch are
#: written into one pack file instead of a file each (a file create costs ~0.2-1 ms, a pack entry ~1 µs).
PACK_BLOB_LIMIT = 64 * 1024
#: The fewest new small blobs in one batch worth a pack; fewer are written as loose files.
PACK_MIN_BLOBS = 8
#: The folder of pack files under a ``FileBlobStore``'s root (a key may not start with it).
PACK_DIR = ".packs"
#: A pack ends with ``[index JSON][index length, 8 bytes big-endian][PACK_MAGIC]``.
PACK_MAGIC = b"LVPACK1\n"

log = logging.getLogger(__name__)


class FileBlobStore(BlobStore, scheme="file"):
    """Blobs as files under a root directory; parents created on demand, writes atomic.

    Content-addressed blobs are files at ``sha256/ab/cd/<digest>``, except small ones stored in a batch
    (``put_content_many``: the buffered small artifacts of a run's flush), which go into one *pack file*
    under ``.packs/``: their bytes back to back, then an index of (digest, offset, size). A pack is
    written to a temporary file, fsynced and renamed, so it appears whole or not at all; it is never
    modified afterwards, only replaced by a smaller copy when ``delete`` removes some of its blobs. Every
    process keeps the packs' indexes in memory and looks for new packs when a digest is not found, so
    packs written by other processes are seen at once. Reads of packed blobs are verified like any other.
    """

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        self.pending = SyncQueue()
        self._packs = _PackIndex(self.root / PACK_DIR)

    def sync(self) -> None:
        """fsync the blobs written since the last sync (group commit; see ``SyncQueue``)."""
        if self.durable:
            self.pending.sync()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> FileBlobStore:
        """``file:///path`` or a bare path."""
        return cls(path_from_uri(url, "file"), **options)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    @property
    def url(self) -> str:
        """``file://`` and the store's absolute folder."""
        return f"file://{self.root.absolute()}"

    @staticmethod
    def _check_key(key: str) -> str:
        key = BlobStore._check_key(key)
        if key == PACK_DIR or key.startswith(PACK_DIR + "/"):
            raise InvalidArgumentError(f"blob key {key!r}: {PACK_DIR}/ holds the store's pack files")
        return key

    def _put(self, key: str, chunks: Iterator[bytes]) -> int:
        size = 0
        try:
            with atomic_writer(self._path(key), durable=self.durable, defer=self.pending) as fh:
                for chunk in chunks:
                    fh.write(chunk)
                    size += len(chunk)
        except PermissionError as exc:
            raise BackendUnavailableError(f"cannot write blob {key!r} under {self.root}: {exc}") from exc
        return size

    def _open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError) as exc:
            packed = self._read_packed(key)
            if packed is None:
                raise NotFoundError(f"no blob {key!r} in {self.root}") from exc
            return io.BytesIO(packed)

    def _exists(self, key: str) -> bool:
        if self._path(key).is_file():
            return True
        digest = self.key_digest(key)
        return digest is not None and self._packs.stat(digest) is not None  # the pack is still there

    def _delete(self, key: str) -> None:
        self._delete_many([key])

    def _delete_many(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                self._path(key).unlink()
        digests = {d for d in map(self.key_digest, keys) if d is not None}
        if digests:
            self._packs.remove(digests, durable=self.durable, pending=self.pending)

    def _list(self, prefix: str) -> Iterator[str]:
        if not self.root.is_dir():
            return
        loose = set()
        for dirpath, dirs, files in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            if rel == ".":
                dirs[:] = [d for d in dirs if d != PACK_DIR]
            for name in files:
                if name.startswith("."):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    loose.add(key)
                    yield key
        if "sha256/".startswith(prefix) or prefix.startswith("sha256/"):
            for digest in self._packs.digests():
                key = self.digest_key(digest)
                if key.startswith(prefix) and key not in loose:
                    yield key

    def _read_packed(self, key: str) -> bytes | None:
        """The bytes of a packed content-addressed blob, or None when no pack holds ``key``."""
        digest = self.key_digest(key)
        return None if digest is None else self._packs.read(digest)

    # -- conditional writes, info, scan (the public API in base.py) ------------------------------------------
    def _write(self, key: str, data: BlobSource, *, if_absent: bool, if_match: str | None) -> int:
        """Write a temp file beside the target, then publish it atomically.

        ``if_absent`` publishes with ``os.link`` (fails if the name exists: atomic across processes);
        ``if_match`` and plain writes rename under the directory's lock file, so a compare-and-swap
        cannot interleave with another writer of the same directory.
        """
        target = self._path(key)
        size = 0
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except (PermissionError, NotADirectoryError, FileExistsError) as exc:
            raise BackendUnavailableError(f"cannot write blob {key!r} under {self.root}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in iter_source(data, PIPELINE_CHUNK):
                    fh.write(chunk)
                    size += len(chunk)
                fh.flush()
                if self.durable:
                    os.fsync(fh.fileno())
            if if_absent:
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    raise precondition_failed(key, "it exists already (if_absent=True)") from None
                os.unlink(tmp)
            else:
                with self._dir_lock(target.parent):
                    if if_match is not None:
                        self._check_precondition(key, False, if_match)
                    if target.is_dir():
                        raise InvalidArgumentError(f"blob key {key!r} names a directory in {self.root}")
                    os.replace(tmp, target)
            if self.durable:
                self.pending.add_dir(target.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return size

    @staticmethod
    def _dir_lock(directory: Path) -> Any:
        from filelock import FileLock  # lazy: filelock costs ~30 ms; a store opens without it

        return FileLock(str(directory / ".blobs.lock"), thread_local=False, poll_interval=0.002)

    @staticmethod
    def _etag(st: os.stat_result) -> str:
        # A replace always brings a new inode, and mtime_ns tells recycled inode numbers apart.
        return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"

    def _info(self, key: str) -> BlobInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            packed = self._packed_info(key)
            if packed is None:
                raise NotFoundError(f"no blob {key!r} in {self.root}") from exc
            return packed
        if not stat.S_ISREG(st.st_mode):
            raise NotFoundError(f"no blob {key!r} in {self.root}")
        digest = self.key_digest(key)
        if digest is None:
            with path.open("rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        return BlobInfo(key, st.st_size, digest, st.st_mtime, self._etag(st))

    def _packed_info(self, key: str) -> BlobInfo | None:
        """``BlobInfo`` of a packed blob (modified: its pack's mtime), or None when not packed."""
        digest = self.key_digest(key)
        found = None if digest is None else self._packs.stat(digest)
        if found is None:
            return None
        entry, st = found
        return BlobInfo(key, entry.size, entry.digest, st.st_mtime, f"{self._etag(st)}-{entry.offset:x}")

    def _scan(self, prefix: str) -> Iterator[BlobInfo]:
        for key in sorted(self._list(prefix)):
            try:
                st = self._path(key).stat()
            except FileNotFoundError:
                packed = self._packed_info(key)
                if packed is not None:
                    yield packed
                continue
            etag = self._etag(st)
            yield BlobInfo(key, st.st_size, self.key_digest(key) or etag, st.st_mtime, etag)

    def _copy(self, src: str, dst: str) -> int:
        with self._open(src) as fh:
            return self._write(dst, fh, if_absent=False, if_match=None)

    def _touch(self, key: str) -> None:
        try:
            os.utime(self._path(key))
        except FileNotFoundError:
            digest = self.key_digest(key)
            if digest is not None:
                self._packs.touch(digest)

    def put_content(self, data: BlobSource) -> tuple[str, int]:
        """Write a temp file in the store while hashing, then rename it to its digest: one read.

        The rename makes the blob visible at once; its fsync is group-committed by ``sync()``.

        Hashing runs on a second thread, overlapped with the write (hashlib releases the GIL), so a large
        file is stored at close to copy speed. The digest is that of the bytes actually written.
        """
        tmpdir = self.root / "tmp"
        tmpdir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=tmpdir, suffix=".part")
        try:
            with os.fdopen(fd, "wb", buffering=0) as fh:
                digest, size = hash_while_writing(iter_source(data, PIPELINE_CHUNK), fh)
            target = self._path(self.digest_key(digest))
            if _same_size(target, size) or self._packs.stat(digest) is not None:
                os.unlink(tmp)  # stored already (a torn copy after a power loss has another size)
                self._touch(self.digest_key(digest))  # fresh for gc's grace period
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
                if self.durable:
                    # A blob torn by a power loss before this fsync fails its digest check on read and
                    # is replaced by the next put of the same content (the size check above).
                    self.pending.add_file(target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return digest, size

    def _put_content_many(
        self, items: list[BlobSource], workers: int | None
    ) -> list[tuple[str, int]]:
        """Small in-memory sources go into one new pack (those stored already are only touched); the
        rest, and batches too small to be worth a pack, are stored one by one."""
        results: list[tuple[str, int] | None] = [None] * len(items)
        fresh: dict[str, bytes] = {}
        for i, source in enumerate(items):
            if not isinstance(source, bytes | bytearray | memoryview) or len(source) > PACK_BLOB_LIMIT:
                continue
            data = bytes(source)
            digest = hashlib.sha256(data).hexdigest()
            results[i] = (digest, len(data))
            if digest not in fresh:
                if self._exists(self.digest_key(digest)):
                    self._touch(self.digest_key(digest))  # fresh for gc's grace period
                else:
                    fresh[digest] = data
        if len(fresh) >= PACK_MIN_BLOBS:
            self._packs.write(fresh, durable=self.durable, pending=self.pending)
        else:
            for blob in fresh.values():
                self.put_content(blob)
        for i, source in enumerate(items):
            if results[i] is None:
                results[i] = self.put_content(source)
        return [r for r in results if r is not None]

    def copy_content_to(self, digest: str, dest: Path) -> int:
        """Copy a blob to ``dest`` in the kernel while another thread verifies its digest.

        Blobs are immutable, so hashing the stored file beside the copy is safe; ``dest`` appears only
        when the digest matched (written as a temp file, then renamed).
        """
        source = self._path(self.digest_key(digest))
        if not source.is_file():
            packed = self._packs.read(digest)
            if packed is None:
                raise NotFoundError(f"blob {digest} is missing from {self.root}")
            actual = hashlib.sha256(packed).hexdigest()
            if actual != digest:
                raise CorruptDataError(f"blob {digest} is corrupt: its sha256 is {actual}")
            atomic_write_bytes(dest, packed, durable=False)
            return len(packed)
        with ThreadPoolExecutor(1) as pool:
            def check() -> str:
                with source.open("rb") as fh:
                    return hashlib.file_digest(fh, "sha256").hexdigest()

            verified = pool.submit(check)
            with atomic_writer(dest, durable=False) as out, source.open("rb") as src:
                if hasattr(os, "sendfile"):
                    _sendfile_all(src, out)
                else:
                    shutil.copyfileobj(src, out, PIPELINE_CHUNK)
                actual = verified.result()
                if actual != digest:
                    raise CorruptDataError(f"blob {digest} is corrupt: its sha256 is {actual}")
                size = out.tell()
        return size


class PackEntry(NamedTuple):
    """Where one packed blob lives: its pack file's name, offset and size."""

    digest: str
    pack: str
    offset: int
    size: int


class _PackIndex:
    """The pack files of one ``FileBlobStore`` and, in memory, which digest lives where.

    The index is refreshed (one ``listdir``) when a digest is not found, so packs that other processes
    write are found at once; a pack that vanished under a reader (replaced by ``remove``) is looked
    up again in the fresh listing.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._packs: dict[str, list[PackEntry]] = {}
        self._where: dict[str, PackEntry] = {}
        self._listed: set[str] = set()  # names seen by the last listing, unreadable packs included

    # -- lookups --------------------------------------------------------------------------------------------
    def find(self, digest: str) -> PackEntry | None:
        """The entry of ``digest`` (looking for new packs when it is not known), or None."""
        entry = self._where.get(digest)
        if entry is None:
            with self._lock:
                self._refresh()
                entry = self._where.get(digest)
        return entry

    def digests(self) -> list[str]:
        """Every packed digest (after a fresh listing)."""
        with self._lock:
            self._refresh()
            return list(self._where)

    def read(self, digest: str) -> bytes | None:
        """The stored bytes of ``digest`` (unverified), or None when no pack holds it."""
        for _attempt in range(3):
            entry = self.find(digest)
            if entry is None:
                return None
            try:
                fd = os.open(self.folder / entry.pack, os.O_RDONLY)
            except FileNotFoundError:
                self._forget(entry.pack)  # replaced by a smaller copy meanwhile: look again
                continue
            try:
                return os.pread(fd, entry.size, entry.offset)
            finally:
                os.close(fd)
        return None

    def stat(self, digest: str) -> tuple[PackEntry, os.stat_result] | None:
        """The entry of ``digest`` and its pack file's ``stat``, or None."""
        for _attempt in range(3):
            entry = self.find(digest)
            if entry is None:
                return None
            try:
                return entry, os.stat(self.folder / entry.pack)
            except FileNotFoundError:
                self._forget(entry.pack)
        return None

    def touch(self, digest: str) -> None:
        """Set the mtime of the pack holding ``digest`` to now (gc's grace period counts from it)."""
        for _attempt in range(3):
            entry = self.find(digest)
            if entry is None:
                return
            try:
                os.utime(self.folder / entry.pack)
                return
            except FileNotFoundError:
                self._forget(entry.pack)

    # -- writes ---------------------------------------------------------------------------------------------
    def write(self, blobs: dict[str, bytes], *, durable: bool, pending: SyncQueue) -> None:
        """Write ``blobs`` (digest -> bytes) as one new pack: a temp file, fsynced, renamed into place."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.pack"
        entries: list[PackEntry] = []
        offset = 0
        for digest, data in blobs.items():
            entries.append(PackEntry(digest, name, offset, len(data)))
            offset += len(data)
        index = orjson.dumps([[e.digest, e.offset, e.size] for e in entries])
        payload = b"".join([*blobs.values(), index, struct.pack(">Q", len(index)), PACK_MAGIC])
        atomic_write_bytes(self.folder / name, payload, durable=durable, create_parents=False, defer=pending)
        with self._lock:
            self._packs[name] = entries
            self._listed.add(name)
            for entry in entries:
                self._where.setdefault(entry.digest, entry)

    def remove(self, digests: set[str], *, durable: bool, pending: SyncQueue) -> None:
        """Drop ``digests`` from every pack holding them: each such pack is replaced by a new one without
        them (written first, so a reader always finds the survivors), or removed when nothing survives.
        Removals from different processes are serialised by a lock file."""
        if not self.folder.is_dir():
            return
        from filelock import FileLock  # lazy: filelock costs ~30 ms; a store opens without it

        with FileLock(str(self.folder / ".lock"), thread_local=False, poll_interval=0.002):
            with self._lock:
                self._refresh()
                doomed = {name: list(entries) for name, entries in self._packs.items()
                          if any(e.digest in digests for e in entries)}
            for name, entries in doomed.items():
                keep = [e for e in entries if e.digest not in digests]
                if keep:
                    fd = os.open(self.folder / name, os.O_RDONLY)
                    try:
                        survivors = {e.digest: os.pread(fd, e.size, e.offset) for e in keep}
                    finally:
                        os.close(fd)
                    self.write(survivors, durable=durable, pending=pending)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.folder / name)
                if durable:
                    pending.add_dir(self.folder)
                self._forget(name)

    # -- the in-memory index --------------------------------------------------------------------------------
    def _forget(self, name: str) -> None:
        with self._lock:
            if self._packs.pop(name, None) is not None:
                self._reindex()
            self._listed.discard(name)

    def _reindex(self) -> None:
        self._where = {}
        for entries in self._packs.values():
            for entry in entries:
                self._where.setdefault(entry.digest, entry)

    def _refresh(self) -> None:
        """Bring the index in line with the folder's listing (caller holds ``_lock``)."""
        try:
            names = {n for n in os.listdir(self.folder) if n.endswith(".pack") and not n.startswith(".")}
        except (FileNotFoundError, NotADirectoryError):
            names = set()
        if names == self._listed:
            return
        gone = self._listed - names
        for name in gone:
            self._packs.pop(name, None)
        for name in names - self._listed:
            entries = self._load(name)
            if entries is not None:
                self._packs[name] = entries
                if not gone:
                    for entry in entries:
                        self._where.setdefault(entry.digest, entry)
        self._listed = names
        if gone:
            self._reindex()

    def _load(self, name: str) -> list[PackEntry] | None:
        """A pack's entries from its trailer; None (and a warning) for a pack that is not whole."""
        path = self.folder / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            tail = os.pread(fd, 16, size - 16) if size >= 16 else b""
            if tail[8:] != PACK_MAGIC:
                log.warning("ignoring pack %s: it does not end with a pack index (torn by a crash?)", path)
                return None
            (length,) = struct.unpack(">Q", tail[:8])
            data_end = size - 16 - length
            if data_end < 0:
                raise ValueError(f"index length {length} exceeds the file")
            items = orjson.loads(os.pread(fd, length, data_end))
            entries = [PackEntry(str(d), name, int(o), int(n)) for d, o, n in items]
            if any(e.offset < 0 or e.size < 0 or e.offset + e.size > data_end for e in entries):
                raise ValueError("an entry lies outside the pack's data")
            return entries
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            log.warning("ignoring pack %s: its index is unreadable (%s)", path, exc)
            return None
        finally:
            os.close(fd)


def _same_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _sendfile_all(src: BinaryIO, out: BinaryIO) -> None:
    """Copy a whole file with ``os.sendfile`` (no user-space buffers)."""
    offset = 0
    size = os.fstat(src.fileno()).st_size
    while offset < size:
        sent = os.sendfile(out.fileno(), src.fileno(), offset, min(size - offset, 1 << 30))
        if sent == 0:
            break
        offset += sent
    out.seek(offset)


def hash_while_writing(chunks: Iterator[bytes], out: BinaryIO) -> tuple[str, int]:
    """Write chunks to ``out`` while a worker thread hashes them; return (sha256 hex, size)."""
    sha = hashlib.sha256()
    size = 0
    pending: Future[None] | None = None
    with ThreadPoolExecutor(1) as pool:
        for chunk in chunks:
            if len(chunk) < 65536:  # small chunks: a thread hand-off costs more than it saves
                if pending is not None:
                    pending.result()
                    pending = None
                sha.update(chunk)
            else:
                if pending is not None:
                    pending.result()
                pending = pool.submit(sha.update, chunk)
            out.write(chunk)
            size += len(chunk)
        if pending is not None:
            pending.result()
    return sha.hexdigest(), size
