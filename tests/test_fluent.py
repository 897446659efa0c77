"""The module-level API (``labvault.start_run``, ``labvault.log_metric``, ...): the active-run stack per
thread, nesting, the store it opens, and runs still active at exit."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

import labvault
from labvault.errors import NotFoundError


@pytest.fixture
def uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    store = str(tmp_path / "store")
    monkeypatch.setenv("LABVAULT_URI", store)
    monkeypatch.delenv("LABVAULT_EXPERIMENT", raising=False)
    return store


def test_nested_runs_and_the_active_run(uri: str) -> None:
    assert labvault.active_run() is None
    with labvault.start_run(experiment="fluent", params={"lr": 0.1}) as outer:
        labvault.log_metric("loss", 0.5)
        labvault.log_metrics({"loss": 0.25, "acc": 0.9})
        labvault.log_params({"epochs": 3})
        labvault.set_tag("team", "vision")
        labvault.log_result("best", {"acc": 0.9})
        labvault.log_artifact("notes.txt", b"hello")
        with labvault.start_run(name="child") as inner:
            assert labvault.active_run() is inner and inner.parent_id == outer.id
            assert inner.experiment.name == "fluent"  # the experiment around it
            labvault.log_metric("loss", 1.0)
        assert labvault.active_run() is outer
    assert labvault.active_run() is None
    with labvault.open(uri) as vault:
        got = vault.get_run(outer.id)
        assert got.status == "finished" and got.params == {"lr": 0.1, "epochs": 3}
        assert got.tags == {"team": "vision"} and got.results == {"best": {"acc": 0.9}}
        assert got.metric_history("loss").values.tolist() == [0.5, 0.25] and got.metrics["acc"] == 0.9
        assert got.get_artifact("notes.txt") == b"hello"
        assert vault.get_run(inner.id).metrics == {"loss": 1.0}


def test_no_active_run_says_how_to_start_one(uri: str) -> None:
    with pytest.raises(NotFoundError, match=r"no active run.*labvault\.start_run"):
        labvault.log_metric("loss", 1.0)
    labvault.end_run()  # nothing active: nothing to do, as in MLflow


def test_end_run_pops_and_failed_runs_record_the_error(uri: str) -> None:
    outer = labvault.start_run(experiment="fluent")
    inner = labvault.start_run()
    labvault.end_run("killed")
    assert labvault.active_run() is outer and inner.status == "killed"
    with pytest.raises(RuntimeError), labvault.start_run():
        raise RuntimeError("boom")
    assert labvault.active_run() is outer
    labvault.end_run()
    assert labvault.active_run() is None and outer.status == "finished"


def test_each_thread_has_its_own_stack(uri: str) -> None:
    errors: list[BaseException] = []
    ids: dict[int, str] = {}
    barrier = threading.Barrier(4)

    def worker(i: int) -> None:
        try:
            assert labvault.active_run() is None  # the main thread's run is not this thread's
            with labvault.start_run(experiment="threads", name=f"t{i}") as run:
                ids[i] = run.id
                barrier.wait(timeout=30)  # all four runs active at once
                for step in range(200):
                    labvault.log_metric("x", float(i), step=step)
                assert labvault.active_run() is run
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with labvault.start_run(experiment="threads", name="main") as main:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert labvault.active_run() is main
    assert not errors, errors
    with labvault.open(uri) as vault:
        for i, run_id in ids.items():
            run = vault.get_run(run_id)
            history = run.metric_history("x")
            assert run.parent_id is None and run.name == f"t{i}"
            assert history.steps.tolist() == list(range(200)) and set(history.values.tolist()) == {float(i)}


def test_store_experiment_and_resume(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = str(tmp_path / "other")
    with labvault.start_run(uri=other, experiment="elsewhere") as run:
        labvault.log_metric("m", 1.0)
    monkeypatch.setenv("LABVAULT_EXPERIMENT", "from-env")
    with labvault.start_run() as named:
        pass
    assert named.experiment.name == "from-env"
    with labvault.start_run(uri=other, experiment="elsewhere", run_id=run.id, resume=True) as again:
        labvault.log_metric("m", 2.0)
    assert again.id == run.id
    with labvault.open(other) as vault:
        assert vault.get_run(run.id).metric_history("m").steps.tolist() == [0, 1]
        assert [e.name for e in vault.experiments()] == ["elsewhere"]


@pytest.mark.parametrize(("tail", "status"),
                         [("", "finished"), ("raise SystemError('crashed here')", "failed")])
def test_runs_left_active_are_ended_at_exit(tmp_path: Path, tail: str, status: str) -> None:
    uri = str(tmp_path / "store")
    script = ("import labvault\n"
              f"run = labvault.start_run(experiment='exit', uri={uri!r})\n"
              "labvault.log_metric('loss', 0.5)\n"
              "print(run.id, flush=True)\n" + tail + "\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)
    run_id = proc.stdout.split()[0]
    with labvault.open(uri) as vault:
        run = vault.get_run(run_id)
        assert run.status == status and run.metrics == {"loss": 0.5}, proc.stderr
        if status == "failed":
            assert run.error == "SystemError: crashed here"


def test_every_module_level_name_is_exported_lazily() -> None:
    """``labvault/__init__.py`` names the fluent functions itself (importing the module would cost every
    ``import labvault``); this keeps the two lists one."""
    from labvault.client import fluent

    assert set(fluent.__all__) <= set(labvault.__all__)
    assert {k for k, mod in labvault._LAZY.items() if mod == "labvault.client.fluent"} == set(fluent.__all__)
