"""``ValidationTests``: bad text and unstorable numbers refused on every path (part of ``BackendTests``).

One check everywhere (valid UTF-8, no NUL), also nested; huge or non-numeric numbers. The table of
refused calls with its store-unchanged check is ``labvault.testing.bad_input``; these are the cases that
need a parameter of their own or a ``with`` block.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import labvault
from labvault.client.run import Run
from labvault.client.vault import Vault
from labvault.domain import validation as v
from labvault.errors import InvalidArgumentError, LabvaultError, NotFoundError
from labvault.testing.suite_base import SuiteBase

__all__ = ["ValidationTests"]


class ValidationTests(SuiteBase):
    """Bad text and numbers: refused with ``InvalidArgumentError`` naming them, nothing written."""

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
    # bad input: the table of refused calls lives in labvault.testing.bad_input (BadInputTests)
    def test_errors_are_labvault_errors(self, vault: Vault) -> None:
        with pytest.raises(LabvaultError):
            vault.get_run("not-an-id!")
        assert issubclass(InvalidArgumentError, ValueError)
