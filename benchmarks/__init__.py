"""labvault's benchmark suite: the same workloads on labvault and on MLflow, side by side.

Run it with ``python -m benchmarks [--quick] [--only W1,W3] [--backends file,sqlite]`` (``make bench`` /
``make bench-quick``). The driver (``benchmarks/__main__.py``) creates MLflow's own virtualenv in
``.bench/mlflow-venv`` when missing, runs every (system, store, workload) measurement in a fresh subprocess
(``lv_workloads.py`` in this interpreter, ``mlflow_workloads.py`` in MLflow's), prints one table and writes
``benchmarks/RESULTS.md``.

Nothing here imports labvault at module level: the workload scripts import it inside the measured code.
"""

from __future__ import annotations

#: Line prefix a workload subprocess prints before its JSON result.
RESULT_PREFIX = "BENCH_RESULT "
