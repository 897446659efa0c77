"""Change feeds: a live stream of ``ChangeEvent``s from one store (``Backend.watch()``).
"""

from __future__ import annotations

import queue
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from labvault.domain import ChangeEvent

if TYPE_CHECKING:
    pass


class ChangeFeed(ABC):
    """A live stream of ``ChangeEvent``s from one store, oldest first, from the moment it was opened.

    Obtained with ``Backend.watch()``; iterate it (blocks), or poll with ``get(timeout)``. Close it (or
    use it as a context manager) to release its connection. Backends with ``supports_events`` deliver
    changes made by every process sharing the store; the others deliver the changes made through the
    same backend object only.
    """

    @abstractmethod
    def get(self, timeout: float | None = None) -> ChangeEvent | None:
        """The next event, waiting up to ``timeout`` seconds (forever when None); None on timeout."""

    @abstractmethod
    def close(self) -> None:
        """Stop receiving events. Safe to call twice."""

    def __enter__(self) -> ChangeFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[ChangeEvent]:
        while True:
            event = self.get(timeout=None)
            if event is None:
                return
            yield event


class LocalChangeFeed(ChangeFeed):
    """A feed fed in-process: by the backend object that opened it, or by a listener thread."""

    _CLOSED = object()

    def __init__(self, on_close: Any = None) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._on_close = on_close
        self.closed = False

    def put(self, event: ChangeEvent) -> None:
        """Deliver an event to this feed (called by the producer)."""
        if not self.closed:
            self._queue.put(event)

    def get(self, timeout: float | None = None) -> ChangeEvent | None:
        if self.closed and self._queue.empty():
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is self._CLOSED:
            self._queue.put(item)  # keep waking later getters
            return None
        assert isinstance(item, ChangeEvent)
        return item

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put(self._CLOSED)
            if self._on_close is not None:
                self._on_close(self)
