"""Sync benchmark: push a local file vault to a labvault server (and to S3 when an ``s3://`` backend exists).

``python -m benchmarks.sync_bench [--runs 100] [--points 10000] [--artifact-mb 200]
[--targets sqlite,postgresql,s3]``

1. Builds a local file store: ``--runs`` runs of one experiment, each with ``--points`` metric points
   (one key) and one artifact of ``--artifact-mb / --runs`` MB (distinct random bytes, so every blob
   travels).
2. For each target, a fresh remote: ``labvault server`` (uvicorn, one worker, token auth) on a loopback
   socket over SQLite or over a throwaway PostgreSQL database (dropped afterwards), or an ``s3://``
   prefix when an S3 metadata backend is registered. Then it times
   * the first push (everything travels),
   * a second push (nothing changed: a no-op), and
   * an incremental push after 1,000 more points on one run,
   * a pull of the experiment into an empty file store, and a second (no-op) pull.
3. Verifies the remote: every run present, every point counted once, every artifact's digest.
4. Prints a table and writes it with the command and the machine to ``benchmarks/SYNC_RESULTS.md``
   (``--output``; ``--no-write`` for none).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import labvault
from benchmarks.load import Server, machine

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR / "SYNC_RESULTS.md"
PG_ADMIN = os.environ.get("LABVAULT_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def build_local(root: Path, runs: int, points: int, artifact_bytes: int) -> str:
    """The local file vault to push; returns its URI."""
    uri = str(root / "local")
    rng = np.random.default_rng(1)
    with labvault.open(uri) as vault:
        exp = vault.experiment("sync-bench")
        for i in range(runs):
            with exp.start_run(name=f"run-{i}", params={"i": i, "lr": 0.001 * (1 + i % 7)},
                               tags={"team": "bench"}) as run:
                run.log_metric_series("loss", rng.standard_normal(points),
                                      timestamps=1.7e9 + np.arange(points) * 0.01)
                run.log_artifact("model.bin", rng.bytes(artifact_bytes))
                run.log_result("acc", float(i) / runs)
    return uri


def _pg_database() -> tuple[str, Any]:
    import psycopg

    admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    name = f"labvault_syncbench_{secrets.token_hex(5)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}", (admin, name)


def _drop_pg(handle: Any) -> None:
    admin, name = handle
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def s3_available() -> bool:
    """An ``s3://`` metadata backend is registered and a SeaweedFS binary is there to serve it."""
    from labvault.store import registry

    try:
        registry.backend_class("s3")
    except labvault.LabvaultError:
        return False
    from labvault.testing.seaweed import find_weed

    return find_weed() is not None


def verify(local_uri: str, remote_uri: str) -> int:
    """Every run, point and artifact of the local vault is on the remote, once; returns the points."""
    points = 0
    with labvault.open(local_uri) as local, labvault.open(remote_uri) as remote:
        la, ra = local.backend, remote.backend
        le, re_ = la.find_experiment("sync-bench"), ra.find_experiment("sync-bench")
        lruns = {r.id: r for r in la.list_runs([le.id])}
        rruns = {r.id: r for r in ra.list_runs([re_.id])}
        if sorted(lruns) != sorted(rruns):
            raise SystemExit(f"run ids differ: {len(lruns)} local, {len(rruns)} remote")
        for run_id, info in lruns.items():
            for key in info.metrics:
                a, b = la.metric_history(run_id, key), ra.metric_history(run_id, key)
                if len(a) != len(b) or not np.array_equal(np.sort(a.values), np.sort(b.values)):
                    raise SystemExit(f"run {run_id} metric {key}: {len(a)} local points, {len(b)} remote")
                points += len(b)
            if [(x.key, x.digest) for x in la.list_artifacts(run_id)] != \
                    [(x.key, x.digest) for x in ra.list_artifacts(run_id)]:
                raise SystemExit(f"run {run_id}: artifacts differ")
            for art in ra.list_artifacts(run_id):
                if not ra.blobs.exists(ra.blobs.digest_key(art.digest)):
                    raise SystemExit(f"blob {art.digest} missing on the remote")
    return points


def raw_upload_mb_s(remote_uri: str, total_bytes: int, blobs: int) -> float:
    """The baseline: ``total_bytes`` of fresh random content as ``blobs`` plain ``put_content`` calls to
    the remote's blob store (what the artifacts of a push cost without any sync logic)."""
    rng = np.random.default_rng(99)
    payloads = [rng.bytes(total_bytes // blobs) for _ in range(blobs)]
    backend = labvault.open_backend(remote_uri)
    try:
        t0 = time.perf_counter()
        for data in payloads:
            backend.blobs.put_content(data)
        return total_bytes / 1e6 / (time.perf_counter() - t0)
    finally:
        backend.close()


def bench_target(name: str, pristine: str, remote_uri: str, total_bytes: int, blobs: int) -> dict[str, Any]:
    """Push a fresh copy of the local vault ``pristine`` to ``remote_uri``: first, no-op, incremental."""
    row: dict[str, Any] = {"target": name, "raw_mb_s": raw_upload_mb_s(remote_uri, total_bytes, blobs)}
    local_uri = f"{pristine}-{secrets.token_hex(4)}"
    shutil.copytree(pristine, local_uri)
    with labvault.open(local_uri, remote=remote_uri) as vault:
        t0 = time.perf_counter()
        first = vault.push("sync-bench")
        row["first_s"] = time.perf_counter() - t0
        row["points"] = first.points_sent
        row["blobs"] = first.blobs_sent
        row["mb"] = first.bytes_sent / 1e6
        t0 = time.perf_counter()
        again = vault.push("sync-bench")
        row["noop_s"] = time.perf_counter() - t0
        if again.changed:
            raise SystemExit(f"{name}: the second push was not a no-op: {again}")
        run = vault.experiment("sync-bench").runs()[0]
        steps = np.arange(10**6, 10**6 + 1000)
        vault.get_run(run.id).log_metric_series("loss", np.ones(1000), steps=steps)
        t0 = time.perf_counter()
        inc = vault.push("sync-bench")
        row["incremental_s"] = time.perf_counter() - t0
        if inc.points_sent != 1000 or inc.runs_updated != 1:
            raise SystemExit(f"{name}: the incremental push sent {inc}")
    row["verified_points"] = verify(local_uri, remote_uri)
    shutil.rmtree(local_uri, ignore_errors=True)
    fresh = f"{pristine}-pull-{secrets.token_hex(4)}"
    with labvault.open(fresh, remote=remote_uri) as vault:
        t0 = time.perf_counter()
        vault.pull("sync-bench")
        row["pull_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        vault.pull("sync-bench")
        row["noop_pull_s"] = time.perf_counter() - t0
        if vault.last_sync is None or vault.last_sync.changed:
            raise SystemExit(f"{name}: the second pull was not a no-op")
    if verify(fresh, remote_uri) != row["verified_points"]:
        raise SystemExit(f"{name}: the pulled copy differs")
    shutil.rmtree(fresh, ignore_errors=True)
    row["points_per_s"] = row["points"] / row["first_s"]
    row["mb_per_s"] = total_bytes / 1e6 / row["first_s"]
    return row


def render(rows: list[dict[str, Any]], args: argparse.Namespace, notes: list[str]) -> str:
    lines = [
        "# Sync benchmark",
        "",
        f"Command: `python -m benchmarks.sync_bench {' '.join(map(shlex.quote, sys.argv[1:]))}`".rstrip(),
        "",
        f"Machine: {machine()}",
        "",
        f"Workload: push of one experiment from a local file vault: {args.runs} runs x {args.points:,} "
        f"metric points ({args.runs * args.points:,} points) + {args.artifact_mb} MB of artifacts "
        f"({args.runs} distinct blobs).",
        "",
        "| target | first push | points/s | artifact MB/s (whole push) | raw blob upload MB/s "
        "| no-op push | incremental push (+1,000 points, 1 run) | pull into an empty store | no-op pull "
        "| verified points |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['target']} | {r['first_s']:.2f} s | {r['points_per_s']:,.0f} | "
                     f"{r['mb_per_s']:.1f} | {r['raw_mb_s']:.1f} | {r['noop_s']:.2f} s | "
                     f"{r['incremental_s']:.2f} s | "
                     f"{r['pull_s']:.2f} s | {r['noop_pull_s']:.2f} s | {r['verified_points']:,} |")
    notes = [*notes, "artifact MB/s (whole push) divides the artifact bytes by the whole push time "
             "(metrics included); raw blob upload MB/s is the same number of fresh blobs of the same size "
             "sent with plain `blobs.put_content` calls to the same store, before the push"]
    lines += [""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--artifact-mb", type=int, default=200)
    parser.add_argument("--targets", default="sqlite,postgresql,s3",
                        help="comma-separated: sqlite, postgresql (server stores), s3")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    total_bytes = args.artifact_mb * 1_000_000
    root = Path(tempfile.mkdtemp(prefix="labvault-syncbench-"))
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        t0 = time.perf_counter()
        local = build_local(root, args.runs, args.points, total_bytes // args.runs)
        notes.append(f"building the local vault took {time.perf_counter() - t0:.1f} s (not timed above)")
        from labvault.server.auth import AuthStore

        auth_db = root / "auth.db"
        auth = AuthStore(auth_db)
        auth.add_user("bench", "admin")
        _, token = auth.create_token("bench")
        auth.close()
        for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
            cleanup: Any = None
            if target == "sqlite":
                inner = f"sqlite:///{root / 'server.db'}"
            elif target == "postgresql":
                try:
                    inner, cleanup = _pg_database()
                except Exception as exc:  # no server: report and go on
                    notes.append(f"postgresql skipped: {exc}")
                    continue
            elif target == "s3":
                if not s3_available():
                    notes.append("s3 skipped: no s3:// metadata backend is registered (or no SeaweedFS)")
                    continue
                from labvault.testing.seaweed import SeaweedServer, find_weed

                weed = find_weed()
                assert weed is not None
                seaweed = SeaweedServer(weed, str(root / "seaweed"))
                seaweed.start()
                os.environ.update({"AWS_ACCESS_KEY_ID": seaweed.access_key,
                                   "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
                                   "AWS_ENDPOINT_URL": seaweed.endpoint, "AWS_REGION": "us-east-1"})
                try:
                    uri = f"s3://syncbench/run-{secrets.token_hex(4)}?endpoint_url={seaweed.endpoint}"
                    rows.append(bench_target("S3 (SeaweedFS), direct", local, uri, total_bytes, args.runs))
                finally:
                    seaweed.stop()
                continue
            else:
                raise SystemExit(f"unknown target {target!r}")
            server = Server(inner, auth_db, 1, root / f"server-{target}.log")
            os.environ["LABVAULT_TOKEN"] = token
            try:
                server.wait_healthy()
                rows.append(bench_target(f"server (uvicorn socket) over {target}", local, server.url,
                                         total_bytes, args.runs))
            finally:
                server.stop()
                if cleanup is not None:
                    _drop_pg(cleanup)
            print(render(rows, args, notes), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = render(rows, args, notes)
    print(text)
    if not args.no_write:
        args.output.write_text(text)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
