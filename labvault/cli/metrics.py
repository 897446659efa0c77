"""``labvault metrics RUN_ID [KEY]``: a run's metrics (key, latest value, points, last step), or one
metric's history as a table, CSV or JSON lines."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from labvault.cli.common import UriOption, err, find_run, open_vault, out
from labvault.cli.format import dumps, fmt_number, fmt_time, iso_utc, write_csv
from labvault.errors import NotFoundError

if TYPE_CHECKING:
    from labvault.client.run import Run

__all__ = ["metrics"]

#: Points of a history the table shows by default (the last ones); CSV and JSON give every point.
DEFAULT_POINTS = 50


def metrics(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", show_default=False,
                                          help="The run's id, or a unique prefix of it (4+ characters).")],
    key: Annotated[str | None, typer.Argument(metavar="KEY", show_default=False,
                                              help="A metric key, e.g. val_loss (default: list the keys).")]
    = None,
    uri: UriOption = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=0, metavar="N", show_default=False,
                                 help=f"Show the last N points (0: all; default {DEFAULT_POINTS} in the "
                                 "table, all with --csv or --json).")
    ] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV: step,value,timestamp (ISO 8601 UTC).")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per point.")] = False,
) -> None:
    """Show a run's metrics, or one metric's history (step, value, time).

    Example: labvault metrics 3f2a9c1e val_loss --csv > val_loss.csv
    """
    if as_csv and as_json:
        raise typer.BadParameter("choose one of --json and --csv")
    form = "csv" if as_csv else "json" if as_json else "table"
    with open_vault(ctx, uri, read_only=True) as vault:
        run = find_run(vault, run_id)
        if key is None:
            _print_keys(run, form)
        else:
            _print_history(run, key, form, limit)


def _caption(run: Run) -> str:
    return f"run {run.id[:8]} ({run.experiment.name} #{run.number})"


def _print_keys(run: Run, form: str) -> None:
    """Each metric of the run with its latest value, number of points and last step."""
    latest = run.info.metrics
    rows = []
    for k in sorted(latest):
        steps = run.metric_history(k).steps
        rows.append((k, latest[k], len(steps), int(steps[-1]) if len(steps) else None))
    if form == "csv":
        write_csv(["key", "latest", "points", "last_step"], rows)
    elif form == "json":
        for k, value, points, last in rows:
            typer.echo(dumps({"key": k, "latest": value, "points": points, "last_step": last}))
    elif not rows:
        out().print(Text(f"{_caption(run)} has no metrics", style="dim"))
    else:
        table = Table(title="metrics", caption=_caption(run))
        for column in ("key", "latest", "points", "last step"):
            table.add_column(column, justify="left" if column == "key" else "right")
        for k, value, points, last in rows:
            table.add_row(Text(k), fmt_number(value), str(points), "-" if last is None else str(last))
        out().print(table)


def _print_history(run: Run, key: str, form: str, limit: int | None) -> None:
    """One metric's points (the last ``limit``; by default 50 in a table, all as CSV or JSON)."""
    known = sorted(run.info.metrics)
    if key not in known:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
        hint = (f"did you mean {', '.join(close)}?" if close else
                f"its metrics: {', '.join(known[:20])}" if known else "it has no metrics")
        raise NotFoundError(f"run {run.id} has no metric {key!r}; {hint}")
    history = run.metric_history(key)
    total = len(history)
    shown = limit if limit is not None else (DEFAULT_POINTS if form == "table" else 0)
    first = 0 if shown == 0 else max(0, total - shown)
    points = zip(history.steps[first:].tolist(), history.values[first:].tolist(),
                 history.timestamps[first:].tolist(), strict=True)
    if form == "csv":
        write_csv(["step", "value", "timestamp"], ((s, val, iso_utc(t)) for s, val, t in points))
    elif form == "json":
        for s, val, t in points:
            typer.echo(dumps({"step": s, "value": val, "timestamp": t}))
    else:
        table = Table(title=f"{key}: {total} point(s)", caption=_caption(run))
        for column in ("step", "value", "time"):
            table.add_column(column, justify="right")
        for s, val, t in points:
            table.add_row(str(s), fmt_number(val), fmt_time(t))
        out().print(table)
    if first:
        err().print(Text(f"(the last {total - first} of {total} points; --limit 0 shows all)", style="dim"))
