"""What ``vault.watch()`` and ``vault.subscribe()`` deliver: a store's change events, filtered by kind and
experiment, with the models' own records shown as model events.

A backend's feed (``Backend.watch()``) carries every change of the store, including the runs that keep
the models (``labvault.client.models``: the hidden project ``labvault.models``). ``EventView`` turns those
into what a user asked about:

* a version run of a model finishing (its payload is stored by then) becomes ``model.created`` (version 1)
  or ``model.updated`` (a later version), with ``data = {instance_id, version, model_type, name}`` and
  ``run_id`` the run that logged it (``run.log_model``) when there is one;
* an alias tag set on a model's registry run becomes ``model.alias_set`` (``{instance_id, name, alias,
  version}``);
* every other event of the models' project is dropped, as the project is hidden from listings.

Filters: ``kinds`` takes exact kinds (``"run.finished"``) and families (``"run"`` or ``"run.*"`` for
every ``run.`` kind, ``"model"`` for the three model kinds); ``experiment`` an ``Experiment`` or a name.
Run events carry only the run's id, so the view learns each run's experiment from its ``run.created``
event, or asks the store once per run it did not see created (cached).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from labvault.client.models import MODEL_PROJECT, REGISTRY
from labvault.domain import EVENT_KINDS, MODEL_EVENT_KINDS, ChangeEvent, ExperimentInfo
from labvault.domain import validation as v
from labvault.errors import InvalidArgumentError, LabvaultError, NotFoundError
from labvault.store.feed import ChangeFeed

if TYPE_CHECKING:
    from labvault.client.run import Experiment
    from labvault.store.abc import Backend

__all__ = ["ALL_KINDS", "EventView", "FilteredFeed", "Subscription", "check_kinds"]

log = logging.getLogger("labvault.events")

#: Every kind ``vault.watch()`` can deliver.
ALL_KINDS: tuple[str, ...] = EVENT_KINDS + MODEL_EVENT_KINDS
_FAMILIES = sorted({k.split(".")[0] for k in ALL_KINDS})
_RUN_CACHE = 100_000  # runs whose experiment the view remembers


def check_kinds(kinds: str | Iterable[str] | None) -> frozenset[str] | None:
    """The set of kinds a filter names (families expanded), or None for every kind."""
    if kinds is None:
        return None
    items = [kinds] if isinstance(kinds, str) else list(kinds) if isinstance(kinds, Iterable) else None
    if items is None:
        raise InvalidArgumentError(f"kinds must be a kind, a list of kinds or None, got {v.show(kinds)}")
    out: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise InvalidArgumentError(f"an event kind is a string, got {v.show(item)}")
        family = item[:-2] if item.endswith(".*") else item
        matched = {item} if item in ALL_KINDS else {k for k in ALL_KINDS if k.split(".")[0] == family}
        if not matched:
            raise InvalidArgumentError(
                f"unknown event kind {v.show(item)}: use one of {', '.join(ALL_KINDS)}, or a family "
                f"({', '.join(_FAMILIES)}, also written like 'run.*')")
        out |= matched
    return frozenset(out)


class EventView:
    """Translates and filters one feed's events (see the module docstring)."""

    def __init__(self, backend: Backend, kinds: frozenset[str] | None, experiment: Experiment | str | None
                 ) -> None:
        self.backend = backend
        self.kinds = kinds
        self._experiment_id: str | None = None
        self._experiment_name: str | None = None
        if isinstance(experiment, str):
            self._experiment_name = v.validate_name(experiment, "experiment name")
        elif experiment is not None:
            ident = getattr(experiment, "id", None)
            if not isinstance(ident, str):
                raise InvalidArgumentError(f"experiment must be an Experiment or a name, got "
                                           f"{v.show(experiment)}")
            self._experiment_id = ident
        self._experiments: dict[str, ExperimentInfo | None] = {}
        self._runs: OrderedDict[str, str | None] = OrderedDict()  # run id -> experiment id

    # -- what things are -----------------------------------------------------------------------------------
    def _experiment(self, experiment_id: str | None) -> ExperimentInfo | None:
        if experiment_id is None:
            return None
        if experiment_id not in self._experiments:
            with contextlib.suppress(LabvaultError):
                for info in self.backend.list_experiments():
                    self._experiments[info.id] = info
            self._experiments.setdefault(experiment_id, None)  # deleted meanwhile: ask once only
        return self._experiments[experiment_id]

    def _run_experiment(self, event: ChangeEvent) -> str | None:
        if event.experiment_id is not None or event.run_id is None:
            return event.experiment_id
        if event.run_id not in self._runs:
            try:
                found: str | None = self.backend.get_run(event.run_id).experiment_id
            except (NotFoundError, LabvaultError):
                found = None
            self._remember(event.run_id, found)
        return self._runs[event.run_id]

    def _remember(self, run_id: str, experiment_id: str | None) -> None:
        self._runs[run_id] = experiment_id
        if len(self._runs) > _RUN_CACHE:
            self._runs.popitem(last=False)

    # -- translating ---------------------------------------------------------------------------------------
    def translate(self, event: ChangeEvent) -> list[ChangeEvent]:
        """What this view delivers for one store event (none, it, or model events)."""
        if event.kind == "experiment.created" and event.experiment_id is not None:
            name, project = event.data.get("name"), event.data.get("project")
            if isinstance(name, str) and isinstance(project, str):
                self._experiments[event.experiment_id] = ExperimentInfo(event.experiment_id, name, project,
                                                                        event.time)
        if event.kind == "run.created" and event.run_id is not None:
            self._remember(event.run_id, event.experiment_id)
        experiment_id = self._run_experiment(event)
        info = self._experiment(experiment_id)
        if info is not None and info.project == MODEL_PROJECT:
            return [e for e in self._model_events(event, info) if self._wanted(e, e.experiment_id)]
        if event.kind == "experiment.created" and event.data.get("project") == MODEL_PROJECT:
            return []
        return [event] if self._wanted(event, experiment_id) else []

    def _wanted(self, event: ChangeEvent, experiment_id: str | None) -> bool:
        if self.kinds is not None and event.kind not in self.kinds:
            return False
        if self._experiment_id is not None:
            return experiment_id == self._experiment_id
        if self._experiment_name is not None:
            info = self._experiment(experiment_id)
            return info is not None and info.name == self._experiment_name
        return True

    def _model_events(self, event: ChangeEvent, info: ExperimentInfo) -> list[ChangeEvent]:
        if self.kinds is not None and not self.kinds & set(MODEL_EVENT_KINDS):
            return []
        try:
            if event.kind == "run.finished" and info.name.startswith("model-") and event.run_id:
                return self._version_event(event, info)
            if event.kind == "tags.set" and info.name == REGISTRY and event.run_id:
                return self._alias_events(event)
        except (NotFoundError, LabvaultError, KeyError, ValueError) as exc:
            log.debug("model event from %s not derived: %s", event, exc)
        return []

    def _version_event(self, event: ChangeEvent, info: ExperimentInfo) -> list[ChangeEvent]:
        assert event.run_id is not None
        run = self.backend.get_run(event.run_id)
        source = run.tags.get("source_run")
        source_exp = self._run_experiment(ChangeEvent("run", None, source)) if source else None
        kind = "model.created" if run.number == 1 else "model.updated"
        data = {"instance_id": int(info.name[len("model-"):]), "version": run.number,
                "model_type": str(run.params.get("model_type")), "name": run.name}
        return [ChangeEvent(kind, source_exp, source, data, event.time, event.id)]

    def _alias_events(self, event: ChangeEvent) -> list[ChangeEvent]:
        assert event.run_id is not None
        keys = [k for k in event.data.get("keys", ()) if isinstance(k, str) and k.startswith("alias:")]
        if not keys:
            return []
        entry = self.backend.get_run(event.run_id)
        return [ChangeEvent("model.alias_set", None, None,
                            {"instance_id": entry.number, "name": entry.name, "alias": k[len("alias:"):],
                             "version": int(entry.tags[k])}, event.time, event.id) for k in keys]


class FilteredFeed(ChangeFeed):
    """A backend feed seen through an ``EventView`` (what ``vault.watch(kinds=, experiment=)`` returns)."""

    def __init__(self, inner: ChangeFeed, view: EventView) -> None:
        self.inner = inner
        self.view = view
        self._ready: deque[ChangeEvent] = deque()

    def get(self, timeout: float | None = None) -> ChangeEvent | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            event = self.inner.get(timeout=left)
            if event is None:
                return None
            self._ready.extend(self.view.translate(event))
            if deadline is not None and time.monotonic() >= deadline and not self._ready:
                return None
        return self._ready.popleft()

    @property
    def closed(self) -> bool:
        """Whether the feed was closed (or its stream ended)."""
        return bool(getattr(self.inner, "closed", False))

    def close(self) -> None:
        self.inner.close()


class Subscription:
    """A background thread calling ``callback(event)`` for each event of a feed (``vault.subscribe``).

    The callback runs on the subscription's own thread, one event at a time, in the order of the feed.
    An exception it raises is logged (logger ``labvault.events``) and counted in ``errors``; the next
    event still arrives. ``last_id`` is the id of the last event handed over (``vault.subscribe(...,
    after=sub.last_id)`` resumes there on stores with a change log). ``close()`` stops it (also as a
    context manager); it waits for a callback in progress unless called from the callback itself.
    """

    def __init__(self, feed: ChangeFeed, callback: Callable[[ChangeEvent], Any]) -> None:
        if not callable(callback):
            raise InvalidArgumentError(f"callback must be callable, got {v.show(callback)}")
        self.feed = feed
        self.callback = callback
        self.delivered = 0
        self.errors = 0
        self.last_id: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labvault-subscription", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called or the feed ended."""
        return self._stop.is_set() or not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event = self.feed.get(timeout=0.25)
            except Exception:
                log.exception("labvault subscription: reading the feed failed; the subscription ends")
                return
            if event is None:
                if getattr(self.feed, "closed", False):
                    return
                continue
            try:
                self.callback(event)
            except Exception:
                self.errors += 1
                log.exception("labvault subscription callback %r raised on %s", self.callback, event.kind)
            self.delivered += 1
            self.last_id = event.id or self.last_id

    def close(self) -> None:
        """Stop delivering; safe to call twice."""
        self._stop.set()
        self.feed.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
