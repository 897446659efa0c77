"""``HTTPBackend.watch()``: the server's event stream (``GET /events``, server-sent events) as a change feed,
read by a background thread with its own connection.

The server pings every ``SSEFeed.PING`` seconds, so a stream silent for much longer than that is a dead
connection. The feed then reconnects with ``Last-Event-ID`` (the id of the last event it got), and the
server replays what it missed as far as its event hub or the store's log holds it; when the server stays
unreachable for ``retries + 1`` attempts the feed ends (iteration stops instead of blocking forever).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import orjson

from labvault._retry import Backoff, Retry
from labvault.domain import ChangeEvent
from labvault.errors import BackendUnavailableError, LabvaultError
from labvault.store.feed import LocalChangeFeed
from labvault.wire.transport import APIClient

__all__ = ["SSEFeed"]


class SSEFeed(LocalChangeFeed):
    """``watch()`` over the server's ``/events`` stream, read by a background thread.

    The constructor returns once the server said the stream is ready (events written after that reach
    the feed), or raises the error the server answered with (``BackendUnavailableError`` when it did not
    answer in ``api.timeout`` seconds). ``on_close`` is called with the feed when it closes.
    """

    PING = 1.0
    #: Pauses between reconnection attempts after the stream broke.
    RECONNECT = Backoff(first=0.2, cap=2.0)

    def __init__(self, api: APIClient, on_close: Callable[[LocalChangeFeed], None] | None = None,
                 after: str | None = None) -> None:
        super().__init__(on_close=on_close)
        self._api = api
        #: The id of the last event received: a reconnection resumes after it (``Last-Event-ID``).
        self.last_id = after
        self.reconnects = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="labvault-sse", daemon=True)
        self._thread.start()
        if not self._ready.wait(api.timeout):
            self.close()
            raise BackendUnavailableError(f"{api.base_url} did not open its event stream in time")
        if self._error is not None:
            self.close()
            if isinstance(self._error, LabvaultError):
                raise self._error
            raise BackendUnavailableError(
                f"cannot open the event stream of {api.base_url}: {self._error}") from self._error

    def _run(self) -> None:
        """Read the stream; when it breaks after it was open, reconnect with ``Last-Event-ID`` (up to
        ``api.retries + 1`` failed attempts in a row), then end the feed so iteration stops."""
        retry: Retry | None = None
        try:
            while not self.closed:
                opened = self._stream_once()
                if self.closed or not self._ready.is_set() or self._error is not None:
                    return
                if opened:
                    retry = None
                retry = retry or Retry(tries=self._api.retries + 1, policy=self.RECONNECT)
                if not retry.wait():
                    return
                self.reconnects += 1
        finally:
            self._ready.set()
            if not self.closed:
                self.close()  # the stream ended for good: iteration stops instead of blocking forever

    def _stream_once(self) -> bool:
        """One connection: True when it was opened and delivered its ``ready`` (then broke or ended)."""
        api = self._api
        client = api.new_client(httpx.Timeout(api.timeout, connect=min(10.0, api.timeout),
                                              read=self.PING * 5 + 5))
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        got_ready = False
        try:
            with client.stream("GET", api.api_url + "/events", params={"ping": self.PING},
                               headers=headers) as resp:
                if resp.status_code != 200:
                    if not self._ready.is_set():
                        self._error = api.error(resp)
                    return False
                got_ready = self._read(resp)
        except Exception as exc:
            if not self._ready.is_set():
                self._error = exc
        finally:
            client.close()
        return got_ready

    def _read(self, resp: httpx.Response) -> bool:
        """Parse the stream's events (``ready``, ``change``, ``error``) until it ends or the feed closes;
        True once ``ready`` arrived."""
        kind, data, ident, ready = "", [], None, False
        for line in resp.iter_lines():
            if self.closed:
                return ready
            if line:
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    kind = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    ident = value or None
                continue
            if kind == "ready":
                ready = True
                self._ready.set()
            elif kind == "change" and data:
                event = ChangeEvent.from_json(orjson.loads("\n".join(data)))
                self.put(event.with_id(ident or event.id))
                self.last_id = ident or event.id or self.last_id
            elif kind == "error":
                return ready
            kind, data, ident = "", [], None
        return ready
