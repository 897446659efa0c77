"""``HTTPBackend``: a vault on a labvault server (``labvault.open("https://host:8080", token=...)``).

Every backend call is one request to the server's REST API (``/api/v1``); a run's buffered metrics go
in one binary request per flush. Artifacts stream both ways: uploads by content (the server computes the
sha256), files from 32 MB on as resumable uploads that survive a dropped connection, downloads verified
against their digest and resumed with ``Range`` after a dropped connection.

The token comes from ``token=``, else ``$LABVAULT_TOKEN``, else what ``labvault login URL`` stored for
that server. Connection failures raise ``BackendUnavailableError``; an error the server reports comes
back as the same ``labvault.errors`` class with the server's message. Idempotent calls (reads, get-or-
create, params, tags, results, run updates, uploads of content, and metric appends, which carry a batch
id the server applies once) are retried with backoff after a timeout, a dropped connection or a 502/503/
504; creations are retried only when the connection could not be made at all.

``watch()`` reads the server's event stream (server-sent events).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar
from urllib.parse import quote, urlsplit

import httpx
import orjson

from labvault import wire
from labvault._uri import check_options, refuse_credentials
from labvault.blobs.abc import CHUNK_SIZE, BlobSource, BlobStore, VerifyingReader, iter_source
from labvault.domain import ArtifactInfo, ChangeEvent, ExperimentInfo, MetricSeries, RunInfo
from labvault.errors import (
    BackendUnavailableError,
    ConflictError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
)
from labvault.store.abc import Backend
from labvault.store.feed import LocalChangeFeed

if TYPE_CHECKING:
    from labvault.query import Expr, OrderKey

__all__ = ["HTTPBackend", "HTTPBlobStore", "load_token", "save_token"]

#: Files from this size on are sent as resumable uploads.
RESUMABLE_THRESHOLD = 32 * 1024 * 1024
#: Size of one part of a resumable upload.
UPLOAD_CHUNK = 16 * 1024 * 1024
_OPTIONS = ("token", "timeout", "retries", "verify", "transport", "upload_chunk_size", "resumable_threshold")
_RETRY_STATUSES = (502, 503, 504)


# -- credentials stored by ``labvault login`` ----------------------------------------------------------------
def _credentials_path() -> Path:
    from labvault._config import config_dir

    return config_dir() / "credentials.json"


def normalize_url(url: str) -> str:
    """``scheme://host:port/path`` without a trailing slash (the key credentials are stored under)."""
    refuse_credentials(url, "labvault server URLs",
                       "pass token=, set $LABVAULT_TOKEN or store one with: labvault login URL")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError(f"not a labvault server URL: {_redact(url)!r} (write http(s)://host:port)")
    port = parts.port or (443 if scheme == "https" else 80)
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        return url.replace(parts.netloc, "***@" + parts.netloc.rsplit("@", 1)[-1])
    return url


def load_token(url: str) -> str | None:
    """The token ``labvault login`` stored for the server at ``url``, if any."""
    path = _credentials_path()
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    entry = (doc.get("servers") or {}).get(normalize_url(url)) if isinstance(doc, dict) else None
    token = entry.get("token") if isinstance(entry, dict) else None
    return token if isinstance(token, str) else None


def save_token(url: str, token: str, user: str | None = None) -> Path:
    """Store ``token`` for ``url`` in the user's credentials file (mode 0600); return its path."""
    path = _credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            doc = {}
    except (OSError, ValueError):
        doc = {}
    servers = doc.setdefault("servers", {})
    servers[normalize_url(url)] = {"token": token, "user": user, "saved": time.time()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def forget_token(url: str) -> bool:
    """Remove the stored token of ``url``; whether there was one."""
    path = _credentials_path()
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    servers = doc.get("servers") if isinstance(doc, dict) else None
    if not isinstance(servers, dict) or servers.pop(normalize_url(url), None) is None:
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
    os.replace(tmp, path)
    return True


# -- the backend ---------------------------------------------------------------------------------------------
class HTTPBackend(Backend):
    """A vault served by ``labvault server``: one REST call per backend operation."""

    scheme: ClassVar[str | None] = "http"
    config_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "properties": {
            "uri": {"type": "string"}, "url": {"type": "string"}, "token": {"type": "string"},
            "timeout": {"type": "number", "exclusiveMinimum": 0},
            "retries": {"type": "integer", "minimum": 0},
            "verify": {"type": ["boolean", "string"]},
            "upload_chunk_size": {"type": "integer", "minimum": 65536},
            "resumable_threshold": {"type": "integer", "minimum": 0},
        },
    }
    persistent: ClassVar[bool] = True
    multiprocess: ClassVar[bool] = True
    #: Clients of one server see each other's changes through its event stream. (Across several server
    #: processes, only when the server's backend has cross-process events itself, e.g. PostgreSQL.)
    supports_events: ClassVar[bool] = True

    def __init__(
        self,
        uri: str,
        *,
        token: str | None = None,
        blobs: BlobStore | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
        upload_chunk_size: int = UPLOAD_CHUNK,
        resumable_threshold: int = RESUMABLE_THRESHOLD,
    ) -> None:
        super().__init__(uri, blobs)
        self.base_url = normalize_url(uri) if transport is None else uri.rstrip("/")
        self.api_url = self.base_url + wire.API_PREFIX
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise InvalidArgumentError("token must be a non-empty string")
        self._token = token
        self._token_resolved = token is not None
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not (isinstance(retries, int) and 0 <= retries <= 20):
            raise InvalidArgumentError(f"retries must be an integer from 0 to 20, got {retries!r}")
        self.timeout = float(timeout)
        self.retries = retries
        self.verify = verify
        self.upload_chunk_size = int(upload_chunk_size)
        self.resumable_threshold = int(resumable_threshold)
        self._transport = transport
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._sse: list[_SSEFeed] = []

    @classmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> HTTPBackend:
        """``http(s)://host:port[/prefix]``; options: token, timeout, retries, verify (bool or CA file)."""
        check_options("http", options, _OPTIONS)
        return cls(uri, blobs=artifacts, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # -- plumbing --------------------------------------------------------------------------------------------
    def _auth_headers(self) -> dict[str, str]:
        if not self._token_resolved:
            self._token = os.environ.get("LABVAULT_TOKEN") or load_token(self.base_url)
            self._token_resolved = True
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

    def _new_client(self, timeout: httpx.Timeout | None = None) -> httpx.Client:
        return httpx.Client(
            transport=self._transport, verify=self._ssl_verify(),
            timeout=timeout or httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
            headers={"User-Agent": f"labvault-http/{_version()}", **self._auth_headers()},
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )

    @property
    def client(self) -> httpx.Client:
        """The shared HTTP client (created on first use: construction does no I/O)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._new_client()
        return self._client

    def _backoff(self, attempt: int) -> None:
        time.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random()))

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
            body = _dumps(json_body)
            hdrs.setdefault("Content-Type", "application/json")
        attempts = (self.retries if retries is None else retries) + 1
        last: Exception | None = None
        for attempt in range(attempts):
            if content is not None:
                body = content() if callable(content) else content
            try:
                req = self.client.build_request(
                    method, url, content=body, params=params, headers=hdrs,
                    timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
                )
                resp = self.client.send(req, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                last = exc  # the request never reached the server: always safe to try again
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                last = exc
                if not idempotent:
                    break
            except httpx.HTTPError as exc:
                raise BackendUnavailableError(f"{method} {self.base_url}{wire.API_PREFIX}{path} failed: "
                                              f"{type(exc).__name__}: {exc}") from exc
            else:
                if resp.status_code < 400:
                    return resp
                if not (idempotent and resp.status_code in _RETRY_STATUSES and attempt + 1 < attempts):
                    raise self._error(resp)
                last = self._error(resp)
            if attempt + 1 < attempts:
                self._backoff(attempt)
        if isinstance(last, LabvaultError):
            raise last
        raise BackendUnavailableError(
            f"labvault server {self.base_url} is unreachable ({method} {path}): {type(last).__name__}: {last}"
        ) from last

    def _error(self, resp: httpx.Response) -> LabvaultError:
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
        return wire.error_from(name, message, resp.status_code)

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.request(method, path, **kw)
        if not resp.content:
            return None
        if resp.headers.get("content-type") == wire.BIGINT_JSON_MEDIA_TYPE:
            return json.loads(resp.content)  # integers beyond 64 bits, which orjson reads as floats
        return orjson.loads(resp.content)

    # -- server ----------------------------------------------------------------------------------------------
    def check_online(self, timeout: float = 3.0) -> bool:
        """Whether the server answers its health check (no exception either way)."""
        try:
            resp = self.client.get(self.api_url + "/health", timeout=timeout)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    def server_info(self) -> dict[str, Any]:
        """The server's version, backend kind, features, auth mode and who this token belongs to."""
        info = self._json("GET", "/info", idempotent=True)
        assert isinstance(info, dict)
        return info

    def _default_blobs(self) -> BlobStore:
        return HTTPBlobStore(self)

    def sync(self) -> None:
        """Nothing to do: the server group-commits its own store."""

    def close(self) -> None:
        for feed in list(self._sse):
            feed.close()
        if self._client is not None:
            self._client.close()
            self._client = None
        super().close()

    # -- change feed -----------------------------------------------------------------------------------------
    def _emit(self, kind: str, experiment_id: str | None = None, run_id: str | None = None,
              **data: Any) -> None:
        """The server emits every event; the client has nothing to add."""

    def _watch(self) -> _SSEFeed:
        feed = _SSEFeed(self)
        self._sse.append(feed)
        return feed

    # -- experiments -----------------------------------------------------------------------------------------
    def _ensure_experiment(self, name: str, project: str) -> ExperimentInfo:
        body = {"name": name, "project": project}
        doc = self._json("POST", "/experiments", json_body=body, idempotent=True)
        return wire.experiment_in(doc)

    def _list_experiments(self, project: str | None) -> list[ExperimentInfo]:
        params = {} if project is None else {"project": project}
        docs = self._json("GET", "/experiments", params=params, idempotent=True)
        return [wire.experiment_in(d) for d in docs]

    def _delete_experiment(self, experiment_id: str) -> None:
        self.request("DELETE", f"/experiments/{experiment_id}")

    # -- runs ------------------------------------------------------------------------------------------------
    def _create_run(
        self, experiment_id: str, name: str | None, parent_id: str | None, start_time: float,
        params: dict[str, Any], tags: dict[str, str], *, run_id: str | None = None,
    ) -> RunInfo:
        body = {"name": name, "parent_id": parent_id, "start_time": start_time, "params": params,
                "tags": tags}
        if run_id is not None:
            body["id"] = run_id
        return wire.run_in(self._json("POST", f"/experiments/{experiment_id}/runs", json_body=body))

    def _get_run(self, run_id: str) -> RunInfo:
        return wire.run_in(self._json("GET", f"/runs/{run_id}", idempotent=True))

    def _list_runs(self, experiment_ids: list[str]) -> list[RunInfo]:
        if not experiment_ids:
            return []
        body = {"experiment_ids": experiment_ids}
        return [wire.run_in(d) for d in self._json("POST", "/runs/search", json_body=body, idempotent=True)]

    def _search_runs(
        self,
        experiment_ids: list[str],
        expr: Expr,
        order: Sequence[OrderKey],
        limit: int | None,
        offset: int,
    ) -> list[RunInfo]:
        if not experiment_ids:
            return []
        body = {"experiment_ids": experiment_ids, "filter": wire.unparse_filter(expr),
                "order_by": wire.unparse_order(order), "limit": limit, "offset": offset}
        return [wire.run_in(d) for d in self._json("POST", "/runs/search", json_body=body, idempotent=True)]

    def _update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        self.request("PATCH", f"/runs/{run_id}", json_body=fields, idempotent=True)

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.request("POST", f"/runs/{run_id}/params", json_body=params, idempotent=True)

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.request("POST", f"/runs/{run_id}/tags", json_body=tags, idempotent=True)

    def _log_results(self, run_id: str, results: dict[str, Any]) -> None:
        self.request("POST", f"/runs/{run_id}/results", json_body=results, idempotent=True)

    # -- metrics ---------------------------------------------------------------------------------------------
    def _log_metrics(self, run_id: str, series: list[MetricSeries], batch_id: str | None) -> bool:
        # One id per batch (the caller's, else a fresh one), so the server stores the batch once however
        # often it travels: that makes the append idempotent, retried after a timeout or a dropped
        # connection like any read.
        self.request("POST", f"/runs/{run_id}/metrics", content=wire.encode_series(series),
                     params={"batch_id": batch_id or uuid.uuid4().hex},
                     headers={"Content-Type": wire.METRICS_MEDIA_TYPE}, idempotent=True)
        return True  # the server emits the event (or knows it skipped the batch)

    def _metric_history(self, run_id: str, key: str) -> MetricSeries:
        resp = self.request("GET", f"/runs/{run_id}/metric-history", params={"key": key, "format": "binary"},
                            idempotent=True)
        series = wire.decode_series(resp.content)
        if len(series) != 1:
            raise BackendUnavailableError(f"server sent {len(series)} series for one metric key")
        return series[0]

    # -- artifacts -------------------------------------------------------------------------------------------
    def _add_artifact(self, run_id: str, info: ArtifactInfo) -> None:
        self.request("POST", f"/runs/{run_id}/artifacts", json_body=wire.artifact_out(info), idempotent=True)

    def _list_artifacts(self, run_id: str, prefix: str) -> list[ArtifactInfo]:
        docs = self._json("GET", f"/runs/{run_id}/artifacts", params={"prefix": prefix}, idempotent=True)
        return [wire.artifact_in(d) for d in docs]


def _version() -> str:
    from labvault._version import version

    return version()


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _quote_key(key: str) -> str:
    return quote(key, safe="/")


# -- blobs through the server --------------------------------------------------------------------------------
class _ResponseReader(io.RawIOBase):
    """A streamed download as a binary file; a dropped connection resumes with ``Range`` where it broke."""

    def __init__(self, backend: HTTPBackend, path: str, resp: httpx.Response) -> None:
        self._backend = backend
        self._path = path
        self._resp = resp
        self._iter: Iterator[bytes] = resp.iter_bytes(CHUNK_SIZE)
        self._etag = resp.headers.get("etag")
        self._buf = b""
        self._pos = 0
        self._offset = 0  # bytes handed out so far
        self._resumes = 0

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bytes:
        while True:
            try:
                return next(self._iter, b"")
            except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.TimeoutException) as exc:
                self._resp.close()
                if self._resumes >= self._backend.retries:
                    raise BackendUnavailableError(
                        f"download of {self._path} broke after {self._offset} bytes: {exc}") from exc
                self._resumes += 1
                self._backend._backoff(self._resumes)
                headers = {"Range": f"bytes={self._offset}-"}
                resp = self._backend.request("GET", self._path, headers=headers, stream=True, idempotent=True)
                if self._etag is not None and resp.headers.get("etag") not in (None, self._etag):
                    resp.close()
                    raise BackendUnavailableError(f"{self._path} changed while it was being downloaded") \
                        from exc
                self._resp = resp
                self._iter = resp.iter_bytes(CHUNK_SIZE)
                if resp.status_code == 200:  # the server ignored the range: skip what we have
                    skip = self._offset
                    while skip:
                        chunk = next(self._iter, b"")
                        if not chunk:
                            break
                        if len(chunk) > skip:
                            self._buf, self._pos = chunk[skip:], 0
                            skip = 0
                            return self._buf
                        skip -= len(chunk)

    def readinto(self, buffer: Any) -> int:
        if self._pos >= len(self._buf):
            self._buf, self._pos = self._next_chunk(), 0
            if not self._buf:
                return 0
        n = min(len(buffer), len(self._buf) - self._pos)
        buffer[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        self._offset += n
        return n

    def close(self) -> None:
        self._resp.close()
        super().close()


def _file_chunks(path: Path, start: int = 0, length: int | None = None) -> Iterator[bytes]:
    with path.open("rb") as fh:
        fh.seek(start)
        left = length
        while left is None or left > 0:
            chunk = fh.read(CHUNK_SIZE if left is None else min(CHUNK_SIZE, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


class HTTPBlobStore(BlobStore):
    """The server's blob store seen through its API: content-addressed uploads and verified downloads;
    raw ``put``/``delete`` by key need the admin role."""

    def __init__(self, backend: HTTPBackend) -> None:
        self.backend = backend

    def __repr__(self) -> str:
        return f"HTTPBlobStore({self.backend.base_url!r})"

    # -- raw keys --------------------------------------------------------------------------------------------
    def _put(self, key: str, chunks: Iterator[bytes]) -> int:
        resp = self.backend.request("PUT", f"/blobs/{_quote_key(key)}", content=lambda: chunks, retries=0,
                                    headers={"Content-Type": "application/octet-stream"})
        return int(orjson.loads(resp.content)["size"])

    def _open(self, key: str) -> BinaryIO:
        path = f"/blobs/{_quote_key(key)}"
        resp = self.backend.request("GET", path, stream=True, idempotent=True)
        return io.BufferedReader(_ResponseReader(self.backend, path, resp), CHUNK_SIZE)

    def _exists(self, key: str) -> bool:
        try:
            self.backend.request("HEAD", f"/blobs/{_quote_key(key)}", idempotent=True)
        except NotFoundError:
            return False
        return True

    def _delete(self, key: str) -> None:
        self.backend.request("DELETE", f"/blobs/{_quote_key(key)}", idempotent=True)

    def _list(self, prefix: str) -> Iterator[str]:
        keys = self.backend._json("GET", "/blobs", params={"prefix": prefix}, idempotent=True)
        return iter(keys)

    # -- content ---------------------------------------------------------------------------------------------
    def open_content(self, digest: str) -> BinaryIO:
        """Stream content by digest; reading to the end verifies it (``CorruptDataError`` otherwise)."""
        path = f"/content/{digest}"
        resp = self.backend.request("GET", path, stream=True, idempotent=True)
        raw = _ResponseReader(self.backend, path, resp)
        return io.BufferedReader(VerifyingReader(raw, digest, digest), CHUNK_SIZE)  # type: ignore[arg-type]

    def has_content(self, digest: str) -> bool:
        """Whether the server stores this content already."""
        try:
            self.backend.request("HEAD", f"/content/{digest}", idempotent=True)
        except NotFoundError:
            return False
        return True

    def put_content(self, data: BlobSource) -> tuple[str, int]:
        """Upload ``data`` (bytes, a path or a binary file) to the server, which hashes it while storing it.

        Large files and seekable streams go as resumable uploads (``upload(...)``); in-memory bytes
        the server already has are not sent again.
        """
        if isinstance(data, bytes | bytearray | memoryview):
            payload = bytes(data)
            digest = hashlib.sha256(payload).hexdigest()
            if len(payload) >= CHUNK_SIZE and self.has_content(digest):
                return digest, len(payload)
            if len(payload) >= self.backend.resumable_threshold:
                return self.upload(io.BytesIO(payload), len(payload))
            return self._post_content(payload, digest)
        if isinstance(data, str | os.PathLike):
            path = Path(data)
            if not path.is_file():
                raise InvalidArgumentError(f"artifact source {str(path)!r} is not a readable file")
            size = path.stat().st_size
            if size >= self.backend.resumable_threshold:
                with path.open("rb") as fh:
                    return self.upload(fh, size)
            return self._post_content(lambda: _file_chunks(path))
        seekable = getattr(data, "seekable", None)
        if callable(getattr(data, "read", None)) and callable(seekable) and seekable():
            stream: Any = data
            start = stream.tell()
            size = stream.seek(0, io.SEEK_END) - start
            stream.seek(start)
            if size >= self.backend.resumable_threshold:
                return self.upload(stream, size)
        return self._post_content(iter_source(data), retry=False)

    def _post_content(self, body: bytes | Callable[[], Iterable[bytes]] | Iterator[bytes],
                      digest: str | None = None, retry: bool = True) -> tuple[str, int]:
        headers = {"Content-Type": "application/octet-stream"}
        if digest is not None:
            headers[wire.SHA256_HEADER] = digest
        content: bytes | Callable[[], Iterable[bytes]]
        if isinstance(body, bytes) or callable(body):
            content = body
        else:
            chunks = body
            content = lambda: chunks  # noqa: E731 - a one-shot stream: sent once, never retried
        doc = self.backend._json("POST", "/content", content=content, headers=headers, idempotent=retry,
                                 retries=None if retry else 0)
        return str(doc["digest"]), int(doc["size"])

    def upload(self, fh: BinaryIO, size: int, *, upload_id: str | None = None) -> tuple[str, int]:
        """Send ``size`` bytes of a seekable file from its position as a resumable upload.

        Parts of ``upload_chunk_size`` bytes go one request each; after a failure the client asks the
        server where the upload stands and continues from there. Pass ``upload_id`` to resume an upload
        started earlier (the file must be the same). The server checks the whole file's sha256.
        """
        b = self.backend
        start = fh.tell()
        if upload_id is None:
            doc = b._json("POST", "/uploads", json_body={"size": size})
            upload_id = str(doc["upload_id"])
            offset = 0
        else:
            doc = b._json("GET", f"/uploads/{upload_id}", idempotent=True)
            offset = int(doc["offset"])
        part = max(64 * 1024, min(b.upload_chunk_size, int(doc.get("chunk_max") or b.upload_chunk_size)))
        sha: Any = hashlib.sha256() if offset == 0 else None
        failures = 0
        while offset < size:
            fh.seek(start + offset)
            chunk = fh.read(min(part, size - offset))
            if not chunk:
                raise InvalidArgumentError(f"the file ended at byte {offset} of the announced {size}")
            try:
                reply = b._json("PUT", f"/uploads/{upload_id}", params={"offset": offset}, content=chunk,
                                headers={"Content-Type": "application/octet-stream"}, retries=0)
                new_offset = int(reply["offset"])
            except (BackendUnavailableError, ConflictError):
                failures += 1
                if failures > b.retries:
                    raise
                b._backoff(failures)
                new_offset = int(b._json("GET", f"/uploads/{upload_id}", idempotent=True)["offset"])
            else:
                failures = 0
            if new_offset == offset + len(chunk):
                if sha is not None:
                    sha.update(chunk)
            elif new_offset != offset:
                sha = None  # resumed somewhere else: the server's own digest is what counts
            offset = new_offset
        body = {"sha256": sha.hexdigest()} if sha is not None else {}
        done = b._json("POST", f"/uploads/{upload_id}/complete", json_body=body,
                       timeout=max(b.timeout, 600.0))
        return str(done["digest"]), int(done["size"])


# -- server-sent events --------------------------------------------------------------------------------------
class _SSEFeed(LocalChangeFeed):
    """``watch()`` over the server's ``/events`` stream, read by a background thread."""

    PING = 1.0

    def __init__(self, backend: HTTPBackend) -> None:
        super().__init__(on_close=self._closed)
        self._backend = backend
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="labvault-sse", daemon=True)
        self._thread.start()
        if not self._ready.wait(backend.timeout):
            self.close()
            raise BackendUnavailableError(f"{backend.base_url} did not open its event stream in time")
        if self._error is not None:
            self.close()
            if isinstance(self._error, LabvaultError):
                raise self._error
            raise BackendUnavailableError(
                f"cannot open the event stream of {backend.base_url}: {self._error}") from self._error

    def _closed(self, feed: LocalChangeFeed) -> None:
        if self in self._backend._sse:
            self._backend._sse.remove(self)

    def _run(self) -> None:
        b = self._backend
        client = b._new_client(httpx.Timeout(b.timeout, connect=min(10.0, b.timeout), read=self.PING * 5 + 5))
        try:
            with client.stream("GET", b.api_url + "/events", params={"ping": self.PING}) as resp:
                if resp.status_code != 200:
                    self._error = b._error(resp)
                    return
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
        except Exception as exc:
            if not self._ready.is_set():
                self._error = exc
        finally:
            client.close()
            self._ready.set()
            if not self.closed:
                self.close()  # the stream ended: iteration stops instead of blocking forever
