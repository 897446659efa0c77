"""``HTTPBackend``: a vault on a labvault server (``labvault.open("https://host:8080", token=...)``).

Every backend call is one request to the server's REST API (``/api/v1``) through
``labvault.wire.transport.APIClient``; a run's buffered metrics go in one binary request per flush.
Artifacts stream both ways through the server's blob store (``labvault.blobs.http.HTTPBlobStore``):
uploads by content (the server computes the sha256), files from 32 MB on as resumable uploads that
survive a dropped connection, downloads verified against their digest and resumed with ``Range`` after a
dropped connection.

The token comes from ``token=``, else ``$LABVAULT_TOKEN``, else what ``labvault login URL`` stored for
that server (``labvault.store.http.credentials``). Connection failures raise ``BackendUnavailableError``;
an error the server reports comes back as the same ``labvault.errors`` class with the server's message.
Idempotent calls (reads, get-or-create, params, tags, results, run updates, uploads of content, and metric
appends, which carry a batch id the server applies once) are retried with backoff after a timeout, a
dropped connection or a 502/503/504; creations are retried only when the connection could not be made at
all.

``watch()`` reads the server's event stream (server-sent events, ``labvault.store.http.events``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from labvault import wire
from labvault._uri import check_options
from labvault.blobs.abc import BlobStore
from labvault.blobs.http import RESUMABLE_THRESHOLD, UPLOAD_CHUNK, HTTPBlobStore
from labvault.domain import ArtifactInfo, ExperimentInfo, MetricSeries, RunInfo
from labvault.errors import BackendUnavailableError, InvalidArgumentError
from labvault.store.abc import Backend
from labvault.store.feed import LocalChangeFeed
from labvault.store.http.credentials import load_token, normalize_url
from labvault.store.http.events import SSEFeed
from labvault.wire.transport import APIClient

if TYPE_CHECKING:
    from labvault.query import Expr, OrderKey

__all__ = ["HTTPBackend"]

_OPTIONS = ("token", "timeout", "retries", "verify", "transport", "upload_chunk_size", "resumable_threshold")


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
    event_log: ClassVar[bool] = True  # the server replays from its event hub or its store's log

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
        base_url = normalize_url(uri) if transport is None else uri.rstrip("/")
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise InvalidArgumentError("token must be a non-empty string")
        #: Every request to the server goes through this client (shared with the blob store).
        self.api = APIClient(base_url, token=self._find_token if token is None else token,
                                    timeout=timeout, retries=retries, verify=verify, transport=transport)
        self.upload_chunk_size = int(upload_chunk_size)
        self.resumable_threshold = int(resumable_threshold)
        self._sse: list[SSEFeed] = []

    @classmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> HTTPBackend:
        """``http(s)://host:port[/prefix]``; options: token, timeout, retries, verify (bool or CA file)."""
        check_options("http", options, _OPTIONS)
        return cls(uri, blobs=artifacts, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def _find_token(self) -> str | None:
        """The token when none was passed: ``$LABVAULT_TOKEN``, else the one ``labvault login`` stored."""
        return os.environ.get("LABVAULT_TOKEN") or load_token(self.base_url)

    # -- the connection (see APIClient) ----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The server's URL (``scheme://host:port[/prefix]``)."""
        return self.api.base_url

    @property
    def api_url(self) -> str:
        """The URL of the server's REST API (``base_url`` + ``/api/v1``)."""
        return self.api.api_url

    @property
    def timeout(self) -> float:
        """Seconds a request may take."""
        return self.api.timeout

    @property
    def retries(self) -> int:
        """How often an idempotent call is sent again after a failure."""
        return self.api.retries

    @property
    def verify(self) -> bool | str:
        """TLS verification: True, False or a CA file or directory."""
        return self.api.verify

    @property
    def client(self) -> httpx.Client:
        """The shared HTTP client (created on first use: construction does no I/O)."""
        return self.api.client

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One API call with error translation and retries: ``APIClient.request`` (its keyword arguments:
        json_body, content, params, headers, idempotent, stream, timeout, retries)."""
        return self.api.request(method, path, **kw)

    # -- server ----------------------------------------------------------------------------------------------
    def check_online(self, timeout: float = 3.0) -> bool:
        """Whether the server answers its health check (no exception either way)."""
        return self.api.check_online(timeout)

    def server_info(self) -> dict[str, Any]:
        """The server's version, backend kind, features, auth mode and who this token belongs to."""
        info = self.api.json("GET", "/info", idempotent=True)
        assert isinstance(info, dict)
        return info

    def _default_blobs(self) -> BlobStore:
        return HTTPBlobStore(self.api, upload_chunk_size=self.upload_chunk_size,
                             resumable_threshold=self.resumable_threshold)

    def sync(self) -> None:
        """Nothing to do: the server group-commits its own store."""

    def close(self) -> None:
        for feed in list(self._sse):
            feed.close()
        self.api.close()
        super().close()

    # -- change feed -----------------------------------------------------------------------------------------
    def _emit(self, kind: str, experiment_id: str | None = None, run_id: str | None = None,
              **data: Any) -> None:
        """The server emits every event; the client has nothing to add."""

    def _watch(self, after: str | None) -> SSEFeed:
        feed = SSEFeed(self.api, on_close=self._sse_closed, after=after)
        self._sse.append(feed)
        return feed

    def _sse_closed(self, feed: LocalChangeFeed) -> None:
        if feed in self._sse:
            self._sse.remove(feed)

    # -- experiments -----------------------------------------------------------------------------------------
    def _ensure_experiment(self, name: str, project: str) -> ExperimentInfo:
        body = {"name": name, "project": project}
        doc = self.api.json("POST", "/experiments", json_body=body, idempotent=True)
        return wire.experiment_in(doc)

    def _list_experiments(self, project: str | None) -> list[ExperimentInfo]:
        params = {} if project is None else {"project": project}
        docs = self.api.json("GET", "/experiments", params=params, idempotent=True)
        return [wire.experiment_in(d) for d in docs]

    def _delete_experiment(self, experiment_id: str) -> None:
        self.api.request("DELETE", f"/experiments/{experiment_id}")

    # -- runs ------------------------------------------------------------------------------------------------
    def _create_run(
        self, experiment_id: str, name: str | None, parent_id: str | None, start_time: float,
        params: dict[str, Any], tags: dict[str, str], *, run_id: str | None = None,
    ) -> RunInfo:
        body = {"name": name, "parent_id": parent_id, "start_time": start_time, "params": params,
                "tags": tags}
        if run_id is not None:
            body["id"] = run_id
        return wire.run_in(self.api.json("POST", f"/experiments/{experiment_id}/runs", json_body=body))

    def _get_run(self, run_id: str) -> RunInfo:
        return wire.run_in(self.api.json("GET", f"/runs/{run_id}", idempotent=True))

    def _list_runs(self, experiment_ids: list[str]) -> list[RunInfo]:
        if not experiment_ids:
            return []
        return self._post_search({"experiment_ids": experiment_ids})

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
        return self._post_search(body)

    def _post_search(self, body: dict[str, Any]) -> list[RunInfo]:
        docs = self.api.json("POST", "/runs/search", json_body=body, idempotent=True)
        return [wire.run_in(d) for d in docs]

    def _update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        body = {k: val for k, val in fields.items() if val is not None}
        cleared = sorted(k for k, val in fields.items() if val is None)
        if cleared:  # an empty field travels as a name in "clear" (a null means "unchanged" on the wire)
            body["clear"] = cleared
        self.api.request("PATCH", f"/runs/{run_id}", json_body=body, idempotent=True)

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.api.request("POST", f"/runs/{run_id}/params", json_body=params, idempotent=True)

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.api.request("POST", f"/runs/{run_id}/tags", json_body=tags, idempotent=True)

    def _log_results(self, run_id: str, results: dict[str, Any]) -> None:
        self.api.request("POST", f"/runs/{run_id}/results", json_body=results, idempotent=True)

    # -- metrics ---------------------------------------------------------------------------------------------
    def _log_metrics(self, run_id: str, series: list[MetricSeries], batch_id: str | None) -> bool:
        # One id per batch (the caller's, else a fresh one), so the server stores the batch once however
        # often it travels: that makes the append idempotent, retried after a timeout or a dropped
        # connection like any read.
        self.api.request("POST", f"/runs/{run_id}/metrics", content=wire.encode_series(series),
                         params={"batch_id": batch_id or uuid.uuid4().hex},
                         headers={"Content-Type": wire.METRICS_MEDIA_TYPE}, idempotent=True)
        return True  # the server emits the event (or knows it skipped the batch)

    def _metric_history(self, run_id: str, key: str) -> MetricSeries:
        resp = self.api.request("GET", f"/runs/{run_id}/metric-history",
                                params={"key": key, "format": "binary"}, idempotent=True)
        series = wire.decode_series(resp.content)
        if len(series) != 1:
            raise BackendUnavailableError(f"server sent {len(series)} series for one metric key")
        return series[0]

    # -- artifacts -------------------------------------------------------------------------------------------
    def _add_artifact(self, run_id: str, info: ArtifactInfo) -> None:
        self.api.request("POST", f"/runs/{run_id}/artifacts", json_body=wire.artifact_out(info),
                         idempotent=True)

    def _list_artifacts(self, run_id: str, prefix: str) -> list[ArtifactInfo]:
        docs = self.api.json("GET", f"/runs/{run_id}/artifacts", params={"prefix": prefix}, idempotent=True)
        return [wire.artifact_in(d) for d in docs]
