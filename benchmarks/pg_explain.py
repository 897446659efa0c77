"""EXPLAIN ANALYZE of labvault's PostgreSQL search at 100,000 runs: ``python -m benchmarks.pg_explain``.

Builds a store in a fresh database (``labvault_explain_<random>``, dropped at the end): ``--seed-runs``
runs (default 2,000) are created through the public API with the benchmark's W5 data (10 params, 5 tags,
``acc`` and ``loss``), then copied with SQL ``INSERT ... SELECT`` under new ids until the experiment holds
``--runs`` runs (default 100,000), and ``ANALYZE``d. It then runs the W5 query
(``params.optimizer = 'adam' and metrics.acc > 0.5`` ordered by ``metrics.loss``, plus a selective
variant with ``limit``) twice: from the in-process run index (what ``search_runs`` does by default: the
first search loads the experiment, later ones refresh it from ``runs.rev`` and filter numpy columns), and in
SQL (the path a filter the index cannot evaluate takes; the index switched off). For each it prints the wall
time of ``vault.search_runs`` (median of 5) and ``EXPLAIN (ANALYZE, BUFFERS)`` of every statement sent,
including the index refresh after another client's write.

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

    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            statements.append((statement, parameters))

    def explain_captured(captured: list[tuple[str, Any]]) -> None:
        with engine.connect() as c:
            for statement, parameters in captured:
                plan = c.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).all()
                print("\n".join("    " + row[0] for row in plan))
                print()

    def timed(vault: Any, flt: str, order: list[str], limit: int | None
              ) -> tuple[list[Any], list[Any], float]:
        """One captured search (after a warm-up), then the median of 5 in milliseconds."""
        base_engine = vault.backend._engines()[0].engine
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
        return found, captured, statistics.median(times) * 1000

    with labvault.open(uri) as indexed, labvault.open(uri) as sql_only, labvault.open(uri) as writer:
        sql_only.backend._index = None  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        indexed.search_runs("bench", filter=QUERIES[0][1], order_by=QUERIES[0][2])
        print(f"first indexed search (loads the {total:,} runs into the run index): "
              f"{time.perf_counter() - t0:.2f} s\n")
        for title, flt, order, limit in QUERIES:
            found, _, index_ms = timed(indexed, flt, order, limit)
            sql_found, captured, sql_ms = timed(sql_only, flt, order, limit)
            assert [r.id for r in found] == [r.id for r in sql_found], title
            print(f"## {title}: filter {flt!r}, order_by {order}, limit {limit}")
            print(f"{len(found):,} runs returned; search_runs median from the run index {index_ms:.1f} ms, "
                  f"in SQL {sql_ms:.1f} ms ({len(captured)} SELECT statement(s), plans below)\n")
            explain_captured(captured)
        one = writer.search_runs("bench", filter="number = 17")[0]
        one.log_params({"late": "yes"})
        base_engine = indexed.backend._engines()[0].engine  # type: ignore[attr-defined]
        sa.event.listen(base_engine, "before_cursor_execute", capture)
        statements.clear()
        t0 = time.perf_counter()
        hit = indexed.search_runs("bench", filter="params.late = 'yes'")
        refresh_ms = (time.perf_counter() - t0) * 1000
        sa.event.remove(base_engine, "before_cursor_execute", capture)
        assert [r.number for r in hit] == [17]
        print("## run index refresh after another client's write (one param logged to run 17)")
        print(f"search_runs {refresh_ms:.1f} ms, {len(statements)} SELECT statement(s)\n")
        explain_captured(list(statements))
    engine.dispose()


if __name__ == "__main__":
    main()
