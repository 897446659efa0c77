"""A run's artifact manifest ``artifacts.jsonl``: one JSON line per artifact record, the last per key wins.

The manifest is append-only (``encode_manifest`` makes the lines of one locked append; a writer killed
mid-append leaves a torn last line, cut off by the next writer: ``manifest_valid_end``), so a reader
keeps what it parsed and reads only what was appended since (``Manifests``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from labvault.domain import ArtifactInfo
from labvault.errors import CorruptDataError
from labvault.store.file.fileio import read_fd

MANIFEST = "artifacts.jsonl"


def encode_manifest(infos: list[ArtifactInfo]) -> bytes:
    """The manifest lines of artifact records."""
    return "".join(json.dumps({"key": info.key, "digest": info.digest, "size": info.size,
                               "created_at": info.created_at}, ensure_ascii=False) + "\n"
                   for info in infos).encode("utf-8")


def manifest_valid_end(fd: int, size: int) -> int:
    """Where the last complete line of the open manifest ``fd`` of ``size`` bytes ends."""
    if os.pread(fd, 1, size - 1) == b"\n":
        return size
    return read_fd(fd, size).rfind(b"\n") + 1  # cut a torn last line


class Manifests:
    """The manifests read so far, each with the inode and offset it was parsed up to."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[int, int, dict[str, ArtifactInfo]]] = {}

    def read(self, path: Path) -> dict[str, ArtifactInfo]:
        """The manifest's entries (last line per key wins), parsing only what was appended since last time.

        The manifest is append-only, so the cache is keyed by the file's inode and the offset parsed up
        to; a torn last line (a writer killed mid-append) is left for the next read.
        """
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            self._cache.pop(path, None)
            return {}
        try:
            inode = os.fstat(fd).st_ino
            cached = self._cache.get(path)
            offset, items = (cached[1], cached[2]) if cached and cached[0] == inode else (0, {})
            os.lseek(fd, offset, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        complete = data.rfind(b"\n") + 1  # bytes after the last newline: a torn line, ignored
        if not complete:
            return items
        items = dict(items)  # copy on change: other threads may be iterating the cached one
        for raw in data[:complete].split(b"\n")[:-1]:
            try:
                entry = json.loads(raw)
                info = ArtifactInfo(str(entry["key"]), int(entry["size"]), str(entry["digest"]),
                                    float(entry["created_at"]))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                raise CorruptDataError(
                    f"artifact manifest {path} is corrupt near byte {offset}: {exc}") from exc
            items[info.key] = info
        self._cache[path] = (inode, offset + complete, items)
        return items
