"""``VerbTests``: the everyday verbs on a run: delete and restore, rename, resume (in ``BackendTests``)."""

from __future__ import annotations

import pytest

from labvault.client.vault import Vault
from labvault.domain import DELETED_TAG
from labvault.errors import ConflictError, InvalidArgumentError, NotFoundError
from labvault.testing.suite_base import SuiteBase

__all__ = ["VerbTests"]


class VerbTests(SuiteBase):
    """Deleted runs leave searches and come back on restore; a renamed run keeps its number; a resumed run
    is running again with its numbers, params and metric steps kept; refused calls write nothing."""

    def test_delete_and_restore_run(self, vault: Vault) -> None:
        exp = vault.experiment("verbs")
        runs = []
        for i in range(3):
            with exp.start_run(name=f"r{i}", params={"i": i}) as run:
                run.log_metric("loss", 1.0 / (i + 1))
            runs.append(run)
        vault.delete_run(runs[1])
        vault.delete_run(runs[2].id)
        assert [r.number for r in exp.runs()] == [1]
        assert [r.number for r in vault.search_runs("verbs", filter="params.i >= 0")] == [1]
        assert [r.number for r in vault.search_runs("verbs", deleted=True)] == [2, 3]
        assert [r.number for r in vault.search_runs("verbs", deleted=None)] == [1, 2, 3]
        assert list(exp.runs().to_frame()["number"]) == [1]
        gone = vault.get_run(runs[1].id)  # still there, marked
        assert gone.deleted and runs[1].deleted and not runs[0].deleted
        assert gone.params == {"i": 1} and gone.metrics == {"loss": 0.5}
        assert exp.get_run(2).id == runs[1].id
        vault.restore_run(runs[1])
        vault.restore_run(runs[0])  # not deleted: left as is
        assert DELETED_TAG not in vault.get_run(runs[0].id).tags
        assert [r.number for r in exp.runs()] == [1, 2]
        assert not vault.get_run(runs[1].id).deleted
        with pytest.raises(NotFoundError):
            vault.delete_run("0" * 32)
        with pytest.raises(InvalidArgumentError, match="deleted"):
            vault.search_runs("verbs", deleted="yes")  # type: ignore[arg-type]

    def test_rename_run(self, vault: Vault) -> None:
        exp = vault.experiment("verbs")
        with exp.start_run(name="draft") as run:
            pass
        run.rename("baseline")
        assert run.name == "baseline" and vault.get_run(run.id).name == "baseline"
        assert [r.name for r in vault.search_runs("verbs", filter="name = 'baseline'")] == ["baseline"]
        assert vault.get_run(run.id).number == 1 and vault.get_run(run.id).status == "finished"
        with pytest.raises(InvalidArgumentError):
            run.rename("bad\x00name")
        assert vault.get_run(run.id).name == "baseline"  # nothing written on a refused call

    def test_resume_run(self, vault: Vault) -> None:
        exp = vault.experiment("verbs")
        with pytest.raises(RuntimeError), exp.start_run(name="long", params={"lr": 0.1}) as run:
            run.log_metric("loss", 1.0)
            run.log_metric("loss", 0.8)
            raise RuntimeError("preempted")
        assert vault.get_run(run.id).status == "failed"
        with exp.start_run(run_id=run.id, resume=True, params={"lr": 0.1, "epochs": 3}) as again:
            info = again.info
            assert (info.status, info.end_time, info.error, info.number) == ("running", None, None, 1)
            again.log_metric("loss", 0.5)  # continues after the last step
        done = vault.get_run(run.id)
        assert done.status == "finished" and done.end_time is not None
        assert done.params == {"lr": 0.1, "epochs": 3}
        history = done.metric_history("loss")
        assert history.steps.tolist() == [0, 1, 2] and history.values.tolist() == [1.0, 0.8, 0.5]
        assert [r.number for r in exp.runs()] == [1]  # no new run
        fresh = exp.start_run(run_id="Preemptible01", resume=True)  # not there yet: created
        assert fresh.number == 2 and fresh.id == "Preemptible01"
        with pytest.raises(ConflictError, match="active"):
            exp.start_run(run_id="Preemptible01", resume=True)
        fresh.end()
        with pytest.raises(InvalidArgumentError, match="another experiment"):
            vault.experiment("elsewhere").start_run(run_id=run.id, resume=True)
        with pytest.raises(InvalidArgumentError, match="run_id"):
            exp.start_run(resume=True)

    def test_update_run_clear(self, vault: Vault) -> None:
        backend = vault.backend
        exp = vault.experiment("verbs")
        with pytest.raises(RuntimeError), exp.start_run() as run:
            raise RuntimeError("boom")
        before = backend.get_run(run.id)
        for bad in ({"clear": ("status",)}, {"clear": "end_time"}, {"clear": ("error",), "error": "x"}):
            with pytest.raises(InvalidArgumentError):
                backend.update_run(run.id, **bad)
        assert backend.get_run(run.id) == before
        backend.update_run(run.id, status="running", clear=("end_time", "error"))
        after = backend.get_run(run.id)
        assert (after.status, after.end_time, after.error) == ("running", None, None)
