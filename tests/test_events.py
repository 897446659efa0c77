"""Events beyond the conformance suite: the change log's own guarantees, and a server's event stream that
resumes with ``Last-Event-ID`` after the connection or the server itself went away."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_process import add_admin, free_port, start_server, stop_server

import labvault
from labvault.blobs.memory import MemoryBlobStore
from labvault.domain import ChangeEvent
from labvault.errors import InvalidArgumentError
from labvault.store import eventlog
from labvault.store.eventlog import BlobEventLog, LogWriter, PolledFeed, parse_event_id


def _drain(feed: Any, n: int, timeout: float = 20.0) -> list[ChangeEvent]:
    out: list[ChangeEvent] = []
    while len(out) < n:
        event = feed.get(timeout=timeout)
        assert event is not None, f"only {len(out)} of {n} events arrived: {out}"
        out.append(event)
    return out


# -- the change log ------------------------------------------------------------------------------------------
def test_writers_racing_on_one_log_get_dense_distinct_batches() -> None:
    store = MemoryBlobStore()
    logs = [BlobEventLog(store) for _ in range(4)]
    numbers: list[int] = []
    lock = threading.Lock()

    def write(log: BlobEventLog, who: int) -> None:
        for i in range(25):
            n = log.append([ChangeEvent("run.created", None, None, {"who": who, "i": i})])
            with lock:
                numbers.append(n)

    threads = [threading.Thread(target=write, args=(log, k)) for k, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(1, 101))  # dense, no batch lost or overwritten
    assert logs[0].head() == 100
    seen = [logs[0].read(n) for n in range(1, 101)]
    assert all(batch is not None and len(batch) == 1 for batch in seen)
    per_writer = {}
    for batch in seen:
        assert batch is not None
        per_writer.setdefault(batch[0].data["who"], []).append(batch[0].data["i"])
    assert all(v == list(range(25)) for v in per_writer.values())  # each writer's order is kept
    assert seen[41] is not None and seen[41][0].id == "42.0"


def test_a_writer_batches_and_a_feed_resumes_in_the_middle_of_a_batch() -> None:
    log = BlobEventLog(MemoryBlobStore())
    writer = LogWriter(log, interval=60)  # no automatic flush: the test decides the batches
    for i in range(3):
        writer.append(ChangeEvent("tags.set", None, None, {"i": i}))
    writer.flush()
    assert log.head() == 1
    with PolledFeed(log, 1, skip=2, poll_interval=0.01) as feed:  # after "1.1"
        got = _drain(feed, 1)
    assert [(e.id, e.data["i"]) for e in got] == [("1.2", 2)]
    writer.close()
    with pytest.raises(InvalidArgumentError, match="12.3"):
        parse_event_id("not-an-id")


def test_a_feed_that_fell_behind_the_trimmed_log_skips_to_the_oldest_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventlog, "KEEP", 8)
    monkeypatch.setattr(eventlog, "TRIM_EVERY", 4)
    monkeypatch.setattr(eventlog, "_GAP_CHECK", 0.05)
    log = BlobEventLog(MemoryBlobStore())
    for i in range(20):
        log.append([ChangeEvent("tags.set", None, None, {"i": i})])
    oldest = log.oldest()
    assert 1 < oldest <= 13  # batches before it were trimmed
    with PolledFeed(log, 1, poll_interval=0.01) as feed:
        first = _drain(feed, 1)[0]
    assert first.id == f"{oldest}.0"


def test_own_writes_before_watch_are_not_delivered_but_later_ones_are(tmp_path: Path) -> None:
    with labvault.open(f"sqlite:///{tmp_path / 's.db'}") as vault:
        exp = vault.experiment("before")
        with exp.start_run():
            pass
        with vault.watch(kinds="run") as feed:
            with exp.start_run() as later:
                pass
            got = _drain(feed, 2)
        assert [(e.kind, e.run_id) for e in got] == [("run.created", later.id), ("run.finished", later.id)]


# -- the server's event stream ---------------------------------------------------------------------------------
def test_a_server_stream_resumes_after_the_server_restarts(tmp_path: Path) -> None:
    """The client's SSE feed reconnects with Last-Event-ID; the restarted server replays from the store's
    change log what was written while it was down, then goes on live."""
    _, _, token = add_admin(tmp_path / "auth.db", "events")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(tmp_path, port, log=tmp_path / "server.log")
    try:
        with labvault.open(url, token=token, retries=12) as remote:
            exp = remote.experiment("restarts")
            with remote.watch(kinds="run.finished", experiment=exp) as feed:
                with exp.start_run():
                    pass
                first = _drain(feed, 1)[0]
                assert first.id is not None and parse_event_id(first.id)
                stop_server(proc)
                with labvault.open(f"sqlite:///{tmp_path / 'store.db'}") as direct:  # while it is down
                    for _ in range(2):
                        with direct.experiment("restarts").start_run():
                            pass
                proc = start_server(tmp_path, port, log=tmp_path / "server.log")
                missed = _drain(feed, 2)
                with exp.start_run() as live:
                    pass
                after = _drain(feed, 1)
            numbers = {r.id: r.number for r in exp.runs()}
        assert [numbers[e.run_id] for e in missed] == [2, 3]  # type: ignore[index]
        assert [e.run_id for e in after] == [live.id]
        assert feed.inner.reconnects >= 1  # type: ignore[attr-defined]
    finally:
        stop_server(proc)


def test_last_event_id_replays_from_the_hub_and_bad_ids_get_a_400(tmp_path: Path) -> None:
    _, _, token = add_admin(tmp_path / "auth.db", "events")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(tmp_path, port, log=tmp_path / "server.log")
    try:
        with labvault.open(url, token=token) as remote:
            exp = remote.experiment("hub")
            with remote.watch(kinds="run.finished") as feed:
                for _ in range(3):
                    with exp.start_run():
                        pass
                ids = [e.id for e in _drain(feed, 3)]
            headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(ids[0])}
            with httpx.stream("GET", f"{url}/api/v1/events", params={"kinds": "run.finished"},
                              headers=headers, timeout=20) as resp:
                assert resp.status_code == 200
                got: list[str] = []
                for line in resp.iter_lines():
                    if line.startswith("id: "):
                        got.append(line[4:])
                    if len(got) == 2:
                        break
            assert got == ids[1:]
            bad = httpx.get(f"{url}/api/v1/events", headers={**headers, "Last-Event-ID": "nonsense"},
                            timeout=20)
            assert bad.status_code == 400 and "nonsense" in bad.text
    finally:
        stop_server(proc)
