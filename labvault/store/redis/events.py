"""The Redis backend's change feed: events as JSON in one stream, read back by a thread per feed.

Every mutation's event is appended to the vault's ``events`` stream (by the write's own script, see
``labvault.store.redis.scripts``, or by ``XADD``), trimmed to about ``EVENTS_MAXLEN`` entries. A feed
from ``watch()`` is fed by a ``StreamPump``: a daemon thread doing blocking ``XREAD`` from the stream's
last id at the moment ``watch()`` was called, so every process sharing the vault sees every change.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
from redis import exceptions as rexc

from labvault._retry import Backoff, Retry
from labvault.blobs.redis_connection import RedisConnection
from labvault.domain import ChangeEvent
from labvault.errors import InvalidArgumentError
from labvault.store.feed import LocalChangeFeed

__all__ = ["StreamPump", "check_stream_id", "make_event", "payload", "same_event"]

_BLOCK_MS = 250  # how long a feed's XREAD blocks before checking whether the feed was closed
#: The pump's reconnect schedule: 0.1 s, doubling up to 1 s, without jitter (as it was before
#: ``labvault._retry``; the default is 0.05 s to 2 s with jitter). It retries until the feed is closed.
_RECONNECT = Backoff(first=0.1, cap=1.0, jitter=False)


def check_stream_id(value: str) -> bytes:
    """An event id of this feed (a stream entry id such as ``1733562000000-0``) as XREAD takes it."""
    ms, dash, seq = value.partition("-")
    if not (dash and ms.isdigit() and seq.isdigit() and ms.isascii() and seq.isascii() and len(value) <= 41):
        raise InvalidArgumentError(f"event id {value[:80]!r} is not an id of this Redis store's event "
                                   "stream (it looks like '1733562000000-0')")
    return value.encode()


def make_event(kind: str, experiment_id: str | None, run_id: str | None, **data: Any) -> ChangeEvent:
    """A change event (``data`` as keywords)."""
    return ChangeEvent(kind, experiment_id, run_id, data)


def payload(event: ChangeEvent) -> bytes:
    """An event as the JSON bytes stored in the stream's field ``e``."""
    return orjson.dumps(event.to_json(), default=str)


def same_event(a: ChangeEvent, b: ChangeEvent) -> bool:
    """Whether two events say the same (their times aside)."""
    return (a.kind, a.experiment_id, a.run_id, a.data) == (b.kind, b.experiment_id, b.run_id, b.data)


class StreamPump:
    """A daemon thread feeding one ``LocalChangeFeed`` from the events stream with blocking XREAD."""

    def __init__(self, conn: RedisConnection, stream: str, last_id: bytes, feed: LocalChangeFeed,
                 stopping: threading.Event) -> None:
        self._conn = conn
        self._stream = stream
        self._last = last_id
        self._feed = feed
        self._stopping = stopping
        self.thread = threading.Thread(target=self._run, name="labvault-redis-feed", daemon=True)

    def _run(self) -> None:
        retry: Retry | None = None  # the failures in a row (none since the last read that worked)
        while not self._feed.closed and not self._stopping.is_set():
            try:
                client = self._conn.client()
                reply = client.xread({self._stream: self._last}, count=500, block=_BLOCK_MS)
                retry = None
            except rexc.RedisError:
                retry = retry or Retry(policy=_RECONNECT)
                retry.wait()  # no budget: always True
                continue
            except Exception:  # never let the feed thread die with a traceback on shutdown
                return
            self._deliver(reply)

    def _deliver(self, reply: Any) -> None:
        """Put the events of an XREAD reply into the feed (entries that are no event are skipped)."""
        streams = reply.items() if isinstance(reply, dict) else (reply or ())
        for _stream, entries in streams:
            for entry_id, fields in entries:
                self._last = entry_id
                data = fields.get(b"e")
                if data is None:
                    continue
                try:
                    event = ChangeEvent.from_json(orjson.loads(data))
                except (ValueError, KeyError, TypeError):
                    continue
                ident = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                self._feed.put(event.with_id(ident))
