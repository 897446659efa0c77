"""Functions run in child processes by the conformance suite (importable, so ``spawn`` can find them)."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time

import labvault


def start_runs(uri: str, experiment: str, count: int, barrier_path: str) -> list[int]:
    """Wait for the barrier file, then start and finish ``count`` runs; return their numbers."""
    deadline = time.time() + 30
    while barrier_path and not os.path.exists(barrier_path) and time.time() < deadline:
        time.sleep(0.005)
    numbers = []
    with labvault.open(uri) as vault:
        exp = vault.experiment(experiment)
        for i in range(count):
            with exp.start_run(params={"pid": os.getpid(), "i": i}) as run:
                numbers.append(run.number)
    return numbers


def create_models(uri: str, count: int, barrier_path: str) -> list[int]:
    """Wait for the barrier file, then create ``count`` models; return their instance ids."""
    deadline = time.time() + 30
    while barrier_path and not os.path.exists(barrier_path) and time.time() < deadline:
        time.sleep(0.005)
    with labvault.open(uri) as vault:
        return [vault.create_model(None, {"pid": os.getpid(), "i": i}).instance_id for i in range(count)]


def _print_result(value: object) -> None:
    print(json.dumps(value), flush=True)


def kill_target(uri: str, experiment: str, flush_interval: float) -> None:
    """Log one metric point every millisecond forever, reporting progress on stdout; never returns."""
    vault = labvault.open(uri, flush_interval=flush_interval)
    run = vault.experiment(experiment).start_run(name="victim")
    print(json.dumps({"run_id": run.id}), flush=True)
    i = 0
    while True:
        run.log_metric("x", float(i), step=i)
        if i % 50 == 0:
            print(json.dumps({"logged": i}), flush=True)
        i += 1
        time.sleep(0.001)


def big_artifact_roundtrip(uri: str, path: str, size: int) -> None:
    """Log a large artifact from a path and read it back streamed; print peak RSS growth in MB."""
    with labvault.open(uri) as vault:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with vault.experiment("big").start_run() as run:
            info = run.log_artifact("data/big.bin", path)
        sha = hashlib.sha256()
        with run.open_artifact("data/big.bin") as fh:
            while chunk := fh.read(1 << 20):
                sha.update(chunk)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"digest": sha.hexdigest(), "logged": info.digest, "size": info.size,
                      "growth_mb": peak - base}))


if __name__ == "__main__":
    func = globals()[sys.argv[1]]
    result = func(*json.loads(sys.argv[2]))
    if result is not None:
        _print_result(result)
