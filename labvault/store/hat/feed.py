"""The Hat backend's change feed: notices on a Hat subscription, with ids that let a feed resume.

Every write's ``ChangeEvent`` is registered as a notice event of type ``('labvault-feed', namespace)``.
Its feed id is the notice's place in the server's order, ``"<s>.<us>.<server>.<session>.<instance>"``
(the server's timestamp and event id). ``watch(after=id)`` replays the notices after it with timeseries
queries (when the server keeps notices: a timeseries partition for ``[labvault-feed, '*']``, see
docs/backends.md) and then goes on live; live notices that arrive during the replay wait and are
delivered after it, without duplicates.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from hat.event import common

from labvault.domain import ChangeEvent
from labvault.errors import InvalidArgumentError
from labvault.store.feed import LocalChangeFeed

__all__ = ["ResumingFeed", "notice_event", "parse_notice_id"]

Position = tuple[int, int, int, int, int]


def _key(event: Any) -> Position:
    ts, eid = event.timestamp, event.id
    return (ts.s, ts.us, eid.server, eid.session, eid.instance)


def notice_event(event: Any) -> ChangeEvent | None:
    """The ``ChangeEvent`` a notice carries, with its feed id (None for a notice that is not one)."""
    doc = getattr(event.payload, "data", None)
    if not isinstance(doc, dict):
        return None
    try:
        change = ChangeEvent.from_json(doc)
    except (KeyError, TypeError, ValueError):
        return None
    return change.with_id(".".join(map(str, _key(event))))


def parse_notice_id(value: str) -> tuple[Any, Any]:
    """A feed id as the (``Timestamp``, ``EventId``) a timeseries query resumes after."""
    parts = value.split(".")
    if len(parts) != 5 or not all(p.isascii() and p.isdigit() for p in parts):
        raise InvalidArgumentError(f"event id {value[:80]!r} is not an id of this Hat store's change feed "
                                   "(it looks like '1733562000.123456.1.2.3')")
    s, us, server, session, instance = map(int, parts)
    return common.Timestamp(s, us), common.EventId(server, session, instance)


class ResumingFeed(LocalChangeFeed):
    """A feed that holds live events back while the events it missed are replayed (``finish``)."""

    def __init__(self, on_close: Callable[[Any], None] | None = None) -> None:
        super().__init__(on_close=on_close)
        self._gate = threading.Lock()
        self._held: list[ChangeEvent] | None = []  # None once the replay is done

    def put(self, event: ChangeEvent) -> None:
        """Deliver an event; while the replay runs, keep it for after."""
        with self._gate:
            if self._held is not None:
                self._held.append(event)
                return
        super().put(event)

    def finish(self, replayed: list[ChangeEvent]) -> None:
        """Deliver the replayed events, then the live ones that came meanwhile and are newer."""
        with self._gate:
            held, self._held = self._held or [], None
            seen = {e.id for e in replayed}
            for event in replayed:
                super().put(event)
            for event in held:
                if event.id not in seen:
                    super().put(event)
