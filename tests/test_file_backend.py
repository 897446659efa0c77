"""File-backend specifics: on-disk layout, torn tails, corruption, process races, options, big histories."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_query_equivalence import filters_of, orders_of, predicates

import labvault
from labvault import query
from labvault.domain import ArtifactInfo, ExperimentInfo, MetricSeries
from labvault.errors import (
    BackendUnavailableError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    NotFoundError,
    UnsupportedOperationError,
)
from labvault.store.file.backend import FORMAT_VERSION, FileBackend
from labvault.store.file.segments import seg_name
from labvault.store.file.upgrade import upgrade
from labvault.testing.suite_base import run_at_once


def _series(key: str, values: list[float], start: int = 0) -> MetricSeries:
    n = len(values)
    return MetricSeries(key, np.arange(start, start + n, dtype=np.int64),
                        np.asarray(values, dtype=np.float64), np.full(n, 1000.0))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def backend(root: Path) -> FileBackend:
    b = FileBackend.from_uri(f"file://{root}")
    assert isinstance(b, FileBackend)
    return b


def _run(backend: FileBackend, exp: str = "e") -> tuple[str, str]:
    e = backend.ensure_experiment(exp, "default")
    r = backend.create_run(e.id, name=None, parent_id=None, start_time=time.time(), params={}, tags={})
    return e.id, r.id


def _run_path(root: Path, exp_id: str, run_id: str) -> Path:
    return root / "experiments" / exp_id / "runs" / run_id


def _seg_path(root: Path, exp_id: str, run_id: str, key: str) -> Path:
    return _run_path(root, exp_id, run_id) / "metrics" / seg_name(key)


def _journal(root: Path, exp_id: str) -> list[dict[str, Any]]:
    text = (root / "experiments" / exp_id / "journal.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


# -- construction and layout --
def test_construction_does_no_io_and_empty_root_reads_empty(root: Path) -> None:
    b = FileBackend.from_uri(str(root))
    assert not root.exists()
    assert b.list_experiments() == []
    with pytest.raises(NotFoundError):
        b.get_run("a" * 32)
    assert not root.exists()


def test_open_bare_path_and_file_uri_reach_file_backend(root: Path) -> None:
    for uri in (str(root), f"file://{root}"):
        with labvault.open(uri) as vault:
            assert isinstance(vault.backend, FileBackend)
            assert vault.backend.root == root


def test_layout_is_human_readable_json(root: Path, backend: FileBackend) -> None:
    exp = backend.ensure_experiment("layout", "proj")
    run = backend.create_run(exp.id, name="r1", parent_id=None, start_time=1.5, params={"lr": 0.1},
                             tags={"t": "v"})
    backend.log_results(run.id, {"score": [1, 2]})
    backend.log_metrics(run.id, [_series("loss", [0.5, 0.25])])
    backend.add_artifact(run.id, ArtifactInfo("a/b.txt", 3, "0" * 64, 2.0))

    assert json.loads((root / "labvault.json").read_text()) == {"format": "labvault-file",
                                                                "version": FORMAT_VERSION}
    exp_doc = json.loads((root / "experiments" / exp.id / "experiment.json").read_text())
    assert exp_doc == {"id": exp.id, "name": "layout", "project": "proj", "created_at": exp.created_at}
    lines = _journal(root, exp.id)
    assert [line["op"] for line in lines] == ["create", "results", "metrics"]
    assert all(line["id"] == run.id for line in lines)
    assert lines[0] == {"op": "create", "id": run.id, "number": 1, "name": "r1", "parent_id": None,
                        "start_time": 1.5, "params": {"lr": 0.1}, "tags": {"t": "v"}}
    assert lines[1]["results"] == {"score": [1, 2]}
    value, step, _stamp, end = lines[2]["metrics"]["loss"]
    assert (value, step) == (0.25, 1)
    run_dir = _run_path(root, exp.id, run.id)
    assert end == (run_dir / "metrics" / "loss.seg").stat().st_size
    manifest = [json.loads(line) for line in (run_dir / "artifacts.jsonl").read_text().splitlines()]
    assert manifest == [{"key": "a/b.txt", "digest": "0" * 64, "size": 3, "created_at": 2.0}]
    assert (run_dir / "metrics" / "loss.seg").read_bytes()[:4] == b"LVS1"


def test_newer_format_version_refused(root: Path, backend: FileBackend) -> None:
    _run(backend)
    newer = {"format": "labvault-file", "version": FORMAT_VERSION + 1}
    (root / "labvault.json").write_text(json.dumps(newer))
    fresh = FileBackend.from_uri(str(root))
    with pytest.raises(UnsupportedOperationError, match="version"):
        fresh.list_experiments()


def test_options(root: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="bogus"):
        FileBackend.from_uri(str(root), bogus=1)
    with pytest.raises(InvalidArgumentError, match="fast"):
        FileBackend.from_uri(f"file://{root}?fast=1")
    with pytest.raises(InvalidArgumentError, match="durable"):
        FileBackend.from_uri(str(root), durable="maybe")
    assert FileBackend.from_uri(str(root), durable=False).durable is False
    assert FileBackend.from_uri(f"file://{root}?durable=false").durable is False
    with pytest.raises(InvalidArgumentError, match="bogus"):
        labvault.open(str(root), bogus=True)
    with labvault.open(config={"backend": "file", "uri": str(root), "durable": False}) as vault:
        assert isinstance(vault.backend, FileBackend) and vault.backend.durable is False
    with pytest.raises(InvalidArgumentError):
        labvault.open(config={"backend": "file", "uri": str(root), "nope": 1})


def test_non_durable_store_round_trips(root: Path) -> None:
    b = FileBackend.from_uri(str(root), durable=False)
    _exp, run_id = _run(b)
    b.log_params(run_id, {"a": 1})
    b.log_metrics(run_id, [_series("m", [1.0, 2.0])])
    again = FileBackend.from_uri(str(root))
    assert again.get_run(run_id).params == {"a": 1}
    assert again.metric_history(run_id, "m").values.tolist() == [1.0, 2.0]


# -- semantics --
def test_params_conflict_writes_nothing(backend: FileBackend) -> None:
    _exp, run_id = _run(backend)
    backend.log_params(run_id, {"lr": 0.1})
    backend.log_params(run_id, {"lr": 0.1})
    with pytest.raises(ConflictError, match="lr"):
        backend.log_params(run_id, {"other": 1, "lr": 0.2})
    assert backend.get_run(run_id).params == {"lr": 0.1}


def test_update_run_changes_only_given_fields(backend: FileBackend) -> None:
    _exp, run_id = _run(backend)
    backend.set_tags(run_id, {"k": "v"})
    backend.update_run(run_id, heartbeat=123.0)
    backend.update_run(run_id, status="failed", error="boom", end_time=124.0)
    info = backend.get_run(run_id)
    assert (info.status, info.error, info.end_time, info.heartbeat) == ("failed", "boom", 124.0, 123.0)
    assert info.tags == {"k": "v"}


def test_missing_entities(backend: FileBackend) -> None:
    exp_id, run_id = _run(backend)
    with pytest.raises(NotFoundError):
        backend.create_run("0" * 32, name=None, parent_id=None, start_time=1.0, params={}, tags={})
    with pytest.raises(NotFoundError):
        backend.create_run(exp_id, name=None, parent_id="0" * 32, start_time=1.0, params={}, tags={})
    with pytest.raises(NotFoundError):
        backend.log_metrics("0" * 32, [_series("m", [1.0])])
    with pytest.raises(NotFoundError):
        backend.metric_history("0" * 32, "m")
    with pytest.raises(NotFoundError):
        backend.delete_experiment("0" * 32)
    backend.delete_experiment(exp_id)
    for call in (lambda: backend.get_run(run_id), lambda: backend.log_params(run_id, {"a": 1}),
                 lambda: backend.log_metrics(run_id, [_series("m", [1.0])]),
                 lambda: backend.list_artifacts(run_id)):
        with pytest.raises(NotFoundError):
            call()
    assert backend.list_runs([exp_id]) == []


def test_delete_experiment_from_another_process_view(root: Path, backend: FileBackend) -> None:
    exp_id, run_id = _run(backend)
    other = FileBackend.from_uri(str(root))
    assert other.get_run(run_id).id == run_id  # cached in the other backend now
    backend.delete_experiment(exp_id)
    with pytest.raises(NotFoundError):
        other.get_run(run_id)
    with pytest.raises(NotFoundError):
        other.set_tags(run_id, {"a": "b"})
    assert other.list_experiments() == []
    assert not (root / "experiments" / exp_id).exists()
    assert os.listdir(root / "trash") == []


def test_metric_keys_with_slash_colon_space(root: Path, backend: FileBackend) -> None:
    _exp, run_id = _run(backend)
    keys = ["val/loss", "a:b", "with space", "deep/a b:c/d", "x" * 100 + "/" * 0 + "/y" * 60]
    backend.log_metrics(run_id, [_series(k, [float(i), float(i) + 0.5]) for i, k in enumerate(keys)])
    info = backend.get_run(run_id)
    assert info.metrics == {k: i + 0.5 for i, k in enumerate(keys)}
    for i, k in enumerate(keys):
        assert backend.metric_history(run_id, k).values.tolist() == [float(i), float(i) + 0.5]
    names = os.listdir(_run_path(backend.root, backend.get_run(run_id).experiment_id, run_id) / "metrics")
    assert "val%2Floss.seg" in names and "a%3Ab.seg" in names and "with%20space.seg" in names
    assert all(len(n) < 255 for n in names)


def test_nonfinite_latest_value(backend: FileBackend) -> None:
    _exp, run_id = _run(backend)
    backend.log_metrics(run_id, [_series("m", [1.0, float("nan")]), _series("i", [float("-inf")])])
    metrics = backend.get_run(run_id).metrics
    assert np.isnan(metrics["m"]) and metrics["i"] == float("-inf")


# -- torn tails and corruption --
@pytest.mark.parametrize("tail", [b"\x00garbage-without-magic-1234567890", b"LVS1", b"LVS1\x05\x00\x00\x00",
                                  "half-record"])
def test_torn_tail_is_ignored_and_repaired_on_next_append(
    root: Path, backend: FileBackend, tail: bytes | str
) -> None:
    exp_id, run_id = _run(backend)
    backend.log_metrics(run_id, [_series("m", [1.0, 2.0])])
    backend.log_metrics(run_id, [_series("m", [3.0], start=2)])
    seg = _seg_path(root, exp_id, run_id, "m")
    if tail == "half-record":
        whole = seg.read_bytes()
        backend.log_metrics(run_id, [_series("m", [4.0, 5.0, 6.0], start=3)])
        data = seg.read_bytes()
        seg.write_bytes(data[: len(whole) + (len(data) - len(whole)) // 2])
    else:
        assert isinstance(tail, bytes)
        with seg.open("ab") as fh:
            fh.write(tail)
    fresh = FileBackend.from_uri(str(root))
    assert fresh.metric_history(run_id, "m").values.tolist() == [1.0, 2.0, 3.0]
    # The next append cuts the torn tail off, so it never ends up in the middle of the file.
    fresh.log_metrics(run_id, [_series("m", [7.0], start=9)])
    assert fresh.metric_history(run_id, "m").values.tolist() == [1.0, 2.0, 3.0, 7.0]
    assert fresh.get_run(run_id).metrics == {"m": 7.0}


def test_crc_failing_last_record_is_ignored(root: Path, backend: FileBackend) -> None:
    exp_id, run_id = _run(backend)
    backend.log_metrics(run_id, [_series("m", [1.0])])
    backend.log_metrics(run_id, [_series("m", [2.0], start=1)])
    seg = _seg_path(root, exp_id, run_id, "m")
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF
    seg.write_bytes(bytes(data))
    assert backend.metric_history(run_id, "m").values.tolist() == [1.0]


def test_corrupt_middle_record_raises(root: Path, backend: FileBackend) -> None:
    exp_id, run_id = _run(backend)
    for i in range(3):
        backend.log_metrics(run_id, [_series("m", [float(i)], start=i)])
    seg = _seg_path(root, exp_id, run_id, "m")
    data = bytearray(seg.read_bytes())
    data[20] ^= 0xFF  # inside the first record's payload
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match=r"m\.seg"):
        backend.metric_history(run_id, "m")
    data = bytearray(seg.read_bytes())
    data[20] ^= 0xFF
    data[0:4] = b"XXXX"  # a smashed header in the middle
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError):
        backend.metric_history(run_id, "m")


def test_corrupt_json_raises_naming_the_file(root: Path, backend: FileBackend) -> None:
    exp_id, run_id = _run(backend)
    backend.set_tags(run_id, {"a": "b"})
    journal = root / "experiments" / exp_id / "journal.jsonl"
    journal.write_bytes(b"{not json\n" + journal.read_bytes())  # a bad line followed by good ones
    with pytest.raises(CorruptDataError, match=r"journal\.jsonl"):
        FileBackend.from_uri(str(root)).get_run(run_id)
    with pytest.raises(CorruptDataError, match=r"journal\.jsonl"):
        FileBackend.from_uri(str(root)).list_runs([exp_id])
    (root / "experiments" / exp_id / "experiment.json").write_text("[")
    with pytest.raises(CorruptDataError, match=r"experiment\.json"):
        FileBackend.from_uri(str(root)).list_experiments()


def test_corrupt_manifest_and_torn_manifest_line(root: Path, backend: FileBackend) -> None:
    exp_id, run_id = _run(backend)
    backend.add_artifact(run_id, ArtifactInfo("a.txt", 1, "1" * 64, 1.0))
    manifest = _run_path(root, exp_id, run_id) / "artifacts.jsonl"
    with manifest.open("ab") as fh:
        fh.write(b'{"key": "b.t')  # a torn last line
    assert [a.key for a in backend.list_artifacts(run_id)] == ["a.txt"]
    backend.add_artifact(run_id, ArtifactInfo("c.txt", 1, "2" * 64, 1.0))
    assert [a.key for a in backend.list_artifacts(run_id)] == ["a.txt", "c.txt"]
    manifest.write_bytes(b"nonsense\n" + manifest.read_bytes())
    with pytest.raises(CorruptDataError, match=r"artifacts\.jsonl"):
        backend.list_artifacts(run_id)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied_is_backend_unavailable(root: Path, backend: FileBackend) -> None:
    exp_id, _run_id = _run(backend)
    journal = root / "experiments" / exp_id / "journal.jsonl"
    journal.chmod(0o400)
    try:
        with pytest.raises(BackendUnavailableError, match="journal"):
            backend.create_run(exp_id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
    finally:
        journal.chmod(0o600)


def test_os_error_is_backend_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    b = FileBackend.from_uri(str(blocker / "store"))
    with pytest.raises(BackendUnavailableError, match="store"):
        b.ensure_experiment("e", "default")


# -- processes --
def _at_barrier(root: str, barrier: str) -> tuple[FileBackend, ExperimentInfo]:
    """In a racing worker: wait (30 s at most) for the file ``barrier``, then open the store at ``root`` and
    get-or-create its experiment ``race``."""
    deadline = time.time() + 30
    while not os.path.exists(barrier) and time.time() < deadline:
        time.sleep(0.002)
    b = FileBackend.from_uri(root)
    return b, b.ensure_experiment("race", "default")


def _race_worker(args: tuple[str, str, int]) -> list[int]:
    root, barrier, count = args
    b, exp = _at_barrier(root, barrier)
    return [b.create_run(exp.id, name=None, parent_id=None, start_time=time.time(), params={"i": i},
                         tags={}).number for i in range(count)]


def test_eight_processes_start_runs_at_once(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    barrier = str(tmp_path / "go")
    results = run_at_once(_race_worker, (root, barrier, 10), 8, barrier, timeout=120)
    numbers = sorted(n for nums in results for n in nums)
    assert numbers == list(range(1, 81))
    b = FileBackend.from_uri(root)
    assert [e.name for e in b.list_experiments()] == ["race"]  # get-or-create raced too
    runs = b.list_runs([b.list_experiments()[0].id])
    assert sorted(r.number for r in runs) == list(range(1, 81))


# -- big histories --
def test_one_million_point_history_round_trip(backend: FileBackend) -> None:
    _exp, run_id = _run(backend)
    n = 1_000_000
    values = np.random.default_rng(0).random(n)
    steps = np.arange(n, dtype=np.int64)
    stamps = np.linspace(0.0, 100.0, n)
    batch = 10_000
    for start in range(0, n, batch):
        end = start + batch
        chunk = MetricSeries("x", steps[start:end], values[start:end], stamps[start:end])
        backend.log_metrics(run_id, [chunk])
    t0 = time.perf_counter()
    hist = backend.metric_history(run_id, "x")
    elapsed = time.perf_counter() - t0
    np.testing.assert_array_equal(hist.steps, steps)
    np.testing.assert_array_equal(hist.values, values)
    np.testing.assert_array_equal(hist.timestamps, stamps)
    assert hist.steps.dtype == np.int64 and hist.values.dtype == np.float64
    assert backend.get_run(run_id).metrics == {"x": values[-1]}
    assert elapsed < 1.0, f"reading 1M points took {elapsed:.3f} s"


def test_long_metric_key_uses_a_hashed_file_and_sidecar(root: Path, backend: FileBackend) -> None:
    exp_id, run_id = _run(backend)
    long_key = "k" * 60 + "/a b" * 40  # quotes to more than 200 characters: a hashed file name + sidecar
    backend.log_metrics(run_id, [_series("m/x", [1.0, 2.0]), _series(long_key, [5.0])])
    backend.log_metrics(run_id, [_series("m/x", [3.0], start=2)])
    metrics_dir = _run_path(root, exp_id, run_id) / "metrics"
    sidecars = [n for n in os.listdir(metrics_dir) if n.endswith(".key")]
    assert len(sidecars) == 1 and json.loads((metrics_dir / sidecars[0]).read_text()) == {"key": long_key}
    fresh = FileBackend.from_uri(str(root))
    assert fresh.get_run(run_id).metrics == {"m/x": 3.0, long_key: 5.0}
    assert fresh.metric_history(run_id, long_key).values.tolist() == [5.0]


# -- the journal and the index --
def _index_path(root: Path, exp_id: str) -> Path:
    return root / "experiments" / exp_id / "index.lvx"


def _fill(backend: FileBackend, exp_id: str, count: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + count):
        r = backend.create_run(exp_id, name=f"r{i}", parent_id=None, start_time=1000.0 + i,
                               params={"i": i, "opt": ("adam", "sgd")[i % 2], "layers": [i, 2 * i]},
                               tags={"parity": str(i % 2)})
        backend.log_metrics(r.id, [_series("acc", [i / 100])])
        if i % 3 == 0:
            backend.update_run(r.id, status="finished", end_time=2000.0 + i)
        ids.append(r.id)
    return ids


def _snapshot(backend: FileBackend, exp_id: str) -> list[tuple[Any, ...]]:
    return [(r.id, r.number, r.name, r.status, r.end_time, r.params, r.tags, r.metrics, r.results)
            for r in backend.list_runs([exp_id])]


def test_close_writes_the_index_and_a_fresh_reader_uses_it(root: Path) -> None:
    with labvault.open(str(root)) as vault:
        exp = vault.experiment("e")
        for i in range(5):
            with exp.start_run(params={"i": i}) as run:
                run.log_metric("loss", 1.0 / (i + 1))
    exp_id = exp.id
    index = _index_path(root, exp_id)
    assert index.read_bytes()[:8] == b"LVIDX01\n"
    fresh = FileBackend.from_uri(str(root))
    state = fresh._state(exp_id)
    assert state is not None and state.base is not None and state.n_base == 5  # loaded from the index
    assert state.consumed == state.base.journal_end  # and nothing left to read from the journal
    assert [r.params["i"] for r in fresh.list_runs([exp_id])] == [0, 1, 2, 3, 4]
    assert fresh.get_run(state.ids[4]).metrics == {"loss": 0.2}


@pytest.mark.parametrize("damage", ["missing", "empty", "garbage", "truncated", "flipped-body",
                                    "other-journal"])
def test_index_is_rebuilt_when_missing_or_corrupt(root: Path, damage: str) -> None:
    b = FileBackend.from_uri(str(root), durable=False)  # no fsync: the index body is checksummed
    exp_id = b.ensure_experiment("e", "default").id
    _fill(b, exp_id, 30)
    b.close()
    index = _index_path(root, exp_id)
    expected = _snapshot(FileBackend.from_uri(str(root)), exp_id)
    data = index.read_bytes()
    if damage == "missing":
        index.unlink()
    elif damage == "empty":
        index.write_bytes(b"")
    elif damage == "garbage":
        index.write_bytes(b"\x00" * len(data))
    elif damage == "truncated":
        index.write_bytes(data[: len(data) // 2])
    elif damage == "flipped-body":
        index.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    else:  # an index of another journal: the crc of the indexed journal bytes does not match
        journal = root / "experiments" / exp_id / "journal.jsonl"
        lines = journal.read_bytes().splitlines(keepends=True)
        journal.write_bytes(b"".join(lines[:10]))
    fresh = FileBackend.from_uri(str(root))
    got = _snapshot(fresh, exp_id)
    if damage == "other-journal":
        assert len(got) < len(expected) and got == expected[: len(got)]
    else:
        assert got == expected
    found = fresh.search_runs([exp_id], query.parse("params.opt = 'adam' and metrics.acc > 0.1"),
                              query.parse_order_by(["metrics.acc desc"]), None, 0)
    assert [r.params["i"] for r in found] == sorted((r[5]["i"] for r in got
                                                     if r[5]["opt"] == "adam" and r[7]["acc"] > 0.1),
                                                    reverse=True)
    # A reader that had to read the whole journal leaves a good index behind (when the tail was long
    # enough to be worth it); either way a second fresh reader agrees.
    assert _snapshot(FileBackend.from_uri(str(root)), exp_id) == got


def test_stale_index_is_brought_up_to_date_from_the_journal(root: Path) -> None:
    writer = FileBackend.from_uri(str(root))
    exp_id = writer.ensure_experiment("e", "default").id
    first = _fill(writer, exp_id, 10)
    writer.close()  # writes the index
    indexed = _index_path(root, exp_id).read_bytes()
    reader = FileBackend.from_uri(str(root))
    assert len(reader.list_runs([exp_id])) == 10  # cached in the reader now
    other = FileBackend.from_uri(str(root))  # another process: appends, and writes no index yet
    more = _fill(other, exp_id, 5, start=10)
    other.set_tags(first[0], {"parity": "changed"})
    other.log_params(first[1], {"late": True})
    other.log_metrics(first[2], [_series("acc", [0.99], start=1)])
    other.update_run(first[3], status="failed", error="boom")
    assert _index_path(root, exp_id).read_bytes() == indexed  # the index on disk is stale
    for b in (reader, FileBackend.from_uri(str(root))):  # a cached reader and a fresh one
        runs = {r.id: r for r in b.list_runs([exp_id])}
        assert len(runs) == 15 and all(i in runs for i in more)
        assert runs[first[0]].tags == {"parity": "changed"}
        assert runs[first[1]].params["late"] is True
        assert runs[first[2]].metrics == {"acc": 0.99}
        assert (runs[first[3]].status, runs[first[3]].error) == ("failed", "boom")
        found = b.search_runs([exp_id], query.parse("tags.parity = 'changed' or metrics.acc > 0.9"),
                              [], None, 0)
        assert [r.id for r in found] == [first[0], first[2]]
        assert b.search_runs([exp_id], query.parse("params.i >= 12"), [], None, 0)[0].id == more[2]


def test_torn_journal_line_is_ignored_then_cut_off(root: Path, backend: FileBackend) -> None:
    exp_id, run_id = _run(backend)
    journal = root / "experiments" / exp_id / "journal.jsonl"
    with journal.open("ab") as fh:
        fh.write(b'{"op":"tags","id":"' + run_id.encode() + b'","tags":{"x":')  # a writer died here
    fresh = FileBackend.from_uri(str(root))
    assert fresh.get_run(run_id).tags == {}
    fresh.set_tags(run_id, {"y": "1"})  # cuts the torn line off under the lock, then appends
    assert journal.read_bytes().endswith(b"\n") and b'"x":' not in journal.read_bytes()
    assert FileBackend.from_uri(str(root)).get_run(run_id).tags == {"y": "1"}
    r2 = fresh.create_run(exp_id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
    assert r2.number == 2


def test_big_integers_and_nested_params_round_trip_and_are_copies(root: Path, backend: FileBackend) -> None:
    exp_id, run_id = _run(backend)
    big, huge = 2**80 + 1, 10**400  # beyond 64 bits; beyond a double (so text to the query language)
    params = {"big": big, "huge": huge, "layers": [64, {"k": [1, 2]}]}
    backend.log_params(run_id, params)
    backend.log_results(run_id, {"neg": -(2**70)})
    got = backend.get_run(run_id)
    got.params["layers"].append("mutated")  # the caller's copy only
    got.results["neg"] = 0
    for b in (backend, FileBackend.from_uri(str(root))):
        info = b.get_run(run_id)
        assert info.params == params and info.results == {"neg": -(2**70)}
    backend.close()
    fresh = FileBackend.from_uri(str(root))
    assert fresh._state(exp_id).base is not None  # type: ignore[union-attr]  # read through the index
    assert fresh.get_run(run_id).params == params
    for flt in ("params.big > 1e24", f"params.huge = '{huge}'", "params.layers like '[64,%'"):
        found = fresh.search_runs([exp_id], query.parse(flt), [], None, 0)
        assert [r.id for r in found] == [run_id], flt


def _worker_mixed(args: tuple[str, str, int]) -> list[int]:
    root, barrier, count = args
    b, exp = _at_barrier(root, barrier)
    numbers = []
    for i in range(count):
        r = b.create_run(exp.id, name=None, parent_id=None, start_time=time.time(),
                         params={"pid": os.getpid()}, tags={})
        b.set_tags(r.id, {"i": str(i)})
        b.log_metrics(r.id, [_series("m", [float(r.number)])])
        b.update_run(r.id, status="finished", end_time=time.time())
        numbers.append(r.number)
        if i % 7 == 0:
            b.sync()  # may write the index while others append
    b.close()
    return numbers


@pytest.mark.multiprocess
def test_concurrent_writers_keep_numbers_dense_and_every_change(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    barrier = str(tmp_path / "go")
    results = run_at_once(_worker_mixed, (root, barrier, 25), 6, barrier)
    assert sorted(n for nums in results for n in nums) == list(range(1, 151))
    for attempt in ("index", "journal only"):
        b = FileBackend.from_uri(root)
        exp_id = b.list_experiments()[0].id
        if attempt == "journal only":
            _index_path(Path(root), exp_id).unlink()
        runs = b.list_runs([exp_id])
        assert [r.number for r in runs] == list(range(1, 151))
        assert all(r.status == "finished" and r.metrics == {"m": float(r.number)} and "i" in r.tags
                   for r in runs)


def test_upgrade_converts_a_version_1_store(root: Path) -> None:
    exp_id, run_ids = "e" * 32, ["a" * 32, "b" * 32]
    exp_dir = root / "experiments" / exp_id
    for number, run_id in enumerate(run_ids, 1):
        run_dir = exp_dir / "runs" / f"{number:06d}"
        (run_dir / "metrics").mkdir(parents=True)
        doc = {"id": run_id, "experiment_id": exp_id, "number": number, "name": None, "parent_id": None,
               "status": "finished", "start_time": 1.0, "end_time": 2.0, "error": None, "heartbeat": 1.5,
               "params": {"n": number}, "tags": {"t": "v"}, "results": {"r": [number]}}
        (run_dir / "run.json").write_text(json.dumps(doc))
        from labvault.store.file.segments import encode_record

        s = _series("loss", [0.5, 0.25 * number])
        (run_dir / "metrics" / "loss.seg").write_bytes(encode_record(s.steps, s.values, s.timestamps))
        (run_dir / "artifacts.jsonl").write_text(json.dumps({"key": "f.txt", "digest": "0" * 64, "size": 1,
                                                             "created_at": 1.0}) + "\n")
    (exp_dir / "experiment.json").write_text(json.dumps({"id": exp_id, "name": "old", "project": "default",
                                                         "created_at": 1.0}))
    (root / "runs").mkdir()
    (root / "labvault.json").write_text(json.dumps({"format": "labvault-file", "version": 1}))
    with pytest.raises(UnsupportedOperationError, match="upgrade"):
        FileBackend.from_uri(str(root)).list_experiments()
    assert upgrade(str(root)) == (1, FORMAT_VERSION)
    assert upgrade(str(root)) == (FORMAT_VERSION, FORMAT_VERSION)
    b = FileBackend.from_uri(str(root))
    runs = b.list_runs([exp_id])
    assert [(r.id, r.number, r.status, r.params, r.results, r.metrics) for r in runs] == [
        (run_ids[0], 1, "finished", {"n": 1}, {"r": [1]}, {"loss": 0.25}),
        (run_ids[1], 2, "finished", {"n": 2}, {"r": [2]}, {"loss": 0.5}),
    ]
    assert b.metric_history(run_ids[1], "loss").values.tolist() == [0.5, 0.5]
    assert [a.key for a in b.list_artifacts(run_ids[0])] == ["f.txt"]
    b.log_metrics(run_ids[0], [_series("loss", [0.1], start=2)])
    assert b.metric_history(run_ids[0], "loss").values.tolist() == [0.5, 0.25, 0.1]
    r3 = b.create_run(exp_id, name=None, parent_id=None, start_time=3.0, params={}, tags={})
    assert r3.number == 3


def test_manifest_cache_sees_other_writers(tmp_path: Path) -> None:
    """The artifact manifest cache parses only new lines, and sees appends made by another handle."""
    import labvault

    uri = f"file://{tmp_path / 'store'}"
    with labvault.open(uri) as a, labvault.open(uri) as b:
        run = a.experiment("e").start_run()
        run.log_artifact("x.txt", b"one")
        assert [i.key for i in run.list_artifacts()] == ["x.txt"]  # cached now
        other = b.get_run(run.id)
        other.log_artifact("y.txt", b"two")
        other.log_artifact("x.txt", b"three")  # replaces the key: the last line wins
        assert [i.key for i in run.list_artifacts()] == ["x.txt", "y.txt"]
        assert run.get_artifact("x.txt") == b"three"
        run.end()


# -- vectorised search == the query module's definition --
_PARAM_VALUES = st.one_of(
    st.integers(-3, 3), st.sampled_from([0.5, -1.5, 2.0, 1e-3, 2**70, 10**400]),
    st.sampled_from(["a", "b", "ab", "B", "a_b", "é"]), st.booleans(), st.none(), st.just([1, 2]),
    st.just({"b": 1, "a": [2]}),
)
_KEYS = ["k1", "k2", "k3"]
_RUN = st.fixed_dictionaries({
    "params": st.dictionaries(st.sampled_from(_KEYS), _PARAM_VALUES, max_size=3),
    "tags": st.dictionaries(st.sampled_from(_KEYS), st.sampled_from(["x", "y", "xy", "X", "1", "2.5"]),
                            max_size=3),
    "metrics": st.dictionaries(st.sampled_from(_KEYS),
                               st.sampled_from([0.0, 0.25, -2.0, math.nan, math.inf, -math.inf]), max_size=3),
    "name": st.sampled_from(["r-a", "r-b", None]),
    "exp": st.sampled_from(["e1", "e2"]),
    "end": st.booleans(),
})
_FIELDS = st.sampled_from(
    [f"params.{k}" for k in _KEYS] + [f"tags.{k}" for k in _KEYS] + [f"metrics.{k}" for k in _KEYS]
    + ["number", "name", "status", "end_time", "parent_id", "id", "params.nope"]
)
_LITERALS = st.sampled_from(["0", "1", "-1", "0.5", "2", "-2", "1e300", "1e21", "'a'", "'b'", "'x'", "'1'",
                             "'true'", "'[1,2]'", "'r-a'", "'finished'", "'X'", "'é'",
                             "'{\"a\":[2],\"b\":1}'"])
# a time attribute takes numbers and ISO dates only (any other quoted text is a parse error, tested in
# test_query); the runs end at i + 0.5 seconds after the epoch, so these straddle them
_TIME_LITERALS = st.sampled_from(["0", "1", "2.5", "-1", "1e300", "'1970-01-01'", "'1970-01-01T00:00:01'",
                                  "'1970-01-01T00:00:03.5+00:00'"])


def _literals(field: str) -> st.SearchStrategy[str]:
    return _TIME_LITERALS if field.endswith("_time") else _LITERALS


_PATTERNS = st.sampled_from(["'a%'", "'%b'", "'_'", "'x%'", "'%'", "'r-_'", "'A%'", "'[%'"])
_FILTERS = filters_of(predicates(_FIELDS, _literals, _PATTERNS))
_ORDERS = orders_of(_FIELDS)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(_RUN, min_size=1, max_size=10), filters=st.lists(_FILTERS, min_size=1, max_size=4),
       orders=st.lists(_ORDERS, min_size=1, max_size=2), split=st.integers(0, 10),
       page=st.tuples(st.integers(0, 3), st.one_of(st.none(), st.integers(0, 4))))
def test_vectorised_search_matches_the_query_module(
    tmp_path_factory: pytest.TempPathFactory, runs: list[dict[str, Any]], filters: list[str],
    orders: list[list[str]], split: int, page: tuple[int, int | None],
) -> None:
    root = tmp_path_factory.mktemp("vec") / "store"
    b = FileBackend.from_uri(str(root))
    exps = {name: b.ensure_experiment(name, "default").id for name in ("e1", "e2")}
    ids = []
    for i, spec in enumerate(runs):
        if i == split:  # the runs so far go into the index; the later ones and changes are journal only
            b.close()
            b = FileBackend.from_uri(str(root))
            b.list_runs(list(exps.values()))
        parent = ids[-1] if ids and i % 4 == 3 else None
        r = b.create_run(exps[spec["exp"]], name=spec["name"], parent_id=parent, start_time=float(i),
                         params=spec["params"], tags=spec["tags"])
        ids.append(r.id)
        if spec["metrics"]:
            b.log_metrics(r.id, [_series(k, [v]) for k, v in spec["metrics"].items()])
        if spec["end"]:
            b.update_run(r.id, status="finished", end_time=float(i) + 0.5)
    if len(ids) > 2:  # change a run the index already holds
        b.set_tags(ids[0], {"k1": "xy"})
        b.log_metrics(ids[1], [_series("k2", [0.25], start=5)])
    offset, limit = page
    for backend in (b, FileBackend.from_uri(str(root))):
        for exp_ids in ([exps["e1"]], [exps["e1"], exps["e2"]]):
            everything = backend.list_runs(exp_ids)
            for flt in filters:
                expr = query.parse(flt)
                for order_by in orders:
                    order = query.parse_order_by(order_by)
                    expected = query.sort_runs(query.filter_runs(expr, everything), order)
                    expected = expected[offset:None if limit is None else offset + limit]
                    got = backend.search_runs(exp_ids, expr, order, limit, offset)
                    assert [r.id for r in got] == [r.id for r in expected], (flt, order_by)
                    assert repr(got) == repr(expected)  # (repr: NaN metrics compare equal)


def test_search_of_unknown_experiments_is_empty(backend: FileBackend) -> None:
    """As on every other backend (it raised ValueError from numpy before the file backend used the
    shared search driver, which handles no experiments at all)."""
    exp_id, _run_id = _run(backend)
    unknown = "0" * 32
    for ids in ([unknown], [], [unknown, unknown]):
        assert backend.search_runs(ids, query.parse("params.x = 1"), query.parse_order_by(["metrics.m"]),
                                   None, 0) == []
    assert len(backend.search_runs([unknown, exp_id], query.parse("status = 'running'"), [], None, 0)) == 1


def test_os_error_message_names_the_store_and_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    b = FileBackend.from_uri(str(blocker / "store"))
    with pytest.raises(BackendUnavailableError) as info:
        b.ensure_experiment("e", "default")
    assert str(info.value).startswith(f"file store {str(blocker / 'store')!r}: cannot access ")
    assert isinstance(info.value.__cause__, OSError)
