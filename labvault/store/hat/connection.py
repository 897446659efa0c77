"""The Hat backend's connection: one asyncio event loop in a daemon thread, bridged to synchronous calls.

The eventer client (``hat.event.eventer``) is asyncio-only. A ``HatConnection`` owns one event loop
running in a daemon thread and one eventer client on it, connected on first use (construction does no
I/O); every synchronous call hands a coroutine to the loop with ``asyncio.run_coroutine_threadsafe``
and waits for it with the connection's timeout. Connection errors are translated to
``BackendUnavailableError`` naming ``host:port`` in exactly one place, ``HatConnection.call``.

Queries are idempotent and are retried once on a fresh connection; a registration that was sent is
never re-sent (the server may have stored it), so a lost connection there raises at once.

A feed subscriber is a second eventer client on the same loop, subscribed to the namespace's feed event
type, whose notifications go to a callback (``subscribe``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Collection, Coroutine
from typing import Any, TypeVar

from hat.drivers import net
from hat.event import eventer

from labvault.errors import BackendUnavailableError, InvalidArgumentError

__all__ = ["HatConnection"]

_T = TypeVar("_T")


class HatConnection:
    """An eventer client on a private event loop thread; ``call`` runs one request synchronously."""

    def __init__(self, host: str, port: int, client_name: str, timeout: float) -> None:
        self.host, self.port = host, port
        self.client_name = client_name
        self.timeout = timeout
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._subscribers: list[Any] = []

    @property
    def where(self) -> str:
        """``host:port`` of the server, for messages."""
        return f"{self.host}:{self.port}"

    # -- the loop thread ------------------------------------------------------------------------------------
    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="labvault-hat", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _submit(self, coro: Coroutine[Any, Any, _T], what: str) -> _T:
        """Run ``coro`` on the loop and wait for it; connection failures become BackendUnavailableError."""
        future = asyncio.run_coroutine_threadsafe(coro, self._running_loop())
        try:
            return future.result(self.timeout)
        except (concurrent.futures.TimeoutError, TimeoutError) as exc:
            future.cancel()
            raise BackendUnavailableError(
                f"Hat event server {self.where}: {what} got no answer in {self.timeout:g} s") from exc
        except (ConnectionError, OSError, EOFError) as exc:
            raise BackendUnavailableError(f"Hat event server {self.where} is unreachable ({what}): "
                                          f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            if type(exc).__name__ == "EventerInitError":
                raise BackendUnavailableError(
                    f"Hat event server {self.where} refused the connection ({what}): {exc}") from exc
            if isinstance(exc, BackendUnavailableError | InvalidArgumentError):
                raise
            raise BackendUnavailableError(
                f"Hat event server {self.where}: {what} failed: {type(exc).__name__}: {exc}") from exc

    # -- the client -----------------------------------------------------------------------------------------
    async def _connect(self, **kwargs: Any) -> Any:
        return await eventer.connect(net.TcpAddress(self.host, self.port), self.client_name, **kwargs)

    async def _ready_client(self) -> Any:
        if self._client is None or not self._client.is_open:
            self._client = await self._connect()
        return self._client

    def call(self, request: Callable[[Any], Coroutine[Any, Any, _T]], what: str, *,
             idempotent: bool = True) -> _T:
        """``request(client)`` on the connected client (connecting first when needed); an idempotent
        request is retried once on a fresh connection when the old one turned out to be closed."""

        async def run() -> _T:
            client = await self._ready_client()
            try:
                return await request(client)
            except ConnectionError:
                if not idempotent:
                    raise
                self._client = None
                return await request(await self._ready_client())

        return self._submit(run(), what)

    def register(self, events: Collection[Any], what: str) -> list[Any]:
        """Register events and return them as the server stored them (with ids and timestamps)."""

        async def send(client: Any) -> list[Any]:
            result = await client.register(events, with_response=True)
            if result is None:
                raise BackendUnavailableError(f"Hat event server {self.where} refused to register {what}")
            return list(result)

        return self.call(send, what, idempotent=False)

    def send(self, events: Collection[Any], what: str) -> None:
        """Register events without waiting for the server's answer (change-feed notices)."""

        async def fire(client: Any) -> None:
            await client.register(events, with_response=False)

        self.call(fire, what, idempotent=False)

    def query(self, params: Any, what: str) -> Any:
        """One query (``QueryTimeseriesParams``, ``QueryLatestParams``); its ``QueryResult``."""
        return self.call(lambda client: client.query(params), what)

    # -- subscriptions --------------------------------------------------------------------------------------
    def subscribe(self, event_types: list[tuple[str, ...]], callback: Callable[[list[Any]], None]) -> Any:
        """A second client subscribed to ``event_types``; ``callback(events)`` runs on the loop thread.
        Returns a handle for ``unsubscribe``."""

        async def on_events(_client: Any, events: Collection[Any]) -> None:
            callback(list(events))

        async def open_subscriber() -> Any:
            return await self._connect(subscriptions=event_types, events_cb=on_events)

        subscriber = self._submit(open_subscriber(), "subscription")
        with self._lock:
            self._subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Any) -> None:
        """Close a subscriber from ``subscribe`` (quietly: the server may be gone)."""
        with self._lock:
            if subscriber not in self._subscribers:
                return
            self._subscribers.remove(subscriber)
        loop = self._loop
        if loop is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(subscriber.async_close(), loop)
            try:
                future.result(self.timeout)
            except Exception:  # closing a dead connection: nothing left to release
                future.cancel()

    def close(self) -> None:
        """Close the clients and stop the loop thread. Safe to call twice."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
            clients = [c for c in (self._client, *self._subscribers) if c is not None]
            self._client, self._subscribers = None, []
        if loop is None:
            return

        async def shut() -> None:
            for client in clients:
                try:
                    await asyncio.wait_for(client.async_close(), self.timeout)
                except Exception:  # closing a dead connection: nothing left to release
                    continue

        if loop.is_running():
            with contextlib.suppress(Exception):  # the loop is going away either way
                asyncio.run_coroutine_threadsafe(shut(), loop).result(self.timeout + 1)
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.timeout)
        if not loop.is_running():
            loop.close()
