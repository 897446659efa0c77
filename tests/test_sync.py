"""Offline-first sync (``labvault.sync``): push, pull, status, copy, delete between real stores.

Every store is real: memory, file, SQLite, PostgreSQL (a throwaway database, a schema per test), Redis
(a key prefix per test, deleted afterwards), the labvault server in process (``asgi://``) and, for the
offline test, a ``labvault server`` process on a loopback socket that is stopped and started again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from s3_server import s3_server, s3_url  # noqa: F401  (fixtures)
from server_process import add_admin, free_port, start_server, stop_server
from test_conformance_postgres import pg_database  # noqa: F401  (module fixture)
from test_conformance_redis import fresh_redis_uri

import labvault
from labvault import sync
from labvault.client.vault import Vault
from labvault.errors import (
    BackendUnavailableError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    UnsupportedOperationError,
)
from labvault.server.app import create_app
from labvault.server.auth import AuthStore
from labvault.server.inprocess import serve_in_process
from labvault.store.abc import Backend

BACKENDS = ("memory", "file", "sqlite", "postgresql", "redis", "http")


# -- stores -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_token(tmp_path_factory: pytest.TempPathFactory) -> tuple[AuthStore, str]:
    store, _, token = add_admin(tmp_path_factory.mktemp("auth") / "auth.db", "sync")
    return store, token


@pytest.fixture
def make_store(
    tmp_path: Path, request: pytest.FixtureRequest, auth_token: tuple[AuthStore, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[str], str]]:
    """``make_store(kind)`` -> the URI of a fresh, empty store of that kind (cleaned up afterwards)."""
    stack = contextlib.ExitStack()

    def make(kind: str) -> str:
        tag = uuid.uuid4().hex[:10]
        if kind == "memory":
            return f"memory://sync-{tag}"
        if kind == "file":
            return str(tmp_path / f"file-{tag}")
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / f'sq-{tag}.db'}"
        if kind == "postgresql":
            db = request.getfixturevalue("pg_database")
            return f"{db}?schema=s_{secrets.token_hex(6)}"
        if kind == "redis":
            gen = fresh_redis_uri()
            uri = next(gen)
            stack.callback(lambda: next(gen, None))
            return uri
        if kind == "s3":
            return str(request.getfixturevalue("s3_url"))
        if kind == "http":
            store, token = auth_token
            monkeypatch.setenv("LABVAULT_TOKEN", token)
            return stack.enter_context(serve_in_process(create_app("memory://", auth=store)))
        raise AssertionError(kind)

    with stack:
        yield make


# -- helpers ------------------------------------------------------------------------------------------------
def fill(vault: Vault, points: int, name: str = "exp") -> dict[str, np.ndarray]:
    """An experiment with a parent, two children and a grandchild, metrics, artifacts and results."""
    rng = np.random.default_rng(7)
    exp = vault.experiment(name, project="proj")
    logged: dict[str, np.ndarray] = {}
    shared = rng.bytes(300_000)
    with exp.start_run(name="parent", params={"lr": 0.1, "layers": [64, 32]}, tags={"team": "a"}) as parent:
        values = rng.standard_normal(points)
        values[3] = np.nan
        parent.log_metric_series("loss", values, timestamps=1000.0 + np.arange(points) * 0.001)
        logged[parent.id] = values
        parent.log_result("confusion", [[5, 1], [0, 7]])
        parent.log_artifact("model/weights.bin", shared)
        parent.log_artifact("notes.txt", b"first")
        for i in range(2):
            with exp.start_run(name=f"child{i}", parent=parent, params={"fold": i}) as child:
                child.log_metrics({"acc": 0.5 + i / 10, "f1": 0.4}, step=0)
                child.log_metrics({"acc": 0.6 + i / 10, "f1": 0.5}, step=1)
                child.log_artifact("model/weights.bin", shared)  # same blob: stored and sent once
                if i == 0:
                    with exp.start_run(name="grandchild", parent=child) as grand:
                        grand.log_metric("x", 1.0, step=3)
    with pytest.raises(RuntimeError), exp.start_run(name="broken") as broken:
        broken.log_metric("loss", 9.0)
        raise RuntimeError("boom")
    return logged


def assert_same(a: Backend, b: Backend, name: str = "exp", project: str = "proj") -> int:
    """Both stores hold the same experiment: runs by id, every field, every point, every blob.

    Returns the number of metric points compared.
    """
    ea, eb = a.find_experiment(name, project), b.find_experiment(name, project)
    runs_a = {r.id: r for r in a.list_runs([ea.id])}
    runs_b = {r.id: r for r in b.list_runs([eb.id])}
    assert sorted(runs_a) == sorted(runs_b)
    points = 0
    for run_id, ra in runs_a.items():
        rb = runs_b[run_id]
        for attr in ("name", "parent_id", "status", "start_time", "end_time", "error", "params", "tags",
                     "results"):
            assert getattr(ra, attr) == getattr(rb, attr), (run_id, attr)
        assert sorted(ra.metrics) == sorted(rb.metrics)
        for key in ra.metrics:
            ha, hb = a.metric_history(run_id, key), b.metric_history(run_id, key)
            order_a, order_b = np.lexsort((ha.timestamps, ha.steps)), np.lexsort((hb.timestamps, hb.steps))
            assert np.array_equal(ha.steps[order_a], hb.steps[order_b]), (run_id, key)
            assert np.array_equal(ha.timestamps[order_a], hb.timestamps[order_b]), (run_id, key)
            assert np.array_equal(ha.values[order_a], hb.values[order_b], equal_nan=True), (run_id, key)
            points += len(ha)
        arts_a = [(x.key, x.size, x.digest) for x in a.list_artifacts(run_id)]
        arts_b = [(x.key, x.size, x.digest) for x in b.list_artifacts(run_id)]
        assert arts_a == arts_b
        for _key, _size, digest in arts_b:
            assert hashlib.sha256(b.blobs.get_content(digest)).hexdigest() == digest
    return points


def run_by_name(vault: Vault, name: str, exp: str = "exp") -> labvault.Run:
    return next(r for r in vault.experiment(exp, project="proj").runs() if r.name == name)


# -- the matrix: each backend as source and destination, push then pull back -------------------------------
RING = list(zip(BACKENDS, BACKENDS[1:] + BACKENDS[:1], strict=True))
PAIRS = RING + [(b, a) for a, b in RING]


@pytest.mark.parametrize(("src_kind", "dst_kind"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_matrix_push_then_pull(src_kind: str, dst_kind: str, make_store: Callable[[str], str]) -> None:
    points = 50_000
    src_uri, dst_uri = make_store(src_kind), make_store(dst_kind)
    with labvault.open(src_uri, remote=dst_uri) as local, labvault.open(dst_uri) as remote:
        logged = fill(local, points)
        report = local.push("exp")
        assert report.runs_created == 5 and report.points_sent == points + 10
        assert report.blobs_sent == 2  # the shared 300 kB blob once, notes.txt once
        assert assert_same(local.backend, remote.backend) == points + 10
        parent = run_by_name(local, "parent")
        assert np.array_equal(remote.get_run(parent.id).metric_history("loss").values, logged[parent.id],
                              equal_nan=True)
        again = local.push("exp")
        assert not again.changed and again.points_sent == 0 and again.runs_unchanged == 5
        # the remote moves on: more points on an existing run, a tag, a new run; pull brings it back
        rparent = remote.get_run(parent.id)
        rparent.log_metric_series("loss", [1.0, 2.0], steps=[points, points + 1], timestamps=[5e9, 5e9 + 1])
        rparent.set_tag("team", "b")
        with remote.experiment("exp", project="proj").start_run(name="remote-only", parent=parent.id) as r:
            r.log_metric("z", 3.0)
            r.log_artifact("r.txt", b"from the remote")
        assert {s.state for s in local.sync_status("exp")} == {"in sync", "behind"}
        pulled = local.pull("exp")
        assert pulled.name == "exp" and local.last_sync is not None
        assert local.last_sync.runs_created == 1 and local.last_sync.runs_updated == 1
        assert local.last_sync.points_sent == 3 and local.last_sync.runs_unchanged == 4
        assert assert_same(local.backend, remote.backend) == points + 13
        assert {s.state for s in local.sync_status("exp")} == {"in sync"}
        local.pull("exp")
        assert local.last_sync.points_sent == 0 and not local.last_sync.changed
        assert not local.push("exp").changed


def _s3_metadata_backend() -> bool:
    """Whether an ``s3://`` metadata backend is registered (it is written in parallel with sync)."""
    from labvault.store import registry

    try:
        registry.backend_class("s3")
    except labvault.LabvaultError:
        return False
    return True


S3_PAIRS = [("s3", "sqlite"), ("file", "s3"), ("s3", "http")]


@pytest.mark.parametrize(("src_kind", "dst_kind"), S3_PAIRS, ids=[f"{a}->{b}" for a, b in S3_PAIRS])
def test_matrix_s3(src_kind: str, dst_kind: str, make_store: Callable[[str], str]) -> None:
    if not _s3_metadata_backend():
        pytest.skip("no s3:// metadata backend is registered yet")
    test_matrix_push_then_pull(src_kind, dst_kind, make_store)


# -- semantics -----------------------------------------------------------------------------------------------
@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Vault, Vault]]:
    """A file vault whose remote is a SQLite store, and a handle on that remote."""
    remote_uri = f"sqlite:///{tmp_path / 'remote.db'}"
    with labvault.open(str(tmp_path / "local"), remote=remote_uri) as local, \
            labvault.open(remote_uri) as remote:
        yield local, remote


def test_push_sends_only_changed_runs_and_new_points(pair: tuple[Vault, Vault]) -> None:
    local, remote = pair
    fill(local, 1000)
    local.push()
    parent = run_by_name(local, "parent")
    local.get_run(parent.id).log_metric_series("loss", [7.0], steps=[1000], timestamps=[9e9])
    report = local.push(remote.experiment("exp", project="proj"))  # an experiment of the other vault
    assert (report.runs_updated, report.runs_created, report.runs_unchanged) == (1, 0, 4)
    assert report.points_sent == 1 and report.blobs_sent == 0
    assert len(remote.get_run(parent.id).metric_history("loss")) == 1001
    assert_same(local.backend, remote.backend)


def test_metrics_merge_as_union_both_ways(pair: tuple[Vault, Vault]) -> None:
    local, remote = pair
    with local.experiment("u", project="proj").start_run(name="r") as run:
        run.log_metric_series("m", [1.0, 2.0], steps=[0, 1], timestamps=[10.0, 11.0])
    local.push("u")
    local.get_run(run.id).log_metric_series("m", [3.0], steps=[2], timestamps=[12.0])
    remote.get_run(run.id).log_metric_series("m", [30.0], steps=[2], timestamps=[20.0])
    assert local.sync_status("u")[0].state == "diverged"  # both moved; metrics never conflict
    local.push("u")
    assert local.sync_status("u")[0].state == "behind"  # the remote's own point is still to pull
    local.pull("u")
    for v in (local, remote):
        h = v.get_run(run.id).metric_history("m")
        assert sorted(zip(h.steps.tolist(), h.timestamps.tolist(), h.values.tolist(), strict=True)) == [
            (0, 10.0, 1.0), (1, 11.0, 2.0), (2, 12.0, 3.0), (2, 20.0, 30.0)]
    assert local.sync_status("u")[0].state == "in sync"
    assert not local.push("u").changed
    local.pull("u")
    assert local.last_sync is not None and not local.last_sync.changed


def _tag_t_diverged(local: Vault, remote: Vault) -> str:
    """A run ``r`` of experiment ``c`` (project ``proj``), pushed, then its tag ``t`` set to ``mine`` locally
    and ``theirs`` on the remote; its id."""
    with local.experiment("c", project="proj").start_run(name="r", tags={"t": "0"}) as run:
        pass
    local.push("c")
    local.get_run(run.id).set_tag("t", "mine")
    remote.get_run(run.id).set_tag("t", "theirs")
    return run.id


def test_conflicting_tags_and_params_raise_naming_run_and_fields(pair: tuple[Vault, Vault]) -> None:
    local, remote = pair
    run_id = _tag_t_diverged(local, remote)
    local.get_run(run_id).log_param("seed", 1)
    remote.get_run(run_id).log_param("seed", 2)
    remote.get_run(run_id).set_tag("other", "x")  # changed on the remote only: no conflict
    [status] = local.sync_status("c")
    assert status.state == "diverged" and status.conflicts == ["p:seed", "t:t"]
    for op in (lambda: local.push("c"), lambda: local.pull("c")):
        with pytest.raises(ConflictError) as info:
            op()
        text = str(info.value)
        assert run_id in text and "'seed'" in text and "'t'" in text and "mine" in text and "theirs" in text
    assert remote.get_run(run_id).tags["t"] == "theirs"  # nothing written
    with pytest.raises(InvalidArgumentError):
        local.push("c", on_conflict="mine")  # type: ignore[arg-type]
    report = local.push("c", on_conflict="ours")
    assert sorted(report.conflicts_resolved) == [f"{run_id}:p:seed", f"{run_id}:t:t"]
    assert remote.get_run(run_id).tags == {"t": "mine", "other": "x"}
    assert remote.get_run(run_id).params == {"seed": 2}  # write-once: each store keeps its param
    local.pull("c")
    assert local.get_run(run_id).tags == {"t": "mine", "other": "x"}
    assert [s.state for s in local.sync_status("c")] == ["in sync"]


def test_theirs_takes_the_remote_value_on_pull(pair: tuple[Vault, Vault]) -> None:
    local, remote = pair
    run_id = _tag_t_diverged(local, remote)
    local.pull("c", on_conflict="theirs")
    assert local.get_run(run_id).tags["t"] == "theirs"
    assert [s.state for s in local.sync_status("c")] == ["in sync"]
    assert not local.push("c").changed


def test_status_ahead_behind_in_sync(pair: tuple[Vault, Vault]) -> None:
    local, remote = pair
    exp = local.experiment("s", project="proj")
    with exp.start_run(name="a") as a, exp.start_run(name="b") as b:
        pass
    assert [s.state for s in local.sync_status("s")] == ["ahead", "ahead"]
    local.push("s")
    local.get_run(a.id).log_result("acc", 1.0)
    remote.get_run(b.id).log_metric_series("m", [1.0])
    states = {s.run_id: s for s in local.sync_status("s")}
    assert states[a.id].state == "ahead" and states[a.id].changed == ["r:acc"]
    assert states[b.id].state == "behind" and states[b.id].changed == ["m:m"]
    assert states[a.id].local_revision != states[a.id].remote_revision


def test_pull_by_url_returns_local_copy_and_downloads_only_when_newer(tmp_path: Path) -> None:
    remote_uri = str(tmp_path / "server-store")
    with labvault.open(remote_uri) as remote:
        fill(remote, 200, name="shared")
    with labvault.open(f"sqlite:///{tmp_path / 'l.db'}") as local:
        with pytest.raises(InvalidArgumentError, match="needs a remote"):
            local.pull("shared")
        exp = local.pull(f"file://{remote_uri}#proj/shared")
        assert exp.vault is local and len(exp.runs()) == 5
        assert local.last_sync is not None and local.last_sync.runs_created == 5
        local.pull("shared", from_=f"file://{remote_uri}")
        assert local.last_sync.runs_unchanged == 5 and not local.last_sync.changed
        with labvault.open(remote_uri) as remote:
            assert_same(remote.backend, local.backend, "shared")
        with pytest.raises(NotFoundError, match="nope"):
            local.pull("nope", from_=f"file://{remote_uri}")


def test_delete_experiment_modes(pair: tuple[Vault, Vault], tmp_path: Path) -> None:
    local, remote = pair
    fill(local, 10)
    local.push("exp")
    local.delete_experiment("exp", mode="remote")
    with pytest.raises(NotFoundError):
        remote.backend.find_experiment("exp")
    assert local.backend.find_experiment("exp")
    # the remote copy is gone, so the next push sends everything again
    report = local.push("exp")
    assert report.runs_created == 5
    assert_same(local.backend, remote.backend)
    local.delete_experiment("exp", mode="all")
    for v in (local, remote):
        with pytest.raises(NotFoundError):
            v.backend.find_experiment("exp")
    with labvault.open(str(tmp_path / "alone")) as alone, pytest.raises(UnsupportedOperationError):
        alone.delete_experiment("x", mode="all")
    # "all" deletes whichever side has it; neither -> NotFoundError
    with local.experiment("only-here").start_run():
        pass
    local.delete_experiment("only-here", mode="all")
    with pytest.raises(NotFoundError, match="only-here"):
        local.delete_experiment("only-here", mode="all")
    with pytest.raises(NotFoundError):
        local.delete_experiment("exp", mode="remote")


def test_copy_whole_vault_is_idempotent(tmp_path: Path, make_store: Callable[[str], str]) -> None:
    src, dst = str(tmp_path / "src"), make_store("sqlite")
    with labvault.open(src) as v:
        fill(v, 500, name="one")
        fill(v, 50, name="two")
    first = labvault.copy(src, dst)
    assert first.runs_created == 10 and sorted(first.experiments) == ["proj/one", "proj/two"]
    second = labvault.copy(src, dst)
    assert not second.changed and second.points_sent == 0 and second.blobs_sent == 0
    only = labvault.copy(dst, make_store("memory"), experiments=["two"])
    assert only.experiments == ["proj/two"]
    with labvault.open(src) as a, labvault.open(dst) as b:
        assert_same(a.backend, b.backend, "one")
        assert_same(a.backend, b.backend, "two")


def test_remote_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    remote_uri = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("LABVAULT_REMOTE", remote_uri)
    with labvault.open(str(tmp_path / "local")) as local:
        assert local.remote == remote_uri and local.online
        with local.experiment("e").start_run() as run:
            run.log_metric("m", 1.0)
        local.push()
    with labvault.open(remote_uri) as remote:
        assert remote.get_run(run.id).metric_history("m").values.tolist() == [1.0]


# -- resumable: a push killed half way -----------------------------------------------------------------------
# The pusher kills itself 10 ms after its fourth run is done (somewhere inside the fifth): a kill sent by
# the test after reading the progress line raced the remaining ~150 ms of the push on a busy machine.
_PUSHER = textwrap.dedent("""
    import os, signal, sys, threading, labvault
    local, remote = sys.argv[1], sys.argv[2]
    def progress(phase, done, total):
        print(done, total, flush=True)
        if done == 4:
            threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGKILL)).start()
    with labvault.open(local, remote=remote) as vault:
        vault.push(progress=progress)
""")


def test_push_killed_half_way_finishes_without_duplicates(tmp_path: Path) -> None:
    local_uri, remote_uri = str(tmp_path / "local"), f"sqlite:///{tmp_path / 'remote.db'}"
    with labvault.open(local_uri) as local:
        exp = local.experiment("big", project="proj")
        for i in range(12):
            with exp.start_run(name=f"r{i}") as run:
                run.log_metric_series("loss", np.arange(150_000, dtype=np.float64) + i,
                                      timestamps=np.arange(150_000) * 0.5)
                run.log_metric_series("acc", np.linspace(0, 1, 50_000))
                run.log_artifact("a.bin", os.urandom(200_000))
    proc = subprocess.Popen([sys.executable, "-c", _PUSHER, local_uri, remote_uri], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parent.parent)
    assert proc.stdout is not None
    proc.stdout.read()
    assert proc.wait() == -signal.SIGKILL
    with labvault.open(remote_uri) as remote:
        done_before = len(remote.experiment("big", project="proj").runs())
    assert 4 <= done_before < 12
    with labvault.open(local_uri, remote=remote_uri) as local, labvault.open(remote_uri) as remote:
        report = local.push()
        assert report.runs_unchanged >= 4 and report.runs_created + report.runs_updated == 12 - \
            report.runs_unchanged
        assert assert_same(local.backend, remote.backend, "big") == 12 * 200_000
        assert not local.push().changed


# -- offline: the server stops, logging goes on, push later --------------------------------------------------
def test_offline_logging_then_push(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABVAULT_TOKEN", "")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port, "--insecure")
    try:
        with labvault.open(str(tmp_path / "local"), remote=url, flush_interval=0.05) as local:
            exp = local.experiment("offline", project="proj")
            with exp.start_run(name="online-run") as first:
                first.log_metric("m", 1.0)
            local.push("offline")
            assert local.online
            stop_server(server)
            assert not local.online
            logged: list[tuple[int, float, float]] = []
            with exp.start_run(name="offline-run", params={"lr": 0.5}) as run:
                for step in range(2000):
                    value = float(np.sin(step))
                    ts = 1_700_000_000.0 + step
                    run.log_metric("loss", value, step=step, timestamp=ts)
                    logged.append((step, value, ts))
                run.log_artifact("out.bin", b"x" * 100_000)
            with pytest.raises(BackendUnavailableError):
                local.push("offline")
            server = start_server(tmp_path, port, "--insecure")
            assert local.online
            report = local.push("offline")
            assert report.runs_created == 1 and report.points_sent == 2000 and report.runs_unchanged == 1
            with labvault.open(url) as remote:
                got = remote.get_run(run.id)
                h = got.metric_history("loss")
                assert list(zip(h.steps.tolist(), h.values.tolist(), h.timestamps.tolist(),
                                strict=True)) == logged
                assert got.params == {"lr": 0.5} and got.status == "finished"
                assert got.get_artifact("out.bin") == b"x" * 100_000
                assert_same(local.backend, remote.backend, "offline")
    finally:
        stop_server(server)


def test_state_survives_reopen_and_is_kept_per_remote(tmp_path: Path) -> None:
    r1, r2 = f"sqlite:///{tmp_path / 'r1.db'}", f"sqlite:///{tmp_path / 'r2.db'}"
    local_uri = f"sqlite:///{tmp_path / 'local.db'}"
    with labvault.open(local_uri, remote=r1) as local:
        fill(local, 100)
        local.push()
        assert local.push(to=r2).runs_created == 5
    with labvault.open(local_uri, remote=r1) as local:
        assert not local.push().changed
        assert not local.push(to=r2).changed
        keys = local.backend.blobs.list(sync.STATE_PREFIX)
        remotes = local.sync_remotes()
    assert sorted(keys) == sorted([sync.state_key(r1), sync.state_key(r2)])
    assert [r["remote"] for r in remotes] == [r2, r1] and [r["runs"] for r in remotes] == [5, 5]
    assert sync._redact("postgresql://ana:secret@db:5432/x") == "postgresql://ana:***@db:5432/x"


# -- the command line --------
def test_cli_push_status_pull_copy(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from labvault.cli import app

    runner = CliRunner()
    local, remote = str(tmp_path / "local"), f"sqlite:///{tmp_path / 'remote.db'}"
    env = {"LABVAULT_URI": "", "LABVAULT_REMOTE": "", "COLUMNS": "200"}
    with labvault.open(local) as v:
        fill(v, 300)
        parent = run_by_name(v, "parent")
    result = runner.invoke(app, ["push", "--uri", local, "--remote", remote, "--workers", "2"], env=env)
    assert result.exit_code == 0, result.output
    assert "5 run(s) created" in result.output and "310 metric point(s)" in result.output
    result = runner.invoke(app, ["push", "exp", "--uri", local], env={**env, "LABVAULT_REMOTE": remote})
    assert result.exit_code == 0 and "already up to date" in result.output
    with labvault.open(remote) as r:
        r.get_run(parent.id).set_tag("team", "remote")
    with labvault.open(local) as v:
        v.get_run(parent.id).set_tag("team", "local")
    result = runner.invoke(app, ["status", "exp", "--uri", local, "--remote", remote, "--json"], env=env)
    assert result.exit_code == 0, result.output
    states = {s["run_id"]: s for s in json.loads(result.output)}
    assert states[parent.id]["state"] == "diverged" and states[parent.id]["conflicts"] == ["t:team"]
    result = runner.invoke(app, ["push", "--uri", local, "--remote", remote], env=env)
    assert result.exit_code == 1 and "ConflictError" in result.output and parent.id in result.output
    result = runner.invoke(app, ["pull", f"{remote}#proj/exp", "--uri", local, "--on-conflict", "theirs"],
                           env=env)
    assert result.exit_code == 0, result.output
    with labvault.open(local) as v:
        assert v.get_run(parent.id).tags["team"] == "remote"
    copy_to = str(tmp_path / "copy")
    result = runner.invoke(app, ["copy", remote, copy_to, "-e", "exp"], env=env)
    assert result.exit_code == 0 and "5 run(s) created" in result.output
    with labvault.open(remote) as a, labvault.open(copy_to) as b:
        assert assert_same(a.backend, b.backend) == 310
    result = runner.invoke(app, ["push", "--uri", local], env=env)
    assert result.exit_code == 1 and "no remote" in result.output


def test_over_the_memory_budget_histories_are_read_again(pair: tuple[Vault, Vault],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    local, remote = pair
    monkeypatch.setattr(sync.transfer, "HISTORY_BUDGET", 10)  # read there
    fill(local, 3000)
    local.push("exp")
    run = run_by_name(local, "parent")
    remote.get_run(run.id).log_metric_series("loss", [5.0], steps=[10**6])
    local.get_run(run.id).log_metric_series("loss", [6.0], steps=[10**6 + 1])
    assert local.push("exp").points_sent == 1
    local.pull("exp")
    assert assert_same(local.backend, remote.backend) == 3000 + 10 + 2


def test_parent_in_an_unsynced_experiment_is_named(pair: tuple[Vault, Vault]) -> None:
    local, _remote = pair
    with local.experiment("a").start_run(name="outer") as outer, \
            local.experiment("b").start_run(name="inner", parent=outer) as inner:
        pass
    with pytest.raises(NotFoundError, match=f"{inner.id}'s parent run {outer.id}.*sync that one first"):
        local.push("b")
    local.push(["a", "b"])
    assert [s.state for s in local.sync_status("b")] == ["in sync"]


def test_missing_points_by_step_and_timestamp() -> None:
    from labvault.domain import MetricSeries

    def series(points: list[tuple[int, float, float]]) -> MetricSeries:
        return MetricSeries("k", np.array([p[0] for p in points], dtype=np.int64),
                            np.array([p[1] for p in points]), np.array([p[2] for p in points]))

    src = series([(0, 1.0, 10.0), (1, 2.0, 11.0), (1, 2.5, 12.0), (2, 3.0, 13.0)])
    prefix = sync._missing_points(src, series([(0, 1.0, 10.0), (1, 2.0, 11.0)]))  # appended since
    assert list(zip(prefix.steps.tolist(), prefix.timestamps.tolist(), strict=True)) == [(1, 12.0), (2, 13.0)]
    mixed = sync._missing_points(src, series([(2, 3.0, 13.0), (0, 9.0, 10.0), (5, 0.0, 1.0)]))
    assert list(zip(mixed.steps.tolist(), mixed.timestamps.tolist(), strict=True)) == [(1, 11.0), (1, 12.0)]
    assert len(sync._missing_points(src, src)) == 0
    assert sync.series_digest(src) == sync.series_digest(series(
        [(2, 3.0, 13.0), (1, 2.5, 12.0), (0, 1.0, 10.0), (1, 2.0, 11.0)]))  # order-independent
    assert sync.series_digest(src) != sync.series_digest(series([(0, 1.0, 10.0), (1, 2.0, 11.0)]))


def test_status_of_runs_never_synced_between_these_stores(tmp_path: Path) -> None:
    a, b = f"sqlite:///{tmp_path / 'a.db'}", str(tmp_path / "b")
    with labvault.open(a) as va, va.experiment("e").start_run(name="r", tags={"k": "1"}) as run:
        run.log_metric_series("m", [1.0, 2.0])
    labvault.copy(a, b)  # b has the run, but a keeps no sync state for b
    with labvault.open(a, remote=b) as va, labvault.open(b) as vb:
        assert [s.state for s in va.sync_status("e")] == ["in sync"]
        vb.get_run(run.id).log_result("extra", 1)
        assert [(s.state, s.changed) for s in va.sync_status("e")] == [("behind", ["r:extra"])]
        vb.get_run(run.id).set_tag("k", "2")
        [status] = va.sync_status("e")
        assert status.state == "diverged" and status.conflicts == ["t:k"]
        with pytest.raises(ConflictError, match="'k'"):
            va.push("e")


def test_one_transfer_at_a_time_and_dead_holders_are_taken_over(pair: tuple[Vault, Vault]) -> None:
    import json
    import socket

    local, _remote = pair
    fill(local, 100)
    assert local.remote is not None
    lock = sync.SyncLock(local.backend.blobs, local.remote)
    with lock, pytest.raises(ConflictError, match=f"process {os.getpid()}"):
        local.push("exp")
    assert not local.backend.blobs.exists(lock.key)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    local.backend.blobs.put(lock.key, json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                                  "time": time.time()}).encode())
    assert local.push("exp").runs_created == 5  # the holder died: its lock is taken over
    local.backend.blobs.put(lock.key, json.dumps({"pid": 1, "host": "elsewhere",
                                                  "time": time.time() - 3600}).encode())
    assert not local.push("exp").changed  # not refreshed for an hour: stale
    assert not local.backend.blobs.exists(lock.key)


def test_parallel_push_sends_each_shared_blob_once(pair: tuple[Vault, Vault]) -> None:
    local, remote = pair
    shared = os.urandom(500_000)
    exp = local.experiment("par", project="proj")
    with exp.start_run(name="root") as root:
        pass
    for i in range(12):
        with exp.start_run(name=f"c{i}", parent=root) as run:
            run.log_artifact("shared.bin", shared)
            run.log_artifact("own.bin", os.urandom(1000))
            run.log_metric_series("m", np.arange(100.0) + i)
    with pytest.raises(InvalidArgumentError, match="workers"):
        local.push("par", workers=0)
    report = local.push("par", workers=8)
    assert report.runs_created == 13 and report.blobs_sent == 13 and report.points_sent == 1200
    assert report.bytes_sent == 500_000 + 12 * 1000
    assert_same(local.backend, remote.backend, "par")


def test_rename_delete_and_resume_travel_with_a_push(pair: tuple[Vault, Vault]) -> None:
    """A renamed, deleted, or resumed run is the same run on the remote after the next push: the name (its
    own summary field), the deletion tag, and the emptied end time and error of a resumed run."""
    local, remote = pair
    exp = local.experiment("verbs")
    with exp.start_run("draft") as named:
        named.log_metric("m", 1.0)
    with contextlib.suppress(RuntimeError), exp.start_run("crashed") as crashed:
        raise RuntimeError("preempted")
    local.push(exp)
    assert remote.get_run(crashed.id).error is not None
    named.rename("final")
    local.delete_run(named)
    resumed = exp.start_run(run_id=crashed.id, resume=True)
    local.push(exp)
    there = remote.get_run(named.id)
    assert there.name == "final" and there.deleted
    again = remote.get_run(crashed.id)
    assert (again.status, again.end_time, again.error) == ("running", None, None)
    assert [s.state for s in local.sync_status(exp)] == ["in sync", "in sync"]
    resumed.end()
