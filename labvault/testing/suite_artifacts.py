"""``ArtifactTests``: artifacts from every source, replaced by key, deduplicated, verified on every read
(part of ``BackendTests``)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

import labvault
from labvault.client.vault import Vault
from labvault.errors import CorruptDataError, NotFoundError
from labvault.testing.suite_base import SuiteBase, run_worker

__all__ = ["ArtifactTests"]


class ArtifactTests(SuiteBase):
    """Artifact bytes round-trip, stream, are stored once per content and never read back corrupted."""

    # ----------------------------------------------------------------------------------------------
    # artifacts
    def test_artifacts_from_bytes_path_and_file(self, vault: Vault, tmp_path: Path) -> None:
        src = tmp_path / "weights.bin"
        src.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
        with vault.experiment("a").start_run() as run:
            run.log_artifact("notes.txt", b"hello")
            run.log_artifact("model/weights.bin", src)
            run.log_artifact("model/weights-str.bin", str(src))
            with src.open("rb") as fh:
                run.log_artifact("model/copy.bin", fh)
            run.log_artifact("plots/deep/roc.png", io.BytesIO(b"\x89PNG..."))
            run.log_artifact("empty.txt", b"")
        assert run.get_artifact("notes.txt") == b"hello"
        assert run.get_artifact("model/weights.bin") == src.read_bytes()
        assert run.get_artifact("model/copy.bin") == src.read_bytes()
        assert run.get_artifact("empty.txt") == b""
        with run.open_artifact("model/weights.bin") as fh:
            assert fh.read() == src.read_bytes()
        keys = [a.key for a in run.list_artifacts()]
        assert keys == sorted(keys) == ["empty.txt", "model/copy.bin", "model/weights-str.bin",
                                        "model/weights.bin", "notes.txt", "plots/deep/roc.png"]
        assert [a.key for a in run.list_artifacts("model/")] == [
            "model/copy.bin", "model/weights-str.bin", "model/weights.bin"]
        assert [a.key for a in run.list_artifacts("plots")] == ["plots/deep/roc.png"]
        info = {a.key: a for a in run.list_artifacts()}["model/weights.bin"]
        assert info.size == src.stat().st_size and len(info.digest) == 64
        with pytest.raises(NotFoundError, match=r"missing\.txt"):
            run.get_artifact("missing.txt")

    def test_artifact_replace_key(self, vault: Vault) -> None:
        with vault.experiment("a").start_run() as run:
            run.log_artifact("f.txt", b"one")
            run.log_artifact("f.txt", b"two")
        assert run.get_artifact("f.txt") == b"two"
        assert [a.key for a in run.list_artifacts()] == ["f.txt"]

    def test_identical_artifacts_stored_once(self, vault: Vault) -> None:
        payload = os.urandom(200_000)
        blobs = vault.backend.blobs
        before = set(blobs.list("sha256"))
        exp = vault.experiment("dedup")
        infos = []
        for i in range(3):
            with exp.start_run() as run:
                infos.append(run.log_artifact(f"copy{i}.bin", payload))
        with vault.experiment("dedup-2").start_run() as other:
            infos.append(other.log_artifact("again.bin", io.BytesIO(payload)))
        after = set(blobs.list("sha256"))
        assert len({i.digest for i in infos}) == 1
        assert len(after - before) == 1
        assert other.get_artifact("again.bin") == payload

    def test_corrupted_blob_raises(self, vault: Vault) -> None:
        with vault.experiment("c").start_run() as run:
            info = run.log_artifact("model.bin", b"A" * 100_000)
        key = vault.backend.blobs.digest_key(info.digest)
        vault.backend.blobs.put(key, b"B" * 100_000)  # flip the stored bytes behind labvault's back
        with pytest.raises(CorruptDataError, match=info.digest):
            run.get_artifact("model.bin")
        with pytest.raises(CorruptDataError), run.open_artifact("model.bin") as fh:
            while fh.read(8192):
                pass

    def test_download_artifact_verified_and_atomic(self, vault: Vault, tmp_path: Path) -> None:
        out = tmp_path / "downloads"
        out.mkdir()
        payload = os.urandom(5 * 1024 * 1024 + 3)
        with vault.experiment("dl").start_run() as run:
            info = run.log_artifact("model/weights.bin", payload)
        written = run.download_artifact("model/weights.bin", out / "w.bin")
        assert written == out / "w.bin" and written.read_bytes() == payload
        assert run.download_artifact("model/weights.bin", out).name == "weights.bin"
        with pytest.raises(labvault.AlreadyExistsError, match=r"w\.bin"):
            run.download_artifact("model/weights.bin", out / "w.bin")
        assert run.download_artifact("model/weights.bin", out / "w.bin", overwrite=True) == written
        vault.backend.blobs.put(vault.backend.blobs.digest_key(info.digest), b"X" * len(payload))
        with pytest.raises(CorruptDataError):
            run.download_artifact("model/weights.bin", out / "bad.bin")
        assert not (out / "bad.bin").exists()
        assert sorted(p.name for p in out.iterdir()) == ["w.bin", "weights.bin"]

    def test_large_artifact_streams_with_flat_memory(self, uri: str, tmp_path: Path) -> None:
        if not self.heavy:
            pytest.skip("heavy case: runs once per backend family (set heavy = True)")
        size = 300 * 1024 * 1024
        src = tmp_path / "big.bin"
        block = os.urandom(1 << 20)
        with src.open("wb") as fh:
            for _ in range(size >> 20):
                fh.write(block)
        out = json.loads(run_worker("big_artifact_roundtrip", uri, str(src), size, timeout=600))
        assert out["size"] == size and out["digest"] == out["logged"]
        assert out["growth_mb"] < 100, f"memory grew by {out['growth_mb']:.0f} MB for a 300 MB artifact"
