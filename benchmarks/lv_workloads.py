"""labvault's side of the benchmark workloads: one measurement per process, one JSON result line.

Run by the driver as ``<.venv python> benchmarks/lv_workloads.py W3 --store sqlite --tmp DIR --config JSON``.
Stores are built by the factories in ``BACKENDS`` (a name -> URI-for-a-directory map; later backends such as
PostgreSQL or Redis add a factory here). Timed sections use ``time.perf_counter`` and include the final
flush / ``vault.close()`` wherever the workload's figure depends on data reaching the store.

W7 (import cost) runs ``import labvault`` in a child interpreter that imports nothing else first.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BackendSpec:
    """How to make a fresh labvault store in an empty directory."""

    uri: Callable[[Path], str]
    #: False for stores that live inside one process (``memory://``): nothing can be built once and reused.
    persistent: bool = True


BACKENDS: dict[str, BackendSpec] = {
    "file": BackendSpec(lambda tmp: f"file://{tmp.resolve()}/store"),
    "sqlite": BackendSpec(lambda tmp: f"sqlite:///{tmp.resolve()}/store.db"),
    # Server-backed stores: a database / key prefix per store directory, dropped by the driver at the end.
    "postgresql": BackendSpec(lambda tmp: f"postgresql://{_bc().pg_database('lv', tmp)}"),
    "redis": BackendSpec(lambda tmp: f"redis://{_bc().REDIS_SERVER}?prefix={_bc().store_name('lv', tmp)}:"),
    # Through the server: ``labvault server`` on loopback over a store of its own (see ``http_server``).
    "http": BackendSpec(lambda tmp: http_server(tmp)),
    # For developing the harness only: a process-local store, no I/O at all.
    "memory": BackendSpec(lambda tmp: "memory://bench", persistent=False),
}


def _bc() -> Any:
    import _benchcommon

    return _benchcommon


_HTTP_SERVERS: dict[Path, str] = {}


def http_server(tmp: Path) -> str:
    """The URL of a ``labvault server`` serving a store in ``tmp`` (started once per directory and process).

    The server runs as a subprocess on a free loopback port with one user and token (an admin, in
    ``$LABVAULT_TOKEN`` for this process and its children); it stops when this process exits, also when
    killed (``PR_SET_PDEATHSIG``). Its store is ``$LABVAULT_BENCH_HTTP_STORE``: ``sqlite`` (default),
    ``file`` or ``postgresql``; ``$LABVAULT_BENCH_HTTP_WORKERS`` uvicorn workers (default 1).
    """
    import atexit
    import os

    where = tmp.resolve()
    if where in _HTTP_SERVERS:
        return _HTTP_SERVERS[where]
    from load import Server  # benchmarks/load.py, the load test's server launcher

    from labvault.server.auth import AuthStore

    kind = os.environ.get("LABVAULT_BENCH_HTTP_STORE", "sqlite")
    inner = {"sqlite": lambda: f"sqlite:///{where}/store.db", "file": lambda: f"file://{where}/store",
             "postgresql": lambda: f"postgresql://{_bc().pg_database('lvhttp', where)}"}[kind]()
    auth_db = where / "http-auth.db"
    auth = AuthStore(auth_db)
    if not auth.has_users():
        auth.add_user("bench", "admin")
    _, token = auth.create_token("bench", "benchmark")
    auth.close()
    os.environ["LABVAULT_TOKEN"] = token
    server = Server(inner, auth_db, int(os.environ.get("LABVAULT_BENCH_HTTP_WORKERS", "1")),
                    where / f"http-server-{os.getpid()}.log")
    atexit.register(server.stop)
    server.wait_healthy()
    _HTTP_SERVERS[where] = server.url
    return server.url


def w7_import(spec: BackendSpec, tmp: Path) -> dict[str, Any]:
    """``import labvault`` in a fresh interpreter that imports nothing else first: seconds and RSS after.

    Then, timed apart, its first use: open a new store, one run with one metric, close (lazy imports load
    there).
    """
    from _benchcommon import import_probe

    first_use = (f"v = labvault.open({spec.uri(tmp)!r}); r = v.experiment('bench').start_run(); "
                 "r.log_metric('loss', 0.5); r.end(); v.close()")
    return import_probe(sys.executable, "labvault", first_use)


def main(argv: list[str]) -> None:
    import json

    from _benchcommon import emit, parse_args

    args = parse_args(argv)
    if args.workload == "W7":
        emit(w7_import(BACKENDS[args.store], args.tmp))
        return
    spec = BACKENDS[args.store]
    config: dict[str, Any] = json.loads(args.config)
    fn = WORKLOADS[args.workload]
    result = fn(spec, args.tmp, args.cache, config)
    result["workload"] = args.workload
    result["store"] = args.store
    emit(result)


# -- workloads -----------------------------------------------------------------------------------------------
def w1_create_runs(spec: BackendSpec, tmp: Path, cache: Path | None, cfg: dict[str, Any]) -> dict[str, Any]:
    from _benchcommon import run_params, run_tags

    import labvault

    n = int(cfg["n"])
    params = [run_params(i) for i in range(n)]
    tags = [run_tags(i) for i in range(n)]
    vault = labvault.open(spec.uri(tmp))
    exp = vault.experiment("bench")
    t0 = time.perf_counter()
    for i in range(n):
        run = exp.start_run(params=params[i], tags=tags[i])
        run.end()
    vault.close()
    seconds = time.perf_counter() - t0
    return {"n": n, "seconds": seconds, "rate": n / seconds}


def w2_log_metric(spec: BackendSpec, tmp: Path, cache: Path | None, cfg: dict[str, Any]) -> dict[str, Any]:
    from _benchcommon import metric_value

    import labvault

    n = int(cfg["n"])
    values = [metric_value(i) for i in range(n)]
    vault = labvault.open(spec.uri(tmp))
    run = vault.experiment("bench").start_run()
    log = run.log_metric
    t0 = time.perf_counter()
    for i, value in enumerate(values):
        log("loss", value, i)
    t_calls = time.perf_counter() - t0
    run.end()
    vault.close()
    seconds = time.perf_counter() - t0
    return {"n": n, "seconds": seconds, "rate": n / seconds, "calls_seconds": t_calls}


def w3_log_batches(spec: BackendSpec, tmp: Path, cache: Path | None, cfg: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from _benchcommon import metric_value, peak_rss_mb, rss_mb

    import labvault

    n, batch, n_keys = int(cfg["n"]), int(cfg["batch"]), int(cfg["keys"])
    per_key = n // n_keys
    vault = labvault.open(spec.uri(tmp))
    run = vault.experiment("bench").start_run()
    values = np.array([metric_value(i) for i in range(per_key)], dtype=np.float64)
    steps = np.arange(per_key, dtype=np.int64)
    keys = [f"metric_{k}" for k in range(n_keys)]
    base = rss_mb()
    t0 = time.perf_counter()
    for start in range(0, per_key, batch):
        vals, sts = values[start:start + batch], steps[start:start + batch]
        for key in keys:
            run.log_metric_series(key, vals, sts)
    run.end()
    vault.close()
    seconds = time.perf_counter() - t0
    total = per_key * n_keys
    return {"n": total, "seconds": seconds, "rate": total / seconds, "rss_base_mb": base,
            "peak_over_base_mb": peak_rss_mb() - base}


def w4_read_history(spec: BackendSpec, tmp: Path, cache: Path | None, cfg: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from _benchcommon import metric_value

    import labvault

    n, batch = int(cfg["n"]), int(cfg["batch"])
    uri = spec.uri(tmp)
    values = np.array([metric_value(i) for i in range(n)], dtype=np.float64)
    steps = np.arange(n, dtype=np.int64)
    vault = labvault.open(uri)
    run = vault.experiment("bench").start_run()
    for start in range(0, n, batch):
        run.log_metric_series("loss", values[start:start + batch], steps[start:start + batch])
    run.end()
    run_id = run.id
    if spec.persistent:
        vault.close()
        vault = labvault.open(uri)
    reader = vault.get_run(run_id)
    t0 = time.perf_counter()
    hist = reader.metric_history("loss")
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    reader.metric_history("loss")
    second_read = time.perf_counter() - t1
    if len(hist) != n or not np.array_equal(hist.values, values):
        raise SystemExit(f"W4: read back {len(hist)} points, expected {n} identical values")
    vault.close()
    return {"n": n, "seconds": seconds, "rate": n / seconds, "second_read_seconds": second_read}


def w5_search(spec: BackendSpec, tmp: Path, cache: Path | None, cfg: dict[str, Any]) -> dict[str, Any]:
    import statistics

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

    import labvault

    n, queries = int(cfg["n"]), int(cfg["queries"])
    where = cache if (cache is not None and spec.persistent) else tmp
    uri = spec.uri(where)
    build_seconds = None
    if not is_ready(where):
        t0 = time.perf_counter()
        vault = labvault.open(uri)
        exp = vault.experiment("bench")
        for i in range(n):
            run = exp.start_run(params=run_params(i), tags=run_tags(i))
            run.log_metrics(run_metrics(i))
            run.end()
        if spec.persistent:
            vault.close()
            mark_ready(where)
        build_seconds = time.perf_counter() - t0
    vault = labvault.open(uri)
    expected = expected_matches(n)
    search_times, list_times = [], []
    matched = listed = 0
    for _ in range(queries):
        t0 = time.perf_counter()
        found = vault.search_runs("bench", filter=SEARCH_FILTER, order_by=[SEARCH_ORDER])
        search_times.append(time.perf_counter() - t0)
        matched = len(found)
        t0 = time.perf_counter()
        frame = vault.search_runs("bench").to_frame()
        list_times.append(time.perf_counter() - t0)
        listed = len(frame)
    vault.close()
    if matched != expected or listed != n:
        raise SystemExit(f"W5: matched {matched} (expected {expected}), listed {listed} (expected {n})")
    return {"n": n, "matched": matched, "search_seconds": statistics.median(search_times),
            "search_first_seconds": search_times[0], "list_seconds": statistics.median(list_times),
            "list_first_seconds": list_times[0], "build_seconds": build_seconds}


def w6_artifacts(spec: BackendSpec, tmp: Path, cache: Path | None, cfg: dict[str, Any]) -> dict[str, Any]:
    import hashlib
    import os
    import shutil

    from _benchcommon import artifact_payload, peak_rss_mb, rss_mb, settle

    import labvault

    src = Path(cfg["big_src"])
    size = src.stat().st_size
    n_small, small_size = int(cfg["n_small"]), int(cfg["small_size"])
    payloads = [artifact_payload(i, small_size) for i in range(n_small)]
    out: dict[str, Any] = {"big_bytes": size, "n_small": n_small}
    vault = labvault.open(spec.uri(tmp))
    run = vault.experiment("bench").start_run()
    base = rss_mb()

    # raw baseline, right next to the measurement: shutil.copyfile of the same bytes, plain file writes
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
    os.unlink(raw / "down.bin")
    settle()
    t0 = time.perf_counter()
    shutil.copyfile(src, raw / "durable.bin")
    with open(raw / "durable.bin", "rb+") as fh:
        os.fsync(fh.fileno())
    out["raw_up_fsync_seconds"] = time.perf_counter() - t0
    os.unlink(raw / "durable.bin")
    # what any content-addressed store pays at least: the same copy in 1 MiB chunks, hashed with sha256
    settle()
    t0 = time.perf_counter()
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(raw / "hashed.bin", "wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
    out["raw_hashed_copy_seconds"] = time.perf_counter() - t0
    settle()
    t0 = time.perf_counter()
    with open(src, "rb") as fin:
        hashlib.file_digest(fin, "sha256")
    out["raw_sha256_seconds"] = time.perf_counter() - t0
    shutil.rmtree(raw)
    raw.mkdir()
    settle()
    t0 = time.perf_counter()
    for i, data in enumerate(payloads):
        with open(raw / f"{i:06d}.bin", "wb") as fh:
            fh.write(data)
    out["raw_small_up_seconds"] = time.perf_counter() - t0
    settle()
    t0 = time.perf_counter()
    for i in range(n_small):
        with open(raw / f"{i:06d}.bin", "rb") as fh:
            fh.read()
    out["raw_small_down_seconds"] = time.perf_counter() - t0
    shutil.rmtree(raw)

    settle()
    t0 = time.perf_counter()
    run.log_artifact("big.bin", src)
    out["up_seconds"] = time.perf_counter() - t0
    dest = tmp / "download.bin"
    settle()
    t0 = time.perf_counter()
    run.download_artifact("big.bin", dest)  # to a file, digest-verified, like MLflow's download_artifacts
    out["down_seconds"] = time.perf_counter() - t0
    if dest.stat().st_size != size:
        raise SystemExit(f"W6: downloaded {dest.stat().st_size} bytes, expected {size}")
    os.unlink(dest)

    settle()
    t0 = time.perf_counter()
    for i, data in enumerate(payloads):
        run.log_artifact(f"small/{i:06d}.bin", data)
    run.flush()  # small artifacts are buffered like metric points: the clock includes writing them
    vault.backend.sync()  # and making them durable (the group commit the background flusher runs)
    out["small_up_seconds"] = time.perf_counter() - t0
    settle()
    t0 = time.perf_counter()
    for i in range(n_small):
        run.get_artifact(f"small/{i:06d}.bin")
    out["small_down_seconds"] = time.perf_counter() - t0
    run.end()
    vault.close()
    out["rss_base_mb"] = base
    out["peak_over_base_mb"] = peak_rss_mb() - base
    return out


WORKLOADS: dict[str, Callable[[BackendSpec, Path, Path | None, dict[str, Any]], dict[str, Any]]] = {
    "W1": w1_create_runs,
    "W2": w2_log_metric,
    "W3": w3_log_batches,
    "W4": w4_read_history,
    "W5": w5_search,
    "W6": w6_artifacts,
}

if __name__ == "__main__":
    main(sys.argv[1:])
