"""The benchmark driver: ``python -m benchmarks [--quick] [--only W1,W3] [--backends file,sqlite]``.

For every workload it runs, repeat after repeat, one fresh subprocess per (system, store) in a fixed
alternating order (labvault-file, labvault-sqlite, mlflow-sqlite, mlflow-file, then the next repeat), each on
a fresh store in its own temporary directory, and takes medians. labvault runs in this interpreter
(``sys.executable``), MLflow in ``.bench/mlflow-venv`` (created with ``python3 -m venv`` + ``pip install
mlflow`` when missing). It prints one table (figures, labvault's ratio to each MLflow store with > 1 meaning
labvault is better, each budget and whether it holds) and writes it with the machine, the versions and the
command to ``benchmarks/RESULTS.md`` (``--quick`` writes ``.bench/RESULTS-quick.md`` instead, so a smoke
check never replaces the real figures). Raw per-sample results go to ``.bench/results-*.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import RESULT_PREFIX, git_revision

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MLFLOW_VENV = REPO / ".bench" / "mlflow-venv"
MLFLOW_SPEC = os.environ.get("LABVAULT_BENCH_MLFLOW", "mlflow")
PROFILE_HEADING = "## Profile-driven pass"
PROFILE_PLACEHOLDER = (
    "_To be filled by the lead: the profile of each workload that misses its budget, what was changed,\n"
    "and the before / after figures of `python -m benchmarks --only ...` for it._\n"
)

WORKLOAD_NAMES = {  # the long form of each is in METHOD_NOTES
    "W1": "create runs",
    "W2": "log_metric, one call a point",
    "W3": "batched metrics",
    "W4": "read a metric history",
    "W5": "search runs",
    "W6": "artifacts",
    "W7": "import",
    "W8": "peak memory",
}
MB = 1024 * 1024

# Workload sizes per mode and system. W8 has no run of its own: it reads the memory figures of W3 and W6.
# MLflow runs smaller sizes (its rates are compared; W4/W5 times at a smaller size favour MLflow) so that
# the full run fits in 15 minutes: at the sizes MLflow alone took ~20 of 28 minutes on 2 cores.
FULL: dict[str, dict[str, dict[str, Any]]] = {
    "W1": {"labvault": {"n": 2000}, "mlflow": {"n": 200}},
    "W2": {"labvault": {"n": 100_000}, "mlflow": {"n": 1000}},
    "W3": {"labvault": {"n": 2_000_000, "batch": 1000, "keys": 10},
           "mlflow": {"n": 20_000, "batch": 1000, "keys": 10}},
    "W4": {"labvault": {"n": 1_000_000, "batch": 1000}, "mlflow": {"n": 20_000, "batch": 1000}},
    "W5": {"labvault": {"n": 10_000, "queries": 5}, "mlflow": {"n": 500, "queries": 5}},
    "W6": {"labvault": {"big_mb": 1024, "n_small": 5000, "small_size": 1024},
           "mlflow": {"big_mb": 1024, "n_small": 5000, "small_size": 1024}},
    "W7": {"labvault": {}, "mlflow": {}},
}
QUICK: dict[str, dict[str, dict[str, Any]]] = {
    "W1": {"labvault": {"n": 500}, "mlflow": {"n": 100}},
    "W2": {"labvault": {"n": 100_000}, "mlflow": {"n": 500}},
    "W3": {"labvault": {"n": 500_000, "batch": 1000, "keys": 10},
           "mlflow": {"n": 20_000, "batch": 1000, "keys": 10}},
    "W4": {"labvault": {"n": 1_000_000, "batch": 1000}, "mlflow": {"n": 20_000, "batch": 1000}},
    "W5": {"labvault": {"n": 1000, "queries": 5}, "mlflow": {"n": 200, "queries": 5}},
    "W6": {"labvault": {"big_mb": 100, "n_small": 500, "small_size": 1024},
           "mlflow": {"big_mb": 100, "n_small": 500, "small_size": 1024}},
    "W7": {"labvault": {}, "mlflow": {}},
}
REPEATS = {"full": 3, "quick": 1}
W7_SAMPLES = {"full": 3, "quick": 3}
TIMEOUT = {"full": 900, "quick": 120}


# -- targets -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One (system, store) column: which interpreter runs which workload script with which store name."""

    system: str  # "labvault" or "mlflow"
    store: str
    python: str
    script: Path

    @property
    def label(self) -> str:
        return f"{self.system}-{self.store}"

    @property
    def short(self) -> str:
        return self.store if self.system == "labvault" else f"mlflow-{self.store}"


def ensure_mlflow_python(log: Callable[[str], None], postgres: bool = False) -> str:
    """MLflow's interpreter, creating ``.bench/mlflow-venv`` with ``pip install mlflow`` if needed
    (plus ``psycopg[binary]``, MLflow's PostgreSQL driver, when ``postgres``)."""
    python = MLFLOW_VENV / "bin" / "python"
    if postgres and python.exists() and not _imports(str(python), "psycopg"):
        log("installing psycopg[binary] into the MLflow venv (MLflow's PostgreSQL driver)")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "psycopg[binary]"], check=True)
    if python.exists() and _imports(str(python), "mlflow"):
        return str(python)
    base = shutil.which("python3") or sys.executable
    log(f"creating {MLFLOW_VENV.relative_to(REPO)} and installing {MLFLOW_SPEC} (a few minutes, once)")
    MLFLOW_VENV.parent.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        subprocess.run([base, "-m", "venv", str(MLFLOW_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-U", "pip"], check=False)
    subprocess.run([str(python), "-m", "pip", "install", "-q", MLFLOW_SPEC,
                    *(["psycopg[binary]"] if postgres else [])], check=True)
    if not _imports(str(python), "mlflow"):
        raise SystemExit(f"installed {MLFLOW_SPEC} into {MLFLOW_VENV} but `import mlflow` still fails")
    return str(python)


def _imports(python: str, module: str) -> bool:
    done = subprocess.run([python, "-c", f"import {module}"], capture_output=True, check=False)
    return done.returncode == 0


# -- running measurements ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """The samples of one (target, workload), or why there are none."""

    samples: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def median(self, fn: Callable[[dict[str, Any]], float | None]) -> float | None:
        values = []
        for sample in self.samples:
            try:
                value = fn(sample)
            except (KeyError, TypeError, ZeroDivisionError):
                value = None
            if value is not None and not math.isnan(value):
                values.append(value)
        return statistics.median(values) if values else None


class Runner:
    def __init__(self, args: argparse.Namespace, targets: list[Target], session: Path) -> None:
        self.args = args
        self.mode = "quick" if args.quick else "full"
        self.sizes = QUICK if args.quick else FULL
        self.targets = targets
        self.session = session
        self.counter = 0
        self.outcomes: dict[tuple[str, str], Outcome] = {}
        self.big_files: dict[int, Path] = {}

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def big_file(self, size_mb: int) -> Path:
        """The large-artifact source: random bytes written once per session, shared by every system."""
        if size_mb not in self.big_files:
            path = self.session / f"big-{size_mb}MB.bin"
            self.log(f"writing the {size_mb} MB artifact source {path}")
            block = os.urandom(MB)
            with open(path, "wb") as fh:
                for i in range(size_mb):
                    # vary every block a little so no layer can deduplicate or compress it
                    fh.write(i.to_bytes(8, "little") + block[8:])
            # Warm-up, untimed: on a VM the first touch of never-used guest memory is ~10x slower than its
            # reuse, which would bill whichever system runs first; copy the file twice so page-cache pages
            # exist, then drop the copies.
            for n in range(2):
                shutil.copyfile(path, self.session / f"warmup-{n}.bin")
            for n in range(2):
                os.unlink(self.session / f"warmup-{n}.bin")
            os.sync()
            self.big_files[size_mb] = path
        return self.big_files[size_mb]

    def config_for(self, workload: str, target: Target) -> dict[str, Any]:
        cfg = dict(self.sizes[workload][target.system])
        if workload == "W6":
            cfg["big_src"] = str(self.big_file(int(cfg["big_mb"])))
        return cfg

    def run_all(self, workloads: list[str]) -> None:
        started = time.perf_counter()
        for workload in workloads:
            if workload == "W8":
                continue
            repeats = W7_SAMPLES[self.mode] if workload == "W7" else self.args.repeats or REPEATS[self.mode]
            for r in range(repeats):
                for target in self.targets:
                    self.measure(workload, target, r, repeats)
        self.log(f"all measurements took {time.perf_counter() - started:.0f} s")

    def measure(self, workload: str, target: Target, r: int, repeats: int) -> None:
        outcome = self.outcomes.setdefault((target.label, workload), Outcome())
        cfg = self.config_for(workload, target)
        outcome.config = cfg
        self.counter += 1
        tmp = self.session / f"{self.counter:04d}-{target.label}-{workload}"
        tmp.mkdir()
        cache = self.session / "cache" / f"{target.label}-{workload}"
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [target.python, str(target.script), workload, "--store", target.store, "--tmp", str(tmp),
               "--cache", str(cache), "--config", json.dumps(cfg)]
        env = dict(os.environ)
        env.pop("LABVAULT_URI", None)
        env.pop("MLFLOW_TRACKING_URI", None)
        if target.system == "mlflow":
            env.update(MLFLOW_ALLOW_FILE_STORE="true", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
        t0 = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=env,
                                  timeout=self.args.timeout or TIMEOUT[self.mode], check=False)
        except subprocess.TimeoutExpired:
            outcome.errors.append(f"timed out after {self.args.timeout or TIMEOUT[self.mode]} s")
            self.log(f"[{workload} {r + 1}/{repeats}] {target.label}: TIMEOUT")
            shutil.rmtree(tmp, ignore_errors=True)
            return
        wall = time.perf_counter() - t0
        shutil.rmtree(tmp, ignore_errors=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
        if done.returncode != 0 or not lines:
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            outcome.errors.append(f"exit {done.returncode}: {tail}")
            self.log(f"[{workload} {r + 1}/{repeats}] {target.label}: FAILED ({tail})")
            if self.args.verbose:
                self.log(done.stderr)
            return
        sample = json.loads(lines[-1][len(RESULT_PREFIX):])
        outcome.samples.append(sample)
        self.log(f"[{workload} {r + 1}/{repeats}] {target.label}: {summarise(workload, sample)} "
                 f"({wall:.1f} s wall)")


def summarise(workload: str, s: dict[str, Any]) -> str:
    if workload in ("W1", "W2", "W3", "W4"):
        return f"{fmt_num(s['rate'])}/s, {fmt_secs(s['seconds'])} for {s['n']:,}"
    if workload == "W5":
        return (f"search {fmt_secs(s['search_seconds'])}, list {fmt_secs(s['list_seconds'])} "
                f"at {s['n']:,} runs")
    if workload == "W6":
        return (f"up {fmt_num(s['big_bytes'] / MB / s['up_seconds'])} MB/s, "
                f"down {fmt_num(s['big_bytes'] / MB / s['down_seconds'])} MB/s, "
                f"small {fmt_num(s['n_small'] / s['small_up_seconds'])} files/s")
    if workload == "W7":
        return f"{fmt_secs(s['seconds'])}, {s['rss_mb']:.0f} MB"
    return json.dumps(s)


# -- the table -----------------------------------------------------------------------------------------------
def fmt_num(x: float | None) -> str:
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_secs(x: float | None) -> str:
    if x is None:
        return "—"
    if x < 1:
        return f"{x * 1000:.1f} ms"
    return f"{x:.2f} s"


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}x" if x >= 100 else f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


@dataclass
class Row:
    """One line of the table: how to read a figure from a sample and what its budget is."""

    workload: str
    label: str
    source: str  # the workload whose samples hold the figure
    value: Callable[[dict[str, Any]], float | None]
    fmt: Callable[[float | None], str]
    higher_is_better: bool
    ratio: bool = True
    budget: str = ""
    #: (labvault figure, {mlflow store: figure}, labvault outcome) -> holds?  None = cannot be judged
    check: Callable[[float, dict[str, float], Outcome], bool | None] | None = None
    extra: Callable[[Outcome], str] | None = None  # e.g. "% of raw" appended to each cell


def rate_unit(unit: str) -> Callable[[float | None], str]:
    return lambda x: "—" if x is None else f"{fmt_num(x)} {unit}"


def mb(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f} MB" if x >= 10 else f"{x:.1f} MB"


def _best(ml: dict[str, float]) -> float | None:
    return max(ml.values()) if ml else None


def _times_best(factor: float) -> Callable[[float, dict[str, float], Outcome], bool | None]:
    def check(lv: float, ml: dict[str, float], _: Outcome) -> bool | None:
        best = _best(ml)
        return None if best is None else lv >= factor * best
    return check


def _pct_raw(num: str, raw: str) -> Callable[[Outcome], str]:
    def extra(o: Outcome) -> str:
        pct = o.median(lambda s: s[raw] / s[num] * 100)
        return "" if pct is None else f" ({pct:.0f}% raw)"
    return extra


def _below(limit: float, size: int) -> Callable[[float, dict[str, float], Outcome], bool | None]:
    """An absolute time budget stated for ``size`` items: below it, or n/a if measured at a smaller size."""
    def check(lv: float, ml: dict[str, float], o: Outcome) -> bool | None:
        if lv >= limit:
            return False
        return True if int(o.config.get("n", size)) >= size else None
    return check


def rows() -> list[Row]:
    def pct_check(num: str, raw: str) -> Callable[[float, dict[str, float], Outcome], bool | None]:
        return lambda lv, ml, o: (lambda p: None if p is None else p >= 0.9)(
            o.median(lambda s: s[raw] / s[num]))

    return [
        Row("W1", "runs/s (10 params + 5 tags, finished)", "W1", lambda s: s["rate"], rate_unit("runs/s"),
            True,
            budget=">= 10x MLflow's best", check=_times_best(10)),
        Row("W2", "points/s incl. final flush", "W2", lambda s: s["rate"], rate_unit("pts/s"), True,
            budget=">= 300,000 pts/s and >= 200x MLflow's best",
            check=lambda lv, ml, o: lv >= 300_000 and (_best(ml) is None or lv >= 200 * (_best(ml) or 0))),
        Row("W3", "points/s, 1,000 a batch, 10 keys", "W3", lambda s: s["rate"], rate_unit("pts/s"), True,
            budget=">= 1,000,000 pts/s", check=lambda lv, ml, o: lv >= 1_000_000),
        Row("W4", "points/s", "W4", lambda s: s["rate"], rate_unit("pts/s"), True),
        Row("W4", "seconds (labvault 1M points)", "W4", lambda s: s["seconds"], fmt_secs, False, ratio=False,
            budget="< 100 ms for 1,000,000 points", check=_below(0.1, 1_000_000)),
        Row("W5", "filtered, ordered search", "W5", lambda s: s["search_seconds"], fmt_secs, False,
            budget="< 20 ms at 10,000 runs", check=_below(0.02, 10_000)),
        Row("W5", "list all runs into a DataFrame", "W5", lambda s: s["list_seconds"], fmt_secs, False,
            budget="< 300 ms at 10,000 runs", check=_below(0.3, 10_000)),
        Row("W6", "large artifact up", "W6", lambda s: s["big_bytes"] / MB / s["up_seconds"],
            rate_unit("MB/s"), True, budget=">= 90% of raw copy",
            check=pct_check("up_seconds", "raw_up_seconds"),
            extra=_pct_raw("up_seconds", "raw_up_seconds")),
        Row("W6", "large artifact down", "W6", lambda s: s["big_bytes"] / MB / s["down_seconds"],
            rate_unit("MB/s"), True, budget=">= 90% of raw copy",
            check=pct_check("down_seconds", "raw_down_seconds"),
            extra=_pct_raw("down_seconds", "raw_down_seconds")),
        Row("W6", "raw shutil.copyfile (baseline)", "W6", lambda s: s["big_bytes"] / MB / s["raw_up_seconds"],
            rate_unit("MB/s"), True, ratio=False),
        Row("W6", "raw copy + fsync (durable baseline)", "W6",
            lambda s: s["big_bytes"] / MB / s["raw_up_fsync_seconds"], rate_unit("MB/s"), True, ratio=False,
            extra=_pct_raw("raw_up_fsync_seconds", "raw_up_seconds")),
        Row("W6", "raw copy + sha256, 1 MiB chunks (floor)", "W6",
            lambda s: s["big_bytes"] / MB / s["raw_hashed_copy_seconds"], rate_unit("MB/s"), True,
            ratio=False,
            extra=_pct_raw("raw_hashed_copy_seconds", "raw_up_seconds")),
        Row("W6", "sha256 of the same file alone (no copy)", "W6",
            lambda s: s["big_bytes"] / MB / s["raw_sha256_seconds"], rate_unit("MB/s"), True,
            ratio=False, extra=_pct_raw("raw_sha256_seconds", "raw_up_seconds")),
        Row("W6", "1 KB artifacts up", "W6", lambda s: s["n_small"] / s["small_up_seconds"],
            rate_unit("files/s"), True, budget=">= 10,000 files/s", check=lambda lv, ml, o: lv >= 10_000,
            extra=_pct_raw("small_up_seconds", "raw_small_up_seconds")),
        Row("W6", "1 KB artifacts down", "W6", lambda s: s["n_small"] / s["small_down_seconds"],
            rate_unit("files/s"), True, extra=_pct_raw("small_down_seconds", "raw_small_down_seconds")),
        Row("W7", "import seconds", "W7", lambda s: s["seconds"], fmt_secs, False,
            budget="< 150 ms", check=lambda lv, ml, o: lv < 0.15),
        Row("W7", "RSS after import", "W7", lambda s: s["rss_mb"], mb, False,
            budget="< 60 MB", check=lambda lv, ml, o: lv < 60),
        Row("W7", "first use: open new store, 1 run, 1 metric", "W7", lambda s: s["first_use_seconds"],
            fmt_secs, False),
        Row("W7", "RSS after first use", "W7", lambda s: s["first_use_rss_mb"], mb, False),
        Row("W8", "peak RSS over baseline in W3", "W3", lambda s: s["peak_over_base_mb"], mb, False,
            ratio=False, budget="< 200 MB", check=lambda lv, ml, o: lv < 200),
        Row("W8", "peak RSS over baseline in W6", "W6", lambda s: s["peak_over_base_mb"], mb, False,
            ratio=False, budget="< 200 MB", check=lambda lv, ml, o: lv < 200),
    ]


def sizes_text(workload: str, runner: Runner, lv: list[Target], ml: list[Target]) -> str:
    def size(target: Target) -> str | None:
        cfg = runner.outcomes.get((target.label, workload), Outcome()).config
        if "n" in cfg:
            return f"{cfg['n']:,}"
        if "big_mb" in cfg:
            return f"{cfg['big_mb']:,} MB + {cfg['n_small']:,} x {cfg['small_size'] // 1024} KB"
        return None

    lv_size = next((s for s in map(size, lv) if s), None)
    ml_size = next((s for s in map(size, ml) if s), None)
    if lv_size is None and ml_size is None:
        return ""
    if workload == "W6" or lv_size == ml_size or ml_size is None:
        return lv_size or ""
    return f"{lv_size} / {ml_size}"


@dataclass(frozen=True)
class Family:
    """A group of stores compared in one table, with the budgets that apply to them."""

    title: str
    lv_stores: tuple[str, ...]
    ml_stores: tuple[str, ...]
    server: bool = False
    http: bool = False


SERVER_STORES = ("postgresql", "redis")
HTTP_STORES = ("http",)
FAMILIES = (
    Family("Local stores", ("file", "sqlite", "memory"), ("sqlite", "file")),
    Family("Server stores", SERVER_STORES, ("postgresql",), server=True),
    Family("Through the labvault server", HTTP_STORES, (), http=True),
)
FAMILY_NOTES = {
    "Server stores": "PostgreSQL 15 and Redis 7 on this machine (loopback). Budgets (issue 4): W1 and W5 at "
                     "least as good relative to MLflow-on-PostgreSQL as labvault-sqlite is to MLflow-sqlite "
                     "in the same run (n/a when the local stores were not run), W3 >= 300,000 points/s.",
    "Through the labvault server": (
        "`labvault.open(\"http://127.0.0.1:PORT\")` with a token against `labvault server` (uvicorn, a "
        "subprocess on loopback) over a store of its own ($LABVAULT_BENCH_HTTP_STORE, default sqlite; "
        "$LABVAULT_BENCH_HTTP_WORKERS workers, default 1); the client, the server and the store share this "
        "machine. Budget (issue 6): buffered metric logging rides the batch endpoints, W2 and W3 >= 100,000 "
        "points/s."),
}


Check = Callable[[float, dict[str, float], Outcome], bool | None]


def _relative_to_sqlite(runner: Runner, row: Row) -> Check:
    """Budget for server stores: their ratio to MLflow-postgresql >= labvault-sqlite's to MLflow-sqlite."""
    def check(lv: float, ml: dict[str, float], _: Outcome) -> bool | None:
        ref_lv = runner.outcomes.get(("labvault-sqlite", row.source), Outcome()).median(row.value)
        ref_ml = runner.outcomes.get(("mlflow-sqlite", row.source), Outcome()).median(row.value)
        pg = ml.get("postgresql")
        if not ref_lv or not ref_ml or not pg:
            return None
        ours, reference = (lv / pg, ref_lv / ref_ml) if row.higher_is_better else (pg / lv, ref_ml / ref_lv)
        return ours >= reference
    return check


def family_rows(family: Family, runner: Runner) -> list[Row]:
    """The table's rows: the local budgets, for server stores the issue-4 budgets, through the server
    issue 6's."""
    if family.http:
        out = []
        for row in rows():
            if row.workload in ("W2", "W3"):
                row.budget, row.check = ">= 100,000 pts/s", (lambda lv, ml, o: lv >= 100_000)
            elif row.workload != "W8":
                row.budget, row.check = "", None
            out.append(row)
        return out
    if not family.server:
        return rows()
    out = []
    for row in rows():
        if row.workload in ("W1", "W5") and row.check is not None:
            row.budget, row.check = "ratio >= sqlite's to MLflow-sqlite", _relative_to_sqlite(runner, row)
        elif row.workload == "W3":
            row.budget, row.check = ">= 300,000 pts/s", (lambda lv, ml, o: lv >= 300_000)
        elif row.workload != "W8":
            row.budget, row.check = "", None
        out.append(row)
    return out


def build_table(runner: Runner, workloads: list[str], family: Family, lv: list[Target],
                ml: list[Target]) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, failures) of one family's result table."""
    header = ["workload", "figure", "sizes (lv / mlflow)"]
    header += [f"labvault {t.store}" for t in lv] + [f"MLflow {t.store}" for t in ml]
    header += [f"{a.store} vs mlflow-{b.store}" for a in lv for b in ml]
    header += ["budget", "holds?"]
    out: list[list[str]] = []
    failures: list[str] = []
    for row in family_rows(family, runner):
        if row.workload not in workloads or (row.workload == "W8" and row.source not in workloads):
            continue
        figures: dict[str, float | None] = {}
        cells = [f"{row.workload} {WORKLOAD_NAMES[row.workload]}" if not out or out[-1][0].split()[0]
                 != row.workload else row.workload, row.label, sizes_text(row.source, runner, lv, ml)]
        for t in lv + ml:
            o = runner.outcomes.get((t.label, row.source), Outcome())
            value = o.median(row.value)
            figures[t.label] = value
            if value is None:
                cells.append("error: " + o.errors[-1][:60] if o.errors else "—")
            else:
                cells.append(row.fmt(value) + (row.extra(o) if row.extra else ""))
        for a in lv:
            for b in ml:
                x, y = figures[a.label], figures[b.label]
                if not row.ratio or x is None or y is None or x <= 0 or y <= 0:
                    cells.append("—")
                else:
                    cells.append(fmt_ratio(x / y if row.higher_is_better else y / x))
        cells.append(row.budget or "—")
        verdicts = []
        if row.check is not None:
            ml_figs = {t.store: v for t in ml if (v := figures[t.label]) is not None}
            for a in lv:
                value = figures[a.label]
                o = runner.outcomes.get((a.label, row.source), Outcome())
                verdict = None if value is None else row.check(value, ml_figs, o)
                word = "n/a" if verdict is None else "PASS" if verdict else "FAIL"
                if value is None:
                    word = "FAIL" if o.errors else "n/a"
                verdicts.append(f"{a.store} {word}")
                if word == "FAIL":
                    failures.append(f"{row.workload} {row.label} on {a.store}: "
                                    f"{cells[3 + lv.index(a)]} (budget {row.budget})")
        cells.append(", ".join(verdicts) if verdicts else "—")
        out.append(cells)
    return header, out, failures


def print_table(header: list[str], body: list[list[str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    width = max(shutil.get_terminal_size((200, 40)).columns, 200)
    table = Table(title=title, show_lines=False, header_style="bold")
    for h in header:
        table.add_column(h, overflow="fold")
    for cells in body:
        style = "red" if "FAIL" in cells[-1] else None
        table.add_row(*cells, style=style)
    Console(width=width).print(table)


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


# -- environment report --------------------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    info = {"nproc": str(os.cpu_count()), "platform": platform.platform()}
    try:
        with open("/proc/meminfo") as fh:
            kb = int(next(ln for ln in fh if ln.startswith("MemTotal:")).split()[1])
        info["memory"] = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        info["memory"] = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next(ln for ln in fh if ln.startswith("model name")).split(":", 1)[1].strip()
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or "?"
    return info


_VERSIONS = """\
import importlib.metadata as m, json, sys
out = {"python": sys.version.split()[0]}
for p in sys.argv[1:]:
    try:
        out[p] = m.version(p)
    except m.PackageNotFoundError:
        out[p] = "-"
print(json.dumps(out))
"""


def versions(python: str, packages: list[str]) -> dict[str, str]:
    done = subprocess.run([python, "-c", _VERSIONS, *packages], capture_output=True, text=True, check=False)
    try:
        result: dict[str, str] = json.loads(done.stdout)
        return result
    except json.JSONDecodeError:
        return {}


def keep_profile_section(path: Path) -> str:
    """The lead's "Profile-driven pass" section of an existing RESULTS.md, so re-runs do not erase it."""
    if path.exists():
        text = path.read_text()
        if PROFILE_HEADING in text:
            return text[text.index(PROFILE_HEADING):].rstrip() + "\n"
    return f"{PROFILE_HEADING}\n\n{PROFILE_PLACEHOLDER}"


def write_results(path: Path, *, args: argparse.Namespace, command: str,
                  tables: list[tuple[str, list[str], list[list[str]], list[str]]], runner: Runner,
                  lv_versions: dict[str, str], ml_versions: dict[str, str], elapsed: float) -> None:
    m = machine_info()
    mode = "quick" if args.quick else "full"
    repeats = args.repeats or REPEATS[mode]
    lines = [
        "# labvault benchmark results",
        "",
        f"Generated by `benchmarks/` on {time.strftime('%Y-%m-%d %H:%M %Z')} in {elapsed / 60:.1f} minutes "
        f"({mode} mode). Re-run with:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, {m['platform']}",
        f"- labvault {lv_versions.get('labvault', '?')} (git {git_revision()}), "
        f"python {lv_versions.get('python')}, numpy {lv_versions.get('numpy')}, "
        f"sqlalchemy {lv_versions.get('sqlalchemy')}, pandas {lv_versions.get('pandas')}",
    ]
    if ml_versions:
        lines.append(f"- mlflow {ml_versions.get('mlflow')} in `.bench/mlflow-venv` (python "
                     f"{ml_versions.get('python')}, numpy {ml_versions.get('numpy')}, sqlalchemy "
                     f"{ml_versions.get('sqlalchemy')}, pandas {ml_versions.get('pandas')})")
    lines += [
        f"- every figure is the median of {repeats} repeats (W7: {W7_SAMPLES[mode]} fresh processes; "
        "W5: each repeat is itself the median of 5 queries), each repeat a fresh subprocess on a fresh "
        "store; order per repeat: " + ", ".join(t.label for t in runner.targets),
        "",
        "## Results",
        "",
        "Ratios are labvault's figure against each MLflow store, oriented so that **> 1 means labvault is "
        "better** (rates: labvault / MLflow; times and memory: MLflow / labvault). Where MLflow gets a "
        "smaller size (the *sizes* column, labvault / MLflow), rates are compared; W5 times compare labvault "
        "at its size with MLflow at its smaller size, which favours MLflow.",
        "",
    ]
    for title, header, body, failures in tables:
        lines += [f"### {title}", "", FAMILY_NOTES.get(title, ""), "", markdown_table(header, body),
                  f"Budgets that do not hold ({title.lower()}):", ""]
        lines += [f"- {f}" for f in failures] or ["- none"]
        lines.append("")
    lines += ["## How each workload is measured", "", METHOD_NOTES, keep_profile_section(path)]
    path.write_text("\n".join(lines))


METHOD_NOTES = """\
- **W1** labvault: `exp.start_run(params=10, tags=5)` then `run.end()` per run, `vault.close()` inside the
  clock. MLflow (its fastest public path): `MlflowClient.create_run` + `log_batch(params, tags)` +
  `set_terminated`.
- **W2** labvault: `run.log_metric("loss", v, step)` per point, then `run.end()` + `vault.close()` (the final
  flush) inside the clock. MLflow: `client.log_metric(run_id, "loss", v, step=i)` per point (synchronous).
- **W3** labvault: `run.log_metric_series(key, values[1000], steps[1000])` round-robin over 10 keys, then
  `run.end()` + `vault.close()`. MLflow: `client.log_batch(run_id, metrics=[1,000 Metric])` per batch, the
  `Metric` objects built before the clock starts.
- **W4** the history is written in 1,000-point batches, the store is closed and reopened, then one
  `run.metric_history("loss")` (numpy arrays) / `client.get_metric_history(run_id, "loss")` is timed.
- **W5** the store (10,000 labvault runs / 2,000 MLflow runs with 10 params, 5 tags, metrics `acc` and `loss`)
  is built once per session and not timed; each repeat opens it in a fresh process and times 5 x
  `vault.search_runs("bench", filter="params.optimizer = 'adam' and metrics.acc > 0.5",
  order_by=["metrics.loss"])` and 5 x `vault.search_runs("bench").to_frame()`; MLflow:
  `client.search_runs([exp], filter_string=..., order_by=["metrics.loss"])` and `mlflow.search_runs([exp])`.
- **W6** one random file up (`run.log_artifact(key, path)` / `client.log_artifact(run_id, path)`) and down
  to a file (`run.download_artifact(key, path)`: a kernel copy while a second thread verifies the sha256 /
  `client.download_artifacts`), then the
  1 KB files one by one (labvault from bytes, MLflow from files written before the clock) and back
  (labvault: `run.get_artifact(key)` each; MLflow: one `download_artifacts(run_id, "small")` for the whole
  folder, its fastest way). "% raw" is the system's throughput as a share of the raw baseline measured in
  the same process just before: `shutil.copyfile` of the same file (a kernel copy: no hashing, no fsync)
  for the large file, plain `open().write()` / `.read()` of the same payloads for the small ones.
  labvault's file blob store also hashes (sha256) and fsyncs, which the raw copy does not; the "raw copy +
  sha256" row (labvault processes only) is a plain Python read / sha256 / write loop of the same file, the
  floor for any content-addressed store written in Python, shown as % of the kernel copy; "sha256 ... alone"
  is `hashlib.file_digest` of the file with no copy at all, the ceiling of any store that names (up) or
  verifies (down) its blobs by sha256; and "raw copy + fsync" is the kernel copy made durable. `os.sync()`
  runs (untimed) before every timed section of W6 so that one section's pending writeback does not throttle
  the next.
- **W7** `python -c "import time; t0 = time.perf_counter(); import labvault; ..."`: the import alone in a
  fresh interpreter, and VmRSS right after (the bare interpreter is ~10 MB of it). "first use" (no budget)
  is timed next in the same process: open a new store, start a run, log one metric, end it, close: lazy
  imports (numpy, SQLAlchemy) and MLflow's schema creation land there.
- **W8** ru_maxrss at the end of W3 / W6 minus VmRSS just before the timed part (after imports, store open
  and the workload's input data are in memory).
"""


# -- main ----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from benchmarks.lv_workloads import BACKENDS

    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 1 repeat: a smoke check in < 2 minutes")
    p.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W3 (default: all W1-W8)")
    p.add_argument("--backends", default="file,sqlite",
                   help=f"labvault backends, comma-separated (known: {', '.join(BACKENDS)})")
    p.add_argument("--mlflow-stores", default="sqlite,file",
                   help="MLflow stores to compare with (sqlite, file, postgresql); '' for none")
    p.add_argument("--servers", action="store_true",
                   help="add the server-backed stores: labvault postgresql + redis and MLflow postgresql "
                        "(PostgreSQL on LABVAULT_BENCH_PG=postgres@127.0.0.1:5432, Redis on "
                        "LABVAULT_BENCH_REDIS=127.0.0.1:6379/0); they get a table of their own")
    p.add_argument("--http", action="store_true",
                   help="add labvault-http: `labvault server` on loopback over a store of its own "
                        "(LABVAULT_BENCH_HTTP_STORE=sqlite|file|postgresql, default sqlite; "
                        "LABVAULT_BENCH_HTTP_WORKERS, default 1), reached with a token; a table of its own")
    p.add_argument("--no-mlflow", action="store_true", help="labvault only (no MLflow venv needed)")
    p.add_argument("--repeats", type=int, default=0, help="override the number of repeats (full 3, quick 1)")
    p.add_argument("--timeout", type=int, default=0,
                   help="seconds per measurement (default full 900, quick 120)")
    p.add_argument("--output", type=Path, default=None,
                   help="results file (default benchmarks/RESULTS.md; --quick: .bench/RESULTS-quick.md)")
    p.add_argument("--tmpdir", type=Path, default=None,
                   help="parent directory of the stores (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the temporary stores")
    p.add_argument("-v", "--verbose", action="store_true", help="print the stderr of failed measurements")
    args = p.parse_args(argv)
    known = [*FULL, "W8"]
    args.workloads = [w.strip().upper() for w in args.only.split(",") if w.strip()] or known
    if bad := [w for w in args.workloads if w not in known]:
        p.error(f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(known)}")
    args.workloads = [w for w in known if w in args.workloads]
    if "W8" in args.workloads and "W3" not in args.workloads and "W6" not in args.workloads:
        args.workloads = sorted({*args.workloads, "W3", "W6"}, key=known.index)
    args.backend_list = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.servers:
        args.backend_list += [b for b in SERVER_STORES if b not in args.backend_list]
        if not args.no_mlflow and "postgresql" not in args.mlflow_stores:
            args.mlflow_stores += ",postgresql"
    if args.http and "http" not in args.backend_list:
        args.backend_list.append("http")
    if bad := [b for b in args.backend_list if b not in BACKENDS]:
        p.error(f"unknown labvault backend(s) {', '.join(bad)}; known: {', '.join(BACKENDS)}")
    args.ml_stores = [] if args.no_mlflow else [s.strip() for s in args.mlflow_stores.split(",") if s.strip()]
    if bad := [s for s in args.ml_stores if s not in ("sqlite", "file", "postgresql")]:
        p.error(f"unknown MLflow store(s) {', '.join(bad)}; known: sqlite, file, postgresql")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    if not _imports(sys.executable, "labvault"):
        raise SystemExit(f"{sys.executable} cannot import labvault: run with .venv/bin/python -m benchmarks")
    lv_script = BENCH_DIR / "lv_workloads.py"
    targets = [Target("labvault", b, sys.executable, lv_script) for b in args.backend_list]
    ml_versions: dict[str, str] = {}
    if args.ml_stores:
        ml_python = ensure_mlflow_python(lambda t: print(t, file=sys.stderr, flush=True),
                                         postgres="postgresql" in args.ml_stores)
        targets += [Target("mlflow", s, ml_python, BENCH_DIR / "mlflow_workloads.py") for s in args.ml_stores]
        ml_versions = versions(ml_python, ["mlflow", "numpy", "sqlalchemy", "pandas"])
    lv_versions = versions(sys.executable, ["labvault", "numpy", "sqlalchemy", "pandas"])

    session = Path(tempfile.mkdtemp(prefix="labvault-bench-", dir=args.tmpdir))
    session_id = os.urandom(4).hex()
    os.environ["LABVAULT_BENCH_SESSION"] = session_id  # names the databases / key prefixes it creates
    runner = Runner(args, targets, session)
    started = time.perf_counter()
    try:
        runner.run_all(args.workloads)
    finally:
        if not args.keep:
            shutil.rmtree(session, ignore_errors=True)
            if any(t.store in (*SERVER_STORES, *HTTP_STORES) for t in targets):
                sys.path.insert(0, str(BENCH_DIR))
                from _benchcommon import drop_session_stores

                drop_session_stores(session_id)
    elapsed = time.perf_counter() - started

    mode = "quick" if args.quick else "full"
    tables: list[tuple[str, list[str], list[list[str]], list[str]]] = []
    for family in FAMILIES:
        lv = [t for t in targets if t.system == "labvault" and t.store in family.lv_stores]
        ml = [t for t in targets if t.system == "mlflow" and t.store in family.ml_stores]
        if not lv:
            continue
        header, body, failures = build_table(runner, args.workloads, family, lv, ml)
        tables.append((family.title, header, body, failures))
        print_table(header, body, f"{family.title}: labvault vs MLflow ({mode} mode, medians; "
                    "ratios > 1 = labvault better)")
        if failures:
            print("\nbudgets that do not hold:\n  " + "\n  ".join(failures))

    output = args.output or (REPO / ".bench" / "RESULTS-quick.md" if args.quick else BENCH_DIR / "RESULTS.md")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_results(output, args=args, command=command, tables=tables, runner=runner,
                  lv_versions=lv_versions, ml_versions=ml_versions, elapsed=elapsed)
    raw = REPO / ".bench" / f"results-{time.strftime('%Y%m%d-%H%M%S')}-{mode}.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    dump = {f"{label} {workload}": {"config": o.config, "samples": o.samples, "errors": o.errors}
            for (label, workload), o in runner.outcomes.items()}
    raw.write_text(json.dumps(dump, indent=1))
    print(f"\nwrote {output} (raw samples: {raw})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
