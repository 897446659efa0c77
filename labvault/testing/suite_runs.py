"""``RunTests``: experiments, the run lifecycle, params, tags and results (part of ``BackendTests``)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import labvault
from labvault.client.vault import Vault
from labvault.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    UnsupportedOperationError,
)
from labvault.testing.suite_base import SuiteBase

__all__ = ["RunTests"]


class RunTests(SuiteBase):
    """Experiments get-or-create and delete; runs start, end, nest and number densely; params are
    write-once, tags last-write-wins, results replaced by name; values round-trip with their types."""

    # ----------------------------------------------------------------------------------------------
    # experiments
    def test_experiment_get_or_create(self, vault: Vault) -> None:
        a = vault.experiment("exp-a")
        again = vault.experiment("exp-a")
        assert a.id == again.id and a.name == "exp-a" and a.project == "default"
        other = vault.experiment("exp-a", project="other")
        assert other.id != a.id and other.project == "other"
        names = [(e.project, e.name) for e in vault.experiments()]
        assert sorted(names) == [("default", "exp-a"), ("other", "exp-a")]
        assert [e.name for e in vault.experiments(project="other")] == ["exp-a"]
        assert vault.experiments(project="nobody") == []

    def test_delete_experiment_removes_runs(self, vault: Vault) -> None:
        exp = vault.experiment("doomed")
        keep = vault.experiment("kept")
        with exp.start_run(params={"a": 1}) as run:
            run.log_metric("m", 1.0)
            run.log_artifact("f.txt", b"x")
        with keep.start_run() as kept_run:
            kept_run.log_metric("m", 2.0)
        vault.delete_experiment("doomed")
        assert [e.name for e in vault.experiments()] == ["kept"]
        with pytest.raises(NotFoundError):
            vault.get_run(run.id)
        assert vault.get_run(kept_run.id).metrics == {"m": 2.0}
        with pytest.raises(NotFoundError, match="doomed"):
            vault.delete_experiment("doomed")
        # Re-creating gives a fresh experiment whose numbering starts again.
        with vault.experiment("doomed").start_run() as fresh:
            assert fresh.number == 1

    def test_delete_experiment_modes(self, vault: Vault) -> None:
        vault.experiment("e")
        with pytest.raises(InvalidArgumentError, match=r"sideways"):
            vault.delete_experiment("e", mode="sideways")  # type: ignore[arg-type]
        with pytest.raises(UnsupportedOperationError, match="remote"):
            vault.delete_experiment("e", mode="remote")
        assert [e.name for e in vault.experiments()] == ["e"]

    # ----------------------------------------------------------------------------------------------
    # run lifecycle
    def test_run_lifecycle_finished(self, vault: Vault) -> None:
        exp = vault.experiment("life")
        before = time.time()
        with exp.start_run(name="first", params={"lr": 0.1}, tags={"team": "a"}) as run:
            assert run.status == "running"
            assert run.number == 1 and run.name == "first"
        assert run.status == "finished"
        assert run.end_time is not None and before - 1 <= run.start_time <= run.end_time <= time.time() + 1
        assert run.error is None
        fetched = vault.get_run(run.id)
        assert (fetched.id, fetched.number, fetched.name) == (run.id, 1, "first")
        assert fetched.params == {"lr": 0.1} and fetched.tags == {"team": "a"}
        assert fetched.experiment.name == "life"

    def test_run_lifecycle_failed_reraises(self, vault: Vault) -> None:
        exp = vault.experiment("life")
        with pytest.raises(ZeroDivisionError), exp.start_run() as run:
            run.log_metric("before", 1.0)
            _ = 1 / 0
        assert run.status == "failed"
        assert run.error is not None and "ZeroDivisionError" in run.error and "division" in run.error
        assert run.metric_history("before").values.tolist() == [1.0]

    def test_run_numbers_and_nesting(self, vault: Vault) -> None:
        exp = vault.experiment("nest")
        with exp.start_run(name="parent") as parent:
            children = []
            for _ in range(3):
                with exp.start_run(parent=parent) as child:
                    children.append(child)
            with exp.start_run(parent=children[0].id) as grandchild:
                pass
        assert [r.number for r in exp.runs()] == [1, 2, 3, 4, 5]
        assert [c.parent_id for c in children] == [parent.id] * 3
        assert vault.get_run(grandchild.id).parent_id == children[0].id
        assert parent.parent_id is None
        other = vault.experiment("nest-2")
        with other.start_run() as r:
            assert r.number == 1
        with pytest.raises(NotFoundError):
            exp.start_run(parent="0" * 32)

    def test_create_run_with_chosen_id(self, vault: Vault) -> None:
        exp = vault.experiment("chosen-ids")
        backend = vault.backend
        first = backend.create_run(exp.id, name="a", parent_id=None, start_time=1.5, params={"lr": 0.1},
                                   tags={"t": "x"}, run_id="abc123" * 5)
        assert first.id == "abc123" * 5 and first.number == 1
        child = backend.create_run(exp.id, name=None, parent_id=first.id, start_time=2.0, params={},
                                   tags={}, run_id="Child42")
        got = backend.get_run("Child42")
        assert (got.parent_id, got.number, got.start_time) == (first.id, 2, 2.0)
        assert backend.get_run(first.id).params == {"lr": 0.1}
        with pytest.raises(AlreadyExistsError, match="abc123"):
            backend.create_run(exp.id, name=None, parent_id=None, start_time=3.0, params={}, tags={},
                               run_id=first.id)
        with pytest.raises(InvalidArgumentError, match="not a valid labvault id"):
            backend.create_run(exp.id, name=None, parent_id=None, start_time=3.0, params={}, tags={},
                               run_id="../etc")
        assert [r.id for r in exp.runs()] == [first.id, child.id]

    def test_loaded_runs_answer_from_snapshot_until_refresh(self, uri: str, vault: Vault) -> None:
        if not self._capability(vault, "persistent") and not uri.startswith("memory://"):
            pytest.skip("needs a second handle on the same store")
        with vault.experiment("snap").start_run(tags={"v": "1"}) as run:
            pass
        loaded = vault.get_run(run.id)
        with labvault.open(uri) as other:
            other.get_run(run.id).set_tag("v", "2")
        assert loaded.tags == {"v": "1"}  # state as loaded: no query per attribute access
        assert loaded.refresh().tags == {"v": "2"}
        loaded.set_tag("w", "3")  # its own writes are seen at once
        assert loaded.tags == {"v": "2", "w": "3"}

    def test_get_run_missing(self, vault: Vault) -> None:
        with pytest.raises(NotFoundError):
            vault.get_run("f" * 32)

    def test_manual_end_and_status_values(self, vault: Vault) -> None:
        run = vault.experiment("manual").start_run()
        run.end("killed", error="stopped by user")
        assert (run.status, run.error) == ("killed", "stopped by user")
        with pytest.raises(InvalidArgumentError, match="running"):
            vault.experiment("manual").start_run().end("running")

    # ----------------------------------------------------------------------------------------------
    # params, tags, results
    def test_params_write_once(self, vault: Vault) -> None:
        with vault.experiment("p").start_run(params={"lr": 0.1}) as run:
            run.log_param("lr", 0.1)  # same value: no-op
            run.log_params({"layers": [64, 32], "opt": {"name": "adam", "beta": 0.9}, "flag": True})
            with pytest.raises(ConflictError, match="lr"):
                run.log_param("lr", 0.2)
            with pytest.raises(ConflictError, match="layers"):
                run.log_params({"new_key": 1, "layers": [64]})
            assert "new_key" not in run.params  # nothing from the conflicting call was written
            with pytest.raises(ConflictError):
                run.log_param("flag", 1)  # True and 1 are different values
        assert run.params == {"lr": 0.1, "layers": [64, 32], "opt": {"name": "adam", "beta": 0.9},
                              "flag": True}

    def test_param_types_roundtrip(self, vault: Vault) -> None:
        values = {"i": 3, "f": 2.5, "s": "text with spaces", "b": False, "n": None, "l": [1, "a", None],
                  "d": {"k": [1.5]}, "big": 2**53 + 1, "neg": -7, "uni": "héllo ☃", "e": 1e-12}
        with vault.experiment("p").start_run(params=values) as run:
            pass
        got = vault.get_run(run.id).params
        assert got == values
        assert type(got["i"]) is int and type(got["f"]) is float and type(got["b"]) is bool

    def test_numpy_scalars_accepted(self, vault: Vault) -> None:
        with vault.experiment("np").start_run() as run:
            run.log_params({"a": np.int64(3), "b": np.float32(0.5)})
            run.log_metric("m", np.float64(1.5), step=np.int64(2))  # type: ignore[arg-type]
        assert run.params == {"a": 3, "b": 0.5}
        hist = run.metric_history("m")
        assert hist.values.tolist() == [1.5] and hist.steps.tolist() == [2]

    def test_tags_last_write_wins(self, vault: Vault) -> None:
        with vault.experiment("t").start_run(tags={"stage": "dev"}) as run:
            run.set_tag("stage", "prod")
            run.set_tags({"stage": "final", "owner": "ana", "n": 3, "ok": True})
        assert run.tags == {"stage": "final", "owner": "ana", "n": "3", "ok": "true"}

    def test_results(self, vault: Vault) -> None:
        with vault.experiment("r").start_run() as run:
            run.log_result("confusion", [[1, 0], [0, 1]])
            run.log_result("score", 0.5)
            run.log_result("score", 0.75)  # results are keyed by name: replaced
            run.log_result("summary", {"best_epoch": 3, "notes": "ok"})
        assert vault.get_run(run.id).results == {
            "confusion": [[1, 0], [0, 1]], "score": 0.75, "summary": {"best_epoch": 3, "notes": "ok"}}

    # ----------------------------------------------------------------------------------------------
    # the experiment as tables (daskperiment's get_history and load_metric)
    def test_history_and_metric_frame(self, vault: Vault) -> None:
        exp = vault.experiment("tables")
        for lr, seed in ((0.1, 1), (0.01, 2)):
            with exp.start_run(params={"lr": lr, "seed": seed}) as run:
                run.log_result("acc", 1 - lr)
                for step in range(3):
                    run.log_metric("loss", lr * (3 - step), step=step * 2)
        with exp.start_run(params={"lr": 1.0}) as other:  # logs another metric only
            other.log_metric("acc", 0.5, step=0)
        running = exp.start_run(params={"lr": 0.5})
        running.log_metric("loss", 9.0, step=1)  # buffered: the table flushes it
        history = exp.history()
        assert list(history.index) == [1, 2, 3, 4] and history.index.name == "run"
        assert list(history["status"]) == ["finished", "finished", "finished", "running"]
        assert list(history["params.lr"]) == [0.1, 0.01, 1.0, 0.5]
        assert history["seed"].tolist()[:2] == [1, 2] and history["seed"].isna().tolist()[2:] == [True, True]
        assert history["results.acc"].tolist()[:2] == [0.9, 0.99]
        assert (history["duration"].iloc[:3] >= 0).all() and np.isnan(history["duration"].iloc[3])
        frame = exp.metric_frame("loss")
        assert [int(c) for c in frame.columns] == [1, 2, 4] and frame.index.name == "step"
        assert list(frame.index) == [0, 1, 2, 4]
        assert frame[1].tolist()[0] == pytest.approx(0.3) and np.isnan(frame[1][1])
        assert frame[4][1] == 9.0 and frame[4].isna().sum() == 3
        assert exp.metric_frame("never").empty
        assert exp.runs().to_frame()["results.acc"].tolist()[:2] == [0.9, 0.99]
        running.end()
        with pytest.raises(InvalidArgumentError):
            exp.metric_frame("")
