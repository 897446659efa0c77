"""labvault's benchmark suite: the same workloads on labvault and on MLflow, side by side.

Run it with ``python -m benchmarks [--quick] [--only W1,W3] [--backends file,sqlite]`` (``make bench`` /
``make bench-quick``). The driver (``benchmarks/__main__.py``) creates MLflow's own virtualenv in
``.bench/mlflow-venv`` when missing, runs every (system, store, workload) measurement in a fresh subprocess
(``lv_workloads.py`` in this interpreter, ``mlflow_workloads.py`` in MLflow's), prints one table and writes
``benchmarks/RESULTS.md``.

Nothing here imports labvault at module level: the workload scripts import it inside the measured code.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

#: Line prefix a workload subprocess prints before its JSON result.
RESULT_PREFIX = "BENCH_RESULT "


def git_revision() -> str:
    """The repository's short HEAD commit, with " + uncommitted changes" when the work tree is dirty."""
    def git(*a: str) -> str:
        done = subprocess.run(["git", *a], cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                              text=True, check=False)
        return done.stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "?"
    return rev + (" + uncommitted changes" if git("status", "--porcelain") else "")
