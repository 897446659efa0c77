"""``BackendHookTests``: a backend's own methods checked directly, without a ``Vault`` (zarr's StoreTests).

``BackendTests`` drives a backend through ``labvault.open``; this mixin calls the public ``Backend`` methods
(``labvault.store.abc``: each validates, then calls the backend's ``_hook``) and reads the answers back, and
where the store has a raw medium it also checks that the writes reached it, read behind the backend's
back. Subclass it next to ``BackendTests`` with a ``uri`` fixture (a fresh, empty store)::

    from labvault.testing import BackendHookTests

    class TestMineHooks(BackendHookTests):
        @pytest.fixture
        def uri(self, tmp_path):
            return f"mine://{tmp_path / 'store'}"

        @pytest.fixture
        def raw(self, tmp_path):          # the medium itself: a directory, a connection, a client, ...
            return tmp_path / "store"

        def raw_run(self, raw, run_id):   # and the readers of the raw checks (see below)
            ...

The raw checks (``test_raw_*``) read the medium through four readers the subclass overrides:
``raw_experiment``, ``raw_run``, ``raw_metric`` and ``raw_blob``. Each returns what is stored (or None /
``[]`` when nothing is), and each check first asserts that the reader sees nothing before the write, so a
reader that cannot tell a stored record from a missing one fails too. A store with no medium of its own
(the memory backend) leaves ``raw`` at None: the raw checks then skip, giving ``no_raw_reason``.
``test_a_dropped_write_fails_the_checks`` proves the checks are not vacuous on every backend: with one
hook replaced by one that writes nothing, the check of that hook must fail.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import pytest

import labvault
from labvault.domain import ArtifactInfo, MetricSeries
from labvault.errors import ConflictError, NotFoundError
from labvault.store.abc import Backend

__all__ = ["BackendHookTests"]

#: What a failed check raises: an ``assert`` or a ``pytest.raises`` that saw nothing raised.
CheckFailed = (AssertionError, pytest.fail.Exception)


def _series(key: str, steps: list[int], values: list[float], timestamps: list[float]) -> MetricSeries:
    return MetricSeries(key, np.array(steps, dtype=np.int64), np.array(values, dtype=np.float64),
                        np.array(timestamps, dtype=np.float64))


def _fresh(prefix: str) -> str:
    """A name no earlier check used (the checks run more than once on one store)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _payload(label: str) -> bytes:
    """A few KiB no other check stores (so a blob is never there before its check writes it)."""
    return (f"{label} {uuid.uuid4().hex} ".encode()) * 120


class BackendHookTests:
    """Subclass and provide ``uri``; for the raw checks also ``raw`` and the four ``raw_*`` readers."""

    #: Why the raw checks skip when ``raw`` is None.
    no_raw_reason: ClassVar[str] = "no raw medium given (the test class has no 'raw' fixture)"

    @pytest.fixture
    def uri(self) -> str:
        """The URI of a fresh, empty store: every ``BackendHookTests`` subclass overrides this."""
        raise NotImplementedError("a BackendHookTests subclass must provide a 'uri' fixture")

    @pytest.fixture
    def backend(self, uri: str) -> Iterator[Backend]:
        """The backend ``uri`` names, built by ``labvault.open_backend`` (no vault, no buffering)."""
        backend = labvault.open_backend(uri)
        try:
            yield backend
        finally:
            backend.close()

    @pytest.fixture
    def raw(self) -> Any:
        """The store's raw medium (a directory, a database engine, a client, ...); None: it has none."""
        return None

    # -- the readers of the raw medium (override them with ``raw``) ----------------------------------------
    def raw_experiment(self, raw: Any, experiment_id: str) -> Mapping[str, Any] | None:
        """The experiment as the medium holds it (at least ``name`` and ``project``); None when absent."""
        raise NotImplementedError(f"{type(self).__name__} gives 'raw' but no raw_experiment reader")

    def raw_run(self, raw: Any, run_id: str) -> Mapping[str, Any] | None:
        """The run as the medium holds it: at least ``experiment_id``, ``number``, ``status``, ``params``,
        ``tags`` and ``results``; None when absent."""
        raise NotImplementedError(f"{type(self).__name__} gives 'raw' but no raw_run reader")

    def raw_metric(self, raw: Any, run_id: str, key: str) -> list[tuple[int, float]]:
        """The points of one metric the medium holds, as (step, value) in append order; [] when none."""
        raise NotImplementedError(f"{type(self).__name__} gives 'raw' but no raw_metric reader")

    def raw_blob(self, raw: Any, key: str) -> bytes | None:
        """The bytes the medium holds under the blob key ``key``; None when absent."""
        raise NotImplementedError(f"{type(self).__name__} gives 'raw' but no raw_blob reader")

    # -- the checks -----------------------------------------------------------------------------------------
    def check_experiments(self, backend: Backend) -> None:
        """``ensure_experiment`` gets or creates per (project, name); listed, found and deleted by id."""
        name = _fresh("hooks")
        first = backend.ensure_experiment(name, "default")
        assert backend.ensure_experiment(name, "default").id == first.id, "ensure_experiment created twice"
        other = backend.ensure_experiment(name, "other")
        assert other.id != first.id
        assert (first.name, first.project, other.project) == (name, "default", "other")
        mine = sorted((e.project, e.id) for e in backend.list_experiments() if e.name == name)
        assert mine == [("default", first.id), ("other", other.id)], mine
        assert [e.id for e in backend.list_experiments("other") if e.name == name] == [other.id]
        assert backend.find_experiment(name, "default").id == first.id
        backend.delete_experiment(first.id)
        left = [e.id for e in backend.list_experiments() if e.name == name]
        assert left == [other.id], f"delete_experiment left {left}"
        with pytest.raises(NotFoundError):
            backend.find_experiment(name, "default")

    def check_runs(self, backend: Backend, uri: str) -> None:
        """A run created, nested, changed by every run hook and read back by this and a second backend."""
        exp = backend.ensure_experiment(_fresh("runs"), "default")
        first = backend.create_run(exp.id, name="first", parent_id=None, start_time=100.0,
                                   params={"lr": 0.1, "layers": [2, 3]}, tags={"team": "a"})
        child = backend.create_run(exp.id, name=None, parent_id=first.id, start_time=101.0, params={},
                                   tags={})
        assert (first.number, child.number) == (1, 2)
        got = backend.get_run(first.id)
        assert (got.experiment_id, got.name, got.status, got.start_time, got.parent_id) == (
            exp.id, "first", "running", 100.0, None)
        assert (got.params, got.tags) == ({"lr": 0.1, "layers": [2, 3]}, {"team": "a"})
        runs = sorted(backend.list_runs([exp.id]), key=lambda r: r.number)
        assert [(r.id, r.number, r.parent_id) for r in runs] == [(first.id, 1, None), (child.id, 2, first.id)]
        backend.log_params(first.id, {"opt": "adam"})
        backend.log_params(first.id, {"opt": "adam"})  # the same value again: a no-op
        backend.set_tags(first.id, {"team": "b", "stage": "dev"})
        backend.log_results(first.id, {"acc": 0.9})
        backend.log_results(first.id, {"acc": 0.95, "f1": 0.5})
        backend.update_run(first.id, status="finished", end_time=200.0)
        second = labvault.open_backend(uri)  # nothing may live only in the first object's caches
        try:
            for reader in (backend, second):
                got = reader.get_run(first.id)
                assert got.params == {"lr": 0.1, "layers": [2, 3], "opt": "adam"}, ("log_params", got.params)
                assert got.tags == {"team": "b", "stage": "dev"}, ("set_tags", got.tags)
                assert got.results == {"acc": 0.95, "f1": 0.5}, ("log_results", got.results)
                assert (got.status, got.end_time) == ("finished", 200.0), ("update_run", got.status)
        finally:
            second.close()
        with pytest.raises(ConflictError, match="opt"):
            backend.log_params(first.id, {"opt": "sgd"})  # params are write-once

    def check_metrics(self, backend: Backend, uri: str) -> None:
        """Batches appended (a re-sent batch id once) and read back exactly by this and a second backend."""
        exp = backend.ensure_experiment(_fresh("metrics"), "default")
        run = backend.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
        backend.log_metrics(run.id, [_series("loss", [0, 1], [0.5, 0.4], [1.0, 2.0]),
                                     _series("acc", [0], [0.1], [1.0])])
        for _ in range(2):  # re-sent after a lost answer: stored once
            backend.log_metrics(run.id, [_series("loss", [2**62], [0.3], [3.0])], batch_id="hooks-b1")
        second = labvault.open_backend(uri)
        try:
            for reader in (backend, second):
                hist = reader.metric_history(run.id, "loss")
                dtypes = (hist.steps.dtype, hist.values.dtype, hist.timestamps.dtype)
                assert dtypes == (np.dtype(np.int64), np.dtype(np.float64), np.dtype(np.float64)), dtypes
                assert hist.steps.tolist() == [0, 1, 2**62], hist.steps
                assert hist.values.tolist() == [0.5, 0.4, 0.3] and hist.timestamps.tolist() == [1.0, 2.0, 3.0]
                assert reader.metric_history(run.id, "acc").values.tolist() == [0.1]
                assert len(reader.metric_history(run.id, "never-logged")) == 0
                assert reader.metric_keys(run.id) == ["acc", "loss"]
                assert reader.get_run(run.id).metrics == {"loss": 0.3, "acc": 0.1}
        finally:
            second.close()

    def check_artifacts(self, backend: Backend) -> None:
        """Content-addressed bytes in ``blobs``; the artifact index added, listed, replaced and looked up."""
        payload, other = _payload("weights"), _payload("notes")
        digest, size = backend.blobs.put_content(payload)
        assert (digest, size) == (hashlib.sha256(payload).hexdigest(), len(payload))
        assert backend.blobs.get(backend.blobs.digest_key(digest)) == payload
        digest2, size2 = backend.blobs.put_content(other)
        exp = backend.ensure_experiment(_fresh("artifacts"), "default")
        run = backend.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
        backend.add_artifact(run.id, ArtifactInfo("model/w.bin", size, digest, 10.0))
        backend.add_artifacts(run.id, [ArtifactInfo("notes.txt", size2, digest2, 11.0),
                                       ArtifactInfo("model/a.bin", size2, digest2, 12.0)])
        assert [a.key for a in backend.list_artifacts(run.id)] == ["model/a.bin", "model/w.bin", "notes.txt"]
        assert [a.key for a in backend.list_artifacts(run.id, "model/")] == ["model/a.bin", "model/w.bin"]
        info = backend.get_artifact_info(run.id, "model/w.bin")
        assert (info.key, info.size, info.digest) == ("model/w.bin", size, digest)
        backend.add_artifact(run.id, ArtifactInfo("model/w.bin", size2, digest2, 13.0))  # replaces the key
        assert backend.get_artifact_info(run.id, "model/w.bin").digest == digest2
        assert len(backend.list_artifacts(run.id)) == 3
        with pytest.raises(NotFoundError):
            backend.get_artifact_info(run.id, "missing.bin")

    def check_raw_runs(self, backend: Backend, raw: Any) -> None:
        """The experiment and the run, with every change of the run hooks, are in the medium; deleted too."""
        name = _fresh("raw")
        exp = backend.ensure_experiment(name, "default")
        stored = self.raw_experiment(raw, exp.id)
        assert stored is not None, f"experiment {exp.id} is not in the medium"
        assert (stored["name"], stored["project"]) == (name, "default"), stored
        run_id = uuid.uuid4().hex
        assert self.raw_run(raw, run_id) is None, "the reader finds a run that was never created"
        backend.create_run(exp.id, name="raw", parent_id=None, start_time=100.0, params={"lr": 0.1},
                           tags={"team": "a"}, run_id=run_id)
        assert _view(self.raw_run(raw, run_id)) == (exp.id, 1, "running", {"lr": 0.1}, {"team": "a"}, {})
        backend.log_params(run_id, {"opt": "adam"})
        backend.set_tags(run_id, {"team": "b"})
        backend.log_results(run_id, {"acc": 0.5})
        backend.update_run(run_id, status="finished", end_time=200.0)
        assert _view(self.raw_run(raw, run_id)) == (
            exp.id, 1, "finished", {"lr": 0.1, "opt": "adam"}, {"team": "b"}, {"acc": 0.5})
        backend.delete_experiment(exp.id)
        assert self.raw_experiment(raw, exp.id) is None, "the deleted experiment is still in the medium"
        assert self.raw_run(raw, run_id) is None, "the deleted experiment's run is still in the medium"

    def check_raw_metrics(self, backend: Backend, raw: Any) -> None:
        """Appended points are in the medium, in order, a re-sent batch once."""
        exp = backend.ensure_experiment(_fresh("raw-metrics"), "default")
        run = backend.create_run(exp.id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
        assert self.raw_metric(raw, run.id, "loss") == []
        backend.log_metrics(run.id, [_series("loss", [0, 1], [0.5, 0.4], [1.0, 2.0]),
                                     _series("acc", [0], [0.1], [1.0])])
        for _ in range(2):
            backend.log_metrics(run.id, [_series("loss", [7], [0.3], [3.0])], batch_id="hooks-raw")
        assert self.raw_metric(raw, run.id, "loss") == [(0, 0.5), (1, 0.4), (7, 0.3)]
        assert self.raw_metric(raw, run.id, "acc") == [(0, 0.1)]

    def check_raw_blob(self, backend: Backend, raw: Any) -> None:
        """A content-addressed blob is in the medium under its ``sha256/`` key, byte for byte."""
        backend.list_experiments()  # the store exists (an SQL schema is made on first use)
        payload = _payload("raw-blob")
        key = backend.blobs.digest_key(hashlib.sha256(payload).hexdigest())
        assert self.raw_blob(raw, key) is None, "the reader finds a blob that was never stored"
        backend.blobs.put_content(payload)
        assert self.raw_blob(raw, key) == payload, f"blob {key} is not in the medium"

    # -- the tests ------------------------------------------------------------------------------------------
    def test_hooks_experiments(self, backend: Backend) -> None:
        self.check_experiments(backend)

    def test_hooks_runs(self, backend: Backend, uri: str) -> None:
        self.check_runs(backend, uri)

    def test_hooks_metrics(self, backend: Backend, uri: str) -> None:
        self.check_metrics(backend, uri)

    def test_hooks_artifacts(self, backend: Backend) -> None:
        self.check_artifacts(backend)

    def test_raw_experiment_and_run_written(self, backend: Backend, raw: Any) -> None:
        self._need_raw(raw)
        self.check_raw_runs(backend, raw)

    def test_raw_metric_points_written(self, backend: Backend, raw: Any) -> None:
        self._need_raw(raw)
        self.check_raw_metrics(backend, raw)

    def test_raw_blob_written(self, backend: Backend, raw: Any) -> None:
        self._need_raw(raw)
        self.check_raw_blob(backend, raw)

    def test_a_dropped_write_fails_the_checks(self, backend: Backend, uri: str, raw: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
        """Each check fails when a hook it checks writes nothing (the checks are not vacuous); the raw
        checks too, when there is a medium. Then every check passes again with the real hooks."""
        checks: dict[str, Callable[[], None]] = {
            "experiments": lambda: self.check_experiments(backend),
            "runs": lambda: self.check_runs(backend, uri),
            "metrics": lambda: self.check_metrics(backend, uri),
            "artifacts": lambda: self.check_artifacts(backend),
        }
        dropped = [("_delete_experiment", "experiments"), ("_log_params", "runs"), ("_set_tags", "runs"),
                   ("_log_results", "runs"), ("_update_run", "runs"), ("_log_metrics", "metrics"),
                   ("_add_artifact", "artifacts")]
        if raw is not None:
            checks["raw runs"] = lambda: self.check_raw_runs(backend, raw)
            checks["raw metrics"] = lambda: self.check_raw_metrics(backend, raw)
            dropped += [("_update_run", "raw runs"), ("_log_metrics", "raw metrics")]
        for hook, name in dropped:
            with monkeypatch.context() as patch:
                patch.setattr(backend, hook, _dropping(hook))
                with pytest.raises(CheckFailed):
                    checks[name]()
        if raw is not None:
            checks["raw blob"] = lambda: self.check_raw_blob(backend, raw)
            with monkeypatch.context() as patch:
                patch.setattr(backend.blobs, "put_content", _dropped_put_content)
                with pytest.raises(CheckFailed):
                    checks["raw blob"]()
        for check in checks.values():
            check()

    def _need_raw(self, raw: Any) -> None:
        if raw is None:
            pytest.skip(self.no_raw_reason)


def _view(stored: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    """The parts of a raw run record the raw checks compare."""
    if stored is None:
        return None
    return (stored["experiment_id"], stored["number"], stored["status"], dict(stored["params"]),
            dict(stored["tags"]), dict(stored["results"]))


def _dropping(hook: str) -> Callable[..., Any]:
    """A stand-in for ``hook`` that writes nothing (``_log_metrics`` claims the batch was appended)."""

    def drop(*args: Any, **kwargs: Any) -> Any:
        return True if hook == "_log_metrics" else None

    return drop


def _dropped_put_content(data: bytes) -> tuple[str, int]:
    """``BlobStore.put_content`` that answers as if it stored ``data`` but writes nothing."""
    return hashlib.sha256(data).hexdigest(), len(data)
