"""Low-level file access shared by the file backend's modules: locks, whole reads and writes, JSON lines.

Every file the backend appends to is locked with an exclusive ``flock`` of the file itself (``flock``),
or of a lock file in ``locks/`` (``Lock``, which also serializes the threads of one process). Journal
lines and index records are compact JSON written by orjson (``dump_line``); a line holding an integer
beyond 64 bits, which orjson can neither write nor read back exactly, is written by ``json`` and starts
with ``{"~":1,`` (``BIG``) so that ``load_one`` knows which parser to use.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import orjson

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    from labvault._retry import Backoff, Retry

    #: ``LK_LOCK`` waits itself (it retries every second for 10 s), so a retry needs no pause of its own.
    _LOCK_RETRY = Backoff(first=0.0, cap=0.0, jitter=False)

    def flock(fd: int) -> None:
        """Take an exclusive lock of the open file ``fd`` (released when ``fd`` is closed)."""
        retry = Retry(policy=_LOCK_RETRY)  # neither tries nor a timeout: wait as long as it takes
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                return
            except OSError:  # LK_LOCK gives up after 10 s: keep waiting
                retry.wait()
else:
    import fcntl

    def flock(fd: int) -> None:
        """Take an exclusive lock of the open file ``fd`` (released when ``fd`` is closed)."""
        fcntl.flock(fd, fcntl.LOCK_EX)


#: Journal lines and index records holding integers beyond 64 bits start with this (keys cannot hold "~").
BIG = b'{"~":1,'


def dumps_doc(obj: Any) -> bytes:
    """A JSON document as the store writes it: indented, UTF-8, newline at the end."""
    return (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def dump_line(obj: dict[str, Any]) -> bytes:
    """One compact JSON object (no newline inside): orjson, or ``json`` marked with ``{"~":1,`` for
    integers beyond 64 bits (which orjson cannot write, and would read back as floats)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return BIG + text[1:].encode("utf-8")


def load_one(raw: bytes | memoryview) -> Any:
    """Parse what ``dump_line`` wrote."""
    if bytes(raw[:len(BIG)]) == BIG:
        doc = json.loads(bytes(raw))
        doc.pop("~", None)
        return doc
    return orjson.loads(raw)


def read_fd(fd: int, size: int, offset: int = 0) -> bytes:
    """Up to ``size`` bytes of the open file ``fd`` from ``offset`` (fewer only at its end)."""
    chunks = []
    end = offset + size
    while offset < end:
        chunk = os.pread(fd, end - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (one ``write`` unless the kernel takes less)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Lock:
    """A cross-process lock (``flock`` of a lock file) plus an in-process thread lock."""

    __slots__ = ("_fd", "_path", "_thread")

    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = threading.Lock()
        self._fd = -1

    def __enter__(self) -> None:
        self._thread.acquire()
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                flock(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        except BaseException:
            self._thread.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            fd, self._fd = self._fd, -1
            os.close(fd)  # releases the flock
        finally:
            self._thread.release()
