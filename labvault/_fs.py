"""Local-filesystem helpers shared by the file backend and the local blob store: atomic writes.

Every write goes to a temporary file in the destination directory, is fsynced, then renamed over the
target, and the directory is fsynced: a crash leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from labvault.errors import InvalidArgumentError


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
