"""Vault-level behaviour that is not backend-specific: defaults, env, lazy imports, exit flushing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import labvault
from labvault.errors import InvalidArgumentError


def _python(code: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("LABVAULT_URI", None) if env is None or "LABVAULT_URI" not in env else None
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env=full_env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_is_lazy(tmp_path: Path) -> None:
    out = _python(
        "import sys, labvault; heavy = ['numpy', 'pandas', 'sqlalchemy', 'jsonschema', 'filelock']; "
        "print([m for m in heavy if m in sys.modules])", tmp_path)
    assert out.strip() == "[]"


def test_default_store_is_embedded_sqlite(tmp_path: Path) -> None:
    code = (
        "import labvault\n"
        "with labvault.open() as v:\n"
        "    print(type(v.backend).__name__)\n"
        "    with v.experiment('e').start_run() as r:\n"
        "        r.log_artifact('a.txt', b'x'); r.log_artifact('big.bin', b'y' * 100_000)\n"
    )
    assert _python(code, tmp_path).strip() == "SQLBackend"
    assert (tmp_path / "labvault-data" / "labvault.db").is_file()
    # Small blobs live inside the database, large ones in the sibling folder.
    assert len([p for p in (tmp_path / "labvault-data" / "labvault-blobs").rglob("*") if p.is_file()]) == 1
    # Opening the directory explicitly finds the same embedded store.
    code2 = "import labvault\nprint([e.name for e in labvault.open('./labvault-data').experiments()])"
    assert _python(code2, tmp_path).strip() == "['e']"


def test_env_uri(tmp_path: Path) -> None:
    code = "import labvault\nv = labvault.open(); print(type(v.backend).__name__); v.close()"
    env = {"LABVAULT_URI": f"file://{tmp_path / 'via-env'}"}
    assert _python(code, tmp_path, env).strip() == "FileBackend"


def test_atexit_flushes_buffered_points(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 's.db'}"
    code = (
        "import labvault\n"
        f"v = labvault.open({uri!r}, flush_interval=3600)\n"
        "r = v.experiment('e').start_run()\n"
        "[r.log_metric('m', float(i)) for i in range(1000)]\n"
        "print(r.id)\n"  # no flush, no close: the interpreter's exit must write the buffer
    )
    run_id = _python(code, tmp_path).strip()
    with labvault.open(uri) as vault:
        assert len(vault.get_run(run_id).metric_history("m")) == 1000


def test_closed_vault_refuses_writes() -> None:
    vault = labvault.open("memory://")
    exp = vault.experiment("e")
    vault.close()
    vault.close()  # twice is fine
    with pytest.raises(InvalidArgumentError, match="closed"):
        exp.start_run()


@pytest.mark.parametrize("value", [0, -1, "fast", float("inf")])
def test_bad_flush_interval(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match="flush_interval"):
        labvault.open("memory://", flush_interval=value)  # type: ignore[arg-type]


def test_frame_columns_and_types() -> None:
    with labvault.open("memory://") as vault:
        exp = vault.experiment("e")
        for lr in (0.1, 0.2):
            with exp.start_run(params={"lr": lr}, tags={"k": "v"}) as run:
                run.log_metric("acc", lr * 2)
        frame = vault.search_runs("e").to_frame()
        assert list(frame.columns[:8]) == ["id", "experiment", "number", "name", "parent_id", "status",
                                           "start_time", "end_time"]
        assert set(frame.columns[8:]) == {"params.lr", "metrics.acc", "tags.k"}
        assert frame["metrics.acc"].tolist() == [0.2, 0.4]
        assert str(frame["start_time"].dtype).startswith("datetime64")
        empty = vault.search_runs("e", filter="params.lr > 5").to_frame()
        assert len(empty) == 0 and "id" in empty.columns


def _break(monkeypatch: pytest.MonkeyPatch, backend: object, method: str) -> object:
    """Make ``backend.<method>`` raise ``OSError("disk full")``; return the method it was."""
    original = getattr(backend, method)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(backend, method, broken)
    return original


def test_flush_failure_keeps_points(monkeypatch: pytest.MonkeyPatch) -> None:
    with labvault.open("memory://") as vault:
        run = vault.experiment("e").start_run()
        run.log_metric("m", 1.0)
        original = _break(monkeypatch, vault.backend, "log_metrics")
        with pytest.raises(OSError):
            run.flush()
        monkeypatch.setattr(vault.backend, "log_metrics", original)
        run.log_metric("m", 2.0)
        assert run.metric_history("m").values.tolist() == [1.0, 2.0]
        run.end()


def test_small_artifacts_are_buffered_and_read_your_writes(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 's.db'}"
    with labvault.open(uri, flush_interval=3600) as writer, labvault.open(uri) as reader:
        run = writer.experiment("e").start_run()
        for i in range(50):
            run.log_artifact(f"small/{i}.txt", f"v{i}".encode())
        run.log_artifact("small/0.txt", b"rewritten")  # a later write of a key wins
        big = tmp_path / "big.bin"
        big.write_bytes(b"x" * 100_000)
        # not written yet: another handle does not see them ...
        assert reader.backend.list_artifacts(run.id) == []
        # ... but the writer does, at once
        assert run.get_artifact("small/0.txt") == b"rewritten"
        assert len(run.list_artifacts("small/")) == 50
        run.log_artifact("small/1.txt", b"buffered")
        run.log_artifact("small/1.txt", big)  # a direct write after a buffered one of the same key
        assert run.get_artifact("small/1.txt") == b"x" * 100_000
        run.log_artifact("late.txt", b"written by end()")
        run.end()
        stored = {a.key: a for a in reader.backend.list_artifacts(run.id)}
        assert len(stored) == 51 and stored["late.txt"].size == len(b"written by end()")
    with labvault.open(uri) as again:
        (found,) = again.search_runs("e")
        assert found.get_artifact("small/49.txt") == b"v49"


def test_reads_wait_for_a_background_flush_in_progress(tmp_path: Path) -> None:
    """The background flusher takes a run's buffers and writes them; a read of the run meanwhile must
    wait for that write instead of finding the buffers empty and the store not written yet."""
    with labvault.open(f"sqlite:///{tmp_path / 's.db'}", flush_interval=0.001) as vault:
        run = vault.experiment("e").start_run()
        for i in range(300):
            run.log_artifact(f"a{i}.txt", b"%d" % i)
            run.log_metric("m", float(i))
            assert run.get_artifact(f"a{i}.txt") == b"%d" % i
            if i % 50 == 0:
                assert len(run.metric_history("m")) == i + 1
        run.end()


def test_small_artifact_flush_failure_keeps_them(monkeypatch: pytest.MonkeyPatch) -> None:
    with labvault.open("memory://") as vault:
        run = vault.experiment("e").start_run()
        run.log_artifact("a.txt", b"first")
        original = _break(monkeypatch, vault.backend, "add_artifacts")
        with pytest.raises(OSError):
            run.flush()
        run.log_artifact("b.txt", b"second")
        monkeypatch.setattr(vault.backend, "add_artifacts", original)
        assert [a.key for a in run.list_artifacts()] == ["a.txt", "b.txt"]
        assert run.get_artifact("a.txt") == b"first"
        run.end()


def test_atexit_flushes_buffered_artifacts(tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'store'}"
    code = (
        "import labvault\n"
        f"v = labvault.open({uri!r}, flush_interval=3600)\n"
        "r = v.experiment('e').start_run()\n"
        "[r.log_artifact(f'a{i}.txt', b'payload %d' % i) for i in range(100)]\n"
        "print(r.id)\n"
    )
    run_id = _python(code, tmp_path).strip()
    with labvault.open(uri) as vault:
        run = vault.get_run(run_id)
        assert len(run.list_artifacts()) == 100 and run.get_artifact("a7.txt") == b"payload 7"


def test_json_roundtrip_of_run_info() -> None:
    with labvault.open("memory://") as vault, vault.experiment("e").start_run(params={"a": [1]}) as run:
        pass
    assert json.loads(json.dumps(run.params)) == {"a": [1]}


@pytest.mark.parametrize("scheme", ["file", "sqlite"])
def test_group_commit_drained_by_flusher(tmp_path: Path, scheme: str) -> None:
    import time

    uri = f"file://{tmp_path / 'f'}" if scheme == "file" else f"sqlite:///{tmp_path / 's.db'}"
    with labvault.open(uri, flush_interval=0.1) as vault:
        run = vault.experiment("e").start_run()
        run.log_artifact("a.bin", b"x" * 100_000)  # SQLite: a large blob, written as a file
        queues = [vault.backend.blobs.pending]  # type: ignore[attr-defined]
        if scheme == "file":
            queues.append(vault.backend._pending)  # type: ignore[attr-defined]
        assert sum(len(q) for q in queues) > 0, "writes were fsynced inline, not group-committed"
        deadline = time.time() + 5
        while sum(len(q) for q in queues) and time.time() < deadline:
            time.sleep(0.02)
        assert sum(len(q) for q in queues) == 0, "the flusher did not sync within its interval"
        run.end()


def test_heartbeat_goes_on_while_a_flush_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The background flusher beats the heartbeat of a run whose flush fails (here its artifact store is
    unwritable: a regular file stands where its folder must be), so a live run is never taken for a dead
    one; it logs the failure once (not at every retry); the points stay buffered and a flush writes them
    once the store is back."""
    import logging
    import time

    caplog.set_level(logging.WARNING, logger="labvault")
    blobs = tmp_path / "blobs"
    blobs.write_bytes(b"not a folder")
    with labvault.open("memory://", artifacts=f"file://{blobs}", flush_interval=0.02) as vault:
        vault.heartbeat_interval = 0.02  # read by the flusher, which starts with the first run
        run = vault.experiment("e").start_run()
        vault.backend.update_run(run.id, heartbeat=1.0)  # long ago: any beat from now on is visible
        run.log_artifact("small.txt", b"buffered")  # small: written by the background flush, which fails
        run.log_metric("m", 1.0)
        deadline = time.time() + 10  # hang guard
        while (run._flush_error is None or vault.backend.get_run(run.id).heartbeat == 1.0) \
                and time.time() < deadline:
            time.sleep(0.01)
        assert run._flush_error is not None, "the flush did not fail: the test proves nothing"
        assert vault.backend.get_run(run.id).heartbeat != 1.0, "no heartbeat while the flush fails"
        assert len(vault.backend.metric_history(run.id, "m")) == 0
        time.sleep(0.1)  # several more failing intervals
        warned = [r for r in caplog.records if "background flush of run" in r.getMessage()]
        assert len(warned) == 1 and run.id in warned[0].getMessage(), [r.getMessage() for r in warned]
        blobs.unlink()
        vault.flush()
        assert run.get_artifact("small.txt") == b"buffered"
        assert run.metric_history("m").values.tolist() == [1.0]
        run.end()
