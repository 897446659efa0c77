"""The labvault server: a versioned JSON REST API (``/api/v1``) over any labvault ``Backend``.

The server is stateless: every request goes to the backend (and its blob store), so several workers or
server processes over one store answer alike. Resumable uploads keep their parts in the blob store
under ``uploads/<id>/``, so a client may resume through any worker. Blocking backend calls run in the
thread pool; artifact bodies are streamed both ways, never held whole in memory.

Start one with ``labvault server --backend URI`` or build the ASGI app with ``create_app``. This module
is the app factory: ``create_app`` (and ``create_app_from_env`` for ``--workers``), the middleware that
runs before routing (authentication, body limits), and the exception handlers that turn every error
into ``{"error", "message"}``. The endpoints are in ``labvault.server.routes`` (one module per
resource), what they share in ``labvault.server.deps``, the process's state in ``labvault.server.state``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import re
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labvault import wire
from labvault._version import version
from labvault.blobs.abc import BlobStore
from labvault.errors import (
    AuthenticationError,
    BackendUnavailableError,
    InvalidArgumentError,
    LabvaultError,
    UnsupportedOperationError,
)
from labvault.server.auth import ANONYMOUS_ADMIN, AuthStore, Principal, default_auth_db
from labvault.server.deps import PRINCIPAL_KEY
from labvault.server.models import MetricsIn
from labvault.server.protocol import ConnectionMiddleware, describe_error, error_response
from labvault.server.routes import include_routes
from labvault.server.state import EventHub, ServerConfig, ServerState
from labvault.store.abc import Backend
from labvault.store.registry import open_backend

__all__ = ["EventHub", "ServerConfig", "ServerState", "config_to_env", "create_app", "create_app_from_env",
           "describe_features", "is_loopback"]

log = logging.getLogger("labvault.server")


# -- limits middleware (before routing: bodies over a route's limit never reach a handler) -------------------
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
                    await error_response(400, "InvalidArgumentError", "malformed Content-Length header")(
                        scope, receive, send)
                    return
                if limit is not None and int(value) > limit:
                    response = error_response(413, "InvalidArgumentError",
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


#: Paths served without a bearer token: the health check, the API's description, and the password login
#: (``routes.auth``: it authenticates its body, under the same failure limit and verification slots).
_PUBLIC_PATHS = frozenset(f"{wire.API_PREFIX}{p}" for p in ("/health", "/openapi.json", "/docs",
                                                             "/docs/oauth2-redirect", "/auth/token"))


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
        scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
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
                return error_response(429, "AuthenticationError", message, {"Retry-After": str(seconds)})
        try:
            if token is None:
                raise AuthenticationError(
                    "this server needs an API token: send 'Authorization: Bearer <token>'")
            return await self._verify(auth, token)
        except AuthenticationError as exc:
            limiter.charge(address)
            return error_response(401, "AuthenticationError", str(exc), {"WWW-Authenticate": "Bearer"})
        except BackendUnavailableError as exc:  # no verification slot: not the client's failure
            retry = str(max(1, math.ceil(self.state.verify_slots.wait)))
            return error_response(503, "BackendUnavailableError", str(exc), {"Retry-After": retry})

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
    include_routes(app)
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
        return error_response(status, type(exc).__name__, str(exc), headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, "InvalidArgumentError",
                               "invalid request: " + "; ".join(describe_error(e) for e in exc.errors()[:5]))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        name = wire.ERROR_BY_STATUS.get(exc.status_code, "LabvaultError")
        headers = dict(exc.headers or {})
        if exc.status_code == 408:  # the client stalled mid-body: its connection cannot carry another request
            headers["Connection"] = "close"
        return error_response(exc.status_code, name, str(exc.detail), headers)

    async def disconnected(request: Request, exc: Exception) -> Response:
        return error_response(400, "InvalidArgumentError", "the client disconnected during the request")

    app.add_exception_handler(LabvaultError, labvault_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, disconnected)
    # Any other exception is answered by ConnectionMiddleware (``_internal_error``), which, unlike
    # Starlette's handler for ``Exception``, does not re-raise it: the connection stays usable.


def _internal_error(exc: Exception) -> Response:
    return error_response(500, "LabvaultError", f"internal server error ({type(exc).__name__})")

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

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

