"""``ModelTests``: models on every store (part of ``BackendTests``): dense instance ids, immutable
versions, names, aliases, serializers by type, safe loading, runs linked both ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import labvault
from labvault import serializers
from labvault.client.models import MODEL_PROJECT
from labvault.client.vault import Vault
from labvault.errors import ConflictError, InvalidArgumentError, NotFoundError, PermissionDeniedError
from labvault.testing.suite_base import SuiteBase, create_models_worker, run_at_once

__all__ = ["ModelTests"]


class Opaque:
    """A type with no safe format: stored as a pickle, loaded only when trusted."""

    def __init__(self, value: int) -> None:
        self.value = value


class ModelTests(SuiteBase):
    """aimm's create/update/get_models and MLflow's registry verbs, the same on every backend."""

    def test_model_lifecycle(self, vault: Vault) -> None:
        first = vault.create_model(None, np.arange(3.0), name="weights")
        assert (first.instance_id, first.version, first.model_type) == (1, 1, "numpy.ndarray")
        assert first.name == "weights" and first.format == "numpy"
        second = vault.create_model("config", {"lr": 0.1, "layers": [2, 3]})
        assert (second.instance_id, second.version, second.name) == (2, 1, None)
        first.instance = first.instance * 10
        newer = vault.update_model(first)
        assert (newer.instance_id, newer.version) == (1, 2)
        assert [(m.instance_id, m.version) for m in vault.get_models()] == [(1, 2), (2, 1)]
        assert vault.load_model("weights").tolist() == [0.0, 10.0, 20.0]
        assert vault.load_model(1, 1).tolist() == [0.0, 1.0, 2.0]  # versions are immutable
        assert vault.get_model(2).instance == {"lr": 0.1, "layers": [2, 3]}
        assert [m.version for m in vault.model_versions("weights")] == [1, 2]
        vault.set_model_alias("weights", "production", 1)
        assert vault.get_model("weights", "production").version == 1
        assert vault.get_model("weights").aliases == [] and vault.get_model(1, 1).aliases == ["production"]
        vault.set_model_alias("weights", "production", 2)  # the last write wins
        assert vault.load_model("weights", "production").tolist() == [0.0, 10.0, 20.0]

    def test_models_stay_out_of_experiments_and_searches(self, vault: Vault) -> None:
        vault.create_model(None, b"raw bytes", name="blob")
        with vault.experiment("registry").start_run():  # a user experiment named like the models' own
            pass
        assert [(e.project, e.name) for e in vault.experiments()] == [("default", "registry")]
        assert len(vault.search_runs()) == 1 and len(vault.search_runs("registry")) == 1
        assert {e.name for e in vault.experiments(MODEL_PROJECT)} == {"registry", "model-1"}
        assert vault.load_model("blob") == b"raw bytes"

    def test_run_log_model_links_both_ways(self, vault: Vault) -> None:
        exp = vault.experiment("train")
        with exp.start_run() as run:
            model = run.log_model("clf", [1, 2, 3])
            again = run.log_model("clf", [4, 5, 6])
        assert (model.version, again.version, again.instance_id) == (1, 2, model.instance_id)
        assert vault.get_run(run.id).tags["model:clf"] == f"{model.instance_id}:2"
        assert [m.source_run for m in vault.model_versions("clf")] == [run.id, run.id]

    def test_names_are_unique_and_refusals_write_nothing(self, vault: Vault) -> None:
        vault.create_model(None, 1, name="once")
        with pytest.raises(ConflictError, match="once"):
            vault.create_model(None, 2, name="once")
        with pytest.raises(InvalidArgumentError):
            vault.create_model(None, 3, name="bad/name")
        with pytest.raises(InvalidArgumentError):
            vault.create_model("", 3)
        assert [m.instance_id for m in vault.get_models()] == [1]
        for missing in ("nope", 9):
            with pytest.raises(NotFoundError):
                vault.get_model(missing)
        with pytest.raises(NotFoundError, match="version 7"):
            vault.get_model("once", 7)
        with pytest.raises(NotFoundError, match="alias"):
            vault.get_model("once", "staging")
        with pytest.raises(NotFoundError):
            vault.set_model_alias("once", "production", 4)
        with pytest.raises(InvalidArgumentError):
            vault.get_model(1.5)  # type: ignore[arg-type]

    def test_pickles_load_only_when_trusted(self, vault: Vault) -> None:
        model = vault.create_model(None, Opaque(7), name="opaque")
        assert model.format == "pickle" and model.model_type.endswith("Opaque")
        with pytest.raises(PermissionDeniedError, match="trusted=True"):
            vault.load_model("opaque")
        assert vault.load_model("opaque", trusted=True).value == 7

    def test_scikit_learn_models_through_skops(self, vault: Vault) -> None:
        from sklearn.linear_model import LogisticRegression  # lazy: scikit-learn costs ~1 s at import

        clf = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
        model = vault.create_model(None, clf, name="clf")
        assert model.format == "skops" and model.model_type.startswith("sklearn.")
        loaded = vault.load_model("clf")  # safe: no trusted=True needed
        assert loaded.predict([[0.0], [3.0]]).tolist() == [0, 1]

    def test_registered_serializer_by_type(self, vault: Vault) -> None:
        serializers.register("test.Reversed", lambda s: s[::-1].encode(), lambda b: b.decode()[::-1],
                             replace=True)
        try:
            model = vault.create_model("test.Reversed", "abc", name="rev")
            assert model.format == "registered"
            assert vault.load_model("rev") == "abc"
            assert vault.backend.blobs.get_content(model.digest) == b"cba"
        finally:
            serializers.unregister("test.Reversed")
        with pytest.raises(labvault.UnsupportedOperationError, match=r"test\.Reversed"):
            vault.load_model("rev")

    @pytest.mark.multiprocess
    def test_instance_ids_dense_across_processes(self, uri: str, tmp_path: Path) -> None:
        with labvault.open(uri) as vault:
            if not self._capability(vault, "multiprocess"):
                pytest.skip("backend is not shared between processes")
        barrier = tmp_path / "go"
        results = run_at_once(create_models_worker, (uri, 3, str(barrier)), 4, barrier)
        ids = sorted(i for got in results for i in got)
        assert ids == list(range(1, 13))
        with labvault.open(uri) as vault:
            assert [m.instance_id for m in vault.get_models()] == list(range(1, 13))
