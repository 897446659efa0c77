"""What one server process holds (``ServerState``: the backend, the auth store, the event hub, the group
commit thread) and the limits it runs with (``ServerConfig``).

``create_app`` builds one ``ServerState`` per application and keeps it as ``app.state.labvault``; the
endpoints reach it through their request (``labvault.server.deps.state_of``). The ``EventHub`` reads the
backend's change feed in one thread and fans each event out to every event-stream client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from labvault.blobs.abc import BlobStore
from labvault.domain import ChangeEvent
from labvault.errors import InvalidArgumentError, UnsupportedOperationError
from labvault.server.auth import AuthStore, FailureLimiter, VerifySlots
from labvault.store.abc import Backend
from labvault.store.eventlog import PolledFeed, batch_of

if TYPE_CHECKING:
    from labvault.store.feed import ChangeFeed

__all__ = ["EventHub", "ServerConfig", "ServerState", "Subscriber"]

log = logging.getLogger("labvault.server")


@dataclass
class ServerConfig:
    """Limits and intervals of one server."""

    #: Largest JSON / metric-batch request body (bytes); larger ones get 413.
    max_request_size: int = 64 * 1024 * 1024
    #: Largest single upload (POST /content, PUT of an artifact or raw blob); None for no limit.
    max_upload_size: int | None = None
    #: Largest chunk of a resumable upload.
    max_chunk_size: int = 256 * 1024 * 1024
    #: Seconds a client may stay silent in the middle of sending a request body (then 408).
    body_timeout: float = 60.0
    #: Seconds between keep-alive comments on the event stream.
    sse_ping: float = 15.0
    #: Seconds between group commits of the backend (``Backend.sync``).
    sync_interval: float = 1.0
    #: Events a slow event-stream client may fall behind by before the server drops it.
    sse_queue: int = 10_000
    #: Failed authentications one client address may have in a burst, then per second (then 429).
    auth_failure_burst: int = 10
    auth_failure_rate: float = 2.0
    #: argon2 token verifications at once per server process (each takes 64 MiB and runs 4 lanes in
    #: parallel, so one already keeps the cores busy), and the seconds a request waits for one (then 503).
    argon2_concurrency: int = 1
    argon2_wait: float = 2.0


# -- the event hub: one backend feed per process, fanned out to every event-stream client --------------------
class Subscriber:
    """One event-stream client: the queue its events wait in, and whether it fell too far behind.

    ``backlog`` holds the events a resuming client missed (replayed before the queue); ``feed`` is the
    client's own backend feed when it resumed from an event the hub no longer holds (stores with a log).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[ChangeEvent] = asyncio.Queue(size)
        self.overflowed = False
        self.backlog: list[ChangeEvent] = []
        self.feed: ChangeFeed | None = None

    def offer(self, event: ChangeEvent) -> None:  # runs on the subscriber's loop
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True


class EventHub:
    """Reads ``backend.watch()`` in one thread and hands each event to every subscribed stream.

    Every event gets an id for the stream's ``id:`` field: the store's own (its change log's place,
    which every server process and restart shares) or, for stores without a log, ``h<hub>.<n>`` of this
    hub. The hub keeps the last ``RING`` events, so a client that reconnects with ``Last-Event-ID`` is
    replayed what it missed from there; an older store id opens a feed of the store's log after it; an
    id of another hub on a store without a log cannot be resumed (the stream goes on from now).
    """

    RING = 10_000

    def __init__(self, backend: Backend, queue_size: int) -> None:
        self._backend = backend
        self._size = queue_size
        self._lock = threading.Lock()
        self._subs: set[Subscriber] = set()
        self._feed: ChangeFeed | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._ring: deque[ChangeEvent] = deque(maxlen=self.RING)
        self._hub = secrets.token_hex(4)
        self._seq = 0
        self._read_batch = 0  # the newest change-log batch the pump has handed out
        self._progress = threading.Condition(self._lock)

    def subscribe(self, loop: asyncio.AbstractEventLoop, last_id: str | None = None) -> Subscriber:
        """Register a stream; events written after this returns reach it (opens the feed first), and with
        ``last_id`` also those after that event which the hub or the store's log still holds."""
        with self._lock:
            if self._closed:
                raise UnsupportedOperationError("the server is shutting down")
            if self._feed is None:
                self._feed = self._backend.watch()
                if isinstance(self._feed, PolledFeed):
                    self._read_batch = self._feed.start - 1
                self._thread = threading.Thread(target=self._pump, args=(self._feed,),
                                                name="labvault-events", daemon=True)
                self._thread.start()
        if last_id is None:
            self._catch_up()
        with self._lock:
            sub = Subscriber(loop, self._size)
            held = [e.id for e in self._ring]
            if last_id is None or last_id in held or last_id.startswith("h"):
                if last_id in held:
                    sub.backlog = list(self._ring)[held.index(last_id) + 1:]
                self._subs.add(sub)
                return sub
        if not type(self._backend).event_log:
            raise InvalidArgumentError(f"event id {last_id[:64]!r} is not an event id of this server")
        sub.feed = self._backend.watch(after=last_id)  # a store id the ring no longer holds
        threading.Thread(target=self._pump_one, args=(sub,), name="labvault-events-resume",
                         daemon=True).start()
        return sub

    def _catch_up(self, timeout: float = 5.0) -> None:
        """Wait until the pump has handed out every change-log batch written before now, so that a
        stream opened "from now on" gets no older event (stores with a log; others return at once)."""
        head = self._backend.log_position()
        if not head:
            return
        with self._progress:
            self._progress.wait_for(lambda: self._read_batch >= head or self._closed, timeout)

    def unsubscribe(self, sub: Subscriber) -> None:
        """Stop handing events to ``sub`` (its stream ended)."""
        with self._lock:
            self._subs.discard(sub)
        if sub.feed is not None:
            sub.feed.close()

    def _pump(self, feed: ChangeFeed) -> None:
        while not self._closed:
            event = feed.get(timeout=0.5)
            if event is None:
                continue
            with self._lock:
                if event.id is None:
                    self._seq += 1
                    event = event.with_id(f"h{self._hub}.{self._seq}")
                self._ring.append(event)
                subs = list(self._subs)
                batch = batch_of(event.id)
                if batch is not None and batch > self._read_batch:
                    self._read_batch = batch
                    self._progress.notify_all()
            for sub in subs:
                with contextlib.suppress(RuntimeError):  # its loop has closed
                    sub.loop.call_soon_threadsafe(sub.offer, event)

    def _pump_one(self, sub: Subscriber) -> None:
        """Feed one resumed stream from its own backend feed until the stream ends."""
        feed = sub.feed
        assert feed is not None
        while not self._closed and not getattr(feed, "closed", False):
            event = feed.get(timeout=0.5)
            if event is not None:
                try:
                    sub.loop.call_soon_threadsafe(sub.offer, event)
                except RuntimeError:  # its loop has closed
                    return

    def close(self) -> None:
        """Close the backend feed; the pump thread ends and no stream may subscribe any more."""
        with self._lock:
            self._closed = True
            feed, self._feed = self._feed, None
        if feed is not None:
            feed.close()


# -- the state of one server process -------------------------------------------------------------------------
class ServerState:
    """What one server process holds: the backend, the auth store, the event hub, the group-commit thread."""

    def __init__(self, backend: Backend, auth: AuthStore | None, config: ServerConfig) -> None:
        self.backend = backend
        self.auth = auth
        self.config = config
        self.hub = EventHub(backend, config.sse_queue)
        self.failures = FailureLimiter(config.auth_failure_rate, config.auth_failure_burst)
        self.verify_slots = VerifySlots(config.argon2_concurrency, config.argon2_wait)
        self.started = time.time()
        self._stop = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name="labvault-sync", daemon=True)
        self._syncer.start()

    @property
    def blobs(self) -> BlobStore:
        """The backend's blob store (artifacts, content, uploads in flight, raw blobs)."""
        return self.backend.blobs

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.config.sync_interval):
            try:
                self.backend.sync()
            except Exception:
                log.exception("group commit (backend.sync) failed; retrying")

    def close(self) -> None:
        """Stop the event hub and the group commit, then close the backend."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.hub.close()
        try:
            self.backend.close()
        finally:
            if self.auth is not None:
                self.auth.close()

