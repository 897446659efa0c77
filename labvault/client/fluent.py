"""The module-level API, as MLflow and W&B users type it: ``labvault.start_run(...)``, then
``labvault.log_metric(...)`` with no run object in sight.

    import labvault
    with labvault.start_run(experiment="mnist", params={"lr": 0.1}):
        labvault.log_metric("loss", 0.3)
        with labvault.start_run(name="fold-1"):   # nested: a child of the run around it
            labvault.log_metric("loss", 0.4)       # goes to the innermost run

Each thread has its own stack of active runs (as MLflow's): ``start_run`` pushes, ending the run (the
``with`` block, ``labvault.end_run()`` or ``run.end()``) pops, and the module-level logging functions
write to the top of the calling thread's stack. A run started while another is active in the same thread
is its child unless ``parent`` says otherwise. To log from worker threads, hand them the ``Run`` object
(its methods are safe across threads) or start a run in each.

The runs live on ``labvault.open(uri)``: ``uri`` given to ``start_run``, else ``$LABVAULT_URI``, else the
embedded default ``./labvault-data``; each store is opened once per process and shared by every thread.
Runs still active at interpreter exit are ended: ``finished``, or ``failed`` with the error when the
program ends on an uncaught exception.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from labvault.domain.validation import escape_error_text
from labvault.errors import NotFoundError

if TYPE_CHECKING:
    from labvault.blobs.abc import BlobSource
    from labvault.client.run import Run
    from labvault.client.vault import Vault

__all__ = [
    "active_run",
    "end_run",
    "log_artifact",
    "log_metric",
    "log_metrics",
    "log_param",
    "log_params",
    "log_result",
    "set_tag",
    "set_tags",
    "start_run",
]

_local = threading.local()
_vaults: dict[str | None, Vault] = {}
_vaults_lock = threading.Lock()
#: Every run started here and not yet seen ended, across threads (for the exit handler).
_started: list[Run] = []


def _stack() -> list[Run]:
    """The calling thread's active runs, innermost last, without the ones that have ended since."""
    stack: list[Run] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    while stack and not stack[-1]._active:
        stack.pop()
    return stack


def _vault(uri: str | None) -> Vault:
    """The store for ``uri`` (None: ``$LABVAULT_URI`` or the default), opened once per process."""
    import labvault  # lazy: cycle labvault -> labvault.client -> labvault

    key = uri if uri is not None else (os.environ.get("LABVAULT_URI") or None)
    with _vaults_lock:
        vault = _vaults.get(key)
        if vault is None or vault._closed:
            vault = _vaults[key] = labvault.open(key)
        return vault


def start_run(
    experiment: str | None = None,
    name: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    parent: Run | str | None = None,
    *,
    project: str = "default",
    uri: str | None = None,
    run_id: str | None = None,
    resume: bool = False,
) -> Run:
    """Start a run and make it the calling thread's active run; use it as a context manager.

    ``experiment`` defaults to ``$LABVAULT_EXPERIMENT``, else the experiment around an active run, else
    ``"default"``. ``parent`` defaults to the thread's active run (nested ``with`` blocks make a tree).
    ``run_id`` and ``resume`` are ``Experiment.start_run``'s (resume a run by id). Returns the ``Run``.
    """
    stack = _stack()
    outer = stack[-1] if stack else None
    vault = outer.vault if outer is not None and uri is None else _vault(uri)
    if experiment is None:
        experiment = os.environ.get("LABVAULT_EXPERIMENT") or (
            outer.experiment.name if outer is not None else "default")
        if outer is not None and experiment == outer.experiment.name:
            project = outer.experiment.project
    exp = vault.experiment(experiment, project=project)
    run = exp.start_run(name, params, tags, parent if parent is not None or resume else outer,
                        run_id=run_id, resume=resume)
    stack.append(run)
    with _vaults_lock:
        _started[:] = [r for r in _started if r._active]
        _started.append(run)
    return run


def active_run() -> Run | None:
    """The calling thread's innermost active run, or None."""
    stack = _stack()
    return stack[-1] if stack else None


def _current() -> Run:
    run = active_run()
    if run is None:
        raise NotFoundError("no active run in this thread: start one with labvault.start_run(experiment=...)"
                            " (or log through a Run object)")
    return run


def end_run(status: str = "finished", error: str | None = None) -> None:
    """End the calling thread's active run (``finished`` by default); the run around it becomes active.
    Does nothing when no run is active, as MLflow's ``end_run``."""
    run = active_run()
    if run is not None:
        run.end(status, error)
        _stack()


def log_metric(key: str, value: float, step: int | None = None, timestamp: float | None = None) -> None:
    """``Run.log_metric`` on the active run (the next step of the key when ``step`` is None)."""
    _current().log_metric(key, value, step, timestamp)


def log_metrics(metrics: Mapping[str, float], step: int | None = None,
                timestamp: float | None = None) -> None:
    """``Run.log_metrics`` on the active run: one point of each metric, validated together."""
    _current().log_metrics(metrics, step, timestamp)


def log_param(key: str, value: Any) -> None:
    """``Run.log_param`` on the active run (params are write-once)."""
    _current().log_param(key, value)


def log_params(params: Mapping[str, Any]) -> None:
    """``Run.log_params`` on the active run."""
    _current().log_params(params)


def set_tag(key: str, value: Any) -> None:
    """``Run.set_tag`` on the active run."""
    _current().set_tag(key, value)


def set_tags(tags: Mapping[str, Any]) -> None:
    """``Run.set_tags`` on the active run."""
    _current().set_tags(tags)


def log_result(name: str, value: Any) -> None:
    """``Run.log_result`` on the active run."""
    _current().log_result(name, value)


def log_artifact(key: str, source: BlobSource) -> None:
    """``Run.log_artifact`` on the active run: bytes, a path or a binary file object under ``key``."""
    _current().log_artifact(key, source)


@atexit.register
def _end_runs_at_exit() -> None:
    """End the runs this module started that are still active: failed with the error when the program is
    ending on an uncaught exception, else finished (registered after the vaults' own exit handler, so it
    runs before the vaults close)."""
    failure = getattr(sys, "last_value", None)
    status, error = ("failed", escape_error_text(f"{type(failure).__name__}: {failure}")
                     ) if failure is not None else ("finished", None)
    for run in reversed(list(_started)):
        if run._active:
            try:
                run.end(status, error)
            except Exception as exc:  # the exit must go on: say what was lost
                print(f"labvault: could not end run {run.id} at exit: {exc}", file=sys.stderr)
