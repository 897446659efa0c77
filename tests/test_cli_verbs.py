"""The everyday verbs on the command line (issue 16): runs across experiments, CSV, delete / restore /
rename, ``labvault metrics``, read-only commands that never create a store, times shown with their zone."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import labvault
from labvault.cli import app
from labvault.cli.format import fmt_time, iso_utc

ENV = {"COLUMNS": "250", "LABVAULT_URI": ""}


def invoke(*args: str, **kwargs: Any) -> Any:
    return CliRunner().invoke(app, list(args), env={**ENV, **kwargs.pop("env", {})}, **kwargs)


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, list[str]]:
    """A file store with two experiments: a (2 runs, the first with a loss history) and b (1 run)."""
    uri = str(tmp_path / "store")
    ids = []
    with labvault.open(uri) as vault:
        for exp, name, lr in (("a", "first", 0.1), ("a", "second", 0.2), ("b", "third", 0.3)):
            with vault.experiment(exp).start_run(name, params={"lr": lr, "opt": "sgd, \"fast\""}) as run:
                if name == "first":
                    run.log_metric_series("loss", [1.0, 0.5, 0.25], steps=[0, 10, 20])
                run.set_tag("note", "line1\nline2")
            ids.append(run.id)
    return uri, ids


def test_runs_without_an_experiment_lists_every_experiment(store: tuple[str, list[str]]) -> None:
    uri, ids = store
    result = invoke("runs", "--uri", uri)
    assert result.exit_code == 0, result.output
    assert "all experiments: 3 run(s)" in result.output
    for run_id in ids:
        assert run_id[:8] in result.output
    assert "experiment" in result.output  # the column, shown when the runs come from several experiments
    only_a = invoke("runs", "a", "--uri", uri)
    assert only_a.exit_code == 0 and ids[2][:8] not in only_a.output and ids[0][:8] in only_a.output


def test_runs_csv_round_trips_through_the_csv_module(store: tuple[str, list[str]]) -> None:
    uri, ids = store
    result = invoke("runs", "--uri", uri, "--csv", "--order-by", "params.lr")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["id"] for r in rows] == ids
    assert [r["experiment"] for r in rows] == ["a", "a", "b"]
    assert [float(r["params.lr"]) for r in rows] == [0.1, 0.2, 0.3]
    assert rows[0]["params.opt"] == 'sgd, "fast"' and rows[0]["tags.note"] == "line1\nline2"
    assert rows[0]["metrics.loss"] == "0.25" and rows[1]["metrics.loss"] == ""
    assert rows[0]["start_time"].endswith("Z") and rows[0]["status"] == "finished"
    chosen = invoke("runs", "a", "--uri", uri, "--csv", "--columns", "params.lr,name")
    assert chosen.stdout.splitlines()[0] == "id,number,params.lr,name"
    both = invoke("runs", "--uri", uri, "--csv", "--json")
    assert both.exit_code == 2 and "one of --json and --csv" in both.output


def test_runs_delete_restore_rename(store: tuple[str, list[str]]) -> None:
    uri, ids = store
    result = invoke("runs", "delete", ids[1][:6], "--uri", uri)
    assert result.exit_code == 0 and "deleted run" in result.output and "restore" in result.output
    listed = invoke("runs", "a", "--uri", uri, "--json")
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [ids[0]]
    gone = invoke("runs", "a", "--uri", uri, "--deleted", "--json")
    assert [json.loads(line)["id"] for line in gone.stdout.splitlines()] == [ids[1]]
    assert invoke("show", ids[1][:6], "--uri", uri).exit_code == 0  # a deleted run is still shown by id
    result = invoke("runs", "restore", ids[1][:6], "--uri", uri)
    assert result.exit_code == 0 and "restored" in result.output
    assert invoke("runs", "restore", ids[1][:6], "--uri", uri).output.count("nothing to do") == 1
    result = invoke("runs", "rename", ids[0], "baseline", "--uri", uri)
    assert result.exit_code == 0 and "'first' to 'baseline'" in result.output
    with labvault.open(uri) as vault:
        assert vault.get_run(ids[0]).name == "baseline" and not vault.get_run(ids[1]).deleted
    missing = invoke("runs", "delete", "abcdef12", "--uri", uri)
    assert missing.exit_code == 1 and "NotFoundError" in missing.output
    assert invoke("runs", "delete", "ab", "--uri", uri).output.count("too short") == 1
    assert invoke("runs", "list", "a", "--uri", uri).exit_code == 0  # the verb spelt out


def test_metrics_command(store: tuple[str, list[str]]) -> None:
    uri, ids = store
    keys = invoke("metrics", ids[0][:8], "--uri", uri)
    assert keys.exit_code == 0 and "loss" in keys.output and "0.25" in keys.output
    table = invoke("metrics", ids[0][:8], "loss", "--uri", uri)
    assert table.exit_code == 0 and "loss: 3 point(s)" in table.output
    rows = list(csv.DictReader(io.StringIO(invoke("metrics", ids[0], "loss", "--uri", uri, "--csv").stdout)))
    assert [(int(r["step"]), float(r["value"])) for r in rows] == [(0, 1.0), (10, 0.5), (20, 0.25)]
    last = invoke("metrics", ids[0], "loss", "--uri", uri, "--json", "--limit", "1")
    assert [json.loads(line)["step"] for line in last.stdout.splitlines()] == [20]
    assert "the last 1 of 3 points" in last.stderr
    typo = invoke("metrics", ids[0], "los", "--uri", uri)
    assert typo.exit_code == 1 and "has no metric 'los'; did you mean loss?" in typo.output
    none = invoke("metrics", ids[2], "--uri", uri)
    assert none.exit_code == 0 and "has no metrics" in none.output


@pytest.mark.parametrize("command", [["experiments"], ["runs"], ["runs", "demo"], ["show", "abcdef12"],
                                     ["metrics", "abcdef12"], ["artifacts", "ls", "abcdef12"],
                                     ["runs", "delete", "abcdef12"]])
def test_read_only_commands_never_create_a_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 command: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(*command)
    assert result.exit_code == 1, result.output
    assert "no vault at ./labvault-data; run `labvault demo`" in result.output
    for uri in ("./typo", f"sqlite:///{tmp_path / 'typo.db'}", f"file://{tmp_path / 'typo2'}"):
        result = invoke(*command, "--uri", uri)
        assert result.exit_code == 1 and f"no vault at {uri}" in result.output
    assert list(tmp_path.iterdir()) == []  # nothing created
    env = invoke(*command, env={"LABVAULT_URI": "./from-env"})
    assert "no vault at ./from-env" in env.output


def test_times_show_their_zone_and_csv_is_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    try:
        assert fmt_time(0.0) == "1970-01-01 01:00:00 CET"
        assert fmt_time(15_638_400.0, seconds=False) == "1970-07-01 01:00 CET"
    finally:
        monkeypatch.undo()
        time.tzset()
    assert iso_utc(0.5) == "1970-01-01T00:00:00.500Z" and iso_utc(None) == ""
