"""``SearchTests``: ``search_runs`` filters, ordering, paging and hostile input (part of ``BackendTests``)."""

from __future__ import annotations

import signal
import warnings
from typing import Any

import pytest

from labvault.client.hints import UnknownKeyWarning
from labvault.client.vault import Vault
from labvault.errors import InvalidArgumentError, NotFoundError
from labvault.testing.suite_base import SuiteBase

__all__ = ["SearchTests"]


class SearchTests(SuiteBase):
    """Every operator of the filter language on five runs; SQL logic for NULLs; no injection, no ReDoS."""

    # ----------------------------------------------------------------------------------------------
    # search
    @pytest.fixture
    def searchable(self, vault: Vault) -> Vault:
        exp = vault.experiment("search")
        rows = [
            ({"lr": 0.1, "opt": "adam", "layers": 2}, {"team": "vision"}, {"acc": 0.9, "loss": 0.2}),
            ({"lr": 0.01, "opt": "sgd", "layers": 3}, {"team": "nlp"}, {"acc": 0.7, "loss": 0.5}),
            ({"lr": 0.001, "opt": "adam", "layers": 4}, {"team": "vision", "x": "y"}, {"acc": 0.95}),
            ({"lr": 0.05, "opt": "adamw"}, {}, {"acc": 0.6, "loss": 0.9}),
            ({"lr": 0.2, "opt": "Adam", "layers": 1}, {"team": "o'brien"}, {}),
        ]
        for i, (params, tags, metrics) in enumerate(rows):
            with exp.start_run(name=f"run-{i}", params=params, tags=tags) as run:
                for k, value in metrics.items():
                    run.log_metric(k, value)
        with vault.experiment("other").start_run(params={"lr": 0.1}):
            pass
        return vault

    @staticmethod
    def _numbers(vault: Vault, flt: str | None = None, **kw: Any) -> list[int]:
        return [r.number for r in vault.search_runs("search", filter=flt, **kw)]

    @pytest.mark.parametrize(
        ("flt", "expected"),
        [
            (None, [1, 2, 3, 4, 5]),
            ("", [1, 2, 3, 4, 5]),
            ("params.lr > 0.01", [1, 4, 5]),
            ("params.lr >= 0.01", [1, 2, 4, 5]),
            ("params.lr < 0.01", [3]),
            ("params.lr <= 0.01", [2, 3]),
            ("params.lr = 0.1", [1]),
            ("params.lr != 0.1", [2, 3, 4, 5]),
            ("params.opt = 'adam'", [1, 3]),
            ("params.opt LIKE 'adam%'", [1, 3, 4]),
            ("params.opt ILIKE 'adam'", [1, 3, 5]),
            ("params.opt NOT LIKE 'adam%'", [2, 5]),
            ("params.opt IN ('sgd', 'adamw')", [2, 4]),
            ("params.opt NOT IN ('sgd', 'adamw')", [1, 3, 5]),
            ("params.layers IS NULL", [4]),
            ("params.layers IS NOT NULL", [1, 2, 3, 5]),
            ("metrics.acc >= 0.9", [1, 3]),
            ("metrics.loss IS NULL", [3, 5]),
            ("tags.team = 'vision'", [1, 3]),
            ("tags.team = 'o''brien'", [5]),
            ("tags.x = 'y' OR params.opt = 'sgd'", [2, 3]),
            ("params.opt = 'adam' AND metrics.acc > 0.92", [3]),
            ("NOT (params.opt = 'adam')", [2, 4, 5]),
            # run 4 has no team tag: NOT (NULL = 'vision') is UNKNOWN, so it does not match (SQL logic)
            ("(params.lr > 0.01 OR params.lr < 0.005) AND NOT tags.team = 'vision'", [5]),
            ("(params.lr > 0.01 OR params.lr < 0.005) AND (tags.team IS NULL OR tags.team != 'vision')",
             [4, 5]),
            ("number > 3", [4, 5]),
            ("name = 'run-1'", [2]),
            ("status = 'finished'", [1, 2, 3, 4, 5]),
            ("params.missing = 1", []),
            ("params.opt > 5", []),
        ],
    )
    def test_search_operators(self, searchable: Vault, flt: str | None, expected: list[int]) -> None:
        if flt is not None and "missing" in flt:
            with pytest.warns(UnknownKeyWarning, match=r"params\.missing"):
                assert self._numbers(searchable, flt) == expected
        else:
            assert self._numbers(searchable, flt) == expected

    @pytest.mark.parametrize(
        ("flt", "expected"),
        [
            ("params.lr = '0.1'", [1]),  # MLflow keeps params as text: its users quote numbers
            ("params.layers = '2' OR params.layers IN ('4')", [1, 3]),
            ("params.opt = 'adam' AND params.lr != '0.1'", [3]),
            ("metrics.acc > '0.9'", [3]),  # a quoted number against a metric is that number
            ("attributes.status = 'FINISHED'", [1, 2, 3, 4, 5]),
            ("status IN ('FINISHED', 'FAILED')", [1, 2, 3, 4, 5]),
            ("attributes.name = 'run-1'", [2]),
            ("attributes.start_time > '2000-01-01'", [1, 2, 3, 4, 5]),
            ("start_time < '2000-01-01T00:00:00+00:00'", []),
            ("end_time >= '1970-01-02 00:00:00' AND number <= 2", [1, 2]),
        ],
    )
    def test_mlflow_filter_forms(self, searchable: Vault, flt: str, expected: list[int]) -> None:
        """The filter habits MLflow users bring mean the same on every backend."""
        assert self._numbers(searchable, flt) == expected

    def test_mlflow_forms_for_tags_and_quotes(self, vault: Vault) -> None:
        exp = vault.experiment("tag-forms")
        for seed in ("1", "2.5", "x"):
            with exp.start_run(tags={"seed": seed}):
                pass
        assert [r.number for r in vault.search_runs("tag-forms", filter="tags.seed = 1")] == [1]
        assert [r.number for r in vault.search_runs("tag-forms", filter="tags.seed IN (2.5, 3)")] == [2]
        with pytest.raises(InvalidArgumentError, match=r"single quotes: write 'x' instead of \"x\""):
            vault.search_runs("tag-forms", filter='tags.seed = "x"')
        with pytest.raises(InvalidArgumentError, match="is not a time"):
            vault.search_runs("tag-forms", filter="start_time > 'yesterday'")

    def test_unknown_key_warns_with_the_closest_keys(self, searchable: Vault) -> None:
        with pytest.warns(UnknownKeyWarning, match=r"metrics\.acx.*metrics\.acc"):
            assert self._numbers(searchable, "metrics.acx > 0.1") == []
        with pytest.warns(UnknownKeyWarning, match=r"metrics\.acx"):  # runs found, but none has acx
            assert self._numbers(searchable, "params.opt = 'sgd' OR metrics.acx > 0.1") == [2]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a key some run has never warns
            assert self._numbers(searchable, "params.layers > 3 AND tags.x = 'y'") == [3]

    def test_search_order_and_paging(self, searchable: Vault) -> None:
        assert self._numbers(searchable, order_by=["metrics.acc desc"]) == [3, 1, 2, 4, 5]
        assert self._numbers(searchable, order_by=["metrics.acc"]) == [4, 2, 1, 3, 5]
        assert self._numbers(searchable, order_by=["params.opt", "params.lr desc"]) == [5, 1, 3, 4, 2]
        assert self._numbers(searchable, order_by=["metrics.acc desc"], limit=2) == [3, 1]
        assert self._numbers(searchable, order_by=["metrics.acc desc"], limit=2, offset=2) == [2, 4]
        assert self._numbers(searchable, order_by="number desc", offset=4) == [1]
        assert self._numbers(searchable, "params.opt LIKE 'adam%'", order_by=["params.lr"], limit=1) == [3]

    def test_search_across_experiments_and_frame(self, searchable: Vault) -> None:
        everything = searchable.search_runs(filter="params.lr = 0.1")
        assert sorted((r.experiment.name, r.number) for r in everything) == [("other", 1), ("search", 1)]
        frame = searchable.search_runs("search", order_by=["number"]).to_frame()
        assert list(frame["number"]) == [1, 2, 3, 4, 5]
        for col in ("id", "number", "status", "start_time", "end_time", "params.lr", "metrics.acc",
                    "tags.team"):
            assert col in frame.columns
        assert frame.loc[0, "params.opt"] == "adam" and frame.loc[0, "metrics.acc"] == 0.9
        assert len(frame) == len(frame["id"].unique())

    def test_search_bad_input(self, searchable: Vault) -> None:
        with pytest.raises(InvalidArgumentError, match="column"):
            searchable.search_runs("search", filter="params.lr >> 1")
        with pytest.raises(InvalidArgumentError):
            searchable.search_runs("search", order_by=["metrics.acc sideways"])
        with pytest.raises(InvalidArgumentError):
            searchable.search_runs("search", limit=-1)
        with pytest.raises(NotFoundError):
            searchable.search_runs("no-such-experiment")

    def test_search_injection_is_inert(self, searchable: Vault) -> None:
        evil = "params.opt = 'x'' OR 1=1 --' OR tags.team = 'a; DROP TABLE runs'"
        assert self._numbers(searchable, evil) == []
        assert self._numbers(searchable) == [1, 2, 3, 4, 5]

    def test_like_is_linear_on_every_backend(self, vault: Vault) -> None:
        """A hostile LIKE over a long tag answers at once (Python's backtracking ``re`` took hours)."""
        exp = vault.experiment("redos")
        with exp.start_run(tags={"t": "a" * 7999 + "c"}):
            pass
        found: list[list[int]] = []

        def expire(signum: int, frame: object) -> None:
            raise TimeoutError("a LIKE search over an 8,000-character tag did not finish in 60 s")

        # A hang guard, not a timing (the fixed matcher needs milliseconds). An interval timer, because
        # the regex engine holds the GIL (no watchdog thread could run) but checks for signals.
        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, 60)
        try:
            for pattern in ("%a" * 14 + "%b", "%a" * 10 + "%c", "%" + "a_" * 300 + "b%"):
                for op in ("LIKE", "ILIKE"):
                    runs = vault.search_runs("redos", filter=f"tags.t {op} '{pattern}'")
                    found.append([r.number for r in runs])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert found == [[], [], [1], [1], [], []]
