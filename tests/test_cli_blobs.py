"""CLI: ``artifacts put``, ``blobs cp`` / ``blobs ls``, ``gc``; Ctrl-C in the middle of a transfer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from s3_server import client_env, s3_server, s3_url  # noqa: F401 - pytest fixtures
from typer.testing import CliRunner

import labvault
import labvault.blobs
from labvault.cli import app
from labvault.testing.seaweed import SeaweedServer

ENV = {"COLUMNS": "250", "LABVAULT_URI": ""}


def invoke(*args: str, **kwargs: Any) -> Any:
    return CliRunner().invoke(app, list(args), env={**ENV, **kwargs.pop("env", {})}, **kwargs)


def _run_id(uri: str, artifacts: str | None = None) -> str:
    with labvault.open(uri, artifacts=artifacts) as vault, vault.experiment("cli").start_run() as run:
        return run.id


# -- artifacts put ------------------------------------------------------------------------------------------
def test_artifacts_put_from_file_and_stdin(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'v.db'}"
    run_id = _run_id(uri)
    src = tmp_path / "weights.bin"
    src.write_bytes(b"\x00\x01binary" * 1000)
    result = invoke("artifacts", "put", run_id[:8], "model/weights.bin", str(src), "--uri", uri)
    assert result.exit_code == 0, result.output
    assert "stored model/weights.bin" in result.output
    result = invoke("artifacts", "put", run_id, "notes.txt", "-", "--uri", uri, input=b"from stdin")
    assert result.exit_code == 0, result.output
    with labvault.open(uri) as vault:
        run = vault.get_run(run_id)
        assert run.get_artifact("model/weights.bin") == src.read_bytes()
        assert run.get_artifact("notes.txt") == b"from stdin"


@pytest.mark.parametrize(("key", "path", "expected"), [
    ("../evil", "FILE", "InvalidArgumentError: artifact key '../evil'"),
    ("ok.txt", "missing.bin", "InvalidArgumentError: 'missing.bin' is not a readable file"),
])
def test_artifacts_put_errors(tmp_path: Path, key: str, path: str, expected: str) -> None:
    uri = f"sqlite:///{tmp_path / 'v.db'}"
    run_id = _run_id(uri)
    (tmp_path / "f.bin").write_bytes(b"x")
    path = str(tmp_path / "f.bin") if path == "FILE" else path
    result = invoke("artifacts", "put", run_id, key, path, "--uri", uri)
    assert result.exit_code == 1
    assert expected in result.output


def test_artifacts_put_into_s3_and_gc(tmp_path: Path, s3_url: str) -> None:  # noqa: F811
    uri = f"sqlite:///{tmp_path / 'v.db'}"
    with labvault.open(uri, artifacts=s3_url) as vault:
        with vault.experiment("doomed").start_run() as run:
            doomed_id = run.id
        with vault.experiment("kept").start_run() as run:
            kept_id = run.id
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024))
    for run_id, key, path in ((doomed_id, "a.bin", big), (kept_id, "b.bin", tmp_path / "small.txt")):
        if not path.exists():
            path.write_bytes(b"small and kept")
        result = invoke("artifacts", "put", run_id, key, str(path), "--uri", uri, "--artifacts", s3_url)
        assert result.exit_code == 0, result.output
    with labvault.open(uri, artifacts=s3_url) as vault:
        assert vault.get_run(doomed_id).get_artifact("a.bin") == big.read_bytes()
        vault.delete_experiment("doomed")

    dry = invoke("gc", "--uri", uri, "--artifacts", s3_url, "--grace", "0")
    assert dry.exit_code == 0, dry.output
    assert "would delete 1 unreferenced blob(s), 9.0 MiB to free" in dry.output
    assert "pass --delete" in dry.output
    kept = invoke("gc", "--uri", uri, "--artifacts", s3_url)  # default grace: 24 h
    assert "would delete 0 unreferenced blob(s)" in kept.output and "1 kept inside the 24 h" in kept.output
    done = invoke("gc", "--uri", uri, "--artifacts", s3_url, "--grace", "0", "--delete")
    assert done.exit_code == 0, done.output
    assert "deleted 1 unreferenced blob(s), 9.0 MiB freed" in done.output
    store = labvault.blobs.open(s3_url)
    assert len(store.list("sha256/")) == 1
    with labvault.open(uri, artifacts=s3_url) as vault:
        assert vault.get_run(kept_id).get_artifact("b.bin") == b"small and kept"


def test_gc_rejects_bad_grace(tmp_path: Path) -> None:
    result = invoke("gc", "--uri", str(tmp_path / "v"), "--grace", "-1")
    assert result.exit_code == 2


# -- blobs cp / ls ------------------------------------------------------------------------------------------
def test_blobs_cp_between_local_files_and_a_store(tmp_path: Path) -> None:
    store_url = (tmp_path / "store").as_uri()
    src = tmp_path / "in.bin"
    src.write_bytes(b"payload " * 1000)
    assert invoke("blobs", "cp", str(src), f"{store_url}#dir/in.bin").exit_code == 0
    store = labvault.blobs.open(store_url)
    assert store.get("dir/in.bin") == src.read_bytes()

    again = invoke("blobs", "cp", str(src), f"{store_url}#dir/in.bin")
    assert again.exit_code == 1 and "exists; pass --force" in again.output
    src.write_bytes(b"new content")
    assert invoke("blobs", "cp", str(src), f"{store_url}#dir/in.bin", "--force").exit_code == 0
    assert store.get("dir/in.bin") == b"new content"

    out = tmp_path / "out.bin"
    assert invoke("blobs", "cp", f"{store_url}#dir/in.bin", str(out)).exit_code == 0
    assert out.read_bytes() == b"new content"
    refused = invoke("blobs", "cp", f"{store_url}#dir/in.bin", str(out))
    assert refused.exit_code == 1 and "FileExistsError" in refused.output

    assert invoke("blobs", "cp", "-", f"{store_url}#stdin.txt", input=b"piped").exit_code == 0
    assert store.get("stdin.txt") == b"piped"
    shown = invoke("blobs", "cp", f"{store_url}#stdin.txt", "-")
    assert shown.exit_code == 0 and shown.stdout_bytes == b"piped"

    assert invoke("blobs", "cp", f"{store_url}#dir/in.bin", f"{store_url}#copy/in.bin").exit_code == 0
    assert store.get("copy/in.bin") == b"new content"


@pytest.mark.parametrize(("src", "dst", "expected"), [
    ("-", "-", "cannot both be -"),
    ("STORE#../up", "x", "'../up'"),
    ("STORE#", "x", "URL#KEY"),
    ("nosuch://x#k", "x", "unknown blob store scheme 'nosuch'"),
    ("STORE#missing", "OUT", "NotFoundError"),
    ("missing-local-file", "STORE#k", "is not a readable file"),
])
def test_blobs_cp_errors(tmp_path: Path, src: str, dst: str, expected: str) -> None:
    store_url = (tmp_path / "store").as_uri()
    sub = {"STORE": store_url, "OUT": str(tmp_path / "out")}
    src = sub.get(src.split("#")[0], src.split("#")[0]) + ("#" + src.split("#", 1)[1] if "#" in src else "")
    dst = sub.get(dst, dst)
    result = invoke("blobs", "cp", src, dst)
    assert result.exit_code == 1, result.output
    assert expected in result.output
    assert not (tmp_path / "out").exists()


def test_blobs_ls(tmp_path: Path) -> None:
    store_url = (tmp_path / "store").as_uri()
    store = labvault.blobs.open(store_url)
    store.put("a/one.txt", b"1")
    store.put("a/two.txt", b"22")
    store.put("b/three.txt", b"333")
    table = invoke("blobs", "ls", store_url, "a/")
    assert table.exit_code == 0, table.output
    assert "a/one.txt" in table.output and "a/two.txt" in table.output and "b/three" not in table.output
    assert "2 blob(s), 3 B" in table.output
    lines = invoke("blobs", "ls", store_url, "--json").output.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["key"] for r in records] == ["a/one.txt", "a/two.txt", "b/three.txt"]
    assert records[2]["size"] == 3 and records[2]["etag"]


def test_blobs_cp_and_ls_on_s3(tmp_path: Path, s3_url: str) -> None:  # noqa: F811
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(6 * 1024 * 1024 + 7))
    assert invoke("blobs", "cp", str(src), f"{s3_url}#sets/data.bin").exit_code == 0
    assert invoke("blobs", "cp", f"{s3_url}#sets/data.bin", f"{s3_url}#copy/data.bin").exit_code == 0
    out = tmp_path / "back.bin"
    assert invoke("blobs", "cp", f"{s3_url}#copy/data.bin", str(out)).exit_code == 0
    assert out.read_bytes() == src.read_bytes()
    listing = invoke("blobs", "ls", s3_url)
    assert "sets/data.bin" in listing.output and "copy/data.bin" in listing.output


# -- Ctrl-C in the middle of a transfer ---------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "labvault", *args],
                            env={**os.environ, **ENV, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _feed_slowly_then_interrupt(proc: subprocess.Popen[bytes], chunks: int = 6) -> None:
    assert proc.stdin is not None
    for _ in range(chunks):
        proc.stdin.write(b"z" * (512 * 1024))
        proc.stdin.flush()
        time.sleep(0.1)
    time.sleep(0.5)  # the command is blocked reading stdin, mid-transfer
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0


def test_ctrl_c_during_blobs_cp_to_a_file_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    proc = _cli("blobs", "cp", "-", f"{root.as_uri()}#big.bin", stdin=subprocess.PIPE)
    _feed_slowly_then_interrupt(proc)
    store = labvault.blobs.open(root.as_uri())
    assert not store.exists("big.bin")
    assert store.list() == []
    assert [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []


def test_ctrl_c_during_artifacts_put(tmp_path: Path) -> None:
    uri = str(tmp_path / "vault")
    run_id = _run_id(uri)
    proc = _cli("artifacts", "put", run_id, "stream.bin", "-", "--uri", uri, stdin=subprocess.PIPE)
    _feed_slowly_then_interrupt(proc)
    with labvault.open(uri) as vault:
        assert vault.get_run(run_id).list_artifacts() == []
        assert vault.backend.blobs.list("sha256/") == []


def test_ctrl_c_during_a_large_s3_upload(tmp_path: Path, s3_url: str, s3_server: SeaweedServer) -> None:  # noqa: F811
    big = tmp_path / "big.bin"
    with big.open("wb") as fh:
        for _ in range(160):
            fh.write(os.urandom(1024 * 1024))
    url = s3_url + "&part_size=8MiB&max_concurrency=2"
    store = labvault.blobs.open(url)
    proc = _cli("blobs", "cp", str(big), f"{url}#big.bin", env=client_env(s3_server))
    deadline = time.monotonic() + 60
    while not store.incomplete_uploads():  # type: ignore[attr-defined]
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)  # some parts are stored, others in flight
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not store.exists("big.bin")
    assert store.incomplete_uploads() == []  # type: ignore[attr-defined]  # aborted, not left behind
