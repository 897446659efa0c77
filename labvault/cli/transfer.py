"""Moving bytes for ``artifacts get/put`` and ``blobs cp``: chunked streaming with a progress bar on
stderr, and writing a local file atomically (a temp file beside it, published only once complete and never
over an existing file unless ``--force``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer

from labvault.cli.common import err, fail
from labvault.errors import InvalidArgumentError

#: Transfers show a progress bar from this size on (and when the size is unknown).
PROGRESS_MIN_BYTES = 8 * 1024 * 1024
#: Bytes read and written at a time.
CHUNK = 1024 * 1024


class ProgressReader:
    """A binary file wrapper that advances a rich progress task as it is read."""

    def __init__(self, raw: Any, advance: Any) -> None:
        self._raw = raw
        self._advance = advance

    def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (all with -1) and count them on the progress bar."""
        data: bytes = self._raw.read(n)
        if data:
            self._advance(len(data))
        return data

    def close(self) -> None:
        """Close the wrapped file."""
        self._raw.close()


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A transient progress bar on stderr with size, rate and time left; yields an ``advance(n)``."""
    from rich.progress import (  # lazy: rich.progress (~4 ms): only commands that show progress
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn(), console=err(), transient=True,
                   disable=total is not None and total < PROGRESS_MIN_BYTES)
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def source_size(path: Path) -> int | None:
    """The size of a regular file, None for anything else (a pipe, a device) or when it cannot be read."""
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def copy_stream(src: Any, dst: Any) -> int:
    """Copy ``src`` to ``dst`` chunk by chunk; the number of bytes copied."""
    size = 0
    while chunk := src.read(CHUNK):
        dst.write(chunk)
        size += len(chunk)
    return size


def to_stdout(src: Any) -> None:
    """Stream ``src`` to the binary stdout."""
    stream = typer.get_binary_stream("stdout")
    copy_stream(src, stream)
    stream.flush()


def refuse_existing(path: Path | str, name: str = "FileExistsError") -> NoReturn:
    """Exit with ``error: FileExistsError: <path> exists; pass --force to replace it``."""
    fail(name=name, message=f"{path} exists; pass --force to replace it")


def temp_beside(target: Path) -> tuple[int, Path]:
    """A new temp file (descriptor, path) in ``target``'s directory with the mode open() would give it."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return fd, tmp


def publish(tmp: Path, target: Path, force: bool, *, links_optional: bool = False) -> None:
    """Move the complete ``tmp`` to ``target``: replacing it with ``force``, else only if it does not exist.

    Without ``force`` the check is atomic (a hard link fails if ``target`` appeared meanwhile). With
    ``links_optional``, a file system without hard links (some network or FAT ones) falls back to a
    checked rename; otherwise its error propagates.
    """
    if force:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)
    except FileExistsError:
        refuse_existing(target)
    except OSError:
        if not links_optional:
            raise
        if target.exists():
            refuse_existing(target)
        os.replace(tmp, target)


def write_local(stream: Any, target: Path, force: bool) -> int:
    """Stream into a temp file beside ``target``, then publish it (never a partial file); the size."""
    if target.is_dir():
        raise InvalidArgumentError(f"{target} is a directory; name the file to write")
    fd, tmp = temp_beside(target)
    try:
        with os.fdopen(fd, "wb") as dst:
            size = copy_stream(stream, dst)
        publish(tmp, target, force)
        return size
    finally:
        tmp.unlink(missing_ok=True)
