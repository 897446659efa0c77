"""A change log in any ``BlobStore``: how file, SQLite and S3 stores share their change feed between
processes and machines, with no server and no broker.

Layout under the log's prefix (``<root>/events/`` of a folder store, the sibling folder
``<stem>-events/`` of an SQLite file, ``meta/events/`` in a bucket)::

    000000000001   a batch of events: a JSON list of ``ChangeEvent.to_json()`` documents
    000000000002   ... numbered 1, 2, 3, ... with no gaps, in the order they were written
    head           a hint {"n": <a recent batch number>}, rewritten every ``HINT_EVERY`` batches

**Writing.** A write's event is handed to the process's ``LogWriter`` and returns at once; a daemon thread
appends what arrived as one batch every ``FLUSH_INTERVAL`` seconds (and ``Backend.sync()``/``close()``
append at once). A batch claims the next number with a conditional put (``if_absent``: ``O_EXCL``-like
``os.link`` on a folder, ``If-None-Match: *`` on S3): when another process took that number, the writer
tries the next one. So the log is one total order over every process, dense, and each batch is visible
whole or not at all. The writer of batch ``n`` with ``n % TRIM_EVERY == 0`` deletes the batches older than
``n - KEEP``: the log keeps the last ``KEEP`` batches (at least that many events).

**Reading.** A feed (``PolledFeed``) remembers the number of the last batch it delivered and looks for the
next one every ``poll_interval`` seconds (a file open on a folder, a ``GET`` answered 404 until it exists
on S3), so a change reaches every subscriber within ``FLUSH_INTERVAL + poll_interval`` (0.05 s + 0.2 s by
default). Events carry ids ``"<batch>.<index>"``; ``watch(after=id)`` starts right after that event, so a
subscriber that went away and comes back gets everything it missed that is still in the log (at least
once). Older events were trimmed: the feed then resumes at the oldest batch kept and logs a warning
naming the gap.

**What can be lost.** An event lives in its process's buffer for up to ``FLUSH_INTERVAL``: a process
killed in that window loses those events (never the writes themselves). The log is not fsynced, so a
power loss may drop its newest batches. The metadata stays the truth: a consumer that must not miss a
change re-reads what an event points at, as ``labvault.sync`` does.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import orjson

from labvault.blobs.abc import BlobStore
from labvault.domain import ChangeEvent
from labvault.errors import ConflictError, InvalidArgumentError, LabvaultError, NotFoundError
from labvault.store.feed import LocalChangeFeed

__all__ = ["KEEP", "BlobEventLog", "LogWriter", "PolledFeed", "batch_of", "parse_event_id"]

log = logging.getLogger("labvault.events")

#: Seconds a written event waits in its process before its batch is appended.
FLUSH_INTERVAL = 0.05
#: Seconds between a feed's looks for the next batch.
POLL_INTERVAL = 0.2
#: Batches kept in the log; older ones are deleted by writers.
KEEP = 4096
TRIM_EVERY = 256
HINT_EVERY = 64
#: Events buffered in one process at most (a store that refuses writes for long drops the oldest).
MAX_BUFFERED = 100_000
#: Seconds a feed with nothing new waits before it checks whether its next batch was trimmed.
_GAP_CHECK = 5.0


def batch_of(event_id: str | None) -> int | None:
    """The batch number of an event id of a ``BlobEventLog`` (None for any other id)."""
    batch, dot, _ = (event_id or "").partition(".")
    return int(batch) if dot and batch.isdigit() and batch.isascii() else None


def parse_event_id(value: object) -> tuple[int, int]:
    """``"<batch>.<index>"`` as two ints; ``InvalidArgumentError`` naming the value otherwise."""
    if isinstance(value, str) and len(value) <= 40:
        batch, dot, index = value.partition(".")
        if dot and batch.isdigit() and index.isdigit() and batch.isascii() and index.isascii():
            return int(batch), int(index)
    shown = value[:80] if isinstance(value, str) else value
    raise InvalidArgumentError(f"event id {shown!r} is not an id of this store's change log "
                               "(it looks like '12.3': a batch number and an index)")


class BlobEventLog:
    """The change log under ``prefix`` of a blob store (see the module docstring)."""

    def __init__(self, store: BlobStore, prefix: str = "events/") -> None:
        self.store = store
        self.prefix = prefix
        self._next = 0  # the number this process tries next (0: not known yet)
        self._lock = threading.Lock()

    def _key(self, n: int) -> str:
        return f"{self.prefix}{n:012d}"

    # -- writing -------------------------------------------------------------------------------------------
    def append(self, events: list[ChangeEvent]) -> int:
        """Append one batch; return its number."""
        body = orjson.dumps([e.to_json() for e in events], default=str)
        with self._lock:
            n = self._next or self.head() + 1
            conflicts = 0
            while True:
                try:
                    self.store.put(self._key(n), body, if_absent=True)
                    break
                except ConflictError:  # another process holds this number: try the next one
                    conflicts += 1
                    n = self.head() + 1 if conflicts % 16 == 0 else n + 1
            self._next = n + 1
        if n % HINT_EVERY == 0:
            self.store.put(self.prefix + "head", orjson.dumps({"n": n}))
        if n % TRIM_EVERY == 0 and n > KEEP:
            self.store.delete_many(self._key(i) for i in range(max(1, n - KEEP - TRIM_EVERY), n - KEEP))
        return n

    # -- reading -------------------------------------------------------------------------------------------
    def head(self) -> int:
        """The number of the newest batch (0 when the log is empty)."""
        try:
            n = int(orjson.loads(self.store.get(self.prefix + "head"))["n"])
        except NotFoundError:
            n = 0
        except (ValueError, KeyError, TypeError):  # a torn or foreign hint: probe from the start
            n = 0
        if not n or not self.store.exists(self._key(n)):  # no hint yet, or a hint older than the log
            n = self.oldest() - 1
        while self.store.exists(self._key(n + 1)):
            n += 1
        return n

    def oldest(self) -> int:
        """The number of the oldest batch kept (head + 1 when the log is empty)."""
        numbers = [int(k[len(self.prefix):]) for k in self.store.list(self.prefix)
                   if k[len(self.prefix):].isdigit()]
        return min(numbers) if numbers else 1

    def read(self, n: int) -> list[ChangeEvent] | None:
        """The events of batch ``n`` with their ids, or None when it does not exist (yet)."""
        try:
            body = self.store.get(self._key(n))
        except NotFoundError:
            return None
        out = []
        try:
            docs = orjson.loads(body)
        except orjson.JSONDecodeError:
            log.warning("change log batch %s of %s is not JSON; skipped", n, self.store)
            return []
        for i, doc in enumerate(docs if isinstance(docs, list) else ()):
            try:
                event = ChangeEvent.from_json(doc)
            except (ValueError, KeyError, TypeError):
                continue
            out.append(event.with_id(f"{n}.{i}"))
        return out


class LogWriter:
    """One process's buffer of events for a ``BlobEventLog``, appended by a daemon thread in batches.

    ``append`` never blocks on the store and never fails a write: when the store refuses a batch, the
    events stay buffered (up to ``MAX_BUFFERED``) and the next tick tries again.
    """

    def __init__(self, events: BlobEventLog, interval: float = FLUSH_INTERVAL) -> None:
        self.log = events
        self.interval = interval
        self._buffer: list[ChangeEvent] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        _WRITERS.add(self)

    def append(self, event: ChangeEvent) -> None:
        """Buffer an event; its batch is appended within ``interval`` seconds."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's buffer and thread are not ours
                self._buffer, self._thread, self._pid = [], None, os.getpid()
            self._buffer.append(event)
            if len(self._buffer) > MAX_BUFFERED:
                del self._buffer[: len(self._buffer) - MAX_BUFFERED]
            if self._thread is None and not self._stop:
                self._thread = threading.Thread(target=self._loop, name="labvault-eventlog", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while not self._stop:
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush(quiet=True)

    def flush(self, quiet: bool = False) -> None:
        """Append what is buffered now, as one batch (``quiet``: log a failure instead of raising)."""
        with self._flush_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
            if not batch:
                return
            try:
                self.log.append(batch)
            except Exception as exc:
                with self._lock:
                    self._buffer[:0] = batch  # keep them, oldest first, for the next try
                if not quiet:
                    raise
                if isinstance(exc, LabvaultError):
                    log.warning("cannot append %d change events to %s (kept for the next try): %s",
                                len(batch), self.log.store, exc)
                else:
                    log.exception("cannot append %d change events to %s", len(batch), self.log.store)

    def close(self) -> None:
        """Append what is left and stop the thread. Safe to call twice."""
        self._stop = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.flush(quiet=True)
        _WRITERS.discard(self)


_WRITERS: weakref.WeakSet[LogWriter] = weakref.WeakSet()


def flush_all_writers() -> None:
    """Append every writer's buffered events (at interpreter exit: ``labvault.client.buffer``)."""
    for writer in list(_WRITERS):
        writer.flush(quiet=True)


class PolledFeed(LocalChangeFeed):
    """A feed reading a ``BlobEventLog`` from batch ``start`` on, polled by a daemon thread.

    ``skip`` events of the first batch are passed over (``watch(after="<batch>.<index>")`` resumes in
    the middle of a batch).
    """

    def __init__(self, events: BlobEventLog, start: int, skip: int = 0, *,
                 poll_interval: float = POLL_INTERVAL, on_close: Callable[[Any], None] | None = None) -> None:
        super().__init__(on_close=on_close)
        self._log = events
        #: The first batch this feed reads.
        self.start = start
        self._next = start
        self._skip = skip
        self._poll = poll_interval
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="labvault-eventlog-feed", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop polling and end the feed. Safe to call twice."""
        self._stopping.set()
        super().close()

    def _run(self) -> None:
        idle = 0.0
        while not self.closed:
            try:
                events = self._log.read(self._next)
                if events is None:
                    if self._stopping.wait(self._poll):
                        return
                    idle += self._poll
                    if idle >= _GAP_CHECK:
                        idle = 0.0
                        self._skip_trimmed()
                    continue
            except LabvaultError as exc:  # the store is unreachable: keep trying until closed
                log.debug("change log read failed (retrying): %s", exc)
                if self._stopping.wait(max(self._poll, 1.0)):
                    return
                continue
            except Exception:  # never die with a traceback at interpreter shutdown
                return
            idle = 0.0
            for event in events[self._skip:]:
                self.put(event)
            self._skip = 0
            self._next += 1

    def _skip_trimmed(self) -> None:
        """When the next batch was trimmed away (this feed fell ``KEEP`` batches behind), go on at the
        oldest batch kept, saying how many were lost."""
        head = self._log.head()
        if head < self._next:
            return
        oldest = self._log.oldest()
        if oldest > self._next:
            log.warning("change feed of %s fell behind: batches %d to %d were trimmed from the log "
                        "before it read them", self._log.store, self._next, oldest - 1)
            self._next, self._skip = oldest, 0


atexit.register(flush_all_writers)  # after the run buffers' own exit flush (atexit runs last-in first-out)
