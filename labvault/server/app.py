"""The labvault server: a versioned JSON REST API (``/api/v1``) over any labvault ``Backend``.

The server is stateless: every request goes to the backend (and its blob store), so several workers or
server processes over one store answer alike. Resumable uploads keep their parts in the blob store
under ``uploads/<id>/``, so a client may resume through any worker. Blocking backend calls run in the
thread pool; artifact bodies are streamed both ways, never held whole in memory.

Start one with ``labvault server --backend URI`` or build the ASGI app with ``create_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import orjson
from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labvault import wire
from labvault._version import version
from labvault.blobs.abc import CHUNK_SIZE, BlobStore
from labvault.domain import ArtifactInfo, ChangeEvent, MetricSeries, now
from labvault.domain import validation as v
from labvault.errors import (
    AuthenticationError,
    BackendUnavailableError,
    ConflictError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
    UnsupportedOperationError,
)
from labvault.server.auth import (
    ANONYMOUS_ADMIN,
    AuthStore,
    FailureLimiter,
    Principal,
    VerifySlots,
    check_role,
    default_auth_db,
)
from labvault.server.protocol import ConnectionMiddleware, JSONRoute, describe_error, parse_range
from labvault.store.abc import Backend, check_batch_id, check_metric_batch, check_run_id
from labvault.store.registry import open_backend

if TYPE_CHECKING:
    from labvault.store.feed import ChangeFeed

log = logging.getLogger("labvault.server")
T = TypeVar("T")

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_UPLOAD_RE = re.compile(r"[0-9a-f]{32}")
_MARKER_RE = re.compile(r"m(\d{16})-(\d{16})")
_UPLOADS = "uploads/"  # where resumable uploads keep their parts in the blob store
_MAX_INT64 = 2**63 - 1


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


class _JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:  # ints beyond 64 bits and the like: say so, for clients that parse with orjson
            self.media_type = wire.BIGINT_JSON_MEDIA_TYPE
            return json.dumps(content, separators=(",", ":"), allow_nan=False).encode()


def _error_response(status: int, name: str, message: str, headers: Mapping[str, str] | None = None) -> _JSON:
    return _JSON({"error": name, "message": message}, status_code=status, headers=dict(headers or {}))


# -- request models (the OpenAPI schema is generated from these) ---------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class ExperimentIn(_Model):
    name: str = Field(description="experiment name (unique within its project)")
    project: str = Field("default", description="project name")


class RunIn(_Model):
    id: str | None = Field(None, description="the run's id (kept across stores); generated if omitted")
    name: str | None = None
    parent_id: str | None = None
    start_time: FiniteFloat | None = Field(None, description="epoch seconds; the server's clock when omitted")
    params: dict[str, Any] = Field(default_factory=dict)
    tags: dict[str, Any] = Field(default_factory=dict)


class RunPatch(_Model):
    status: str | None = None
    end_time: FiniteFloat | None = None
    error: str | None = None
    heartbeat: FiniteFloat | None = None


class SearchIn(_Model):
    experiment_ids: list[str] = Field(default_factory=list, description="empty: every experiment")
    filter: str | None = Field(None, description="e.g. params.lr > 0.01 and metrics.acc >= 0.9")
    order_by: list[str] = Field(default_factory=list, description='e.g. ["metrics.acc desc", "params.lr"]')
    limit: int | None = Field(None, ge=0, le=_MAX_INT64)
    offset: int = Field(0, ge=0, le=_MAX_INT64)


class ArtifactIn(_Model):
    key: str
    size: int = Field(ge=0, le=_MAX_INT64)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: FiniteFloat | None = None


class SeriesIn(_Model):
    key: str
    steps: list[StrictInt]
    values: list[float | str]
    timestamps: list[float | str]


_BATCH_ID_DOC = ("the batch's id (1-32 letters, digits, _ or -): an append whose id the run holds already "
                 "is a no-op, so a batch re-sent after a timeout is stored once")


class MetricsIn(_Model):
    metrics: list[SeriesIn]
    batch_id: str | None = Field(None, description=_BATCH_ID_DOC)


class BatchItem(_Model):
    run_id: str
    params: dict[str, Any] | None = None
    tags: dict[str, Any] | None = None
    results: dict[str, Any] | None = None
    metrics: list[SeriesIn] | None = None
    batch_id: str | None = Field(None, description=_BATCH_ID_DOC + " (for this item's metrics)")


class BatchIn(_Model):
    items: list[BatchItem]


class UploadIn(_Model):
    size: int | None = Field(None, ge=0, le=_MAX_INT64,
                             description="total size, checked when the upload completes")


class CompleteIn(_Model):
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="expected digest")


class UserIn(_Model):
    name: str
    role: str


class RoleIn(_Model):
    role: str


class TokenIn(_Model):
    user: str
    description: str | None = None
    expires_in: FiniteFloat | None = Field(None, gt=0, description="seconds until the token expires")


# -- the event hub: one backend feed per process, fanned out to every event-stream client --------------------
class _Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[ChangeEvent] = asyncio.Queue(size)
        self.overflowed = False

    def offer(self, event: ChangeEvent) -> None:  # runs on the subscriber's loop
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True


class EventHub:
    """Reads ``backend.watch()`` in one thread and hands each event to every subscribed stream."""

    def __init__(self, backend: Backend, queue_size: int) -> None:
        self._backend = backend
        self._size = queue_size
        self._lock = threading.Lock()
        self._subs: set[_Subscriber] = set()
        self._feed: ChangeFeed | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> _Subscriber:
        """Register a stream; events written after this returns reach it (opens the feed first)."""
        with self._lock:
            if self._closed:
                raise UnsupportedOperationError("the server is shutting down")
            if self._feed is None:
                self._feed = self._backend.watch()
                self._thread = threading.Thread(target=self._pump, args=(self._feed,),
                                                name="labvault-events", daemon=True)
                self._thread.start()
            sub = _Subscriber(loop, self._size)
            self._subs.add(sub)
            return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)

    def _pump(self, feed: ChangeFeed) -> None:
        while not self._closed:
            event = feed.get(timeout=0.5)
            if event is None:
                continue
            with self._lock:
                subs = list(self._subs)
            for sub in subs:
                with contextlib.suppress(RuntimeError):  # its loop has closed
                    sub.loop.call_soon_threadsafe(sub.offer, event)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            feed, self._feed = self._feed, None
        if feed is not None:
            feed.close()


# -- streaming request bodies into blocking blob stores ------------------------------------------------------
class _BodyReader(io.RawIOBase):
    """A request body as a blocking binary file, read from a worker thread (``anyio.to_thread``)."""

    def __init__(self, request: Request, limit: int | None, what: str) -> None:
        self._stream = request.stream().__aiter__()
        self._chunk = b""
        self._pos = 0
        self._done = False
        self._limit = limit
        self._what = what
        self.total = 0

    def readable(self) -> bool:
        return True

    async def _next(self) -> bytes:
        return await self._stream.__anext__()

    def readinto(self, buffer: Any) -> int:
        while self._pos >= len(self._chunk):
            if self._done:
                return 0
            try:
                chunk: bytes = anyio.from_thread.run(self._next)
            except StopAsyncIteration:
                self._done = True
                return 0
            self.total += len(chunk)
            if self._limit is not None and self.total > self._limit:
                raise HTTPException(413, f"{self._what} is larger than {self._limit} bytes")
            self._chunk, self._pos = chunk, 0
        n = min(len(buffer), len(self._chunk) - self._pos)
        buffer[:n] = self._chunk[self._pos : self._pos + n]
        self._pos += n
        return n


async def _with_body(request: Request, limit: int | None, what: str, func: Callable[[BinaryIO], T]) -> T:
    reader = io.BufferedReader(_BodyReader(request, limit, what), CHUNK_SIZE)
    return await anyio.to_thread.run_sync(func, reader)


class _DigestCheckingReader(io.RawIOBase):
    """A body whose sha256 must be ``expected``: the read that reaches its end raises
    ``InvalidArgumentError`` instead of returning EOF when it is not, so the blob store abandons the
    write (nothing is stored under any digest) rather than committing content the client did not mean."""

    def __init__(self, raw: BinaryIO, expected: str) -> None:
        self._raw = raw
        self._expected = expected
        self._hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        if data:
            self._hash.update(data)
            buffer[: len(data)] = data
            return len(data)
        digest = self._hash.hexdigest()
        if digest != self._expected:
            raise InvalidArgumentError(f"uploaded content has sha256 {digest}, not {self._expected!r}")
        return 0


class _ConcatReader(io.RawIOBase):
    """Several blobs read one after the other as one file (the parts of a resumable upload)."""

    def __init__(self, blobs: BlobStore, keys: list[str]) -> None:
        self._blobs = blobs
        self._keys = list(keys)
        self._current: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._current is None:
                if not self._keys:
                    return 0
                self._current = self._blobs.open(self._keys.pop(0))
            data = self._current.read(len(buffer))
            if data:
                buffer[: len(data)] = data
                return len(data)
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
        super().close()


# -- blob sizes and ranges -----------------------------------------------------------------------------------
def _blob_size(blobs: BlobStore, key: str, fh: BinaryIO) -> int | None:
    """The size of an open blob without reading it: by seeking, else from the store's own ``info`` (the
    default ``BlobStore.info`` reads the whole blob to hash it, so it is not asked); None when unknown."""
    with contextlib.suppress(Exception):
        if fh.seekable():
            pos = fh.tell()
            size = fh.seek(0, io.SEEK_END)
            fh.seek(pos)
            return int(size)
    if type(blobs)._info is not BlobStore._info:
        with contextlib.suppress(Exception):
            return int(blobs.info(key).size)
    return None


def _stored_size(blobs: BlobStore, key: str) -> int:
    """The size of a stored blob (``NotFoundError`` when absent), read through only when nothing cheaper
    tells it."""
    fh = _open_blob(blobs, key)
    try:
        size = _blob_size(blobs, key, fh)
        if size is None:
            size = 0
            while chunk := fh.read(CHUNK_SIZE):
                size += len(chunk)
        return size
    finally:
        fh.close()


def _iter_range(fh: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """Yield bytes [start, end) of fh (end -1: to the end), closing it at the end."""
    try:
        if start:
            if fh.seekable():
                fh.seek(start)
            else:
                skip = start
                while skip > 0:
                    got = fh.read(min(CHUNK_SIZE, skip))
                    if not got:
                        break
                    skip -= len(got)
        left = None if end < 0 else end - start
        while left is None or left > 0:
            chunk = fh.read(CHUNK_SIZE if left is None else min(CHUNK_SIZE, left))
            if not chunk:
                break
            if left is not None:
                left -= len(chunk)
            yield chunk
    finally:
        fh.close()


def _open_blob(blobs: BlobStore, key: str) -> BinaryIO:
    try:
        return blobs.open(key)
    except FileNotFoundError as exc:
        raise NotFoundError(f"no blob {key!r}") from exc


async def _send_blob(request: Request, blobs: BlobStore, key: str, *, size: int | None = None,
                     digest: str | None = None) -> Response:
    """Stream a blob, honouring a single ``Range``; digest and ETag headers when the digest is known."""
    fh = await run_in_threadpool(_open_blob, blobs, key)
    try:
        if size is None:
            size = await run_in_threadpool(_blob_size, blobs, key, fh)
        span = parse_range(request.headers.get("range"), size)
    except BaseException:
        fh.close()
        raise
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store"}
    if digest is not None:
        headers[wire.SHA256_HEADER] = digest
        headers["ETag"] = f'"{digest}"'
    if span is None:
        if size is not None:
            headers["Content-Length"] = str(size)
        return StreamingResponse(_iter_range(fh, 0, -1), headers=headers,
                                 media_type="application/octet-stream")
    start, end = span
    total = "*" if size is None else str(size)
    if end >= 0:
        headers["Content-Length"] = str(end - start)
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
    else:
        headers["Content-Range"] = f"bytes {start}-*/{total}"
    return StreamingResponse(_iter_range(fh, start, end), status_code=206, headers=headers,
                             media_type="application/octet-stream")


# -- limits middleware ---------------------------------------------------------------------------------------
_UPLOAD_ROUTES = (
    ("POST", re.compile(r"/api/v1/content/?")),
    ("PUT", re.compile(r"/api/v1/blobs/.+")),
    ("PUT", re.compile(r"/api/v1/runs/[^/]+/artifacts/.+")),
)
_CHUNK_ROUTE = ("PUT", re.compile(r"/api/v1/uploads/[^/]+/?"))


class _LimitsMiddleware:
    """413 for bodies over the route's limit (before reading when Content-Length says so), 408 for a client
    that stops sending in the middle of a body."""

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.config = config

    def _limit(self, method: str, path: str) -> tuple[int | None, str]:
        if method == _CHUNK_ROUTE[0] and _CHUNK_ROUTE[1].fullmatch(path):
            return self.config.max_chunk_size, "upload chunk"
        for m, pattern in _UPLOAD_ROUTES:
            if method == m and pattern.fullmatch(path):
                return self.config.max_upload_size, "upload"
        return self.config.max_request_size, "request body"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, what = self._limit(scope["method"], scope["path"])
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if not value.isdigit():
                    await _error_response(400, "InvalidArgumentError", "malformed Content-Length header")(
                        scope, receive, send)
                    return
                if limit is not None and int(value) > limit:
                    response = _error_response(413, "InvalidArgumentError",
                                               f"{what} of {int(value)} bytes is larger than {limit} bytes")
                    await response(scope, receive, send)
                    return
        total = 0
        done = False
        timeout = self.config.body_timeout

        async def limited_receive() -> Message:
            nonlocal total, done
            if done:
                return await receive()
            try:
                with anyio.fail_after(timeout):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, f"no request body data for {timeout:g} seconds") from None
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if limit is not None and total > limit:
                    raise HTTPException(413, f"{what} is larger than {limit} bytes")
                if not message.get("more_body", False):
                    done = True
            else:
                done = True
            return message

        await self.app(scope, limited_receive, send)


_PRINCIPAL = "labvault_principal"
_PUBLIC_PATHS = frozenset(f"{wire.API_PREFIX}{p}" for p in ("/health", "/openapi.json", "/docs",
                                                             "/docs/oauth2-redirect"))


class _AuthMiddleware:
    """Authenticates every request before routing (so an anonymous caller learns nothing, not even which
    paths exist or how large a body may be); the role each endpoint needs is checked by its dependency.

    Failing is cheap: an address past its budget of failed authentications gets 429 before any lookup,
    an unknown token id costs one primary-key lookup, and argon2 runs (in the thread pool, never on the
    event loop) only for live ids, ``argon2_concurrency`` at a time and once per distinct token.
    """

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        auth = self.state.auth
        if auth is None:
            principal = ANONYMOUS_ADMIN
        else:
            outcome = await self._authenticate(auth, scope)
            if isinstance(outcome, Response):
                await outcome(scope, receive, send)
                return
            principal = outcome
        scope.setdefault("state", {})[_PRINCIPAL] = principal
        await self.app(scope, receive, send)

    async def _authenticate(self, auth: AuthStore, scope: Scope) -> Principal | Response:
        """The request's principal, or the 401 / 429 / 503 answer; charges failures to the address."""
        token = _bearer_token(scope)
        client = scope.get("client")
        address = str(client[0]) if client else ""
        limiter = self.state.failures
        if token is None or not auth.is_verified(token):  # a token good before is never held up by the limit
            wait = limiter.retry_after(address)
            if wait > 0:
                seconds = max(1, math.ceil(wait))
                message = f"too many failed authentications from {address}; retry in {seconds} s"
                return _error_response(429, "AuthenticationError", message, {"Retry-After": str(seconds)})
        try:
            if token is None:
                raise AuthenticationError(
                    "this server needs an API token: send 'Authorization: Bearer <token>'")
            return await self._verify(auth, token)
        except AuthenticationError as exc:
            limiter.charge(address)
            return _error_response(401, "AuthenticationError", str(exc), {"WWW-Authenticate": "Bearer"})
        except BackendUnavailableError as exc:  # no verification slot: not the client's failure
            retry = str(max(1, math.ceil(self.state.verify_slots.wait)))
            return _error_response(503, "BackendUnavailableError", str(exc), {"Retry-After": retry})

    async def _verify(self, auth: AuthStore, token: str) -> Principal:
        found = await run_in_threadpool(auth.check, token)
        if isinstance(found, Principal):
            return found
        pending = found
        key = f"{pending.principal.token_id}:".encode() + pending.fingerprint
        return await self.state.verify_slots.run(key, lambda: run_in_threadpool(auth.verify, pending))


def _bearer_token(scope: Scope) -> str | None:
    """The token of the request's ``Authorization: Bearer`` header, if any."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, rest = value.decode("latin-1").partition(" ")
            return rest.strip() if scheme.lower() == "bearer" and rest.strip() else None
    return None


# -- the application -----------------------------------------------------------------------------------------
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


def _resolve_backend(backend: str | Backend, artifacts: str | BlobStore | None) -> Backend:
    if isinstance(backend, Backend):
        if artifacts is not None:
            raise InvalidArgumentError("pass artifacts= only with a backend URI")
        return backend
    if isinstance(backend, str) and backend.split("://", 1)[0].lower() in ("http", "https"):
        raise InvalidArgumentError("a labvault server cannot serve another labvault server's URI")
    return open_backend(backend, artifacts=artifacts)


def create_app(
    backend_uri: str | Backend,
    artifacts: str | BlobStore | None = None,
    auth: AuthStore | str | os.PathLike[str] | None = None,
    *,
    insecure: bool = False,
    config: ServerConfig | None = None,
) -> FastAPI:
    """The labvault ASGI application over the backend ``backend_uri`` (a URI or a ``Backend``).

    ``auth`` is the auth store (an ``AuthStore`` or its path; default ``$LABVAULT_AUTH_DB`` or the user's
    config dir). ``insecure=True`` turns authentication off: every caller is an admin. Refusing to start
    without users is the CLI's job; an app whose auth store has no users answers every request with 401.
    """
    config = config or ServerConfig()
    backend = _resolve_backend(backend_uri, artifacts)
    store: AuthStore | None = None
    if not insecure:
        if isinstance(auth, AuthStore):
            store = auth
        else:
            store = AuthStore(default_auth_db() if auth is None else auth)
    state = ServerState(backend, store, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(state.close)

    app = FastAPI(
        title="labvault",
        version=version(),
        description="Experiment tracking: experiments, runs, params, tags, metrics, results and artifacts.",
        openapi_url=f"{wire.API_PREFIX}/openapi.json",
        docs_url=f"{wire.API_PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.labvault = state
    _add_schemas(app, [MetricsIn])
    _install_error_handlers(app)
    app.include_router(_router(state))
    app.add_middleware(_LimitsMiddleware, config=config)
    app.add_middleware(_AuthMiddleware, state=state)  # nothing happens before authentication ...
    app.add_middleware(ConnectionMiddleware, render_500=_internal_error)  # ... but this only watches
    return app


def _add_schemas(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Put models that endpoints reference by hand (``openapi_extra``) into the document's components, so
    every ``$ref`` resolves."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = FastAPI.openapi(app)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in schema.pop("$defs", {}).items():
                    schemas.setdefault(name, sub)
                schemas.setdefault(model.__name__, schema)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app_from_env() -> FastAPI:
    """The app a ``labvault server --workers N`` worker builds, configured by ``LABVAULT_SERVER_*``."""
    env = os.environ
    backend = env.get("LABVAULT_SERVER_BACKEND")
    if not backend:
        raise InvalidArgumentError("LABVAULT_SERVER_BACKEND is not set")
    config = ServerConfig(**json.loads(env.get("LABVAULT_SERVER_CONFIG") or "{}"))
    return create_app(
        backend, artifacts=env.get("LABVAULT_SERVER_ARTIFACTS") or None,
        auth=env.get("LABVAULT_AUTH_DB") or None,
        insecure=env.get("LABVAULT_SERVER_INSECURE") == "1", config=config,
    )


def config_to_env(config: ServerConfig) -> str:
    """``ServerConfig`` as the JSON ``create_app_from_env`` reads."""
    return json.dumps(asdict(config))


def _install_error_handlers(app: FastAPI) -> None:
    async def labvault_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LabvaultError)
        status = wire.status_for(exc)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthenticationError) else None
        if status >= 500 and not isinstance(exc, UnsupportedOperationError):
            log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _error_response(status, type(exc).__name__, str(exc), headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _error_response(422, "InvalidArgumentError",
                               "invalid request: " + "; ".join(describe_error(e) for e in exc.errors()[:5]))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        name = wire.ERROR_BY_STATUS.get(exc.status_code, "LabvaultError")
        headers = dict(exc.headers or {})
        if exc.status_code == 408:  # the client stalled mid-body: its connection cannot carry another request
            headers["Connection"] = "close"
        return _error_response(exc.status_code, name, str(exc.detail), headers)

    async def disconnected(request: Request, exc: Exception) -> Response:
        return _error_response(400, "InvalidArgumentError", "the client disconnected during the request")

    app.add_exception_handler(LabvaultError, labvault_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, disconnected)
    # Any other exception is answered by ConnectionMiddleware (``_internal_error``), which, unlike
    # Starlette's handler for ``Exception``, does not re-raise it: the connection stays usable.


def _internal_error(exc: Exception) -> Response:
    return _error_response(500, "LabvaultError", f"internal server error ({type(exc).__name__})")


# -- authentication dependencies -----------------------------------------------------------------------------
# The role checks are ``async def``: they only read the request scope, and a plain ``def`` dependency would
# cost every request one more trip through the thread pool.
_bearer = HTTPBearer(auto_error=False, description="an API token: lv_<id>_<secret>")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _principal(request: Request) -> Principal:
    """Who the request acts as (``_AuthMiddleware`` authenticated it before routing)."""
    principal = request.scope.get("state", {}).get(_PRINCIPAL)
    if not isinstance(principal, Principal):  # only reachable if the middleware was bypassed
        raise AuthenticationError("this server needs an API token: send 'Authorization: Bearer <token>'")
    return principal


async def _reader(request: Request, credentials: Credentials) -> Principal:
    return _principal(request)


async def _writer(request: Request, credentials: Credentials) -> Principal:
    p = _principal(request)
    p.require("writer")
    return p


async def _admin(request: Request, credentials: Credentials) -> Principal:
    p = _principal(request)
    p.require("admin")
    return p


Reader = Annotated[Principal, Depends(_reader)]
Writer = Annotated[Principal, Depends(_writer)]
Admin = Annotated[Principal, Depends(_admin)]



def _checked_item(i: int, item: BatchItem) -> tuple[BatchItem, list[MetricSeries]]:
    """A batch item whose values all pass the backend's checks, with its metrics parsed."""
    try:
        check_run_id(item.run_id)
        for values, what in ((item.params, "param"), (item.results, "result")):
            if values:
                v.validate_params(values, what)
        if item.tags:
            v.validate_tags(item.tags)
        if item.batch_id is not None:
            check_batch_id(item.batch_id)
        series = check_metric_batch(wire.series_in_json(s.model_dump()) for s in item.metrics or ())
    except LabvaultError as exc:
        raise type(exc)(f"batch item {i} (run {item.run_id[:80]!r}): {exc}") from exc
    return item, series


def _metrics_json(body: bytes) -> tuple[list[MetricSeries], str | None]:
    """The series and batch id of a JSON metrics body ``{"metrics": [...], "batch_id": ...}`` (or a bare
    list of series)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgumentError(f"metrics body is neither JSON nor a metric frame: {exc}") from exc
    items = doc.get("metrics") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise InvalidArgumentError('metrics body must be {"metrics": [{key, steps, values, timestamps}]}')
    batch_id = doc.get("batch_id") if isinstance(doc, dict) else None
    if batch_id is not None:
        check_batch_id(batch_id)
    return [wire.series_in_json(item) for item in items], batch_id


def _router(state: ServerState) -> APIRouter:
    router = APIRouter(prefix=wire.API_PREFIX, route_class=JSONRoute)
    backend = state.backend

    def auth_store() -> AuthStore:
        if state.auth is None:
            raise UnsupportedOperationError("this server runs without authentication (--insecure): no users")
        return state.auth

    # -- server ----------------------------------------------------------------------------------------------
    @router.get("/health", tags=["server"], summary="Liveness (no authentication)")
    async def health() -> Response:
        return _JSON({"status": "ok"})

    @router.get("/info", tags=["server"], summary="Server version, backend, features, auth mode")
    def info(p: Reader) -> Response:
        cls = type(backend)
        return _JSON({
            "server": "labvault", "version": version(), "api": wire.API_VERSION,
            "backend": cls.scheme or cls.__name__,
            "features": {
                "events": True, "cross_process_events": bool(cls.supports_events),
                "persistent": bool(cls.persistent), "multiprocess": bool(cls.multiprocess),
                "resumable_uploads": True, "ranges": True, "metric_formats": ["json", "binary"],
                "batch": True, "metric_batch_ids": True,
            },
            "auth": "none" if state.auth is None else "token",
            "user": {"name": p.user, "role": p.role},
            "limits": {"max_request_size": state.config.max_request_size,
                       "max_upload_size": state.config.max_upload_size,
                       "max_chunk_size": state.config.max_chunk_size},
            "started": state.started,
        })

    # -- experiments -----------------------------------------------------------------------------------------
    @router.get("/experiments", tags=["experiments"])
    def list_experiments(p: Reader, project: str | None = None) -> Response:
        return _JSON([wire.experiment_out(e) for e in backend.list_experiments(project)])

    @router.post("/experiments", tags=["experiments"], summary="Get or create an experiment")
    def ensure_experiment(body: ExperimentIn, p: Writer) -> Response:
        return _JSON(wire.experiment_out(backend.ensure_experiment(body.name, body.project)))

    @router.delete("/experiments/{experiment_id}", tags=["experiments"], status_code=204,
                   summary="Delete an experiment with its runs (admin)")
    def delete_experiment(experiment_id: str, p: Admin) -> Response:
        backend.delete_experiment(experiment_id)
        return Response(status_code=204)

    # -- runs ------------------------------------------------------------------------------------------------
    @router.post("/experiments/{experiment_id}/runs", tags=["runs"], summary="Start a run")
    def create_run(experiment_id: str, body: RunIn, p: Writer) -> Response:
        info = backend.create_run(
            experiment_id, name=body.name, parent_id=body.parent_id,
            start_time=now() if body.start_time is None else body.start_time,
            params=body.params, tags=body.tags, run_id=body.id,
        )
        return _JSON(wire.run_out(info))

    @router.get("/runs", tags=["runs"], summary="Every run of the experiments")
    def list_runs(p: Reader, experiment_id: Annotated[list[str], Query()]) -> Response:
        return _JSON([wire.run_out(r) for r in backend.list_runs(experiment_id)])

    @router.post("/runs/search", tags=["runs"], summary="Filter, order and page runs")
    def search_runs(body: SearchIn, p: Reader) -> Response:
        from labvault import query

        expr = query.parse(body.filter)
        order = query.parse_order_by(body.order_by)
        ids = body.experiment_ids or [e.id for e in backend.list_experiments()]
        found = backend.search_runs(ids, expr, order, body.limit, body.offset)
        return _JSON([wire.run_out(r) for r in found])

    @router.get("/runs/{run_id}", tags=["runs"])
    def get_run(run_id: str, p: Reader) -> Response:
        return _JSON(wire.run_out(backend.get_run(run_id)))

    @router.patch("/runs/{run_id}", tags=["runs"], status_code=204,
                  summary="Change status, end time, error text or heartbeat")
    def update_run(run_id: str, body: RunPatch, p: Writer) -> Response:
        backend.update_run(run_id, status=body.status, end_time=body.end_time,
                           error=body.error, heartbeat=body.heartbeat)
        return Response(status_code=204)

    @router.post("/runs/{run_id}/params", tags=["runs"], status_code=204, summary="Log params (write-once)")
    def log_params(run_id: str, params: Annotated[dict[str, Any], Body()], p: Writer) -> Response:
        backend.log_params(run_id, params)
        return Response(status_code=204)

    @router.post("/runs/{run_id}/tags", tags=["runs"], status_code=204, summary="Set tags")
    def set_tags(run_id: str, tags: Annotated[dict[str, Any], Body()], p: Writer) -> Response:
        backend.set_tags(run_id, tags)
        return Response(status_code=204)

    @router.post("/runs/{run_id}/results", tags=["runs"], status_code=204, summary="Log named results")
    def log_results(run_id: str, results: Annotated[dict[str, Any], Body()], p: Writer) -> Response:
        backend.log_results(run_id, results)
        return Response(status_code=204)

    # -- metrics ---------------------------------------------------------------------------------------------
    metrics_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/MetricsIn"}},
                wire.METRICS_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }

    @router.post("/runs/{run_id}/metrics", tags=["metrics"], status_code=204, openapi_extra=metrics_body,
                 summary="Append metric points (JSON or the binary frame), every key of a flush at once")
    async def log_metrics(run_id: str, request: Request, p: Writer,
                          batch_id: Annotated[str | None, Query(description=_BATCH_ID_DOC)] = None,
                          ) -> Response:
        body = await request.body()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == wire.METRICS_MEDIA_TYPE:
            series = wire.decode_series(body)
        else:
            series, in_body = _metrics_json(body)
            if in_body is not None and batch_id is not None and in_body != batch_id:
                raise InvalidArgumentError(f"batch id {in_body[:40]!r} in the body differs from the query's "
                                           f"{batch_id[:40]!r}")
            batch_id = batch_id or in_body
        await run_in_threadpool(backend.log_metrics, run_id, series, batch_id=batch_id)
        return Response(status_code=204)

    @router.get("/runs/{run_id}/metric-history", tags=["metrics"],
                summary="Every point of one or more metrics (JSON arrays or the binary frame)")
    def metric_history(run_id: str, p: Reader, key: Annotated[list[str], Query()],
                       format: Annotated[str, Query(pattern="^(json|binary)$")] = "json") -> Response:
        if len(key) > 1000:
            raise InvalidArgumentError("ask for at most 1000 metric keys at once")
        series = [backend.metric_history(run_id, k) for k in key]
        if format == "binary":
            return Response(wire.encode_series(series), media_type=wire.METRICS_MEDIA_TYPE)
        return _JSON({"metrics": [wire.series_out_json(s) for s in series]})

    @router.post("/batch", tags=["metrics"], summary="Params, tags, results and metrics of many runs at once")
    def batch(body: BatchIn, p: Writer) -> Response:
        items = [_checked_item(i, item) for i, item in enumerate(body.items)]  # all valid before any write
        for i, (item, series) in enumerate(items):
            try:
                if item.params:
                    backend.log_params(item.run_id, item.params)
                if item.tags:
                    backend.set_tags(item.run_id, item.tags)
                if item.results:
                    backend.log_results(item.run_id, item.results)
                if series:
                    backend.log_metrics(item.run_id, series, batch_id=item.batch_id)
            except LabvaultError as exc:
                raise type(exc)(f"batch item {i} (run {item.run_id}): {exc}") from exc
        return _JSON({"applied": len(items)})

    # -- artifacts -------------------------------------------------------------------------------------------
    @router.get("/runs/{run_id}/artifacts", tags=["artifacts"], summary="A run's artifacts under a prefix")
    def list_artifacts(run_id: str, p: Reader, prefix: str = "") -> Response:
        return _JSON([wire.artifact_out(a) for a in backend.list_artifacts(run_id, prefix)])

    @router.post("/runs/{run_id}/artifacts", tags=["artifacts"], status_code=204,
                 summary="Index an uploaded blob as a run's artifact")
    def add_artifact(run_id: str, body: ArtifactIn, p: Writer) -> Response:
        v.validate_artifact_key(body.key)
        try:
            stored = _stored_size(state.blobs, BlobStore.digest_key(body.digest))
        except NotFoundError:
            raise NotFoundError(f"blob {body.digest} is not in the server's store: upload it first") from None
        if stored != body.size:
            raise InvalidArgumentError(f"artifact {body.key!r}: size {body.size} does not match the {stored} "
                                       f"bytes of blob {body.digest}")
        created = now() if body.created_at is None else body.created_at
        backend.add_artifact(run_id, ArtifactInfo(body.key, body.size, body.digest, created))
        return Response(status_code=204)

    @router.put("/runs/{run_id}/artifacts/{key:path}", tags=["artifacts"],
                summary="Upload an artifact's content (streamed) and index it")
    async def put_artifact(run_id: str, key: str, request: Request, p: Writer) -> Response:
        v.validate_artifact_key(key)
        await run_in_threadpool(backend.get_run, run_id)
        digest, size = await _with_body(request, state.config.max_upload_size, "upload",
                                        state.blobs.put_content)
        info = ArtifactInfo(key, size, digest, now())
        await run_in_threadpool(backend.add_artifact, run_id, info)
        return _JSON(wire.artifact_out(info))

    @router.get("/runs/{run_id}/artifacts/{key:path}", tags=["artifacts"],
                summary="Download an artifact (Range supported; X-Labvault-Sha256 carries its digest)")
    async def get_artifact(run_id: str, key: str, request: Request, p: Reader) -> Response:
        v.validate_artifact_key(key)
        info = await run_in_threadpool(backend.get_artifact_info, run_id, key)
        return await _send_blob(request, state.blobs, BlobStore.digest_key(info.digest), size=info.size,
                                digest=info.digest)

    # -- content-addressed blobs -----------------------------------------------------------------------------
    def _digest(digest: str) -> str:
        if not _DIGEST_RE.fullmatch(digest):
            raise InvalidArgumentError(f"{digest[:80]!r} is not a sha256 hex digest")
        return digest

    @router.post("/content", tags=["content"], summary="Upload content; the server computes its sha256",
                 openapi_extra={"requestBody": {"content": {"application/octet-stream": {
                     "schema": {"type": "string", "format": "binary"}}}}})
    async def put_content(request: Request, p: Writer) -> Response:
        expected = request.headers.get(wire.SHA256_HEADER)
        if expected is not None and not _DIGEST_RE.fullmatch(expected.lower()):
            raise InvalidArgumentError(f"{wire.SHA256_HEADER} {expected[:80]!r} is not a sha256 hex digest")

        def store(body: BinaryIO) -> tuple[str, int]:
            if expected is None:
                return state.blobs.put_content(body)
            return state.blobs.put_content(io.BufferedReader(_DigestCheckingReader(body, expected.lower()),
                                                             CHUNK_SIZE))

        digest, size = await _with_body(request, state.config.max_upload_size, "upload", store)
        return _JSON({"digest": digest, "size": size})

    @router.head("/content/{digest}", tags=["content"], summary="Whether content is stored")
    def has_content(digest: str, p: Reader) -> Response:
        if not state.blobs.exists(BlobStore.digest_key(_digest(digest))):
            raise NotFoundError(f"blob {digest} is not stored")
        return Response(status_code=200, headers={wire.SHA256_HEADER: digest})

    @router.get("/content/{digest}", tags=["content"], summary="Download content by digest (Range supported)")
    async def get_content(digest: str, request: Request, p: Reader) -> Response:
        _digest(digest)
        return await _send_blob(request, state.blobs, BlobStore.digest_key(digest), digest=digest)

    # -- resumable uploads -----------------------------------------------------------------------------------
    def _upload(upload_id: str, p: Principal) -> dict[str, Any]:
        if not _UPLOAD_RE.fullmatch(upload_id):
            raise InvalidArgumentError(f"{upload_id[:80]!r} is not an upload id")
        try:
            meta: dict[str, Any] = json.loads(state.blobs.get(f"uploads/{upload_id}/meta.json"))
        except (NotFoundError, FileNotFoundError):
            raise NotFoundError(f"no upload {upload_id} (finished, aborted or never started)") from None
        if meta.get("user") != p.user and not p.allows("admin"):
            raise NotFoundError(f"no upload {upload_id} (finished, aborted or never started)")
        return meta

    def _parts(upload_id: str) -> tuple[int, list[str]]:
        """(offset, part keys in order): the parts that are complete and contiguous from 0."""
        sizes: dict[int, int] = {}
        for key in state.blobs.list(f"uploads/{upload_id}/"):
            match = _MARKER_RE.fullmatch(key.rsplit("/", 1)[-1])
            if match:
                sizes[int(match.group(1))] = int(match.group(2))
        offset, keys = 0, []
        while offset in sizes:
            keys.append(f"uploads/{upload_id}/c{offset:016d}")
            offset += sizes[offset]
        return offset, keys

    def _upload_doc(upload_id: str, meta: Mapping[str, Any], offset: int) -> dict[str, Any]:
        return {"upload_id": upload_id, "offset": offset, "size": meta.get("size"),
                "chunk_max": state.config.max_chunk_size}

    @router.post("/uploads", tags=["uploads"], summary="Start a resumable upload")
    def start_upload(body: UploadIn, p: Writer) -> Response:
        upload_id = uuid.uuid4().hex
        meta = {"user": p.user, "size": body.size, "created": time.time()}
        state.blobs.put(f"uploads/{upload_id}/meta.json", json.dumps(meta).encode())
        return _JSON(_upload_doc(upload_id, meta, 0))

    @router.get("/uploads/{upload_id}", tags=["uploads"], summary="Where an upload stands (its offset)")
    def upload_status(upload_id: str, p: Writer) -> Response:
        meta = _upload(upload_id, p)
        return _JSON(_upload_doc(upload_id, meta, _parts(upload_id)[0]))

    @router.put("/uploads/{upload_id}", tags=["uploads"], summary="Send the bytes at the server's `offset`",
                openapi_extra={"requestBody": {"content": {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"}}}}})
    async def upload_chunk(upload_id: str, request: Request, p: Writer,
                           offset: Annotated[int, Query(ge=0)]) -> Response:
        meta = await run_in_threadpool(_upload, upload_id, p)
        current, _ = await run_in_threadpool(_parts, upload_id)
        if offset != current:
            return _error_response(
                409, "ConflictError",
                f"upload {upload_id} is at offset {current}, not {offset}: resume from there")
        key = f"uploads/{upload_id}/c{offset:016d}"

        def store(fh: BinaryIO) -> int:
            return state.blobs.put(key, fh)

        size = await _with_body(request, state.config.max_chunk_size, "upload chunk", store)
        total = meta.get("size")
        if total is not None and offset + size > total:
            await run_in_threadpool(state.blobs.delete, key)
            raise InvalidArgumentError(f"upload {upload_id} was announced as {total} bytes; "
                                       f"this chunk would end at {offset + size}")
        if size:
            marker = f"uploads/{upload_id}/m{offset:016d}-{size:016d}"
            await run_in_threadpool(state.blobs.put, marker, b"")
        return _JSON(_upload_doc(upload_id, meta, offset + size))

    @router.post("/uploads/{upload_id}/complete", tags=["uploads"],
                 summary="Assemble the parts into content-addressed content")
    def complete_upload(upload_id: str, body: CompleteIn, p: Writer) -> Response:
        meta = _upload(upload_id, p)
        offset, keys = _parts(upload_id)
        if meta.get("size") is not None and offset != meta["size"]:
            raise ConflictError(f"upload {upload_id} has {offset} of its {meta['size']} bytes: send the rest")
        with _ConcatReader(state.blobs, keys) as reader:
            digest, size = state.blobs.put_content(io.BufferedReader(reader, CHUNK_SIZE))
        if body.sha256 is not None and body.sha256 != digest:
            raise InvalidArgumentError(f"uploaded content has sha256 {digest}, not {body.sha256}")
        _drop_upload(upload_id)
        return _JSON({"digest": digest, "size": size})

    def _drop_upload(upload_id: str) -> None:
        for key in state.blobs.list(f"uploads/{upload_id}/"):
            if not key.endswith("meta.json"):
                state.blobs.delete(key)
        state.blobs.delete(f"uploads/{upload_id}/meta.json")

    @router.delete("/uploads/{upload_id}", tags=["uploads"], status_code=204, summary="Abort an upload")
    def abort_upload(upload_id: str, p: Writer) -> Response:
        _upload(upload_id, p)
        _drop_upload(upload_id)
        return Response(status_code=204)

    # -- raw blobs (the BlobStore of HTTP clients; writes are admin-only) ------------------------------------
    def _visible(key: str, p: Principal) -> str:
        """``key`` when ``p`` may see it: the parts of in-flight uploads (``uploads/``) are the uploader's
        business, reached through ``/uploads/{id}``; only admins see them as blobs."""
        if key.startswith(_UPLOADS) and not p.allows("admin"):
            raise NotFoundError(f"no blob {key[:200]!r}")
        return key

    @router.get("/blobs", tags=["blobs"], summary="Blob keys under a prefix (uploads in flight: admins only)")
    def list_blobs(p: Reader, prefix: str = "") -> Response:
        keys = state.blobs.list(prefix)
        if not p.allows("admin"):
            keys = [k for k in keys if not k.startswith(_UPLOADS)]
        return _JSON(keys)

    @router.head("/blobs/{key:path}", tags=["blobs"], summary="Whether a blob exists")
    def has_blob(key: str, p: Reader) -> Response:
        if not state.blobs.exists(_visible(key, p)):
            raise NotFoundError(f"no blob {key!r}")
        return Response(status_code=200)

    @router.get("/blobs/{key:path}", tags=["blobs"], summary="Download a blob (Range supported)")
    async def get_blob(key: str, request: Request, p: Reader) -> Response:
        v.validate_artifact_key(_visible(key, p))
        parts = key.split("/")
        digest = parts[-1] if parts[0] == "sha256" and _DIGEST_RE.fullmatch(parts[-1]) else None
        return await _send_blob(request, state.blobs, key, digest=digest)

    @router.put("/blobs/{key:path}", tags=["blobs"], summary="Write a blob by key, streamed (admin)",
                openapi_extra={"requestBody": {"content": {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"}}}}})
    async def put_blob(key: str, request: Request, p: Admin) -> Response:
        v.validate_artifact_key(key)

        def store(fh: BinaryIO) -> int:
            return state.blobs.put(key, fh)

        size = await _with_body(request, state.config.max_upload_size, "upload", store)
        return _JSON({"key": key, "size": size})

    @router.delete("/blobs/{key:path}", tags=["blobs"], status_code=204, summary="Delete a blob (admin)")
    def delete_blob(key: str, p: Admin) -> Response:
        state.blobs.delete(key)
        return Response(status_code=204)

    # -- events ----------------------------------------------------------------------------------------------
    @router.get("/events", tags=["events"], summary="Server-sent events: the store's changes from now on",
                response_class=StreamingResponse,
                responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}})
    async def events(
        p: Reader,
        kinds: Annotated[str | None, Query(description="comma-separated event kinds")] = None,
        experiment_id: str | None = None,
        run_id: str | None = None,
        ping: Annotated[float | None, Query(ge=0.05, le=300, allow_inf_nan=False)] = None,
    ) -> Response:
        wanted = {k.strip() for k in kinds.split(",") if k.strip()} if kinds else None
        interval = state.config.sse_ping if ping is None else ping
        loop = asyncio.get_running_loop()
        sub = await run_in_threadpool(state.hub.subscribe, loop)

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"event: ready\ndata: {}\n\n"
                seq = 0
                while True:
                    try:
                        event = await asyncio.wait_for(sub.queue.get(), interval)
                    except TimeoutError:
                        if sub.overflowed:
                            break
                        yield b": ping\n\n"
                        continue
                    if (wanted is not None and event.kind not in wanted) \
                            or (experiment_id is not None and event.experiment_id != experiment_id) \
                            or (run_id is not None and event.run_id != run_id):
                        continue
                    seq += 1
                    data = orjson.dumps(event.to_json(), option=orjson.OPT_SERIALIZE_NUMPY)
                    yield b"id: %d\nevent: change\ndata: %s\n\n" % (seq, data)
                    if sub.overflowed and sub.queue.empty():
                        break
                yield b'event: error\ndata: {"error": "overflow", "message": "client fell behind"}\n\n'
            finally:
                state.hub.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # -- users and tokens (admin) ----------------------------------------------------------------------------
    @router.get("/users", tags=["admin"], summary="Users and roles (admin)")
    def list_users(p: Admin) -> Response:
        return _JSON([{"name": n, "role": r, "created_at": c} for n, r, c in auth_store().users()])

    @router.post("/users", tags=["admin"], status_code=201, summary="Add a user (admin)")
    def add_user(body: UserIn, p: Admin) -> Response:
        auth_store().add_user(body.name, check_role(body.role))
        return _JSON({"name": body.name, "role": body.role}, status_code=201)

    @router.put("/users/{name}/role", tags=["admin"], status_code=204, summary="Change a user's role (admin)")
    def set_role(name: str, body: RoleIn, p: Admin) -> Response:
        auth_store().set_role(name, body.role)
        return Response(status_code=204)

    @router.delete("/users/{name}", tags=["admin"], status_code=204, summary="Remove a user and their tokens")
    def remove_user(name: str, p: Admin) -> Response:
        auth_store().remove_user(name)
        return Response(status_code=204)

    @router.get("/tokens", tags=["admin"], summary="Tokens, never their secrets (admin)")
    def list_tokens(p: Admin, user: str | None = None) -> Response:
        return _JSON([asdict(t) for t in auth_store().tokens(user)])

    @router.post("/tokens", tags=["admin"], status_code=201, summary="Issue a token (shown once; admin)")
    def create_token(body: TokenIn, p: Admin) -> Response:
        token_id, token = auth_store().create_token(body.user, body.description, body.expires_in)
        return _JSON({"id": token_id, "token": token, "user": body.user}, status_code=201)

    @router.delete("/tokens/{token_id}", tags=["admin"], status_code=204, summary="Revoke a token (admin)")
    def revoke_token(token_id: str, p: Admin) -> Response:
        auth_store().revoke_token(token_id)
        return Response(status_code=204)

    return router


def describe_features(app: FastAPI) -> dict[str, Any]:
    """A short summary for the server's start-up banner."""
    state: ServerState = app.state.labvault
    cls = type(state.backend)
    return {"backend": cls.scheme or cls.__name__, "auth": "none" if state.auth is None else "token",
            "cross_process_events": bool(cls.supports_events)}


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host in ("localhost", "ip6-localhost"):
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
