"""``FeedTests``: the change feed, in this process and across processes (part of ``BackendTests``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

import labvault
from labvault.client.vault import Vault
from labvault.testing.suite_base import SuiteBase, run_worker

__all__ = ["FeedTests"]


class FeedTests(SuiteBase):
    """``vault.watch()`` sees this vault's writes in order; with ``supports_events``, other processes' too."""

    # ----------------------------------------------------------------------------------------------
    # change feed
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
                out = run_worker("start_runs", uri, "remote-writer", 2, "")
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
