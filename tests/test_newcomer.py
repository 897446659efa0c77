"""Issue 16: the habits, verbs and messages MLflow and W&B users bring with them, each pinned."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import labvault
from labvault.cli import app
from labvault.client.hints import UnknownKeyWarning

ENV = {"COLUMNS": "250", "LABVAULT_URI": ""}


def invoke(*args: str, **kwargs: Any) -> Any:
    return CliRunner().invoke(app, list(args), env={**ENV, **kwargs.pop("env", {})}, **kwargs)


@pytest.fixture
def vault(tmp_path: Path) -> Any:
    with labvault.open(f"sqlite:///{tmp_path / 'v.db'}") as v:
        exp = v.experiment("e")
        for i, lr in enumerate([0.1, 0.3, 0.5]):
            with exp.start_run(params={"lr": lr, "opt": "adam"}, tags={"epoch": str(i)}) as run:
                run.log_metric("val_accuracy", 0.5 + i / 10)
        yield v


def test_numpy_float32_param_is_stored_as_it_shows(vault: Any) -> None:
    run = vault.experiment("e").start_run(params={"lr": np.float32(0.1), "h": np.float16(0.3),
                                                  "nested": [np.float32(0.2)], "i": np.int64(3)})
    run.end()
    assert vault.get_run(run.id).params == {"lr": 0.1, "h": 0.3, "nested": [0.2], "i": 3}
    assert [r.id for r in vault.search_runs("e", "params.lr = 0.1 and params.i = 3")][-1] == run.id


def test_mlflow_filter_forms_match(vault: Any) -> None:
    def numbers(text: str) -> list[int]:
        return [r.number for r in vault.search_runs("e", text)]

    assert numbers("params.lr = '0.3'") == [2]
    assert numbers("attributes.status = 'FINISHED'") == [1, 2, 3]
    assert numbers("tags.epoch = 1") == [2]
    assert numbers("start_time > '2020-01-01'") == [1, 2, 3]
    assert numbers("start_time < '2020-01-01T00:00:00Z'") == []


def test_a_key_no_run_has_warns_with_the_closest_keys(vault: Any) -> None:
    with pytest.warns(UnknownKeyWarning, match=r"no run in the searched experiment has metrics\.val_acc; "
                                               r"did you mean metrics\.val_accuracy\?"):
        assert len(vault.search_runs("e", "metrics.val_acc > 0.1")) == 0
    with pytest.warns(UnknownKeyWarning, match=r"has params\.optimizer; did you mean params\.opt"):
        vault.search_runs("e", "params.lr > 0 or params.optimizer = 'adam'")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known keys and attributes never warn
        vault.search_runs("e", "metrics.val_accuracy > 0.1 and params.opt = 'adam' and status = 'finished'")


def test_cli_says_unknown_keys_double_quotes_and_short_prefixes(vault: Any) -> None:
    uri = vault.uri
    result = invoke("runs", "e", "--uri", uri, "--filter", "metrics.val_acc > 0.1")
    assert result.exit_code == 0
    assert "warning: no run in the searched experiment has metrics.val_acc; did you mean " \
           "metrics.val_accuracy?" in result.stderr
    result = invoke("runs", "e", "--uri", uri, "--filter", 'params.opt = "sgd"')
    assert result.exit_code != 0 and "strings take single quotes: write 'sgd'" in result.stderr
    result = invoke("show", "ab1", "--uri", uri)
    assert result.exit_code != 0 and "run id prefix 'ab1' is too short" in result.stderr


def test_frame_times_are_timezone_aware_utc(vault: Any) -> None:
    exp = vault.experiment("tz")
    with exp.start_run() as run:
        pass
    frame = vault.search_runs("tz").to_frame()
    start = frame.loc[0, "start_time"]
    assert str(frame["start_time"].dt.tz) == "UTC" and str(frame["end_time"].dt.tz) == "UTC"
    assert abs(start.timestamp() - run.start_time) < 1e-3  # the same instant, not shifted by the local zone


def test_server_without_backend_serves_the_default_store(tmp_path: Path) -> None:
    """``labvault server`` with no --backend serves ./labvault-data, the store ``labvault demo``, ``runs``
    and ``labvault.open()`` use, not an error (and not another store)."""
    import os
    import subprocess
    import sys

    import httpx
    from server_process import free_port, wait_healthy

    env = {**os.environ, "LABVAULT_URI": "", "LABVAULT_AUTH_DB": str(tmp_path / "auth.db")}
    made = subprocess.run([sys.executable, "-c", "import labvault\nwith labvault.open() as v:\n"
                           "    v.experiment('made-by-open')"], cwd=tmp_path, env=env, check=True,
                          capture_output=True, timeout=60)
    assert made.returncode == 0 and (tmp_path / "labvault-data" / "labvault.db").is_file()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "labvault", "server", "--insecure", "--port", str(port),
                             "--log-level", "warning"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        names = [e["name"] for e in httpx.get(f"{url}/api/v1/experiments", timeout=10).json()]
        assert names == ["made-by-open"]
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    banner = proc.stdout.read().decode() if proc.stdout else ""
    assert "labvault-data/labvault.db" in banner, banner
