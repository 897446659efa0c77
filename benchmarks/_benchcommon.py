"""Stdlib-only helpers shared by ``lv_workloads.py`` and ``mlflow_workloads.py``.

Both scripts run as plain files (``python benchmarks/lv_workloads.py ...``), so this module is imported as a
top-level sibling. It defines the data every workload uses, so both systems log exactly the same values, and
the JSON result protocol the driver parses. It must import neither labvault nor mlflow.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
from pathlib import Path
from typing import Any

#: Line prefix before the JSON result (the driver's ``benchmarks.RESULT_PREFIX``).
RESULT_PREFIX = "BENCH_RESULT "

OPTIMIZERS = ("adam", "sgd", "rmsprop")
SEARCH_FILTER = "params.optimizer = 'adam' and metrics.acc > 0.5"
SEARCH_ORDER = "metrics.loss"


def run_params(i: int) -> dict[str, Any]:
    """The 10 params of run ``i`` (typed for labvault; MLflow stores their ``str()``)."""
    return {
        "optimizer": OPTIMIZERS[i % 3],
        "lr": round(0.0001 * (1 + i % 97), 6),
        "batch_size": 32 * (1 + i % 8),
        "epochs": 10 + i % 50,
        "dropout": round((i % 10) / 20, 3),
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "seed": i,
        "arch": f"resnet{18 + 16 * (i % 4)}",
        "warmup_steps": 100 * (i % 5),
    }


def run_tags(i: int) -> dict[str, str]:
    """The 5 tags of run ``i``."""
    return {
        "owner": ("ana", "bo", "chen")[i % 3],
        "team": "vision",
        "stage": ("dev", "candidate")[i % 2],
        "git_sha": f"{(i * 2654435761) % (1 << 32):08x}",
        "host": f"node-{i % 16:02d}",
    }


def run_metrics(i: int) -> dict[str, float]:
    """The final ``acc`` and ``loss`` of run ``i`` in the search workload."""
    rng = random.Random(i)
    acc = rng.random()
    return {"acc": acc, "loss": 1.0 - acc + 0.1 * rng.random()}


def metric_value(i: int) -> float:
    """The i-th point of a logged metric series."""
    return 1.0 / (1.0 + 1e-3 * i)


def artifact_payload(i: int, size: int) -> bytes:
    """Distinct content for small artifact ``i`` (so content addressing cannot deduplicate)."""
    head = f"artifact {i:08d} ".encode()
    return (head * (size // len(head) + 1))[:size]


def rss_mb() -> float:
    """Current resident set size in MB (VmRSS)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far in MB (ru_maxrss, KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="one benchmark measurement (prints a JSON result line)")
    parser.add_argument("workload", help="W1 .. W8 (or W6 sub-part), see the driver")
    parser.add_argument("--store", required=True, help="backend / store name")
    parser.add_argument("--tmp", required=True, type=Path, help="a fresh empty directory for the store")
    parser.add_argument("--cache", type=Path, help="a directory to build (once) and reuse a read-only store")
    parser.add_argument("--config", default="{}", help="JSON workload sizes")
    return parser.parse_args(argv)


def emit(result: dict[str, Any]) -> None:
    """Print the result line the driver parses, with the process's memory figures."""
    result.setdefault("peak_rss_mb", peak_rss_mb())
    result.setdefault("rss_end_mb", rss_mb())
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def mark_ready(path: Path) -> None:
    (path / ".ready").write_text(str(os.getpid()))


def is_ready(path: Path) -> bool:
    return (path / ".ready").is_file()


#: The start of both probes: ``rss_now()``, this process's resident memory in MiB (0.0 if unknown).
_RSS_NOW = """\
def rss_now():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
"""

#: Run with ``python -c``: measures one import in an interpreter that has loaded nothing but ``site``, then
#: (separately) a first use of the library, "hello world": open a new store, one run, one metric, close.
_IMPORT_PROBE = _RSS_NOW + """\
import time
t0 = time.perf_counter()
import {module}
seconds = time.perf_counter() - t0
rss = rss_now()
t1 = time.perf_counter()
{first_use}
first_use = time.perf_counter() - t1
rss2 = rss_now()
print(repr((seconds, rss, first_use, rss2)))
"""

_BARE_PROBE = _RSS_NOW + """\
rss = rss_now()
print(repr((0.0, rss, 0.0, rss)))
"""


def import_probe(python: str, module: str, first_use: str = "pass") -> dict[str, Any]:
    """Time ``import module`` and read RSS after it, in a fresh ``python`` process; plus the bare RSS.

    ``first_use`` is a statement timed right after the import (seconds in ``first_use_seconds``).
    """
    import ast
    import subprocess

    def probe(code: str) -> tuple[float, float, float, float]:
        out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout
        seconds, rss, first, rss2 = ast.literal_eval(out.strip().splitlines()[-1])
        return float(seconds), float(rss), float(first), float(rss2)

    seconds, rss, first, rss2 = probe(_IMPORT_PROBE.format(module=module, first_use=first_use))
    bare = probe(_BARE_PROBE)[1]
    return {"seconds": seconds, "rss_mb": rss, "bare_rss_mb": bare, "first_use_seconds": first,
            "first_use_rss_mb": rss2}


def settle() -> None:
    """Write back every dirty page before a timed I/O section, so one section's writeback (throttled by
    the kernel once dirty pages pile up) is not billed to the next one."""
    os.sync()


def expected_matches(n: int) -> int:
    """How many of ``n`` search-workload runs match ``SEARCH_FILTER`` (to check each system's answer)."""
    return sum(1 for i in range(n) if run_params(i)["optimizer"] == "adam" and run_metrics(i)["acc"] > 0.5)


# -- server-backed stores (PostgreSQL, Redis) ----------------------------------------------------------------
#: Where the server stores live; override with LABVAULT_BENCH_PG / LABVAULT_BENCH_REDIS.
PG_SERVER = os.environ.get("LABVAULT_BENCH_PG", "postgres@127.0.0.1:5432")
REDIS_SERVER = os.environ.get("LABVAULT_BENCH_REDIS", "127.0.0.1:6379/0")


def bench_session() -> str:
    """The driver's session id (lower-case hex), which names every database and key prefix it creates."""
    return os.environ.get("LABVAULT_BENCH_SESSION", "manual")


def store_name(system: str, where: Path) -> str:
    """A database / prefix name unique to one store directory of one session, e.g. ``lvbench_ab12_cd34``."""
    import hashlib

    digest = hashlib.sha1(str(where.resolve()).encode()).hexdigest()[:12]
    return f"{system}bench_{bench_session()}_{digest}"


def _psql(sql: str, database: str = "postgres") -> str:
    import subprocess

    user, _, hostport = PG_SERVER.partition("@")
    host, _, port = hostport.partition(":")
    done = subprocess.run(["psql", "-h", host, "-p", port or "5432", "-U", user, "-d", database, "-tAc", sql],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"psql failed: {done.stderr.strip()}")
    return done.stdout.strip()


def pg_database(system: str, where: Path) -> str:
    """Create (once) the benchmark database for ``where`` and return its ``host:port/name`` URL tail."""
    name = store_name(system, where)
    if _psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'") != "1":
        _psql(f'CREATE DATABASE "{name}"')
    user, _, hostport = PG_SERVER.partition("@")
    return f"{user}@{hostport}/{name}"


def drop_session_stores(session: str) -> None:
    """Drop every database and delete every Redis key this benchmark session created (only those)."""
    import subprocess

    if not session.isalnum():
        raise ValueError(f"bad session id {session!r}")
    try:
        names = _psql(f"SELECT datname FROM pg_database WHERE datname LIKE '%bench\\_{session}\\_%'").split()
        for name in names:
            _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except (SystemExit, FileNotFoundError):
        pass
    hostport, _, db = REDIS_SERVER.partition("/")
    host, _, port = hostport.partition(":")
    try:
        keys = subprocess.run(["redis-cli", "-h", host, "-p", port or "6379", "-n", db or "0", "--scan",
                               "--pattern", f"lvbench_{session}_*"], capture_output=True, text=True,
                              check=False).stdout.split()
        for start in range(0, len(keys), 500):
            subprocess.run(["redis-cli", "-h", host, "-p", port or "6379", "-n", db or "0", "unlink",
                            *keys[start:start + 500]], capture_output=True, check=False)
    except FileNotFoundError:
        pass
