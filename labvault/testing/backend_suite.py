"""``BackendTests``: the behaviour every labvault backend must show, written once.

The memory backend is the reference model; every other backend runs exactly these tests. Capabilities
(``persistent``, ``multiprocess``) are read from the backend class, never guessed from its type. Heavy
cases (the 300 MB artifact) run only where ``heavy = True`` is set, once per backend family.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import labvault
from labvault.client.run import Run
from labvault.client.vault import Vault
from labvault.domain import validation as v
from labvault.errors import (
    AlreadyExistsError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    LabvaultError,
    NotFoundError,
    UnsupportedOperationError,
)
from labvault.testing.bad_input import BadInputTests


def _run_worker(func: str, *args: Any, timeout: float = 60) -> str:
    """Run a function of ``labvault.testing._workers`` in a fresh interpreter; return its stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "labvault.testing._workers", func, json.dumps(list(args))],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"worker {func} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def _start_runs_worker(args: tuple[str, str, int, str]) -> list[int]:
    from labvault.testing._workers import start_runs

    return start_runs(*args)


class BackendTests(BadInputTests):
    """Subclass and provide a ``uri`` fixture returning the URI of a fresh, empty store."""

    #: Run the heavy cases (300 MB artifact) for this backend. Set on one class per backend family.
    heavy: bool = False

    @pytest.fixture
    def uri(self) -> str:
        raise NotImplementedError("a BackendTests subclass must provide a 'uri' fixture")

    @pytest.fixture
    def vault(self, uri: str) -> Iterator[Vault]:
        with labvault.open(uri) as vault:
            yield vault

    @staticmethod
    def _capability(vault: Vault, name: str) -> bool:
        return bool(getattr(type(vault.backend), name))

    # ----------------------------------------------------------------------------------------------
    # experiments
    def test_experiment_get_or_create(self, vault: Vault) -> None:
        a = vault.experiment("exp-a")
        again = vault.experiment("exp-a")
        assert a.id == again.id and a.name == "exp-a" and a.project == "default"
        other = vault.experiment("exp-a", project="other")
        assert other.id != a.id and other.project == "other"
        names = [(e.project, e.name) for e in vault.experiments()]
        assert sorted(names) == [("default", "exp-a"), ("other", "exp-a")]
        assert [e.name for e in vault.experiments(project="other")] == ["exp-a"]
        assert vault.experiments(project="nobody") == []

    def test_delete_experiment_removes_runs(self, vault: Vault) -> None:
        exp = vault.experiment("doomed")
        keep = vault.experiment("kept")
        with exp.start_run(params={"a": 1}) as run:
            run.log_metric("m", 1.0)
            run.log_artifact("f.txt", b"x")
        with keep.start_run() as kept_run:
            kept_run.log_metric("m", 2.0)
        vault.delete_experiment("doomed")
        assert [e.name for e in vault.experiments()] == ["kept"]
        with pytest.raises(NotFoundError):
            vault.get_run(run.id)
        assert vault.get_run(kept_run.id).metrics == {"m": 2.0}
        with pytest.raises(NotFoundError, match="doomed"):
            vault.delete_experiment("doomed")
        # Re-creating gives a fresh experiment whose numbering starts again.
        with vault.experiment("doomed").start_run() as fresh:
            assert fresh.number == 1

    def test_delete_experiment_modes(self, vault: Vault) -> None:
        vault.experiment("e")
        with pytest.raises(InvalidArgumentError, match=r"sideways"):
            vault.delete_experiment("e", mode="sideways")  # type: ignore[arg-type]
        with pytest.raises(UnsupportedOperationError, match="remote"):
            vault.delete_experiment("e", mode="remote")
        assert [e.name for e in vault.experiments()] == ["e"]

    # ----------------------------------------------------------------------------------------------
    # run lifecycle
    def test_run_lifecycle_finished(self, vault: Vault) -> None:
        exp = vault.experiment("life")
        before = time.time()
        with exp.start_run(name="first", params={"lr": 0.1}, tags={"team": "a"}) as run:
            assert run.status == "running"
            assert run.number == 1 and run.name == "first"
        assert run.status == "finished"
        assert run.end_time is not None and before - 1 <= run.start_time <= run.end_time <= time.time() + 1
        assert run.error is None
        fetched = vault.get_run(run.id)
        assert (fetched.id, fetched.number, fetched.name) == (run.id, 1, "first")
        assert fetched.params == {"lr": 0.1} and fetched.tags == {"team": "a"}
        assert fetched.experiment.name == "life"

    def test_run_lifecycle_failed_reraises(self, vault: Vault) -> None:
        exp = vault.experiment("life")
        with pytest.raises(ZeroDivisionError), exp.start_run() as run:
            run.log_metric("before", 1.0)
            _ = 1 / 0
        assert run.status == "failed"
        assert run.error is not None and "ZeroDivisionError" in run.error and "division" in run.error
        assert run.metric_history("before").values.tolist() == [1.0]

    def test_run_numbers_and_nesting(self, vault: Vault) -> None:
        exp = vault.experiment("nest")
        with exp.start_run(name="parent") as parent:
            children = []
            for _ in range(3):
                with exp.start_run(parent=parent) as child:
                    children.append(child)
            with exp.start_run(parent=children[0].id) as grandchild:
                pass
        assert [r.number for r in exp.runs()] == [1, 2, 3, 4, 5]
        assert [c.parent_id for c in children] == [parent.id] * 3
        assert vault.get_run(grandchild.id).parent_id == children[0].id
        assert parent.parent_id is None
        other = vault.experiment("nest-2")
        with other.start_run() as r:
            assert r.number == 1
        with pytest.raises(NotFoundError):
            exp.start_run(parent="0" * 32)

    def test_create_run_with_chosen_id(self, vault: Vault) -> None:
        exp = vault.experiment("chosen-ids")
        backend = vault.backend
        first = backend.create_run(exp.id, name="a", parent_id=None, start_time=1.5, params={"lr": 0.1},
                                   tags={"t": "x"}, run_id="abc123" * 5)
        assert first.id == "abc123" * 5 and first.number == 1
        child = backend.create_run(exp.id, name=None, parent_id=first.id, start_time=2.0, params={},
                                   tags={}, run_id="Child42")
        got = backend.get_run("Child42")
        assert (got.parent_id, got.number, got.start_time) == (first.id, 2, 2.0)
        assert backend.get_run(first.id).params == {"lr": 0.1}
        with pytest.raises(AlreadyExistsError, match="abc123"):
            backend.create_run(exp.id, name=None, parent_id=None, start_time=3.0, params={}, tags={},
                               run_id=first.id)
        with pytest.raises(InvalidArgumentError, match="not a valid labvault id"):
            backend.create_run(exp.id, name=None, parent_id=None, start_time=3.0, params={}, tags={},
                               run_id="../etc")
        assert [r.id for r in exp.runs()] == [first.id, child.id]

    def test_loaded_runs_answer_from_snapshot_until_refresh(self, uri: str, vault: Vault) -> None:
        if not self._capability(vault, "persistent") and not uri.startswith("memory://"):
            pytest.skip("needs a second handle on the same store")
        with vault.experiment("snap").start_run(tags={"v": "1"}) as run:
            pass
        loaded = vault.get_run(run.id)
        with labvault.open(uri) as other:
            other.get_run(run.id).set_tag("v", "2")
        assert loaded.tags == {"v": "1"}  # state as loaded: no query per attribute access
        assert loaded.refresh().tags == {"v": "2"}
        loaded.set_tag("w", "3")  # its own writes are seen at once
        assert loaded.tags == {"v": "2", "w": "3"}

    def test_get_run_missing(self, vault: Vault) -> None:
        with pytest.raises(NotFoundError):
            vault.get_run("f" * 32)

    def test_manual_end_and_status_values(self, vault: Vault) -> None:
        run = vault.experiment("manual").start_run()
        run.end("killed", error="stopped by user")
        assert (run.status, run.error) == ("killed", "stopped by user")
        with pytest.raises(InvalidArgumentError, match="running"):
            vault.experiment("manual").start_run().end("running")

    # ----------------------------------------------------------------------------------------------
    # params, tags, results
    def test_params_write_once(self, vault: Vault) -> None:
        with vault.experiment("p").start_run(params={"lr": 0.1}) as run:
            run.log_param("lr", 0.1)  # same value: no-op
            run.log_params({"layers": [64, 32], "opt": {"name": "adam", "beta": 0.9}, "flag": True})
            with pytest.raises(ConflictError, match="lr"):
                run.log_param("lr", 0.2)
            with pytest.raises(ConflictError, match="layers"):
                run.log_params({"new_key": 1, "layers": [64]})
            assert "new_key" not in run.params  # nothing from the conflicting call was written
            with pytest.raises(ConflictError):
                run.log_param("flag", 1)  # True and 1 are different values
        assert run.params == {"lr": 0.1, "layers": [64, 32], "opt": {"name": "adam", "beta": 0.9},
                              "flag": True}

    def test_param_types_roundtrip(self, vault: Vault) -> None:
        values = {"i": 3, "f": 2.5, "s": "text with spaces", "b": False, "n": None, "l": [1, "a", None],
                  "d": {"k": [1.5]}, "big": 2**53 + 1, "neg": -7, "uni": "héllo ☃", "e": 1e-12}
        with vault.experiment("p").start_run(params=values) as run:
            pass
        got = vault.get_run(run.id).params
        assert got == values
        assert type(got["i"]) is int and type(got["f"]) is float and type(got["b"]) is bool

    def test_numpy_scalars_accepted(self, vault: Vault) -> None:
        with vault.experiment("np").start_run() as run:
            run.log_params({"a": np.int64(3), "b": np.float32(0.5)})
            run.log_metric("m", np.float64(1.5), step=np.int64(2))  # type: ignore[arg-type]
        assert run.params == {"a": 3, "b": 0.5}
        hist = run.metric_history("m")
        assert hist.values.tolist() == [1.5] and hist.steps.tolist() == [2]

    def test_tags_last_write_wins(self, vault: Vault) -> None:
        with vault.experiment("t").start_run(tags={"stage": "dev"}) as run:
            run.set_tag("stage", "prod")
            run.set_tags({"stage": "final", "owner": "ana", "n": 3, "ok": True})
        assert run.tags == {"stage": "final", "owner": "ana", "n": "3", "ok": "true"}

    def test_results(self, vault: Vault) -> None:
        with vault.experiment("r").start_run() as run:
            run.log_result("confusion", [[1, 0], [0, 1]])
            run.log_result("score", 0.5)
            run.log_result("score", 0.75)  # results are keyed by name: replaced
            run.log_result("summary", {"best_epoch": 3, "notes": "ok"})
        assert vault.get_run(run.id).results == {
            "confusion": [[1, 0], [0, 1]], "score": 0.75, "summary": {"best_epoch": 3, "notes": "ok"}}

    # ----------------------------------------------------------------------------------------------
    # text: one check everywhere (valid UTF-8, no NUL), also nested; huge or non-numeric numbers
    #: (label, kind of call, bad text): every kind of text a caller can hand to a run or a vault
    BAD_TEXT_CALLS: list[tuple[str, str]] = [
        ("tag key", "tag_key"), ("tag value", "tag_value"),
        ("param key", "param_key"), ("param value", "param_value"),
        ("param nested key", "param_nested_key"), ("param nested value", "param_nested_value"),
        ("result key", "result_key"), ("result value", "result_value"),
        ("result nested key", "result_nested_key"), ("result deep list value", "result_list_value"),
        ("metric key", "metric_key"), ("run name", "run_name"), ("run tags at start", "start_tags"),
        ("run params at start", "start_params"), ("experiment name", "experiment"),
        ("project name", "project"), ("error text", "error"), ("filter", "filter"),
        ("order_by", "order_by"), ("artifact key", "artifact"),
    ]
    BAD_TEXTS = {"surrogate": ("/data/\udcff.bin", "'\\udcff'"), "NUL": ("a\x00b", "\\x00")}

    @pytest.mark.parametrize("text", sorted(BAD_TEXTS))
    @pytest.mark.parametrize(("label", "kind"), BAD_TEXT_CALLS, ids=[c[0] for c in BAD_TEXT_CALLS])
    def test_bad_text_refused_everywhere(self, vault: Vault, label: str, kind: str, text: str) -> None:
        bad, escaped = self.BAD_TEXTS[text]
        exp = vault.experiment("text")
        run = exp.start_run(params={"keep": 1}, tags={"keep": "1"})
        before = (vault.backend.list_experiments(), vault.backend.list_runs([exp.id]))
        with pytest.raises(InvalidArgumentError) as info:
            self._bad_text_call(vault, run, kind, bad)
        message = str(info.value)
        message.encode("utf-8")  # the message itself is always printable and encodable
        assert escaped in message, f"{label}: {message!r} does not name the bad value {escaped!r}"
        run.flush()
        assert (vault.backend.list_experiments(), vault.backend.list_runs([exp.id])) == before
        assert run.status == "running"
        run.end()

    @staticmethod
    def _bad_text_call(vault: Vault, run: Run, kind: str, bad: str) -> None:
        exp = run.experiment
        calls: dict[str, Any] = {
            "tag_key": lambda: run.set_tags({"ok": "1", bad: "v"}),
            "tag_value": lambda: run.set_tags({"ok": "1", "t": bad}),
            "param_key": lambda: run.log_params({"ok": 1, bad: 1}),
            "param_value": lambda: run.log_params({"ok": 1, "p": bad}),
            "param_nested_key": lambda: run.log_params({"ok": 1, "p": {"fine": 1, bad: 2}}),
            "param_nested_value": lambda: run.log_params({"ok": 1, "p": {"fine": [1, {"x": bad}]}}),
            "result_key": lambda: run.log_result(bad, 1),
            "result_value": lambda: run.log_result("r", bad),
            "result_nested_key": lambda: run.log_result("r", {"a": {bad: 1}}),
            "result_list_value": lambda: run.log_result("r", [[1, 2], ["x", bad]]),
            "metric_key": lambda: run.log_metrics({"ok": 1.0, bad: 2.0}),
            "run_name": lambda: exp.start_run(name=bad),
            "start_tags": lambda: exp.start_run(tags={"t": bad}),
            "start_params": lambda: exp.start_run(params={"p": {bad: 1}}),
            "experiment": lambda: vault.experiment(bad),
            "project": lambda: vault.experiment("fine", project=bad),
            "error": lambda: run.end("failed", error=f"Traceback: {bad}"),
            "filter": lambda: vault.search_runs("text", filter=f"tags.keep = '{bad}'"),
            "order_by": lambda: vault.search_runs("text", order_by=[f"params.{bad}"]),
            "artifact": lambda: run.log_artifact(f"dir/{bad}", b"x"),
        }
        calls[kind]()

    @pytest.mark.parametrize("text", sorted(BAD_TEXTS))
    def test_with_block_keeps_the_users_exception_and_escapes_its_text(self, vault: Vault, text: str) -> None:
        bad, escaped = self.BAD_TEXTS[text]
        exp = vault.experiment("boom")
        error = ValueError(bad)
        with pytest.raises(ValueError) as info, exp.start_run() as run:
            run.log_metric("m", 1.0)
            raise error
        assert info.value is error  # the user's exception, not a UnicodeEncodeError or a backend error
        stored = vault.get_run(run.id)
        assert stored.status == "failed"
        assert stored.error == "ValueError: " + bad.encode("utf-8", "backslashreplace").decode().replace(
            "\x00", "\\x00")
        assert escaped.strip("'") in stored.error
        assert stored.metric_history("m").values.tolist() == [1.0]
        with pytest.raises(KeyboardInterrupt), exp.start_run() as stopped:
            raise KeyboardInterrupt(bad)
        assert vault.get_run(stopped.id).status == "killed"
        huge = "x" * (3 * v.MAX_ERROR_LENGTH)
        with pytest.raises(RuntimeError), exp.start_run() as long_run:
            raise RuntimeError(huge)
        stored = vault.get_run(long_run.id)
        assert stored.status == "failed" and stored.error is not None
        assert stored.error.startswith("RuntimeError: xxx") and len(stored.error) <= v.MAX_ERROR_LENGTH

    def test_with_block_exception_survives_a_failing_end(self, uri: str, vault: Vault) -> None:
        exp = vault.experiment("gone")
        error = ValueError("/data/\udcff.bin")
        with pytest.warns(RuntimeWarning, match="ending run"), pytest.raises(ValueError) as info, \
                exp.start_run() as run:
            run.log_metric("m", 1.0)
            with labvault.open(uri) as other:  # another handle deletes the run under the writer
                other.delete_experiment("gone")
            raise error
        assert info.value is error
        assert any("ending run" in note for note in getattr(error, "__notes__", []))
        with pytest.raises(NotFoundError):
            vault.get_run(run.id)

    #: (label, call) with a number no backend can take: each must raise InvalidArgumentError naming it
    BAD_NUMBERS: list[tuple[str, str]] = [
        ("metric value beyond float", "metric_huge"), ("metrics value beyond float", "metrics_huge"),
        ("metric step beyond int64", "step_huge"), ("metric timestamp beyond float", "ts_huge"),
        ("series of strings", "series_str"), ("series of numeric strings", "series_numstr"),
        ("series value beyond float", "series_huge"), ("series ragged", "series_ragged"),
        ("series timestamps strings", "series_ts_str"), ("series steps beyond int64", "series_steps"),
        ("tag int of 5000 digits", "tag_huge"), ("param int of 5000 digits", "param_huge"),
        ("result nested int of 5000 digits", "result_huge"), ("search limit beyond int64", "limit_huge"),
        ("search offset beyond int64", "offset_huge"),
    ]

    @pytest.mark.parametrize(("label", "kind"), BAD_NUMBERS, ids=[c[0] for c in BAD_NUMBERS])
    def test_bad_numbers_refused(self, vault: Vault, label: str, kind: str) -> None:
        exp = vault.experiment("numbers")
        run = exp.start_run(params={"keep": 1})
        before = (vault.backend.list_experiments(), vault.backend.list_runs([exp.id]))
        words: Any = ["a"]
        numeric_words: Any = ["0.5"]
        ragged: Any = [[1.0], [2.0, 3.0]]
        calls: dict[str, Any] = {
            "metric_huge": lambda: run.log_metric("m", 10**400),
            "metrics_huge": lambda: run.log_metrics({"ok": 1.0, "m": 10**400}),
            "step_huge": lambda: run.log_metric("m", 1.0, step=10**400),
            "ts_huge": lambda: run.log_metric("m", 1.0, timestamp=10**400),
            "series_str": lambda: run.log_metric_series("m", words),
            "series_numstr": lambda: run.log_metric_series("m", numeric_words),
            "series_huge": lambda: run.log_metric_series("m", [1.0, 10**400]),
            "series_ragged": lambda: run.log_metric_series("m", ragged),
            "series_ts_str": lambda: run.log_metric_series("m", [1.0], timestamps=words),
            "series_steps": lambda: run.log_metric_series("m", [1.0], steps=np.array([2**64 - 1], np.uint64)),
            "tag_huge": lambda: run.set_tags({"ok": "1", "t": 10**5000}),
            "param_huge": lambda: run.log_params({"ok": 1, "p": 10**5000}),
            "result_huge": lambda: run.log_result("r", {"a": [1, -(10**5000)]}),
            "limit_huge": lambda: vault.search_runs("numbers", limit=10**400),
            "offset_huge": lambda: vault.search_runs("numbers", offset=2**63),
        }
        with pytest.raises(InvalidArgumentError) as info:
            calls[kind]()
        str(info.value).encode("utf-8")
        assert "'m'" in str(info.value) or kind in ("tag_huge", "param_huge", "result_huge", "limit_huge",
                                                    "offset_huge"), str(info.value)
        run.flush()
        assert (vault.backend.list_experiments(), vault.backend.list_runs([exp.id])) == before
        run.end()

    def test_big_integers_within_the_digit_limit_round_trip(self, vault: Vault) -> None:
        big = {"i70": 2**70, "neg": -(10**400), "max": 10**v.MAX_INT_DIGITS - 1}
        with vault.experiment("big").start_run(params=big, tags={"t": 10**400}) as run:
            run.log_result("r", [2**70, {"k": 10**400}])
        stored = vault.get_run(run.id)
        assert stored.params == big and stored.tags == {"t": str(10**400)}
        assert stored.results == {"r": [2**70, {"k": 10**400}]}

    def test_server_answers_4xx_for_bad_text(self, vault: Vault) -> None:
        """Over HTTP, raw JSON bodies with lone surrogates (valid JSON escapes, refused by the server's
        body parser: 422 like any unparsable body) and NULs (refused by the domain validation: 400) get
        InvalidArgumentError naming the character, never a 500, and nothing is written."""
        client, api = getattr(vault.backend, "client", None), getattr(vault.backend, "api_url", None)
        if client is None or api is None:
            pytest.skip("not a labvault server client")
        exp = vault.experiment("raw")
        run = exp.start_run(params={"keep": 1})
        before = (vault.backend.list_experiments(), vault.backend.list_runs([exp.id]))
        rid = run.id
        for surrogate in ("\\udcff", "\\u0000"):
            bodies = [
                ("POST", f"/runs/{rid}/tags", f'{{"t": "a{surrogate}"}}'),
                ("POST", f"/runs/{rid}/params", f'{{"p": {{"k{surrogate}": 1}}}}'),
                ("POST", f"/runs/{rid}/results", f'{{"r": ["x", "{surrogate}"]}}'),
                ("PATCH", f"/runs/{rid}", f'{{"status": "failed", "error": "E{surrogate}"}}'),
                ("POST", "/experiments", f'{{"name": "n{surrogate}"}}'),
                ("POST", f"/experiments/{exp.id}/runs", f'{{"name": "r{surrogate}"}}'),
                ("POST", f"/experiments/{exp.id}/runs", f'{{"tags": {{"t": "{surrogate}"}}}}'),
                ("POST", "/runs/search", f'{{"filter": "tags.t = \'{surrogate}\'"}}'),
                ("POST", "/runs/search", f'{{"order_by": ["params.{surrogate}"]}}'),
                ("POST", "/batch", f'{{"items": [{{"run_id": "{rid}", "tags": {{"t": "{surrogate}"}}}}]}}'),
            ]
            for method, path, body in bodies:
                resp = client.request(method, api + path, content=body.encode(),
                                      headers={"Content-Type": "application/json"})
                expected = 422 if surrogate == "\\udcff" else 400
                assert resp.status_code == expected, (method, path, body, resp.status_code, resp.text)
                doc = resp.json()
                assert doc["error"] == "InvalidArgumentError", doc
                assert ("\\udcff" if surrogate == "\\udcff" else "\\x00") in doc["message"], doc
        assert (vault.backend.list_experiments(), vault.backend.list_runs([exp.id])) == before
        run.end()

    # ----------------------------------------------------------------------------------------------
    # metrics
    def test_metrics_append_only_with_steps_and_timestamps(self, vault: Vault) -> None:
        with vault.experiment("m").start_run() as run:
            run.log_metric("loss", 0.9, step=1, timestamp=1000.0)
            run.log_metric("loss", 0.7, step=2, timestamp=1001.5)
            run.log_metric("loss", 0.8, step=2, timestamp=1002.0)  # same step again: appended, not replaced
            run.log_metrics({"acc": 0.5, "f1": 0.4}, step=7)
            run.log_metric("auto", 1.0)
            run.log_metric("auto", 2.0)
            run.log_metric("auto", 3.0, step=10)
            run.log_metric("auto", 4.0)
        hist = run.metric_history("loss")
        assert hist.steps.dtype == np.int64 and hist.values.dtype == np.float64
        assert hist.timestamps.dtype == np.float64
        assert hist.steps.tolist() == [1, 2, 2]
        assert hist.values.tolist() == [0.9, 0.7, 0.8]
        assert hist.timestamps.tolist() == [1000.0, 1001.5, 1002.0]
        assert len(hist) == 3
        assert run.metric_history("auto").steps.tolist() == [0, 1, 10, 11]
        assert run.metrics == {"loss": 0.8, "acc": 0.5, "f1": 0.4, "auto": 4.0}
        assert len(run.metric_history("never-logged")) == 0

    def test_metrics_nonfinite_are_data(self, vault: Vault) -> None:
        with vault.experiment("m").start_run() as run:
            for x in (1.0, math.nan, math.inf, -math.inf):
                run.log_metric("diverge", x)
        vals = run.metric_history("diverge").values
        assert vals[0] == 1.0 and math.isnan(vals[1]) and vals[2] == math.inf and vals[3] == -math.inf

    def test_metric_history_100k_points(self, vault: Vault) -> None:
        n = 100_000
        with vault.experiment("m").start_run() as run:
            for i in range(n):
                run.log_metric("x", i * 0.5, step=i)
            run.log_metric_series("y", np.arange(n, dtype=np.float64))
        hist = run.metric_history("x")
        assert len(hist) == n
        np.testing.assert_array_equal(hist.steps, np.arange(n))
        np.testing.assert_array_equal(hist.values, np.arange(n) * 0.5)
        assert np.all(np.diff(hist.timestamps) >= 0)
        y = run.metric_history("y")
        np.testing.assert_array_equal(y.values, np.arange(n, dtype=np.float64))
        np.testing.assert_array_equal(y.steps, np.arange(n))
        assert run.metrics["x"] == (n - 1) * 0.5

    def test_background_flush_within_interval(self, uri: str) -> None:
        with labvault.open(uri, flush_interval=0.1) as writer:
            run = writer.experiment("bg").start_run()
            run.log_metric("x", 1.0)
            deadline = time.time() + 5
            seen = 0
            while time.time() < deadline:
                # Read through the backend directly: Run.metric_history would flush the buffer itself.
                seen = len(writer.backend.metric_history(run.id, "x"))
                if seen:
                    break
                time.sleep(0.02)
            assert seen == 1, "the background flusher did not write the buffered point"
            run.end()

    def test_metrics_latest_value_in_info(self, vault: Vault) -> None:
        with vault.experiment("m").start_run() as run:
            for step, value in enumerate([0.3, 0.2, 0.25]):
                run.log_metric("loss", value, step=step)
        assert vault.get_run(run.id).metrics == {"loss": 0.25}

    def test_latest_metric_values_are_exact(self, vault: Vault) -> None:
        """Latest values keep all 17 significant digits in get_run, listings and searches.

        (SQLite 3.40's printf, which the SQLite store formats them with, is exact over the magnitudes
        metrics take; near the ends of the double range, e.g. 1.7976931348623157e308, it can be off by
        one unit in the last place.)"""
        values = {"a": 0.12345678901234568, "b": 1 / 3, "c": 2.0**-1074, "d": 6.02214076e23 / 7,
                  "e": -9007199254740993.0, "f": 5e-324 * 3}
        with vault.experiment("exact").start_run() as run:
            run.log_metrics(values)
        assert vault.get_run(run.id).metrics == values
        (found,) = vault.search_runs("exact", filter="metrics.a > 0.1")
        assert found.metrics == values
        assert vault.search_runs("exact", filter="metrics.a = 0.12345678901234568")
        assert not vault.search_runs("exact", filter="metrics.a = 0.123456789012346")

    def test_metric_steps_are_exact_int64(self, uri: str, vault: Vault) -> None:
        """Steps up to 2**63 - 1 round-trip exactly through every logging call, a reopened handle and a copy
        to another store (through float64, 2**53 + 1 would round and 2**63 - 1 would overflow)."""
        big = [0, 2**53 + 1, 2**63 - 1]
        with vault.experiment("m").start_run() as run:
            for value, step in enumerate(big):
                run.log_metric("one", float(value), step=step)
            run.log_metric("np", 1.0, step=np.uint64(2**63 - 1))  # type: ignore[arg-type]
            run.log_metric("auto", 1.0, step=2**53)
            run.log_metric("auto", 2.0)  # the default next step, 2**53 + 1
            run.log_metrics({"a": 1.0, "b": 2.0}, step=2**53 + 1)
            run.log_metrics({"a": 3.0, "b": 4.0}, step=np.int64(2**63 - 1))  # type: ignore[arg-type]
            run.log_metric_series("int64", np.ones(3), np.array(big, dtype=np.int64))
            run.log_metric_series("uint64", np.ones(3), np.array(big, dtype=np.uint64))
            run.log_metric_series("list", [1.0, 2.0, 3.0], big)
            run.log_metric_series("next", [1.0], np.array([2**63 - 3], dtype=np.uint64))
            run.log_metric_series("next", [3.0, 4.0])  # default steps 2**63 - 2, 2**63 - 1
        expected = {"one": big, "np": [2**63 - 1], "auto": [2**53, 2**53 + 1], "a": big[1:], "b": big[1:],
                    "int64": big, "uint64": big, "list": big, "next": [2**63 - 3, 2**63 - 2, 2**63 - 1]}
        target = f"memory://{os.urandom(8).hex()}"
        labvault.copy(uri, target)
        with labvault.open(uri) as again, labvault.open(target) as copied:
            for where in (vault, again, copied):
                got = where.search_runs("m")[0]
                for key, steps in expected.items():
                    hist = got.metric_history(key)
                    assert hist.steps.dtype == np.int64, (where, key)
                    assert hist.steps.tolist() == steps, (where.uri, key)
                assert got.metrics["one"] == 2.0 and got.metrics["b"] == 4.0

    def test_unstorable_metric_steps_refused_at_the_call(self, vault: Vault) -> None:
        """A step that can never be stored (negative, past 2**63 - 1, not an integer, or a default next step
        past 2**63 - 1) is refused by the call with an InvalidArgumentError naming it, and nothing of the
        call is buffered: the run's later flushes still work."""
        run = vault.experiment("m").start_run()
        run.log_metric("m", 1.0, step=2**63 - 1)
        run.log_metric("n", 1.0, step=5)
        run.flush()
        top, wrap = "9223372036854775808", "18446744073709551616"
        bad: list[tuple[Any, str]] = [
            (lambda: run.log_metric("m", 2.0, step=2**63), top),
            (lambda: run.log_metric("m", 2.0, step=2**64), wrap),
            (lambda: run.log_metric("m", 2.0, step=-1), "-1"),
            (lambda: run.log_metric("m", 2.0, step=2.0), "2.0"),  # type: ignore[arg-type]
            (lambda: run.log_metric("m", 2.0, step=np.uint64(2**63)), top),  # type: ignore[arg-type]
            (lambda: run.log_metric("m", 2.0, step=np.float64(3)), "3.0"),  # type: ignore[arg-type]
            (lambda: run.log_metric("m", 2.0), top),  # the default step after 2**63 - 1
            (lambda: run.log_metrics({"n": 2.0, "m": 2.0}), top),  # n's next step is fine, m's is not
            (lambda: run.log_metrics({"n": 2.0}, step=np.uint64(2**64 - 1)), "18446744073709551615"),  # type: ignore[arg-type]
            (lambda: run.log_metric_series("s", [1.0, 2.0], np.array([1, 2**63], dtype=np.uint64)), top),
            (lambda: run.log_metric_series("s", [1.0, 2.0], [1, 2**63]), top),
            (lambda: run.log_metric_series("s", [1.0], [2**64]), wrap),
            (lambda: run.log_metric_series("s", [1.0, 2.0], np.array([3, -4])), "-4"),
            (lambda: run.log_metric_series("s", [1.0], np.array([1.5])), "1.5"),
            (lambda: run.log_metric_series("m", [1.0, 2.0]), top),  # default steps past 2**63 - 1
        ]
        for i, (call, named) in enumerate(bad):
            with pytest.raises(InvalidArgumentError) as info:
                call()
            assert named in str(info.value), f"bad call {i}: {str(info.value)!r} does not name {named!r}"
        run.log_metric("n", 2.0)  # the run is not poisoned: step 6
        run.flush()
        assert vault.backend.metric_history(run.id, "m").steps.tolist() == [2**63 - 1]
        assert vault.backend.metric_history(run.id, "n").steps.tolist() == [5, 6]
        assert len(vault.backend.metric_history(run.id, "s")) == 0
        assert vault.backend.get_run(run.id).metrics == {"m": 1.0, "n": 2.0}
        run.end()

    def test_close_flushes_every_run_when_one_fails(self, uri: str) -> None:
        """A run whose flush fails (its experiment deleted through another handle) costs no other run its
        points: flush() and close() write every other run, then raise one error naming the failed run;
        close() still stops the flusher and closes the backend."""
        vault = labvault.open(uri, flush_interval=3600)  # no background flush: flush() and close() write
        other = labvault.open(uri)
        try:
            doomed = vault.experiment("doomed").start_run()  # first in line: it used to stop the others
            kept = vault.experiment("kept").start_run()
            doomed.log_metric("m", 1.0)
            kept.log_metric("m", 1.0)
            other.delete_experiment("doomed")
            with pytest.raises(NotFoundError) as info:
                vault.flush()
            assert doomed.id in str(info.value) and kept.id not in str(info.value)
            assert other.backend.metric_history(kept.id, "m").values.tolist() == [1.0]
            kept.log_metric("m", 2.0, step=2**63 - 1)
            with pytest.raises(NotFoundError) as info:
                vault.close()
            assert doomed.id in str(info.value) and kept.id not in str(info.value)
            hist = other.backend.metric_history(kept.id, "m")
            assert hist.values.tolist() == [1.0, 2.0] and hist.steps.tolist() == [0, 2**63 - 1]
            assert vault._flusher is not None and not vault._flusher.is_alive()
            with pytest.raises(InvalidArgumentError, match="closed"):
                vault.experiment("after")
            vault.close()  # closed already: a no-op
        finally:
            other.close()

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

    def test_metric_batch_id_makes_an_append_idempotent(self, vault: Vault) -> None:
        from labvault.domain import MetricSeries

        def series(key: str, values: list[float], start: int) -> MetricSeries:
            n = len(values)
            return MetricSeries(key, np.arange(start, start + n, dtype=np.int64),
                                np.array(values, dtype=np.float64), np.full(n, 1.0))

        backend = vault.backend
        exp = vault.experiment("batches")
        run, other = exp.start_run(), exp.start_run()
        first = [series("loss", [0.5, 0.4], 0), series("acc", [0.1], 0)]
        with vault.watch() as feed:
            backend.log_metrics(run.id, first, batch_id="b1")
            backend.log_metrics(run.id, first, batch_id="b1")  # re-sent (a retry after a lost answer)
            backend.log_metrics(run.id, [series("loss", [0.3], 2)], batch_id="b2")
            backend.log_metrics(run.id, first, batch_id="b1")  # re-sent after a newer batch: still once
            backend.log_metrics(run.id, [series("loss", [0.2], 3)])  # without an id: appended every time
            backend.log_metrics(run.id, [series("loss", [0.2], 3)])
            backend.log_metrics(other.id, first, batch_id="b1")  # batch ids belong to their run
            run.set_tag("done", "yes")
            events = [e for e in self._drain(feed, until="tags.set") if e.run_id == run.id]
        assert backend.metric_history(run.id, "loss").values.tolist() == [0.5, 0.4, 0.3, 0.2, 0.2]
        assert backend.metric_history(run.id, "loss").steps.tolist() == [0, 1, 2, 3, 3]
        assert backend.metric_history(run.id, "acc").values.tolist() == [0.1]
        assert backend.metric_history(other.id, "loss").values.tolist() == [0.5, 0.4]
        assert backend.get_run(run.id).metrics == {"loss": 0.2, "acc": 0.1}
        kinds = [e.kind for e in events]
        assert kinds.count("metric.logged") == 4 and kinds[-1] == "tags.set", kinds  # a skipped batch: none
        for bad in ("has space", "x" * 33, "", "b1/../x"):
            with pytest.raises(InvalidArgumentError, match="batch id"):
                backend.log_metrics(run.id, [series("loss", [9.0], 9)], batch_id=bad)
        with pytest.raises(NotFoundError):
            backend.log_metrics("0" * 32, first, batch_id="b3")
        assert backend.metric_history(run.id, "loss").values.tolist() == [0.5, 0.4, 0.3, 0.2, 0.2]
        for i in range(50):  # a batch is remembered far beyond the one before
            backend.log_metrics(other.id, [series("loss", [float(i)], 2 + i)], batch_id=f"later-{i}")
        backend.log_metrics(other.id, first, batch_id="b1")
        assert backend.metric_history(other.id, "loss").values.tolist() == [0.5, 0.4, *map(float, range(50))]

    def test_large_artifact_streams_with_flat_memory(self, uri: str, tmp_path: Path) -> None:
        if not self.heavy:
            pytest.skip("heavy case: runs once per backend family (set heavy = True)")
        size = 300 * 1024 * 1024
        src = tmp_path / "big.bin"
        block = os.urandom(1 << 20)
        with src.open("wb") as fh:
            for _ in range(size >> 20):
                fh.write(block)
        out = json.loads(_run_worker("big_artifact_roundtrip", uri, str(src), size, timeout=600))
        assert out["size"] == size and out["digest"] == out["logged"]
        assert out["growth_mb"] < 100, f"memory grew by {out['growth_mb']:.0f} MB for a 300 MB artifact"

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
        assert self._numbers(searchable, flt) == expected

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

    # ----------------------------------------------------------------------------------------------
    # change feed
    @staticmethod
    def _drain(feed: Any, until: str, timeout: float = 15.0) -> list[Any]:
        events = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            event = feed.get(timeout=max(0.01, deadline - time.time()))
            if event is None:
                break
            events.append(event)
            if event.kind == until:
                break
        return events

    def test_change_feed_sees_own_writes_in_order(self, vault: Vault) -> None:
        with vault.watch() as feed:
            exp = vault.experiment("watched")
            with exp.start_run(params={"a": 1}) as run:
                run.set_tag("t", "v")
                run.log_metric("loss", 0.5, step=1)
                run.log_metric("loss", 0.4, step=2)
                run.flush()
                run.log_artifact("f.txt", b"hello")
                run.log_result("r", 1)
            events = self._drain(feed, until="run.finished")
        kinds = [e.kind for e in events]
        assert kinds[:2] == ["experiment.created", "run.created"], kinds
        assert kinds[-1] == "run.finished", kinds
        for expected in ("tags.set", "metric.logged", "artifact.logged", "results.logged"):
            assert expected in kinds, (expected, kinds)
        assert all(e.run_id == run.id for e in events[1:])
        metric = next(e for e in events if e.kind == "metric.logged")
        assert metric.data == {"keys": ["loss"], "points": 2}
        art = next(e for e in events if e.kind == "artifact.logged")
        assert art.data["key"] == "f.txt" and art.data["size"] == 5
        # A closed feed ends iteration and receives nothing more.
        assert feed.get(timeout=0.05) is None
        with exp.start_run():
            pass
        assert list(feed) == []

    @pytest.mark.multiprocess
    def test_change_feed_across_processes(self, uri: str) -> None:
        with labvault.open(uri) as vault:
            if not self._capability(vault, "supports_events"):
                pytest.skip("backend has no cross-process change feed")
            with vault.watch() as feed:
                out = _run_worker("start_runs", uri, "remote-writer", 2, "")
                numbers = json.loads(out)
                events: list[Any] = []
                while len([e for e in events if e.kind == "run.finished"]) < 2:
                    got = self._drain(feed, until="run.finished")
                    assert got, f"no event arrived from the other process; so far {events}"
                    events.extend(got)
        kinds = [e.kind for e in events]
        assert numbers == [1, 2]
        assert kinds.count("run.created") == 2 and kinds.count("params.logged") == 0, kinds
        assert kinds.index("run.created") < kinds.index("run.finished")

    # ----------------------------------------------------------------------------------------------
    # processes
    def test_reopen_in_new_process_sees_everything(self, uri: str, tmp_path: Path) -> None:
        vault = labvault.open(uri)
        if not self._capability(vault, "persistent"):
            vault.close()
            pytest.skip("backend is not persistent")
        with vault.experiment("persist").start_run(params={"a": 1}, tags={"t": "v"}) as run:
            run.log_metric("m", 1.5, step=3)
            run.log_result("r", [1, 2])
            run.log_artifact("d/f.txt", b"content")
        vault.close()
        script = (
            "import json, sys, labvault\n"
            "v = labvault.open(sys.argv[1]); r = v.get_run(sys.argv[2]); h = r.metric_history('m')\n"
            "print(json.dumps({'params': r.params, 'tags': r.tags, 'results': r.results,"
            " 'status': r.status, 'steps': h.steps.tolist(), 'values': h.values.tolist(),"
            " 'art': r.get_artifact('d/f.txt').decode(), 'exps': [e.name for e in v.experiments()]}))\n"
        )
        out = subprocess.run([sys.executable, "-c", script, uri, run.id], capture_output=True, text=True,
                             timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got == {"params": {"a": 1}, "tags": {"t": "v"}, "results": {"r": [1, 2]},
                       "status": "finished", "steps": [3], "values": [1.5], "art": "content",
                       "exps": ["persist"]}

    @pytest.mark.multiprocess
    def test_run_numbers_dense_with_8_processes(self, uri: str, tmp_path: Path) -> None:
        with labvault.open(uri) as vault:
            if not self._capability(vault, "multiprocess"):
                pytest.skip("backend is not shared between processes")
            vault.experiment("race")  # the experiment exists; creation races are tested separately
        barrier = tmp_path / "go"
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(8) as pool:
            pending = pool.map_async(_start_runs_worker, [(uri, "race", 5, str(barrier))] * 8)
            time.sleep(1.0)
            barrier.touch()
            results = pending.get(timeout=180)
        numbers = sorted(n for nums in results for n in nums)
        assert numbers == list(range(1, 41))
        with labvault.open(uri) as vault:
            assert sorted(r.number for r in vault.experiment("race").runs()) == list(range(1, 41))

    @pytest.mark.multiprocess
    def test_experiment_creation_race(self, uri: str, tmp_path: Path) -> None:
        with labvault.open(uri) as vault:
            if not self._capability(vault, "multiprocess"):
                pytest.skip("backend is not shared between processes")
        barrier = tmp_path / "go"
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(4) as pool:
            pending = pool.map_async(_start_runs_worker, [(uri, "fresh", 2, str(barrier))] * 4)
            time.sleep(1.0)
            barrier.touch()
            results = pending.get(timeout=180)
        assert sorted(n for nums in results for n in nums) == list(range(1, 9))
        with labvault.open(uri) as vault:
            assert [e.name for e in vault.experiments()] == ["fresh"]

    @pytest.mark.multiprocess
    def test_sigkill_mid_logging_loses_at_most_the_unflushed_tail(self, uri: str) -> None:
        with labvault.open(uri) as vault:
            if not self._capability(vault, "persistent"):
                pytest.skip("backend is not persistent")
        flush_interval = 0.2
        proc = subprocess.Popen(
            [sys.executable, "-m", "labvault.testing._workers", "kill_target",
             json.dumps([uri, "victims", flush_interval])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdout is not None
            run_id = json.loads(proc.stdout.readline())["run_id"]
            logged = 0
            while logged < 300:
                line = proc.stdout.readline()
                assert line, proc.stderr.read() if proc.stderr else "worker died"
                logged = json.loads(line)["logged"]
            # Everything logged before this moment must be durable once 5 flush intervals have passed.
            time.sleep(5 * flush_interval)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        with labvault.open(uri, heartbeat_timeout=0.5) as vault:
            run = vault.get_run(run_id)
            hist = run.metric_history("x")
            n = len(hist)
            assert n > logged, f"only {n} points survived, but {logged} were logged well before the kill"
            np.testing.assert_array_equal(hist.steps, np.arange(n))  # a dense prefix: nothing torn
            np.testing.assert_array_equal(hist.values, np.arange(n, dtype=np.float64))
            time.sleep(0.6)
            assert run.refresh().status == "killed"  # the next reader notices the stopped heartbeat

    # ----------------------------------------------------------------------------------------------
    # bad input: the table of refused calls lives in labvault.testing.bad_input (BadInputTests)
    def test_errors_are_labvault_errors(self, vault: Vault) -> None:
        with pytest.raises(LabvaultError):
            vault.get_run("not-an-id!")
        assert issubclass(InvalidArgumentError, ValueError)

