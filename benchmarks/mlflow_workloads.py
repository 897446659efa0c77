"""MLflow's side of the benchmark workloads: one measurement per process, one JSON result line.

Run by the driver in MLflow's own virtualenv (``.bench/mlflow-venv``):
``<mlflow python> benchmarks/mlflow_workloads.py W3 --store sqlite --tmp DIR --config JSON``.
Stores: ``sqlite`` (MLflow's default tracking store, ``sqlite:///DIR/mlflow.db``) and ``file``
(``file://DIR/mlruns``, which needs ``MLFLOW_ALLOW_FILE_STORE=true``); artifacts go to ``DIR/artifacts``.
Each workload uses MLflow's fastest public client call for the job (``MlflowClient.log_batch`` where it
exists). Payload objects (``Param``/``RunTag``/``Metric``) are built before the clock starts.

This file imports nothing from labvault (it runs where labvault is not installed).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

STORES: dict[str, Callable[[Path], str]] = {
    "sqlite": lambda tmp: f"sqlite:///{tmp.resolve()}/mlflow.db",
    "file": lambda tmp: f"file://{tmp.resolve()}/mlruns",
    # MLflow on the same PostgreSQL server as labvault's postgresql backend (psycopg 3 in MLflow's venv).
    "postgresql": lambda tmp: f"postgresql://{_pg_database(tmp)}",
}


def _pg_database(tmp: Path) -> str:
    from _benchcommon import pg_database

    return pg_database("ml", tmp)


def _open(store: str, tmp: Path, experiment: str = "bench") -> tuple[Any, str, str]:
    """(client, experiment id, tracking uri) for a store in ``tmp``; creates the experiment if needed."""
    import mlflow
    from mlflow import MlflowClient

    uri = STORES[store](tmp)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return client, found.experiment_id, uri
    exp_id = client.create_experiment(experiment, artifact_location=(tmp.resolve() / "artifacts").as_uri())
    return client, exp_id, uri


def main(argv: list[str]) -> None:
    import json

    from _benchcommon import emit, import_probe, parse_args

    args = parse_args(argv)
    if args.workload == "W7":
        first_use = (f"c = mlflow.MlflowClient({STORES[args.store](args.tmp)!r}); "
                     f"e = c.create_experiment('bench', artifact_location={(args.tmp / 'a').as_uri()!r}); "
                     "r = c.create_run(e).info.run_id; c.log_metric(r, 'loss', 0.5); c.set_terminated(r)")
        emit(import_probe(sys.executable, "mlflow", first_use))
        return
    config: dict[str, Any] = json.loads(args.config)
    result = WORKLOADS[args.workload](args.store, args.tmp, args.cache, config)
    result["workload"] = args.workload
    result["store"] = args.store
    emit(result)


# -- workloads -----------------------------------------------------------------------------------------------
def w1_create_runs(store: str, tmp: Path, cache: Path | None, cfg: dict[str, Any]) -> dict[str, Any]:
    from _benchcommon import run_params, run_tags
    from mlflow.entities import Param, RunTag

    n = int(cfg["n"])
    client, exp_id, _ = _open(store, tmp)
    params = [[Param(k, str(v)) for k, v in run_params(i).items()] for i in range(n)]
    tags = [[RunTag(k, v) for k, v in run_tags(i).items()] for i in range(n)]
    t0 = time.perf_counter()
    for i in range(n):
        run_id = client.create_run(exp_id).info.run_id
        client.log_batch(run_id, params=params[i], tags=tags[i])
        client.set_terminated(run_id)
    seconds = time.perf_counter() - t0
    return {"n": n, "seconds": seconds, "rate": n / seconds}


def w2_log_metric(store: str, tmp: Path, cache: Path | None, cfg: dict[str, Any]) -> dict[str, Any]:
    from _benchcommon import metric_value

    n = int(cfg["n"])
    client, exp_id, _ = _open(store, tmp)
    run_id = client.create_run(exp_id).info.run_id
    values = [metric_value(i) for i in range(n)]
    log = client.log_metric
    t0 = time.perf_counter()
    for i, value in enumerate(values):
        log(run_id, "loss", value, step=i)
    seconds = time.perf_counter() - t0
    client.set_terminated(run_id)
    return {"n": n, "seconds": seconds, "rate": n / seconds}


def w3_log_batches(store: str, tmp: Path, cache: Path | None, cfg: dict[str, Any]) -> dict[str, Any]:
    from _benchcommon import metric_value, peak_rss_mb, rss_mb
    from mlflow.entities import Metric

    n, batch, n_keys = int(cfg["n"]), int(cfg["batch"]), int(cfg["keys"])
    per_key = n // n_keys
    client, exp_id, _ = _open(store, tmp)
    run_id = client.create_run(exp_id).info.run_id
    ts = int(time.time() * 1000)
    batches = [
        [Metric(f"metric_{k}", metric_value(i), ts, i) for i in range(start, min(start + batch, per_key))]
        for start in range(0, per_key, batch)
        for k in range(n_keys)
    ]
    base = rss_mb()
    t0 = time.perf_counter()
    for metrics in batches:
        client.log_batch(run_id, metrics=metrics)
    seconds = time.perf_counter() - t0
    client.set_terminated(run_id)
    total = per_key * n_keys
    return {"n": total, "seconds": seconds, "rate": total / seconds, "rss_base_mb": base,
            "peak_over_base_mb": peak_rss_mb() - base}


def w4_read_history(store: str, tmp: Path, cache: Path | None, cfg: dict[str, Any]) -> dict[str, Any]:
    from _benchcommon import metric_value
    from mlflow.entities import Metric

    n, batch = int(cfg["n"]), int(cfg["batch"])
    client, exp_id, _ = _open(store, tmp)
    run_id = client.create_run(exp_id).info.run_id
    ts = int(time.time() * 1000)
    for start in range(0, n, batch):
        client.log_batch(run_id, metrics=[Metric("loss", metric_value(i), ts, i)
                                          for i in range(start, min(start + batch, n))])
    client.set_terminated(run_id)
    client, _, _ = _open(store, tmp)
    t0 = time.perf_counter()
    hist = client.get_metric_history(run_id, "loss")
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    client.get_metric_history(run_id, "loss")
    second_read = time.perf_counter() - t1
    if len(hist) != n:
        raise SystemExit(f"W4: read back {len(hist)} points, expected {n}")
    return {"n": n, "seconds": seconds, "rate": n / seconds, "second_read_seconds": second_read}


def w5_search(store: str, tmp: Path, cache: Path | None, cfg: dict[str, Any]) -> dict[str, Any]:
    import statistics

    import mlflow
    from _benchcommon import (
        SEARCH_FILTER,
        SEARCH_ORDER,
        expected_matches,
        is_ready,
        mark_ready,
        run_metrics,
        run_params,
        run_tags,
    )
    from mlflow.entities import Metric, Param, RunTag

    n, queries = int(cfg["n"]), int(cfg["queries"])
    where = cache if cache is not None else tmp
    build_seconds = None
    if not is_ready(where):
        t0 = time.perf_counter()
        client, exp_id, _ = _open(store, where)
        for i in range(n):
            run_id = client.create_run(exp_id).info.run_id
            ts = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric(k, v, ts, 0) for k, v in run_metrics(i).items()],
                params=[Param(k, str(v)) for k, v in run_params(i).items()],
                tags=[RunTag(k, v) for k, v in run_tags(i).items()],
            )
            client.set_terminated(run_id)
        mark_ready(where)
        build_seconds = time.perf_counter() - t0
    client, exp_id, _ = _open(store, where)
    expected = expected_matches(n)
    search_times, list_times = [], []
    matched = listed = 0
    for _ in range(queries):
        t0 = time.perf_counter()
        found = client.search_runs([exp_id], filter_string=SEARCH_FILTER, order_by=[SEARCH_ORDER],
                                   max_results=50_000)
        search_times.append(time.perf_counter() - t0)
        matched = len(found)
        t0 = time.perf_counter()
        frame = mlflow.search_runs(experiment_ids=[exp_id])
        list_times.append(time.perf_counter() - t0)
        listed = len(frame)
    if matched != expected or listed != n:
        raise SystemExit(f"W5: matched {matched} (expected {expected}), listed {listed} (expected {n})")
    return {"n": n, "matched": matched, "search_seconds": statistics.median(search_times),
            "search_first_seconds": search_times[0], "list_seconds": statistics.median(list_times),
            "list_first_seconds": list_times[0], "build_seconds": build_seconds}


def w6_artifacts(store: str, tmp: Path, cache: Path | None, cfg: dict[str, Any]) -> dict[str, Any]:
    import shutil

    from _benchcommon import artifact_payload, peak_rss_mb, rss_mb, settle

    src = Path(cfg["big_src"])
    size = src.stat().st_size
    n_small, small_size = int(cfg["n_small"]), int(cfg["small_size"])
    out: dict[str, Any] = {"big_bytes": size, "n_small": n_small}
    client, exp_id, _ = _open(store, tmp)
    run_id = client.create_run(exp_id).info.run_id
    # MLflow logs files by path: write the small files before the clock starts (not counted against it)
    small_dir = tmp / "small-src"
    small_dir.mkdir()
    small_paths = []
    for i in range(n_small):
        path = small_dir / f"{i:06d}.bin"
        path.write_bytes(artifact_payload(i, small_size))
        small_paths.append(str(path))
    base = rss_mb()

    raw = tmp / "raw"
    raw.mkdir()
    settle()
    t0 = time.perf_counter()
    shutil.copyfile(src, raw / "up.bin")
    out["raw_up_seconds"] = time.perf_counter() - t0
    settle()
    t0 = time.perf_counter()
    shutil.copyfile(raw / "up.bin", raw / "down.bin")
    out["raw_down_seconds"] = time.perf_counter() - t0
    shutil.rmtree(raw)

    settle()
    t0 = time.perf_counter()
    client.log_artifact(run_id, str(src))
    out["up_seconds"] = time.perf_counter() - t0
    dest = tmp / "download"
    dest.mkdir()
    settle()
    t0 = time.perf_counter()
    local = client.download_artifacts(run_id, src.name, str(dest))
    out["down_seconds"] = time.perf_counter() - t0
    if Path(local).stat().st_size != size:
        raise SystemExit(f"W6: downloaded {Path(local).stat().st_size} bytes, expected {size}")
    shutil.rmtree(dest)

    settle()
    t0 = time.perf_counter()
    for path in small_paths:
        client.log_artifact(run_id, path, "small")
    out["small_up_seconds"] = time.perf_counter() - t0
    dest.mkdir()
    # one call for the whole folder: much faster than download_artifacts per file (~150-350 files/s)
    settle()
    t0 = time.perf_counter()
    local = client.download_artifacts(run_id, "small", str(dest))
    out["small_down_seconds"] = time.perf_counter() - t0
    if len(os.listdir(local)) != n_small:
        raise SystemExit(f"W6: downloaded {len(os.listdir(local))} small files, expected {n_small}")
    client.set_terminated(run_id)
    out["rss_base_mb"] = base
    out["peak_over_base_mb"] = peak_rss_mb() - base
    return out


WORKLOADS: dict[str, Callable[[str, Path, Path | None, dict[str, Any]], dict[str, Any]]] = {
    "W1": w1_create_runs,
    "W2": w2_log_metric,
    "W3": w3_log_batches,
    "W4": w4_read_history,
    "W5": w5_search,
    "W6": w6_artifacts,
}

if __name__ == "__main__":
    main(sys.argv[1:])
