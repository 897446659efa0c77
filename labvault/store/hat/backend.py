"""The Hat backend: every labvault record is an event on a Hat event server (PyPI ``hat-event``).

URI (options in the query string or as keyword arguments of ``labvault.open``)::

    hat://host[:port][?namespace=default&model_prefix=a/b&artifacts=file:///dir&timeout=10]

``port`` defaults to 23012 (Hat's eventer port). Options: ``namespace`` (the vault's name on the server,
letters, digits, ``_ - .``; default ``default``), ``model_prefix`` (``/``-separated event type prefix
of aimm's model events; without it, models are kept in labvault's form only), ``artifacts`` (a blob
store URL for artifact bytes), ``timeout`` (seconds a request may take, default 10) and
``client_name`` (how the connection introduces itself, default ``labvault``).

Decisions:

* **Event-sourced.** Every write registers one event of type ``('labvault', namespace, kind)`` (see
  ``labvault.store.hat.records`` for the kinds and payloads); nothing is ever updated in place. A read
  brings an in-process replica up to date first: one timeseries query (ascending, ordered by the
  server's timestamp) from the position of the last event it applied, so a reader sees every write
  acknowledged before it, by any process. The replica lives as long as the backend object; a new
  process replays the namespace once on first use.
* **Races are decided by the server's total order.** Hat has no compare-and-swap, so the replica
  applies events in the order the server stored them (its event ids grow with every registration) and
  every process applies the same rules: a run's number is 1 + the count of runs its experiment had
  accepted before its creation event (so numbers are dense and unique across processes), the first
  creation of an experiment name wins, and a params event that would change a stored param is rejected
  whole (``ConflictError``) so write-once holds across processes. A writer registers its event, waits
  for the server's answer (the event's id), replays up to that id and answers from its event's outcome.
* **Server configuration.** The server must keep every ``labvault/*`` event: its LMDB backend needs a
  timeseries partition ``{order_by: TIMESTAMP, subscriptions: [[labvault, '*']]}`` without a limit, and
  it must be the first ``TIMESTAMP`` partition matching ``labvault/*``. For aimm interop, the latest
  database must hold the ``model_prefix`` events (``latest: {subscriptions: [[a, b, '*']]}``). The first
  connection of a backend checks with a probe event that labvault events are kept, and raises
  ``BackendUnavailableError`` saying what to add when they are not.
* **Change feed.** After each write a notice (the ``ChangeEvent`` as JSON) is registered, without
  waiting, as an event of type ``('labvault-feed', namespace)``. ``watch()`` opens a subscription to
  that type (a second eventer connection), so feeds see every process's changes; when the server keeps
  the notices (a timeseries partition for ``[labvault-feed, '*']``, with a limit), ``watch(after=id)``
  replays those after ``id`` first (``labvault.store.hat.feed``).
* **Artifacts** go to a paired blob store: ``artifacts=`` (a ``BlobStore`` or the URI option), else a
  content-addressed ``FileBlobStore`` in ``<user data dir>/labvault/hat/<host>-<port>/blobs`` (on Linux
  ``~/.local/share/labvault/hat/...``); every vault on that server shares it from one machine. Several
  machines need a shared store (``artifacts=s3://...``).
* **Models** are kept as labvault keeps them on every store (runs of a hidden project) and, when
  ``model_prefix`` is set, also as aimm's events: type ``[*model_prefix, str(instance_id)]``, source
  timestamp None, JSON payload ``{"type": model_type, "instance": base64 of the payload bytes}``
  (``model_saved``). ``foreign_models`` reads aimm's latest events back so the model registry can show
  models aimm wrote (see ``labvault.client.models``).
* **Errors.** ``labvault.store.hat.connection`` turns connection failures and timeouts into
  ``BackendUnavailableError`` naming host:port; a registration is never re-sent after a lost connection.
* **Durability** is the server's: LMDB flushes every ``flush_period`` seconds of its configuration.
"""

from __future__ import annotations

import base64
import os
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

from hat.event import common

from labvault import blobs as blob_stores
from labvault._uri import check_options, float_option
from labvault.blobs.abc import BlobStore
from labvault.blobs.local import FileBlobStore
from labvault.domain import ArtifactInfo, ChangeEvent, ExperimentInfo, MetricSeries, RunInfo, now
from labvault.errors import (
    AlreadyExistsError,
    BackendUnavailableError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
)
from labvault.store.abc import Backend, ForeignModel
from labvault.store.feed import ChangeFeed
from labvault.store.hat.connection import HatConnection
from labvault.store.hat.feed import ResumingFeed, notice_event, parse_notice_id
from labvault.store.hat.records import METRICS_TYPE, ROOT, Outcome, Replica, pack_metrics

__all__ = ["DEFAULT_PORT", "FEED_ROOT", "HatBackend"]

DEFAULT_PORT = 23012
#: The first segment of the change-feed notices' event type.
FEED_ROOT = "labvault-feed"
_OPTIONS = ("namespace", "model_prefix", "artifacts", "timeout", "client_name")
_OUTCOMES = 4096
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


class HatBackend(Backend, scheme="hat"):
    """Records as events on a Hat event server, replayed into an in-process replica (see the module doc)."""

    persistent: ClassVar[bool] = True
    multiprocess: ClassVar[bool] = True
    #: ``watch(after=)`` replays the change notices the server keeps (docs/backends.md: a partition for them)
    event_log: ClassVar[bool] = True
    supports_events: ClassVar[bool] = True
    config_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "properties": {
            "backend": {"const": "hat"},
            "module": {"type": "string"},
            "uri": {"type": "string", "pattern": "^[hH][aA][tT]://"},
            "url": {"type": "string", "pattern": "^[hH][aA][tT]://"},
            "namespace": {"type": "string"},
            "model_prefix": {"type": ["string", "array"]},
            "artifacts": {"type": "string"},
            "timeout": {"type": "number", "exclusiveMinimum": 0},
            "client_name": {"type": "string"},
        },
        "additionalProperties": False,
    }

    def __init__(self, uri: str, host: str, port: int, *, namespace: str = "default",
                 model_prefix: tuple[str, ...] | None = None, blobs: BlobStore | None = None,
                 timeout: float = 10.0, client_name: str = "labvault") -> None:
        super().__init__(uri, blobs)
        self._given_blobs = blobs is not None
        self.host, self.port, self.namespace = host, port, namespace
        self.model_prefix = model_prefix
        self._conn = HatConnection(host, port, client_name, timeout)
        self._replica = Replica()
        self._lock = threading.RLock()  # the replica and its refreshes
        #: The outcomes of the last ``_OUTCOMES`` events applied, by event id (writers read theirs here).
        self._outcomes: dict[Any, Outcome] = {}
        self._checked = False
        self._subscriber: Any = None

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_uri(cls, uri: str, *, artifacts: BlobStore | None = None, **options: Any) -> HatBackend:
        """``hat://host[:port]?namespace=...&model_prefix=a/b``; options as documented. No I/O."""
        parts = urlsplit(uri)
        if parts.scheme.lower() != "hat" or not parts.hostname:
            raise InvalidArgumentError(f"a Hat URI looks like hat://host:port, got {uri!r}")
        if parts.path not in ("", "/"):
            raise InvalidArgumentError(f"a Hat URI has no path (use ?namespace=...), got {uri!r}")
        merged: dict[str, Any] = {k: unquote(val) for k, val in parse_qsl(parts.query)}
        merged.update(options)
        check_options("hat", merged, _OPTIONS)
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise InvalidArgumentError(f"bad port in Hat URI {uri!r}: {exc}") from None
        namespace = _segment(str(merged.get("namespace", "default")), "namespace")
        prefix = merged.get("model_prefix")
        raw = prefix.split("/") if isinstance(prefix, str) else prefix
        model_prefix = None if raw is None else tuple(_segment(str(p), "model_prefix segment") for p in raw)
        if model_prefix == ():
            raise InvalidArgumentError("hat option model_prefix must name at least one segment")
        store = artifacts
        if store is None and merged.get("artifacts"):
            store = blob_stores.open(str(merged["artifacts"]))
        timeout = float_option("hat", "timeout", merged.get("timeout", 10.0), 0.0, 3600.0,
                               exclusive_low=True)
        return cls(uri, parts.hostname, port, namespace=namespace, model_prefix=model_prefix, blobs=store,
                   timeout=timeout, client_name=str(merged.get("client_name", "labvault")))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, artifacts: BlobStore | None = None) -> Backend:
        """``{"backend": "hat", "uri": "hat://...", ...}``; the options as in the URI (``artifacts`` as a
        blob store URL, ``model_prefix`` also as a list of segments)."""
        rest = dict(config)
        url = rest.pop("artifacts", None)
        if artifacts is None and isinstance(url, str):
            artifacts = blob_stores.open(url)
        return super().from_config(rest, artifacts=artifacts)

    def _default_blobs(self) -> BlobStore:
        return FileBlobStore(default_artifacts_dir(self.host, self.port))

    def __repr__(self) -> str:
        return f"HatBackend('hat://{self._conn.where}', namespace={self.namespace!r})"

    def __getstate__(self) -> dict[str, Any]:
        """The settings (no connection, no replica): a pickled backend reconnects and replays on first use.
        A blob store that has a URL travels as its URL."""
        blobs: Any = self._blobs if self._given_blobs else None
        if blobs is not None and isinstance(getattr(blobs, "url", None), str):
            blobs = blobs.url
        return {"uri": self.uri, "host": self.host, "port": self.port, "namespace": self.namespace,
                "model_prefix": self.model_prefix, "blobs": blobs, "timeout": self._conn.timeout,
                "client_name": self._conn.client_name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        blobs = state["blobs"]
        self.__init__(  # type: ignore[misc]
            state["uri"], state["host"], state["port"], namespace=state["namespace"],
            model_prefix=state["model_prefix"], timeout=state["timeout"], client_name=state["client_name"],
            blobs=blob_stores.open(blobs) if isinstance(blobs, str) else blobs)

    def close(self) -> None:
        """Close the feeds, the eventer connections and the loop thread. Safe to call twice."""
        with self._feeds_lock:
            feeds = list(self._feeds)
        for feed in feeds:
            feed.close()
        super().close()
        self._conn.close()
        self._subscriber = None

    # -- events ---------------------------------------------------------------------------------------------
    def _type(self, kind: str) -> tuple[str, ...]:
        return (ROOT, self.namespace, kind)

    def _check_server(self) -> None:
        """Once per backend: a probe event must come back from a timeseries query, or the server does not
        keep labvault's events."""
        if self._checked:
            return
        (probe,) = self._conn.register(
            [common.RegisterEvent(self._type("probe"), None, common.EventPayloadJson({"t": now()}))],
            "a probe event")
        found = self._conn.query(common.QueryTimeseriesParams(
            event_types=[self._type("probe")], t_from=probe.timestamp, t_to=probe.timestamp,
            order=common.Order.ASCENDING, order_by=common.OrderBy.TIMESTAMP), "the probe query")
        if not any(e.id == probe.id for e in found.events):
            raise BackendUnavailableError(
                f"the Hat event server {self._conn.where} does not keep labvault's events: give its LMDB "
                "backend a timeseries partition {order_by: TIMESTAMP, subscriptions: [[labvault, '*']]} "
                "without a limit (see docs/backends.md)")
        self._checked = True

    def _refresh(self) -> None:
        """Apply every event of the namespace the replica has not seen yet, in server order."""
        with self._lock:
            self._check_server()
            replica = self._replica
            more = True
            while more:
                t_from, last = replica.position if replica.position is not None else (None, None)
                result = self._conn.query(common.QueryTimeseriesParams(
                    event_types=[(ROOT, self.namespace, "*")], t_from=t_from, last_event_id=last,
                    order=common.Order.ASCENDING, order_by=common.OrderBy.TIMESTAMP), "a replay query")
                for event in result.events:
                    self._outcomes[event.id] = replica.apply(event)
                    if len(self._outcomes) > _OUTCOMES:
                        del self._outcomes[next(iter(self._outcomes))]
                more = bool(result.more_follows) and bool(result.events)

    def _write(self, kind: str, doc: dict[str, Any] | None = None, binary: bytes | None = None) -> Outcome:
        """Register one record event, replay up to it and return its outcome."""
        with self._lock:
            self._check_server()
        payload = (common.EventPayloadBinary(METRICS_TYPE, binary) if binary is not None
                   else common.EventPayloadJson(doc))
        (event,) = self._conn.register([common.RegisterEvent(self._type(kind), None, payload)],
                                       f"a {kind} event")
        with self._lock:
            self._refresh()
            outcome = self._outcomes.pop(event.id, None)
        if outcome is None:
            raise BackendUnavailableError(
                f"the Hat event server {self._conn.where} acknowledged a {kind} event but does not return "
                "it (is labvault/* kept by a timeseries partition, and the server's clock steady?)")
        return outcome

    def _publish(self, event: ChangeEvent) -> None:
        notice = common.RegisterEvent((FEED_ROOT, self.namespace), None,
                                      common.EventPayloadJson(event.to_json()))
        self._conn.send([notice], "a change notice")

    def _watch(self, after: str | None) -> ChangeFeed:
        """A feed from a subscription to the namespace's change notices; with ``after``, first the notices
        after that one which the server keeps (``labvault.store.hat.feed``)."""
        if after is None:
            feed = super()._watch(None)
        else:
            position = parse_notice_id(after)
            feed = ResumingFeed(on_close=self._drop_feed)
            with self._feeds_lock:
                self._feeds.append(feed)
        with self._lock:
            if self._subscriber is None:
                try:
                    self._subscriber = self._conn.subscribe([(FEED_ROOT, self.namespace)], self._notified)
                except BaseException:
                    feed.close()
                    raise
        if isinstance(feed, ResumingFeed):
            try:
                feed.finish(self._notices_after(*position))
            except BaseException:
                feed.close()
                raise
        return feed

    def _notices_after(self, t_from: Any, last: Any) -> list[ChangeEvent]:
        """The change notices the server keeps after the one at (``t_from``, ``last``), oldest first."""
        out: list[ChangeEvent] = []
        more = True
        while more:
            result = self._conn.query(common.QueryTimeseriesParams(
                event_types=[(FEED_ROOT, self.namespace)], t_from=t_from, last_event_id=last,
                order=common.Order.ASCENDING, order_by=common.OrderBy.TIMESTAMP), "a change-feed replay")
            for event in result.events:
                change = notice_event(event)
                if change is not None:
                    out.append(change)
                t_from, last = event.timestamp, event.id
            more = bool(result.more_follows) and bool(result.events)
        return out

    def _notified(self, events: list[Any]) -> None:
        for event in events:
            change = notice_event(event)
            if change is not None:
                self._deliver_local(change)

    # -- experiments ----------------------------------------------------------------------------------------
    def _ensure_experiment(self, name: str, project: str) -> ExperimentInfo:
        with self._lock:
            self._refresh()
            found = self._replica.by_name.get((project, name))
            if found is not None:
                return self._replica.experiments[found]
        exp_id = uuid.uuid4().hex
        outcome = self._write("experiment", {"id": exp_id, "name": name, "project": project,
                                             "created_at": now()})
        with self._lock:
            winner = exp_id if outcome.status == "ok" else outcome.detail
            return self._replica.experiments[winner]

    def _list_experiments(self, project: str | None) -> list[ExperimentInfo]:
        with self._lock:
            self._refresh()
            return [e for e in self._replica.experiments.values() if project is None or e.project == project]

    def _delete_experiment(self, experiment_id: str) -> None:
        _raise_unless_ok(self._write("experiment-deleted", {"id": experiment_id}))

    # -- runs -----------------------------------------------------------------------------------------------
    def _create_run(
        self, experiment_id: str, name: str | None, parent_id: str | None, start_time: float,
        params: dict[str, Any], tags: dict[str, str], *, run_id: str | None = None,
    ) -> RunInfo:
        new_id = run_id or uuid.uuid4().hex
        outcome = self._write("run", {"id": new_id, "experiment_id": experiment_id, "name": name,
                                      "parent_id": parent_id, "start_time": start_time, "params": params,
                                      "tags": tags})
        _raise_unless_ok(outcome)
        return self._get_run(new_id)

    def _data(self, run_id: str, refresh: bool = True) -> Any:
        with self._lock:
            if refresh:
                self._refresh()
            data = self._replica.run(run_id)
        if data is None:
            raise NotFoundError(f"run {run_id} not found")
        return data

    def _get_run(self, run_id: str) -> RunInfo:
        with self._lock:
            return _copy_run(self._data(run_id).info)

    def _list_runs(self, experiment_ids: list[str]) -> list[RunInfo]:
        with self._lock:
            self._refresh()
            replica = self._replica
            out = [_copy_run(replica.runs[r].info) for e in dict.fromkeys(experiment_ids)
                   for r in replica.exp_runs.get(e, ())]
        out.sort(key=lambda r: (r.start_time, r.experiment_id, r.number))
        return out

    def _update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        _raise_unless_ok(self._write("run-update", {"run": run_id, "fields": fields}))

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        _raise_unless_ok(self._write("params", {"run": run_id, "params": params}))

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        _raise_unless_ok(self._write("tags", {"run": run_id, "tags": tags}))

    def _log_results(self, run_id: str, results: dict[str, Any]) -> None:
        _raise_unless_ok(self._write("results", {"run": run_id, "results": results}))

    def _log_metrics(self, run_id: str, series: list[MetricSeries], batch_id: str | None) -> bool:
        outcome = self._write("metrics", binary=pack_metrics(run_id, batch_id, series))
        if outcome.status == "duplicate":
            return False
        _raise_unless_ok(outcome)
        return True

    def _metric_history(self, run_id: str, key: str) -> MetricSeries:
        with self._lock:
            self._data(run_id)
            return self._replica.history(run_id, key)

    # -- artifacts ------------------------------------------------------------------------------------------
    def _add_artifact(self, run_id: str, info: ArtifactInfo) -> None:
        self._add_artifacts(run_id, [info])

    def _add_artifacts(self, run_id: str, infos: list[ArtifactInfo]) -> None:
        items = [[i.key, i.size, i.digest, i.created_at] for i in infos]
        _raise_unless_ok(self._write("artifacts", {"run": run_id, "items": items}))

    def _list_artifacts(self, run_id: str, prefix: str) -> list[ArtifactInfo]:
        with self._lock:
            data = self._data(run_id)
            return [a for a in data.artifacts.values() if a.key.startswith(prefix)]

    # -- models in aimm's form ------------------------------------------------------------------------------
    def model_saved(self, instance_id: int, model_type: str, data: bytes) -> None:
        """Register the version as aimm's model event ``[*model_prefix, str(instance_id)]`` (when the URI
        names a ``model_prefix``), so aimm's event backend on the same server reads it."""
        if self.model_prefix is None:
            return
        payload = {"type": model_type, "instance": base64.b64encode(data).decode("ascii")}
        self._conn.register([common.RegisterEvent((*self.model_prefix, str(instance_id)), None,
                                                  common.EventPayloadJson(payload))], "an aimm model event")

    def foreign_models(self) -> list[ForeignModel]:
        """The latest aimm model event of every instance id under ``model_prefix`` (none without one)."""
        if self.model_prefix is None:
            return []
        n = len(self.model_prefix)
        found = self._conn.query(common.QueryLatestParams([(*self.model_prefix, "*")]), "the aimm models")
        out = []
        for event in found.events:
            doc = getattr(event.payload, "data", None)
            tail = event.type[n:]
            if len(tail) != 1 or not tail[0].isdigit() or not isinstance(doc, dict):
                continue
            try:
                data = base64.b64decode(str(doc["instance"]).encode("ascii"), validate=True)
            except (KeyError, ValueError):
                continue
            when = event.timestamp.s + event.timestamp.us / 1e6
            out.append(ForeignModel(int(tail[0]), str(doc.get("type")), data, when))
        return sorted(out, key=lambda m: m.instance_id)


def _raise_unless_ok(outcome: Outcome) -> None:
    if outcome.status == "ok":
        return
    if outcome.status == "missing":
        raise NotFoundError(outcome.detail)
    if outcome.status == "exists":
        raise AlreadyExistsError(outcome.detail)
    if outcome.status == "conflict":
        raise ConflictError(outcome.detail)
    raise InvalidArgumentError(f"the Hat server's copy of the event was not applied: {outcome.detail}")


def _copy_run(info: RunInfo) -> RunInfo:
    return RunInfo(id=info.id, experiment_id=info.experiment_id, number=info.number, name=info.name,
                   parent_id=info.parent_id, status=info.status, start_time=info.start_time,
                   end_time=info.end_time, error=info.error, heartbeat=info.heartbeat,
                   params=_deep(info.params), tags=dict(info.tags), metrics=dict(info.metrics),
                   results=_deep(info.results))


def _deep(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep(val) for k, val in value.items()}
    if isinstance(value, list):
        return [_deep(val) for val in value]
    return value


def _segment(value: str, what: str) -> str:
    if not value or len(value) > 100 or not _NAME_CHARS.issuperset(value):
        raise InvalidArgumentError(f"hat {what} {value!r} must be 1 to 100 letters, digits, '_', '-' or '.'")
    return value


def default_artifacts_dir(host: str, port: int) -> Path:
    """Where a Hat vault keeps artifact bytes when no ``artifacts=`` store is given: a content-addressed
    folder in the user data directory, one per server address."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    if os.name == "nt":  # pragma: no cover - Windows
        base = os.environ.get("LOCALAPPDATA") or base
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in host)
    return Path(base) / "labvault" / "hat" / f"{safe}-{port}" / "blobs"
