"""``labvault.client.gc``: unreferenced blobs are found and removed on every backend; pairing with S3
artifacts."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import s3_server, s3_url  # noqa: F401 - pytest fixtures

import labvault
from labvault.client.gc import collect_garbage
from labvault.client.vault import Vault
from labvault.errors import InvalidArgumentError

DAY = 86400.0


@pytest.fixture(params=["memory", "file", "sqlite", "sqlite+s3", "file+s3", "memory+s3"])
def vault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Vault]:
    kind = request.param
    artifacts = None
    if kind.endswith("+s3"):
        artifacts = request.getfixturevalue("s3_url")
        kind = kind[:-3]
    uri = {"memory": "memory://", "file": str(tmp_path / "vault"),
           "sqlite": f"sqlite:///{tmp_path / 'gc.db'}"}[kind]
    with labvault.open(uri, artifacts=artifacts) as v:
        yield v


def _log(vault: Vault, experiment: str, *payloads: bytes) -> list[str]:
    with vault.experiment(experiment).start_run() as run:
        for i, data in enumerate(payloads):
            run.log_artifact(f"file-{i}.bin", data)
    return [hashlib.sha256(p).hexdigest() for p in payloads]


def test_same_bytes_in_two_experiments_make_one_blob(vault: Vault) -> None:
    (d1,) = _log(vault, "one", b"shared weights")
    (d2,) = _log(vault, "two", b"shared weights")
    assert d1 == d2
    assert vault.backend.blobs.list("sha256/") == [vault.backend.blobs.digest_key(d1)]


def test_gc_removes_only_unreferenced_blobs(vault: Vault) -> None:
    keep = _log(vault, "keep", b"kept", b"shared")
    drop = _log(vault, "drop", b"dropped-1", b"dropped-2", b"shared")
    vault.delete_experiment("drop")
    blobs = vault.backend.blobs
    later = time.time() + 2 * DAY

    dry = collect_garbage(vault, grace_hours=24, now=later)
    assert not dry.deleted
    assert sorted(b.key.rsplit("/", 1)[1] for b in dry.garbage) == sorted(drop[:2])
    assert dry.bytes_freed == len(b"dropped-1") + len(b"dropped-2")
    assert dry.scanned == 4 and dry.referenced == 2 and dry.missing == []
    assert len(blobs.list("sha256/")) == 4  # a dry run deletes nothing

    # Inside the grace period (real time now) nothing is garbage yet.
    fresh = collect_garbage(vault, grace_hours=24)
    assert fresh.garbage == [] and len(fresh.recent) == 2

    done = collect_garbage(vault, grace_hours=24, now=later, delete=True)
    assert done.deleted and len(done.garbage) == 2
    assert sorted(blobs.list("sha256/")) == sorted(blobs.digest_key(d) for d in keep)
    run = vault.experiment("keep").runs()[0]
    assert run.get_artifact("file-0.bin") == b"kept"
    assert run.get_artifact("file-1.bin") == b"shared"
    again = collect_garbage(vault, grace_hours=24, now=later, delete=True)
    assert again.garbage == []


def test_gc_reports_missing_blobs(vault: Vault) -> None:
    (digest,) = _log(vault, "exp", b"will vanish")
    vault.backend.blobs.delete(vault.backend.blobs.digest_key(digest))
    report = collect_garbage(vault, grace_hours=0)
    assert report.missing == [digest]


def test_gc_leaves_other_keys_alone(vault: Vault) -> None:
    blobs = vault.backend.blobs
    blobs.put("notes/readme.txt", b"not an artifact")
    blobs.put("sha256/zz/not-a-digest", b"odd")
    report = collect_garbage(vault, grace_hours=0, now=time.time() + DAY, delete=True)
    assert report.garbage == []
    assert blobs.exists("notes/readme.txt") and blobs.exists("sha256/zz/not-a-digest")


def test_restoring_content_refreshes_it(tmp_path: Path) -> None:
    """A blob re-logged by a writer is touched, so a collection running beside it keeps it."""
    with labvault.open(str(tmp_path / "v")) as vault:
        (digest,) = _log(vault, "old", b"reused content")
        vault.delete_experiment("old")
        path = tmp_path / "v" / "blobs" / vault.backend.blobs.digest_key(digest)
        past = time.time() - 3 * DAY
        os.utime(path, (past, past))
        assert len(collect_garbage(vault, grace_hours=24).garbage) == 1
        _log(vault, "new", b"reused content")  # dedup: the blob is stored already, and touched
        vault.delete_experiment("new")
        report = collect_garbage(vault, grace_hours=24, delete=True)
        assert report.garbage == [] and len(report.recent) == 1
        assert path.exists()


def test_packed_small_blobs_are_collected_and_refreshed(tmp_path: Path) -> None:
    """The file store packs a flush's small artifacts into one file; gc removes the unreferenced ones from
    it and keeps the rest readable, and re-logging packed content protects it like a loose blob."""
    with labvault.open(str(tmp_path / "v")) as vault:
        blobs = vault.backend.blobs
        keep = _log(vault, "keep", *[f"kept {i}".encode() for i in range(10)], b"shared")
        drop = _log(vault, "drop", *[f"dropped {i}".encode() for i in range(10)], b"shared")
        packs = tmp_path / "v" / "blobs" / ".packs"
        assert len(list(packs.glob("*.pack"))) == 2 and not (tmp_path / "v" / "blobs" / "sha256").exists()
        vault.delete_experiment("drop")
        later = time.time() + 2 * DAY
        report = collect_garbage(vault, grace_hours=24, now=later, delete=True)
        assert sorted(b.key.rsplit("/", 1)[1] for b in report.garbage) == sorted(drop[:10])
        assert sorted(blobs.list("sha256/")) == sorted(blobs.digest_key(d) for d in keep)
        run = vault.experiment("keep").runs()[0]
        assert [run.get_artifact(f"file-{i}.bin") for i in range(11)] == \
            [*(f"kept {i}".encode() for i in range(10)), b"shared"]

        past = time.time() - 3 * DAY
        for pack in packs.glob("*.pack"):
            os.utime(pack, (past, past))
        vault.delete_experiment("keep")
        assert len(collect_garbage(vault, grace_hours=24).garbage) == 11
        _log(vault, "again", *[f"kept {i}".encode() for i in range(10)])  # stored already: touched
        vault.delete_experiment("again")
        report = collect_garbage(vault, grace_hours=24, delete=True)
        assert report.garbage == [] and len(report.recent) == 11


def test_shared_blob_store_needs_every_vault(tmp_path: Path) -> None:
    shared = f"file://{tmp_path / 'shared-blobs'}"
    with labvault.open(str(tmp_path / "a"), artifacts=shared) as a, \
            labvault.open(f"sqlite:///{tmp_path / 'b.db'}", artifacts=shared) as b:
        _log(a, "ea", b"only in a")
        _log(b, "eb", b"only in b")
        later = time.time() + 2 * DAY
        assert len(collect_garbage(a, now=later).garbage) == 1  # b's blob looks unreferenced from a
        assert collect_garbage([a, b], now=later).garbage == []


@pytest.mark.parametrize("grace", [-1, "1", True, float("nan")])
def test_bad_arguments(tmp_path: Path, grace: object) -> None:
    with labvault.open("memory://") as vault:
        with pytest.raises(InvalidArgumentError, match="grace"):
            collect_garbage(vault, grace_hours=grace)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="delete"):
            collect_garbage(vault, delete="yes")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            collect_garbage([])
        with pytest.raises(InvalidArgumentError):
            collect_garbage("not a vault")  # type: ignore[arg-type]
