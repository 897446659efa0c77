"""The seeds' small verbs (issue 16 point 5): get_experiment by id, delete_experiment given an Experiment,
exp.remote_urls after a push, aimm's {"backend": "sqlite", "path": ...} config, BlobStore.backends() and
parsed URLs as blob keys."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse, urlsplit

import pytest

import labvault
import labvault.blobs
from labvault.blobs.abc import BlobStore
from labvault.blobs.local import FileBlobStore
from labvault.errors import InvalidArgumentError, NotFoundError


def test_get_experiment_by_id_or_name_and_delete_by_object(tmp_path: Path) -> None:
    with labvault.open(str(tmp_path / "s")) as vault:
        exp = vault.experiment("padre", project="p")
        assert vault.get_experiment(exp.id) == exp
        assert vault.get_experiment("padre") == exp and vault.get_experiment("padre", project="p") == exp
        with pytest.raises(NotFoundError, match="nope"):
            vault.get_experiment("nope")
        assert [e.name for e in vault.experiments()] == ["padre"]  # looking never creates
        with exp.start_run():
            pass
        vault.delete_experiment(exp)
        assert vault.experiments() == []
        with pytest.raises(InvalidArgumentError):
            vault.get_experiment("")


def test_remote_urls_after_a_push(tmp_path: Path) -> None:
    remote = str(tmp_path / "remote")
    with labvault.open(str(tmp_path / "local"), remote=remote) as vault:
        exp = vault.experiment("pushed")
        other = vault.experiment("kept-here")
        for e in (exp, other):
            with e.start_run():
                pass
        assert exp.remote_urls == []
        vault.push(exp)
        assert exp.remote_urls == [remote] and other.remote_urls == []


def test_aimm_style_path_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with labvault.open(config={"backend": "sqlite", "path": "models.db"}) as vault:
        vault.experiment("aimm")
    assert (tmp_path / "models.db").is_file()
    with labvault.open(f"sqlite:///{tmp_path / 'models.db'}") as vault:
        assert [e.name for e in vault.experiments()] == ["aimm"]
    with labvault.open(config={"backend": "file", "path": str(tmp_path / "folder")}) as vault:
        vault.experiment("f")
    assert (tmp_path / "folder").is_dir()
    with pytest.raises(InvalidArgumentError, match="path"):
        labvault.open(config={"backend": "redis", "path": "x"})
    with pytest.raises(InvalidArgumentError):
        labvault.open(config={"backend": "sqlite", "path": "a.db", "uri": "sqlite:///b.db"})


def test_blob_store_backends_by_prefix() -> None:
    classes = BlobStore.backends()
    assert classes["file"] is FileBlobStore and {"memory", "s3"} <= set(classes)
    assert all(isinstance(c, type) and issubclass(c, BlobStore) for c in classes.values())


def test_parsed_urls_as_blob_keys(tmp_path: Path) -> None:
    store = labvault.blobs.open(str(tmp_path / "blobs"))
    store.put(urlparse("data/train.csv"), b"a,b\n")
    assert store.get("data/train.csv") == b"a,b\n"
    inside = urlparse(f"file://{(tmp_path / 'blobs').absolute()}/data/train.csv")
    assert store.get(inside) == b"a,b\n" and store.exists(urlsplit("data/train.csv"))
    assert store.info(inside).size == 4
    with pytest.raises(InvalidArgumentError, match="not inside"):
        store.get(urlparse("s3://elsewhere/data/train.csv"))
    with pytest.raises(InvalidArgumentError, match="query"):
        store.get(urlparse("data/train.csv?version=2"))
    with pytest.raises(InvalidArgumentError):
        store.put(urlparse("../escape"), b"x")  # the key rules hold for URLs too


def test_get_experiment_by_url_pulls_it(tmp_path: Path) -> None:
    remote = str(tmp_path / "server-store")
    with labvault.open(str(tmp_path / "a"), remote=remote) as vault:
        exp = vault.experiment("shared", project="team")
        with exp.start_run(params={"lr": 0.1}) as run:
            run.log_metric("loss", 0.5)
        vault.push(exp)
    with labvault.open(remote) as server_side:
        remote_id = server_side.get_experiment("shared").id  # each store names its experiments itself
    with labvault.open(str(tmp_path / "b")) as other:
        by_id = other.get_experiment(f"file://{remote}#{remote_id}")
        assert (by_id.name, by_id.project) == ("shared", "team")
        assert [r.id for r in by_id.runs()] == [run.id] and by_id.runs()[0].metrics == {"loss": 0.5}
        by_name = other.get_experiment(f"file://{remote}#team/shared")
        assert by_name == by_id and len(by_name.runs()) == 1  # pulled again: nothing duplicated
        with pytest.raises(InvalidArgumentError, match="names no experiment"):
            other.get_experiment(f"file://{remote}")
        with pytest.raises(NotFoundError):
            other.get_experiment(f"file://{remote}#team/missing")
