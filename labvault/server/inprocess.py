"""A labvault server inside the current process, for tests and notebooks: no socket, real streaming.

``ASGIBridge`` is a synchronous ``httpx`` transport that runs an ASGI app on an event loop in a
background thread and streams request and response bodies both ways (with back-pressure), so
``HTTPBackend`` talks to the app exactly as it talks to a server over a socket, event stream included::

    from labvault.server import create_app
    from labvault.server.inprocess import serve_in_process

    with serve_in_process(create_app("memory://", insecure=True)) as uri:   # "asgi://<name>"
        with labvault.open(uri) as vault:
            ...

The store of an in-process server lives only as long as the process, so ``InProcessHTTPBackend``
declares itself neither persistent nor shared between processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import unquote

import httpx

from labvault._uri import check_options
from labvault.blobs.abc import BlobStore
from labvault.errors import InvalidArgumentError
from labvault.store.http.backend import _OPTIONS, HTTPBackend

_CREDITS = 16  # response body messages in flight before the app waits for the reader
_END = object()
_DISCONNECT = object()


class _Exchange:
    """One request/response between the calling thread and the app on the loop thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.out: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.body: asyncio.Queue[Any] = asyncio.Queue(4)
        self.credits = asyncio.Semaphore(_CREDITS)
        self.disconnected = asyncio.Event()
        self.finished = asyncio.Event()
        self.body_done = False

    # -- loop side ---------------------------------------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        if not self.body_done:
            item = await self.body.get()
            if item is _DISCONNECT:
                self.body_done = True
                return {"type": "http.disconnect"}
            if item is _END:
                self.body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.request", "body": item, "more_body": True}
        await self.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.disconnected.is_set():
            raise OSError("the client disconnected")
        if message["type"] == "http.response.start":
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            self.out.put(("start", int(message["status"]), headers))
        elif message["type"] == "http.response.body":
            await self.credits.acquire()
            self.out.put(("body", bytes(message.get("body", b"")), bool(message.get("more_body", False))))

    async def offer(self, item: Any) -> bool:
        """Hand one body chunk to the app; False once the app no longer reads (it has answered)."""
        put = asyncio.ensure_future(self.body.put(item))
        stop = asyncio.ensure_future(self.finished.wait())
        done, _ = await asyncio.wait({put, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if put not in done:
            put.cancel()
            return False
        return True

    def disconnect(self) -> None:
        def mark() -> None:
            self.disconnected.set()
            with contextlib.suppress(asyncio.QueueFull):
                if not self.body_done:
                    self.body.put_nowait(_DISCONNECT)

        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(mark)


class _BridgeStream(httpx.SyncByteStream):
    def __init__(self, exchange: _Exchange) -> None:
        self._ex = exchange
        self._complete = False

    def __iter__(self) -> Iterator[bytes]:
        ex = self._ex
        while not self._complete:
            item = ex.out.get()
            if item[0] == "body":
                ex.loop.call_soon_threadsafe(ex.credits.release)
                if not item[2]:
                    self._complete = True
                if item[1]:
                    yield item[1]
            elif item[0] == "done":
                raise httpx.ReadError("the application ended without completing its response")

    def close(self) -> None:
        if not self._complete:
            self._complete = True
            self._ex.disconnect()


class ASGIBridge(httpx.BaseTransport):
    """A synchronous httpx transport over an ASGI app running on its own event-loop thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="labvault-asgi-bridge", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def close(self) -> None:
        """Nothing: every client on this bridge closes it, and the bridge outlives them (``shutdown``)."""

    def shutdown(self) -> None:
        """Stop the loop thread (the app's own resources are the caller's to close)."""
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)

    async def _call(self, scope: dict[str, Any], ex: _Exchange) -> None:
        try:
            await self.app(scope, ex.receive, ex.send)
        finally:
            ex.finished.set()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        raw_path = url.raw_path.split(b"?", 1)[0]
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": request.method, "scheme": url.scheme, "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path, "query_string": url.query, "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": ("127.0.0.1", 50000), "server": (url.host, url.port or 80), "state": {},
        }
        ex: _Exchange = asyncio.run_coroutine_threadsafe(self._make_exchange(), self.loop).result()
        future = asyncio.run_coroutine_threadsafe(self._call(scope, ex), self.loop)
        future.add_done_callback(lambda f: ex.out.put(("done", f)))
        try:
            stream: Any = request.stream
            for chunk in stream:
                if chunk and not asyncio.run_coroutine_threadsafe(ex.offer(bytes(chunk)), self.loop).result():
                    break
            else:
                asyncio.run_coroutine_threadsafe(ex.offer(_END), self.loop).result()
        except BaseException:
            ex.disconnect()
            raise
        while True:
            item = ex.out.get()
            if item[0] == "start":
                return httpx.Response(item[1], headers=item[2], stream=_BridgeStream(ex), request=request)
            if item[0] == "done":
                exc = item[1].exception()
                raise httpx.RemoteProtocolError(f"the application sent no response: {exc!r}")

    async def _make_exchange(self) -> _Exchange:
        return _Exchange(asyncio.get_running_loop())


# -- in-process servers addressed as asgi://name -----------------------------------------------------------
_MOUNTS: dict[str, ASGIBridge] = {}
_MOUNTS_LOCK = threading.Lock()


class InProcessHTTPBackend(HTTPBackend, scheme="asgi"):
    """``HTTPBackend`` over an app served in this process (``asgi://<name>``, see ``serve_in_process``)."""

    persistent: ClassVar[bool] = False
    multiprocess: ClassVar[bool] = False
    supports_events: ClassVar[bool] = False

    @classmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> HTTPBackend:
        check_options("asgi", options, [o for o in _OPTIONS if o != "transport"])
        name = uri.split("://", 1)[1].strip("/") if "://" in uri else ""
        with _MOUNTS_LOCK:
            bridge = _MOUNTS.get(name)
        if bridge is None:
            raise InvalidArgumentError(f"no in-process server is mounted as {uri!r}")
        backend = cls(f"http://{name}", blobs=artifacts, transport=bridge, **options)
        backend.uri = uri
        return backend


@contextlib.contextmanager
def serve_in_process(app: Any, name: str | None = None) -> Iterator[str]:
    """Serve ``app`` in this process under ``asgi://<name>`` for as long as the block runs.

    On exit the bridge stops and, for a labvault app, its backend is closed.
    """
    name = name or f"lv{uuid.uuid4().hex[:12]}"
    bridge = ASGIBridge(app)
    with _MOUNTS_LOCK:
        if name in _MOUNTS:
            raise InvalidArgumentError(f"an in-process server is mounted as {name!r} already")
        _MOUNTS[name] = bridge
    try:
        yield f"asgi://{name}"
    finally:
        with _MOUNTS_LOCK:
            _MOUNTS.pop(name, None)
        state = getattr(getattr(app, "state", None), "labvault", None)
        if state is not None:
            state.close()
        bridge.shutdown()
