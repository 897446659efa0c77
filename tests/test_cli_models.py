"""``labvault models ls/show/alias`` over a real store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

import labvault
from labvault.cli import app

ENV = {"COLUMNS": "200", "LABVAULT_URI": ""}


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=ENV)


def test_models_commands(tmp_path: Path) -> None:
    uri = str(tmp_path / "store")
    assert "no vault at" in invoke("models", "ls", "--uri", uri).output  # read-only: nothing created
    with labvault.open(uri) as vault:
        vault.experiment("train")  # the store exists, with no model yet
        empty = invoke("models", "ls", "--uri", uri)
        assert empty.exit_code == 0 and "no models yet" in empty.output
        first = vault.create_model(None, np.zeros(3), name="weights")
        first.instance = np.ones(3)
        vault.update_model(first)
        with vault.experiment("train").start_run() as run:
            run.log_model("clf", {"coef": [1, 2]})
    listed = invoke("models", "ls", "--uri", uri)
    assert listed.exit_code == 0 and "2 model(s)" in listed.output and "weights" in listed.output
    rows = [json.loads(line) for line in invoke("models", "ls", "--uri", uri, "--json").stdout.splitlines()]
    assert [(r["instance_id"], r["name"], r["version"]) for r in rows] == [(1, "weights", 2), (2, "clf", 1)]
    assert rows[1]["source_run"] == run.id and rows[1]["format"] == "json"
    alias = invoke("models", "alias", "weights", "production", "1", "--uri", uri)
    assert alias.exit_code == 0 and "production -> version 1" in alias.output
    shown = [json.loads(line)
             for line in invoke("models", "show", "1", "--uri", uri, "--json").stdout.splitlines()]
    assert [(r["version"], r["aliases"]) for r in shown] == [(1, ["production"]), (2, [])]
    missing = invoke("models", "show", "nope", "--uri", uri)
    assert missing.exit_code == 1 and "no model 'nope'" in missing.output
    bad = invoke("models", "alias", "weights", "production", "9", "--uri", uri)
    assert bad.exit_code == 1 and "no version 9" in bad.output


def test_watch_replays_after_an_id_filters_and_names_a_bad_kind(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'w.db'}"
    with labvault.open(uri) as vault:
        exp = vault.experiment("watched")
        with vault.watch(kinds="run.finished") as feed:
            with exp.start_run():
                pass
            first = feed.get(timeout=20)
        assert first is not None and first.id
        later = []
        for _ in range(2):
            with exp.start_run() as run:
                run.set_tag("t", "v")
            later.append(run.id)
        vault.experiment("other").start_run().end()
    got = invoke("watch", "--uri", uri, "--after", first.id, "-k", "run.finished", "-e", "watched",
                 "--json", "--count", "2", "--timeout", "20")
    assert got.exit_code == 0, got.output
    rows = [json.loads(line) for line in got.stdout.splitlines()]
    assert [(r["kind"], r["run_id"]) for r in rows] == [("run.finished", rid) for rid in later]
    table = invoke("watch", "--uri", uri, "--after", first.id, "-k", "tags", "--count", "1",
                   "--timeout", "20")
    assert table.exit_code == 0 and "tags.set" in table.output and later[0][:8] in table.output
    bad = invoke("watch", "--uri", uri, "-k", "run.finishd", "--timeout", "1")
    assert bad.exit_code == 1 and "run.finishd" in bad.output
