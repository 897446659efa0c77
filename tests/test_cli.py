"""The ``labvault`` command line, driven in-process with typer's CliRunner against real stores."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import labvault
from labvault.cli import app
from labvault.cli.demo import _Dataset, _svg_plot

try:
    import labvault.store.sql.backend

    HAVE_SQL = True
    WHY_NOT_SQL = ""
except Exception as exc:  # the backend is written in parallel; skip cleanly until it imports
    HAVE_SQL = False
    WHY_NOT_SQL = f"labvault.store.sql.backend does not import yet: {exc!r}"

needs_sql = pytest.mark.skipif(not HAVE_SQL, reason=WHY_NOT_SQL or "sqlite backend missing")
HAVE_FILE = importlib.util.find_spec("labvault.store.file.backend") is not None
needs_file = pytest.mark.skipif(not HAVE_FILE, reason="labvault.store.file.backend does not exist yet")

ENV = {"COLUMNS": "250", "LABVAULT_URI": ""}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str, **kwargs: Any) -> Any:
    return runner.invoke(app, list(args), env={**ENV, **kwargs.pop("env", {})}, **kwargs)


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """One demo run shared by the read-only tests: (uri, demo output)."""
    if not HAVE_SQL:
        pytest.skip(WHY_NOT_SQL)
    uri = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'store.db'}"
    result = CliRunner().invoke(app, ["demo", "--uri", uri, "--epochs", "20"], env=ENV)
    assert result.exit_code == 0, result.output
    yield uri, result.output


def runs_json(runner: CliRunner, uri: str, *args: str) -> list[dict[str, Any]]:
    result = invoke(runner, "runs", "demo", "--uri", uri, "--json", *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def best_run_id(runner: CliRunner, uri: str) -> str:
    rows = runs_json(runner, uri, "--filter", "metrics.val_accuracy IS NOT NULL",
                     "--order-by", "metrics.val_accuracy desc", "--limit", "1")
    return str(rows[0]["id"])


# -- demo --------------------------------------------------------------------------------------------------
@needs_sql
def test_demo_end_to_end(demo_store: tuple[str, str]) -> None:
    uri, output = demo_store
    assert "val_accuracy" in output and "best run:" in output and "labvault --uri" in output
    with labvault.open(uri) as vault:
        runs = vault.search_runs("demo")
        parents = [r for r in runs if r.parent_id is None]
        assert len(parents) == 1 and parents[0].name == "grid"
        children = [r for r in runs if r.parent_id == parents[0].id]
        assert len(children) == 6 and len(runs) == 7
        assert all(r.status == "finished" for r in runs)
        best = max(children, key=lambda r: r.metrics["val_accuracy"])
        assert best.metrics["val_accuracy"] > 0.8
        assert best.id in output
        assert parents[0].results["best"]["run_id"] == best.id
        hist = best.metric_history("val_loss")
        assert list(hist.steps) == list(range(1, 21))
        assert {"lr", "l2", "epochs", "seed", "n_features"} <= set(best.params)
        assert best.tags["model"] == "logreg"
        confusion = best.results["confusion"]
        assert sum(map(sum, confusion)) == 400
        keys = [a.key for a in best.list_artifacts()]
        assert keys == ["model/weights.json", "plots/loss.svg", "report.json"]
        weights = json.loads(best.get_artifact("model/weights.json"))
        assert len(weights["weights"]) == 10
        assert best.get_artifact("plots/loss.svg").startswith(b"<svg")
        for grid_lr in (0.003, 0.03, 0.3):
            assert any(r.params["lr"] == grid_lr for r in children)


def test_demo_in_memory_store_and_repeat(runner: CliRunner) -> None:
    """Command wiring without any persistent backend: memory:// stores live for the process."""
    uri = "memory://cli-demo-test"
    for _ in range(2):
        result = invoke(runner, "demo", "--uri", uri, "--epochs", "3", "--experiment", "tiny")
        assert result.exit_code == 0, result.output
    with labvault.open(uri) as vault:
        runs = vault.search_runs("tiny")
        assert len(runs) == 14 and sorted(r.number for r in runs) == list(range(1, 15))


def test_demo_dataset_and_plot() -> None:
    data = _Dataset(0)
    assert data.x_train.shape == (1600, 10) and data.x_val.shape == (400, 10)
    assert set(data.y_train.tolist()) == {0.0, 1.0}
    assert (_Dataset(0).x_val == data.x_val).all()
    svg = _svg_plot({"loss": [1.0, 0.5, float("nan")], "val_loss": [1.1, 0.7, 0.6]}, "a<b")
    assert svg.startswith(b"<svg") and b"a&lt;b" in svg and svg.count(b"<polyline") == 2


# -- experiments / runs ------------------------------------------------------------------------------------
@needs_sql
def test_experiments(runner: CliRunner, demo_store: tuple[str, str]) -> None:
    uri, _ = demo_store
    result = invoke(runner, "experiments", "--uri", uri)
    assert result.exit_code == 0, result.output
    assert "demo" in result.output and "default" in result.output and " 7 " in result.output
    result = invoke(runner, "experiments", "--uri", uri, "--project", "nothing-here")
    assert result.exit_code == 0 and "0 experiment(s)" in result.output


@needs_sql
def test_runs_filter_order_limit(runner: CliRunner, demo_store: tuple[str, str]) -> None:
    uri, _ = demo_store
    rows = runs_json(runner, uri, "--filter", "params.lr > 0.01", "--order-by", "metrics.val_accuracy desc")
    assert len(rows) == 4
    accs = [r["metrics"]["val_accuracy"] for r in rows]
    assert accs == sorted(accs, reverse=True)
    assert all(r["params"]["lr"] > 0.01 for r in rows)

    rows = runs_json(runner, uri, "--order-by", "params.l2 desc", "--order-by", "params.lr", "--limit", "2")
    assert [(r["params"]["l2"], r["params"]["lr"]) for r in rows] == [(0.01, 0.003), (0.01, 0.03)]

    rows = runs_json(runner, uri, "--columns", "params.lr,metrics.val_accuracy,status", "-n", "0")
    assert len(rows) == 7 and set(rows[0]) == {"id", "number", "params.lr", "metrics.val_accuracy", "status"}

    result = invoke(runner, "runs", "demo", "--uri", uri, "--filter", "params.l2 = 0",
                    "--order-by", "metrics.val_accuracy desc")
    assert result.exit_code == 0, result.output
    assert "val_accuracy" in result.output and "lr_0.3 l2_0 " in result.output
    assert "lr_0.3 l2_0.01" not in result.output
    assert result.output.index("lr_0.3 l2_0") < result.output.index("lr_0.003 l2_0")

    result = invoke(runner, "runs", "demo", "--uri", uri, "--limit", "3")
    assert result.exit_code == 0 and "3+ run(s)" in result.output and "--limit 0" in result.output

    result = invoke(runner, "runs", "demo", "--uri", uri, "--columns", "params.lr,tags.model,end")
    assert result.exit_code == 0 and "logreg" in result.output


@needs_sql
def test_runs_narrow_terminal_fits_columns(runner: CliRunner, demo_store: tuple[str, str]) -> None:
    uri, _ = demo_store
    result = invoke(runner, "runs", "demo", "--uri", uri, "--order-by", "metrics.val_accuracy desc",
                    env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    table = [line for line in result.stdout.splitlines() if line.strip()]
    assert max(len(line) for line in table) <= 100
    assert "val_accuracy" in result.stdout  # named in --order-by, so it gets a column first
    assert "left out to fit" in result.output


# -- show --------------------------------------------------------------------------------------------------
@needs_sql
def test_show(runner: CliRunner, demo_store: tuple[str, str]) -> None:
    uri, _ = demo_store
    run_id = best_run_id(runner, uri)
    result = invoke(runner, "show", run_id, "--uri", uri)
    assert result.exit_code == 0, result.output
    for text in (run_id, "finished", "params", "confusion", "val_accuracy", "model/weights.json",
                 "report.json", "default/demo", "logreg"):
        assert text in result.output

    by_prefix = invoke(runner, "show", run_id[:8], "--uri", uri, "--json")
    assert by_prefix.exit_code == 0, by_prefix.output
    record = json.loads(by_prefix.stdout)
    assert record["id"] == run_id and record["status"] == "finished"
    assert record["metrics"]["val_loss"]["points"] == 20 and record["metrics"]["val_loss"]["last_step"] == 20
    assert [a["key"] for a in record["artifacts"]] == ["model/weights.json", "plots/loss.svg", "report.json"]
    assert record["parent_id"] and record["children"] == []

    parent = json.loads(invoke(runner, "show", record["parent_id"], "--uri", uri, "--json").stdout)
    assert len(parent["children"]) == 6 and run_id in parent["children"]


@needs_sql
def test_show_failed_run_error(runner: CliRunner, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'f.db'}"
    with labvault.open(uri) as vault, pytest.raises(RuntimeError), vault.experiment("e").start_run() as run:
        raise RuntimeError("boom [x]")
    result = invoke(runner, "show", run.id, "--uri", uri)
    assert result.exit_code == 0, result.output
    assert "failed" in result.output and "RuntimeError: boom [x]" in result.output


# -- artifacts ---------------------------------------------------------------------------------------------
@needs_sql
def test_artifacts_ls_and_get(runner: CliRunner, demo_store: tuple[str, str], tmp_path: Path) -> None:
    uri, _ = demo_store
    run_id = best_run_id(runner, uri)
    result = invoke(runner, "artifacts", "ls", run_id, "--uri", uri)
    assert result.exit_code == 0, result.output
    assert "model/weights.json" in result.output and "plots/loss.svg" in result.output
    result = invoke(runner, "artifacts", "ls", run_id, "--uri", uri, "--prefix", "plots/")
    assert "plots/loss.svg" in result.output and "report.json" not in result.output

    with labvault.open(uri) as vault:
        expected = vault.get_run(run_id).get_artifact("report.json")
    result = invoke(runner, "artifacts", "get", run_id, "report.json", "--uri", uri)
    assert result.exit_code == 0 and result.stdout_bytes == expected

    target = tmp_path / "report.json"
    result = invoke(runner, "artifacts", "get", run_id, "report.json", "--uri", uri, "-o", str(target))
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == expected

    target.write_bytes(b"mine")
    result = invoke(runner, "artifacts", "get", run_id, "report.json", "--uri", uri, "-o", str(target))
    assert result.exit_code == 1 and "FileExistsError" in result.output and "--force" in result.output
    assert target.read_bytes() == b"mine"
    result = invoke(runner, "artifacts", "get", run_id, "report.json", "--uri", uri, "-o", str(target),
                    "--force")
    assert result.exit_code == 0 and target.read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temp files left behind

    result = invoke(runner, "artifacts", "get", run_id, "nope.bin", "--uri", uri, "-o", str(tmp_path / "x"))
    assert result.exit_code == 1 and "NotFoundError" in result.output and not (tmp_path / "x").exists()


@needs_sql
def test_artifacts_get_binary_and_big(runner: CliRunner, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import labvault.cli.transfer as cli

    uri = f"sqlite:///{tmp_path / 'b.db'}"
    payload = bytes(range(256)) * 9000 + b"\r\n\x00\xff"
    with labvault.open(uri) as vault, vault.experiment("bin").start_run() as run:
        run.log_artifact("blob.bin", payload)
    monkeypatch.setattr(cli, "PROGRESS_MIN_BYTES", 1024)  # exercise the progress-bar path
    out = tmp_path / "out.bin"
    result = invoke(runner, "artifacts", "get", run.id, "blob.bin", "--uri", uri, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == payload
    result = invoke(runner, "artifacts", "get", run.id, "blob.bin", "--uri", uri)
    assert result.stdout_bytes == payload


# -- errors and usage --------------------------------------------------------------------------------------
def test_unknown_run_is_not_found(runner: CliRunner) -> None:
    result = invoke(runner, "show", "0123456789abcdef0123456789abcdef", "--uri", "memory://cli-errors")
    assert result.exit_code == 1
    assert "error: NotFoundError:" in result.output and "Traceback" not in result.output


def test_bad_filter_is_invalid_argument(runner: CliRunner) -> None:
    uri = "memory://cli-bad-filter"
    with labvault.open(uri) as vault, vault.experiment("e").start_run(params={"lr": 0.1}):
        pass
    result = invoke(runner, "runs", "e", "--uri", uri, "--filter", "params.lr >>> 1")
    assert result.exit_code == 1
    assert "error: InvalidArgumentError:" in result.output and "Traceback" not in result.output
    result = invoke(runner, "runs", "missing-experiment", "--uri", uri)
    assert result.exit_code == 1 and "NotFoundError" in result.output


def test_bad_uri_and_usage(runner: CliRunner) -> None:
    result = invoke(runner, "experiments", "--uri", "nosuchscheme://x")
    assert result.exit_code == 1 and "error: InvalidArgumentError:" in result.output
    result = invoke(runner, "runs", "e", "--uri", "memory://x", "--columns", "bogus")
    assert result.exit_code == 2
    result = invoke(runner, "runs", "--limit", "-1", "--uri", "memory://x")
    assert result.exit_code == 2
    result = invoke(runner, "demo", "--epochs", "0", "--uri", "memory://x")
    assert result.exit_code == 2


def test_global_uri_option(runner: CliRunner) -> None:
    uri = "memory://cli-global"
    with labvault.open(uri) as vault:
        vault.experiment("only-here", project="p1")
    result = invoke(runner, "--uri", uri, "experiments")
    assert result.exit_code == 0 and "only-here" in result.output and "p1" in result.output


def test_env_uri(runner: CliRunner) -> None:
    uri = "memory://cli-env"
    with labvault.open(uri) as vault:
        vault.experiment("from-env")
    result = invoke(runner, "experiments", env={"LABVAULT_URI": uri})
    assert result.exit_code == 0 and "from-env" in result.output


def test_version(runner: CliRunner) -> None:
    result = invoke(runner, "--version")
    assert result.exit_code == 0 and labvault.__version__ in result.output


@pytest.mark.parametrize("command", [
    [], ["demo"], ["experiments"], ["runs"], ["show"], ["artifacts"], ["artifacts", "get"],
    ["artifacts", "ls"], ["db"], ["db", "upgrade"],
])
def test_help(runner: CliRunner, command: list[str]) -> None:
    result = invoke(runner, *command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    if command and command not in (["artifacts"], ["db"]):
        assert "Example:" in result.output and "--uri" in result.output


# -- db upgrade --------------------------------------------------------------------------------------------
@needs_sql
def test_db_upgrade(runner: CliRunner, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'u.db'}"
    result = invoke(runner, "db", "upgrade", "--uri", uri)
    assert result.exit_code == 0, result.output
    assert "created" in result.output
    result = invoke(runner, "db", "upgrade", "--uri", uri)
    assert result.exit_code == 0 and "nothing to do" in result.output


@needs_sql
def test_db_upgrade_default_uri(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(runner, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "labvault-data" / "labvault.db").is_file()


def test_db_upgrade_non_sql(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "db", "upgrade", "--uri", "memory://x")
    assert result.exit_code == 0 and "nothing to upgrade" in result.output
    result = invoke(runner, "db", "upgrade", "--uri", str(tmp_path / "plain-dir"))
    assert result.exit_code == 0 and "nothing to upgrade" in result.output


# -- the file backend and the real console script ----------------------------------------------------------
@needs_file
def test_file_backend_round_trip(runner: CliRunner, tmp_path: Path) -> None:
    uri = str(tmp_path / "files")
    result = invoke(runner, "demo", "--uri", uri, "--epochs", "5")
    assert result.exit_code == 0, result.output
    rows = runs_json(runner, uri, "--order-by", "metrics.val_accuracy desc")
    assert len(rows) == 7 and rows[0]["status"] == "finished"
    result = invoke(runner, "show", rows[0]["id"][:10], "--uri", uri)
    assert result.exit_code == 0 and "report.json" in result.output


@needs_sql
def test_python_dash_m(tmp_path: Path) -> None:
    env = {**os.environ, "LABVAULT_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    done = subprocess.run([sys.executable, "-m", "labvault", "show", "deadbeef"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "error: NotFoundError:" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "labvault", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "labvault" in done.stdout


def test_import_is_cheap() -> None:
    code = "import sys, labvault.cli; print('numpy' in sys.modules, 'pandas' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False"], done.stderr


def test_cli_refuses_text_that_is_not_unicode(runner: CliRunner, tmp_path: Path) -> None:
    """Command-line bytes that are not UTF-8 arrive as lone surrogates; every command refuses them with a
    one-line InvalidArgumentError naming the value (exit 1), never a UnicodeEncodeError traceback."""
    auth = {"LABVAULT_AUTH_DB": str(tmp_path / "auth.db")}
    assert invoke(runner, "users", "add", "ana", "--role", "admin", env=auth).exit_code == 0
    uri = f"memory://{tmp_path.name}"
    bad = "laptop \udcff"
    for args, env in (
        (("tokens", "create", "ana", "--description", bad), auth),
        (("runs", "demo", "--uri", uri, "--filter", f"tags.t = '{bad}'"), {}),
        (("runs", "demo", "--uri", uri, "--order-by", f"params.{bad}"), {}),
        (("runs", bad, "--uri", uri), {}),
    ):
        result = invoke(runner, *args, env=env)
        assert result.exit_code == 1 and not isinstance(result.exception, UnicodeError), (
            args, result.output, result.exception)
        assert "InvalidArgumentError" in result.output and "\\udcff" in result.output, (args, result.output)
    from labvault.server.auth import AuthStore

    assert AuthStore(tmp_path / "auth.db").tokens() == []  # nothing was issued
