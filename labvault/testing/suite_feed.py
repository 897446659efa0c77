"""``FeedTests``: the change feed, in this process and across processes (part of ``BackendTests``)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

import labvault
from labvault.client.vault import Vault
from labvault.domain import ChangeEvent
from labvault.errors import InvalidArgumentError, UnsupportedOperationError
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
            if not (self._capability(vault, "supports_events") and self._capability(vault, "persistent")):
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

    # ----------------------------------------------------------------------------------------------
    # filters, subscriptions, model events, resuming
    def test_watch_filters_by_kind_and_experiment(self, vault: Vault) -> None:
        a, b = vault.experiment("filter-a"), vault.experiment("filter-b")
        with vault.watch(kinds="run.finished", experiment=a) as by_obj, \
                vault.watch(kinds=["run"], experiment="filter-b") as by_name:
            for exp in (a, b, a):
                with exp.start_run() as run:
                    run.set_tag("t", "v")
            got_a = [self._drain(by_obj, until="run.finished") for _ in range(2)]
            got_b = self._drain(by_name, until="run.finished")
        assert [[e.kind for e in chunk] for chunk in got_a] == [["run.finished"], ["run.finished"]]
        assert [chunk[0].run_id for chunk in got_a] == [r.id for r in a.runs()]
        assert [e.kind for e in got_b] == ["run.created", "run.finished"]
        assert {e.run_id for e in got_b} == {b.runs()[0].id}
        with pytest.raises(InvalidArgumentError, match=r"run\.finishd"):
            vault.watch(kinds="run.finishd")
        with pytest.raises(InvalidArgumentError, match="kind"):
            vault.watch(kinds=[3])  # type: ignore[list-item]

    def test_subscribe_calls_back_on_its_thread_and_survives_errors(self, vault: Vault) -> None:
        seen: list[tuple[str, str]] = []
        done = threading.Event()
        main = threading.current_thread().name

        def callback(event: ChangeEvent) -> None:
            seen.append((event.kind, threading.current_thread().name))
            if event.kind == "run.created":
                raise RuntimeError("a broken callback")
            if event.kind == "run.finished":
                done.set()

        exp = vault.experiment("subscribed")
        with vault.subscribe(callback, kinds=("run.created", "run.finished"), experiment=exp) as sub:
            with exp.start_run():
                pass
            assert done.wait(15), seen
        assert [k for k, _ in seen] == ["run.created", "run.finished"]
        assert all(name != main for _, name in seen)
        assert sub.errors == 1 and sub.delivered == 2 and sub.closed
        with pytest.raises(InvalidArgumentError, match="callable"):
            vault.subscribe("not a function")  # type: ignore[arg-type]

    def test_model_events_replace_the_models_own_records(self, vault: Vault) -> None:
        models: list[Any] = []
        got = threading.Event()

        def on_model(model: Any) -> None:
            models.append(model)
            if len(models) == 2:
                got.set()

        with vault.watch() as every, vault.register_model_change_cb(on_model):
            model = vault.create_model(None, {"w": [1, 2]}, name="clf")
            model.instance = {"w": [3, 4]}
            vault.update_model(model)
            vault.set_model_alias("clf", "production", 1)
            with vault.experiment("plain").start_run():
                pass
            events = self._drain(every, until="run.finished")
            assert got.wait(15), models
        kinds = [e.kind for e in events]
        assert kinds == ["model.created", "model.updated", "model.alias_set", "experiment.created",
                         "run.created", "run.finished"], kinds
        created, updated, alias = events[:3]
        assert created.data == {"instance_id": 1, "version": 1, "model_type": "builtins.dict", "name": "clf"}
        assert updated.data["version"] == 2 and updated.data["instance_id"] == 1
        assert alias.data == {"instance_id": 1, "name": "clf", "alias": "production", "version": 1}
        assert [(m.instance_id, m.version) for m in models] == [(1, 1), (1, 2)]
        assert models[1].instance == {"w": [3, 4]}

    def test_model_events_carry_the_run_that_logged_the_model(self, vault: Vault) -> None:
        exp = vault.experiment("trainer")
        with vault.watch(kinds="model", experiment=exp) as feed:
            with exp.start_run() as run:
                run.log_model("net", [1.0, 2.0])
            vault.create_model(None, b"elsewhere")  # no run: not this experiment's
            events = self._drain(feed, until="model.created")
            assert feed.get(timeout=0.5) is None
        assert [(e.kind, e.run_id, e.experiment_id) for e in events] == [("model.created", run.id, exp.id)]

    def test_resume_after_an_event_id_replays_what_was_missed(self, vault: Vault) -> None:
        exp = vault.experiment("resumed")
        with vault.watch(kinds="run.finished", experiment=exp) as feed:
            with exp.start_run():
                pass
            first = self._drain(feed, until="run.finished")[-1]
        if not self._capability(vault, "event_log"):
            with pytest.raises(UnsupportedOperationError):
                vault.watch(after=first.id or "1.0")
            return
        assert first.id, "a store with a change log names its events"
        with exp.start_run():  # written while nobody watches
            pass
        with exp.start_run():
            pass
        vault.backend.sync()
        with vault.watch(kinds="run.finished", experiment=exp, after=first.id) as feed:
            missed = [self._drain(feed, until="run.finished") for _ in range(2)]
        assert [chunk[-1].run_id for chunk in missed] == [r.id for r in exp.runs()[1:]]
        with pytest.raises(InvalidArgumentError):
            vault.watch(after="no such id!")

    @pytest.mark.multiprocess
    def test_model_events_across_processes(self, uri: str) -> None:
        with labvault.open(uri) as vault:
            if not (self._capability(vault, "supports_events") and self._capability(vault, "persistent")):
                pytest.skip("backend has no cross-process change feed")
            with vault.watch(kinds="model") as feed:
                ids = json.loads(run_worker("create_models", uri, 2, ""))
                events: list[Any] = []
                deadline = time.time() + 30
                while len(events) < 2 and time.time() < deadline:
                    events.extend(self._drain(feed, until="model.created"))
        assert sorted(e.data["instance_id"] for e in events) == sorted(ids)
        assert {e.kind for e in events} == {"model.created"}
