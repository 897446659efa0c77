"""Local-filesystem helpers shared by the file and SQLite backends: atomic writes and ``FileBlobStore``.

Every write goes to a temporary file in the destination directory, is fsynced, then renamed over the
target, and the directory is fsynced: a crash leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from labvault.backends.base import BlobSource, BlobStore, iter_source, precondition_failed
from labvault.domain.model import BlobInfo
from labvault.errors import BackendUnavailableError, CorruptDataError, InvalidArgumentError, NotFoundError

#: Chunk size for large local copies: big enough to amortise the hand-off to the hashing thread.
PIPELINE_CHUNK = 8 * 1024 * 1024


def fsync_dir(path: Path) -> None:
    """Make a rename or create in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SyncQueue:
    """Files and directories written since the last ``sync()``, to be fsynced together (group commit).

    Local stores keep every write atomic at once (temp file + rename: a killed process never leaves a
    torn file) and make it survive power loss at the next ``sync()``, which the vault's background
    flusher calls every ``flush_interval`` seconds and at run end / close. One fsync per directory per
    interval instead of one per write is what makes thousands of small writes a second possible.
    """

    def __init__(self) -> None:
        self._files: set[Path] = set()
        self._dirs: set[Path] = set()
        self._lock = threading.Lock()

    def add_file(self, path: Path) -> None:
        """fsync ``path`` (and its directory) at the next sync."""
        with self._lock:
            self._files.add(path)
            self._dirs.add(path.parent)

    def add_dir(self, path: Path) -> None:
        """fsync directory ``path`` at the next sync (a rename or create in it)."""
        with self._lock:
            self._dirs.add(path)

    def __len__(self) -> int:
        return len(self._files) + len(self._dirs)

    def sync(self) -> None:
        """fsync everything queued: files first, then the directories naming them."""
        with self._lock:
            files, self._files = self._files, set()
            dirs, self._dirs = self._dirs, set()
        for path in sorted(files) + sorted(dirs):
            try:
                fd = os.open(path, os.O_RDONLY)
            except (FileNotFoundError, NotADirectoryError):
                continue  # replaced or deleted since: nothing left to make durable
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@contextlib.contextmanager
def atomic_writer(
    target: Path, *, durable: bool = True, create_parents: bool = True, defer: SyncQueue | None = None
) -> Iterator[BinaryIO]:
    """Open a temporary file next to ``target``; on success rename it over ``target``.

    With ``durable`` the file is fsynced before the rename (so after a power loss the name never points
    at torn data) and the directory after it; with ``defer`` the directory fsync is queued instead.
    With ``create_parents=False`` the directory must exist, so a write racing a delete cannot bring a
    removed directory back as an empty shell.
    """
    if create_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
        if durable and defer is not None:
            defer.add_dir(target.parent)
        elif durable:
            fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(
    target: Path, data: bytes, *, durable: bool = True, create_parents: bool = True,
    defer: SyncQueue | None = None,
) -> None:
    """Replace ``target`` with ``data`` atomically (see ``atomic_writer``)."""
    with atomic_writer(target, durable=durable, create_parents=create_parents, defer=defer) as fh:
        fh.write(data)


def path_from_uri(uri: str, scheme: str) -> Path:
    """The local path of ``file://dir``, ``file:///abs`` or a bare path."""
    if "://" not in uri:
        return Path(uri).expanduser()
    parts = urlsplit(uri)
    if parts.scheme.lower() not in (scheme, "file"):
        raise InvalidArgumentError(f"{uri!r} is not a {scheme}:// URI")
    raw = unquote(parts.netloc + parts.path)
    if not raw:
        raise InvalidArgumentError(f"{uri!r} names no directory")
    if "\x00" in raw:
        raise InvalidArgumentError(f"{uri!r} contains a NUL character")
    return Path(raw).expanduser()


class FileBlobStore(BlobStore, scheme="file"):
    """Blobs as files under a root directory; parents created on demand, writes atomic."""

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        self.pending = SyncQueue()

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
            raise NotFoundError(f"no blob {key!r} in {self.root}") from exc

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def _list(self, prefix: str) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for dirpath, _dirs, files in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith("."):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    yield key

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
        from filelock import FileLock

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
            raise NotFoundError(f"no blob {key!r} in {self.root}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise NotFoundError(f"no blob {key!r} in {self.root}")
        digest = _digest_from_key(key)
        if digest is None:
            with path.open("rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        return BlobInfo(key, st.st_size, digest, st.st_mtime, self._etag(st))

    def _scan(self, prefix: str) -> Iterator[BlobInfo]:
        for key in sorted(self._list(prefix)):
            try:
                st = self._path(key).stat()
            except FileNotFoundError:
                continue
            etag = self._etag(st)
            yield BlobInfo(key, st.st_size, _digest_from_key(key) or etag, st.st_mtime, etag)

    def _copy(self, src: str, dst: str) -> int:
        with self._open(src) as fh:
            return self._write(dst, fh, if_absent=False, if_match=None)

    def _touch(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._path(key))

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
            if _same_size(target, size):
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

    def copy_content_to(self, digest: str, dest: Path) -> int:
        """Copy a blob to ``dest`` in the kernel while another thread verifies its digest.

        Blobs are immutable, so hashing the stored file beside the copy is safe; ``dest`` appears only
        when the digest matched (written as a temp file, then renamed).
        """
        source = self._path(self.digest_key(digest))
        if not source.is_file():
            raise NotFoundError(f"blob {digest} is missing from {self.root}")
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


def _digest_from_key(key: str) -> str | None:
    """The sha256 a content-addressed key (``sha256/ab/cd/<digest>``) names, else None."""
    parts = key.split("/")
    if len(parts) == 4 and parts[0] == "sha256" and len(parts[3]) == 64 and parts[1] == parts[3][:2] \
            and parts[2] == parts[3][2:4] and all(c in "0123456789abcdef" for c in parts[3]):
        return parts[3]
    return None


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
