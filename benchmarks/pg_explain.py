"""EXPLAIN ANALYZE of labvault's PostgreSQL search at 100,000 runs: ``python -m benchmarks.pg_explain``.

Builds a store in a fresh database (``labvault_explain_<random>``, dropped at the end): ``--seed-runs``
runs (default 2,000) are created through the public API with the benchmark's W5 data (10 params, 5 tags,
``acc`` and ``loss``), then copied with SQL ``INSERT ... SELECT`` under new ids until the experiment holds
``--runs`` runs (default 100,000), and ``ANALYZE``d. It then runs the W5 query
(``params.optimizer = 'adam' and metrics.acc > 0.5`` ordered by ``metrics.loss``, plus a selective
variant with ``limit``), captures the SQL labvault sends, prints ``EXPLAIN (ANALYZE, BUFFERS)`` for each
statement and the wall time of ``vault.search_runs`` (median of 5).

PostgreSQL comes from ``LABVAULT_BENCH_PG`` (default ``postgres@127.0.0.1:5432``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from typing import Any

import labvault

from ._benchcommon import run_metrics, run_params, run_tags

QUERIES: list[tuple[str, str, list[str], int | None]] = [
    ("W5 filtered, ordered", "params.optimizer = 'adam' and metrics.acc > 0.5", ["metrics.loss"], None),
    ("selective, top 20", "params.seed = 4242 or (params.lr > 0.0095 and tags.stage = 'candidate')",
     ["metrics.acc desc"], 20),
    ("one param equality, top 100", "params.arch = 'resnet50'", ["metrics.loss"], 100),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=100_000, help="runs in the experiment (default 100,000)")
    p.add_argument("--seed-runs", type=int, default=2_000, help="runs made through the API (default 2,000)")
    p.add_argument("--keep", action="store_true", help="keep the database (prints its URI)")
    args = p.parse_args()
    if args.runs % args.seed_runs:
        p.error("--runs must be a multiple of --seed-runs")

    import sqlalchemy as sa

    server = os.environ.get("LABVAULT_BENCH_PG", "postgres@127.0.0.1:5432")
    db = f"labvault_explain_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(f"postgresql+psycopg://{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{db}"')
    uri = f"postgresql://{server}/{db}"
    try:
        explain(uri, args.runs, args.seed_runs)
    finally:
        if args.keep:
            print(f"kept {uri}")
        else:
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.dispose()


def explain(uri: str, n_runs: int, n_seed: int) -> None:
    """Build the store at ``uri`` and print the plans and timings."""
    import sqlalchemy as sa

    t0 = time.perf_counter()
    with labvault.open(uri) as vault:
        exp = vault.experiment("bench")
        for i in range(n_seed):
            run = exp.start_run(params=run_params(i), tags=run_tags(i))
            run.log_metrics(run_metrics(i))
            run.end()
    print(f"{n_seed:,} runs through the API in {time.perf_counter() - t0:.1f} s")

    engine = sa.create_engine(uri.replace("postgresql://", "postgresql+psycopg://", 1))
    t0 = time.perf_counter()
    with engine.begin() as c:
        for copy in range(1, n_runs // n_seed):
            suffix, offset = f"c{copy}", copy * n_seed
            c.execute(sa.text(
                "INSERT INTO runs (id, experiment_id, number, name, parent_id, status, start_time,"
                " end_time, error, heartbeat, params_json, tags_json)"
                " SELECT id || :s, experiment_id, number + :o, name, parent_id, status, start_time,"
                " end_time, error, heartbeat, params_json, tags_json"
                " FROM runs WHERE number <= :n"), {"s": suffix, "o": offset, "n": n_seed})
            for table, cols in (("run_params", "key, value_json, value_num, value_text"),
                                ("run_tags", "key, value"),
                                ("metric_latest", "key, value, step, timestamp")):
                c.execute(sa.text(
                    f"INSERT INTO {table} (run_id, {cols})"
                    f" SELECT t.run_id || :s, {cols.replace('key', 't.key')}"
                    f" FROM {table} t JOIN runs r ON r.id = t.run_id WHERE r.number <= :n"),
                    {"s": suffix, "n": n_seed})
        c.execute(sa.text("UPDATE experiments SET run_counter = :n"), {"n": n_runs})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql("ANALYZE")
        total = c.exec_driver_sql("SELECT count(*) FROM runs").scalar()
    print(f"copied to {total:,} runs in {time.perf_counter() - t0:.1f} s; ANALYZE done\n")

    with labvault.open(uri) as vault:
        statements: list[tuple[str, Any]] = []
        backend: Any = vault.backend
        base_engine = backend._engines()[0].engine

        def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                    many: bool) -> None:
            if statement.lstrip().upper().startswith(("SELECT", "WITH")):
                statements.append((statement, parameters))

        for title, flt, order, limit in QUERIES:
            vault.search_runs("bench", filter=flt, order_by=order, limit=limit)  # warm the pool and caches
            sa.event.listen(base_engine, "before_cursor_execute", capture)
            statements.clear()
            found = vault.search_runs("bench", filter=flt, order_by=order, limit=limit)
            sa.event.remove(base_engine, "before_cursor_execute", capture)
            captured = list(statements)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                vault.search_runs("bench", filter=flt, order_by=order, limit=limit)
                times.append(time.perf_counter() - t0)
            print(f"## {title}: filter {flt!r}, order_by {order}, limit {limit}")
            median_ms = statistics.median(times) * 1000
            print(f"{len(found):,} runs returned; search_runs median {median_ms:.1f} ms "
                  f"(min {min(times) * 1000:.1f} ms) over 5, {len(captured)} SELECT statement(s)\n")
            with engine.connect() as c:
                for statement, parameters in captured:
                    plan = c.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).all()
                    print("\n".join("    " + row[0] for row in plan))
                    print()
    engine.dispose()


if __name__ == "__main__":
    main()
