"""The bad-input table's shared store: ``BadInputContext`` and the before/after ``store_snapshot``.

Every case of ``labvault.testing.bad_input_cases`` is a call made against one ``BadInputContext`` (a vault
with a little of everything in it); ``store_snapshot`` is what ``check_case`` compares before and after
the call to prove that a refused call wrote nothing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import labvault
from labvault.client.run import Experiment, Run
from labvault.client.vault import Vault
from labvault.errors import LabvaultError
from labvault.store.abc import Backend

__all__ = ["BadInputContext", "store_snapshot"]


# ------------------------------------------------------------------------------------------------------
# the store snapshot
def store_snapshot(backend: Backend) -> dict[str, Any]:
    """Everything a refused call could have touched, as plain comparable values.

    Experiments; per run its identity, status, times, error, params, tags, results and latest metrics;
    every point of every metric (as raw bytes, so NaN compares equal to NaN); and its artifact list.
    The heartbeat is left out: the background flusher refreshes it whenever it likes.
    """
    exps = backend.list_experiments()
    runs = sorted(backend.list_runs([e.id for e in exps]) if exps else [], key=lambda r: r.id)
    return {
        "experiments": [(e.id, e.name, e.project, e.created_at) for e in exps],
        "runs": [_run_snapshot(backend, r) for r in runs],
    }


def _run_snapshot(backend: Backend, info: Any) -> dict[str, Any]:
    histories = {}
    for key in sorted(info.metrics):
        hist = backend.metric_history(info.id, key)
        histories[key] = (hist.steps.tobytes(), hist.values.tobytes(), hist.timestamps.tobytes())
    return {
        "run": (info.id, info.experiment_id, info.number, info.name, info.parent_id, info.status,
                info.start_time, info.end_time, info.error),
        "params": repr(info.params), "tags": info.tags, "results": repr(info.results),
        "metrics": repr(sorted(info.metrics.items())), "histories": histories,
        "artifacts": [(a.key, a.size, a.digest) for a in backend.list_artifacts(info.id)],
    }


# ------------------------------------------------------------------------------------------------------
# the shared store the cases run against
class BadInputContext:
    """One vault with a little of everything in it, shared by all cases of one backend class.

    ``run`` is a running run with params, tags, a result, a two-point metric ``loss`` and an artifact;
    ``spare`` is a running run for the cases that end a run. ``prepare`` (before each case) replaces them
    when a case ended one or left the store changed, so one defect does not spill into the next case.
    """

    def __init__(self, vault: Vault, uri: str, tmp: Path) -> None:
        self.vault = vault
        self.uri = uri
        self.tmp = tmp
        self.existing_file = tmp / "exists.bin"
        self.existing_file.write_bytes(b"already here")
        self.directory = tmp / "a-directory"
        self.directory.mkdir()
        self.dirty = True
        self.exp: Experiment
        self.run: Run
        self.spare: Run

    def prepare(self) -> None:
        """Make sure both runs are running and nothing is buffered; rebuild everything after a failure."""
        if self.dirty or not (self.run._active and self.spare._active):
            self._rebuild()
        self.run._discard_buffer()
        self.spare._discard_buffer()

    def _rebuild(self) -> None:
        backend = self.vault.backend
        for run in (getattr(self, "run", None), getattr(self, "spare", None)):
            if run is not None:
                run._discard_buffer()
                self.vault._unregister_active(run)
        for exp in backend.list_experiments():  # leftovers of a case that wrote despite refusing
            with contextlib.suppress(LabvaultError):
                backend.delete_experiment(exp.id)
        self.exp = self.vault.experiment("valid")
        self.run = self.exp.start_run(name="target", params={"keep": 1, "lr": 0.1}, tags={"team": "a"})
        self.run.log_result("r", {"score": 1})
        self.run.log_metric("loss", 0.5, step=0, timestamp=1000.0)
        self.run.log_metric("loss", 0.4, step=1, timestamp=1001.0)
        self.run.log_artifact("a.txt", b"artifact")
        self.run.flush()
        self.spare = self.exp.start_run(name="spare")
        self.dirty = False

    def settle(self) -> None:
        """Write whatever the case left in the runs' buffers (a refused point must not be there)."""
        for run in (self.run, self.spare):
            if run._active:
                run.flush()

    def open(self, uri: Any, **options: Any) -> None:
        """``labvault.open`` that closes the vault should the call (wrongly) succeed."""
        labvault.open(uri, **options).close()
