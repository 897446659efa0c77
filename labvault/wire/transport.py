"""The client side of the wire: ``APIClient``, the one way ``HTTPBackend`` and ``HTTPBlobStore`` talk to a
labvault server.

It holds the shared httpx client (made on first use: construction does no I/O), the token header, TLS
verification, the retries with their backoff (``labvault._retry``) and the one mapping of failures to
labvault errors: an httpx exception by what it says about the request (it never reached the server, or
it may have been handled and its answer lost), an error response by the class name and message the
server sent (``labvault.wire.errors``). The server never imports this module: it would load httpx for
nothing.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson

from labvault._retry import Backoff, Retry
from labvault._version import version
from labvault.errors import BackendUnavailableError, InvalidArgumentError, LabvaultError
from labvault.wire.codecs import API_PREFIX, BIGINT_JSON_MEDIA_TYPE
from labvault.wire.errors import error_from

__all__ = ["BACKOFF", "CUT_OFF", "NOT_SENT", "RESUME_BACKOFF", "RETRY_STATUSES", "APIClient", "TokenSource"]

#: The pauses between the attempts of one request: 0.1 s, doubling up to 2 s.
BACKOFF = Backoff(first=0.1, cap=2.0)
#: The pauses of the loops that resume a transfer (a download cut off midway, an upload part that failed):
#: the same schedule one step on (0.2 s, doubling up to 2 s), as those loops have always paused.
RESUME_BACKOFF = Backoff(first=0.2, cap=2.0)
#: Answers after which an idempotent call is sent again (a proxy, or a server restarting or overloaded).
RETRY_STATUSES = (502, 503, 504)
#: httpx failures of a request that never reached the server: always safe to send again ...
NOT_SENT: tuple[type[httpx.HTTPError], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: ... and of one the server may have handled, its answer lost: sent again only when the call is idempotent.
CUT_OFF: tuple[type[httpx.HTTPError], ...] = (httpx.TimeoutException, httpx.NetworkError,
                                               httpx.RemoteProtocolError)

#: A token, a function that finds one when the first request is made (None: no token), or None.
TokenSource = str | Callable[[], str | None] | None


def _version() -> str:
    return version()


def dumps(value: Any) -> bytes:
    """``value`` as a JSON request body (integers beyond 64 bits too, which orjson refuses)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


class APIClient:
    """Requests to the REST API (``/api/v1``) of the labvault server at ``base_url``.

    ``timeout`` is the seconds a request may take (connecting: at most 10), ``retries`` how often an
    idempotent call is sent again, ``verify`` True, False or a CA file or directory, ``transport`` an httpx
    transport to use instead of sockets (the in-process server's).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: TokenSource = None,
        timeout: float = 60.0,
        retries: int = 3,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not (isinstance(retries, int) and 0 <= retries <= 20):
            raise InvalidArgumentError(f"retries must be an integer from 0 to 20, got {retries!r}")
        self.base_url = base_url
        self.api_url = base_url + API_PREFIX
        self.timeout = float(timeout)
        self.retries = retries
        self.verify = verify
        self._token = token
        self._transport = transport
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()

    # -- the httpx client --------------------------------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        """The ``Authorization`` header of the token (looked up once, on first use), if there is one."""
        if callable(self._token):
            self._token = self._token()
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _ssl_verify(self) -> bool | ssl.SSLContext:
        """``verify`` for httpx: a CA file or directory becomes an SSL context (httpx deprecates paths)."""
        if isinstance(self.verify, str):
            path = Path(self.verify).expanduser()
            try:
                if path.is_dir():
                    return ssl.create_default_context(capath=str(path))
                return ssl.create_default_context(cafile=str(path))
            except (OSError, ssl.SSLError) as exc:
                raise InvalidArgumentError(f"verify={self.verify!r}: not a readable CA file: {exc}") from exc
        return self.verify

    def new_client(self, timeout: httpx.Timeout | None = None) -> httpx.Client:
        """A new httpx client for this server (the event stream has its own, with a read timeout)."""
        return httpx.Client(
            transport=self._transport, verify=self._ssl_verify(),
            timeout=timeout or httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
            headers={"User-Agent": f"labvault-http/{_version()}", **self.auth_headers()},
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )

    @property
    def client(self) -> httpx.Client:
        """The shared HTTP client (created on first use: construction does no I/O)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self.new_client()
        return self._client

    def close(self) -> None:
        """Close the shared client's connections (a later request opens new ones)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- requests ----------------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | Callable[[], Iterable[bytes]] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = False,
        stream: bool = False,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> httpx.Response:
        """One API call with error translation and retries (every attempt when ``idempotent``, else only
        when no connection could be made). ``content`` may be a factory giving a fresh body per attempt."""
        url = self.api_url + path
        hdrs = dict(headers or {})
        body: Any = None
        if json_body is not None:
            body = dumps(json_body)
            hdrs.setdefault("Content-Type", "application/json")
        retry = Retry(tries=(self.retries if retries is None else retries) + 1, policy=BACKOFF)
        last: Exception | None = None
        while True:
            if content is not None:
                body = content() if callable(content) else content
            req = self.client.build_request(
                method, url, content=body, params=params, headers=hdrs,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
            resp, last = self._attempt(req, path, stream=stream, idempotent=idempotent)
            if resp is not None:
                return resp
            if not retry.wait():
                break
        if isinstance(last, LabvaultError):
            raise last
        raise self._unreachable(method, path, last) from last

    def _attempt(self, req: httpx.Request, path: str, *, stream: bool, idempotent: bool
                 ) -> tuple[httpx.Response | None, Exception | None]:
        """Send once: ``(response, None)`` on success, ``(None, error)`` when another attempt may follow;
        an error no further attempt may fix is raised here."""
        try:
            resp = self.client.send(req, stream=stream)
        except NOT_SENT as exc:
            return None, exc  # the request never reached the server: always safe to try again
        except CUT_OFF as exc:
            if not idempotent:
                raise self._unreachable(req.method, path, exc) from exc
            return None, exc
        except httpx.HTTPError as exc:
            raise BackendUnavailableError(f"{req.method} {self.api_url}{path} failed: "
                                          f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code < 400:
            return resp, None
        error = self.error(resp)
        if not (idempotent and resp.status_code in RETRY_STATUSES):
            raise error
        return None, error

    def _unreachable(self, method: str, path: str, exc: Exception | None) -> BackendUnavailableError:
        """The error for a request that got no usable answer and is not tried again."""
        return BackendUnavailableError(
            f"labvault server {self.base_url} is unreachable ({method} {path}): {type(exc).__name__}: {exc}")

    def error(self, resp: httpx.Response) -> LabvaultError:
        """The labvault error an error response stands for (it is read and closed)."""
        try:
            raw = resp.read()
        finally:
            resp.close()
        name: object = None
        message = ""
        try:
            doc = orjson.loads(raw)
            if isinstance(doc, dict):
                name, message = doc.get("error"), str(doc.get("message") or "")
        except orjson.JSONDecodeError:
            message = raw[:300].decode("utf-8", "replace").strip()
        if not message:
            message = f"HTTP {resp.status_code} {resp.reason_phrase} from {self.base_url}"
        return error_from(name, message, resp.status_code)

    def json(self, method: str, path: str, **kw: Any) -> Any:
        """``request`` and the answer's JSON document (None for an empty answer)."""
        resp = self.request(method, path, **kw)
        if not resp.content:
            return None
        if resp.headers.get("content-type") == BIGINT_JSON_MEDIA_TYPE:
            return json.loads(resp.content)  # integers beyond 64 bits, which orjson reads as floats
        return orjson.loads(resp.content)

    def check_online(self, timeout: float = 3.0) -> bool:
        """Whether the server answers its health check (no exception either way)."""
        try:
            resp = self.client.get(self.api_url + "/health", timeout=timeout)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200
