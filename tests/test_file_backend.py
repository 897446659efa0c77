"""File-backend specifics: on-disk layout, torn tails, corruption, process races, options, big histories."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

import labvault
from labvault.backends.file import FORMAT_VERSION, FileBackend, seg_name
from labvault.domain import ArtifactInfo, MetricSeries
from labvault.errors import (
    BackendUnavailableError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    NotFoundError,
    UnsupportedOperationError,
)


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


def _seg_path(root: Path, exp_id: str, run_id: str, key: str) -> Path:
    return root / "runs" / run_id / "metrics" / seg_name(key)


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
    run_dir = root / "experiments" / exp.id / "runs" / "000001"
    assert (root / "runs" / run.id).resolve() == run_dir.resolve()
    doc = json.loads((run_dir / "run.json").read_text())
    assert doc["id"] == run.id and doc["number"] == 1 and doc["name"] == "r1" and doc["status"] == "running"
    assert doc["params"] == {"lr": 0.1} and doc["tags"] == {"t": "v"} and doc["results"] == {"score": [1, 2]}
    latest = json.loads((run_dir / "metrics" / "latest.json").read_text())
    assert latest["loss"]["value"] == 0.25 and latest["loss"]["step"] == 1
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
    assert not (root / "runs" / run_id).exists() and os.listdir(root / "trash") == []


def test_metric_keys_with_slash_colon_space(root: Path, backend: FileBackend) -> None:
    _exp, run_id = _run(backend)
    keys = ["val/loss", "a:b", "with space", "deep/a b:c/d", "x" * 100 + "/" * 0 + "/y" * 60]
    backend.log_metrics(run_id, [_series(k, [float(i), float(i) + 0.5]) for i, k in enumerate(keys)])
    info = backend.get_run(run_id)
    assert info.metrics == {k: i + 0.5 for i, k in enumerate(keys)}
    for i, k in enumerate(keys):
        assert backend.metric_history(run_id, k).values.tolist() == [float(i), float(i) + 0.5]
    names = os.listdir(backend._run_dir(run_id) / "metrics")
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
    run_json = root / "experiments" / exp_id / "runs" / "000001" / "run.json"
    run_json.write_text("{not json")
    with pytest.raises(CorruptDataError, match=r"run\.json"):
        backend.get_run(run_id)
    with pytest.raises(CorruptDataError, match=r"run\.json"):
        backend.list_runs([exp_id])
    (root / "experiments" / exp_id / "experiment.json").write_text("[")
    with pytest.raises(CorruptDataError, match=r"experiment\.json"):
        FileBackend.from_uri(str(root)).list_experiments()


def test_corrupt_manifest_and_torn_manifest_line(root: Path, backend: FileBackend) -> None:
    exp_id, run_id = _run(backend)
    backend.add_artifact(run_id, ArtifactInfo("a.txt", 1, "1" * 64, 1.0))
    manifest = root / "experiments" / exp_id / "runs" / "000001" / "artifacts.jsonl"
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
    runs = root / "experiments" / exp_id / "runs"
    runs.chmod(0o500)
    try:
        with pytest.raises(BackendUnavailableError, match="runs"):
            backend.create_run(exp_id, name=None, parent_id=None, start_time=1.0, params={}, tags={})
    finally:
        runs.chmod(0o700)


def test_os_error_is_backend_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    b = FileBackend.from_uri(str(blocker / "store"))
    with pytest.raises(BackendUnavailableError, match="store"):
        b.ensure_experiment("e", "default")


# -- processes --
def _race_worker(args: tuple[str, str, int]) -> list[int]:
    root, barrier, count = args
    deadline = time.time() + 30
    while not os.path.exists(barrier) and time.time() < deadline:
        time.sleep(0.002)
    b = FileBackend.from_uri(root)
    exp = b.ensure_experiment("race", "default")
    return [b.create_run(exp.id, name=None, parent_id=None, start_time=time.time(), params={"i": i},
                         tags={}).number for i in range(count)]


def test_eight_processes_start_runs_at_once(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    barrier = str(tmp_path / "go")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        pending = pool.map_async(_race_worker, [(root, barrier, 10)] * 8)
        time.sleep(1.0)
        Path(barrier).touch()
        results = pending.get(timeout=120)
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


def test_lost_or_corrupt_latest_json_is_rebuilt_from_segments(root: Path, backend: FileBackend) -> None:
    _exp, run_id = _run(backend)
    long_key = "k" * 60 + "/a b" * 40  # quotes to more than 200 characters: a hashed file name + sidecar
    backend.log_metrics(run_id, [_series("m/x", [1.0, 2.0]), _series(long_key, [5.0])])
    backend.log_metrics(run_id, [_series("m/x", [3.0], start=2)])
    latest = backend._run_dir(run_id) / "metrics" / "latest.json"
    for damage in ("", "{torn", None):
        if damage is None:
            latest.unlink()
        else:
            latest.write_text(damage)
        assert backend.get_run(run_id).metrics == {"m/x": 3.0, long_key: 5.0}
    backend.log_metrics(run_id, [_series("m/x", [4.0], start=3)])
    assert backend.get_run(run_id).metrics == {"m/x": 4.0, long_key: 5.0}
    assert backend.metric_history(run_id, "m/x").values.tolist() == [1.0, 2.0, 3.0, 4.0]


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
