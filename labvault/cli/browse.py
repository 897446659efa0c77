"""Looking around a vault: ``labvault experiments``, ``labvault runs`` (an experiment's runs as a table
that fits the terminal, or JSON lines) and ``labvault show`` (one run in full)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from labvault.cli.common import UriOption, err, find_run, open_vault, out
from labvault.cli.format import (
    SHORT_ID,
    dumps,
    fmt_duration,
    fmt_number,
    fmt_time,
    fmt_value,
    iso_utc,
    jsonable,
    print_artifacts,
    status_text,
    write_csv,
)

if TYPE_CHECKING:
    from labvault.client.run import Run
    from labvault.domain import ArtifactInfo, RunInfo

__all__ = ["experiments", "runs", "show"]

#: Default number of runs ``labvault runs`` shows.
DEFAULT_RUN_LIMIT = 100
#: How many params + metrics columns ``labvault runs`` shows when ``--columns`` is not given.
MAX_EXTRA_COLUMNS = 8


# -- experiments -------------------------------------------------------------------------------------------
def experiments(
    ctx: typer.Context,
    uri: UriOption = None,
    project: Annotated[
        str | None, typer.Option("--project", "-p", metavar="NAME",
                                 help="Only this project's experiments, e.g. -p vision.")
    ] = None,
) -> None:
    """List the experiments in the vault with their number of runs.

    Example: labvault experiments --project default
    """
    console = out()
    with open_vault(ctx, uri, read_only=True) as vault:
        found = vault.experiments(project)
        table = Table(title=f"{len(found)} experiment(s) in {vault.uri}")
        for column in ("project", "name", "id", "created", "runs"):
            table.add_column(column, justify="right" if column == "runs" else "left",
                             no_wrap=column in ("id", "created", "runs"))
        for exp in found:
            table.add_row(Text(exp.project), Text(exp.name), Text(exp.id), fmt_time(exp.created_at, False),
                          str(len(exp.runs())))
        console.print(table)


# -- runs --------------------------------------------------------------------------------------------------
_BASE_FIELDS = ("number", "id", "name", "status", "start", "end", "duration", "parent_id", "experiment")
_PREFIXES = ("params", "metrics", "tags", "results")


def _parse_columns(spec: str) -> list[str]:
    columns = [c.strip() for c in spec.split(",") if c.strip()]
    if not columns:
        raise typer.BadParameter("give at least one column, e.g. --columns params.lr,metrics.acc")
    for column in columns:
        prefix, _, key = column.partition(".")
        if column in _BASE_FIELDS or (prefix in _PREFIXES and key):
            continue
        raise typer.BadParameter(
            f"unknown column {column!r}: use params.KEY, metrics.KEY, tags.KEY, results.KEY or one of "
            f"{', '.join(_BASE_FIELDS)}"
        )
    return columns


def _column_value(column: str, run: Run, info: RunInfo) -> Any:
    prefix, _, key = column.partition(".")
    if prefix in _PREFIXES and key:
        section: dict[str, Any] = getattr(info, prefix)
        return section.get(key)
    return {
        "number": info.number, "id": info.id, "name": info.name, "status": info.status,
        "start": info.start_time, "end": info.end_time, "parent_id": info.parent_id,
        "experiment": run.experiment.name,
        "duration": None if info.end_time is None else info.end_time - info.start_time,
    }[column]


def _column_cell(column: str, value: Any, info: RunInfo) -> Text | str:
    if column == "status":
        return status_text(info.status)
    if column in ("start", "end"):
        return fmt_time(value, seconds=False)
    if column == "duration":
        return fmt_duration(info.start_time, info.end_time, info.status)
    if column in ("id", "parent_id") and isinstance(value, str):
        return Text(value[:SHORT_ID])
    return Text(fmt_number(value))


def _default_columns(infos: Sequence[RunInfo], mentioned: Sequence[str] = ()) -> list[str]:
    """Candidate columns, most telling first: those named in --order-by / --filter, params that differ
    between runs, metrics, the start time, then params that are the same everywhere."""
    param_keys = sorted({k for info in infos for k in info.params})
    metric_keys = sorted({k for info in infos for k in info.metrics})

    def varies(key: str) -> bool:
        seen = {json.dumps(jsonable(i.params[key]), sort_keys=True) for i in infos if key in i.params}
        return len(seen) > 1

    varying = [k for k in param_keys if varies(k)]
    constant = [k for k in param_keys if not varies(k)]
    ranked = ([f"params.{k}" for k in varying] + [f"metrics.{k}" for k in metric_keys] + ["start"]
              + [f"params.{k}" for k in constant])
    first = [c for c in dict.fromkeys(mentioned) if c in ranked or c.startswith("tags.") or c == "experiment"]
    return first + [c for c in ranked if c not in first]


def _mentioned_columns(filter: str | None, order_by: Sequence[str]) -> list[str]:
    """params.x / metrics.x / tags.x named in the sort keys, then in the filter (plain keys only)."""
    found = re.findall(r"\b((?:params|metrics|tags)\.[A-Za-z0-9_.\-]*[A-Za-z0-9_])", " ".join(order_by))
    found += re.findall(r"\b((?:params|metrics|tags)\.[A-Za-z0-9_.\-]*[A-Za-z0-9_])", filter or "")
    return found


def _header(column: str) -> str:
    prefix, _, key = column.partition(".")
    return f"{prefix}\n{key}" if prefix in _PREFIXES and key else column


def _text_width(cell: Text | str) -> int:
    text = cell.plain if isinstance(cell, Text) else cell
    return max((len(line) for line in text.splitlines()), default=0)


def _fit(columns: list[str], widths: Mapping[str, int], budget: int | None, cap: int) -> list[str]:
    """The leading columns that fit in ``budget`` characters (each costs its width + 3), at most ``cap``."""
    chosen: list[str] = []
    used = 0
    for column in columns:
        cost = widths[column] + 3
        if len(chosen) >= cap:
            break
        if budget is not None and used + cost > budget and len(chosen) >= 2:
            continue  # too wide: a narrower column further down may still fit
        chosen.append(column)
        used += cost
    return chosen


def _run_record(run: Run, info: RunInfo) -> dict[str, Any]:
    return {
        "id": info.id, "experiment": run.experiment.name, "project": run.experiment.project,
        "number": info.number, "name": info.name, "parent_id": info.parent_id, "status": info.status,
        "start_time": info.start_time, "end_time": info.end_time, "error": info.error,
        "params": info.params, "tags": info.tags, "metrics": info.metrics, "results": info.results,
    }


def runs(
    ctx: typer.Context,
    experiment: Annotated[
        str | None, typer.Argument(metavar="EXPERIMENT", show_default=False,
                                   help="The experiment's name, e.g. demo (default: every experiment).")
    ] = None,
    uri: UriOption = None,
    filter: Annotated[
        str | None,
        typer.Option("--filter", "-f", metavar="QUERY", help="Only runs matching this query, e.g. "
                     "\"params.lr > 0.01 and metrics.val_accuracy >= 0.9 and status = 'finished'\"."),
    ] = None,
    order_by: Annotated[
        list[str] | None,
        typer.Option("--order-by", "-o", metavar="KEY",
                     help="Sort key, repeatable, e.g. --order-by \"metrics.acc desc\" "
                     "--order-by params.lr (missing values last; default: run number)."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=0, metavar="N",
                          help="Show at most N runs, e.g. --limit 10 (0: no limit).")
    ] = DEFAULT_RUN_LIMIT,
    columns: Annotated[
        str | None,
        typer.Option("--columns", "-c", metavar="COLS", help="Comma-separated columns after # and id, e.g. "
                     "params.lr,metrics.acc or tags.model,status,end (default: params that differ, then "
                     f"metrics, at most {MAX_EXTRA_COLUMNS})."),
    ] = None,
    project: Annotated[
        str | None, typer.Option("--project", "-p", metavar="NAME",
                                 help="The experiment's project, e.g. -p vision.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per run (JSON lines) instead of a table.")
    ] = False,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="Print CSV (a header, then one line per run; times ISO 8601 UTC) "
                           "instead of a table, e.g. labvault runs demo --csv > runs.csv.")
    ] = False,
    deleted: Annotated[
        bool, typer.Option("--deleted", help="List the deleted runs instead (labvault runs restore RUN_ID "
                           "brings one back).")
    ] = False,
) -> None:
    """List runs as a table, filtered and sorted: an experiment's, or every experiment's when none is named.

    Example: labvault runs demo --filter "params.lr > 0.01" --order-by "metrics.val_accuracy desc" -n 5

    Also: labvault runs delete RUN_ID, labvault runs restore RUN_ID, labvault runs rename RUN_ID NAME
    (see labvault runs delete -h).
    """
    chosen = _parse_columns(columns) if columns is not None else None
    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv")
    with open_vault(ctx, uri, read_only=True) as vault:
        found = vault.search_runs(experiment, filter=filter, order_by=order_by or None,
                                  limit=None if limit == 0 else limit + 1, project=project,
                                  deleted=deleted)
        more = limit != 0 and len(found) > limit
        selected = list(found)[:limit] if limit else list(found)
        infos = [run.info for run in selected]
        if as_json or as_csv:
            (_print_json_lines if as_json else _print_csv)(selected, infos, chosen)
            if more:
                err().print(Text(f"(only the first {limit} runs; pass --limit 0 for all)", style="dim"))
            return
        what = "deleted run(s)" if deleted else "run(s)"
        title = (f"experiment {experiment!r}: " if experiment is not None else "all experiments: ") + \
            f"{len(selected)}{'+' if more else ''} {what}"
        several = experiment is None and len({r.experiment.id for r in selected}) > 1
        mentioned = ["experiment"] * several + _mentioned_columns(filter, order_by or [])
        left_out = _print_runs_table(title, selected, infos, chosen, mentioned)
        _print_notes(limit if more else None, left_out)


def _print_notes(limit: int | None, left_out: Sequence[str]) -> None:
    """Under the runs table, on stderr: that only ``limit`` runs are shown, and which columns did not fit."""
    notes = []
    if limit is not None:
        notes.append(f"showing the first {limit} runs (--limit 0 shows all)")
    if left_out:
        names = ", ".join(left_out)
        notes.append(f"{len(left_out)} more column(s) left out to fit: "
                     + (names if len(names) < 200 else names[:197] + "...")
                     + " (choose with --columns)")
    for note in notes:
        err().print(Text(note, style="dim"), soft_wrap=True)


def _print_csv(selected: Sequence[Run], infos: Sequence[RunInfo], chosen: Sequence[str] | None) -> None:
    """CSV: every field of every run (params, metrics, tags and results each a column, by key), or its id,
    number and the ``--columns`` chosen."""
    if chosen is not None:
        columns = ["id", "number", *chosen]
        write_csv(columns, ([info.id, info.number] + [_csv_value(c, run, info) for c in chosen]
                            for run, info in zip(selected, infos, strict=True)))
        return
    keyed = [f"{prefix}.{key}" for prefix in _PREFIXES
             for key in sorted({k for info in infos for k in getattr(info, prefix)})]
    base = ["id", "experiment", "project", "number", "name", "status", "start_time", "end_time", "parent_id",
            "error"]
    rows = ([info.id, run.experiment.name, run.experiment.project, info.number, info.name, info.status,
             iso_utc(info.start_time), iso_utc(info.end_time), info.parent_id, info.error]
            + [_column_value(c, run, info) for c in keyed] for run, info in zip(selected, infos, strict=True))
    write_csv(base + keyed, rows)


def _csv_value(column: str, run: Run, info: RunInfo) -> Any:
    value = _column_value(column, run, info)
    return iso_utc(value) if column in ("start", "end") else value


def _print_json_lines(selected: Sequence[Run], infos: Sequence[RunInfo],
                      chosen: Sequence[str] | None) -> None:
    """One JSON object per run: everything, or its id, number and the ``--columns`` chosen."""
    for run, info in zip(selected, infos, strict=True):
        record = (_run_record(run, info) if chosen is None else
                  {"id": info.id, "number": info.number, **{c: _column_value(c, run, info) for c in chosen}})
        typer.echo(dumps(record))


def _print_runs_table(title: str, selected: Sequence[Run], infos: Sequence[RunInfo],
                      chosen: list[str] | None, mentioned: Sequence[str]) -> list[str]:
    """The runs table: the ``--columns`` chosen, else name, status, duration and the most telling columns
    that fit the terminal. Returns the candidate columns left out."""
    fixed = ["name", "status", "duration"] if chosen is None else []
    candidates = _default_columns(infos, mentioned) if chosen is None else chosen
    rows = [(info, {c: _column_cell(c, _column_value(c, run, info), info) for c in fixed + candidates})
            for run, info in zip(selected, infos, strict=True)]
    widths = {c: max([_text_width(_header(c))] + [_text_width(cells[c]) for _, cells in rows])
              for c in fixed + candidates}
    console, shown = _fit_to_console(infos, fixed, candidates, widths, fit=chosen is None)
    columns_shown = fixed + shown
    if chosen is None and "start" in shown:  # fitted as a candidate, displayed next to the duration
        columns_shown.remove("start")
        columns_shown.insert(2, "start")
    table = Table(title=title)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("id", no_wrap=True)
    for column in columns_shown:
        numeric = column.startswith(("params.", "metrics.", "results."))
        table.add_column(_header(column), justify="right" if numeric else "left",
                         no_wrap=column != "name", max_width=24 if column == "name" else None,
                         overflow="ellipsis")
    for info, cells in rows:
        table.add_row(str(info.number), Text(info.id[:SHORT_ID]), *(cells[c] for c in columns_shown))
    console.print(table)
    return [c for c in candidates if c not in shown]


def _fit_to_console(infos: Sequence[RunInfo], fixed: Sequence[str], candidates: list[str],
                    widths: Mapping[str, int], fit: bool) -> tuple[Console, list[str]]:
    """The console to print on and the candidate columns to show (with ``fit``: those that fit a terminal).

    Piped or redirected output never folds cells: the console is as wide as the table needs.
    """
    console = out()
    interactive = console.is_terminal or "COLUMNS" in os.environ
    base = 4 + len(str(max((i.number for i in infos), default=1))) + 3 + SHORT_ID + 3
    base += sum(min(widths[c], 24 if c == "name" else widths[c]) + 3 for c in fixed)
    shown = (_fit(candidates, widths, console.width - base if interactive else None, MAX_EXTRA_COLUMNS)
             if fit else candidates)
    if not interactive:
        total = base + sum(widths[c] + 3 for c in shown)
        console = Console(highlight=False, width=max(80, total))
    return console, shown


# -- show --------------------------------------------------------------------------------------------------
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID",
                                          help="The run's id, or a unique prefix of it (4+ characters).",
                                          show_default=False)],
    uri: UriOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the details as one JSON object.")] = False,
) -> None:
    """Show one run: ids, status, times, error, params, tags, results, metrics and artifacts.

    Example: labvault show 3f2a9c1e
    """
    with open_vault(ctx, uri, read_only=True) as vault:
        run = find_run(vault, run_id)
        info = run.info
        histories = {key: run.metric_history(key) for key in sorted(info.metrics)}
        artifacts = run.list_artifacts()
        children = vault.search_runs(run.experiment, filter=f"parent_id = '{info.id}'")
        if as_json:
            record = _run_record(run, info)
            record["metrics"] = {
                key: {"latest": info.metrics[key], "points": len(h),
                      "last_step": int(h.steps[-1]) if len(h) else None}
                for key, h in histories.items()
            }
            record["artifacts"] = [{"key": a.key, "size": a.size, "digest": a.digest,
                                    "created_at": a.created_at} for a in artifacts]
            record["children"] = [c.id for c in children]
            typer.echo(dumps(record))
            return
        _print_run(run, info, histories, artifacts, [c.id for c in children])


def _print_run(run: Run, info: RunInfo, histories: Mapping[str, Any], artifacts: Sequence[ArtifactInfo],
               children: Sequence[str]) -> None:
    """A run in full: its ids, status and times, then params, tags, results, metrics and artifacts."""
    console = out()
    console.print(_run_head(run, info, children))
    for title, values in (("params", info.params), ("tags", info.tags), ("results", info.results)):
        if not values:
            console.print(Text(f"{title}: none", style="dim"))
            continue
        table = Table(title=title, title_justify="left", show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value", overflow="fold")
        for key in sorted(values):
            table.add_row(Text(key), Text(fmt_value(values[key], 200)))
        console.print(table)
    if histories:
        console.print(_metrics_table(info, histories))
    else:
        console.print(Text("metrics: none", style="dim"))
    print_artifacts(console, artifacts)


def _run_head(run: Run, info: RunInfo, children: Sequence[str]) -> Table:
    """Ids, parent, children, status, times and error, one per line."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("run", Text(f"{info.id}  (#{info.number}{' ' + info.name if info.name else ''})"))
    head.add_row("experiment", Text(f"{run.experiment.project}/{run.experiment.name}  ({run.experiment.id})"))
    if info.parent_id:
        head.add_row("parent", Text(info.parent_id))
    if children:
        shown = ", ".join(c[:SHORT_ID] for c in children[:10]) + (" ..." if len(children) > 10 else "")
        head.add_row("children", Text(f"{len(children)}: {shown}"))
    head.add_row("status", status_text(info.status))
    head.add_row("start", fmt_time(info.start_time))
    head.add_row("end", fmt_time(info.end_time))
    head.add_row("duration", fmt_duration(info.start_time, info.end_time, info.status))
    if info.error:
        head.add_row("error", Text(info.error, style="red"))
    return head


def _metrics_table(info: RunInfo, histories: Mapping[str, Any]) -> Table:
    """Per metric: the latest value, the last step, how many points, and the finite min and max."""
    import numpy as np  # lazy: numpy (~60 ms): not at CLI start

    table = Table(title="metrics", title_justify="left")
    for column in ("key", "latest", "last step", "points", "min", "max"):
        table.add_column(column, justify="left" if column == "key" else "right")
    for key, hist in histories.items():
        values = hist.values
        finite = values[np.isfinite(values)] if len(hist) else values
        table.add_row(Text(key), fmt_value(info.metrics[key]),
                      str(int(hist.steps[-1])) if len(hist) else "-", str(len(hist)),
                      fmt_value(float(finite.min())) if finite.size else "-",
                      fmt_value(float(finite.max())) if finite.size else "-")
    return table
