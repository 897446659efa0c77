"""Load test of ``labvault server``: many concurrent clients logging metrics and uploading artifacts.

``python -m benchmarks.load --clients 50 --duration 60 --workers 2``

1. Creates a PostgreSQL database of its own (``labvault_load_<random>`` on ``--pg``, default
   ``$LABVAULT_BENCH_PG`` or ``postgres@127.0.0.1:5432``) and an auth store with one writer token.
2. Starts ``labvault server --backend postgresql://.../labvault_load_<random> --workers N`` (uvicorn) as a
   subprocess on a free loopback port.
3. Runs ``--clients`` concurrent clients (asyncio tasks sharing one ``httpx.AsyncClient``, one connection
   each) for ``--duration`` seconds. Each client owns one run and, back to back with no think time (or
   every ``--interval`` seconds), sends what ``labvault.open("http://...")`` sends per flush: one
   ``POST /runs/{id}/metrics`` with the binary metric frame (``--keys`` metrics x ``--points`` points);
   every ``--artifact-every``-th flush it also uploads a fresh ``--artifact-size``-byte artifact the way
   the HTTP backend does: ``POST /content`` (with its sha256 header), then ``POST /runs/{id}/artifacts``.
4. Afterwards it counts: every artifact listed with the right digest and downloaded with a matching
   sha256 (through the server), then, with the server stopped, every metric history read straight from
   PostgreSQL: each acknowledged point present once with its exact value, none lost, none duplicated,
   nothing that was not sent.
5. Prints requests/s, points/s and p50/p95/p99/max latency per request kind, and writes them with the
   command and the machine to ``benchmarks/LOAD_RESULTS.md`` (``--output``; ``--no-write`` for none).
   The database is dropped at the end (only that one).

Exit status 0 only when there were no errors and the counts match.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import os
import platform
import re
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR / "LOAD_RESULTS.md"
PG_SERVER = os.environ.get("LABVAULT_BENCH_PG", "postgres@127.0.0.1:5432")
SECTION = "## Load test"
KINDS = ("metrics", "content", "artifact", "log_artifact")


# -- processes and databases ---------------------------------------------------------------------------------
def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when this process dies (Linux), so no server outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def pg_admin(sql: str) -> None:
    """Run one statement on the server's ``postgres`` database (autocommit: CREATE/DROP DATABASE)."""
    import psycopg

    user, _, hostport = PG_SERVER.partition("@")
    host, _, port = hostport.partition(":")
    with psycopg.connect(host=host, port=int(port or 5432), user=user, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(sql.encode())


@contextlib.contextmanager
def load_database() -> Iterator[str]:
    """A fresh ``labvault_load_<random>`` database; yields its ``postgresql://`` URI, drops it after."""
    name = f"labvault_load_{os.urandom(4).hex()}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_SERVER}/{name}"
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Server:
    """``labvault server`` in a subprocess on a free loopback port; its output goes to ``log_path``."""

    def __init__(self, backend: str, auth_db: Path, workers: int, log_path: Path,
                 artifacts: str | None = None, log_level: str = "warning") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [sys.executable, "-m", "labvault", "server", "--backend", backend, "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", str(workers), "--log-level", log_level,
               "--auth-db", str(auth_db)]
        if artifacts:
            cmd += ["--artifacts", artifacts]
        env = {**os.environ, "LABVAULT_TOKEN": ""}
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=die_with_parent)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"the server did not become healthy in {timeout:.0f} s:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# -- the clients ---------------------------------------------------------------------------------------------
def metric_values(client: int, key: int, steps: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The value of each point: a function of (client, key, step), recomputed exactly when verifying."""
    return steps.astype(np.float64) * 0.25 + (client * 100 + key) * 1e-3


@dataclass
class ClientState:
    """What one client sent and what the server acknowledged."""

    index: int
    run_id: str = ""
    next_step: int = 0
    flushes: int = 0
    #: step ranges [start, stop) acknowledged (every key of the flush got them)
    acked: list[tuple[int, int]] = field(default_factory=list)
    #: step ranges whose request failed: they may or may not be stored, never twice
    unacked: list[tuple[int, int]] = field(default_factory=list)
    #: artifact key -> sha256 of the artifacts whose upload and indexing were both acknowledged
    artifacts: dict[str, str] = field(default_factory=dict)


@dataclass
class Stats:
    """Latencies (seconds) per request kind and the errors seen."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: list[str] = field(default_factory=list)
    points: int = 0
    artifact_bytes: int = 0

    def error(self, text: str) -> None:
        self.errors.append(text)


class Load:
    """The clients of one load test against one server."""

    def __init__(self, args: argparse.Namespace, url: str, token: str) -> None:
        self.args = args
        self.api = url + "/api/v1"
        self.token = token
        self.stats = Stats()
        self.clients = [ClientState(i) for i in range(args.clients)]
        self.keys = [f"metric_{k}" for k in range(args.keys)]

    def http(self) -> httpx.AsyncClient:
        n = self.args.clients + 8
        return httpx.AsyncClient(
            headers={"Authorization": f"Bearer {self.token}", "User-Agent": "labvault-load"},
            timeout=httpx.Timeout(self.args.timeout),
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
        )

    async def setup(self, client: httpx.AsyncClient) -> str:
        """The experiment and one run per client (not timed)."""
        resp = await client.post(f"{self.api}/experiments", json={"name": "load", "project": "default"})
        resp.raise_for_status()
        exp_id = resp.json()["id"]
        for state in self.clients:
            resp = await client.post(f"{self.api}/experiments/{exp_id}/runs",
                                     json={"name": f"client-{state.index}", "params": {"client": state.index},
                                           "tags": {"load": "yes"}})
            resp.raise_for_status()
            state.run_id = resp.json()["id"]
        return str(exp_id)

    async def timed(self, kind: str, call: Any) -> httpx.Response | None:
        """Await one request, record its latency; None (and an error) unless it succeeded."""
        t0 = time.perf_counter()
        try:
            resp: httpx.Response = await call
        except httpx.HTTPError as exc:
            self.stats.latencies[kind].append(time.perf_counter() - t0)
            self.stats.error(f"{kind}: {type(exc).__name__}: {exc}")
            return None
        self.stats.latencies[kind].append(time.perf_counter() - t0)
        if resp.status_code >= 400:
            self.stats.error(f"{kind}: HTTP {resp.status_code}: {resp.text[:200]}")
            return None
        return resp

    async def flush(self, client: httpx.AsyncClient, state: ClientState) -> None:
        """One metric flush: every key, ``--points`` new steps each, in one binary request."""
        from labvault import wire
        from labvault.domain import MetricSeries

        n = self.args.points
        start = state.next_step
        state.next_step += n
        steps = np.arange(start, start + n, dtype=np.int64)
        stamps = np.full(n, time.time())
        frame = wire.encode_series([MetricSeries(key, steps, metric_values(state.index, k, steps), stamps)
                                    for k, key in enumerate(self.keys)])
        resp = await self.timed("metrics", client.post(
            f"{self.api}/runs/{state.run_id}/metrics", content=frame,
            headers={"Content-Type": wire.METRICS_MEDIA_TYPE}))
        if resp is None:
            state.unacked.append((start, start + n))
            return
        state.acked.append((start, start + n))
        self.stats.points += n * len(self.keys)

    async def upload(self, client: httpx.AsyncClient, state: ClientState) -> None:
        """One small artifact, as ``HTTPBackend`` sends it: content first, then the run's index entry."""
        from labvault import wire

        payload = os.urandom(self.args.artifact_size)
        digest = hashlib.sha256(payload).hexdigest()
        resp = await self.timed("content", client.post(
            f"{self.api}/content", content=payload,
            headers={"Content-Type": "application/octet-stream", wire.SHA256_HEADER: digest}))
        if resp is None:
            return
        doc = resp.json()
        if doc.get("digest") != digest or doc.get("size") != len(payload):
            self.stats.error(f"content: server answered {doc}, expected digest {digest} size {len(payload)}")
            return
        key = f"uploads/{state.flushes:06d}.bin"
        resp = await self.timed("artifact", client.post(
            f"{self.api}/runs/{state.run_id}/artifacts",
            json={"key": key, "size": len(payload), "digest": digest, "created_at": time.time()}))
        if resp is not None:
            state.artifacts[key] = digest
            self.stats.artifact_bytes += len(payload)

    async def client_loop(self, client: httpx.AsyncClient, state: ClientState, deadline: float) -> None:
        every = self.args.artifact_every
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await self.flush(client, state)
            if every and state.flushes % every == every - 1:
                await self.upload(client, state)
            state.flushes += 1
            if self.args.interval:
                await asyncio.sleep(max(0.0, self.args.interval - (time.perf_counter() - t0)))

    async def run(self) -> dict[str, Any]:
        """Set up, drive the clients for ``--duration`` seconds, then check the artifacts."""
        async with self.http() as client:
            await self.setup(client)
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            deadline = t0 + self.args.duration
            await asyncio.gather(*(self.client_loop(client, s, deadline) for s in self.clients))
            elapsed = time.perf_counter() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            for state in self.clients:  # finish the runs (not timed)
                resp = await client.patch(f"{self.api}/runs/{state.run_id}",
                                          json={"status": "finished", "end_time": time.time()})
                if resp.status_code >= 400:
                    self.stats.error(f"finish run: HTTP {resp.status_code}: {resp.text[:200]}")
            artifacts = await self.verify_artifacts(client)
        client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return {"elapsed": elapsed, "client_cpu_percent": 100 * client_cpu / elapsed, **artifacts}

    async def verify_artifacts(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """Every acknowledged artifact is listed with its digest and downloads with a matching sha256."""
        problems: list[str] = []
        checked = 0
        gate = asyncio.Semaphore(8)

        async def check(state: ClientState, key: str, digest: str) -> None:
            nonlocal checked
            async with gate:
                try:
                    resp = await client.get(f"{self.api}/runs/{state.run_id}/artifacts/{key}")
                except httpx.HTTPError as exc:
                    problems.append(f"run {state.run_id} {key}: {type(exc).__name__}: {exc}")
                    return
            got = hashlib.sha256(resp.content).hexdigest()
            header = resp.headers.get("x-labvault-sha256")
            if resp.status_code != 200 or got != digest or header != digest:
                problems.append(f"run {state.run_id} {key}: HTTP {resp.status_code}, sha256 {got}, "
                                f"header {header}, expected {digest}")
            else:
                checked += 1

        for state in self.clients:
            resp = await client.get(f"{self.api}/runs/{state.run_id}/artifacts", params={"prefix": ""})
            listed = {d["key"]: d["digest"] for d in resp.json()} if resp.status_code == 200 else {}
            for key, digest in state.artifacts.items():
                if listed.get(key) != digest:
                    problems.append(f"run {state.run_id} {key}: listed as {listed.get(key)}, "
                                    f"expected {digest}")
            # anything listed beyond the acknowledged ones must come from a failed (unacknowledged) upload
            extra = set(listed) - set(state.artifacts)
            if extra and not self.stats.errors:
                problems.append(f"run {state.run_id}: unexpected artifacts {sorted(extra)[:5]}")
        await asyncio.gather(*(check(s, k, d) for s in self.clients for k, d in s.artifacts.items()))
        return {"artifacts_acked": sum(len(s.artifacts) for s in self.clients),
                "artifacts_verified": checked, "artifact_problems": problems}


class LibraryLoad(Load):
    """``--client library``: each client a thread with its own ``labvault.open(url, token=...)`` (the real
    ``HTTPBackend``: its connection pool, retries and error mapping). A flush is the call a run's flush makes,
    ``backend.log_metrics(run_id, [every key])``; an artifact is ``run.log_artifact(key, bytes)`` (content +
    index, timed as one "log_artifact")."""

    async def run(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.run_threads)

    def run_threads(self) -> dict[str, Any]:
        import threading

        import labvault
        from labvault.domain import MetricSeries
        from labvault.errors import LabvaultError

        lock = threading.Lock()
        vaults = [labvault.open(self.api.removesuffix("/api/v1"), token=self.token, retries=3,
                                timeout=self.args.timeout) for _ in self.clients]
        runs = []
        for state, vault in zip(self.clients, vaults, strict=True):  # setup, not timed
            run = vault.experiment("load").start_run(name=f"client-{state.index}",
                                                     params={"client": state.index}, tags={"load": "yes"})
            state.run_id = run.id
            runs.append(run)

        def record(kind: str, t0: float, error: str | None = None) -> None:
            with lock:
                self.stats.latencies[kind].append(time.perf_counter() - t0)
                if error:
                    self.stats.error(error)

        def loop(state: ClientState, vault: labvault.Vault, run: labvault.Run, deadline: float) -> None:
            every = self.args.artifact_every
            n = self.args.points
            while time.perf_counter() < deadline:
                t_flush = time.perf_counter()
                start = state.next_step
                state.next_step += n
                steps = np.arange(start, start + n, dtype=np.int64)
                stamps = np.full(n, time.time())
                series = [MetricSeries(key, steps, metric_values(state.index, k, steps), stamps)
                          for k, key in enumerate(self.keys)]
                t0 = time.perf_counter()
                try:
                    vault.backend.log_metrics(state.run_id, series)
                except LabvaultError as exc:
                    record("metrics", t0, f"metrics: {type(exc).__name__}: {exc}")
                    state.unacked.append((start, start + n))
                else:
                    record("metrics", t0)
                    state.acked.append((start, start + n))
                    with lock:
                        self.stats.points += n * len(self.keys)
                if every and state.flushes % every == every - 1:
                    payload = os.urandom(self.args.artifact_size)
                    key = f"uploads/{state.flushes:06d}.bin"
                    t0 = time.perf_counter()
                    try:
                        info = run.log_artifact(key, payload)
                    except LabvaultError as exc:
                        record("log_artifact", t0, f"log_artifact: {type(exc).__name__}: {exc}")
                    else:
                        record("log_artifact", t0)
                        state.artifacts[key] = info.digest
                        with lock:
                            self.stats.artifact_bytes += len(payload)
                state.flushes += 1
                if self.args.interval:
                    time.sleep(max(0.0, self.args.interval - (time.perf_counter() - t_flush)))

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        threads = [threading.Thread(target=loop, args=(s, v, r, t0 + self.args.duration), daemon=True)
                   for s, v, r in zip(self.clients, vaults, runs, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        for run in runs:
            try:
                run.end()
            except LabvaultError as exc:
                self.stats.error(f"finish run: {type(exc).__name__}: {exc}")
        for vault in vaults:
            vault.close()

        async def check() -> dict[str, Any]:
            async with self.http() as client:
                return await self.verify_artifacts(client)

        artifacts = asyncio.run(check())
        client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return {"elapsed": elapsed, "client_cpu_percent": 100 * client_cpu / elapsed, **artifacts}


def verify_points(backend_uri: str, load: Load) -> dict[str, Any]:
    """Read every history straight from the store: acknowledged points once each, exact values."""
    import labvault

    problems: list[str] = []
    stored = expected = maybe_stored = maybe_total = 0
    vault = labvault.open(backend_uri)
    try:
        for state in load.clients:
            acked = (np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in state.acked])
                     if state.acked else np.empty(0, np.int64))
            maybe = (np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in state.unacked])
                     if state.unacked else np.empty(0, np.int64))
            for k, key in enumerate(load.keys):
                series = vault.backend.metric_history(state.run_id, key)
                steps = np.asarray(series.steps, dtype=np.int64)
                values = np.asarray(series.values, dtype=np.float64)
                stored += len(steps)
                expected += len(acked)
                order = np.argsort(steps, kind="stable")
                steps, values = steps[order], values[order]
                if len(np.unique(steps)) != len(steps):
                    problems.append(f"run {state.run_id} {key}: {len(steps) - len(np.unique(steps))} "
                                    "duplicated points")
                missing = np.setdiff1d(acked, steps)
                if len(missing):
                    problems.append(f"run {state.run_id} {key}: {len(missing)} acknowledged points lost "
                                    f"(steps {missing[:5].tolist()} ...)")
                maybe_total += len(maybe)
                maybe_stored += int(np.isin(maybe, steps).sum())
                unknown = np.setdiff1d(steps, np.concatenate([acked, maybe]))
                if len(unknown):
                    problems.append(f"run {state.run_id} {key}: {len(unknown)} points never sent")
                if not np.array_equal(values, metric_values(state.index, k, steps)):
                    problems.append(f"run {state.run_id} {key}: values differ from the ones sent")
    finally:
        vault.close()
    return {"points_expected": expected, "points_stored": stored, "point_problems": problems,
            "failed_points": maybe_total, "failed_points_stored": maybe_stored}


# -- report --------------------------------------------------------------------------------------------------
def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values) * 1000
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"n": float(len(arr)), "p50": float(p50), "p95": float(p95), "p99": float(p99),
            "max": float(arr.max())}


def machine() -> str:
    try:
        with open("/proc/meminfo") as fh:
            kb = int(next(ln for ln in fh if ln.startswith("MemTotal:")).split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        mem = "?"
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as fh:
        cpu = next(ln for ln in fh if ln.startswith("model name")).split(":", 1)[1].strip()
    return f"{os.cpu_count()} CPUs ({cpu}), {mem} RAM, {platform.platform()}"


def pg_version() -> str:
    import psycopg

    user, _, hostport = PG_SERVER.partition("@")
    host, _, port = hostport.partition(":")
    try:
        with psycopg.connect(host=host, port=int(port or 5432), user=user, dbname="postgres") as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "?"
    except psycopg.Error:
        return "?"


def report(args: argparse.Namespace, command: str, result: dict[str, Any], stats: Stats) -> str:
    """The markdown section (also printed)."""
    from benchmarks import git_revision  # lazy: lv_workloads.py imports this file as top-level `load`

    elapsed = result["elapsed"]
    # run.log_artifact (library mode) is two requests: the content, then the index entry
    total = sum(len(v) for v in stats.latencies.values()) + len(stats.latencies["log_artifact"])
    driver = ("threads in one process, each its own `labvault.open(url, token=...)`: "
              "`backend.log_metrics` per flush, `run.log_artifact` per artifact" if args.client == "library"
              else "asyncio tasks in one process sharing an `httpx.AsyncClient`, one connection each")
    pace = f"one flush every {args.interval} s" if args.interval else "no think time"
    ok = not stats.errors and not result["point_problems"] and not result["artifact_problems"]
    lines = [
        section_heading(args),
        "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M %Z')}: **{'PASS' if ok else 'FAIL'}**.",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- machine: {machine()}; PostgreSQL {pg_version()} on the same machine (loopback); the server, "
        "PostgreSQL and the load driver share these CPUs",
        f"- labvault git {git_revision()}, python {platform.python_version()}, httpx {httpx.__version__}",
        f"- `labvault server --backend postgresql://.../labvault_load_<random> --workers {args.workers}` "
        f"(uvicorn), artifacts in {'`' + args.artifacts + '`' if args.artifacts else 'the database'}",
        f"- {args.clients} clients ({driver}), "
        f"{args.duration:g} s, {pace}"
        f"; a flush = one `POST /runs/{{id}}/metrics` binary frame of {args.keys} metrics x {args.points} "
        f"points; every {args.artifact_every}th flush also uploads a {args.artifact_size:,}-byte artifact "
        "(`POST /content` + `POST /runs/{id}/artifacts`)",
        f"- the driver process used {result['client_cpu_percent']:.0f}% of one CPU during the run; load "
        f"average (1 min) {result.get('loadavg_before', 0):.2f} just before it, "
        f"{result.get('loadavg_after', 0):.2f} at its end",
        "",
        "| figure | value |",
        "|---|---|",
        f"| wall time | {elapsed:.1f} s |",
        f"| requests | {total:,} ({total / elapsed:,.0f} requests/s) |",
        f"| metric points acknowledged | {stats.points:,} ({stats.points / elapsed:,.0f} points/s) |",
        f"| artifacts acknowledged | {result['artifacts_acked']:,} ({stats.artifact_bytes / 1e6:,.1f} MB, "
        f"{result['artifacts_acked'] / elapsed:,.0f}/s) |",
        f"| errors | {len(stats.errors)} |",
        f"| points read back from PostgreSQL | {result['points_stored']:,} of {result['points_expected']:,} "
        f"acknowledged; problems: {len(result['point_problems'])} (lost, duplicated, unsent or wrong "
        "values) |",
        f"| points of failed flushes (may or may not be stored, never twice) | {result['failed_points']:,}, "
        f"of them stored: {result['failed_points_stored']:,} |",
        f"| artifacts downloaded with matching sha256 | {result['artifacts_verified']:,} of "
        f"{result['artifacts_acked']:,}; problems: {len(result['artifact_problems'])} |",
        "",
        "| request kind | requests | requests/s | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"metrics": "metric flush (`POST /runs/{id}/metrics`)",
             "log_artifact": "`run.log_artifact` (`POST /content` + `POST /runs/{id}/artifacts`)",
             "content": "artifact bytes (`POST /content`)",
             "artifact": "artifact index (`POST /runs/{id}/artifacts`)"}
    for kind in KINDS:
        p = percentiles(stats.latencies[kind])
        if p:
            lines.append(f"| {names[kind]} | {int(p['n']):,} | {p['n'] / elapsed:,.0f} | {p['p50']:.1f} ms | "
                         f"{p['p95']:.1f} ms | {p['p99']:.1f} ms | {p['max']:.1f} ms |")
    problems = stats.errors[:10] + result["point_problems"][:10] + result["artifact_problems"][:10]
    if problems:
        lines += ["", "First problems:", ""] + [f"- {p}" for p in problems]
    if result.get("server_log_errors"):
        lines += ["", f"Server log: {result['server_log_errors']} error lines."]
    return "\n".join(lines) + "\n"


def section_heading(args: argparse.Namespace) -> str:
    """The heading of this run's section: one per client kind, so both can stand in the results file."""
    return SECTION if args.client == "http" else f"{SECTION}: labvault.open clients"


def write_section(path: Path, section: str, heading: str) -> None:
    """Replace the ``heading`` section of ``path`` (up to the next ``## ``) or append it."""
    text = path.read_text() if path.exists() else (
        "# labvault server load results\n\nWritten by `python -m benchmarks.load`; see its docstring.\n\n")
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


# -- main ----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    p.add_argument("--keys", type=int, default=5, help="metrics per flush (default 5)")
    p.add_argument("--points", type=int, default=100, help="points per metric per flush (default 100)")
    p.add_argument("--artifact-every", type=int, default=5,
                   help="upload an artifact every N-th flush (default 5; 0: none)")
    p.add_argument("--artifact-size", type=int, default=16 * 1024, help="artifact bytes (default 16 KiB)")
    p.add_argument("--client", choices=("http", "library"), default="http",
                   help="http: asyncio tasks sending the HTTP backend's requests with httpx.AsyncClient "
                        "(default); library: one thread per client, each with its own "
                        "labvault.open(url, token=...)")
    p.add_argument("--interval", type=float, default=0.0,
                   help="seconds between a client's flushes (default 0: back to back)")
    p.add_argument("--artifacts", default=None,
                   help="--artifacts URI for the server (default: blobs in PostgreSQL)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help="markdown file to write the section to (default benchmarks/LOAD_RESULTS.md)")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--server-log-level", default="info",
                   help="the server's --log-level (default info: uvicorn reports restarted workers at info)")
    p.add_argument("--server-log", type=Path, default=None, help="keep the server's output in this file")
    args = p.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.workers < 1 or args.keys < 1 or args.points < 1:
        p.error("--clients, --duration, --workers, --keys and --points must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.load",
                          *(sys.argv[1:] if argv is None else argv)])
    from labvault.server.auth import AuthStore

    with tempfile.TemporaryDirectory(prefix="labvault-load-") as tmp, load_database() as uri:
        auth = AuthStore(Path(tmp) / "auth.db")
        auth.add_user("load", "writer")
        _, token = auth.create_token("load", "load test")
        auth.close()
        server = Server(uri, Path(tmp) / "auth.db", args.workers, Path(tmp) / "server.log", args.artifacts,
                        args.server_log_level)
        try:
            server.wait_healthy()
            print(f"server {server.url} ({args.workers} workers) over {uri.rsplit('/', 1)[-1]}; "
                  f"{args.clients} clients for {args.duration:g} s", file=sys.stderr, flush=True)
            load = (LibraryLoad if args.client == "library" else Load)(args, server.url, token)
            before = os.getloadavg()[0]
            result = asyncio.run(load.run())
            result.update(loadavg_before=before, loadavg_after=os.getloadavg()[0])
        finally:
            server.stop()
        log_text = server.log_text()
        if args.server_log:
            args.server_log.write_text(log_text)
        result["server_log_errors"] = sum(1 for ln in log_text.splitlines()
                                          if "Traceback" in ln or " ERROR" in ln or ln.startswith("ERROR")
                                          or "died" in ln)
        result.update(verify_points(uri, load))
    section = report(args, command, result, load.stats)
    print(section)
    if not args.no_write:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_section(args.output, section, section_heading(args))
        print(f"wrote {args.output}", file=sys.stderr)
    failed = load.stats.errors or result["point_problems"] or result["artifact_problems"]
    return 1 if failed or result["server_log_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
