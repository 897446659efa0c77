"""An experiment as tables: ``exp.history()`` (daskperiment's ``get_history``: one row per run) and
``exp.metric_frame(key)`` (its ``load_metric``: one column per run, indexed by step).

pandas is imported when a table is asked for (extra ``[pandas]``), never by ``import labvault``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from labvault.domain import RunInfo
from labvault.domain import validation as v
from labvault.errors import UnsupportedOperationError

if TYPE_CHECKING:
    import pandas as pd

    from labvault.store.abc import Backend

__all__ = ["history_frame", "metric_frame"]


def _pandas() -> Any:
    try:
        import pandas  # lazy: pandas (extra [pandas]) costs ~250 ms at import
    except ImportError as exc:
        raise UnsupportedOperationError(
            "this table needs pandas: pip install 'labvault[pandas]' (or pip install pandas)") from exc
    return pandas


def history_frame(runs: Sequence[RunInfo]) -> pd.DataFrame:
    """One row per run, indexed by run number: ``status``, ``duration`` (seconds; NaN while running),
    ``seed`` (the ``seed`` param when there is one), then ``params.*`` and ``results.*``."""
    pandas = _pandas()
    ordered = sorted(runs, key=lambda r: r.number)
    rows: dict[str, list[Any]] = {
        "name": [r.name for r in ordered],
        "status": [r.status for r in ordered],
        "duration": [float("nan") if r.end_time is None else r.end_time - r.start_time for r in ordered],
        "seed": [r.params.get("seed") for r in ordered],
    }
    n = len(ordered)
    extra: dict[str, list[Any]] = {}
    for prefix in ("params", "results"):
        for row, info in enumerate(ordered):
            for key, value in getattr(info, prefix).items():
                extra.setdefault(f"{prefix}.{key}", [None] * n)[row] = value
    rows.update({name: extra[name] for name in sorted(extra)})
    frame: pd.DataFrame = pandas.DataFrame(rows, index=pandas.Index([r.number for r in ordered], name="run"))
    frame["duration"] = frame["duration"].astype("float64")
    return frame


def metric_frame(backend: Backend, runs: Sequence[RunInfo], key: str) -> pd.DataFrame:
    """The metric ``key`` of every run that logged it: index ``step``, one float column per run number
    (NaN where a run has no point at that step; the last value logged at a step wins)."""
    v.validate_key(key, "metric key")
    pandas = _pandas()
    columns = {}
    for info in sorted(runs, key=lambda r: r.number):
        if key not in info.metrics:
            continue
        series = backend.metric_history(info.id, key)
        column = pandas.Series(series.values, index=pandas.Index(series.steps, name="step"), dtype="float64")
        columns[info.number] = column[~column.index.duplicated(keep="last")]
    if not columns:
        empty: pd.DataFrame = pandas.DataFrame(index=pandas.Index([], name="step", dtype="int64"),
                                               dtype="float64")
        return empty
    frame: pd.DataFrame = pandas.concat(columns, axis=1).sort_index()
    frame.columns.name = "run"
    frame.index.name = "step"
    return frame
