"""``HTTPBackend.watch()``: the server's event stream (``GET /events``, server-sent events) as a change feed,
read by a background thread with its own connection.

The server pings every ``SSEFeed.PING`` seconds, so a stream silent for much longer than that is a dead
connection (the read times out and the feed ends: iteration stops instead of blocking forever).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import orjson

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

    def __init__(self, api: APIClient, on_close: Callable[[LocalChangeFeed], None] | None = None) -> None:
        super().__init__(on_close=on_close)
        self._api = api
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
        api = self._api
        client = api.new_client(httpx.Timeout(api.timeout, connect=min(10.0, api.timeout),
                                              read=self.PING * 5 + 5))
        try:
            with client.stream("GET", api.api_url + "/events", params={"ping": self.PING}) as resp:
                if resp.status_code != 200:
                    self._error = api.error(resp)
                    return
                self._read(resp)
        except Exception as exc:
            if not self._ready.is_set():
                self._error = exc
        finally:
            client.close()
            self._ready.set()
            if not self.closed:
                self.close()  # the stream ended: iteration stops instead of blocking forever

    def _read(self, resp: httpx.Response) -> None:
        """Parse the stream's events (``ready``, ``change``, ``error``) until it ends or the feed closes."""
        kind, data = "", []
        for line in resp.iter_lines():
            if self.closed:
                return
            if line:
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    kind = value
                elif name == "data":
                    data.append(value)
                continue
            if kind == "ready":
                self._ready.set()
            elif kind == "change" and data:
                self.put(ChangeEvent.from_json(orjson.loads("\n".join(data))))
            elif kind == "error":
                return
            kind, data = "", []
