"""``MetricTests``: metric histories, latest values, exact steps, flushing and batch ids (part of
``BackendTests``)."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import pytest

import labvault
from labvault.client.vault import Vault
from labvault.domain import MetricSeries
from labvault.errors import InvalidArgumentError, NotFoundError
from labvault.testing.suite_base import SuiteBase

__all__ = ["MetricTests"]


class MetricTests(SuiteBase):
    """Metrics are append-only series of exact int64 steps, float64 values and timestamps."""

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

    def test_metric_batch_id_makes_an_append_idempotent(self, vault: Vault) -> None:
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
