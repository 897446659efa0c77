"""Moving experiments between stores: ``labvault push``, ``pull``, ``status`` (against a remote) and
``copy`` (any store to any store), with a progress bar over runs and a one-line report."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

import labvault
from labvault.cli.common import UriOption, err, exit_on_error, fail_invalid, open_vault, out
from labvault.cli.format import SHORT_ID, fmt_size

__all__ = ["copy_cmd", "pull", "push", "status"]

_REMOTE_HELP = "The remote store, e.g. http://server:8000 or postgresql://... Default: $LABVAULT_REMOTE."
_RemoteOption = Annotated[
    str | None, typer.Option("--remote", "-r", metavar="URI", help=_REMOTE_HELP, show_default=False)
]
_ConflictOption = Annotated[
    str | None, typer.Option("--on-conflict", metavar="ours|theirs", show_default=False,
                             help="Resolve runs whose params/tags changed on both sides: keep the local "
                                  "value (ours) or the remote one (theirs). Default: stop with an error.")
]
_ProjectOption = Annotated[
    str | None, typer.Option("--project", "-p", metavar="NAME", help="The experiments' project.")
]
_WorkersOption = Annotated[
    int, typer.Option("--workers", "-w", min=1, max=64, help="Runs sent at once (parents before children).")
]

_STATE_STYLE = {"in sync": "green", "ahead": "cyan", "behind": "yellow", "diverged": "bold red"}


def _sync_remote(remote: str | None) -> str:
    """``--remote``, else ``$LABVAULT_REMOTE``; exits when neither is set."""
    found = remote or os.environ.get("LABVAULT_REMOTE") or None
    if not found:
        fail_invalid("no remote: pass --remote URI or set $LABVAULT_REMOTE")
    return found


def _on_conflict(value: str | None) -> Any:
    """``--on-conflict`` checked: None, ours or theirs."""
    if value not in (None, "ours", "theirs"):
        fail_invalid(f"--on-conflict must be ours or theirs, got {value!r}")
    return value


@contextmanager
def _sync_progress(description: str) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar over runs, driven by the sync ``progress(phase, done, total)`` callback."""
    from rich.progress import (  # lazy: rich.progress (~4 ms): only commands that show progress
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                   TimeElapsedColumn(), console=err(), transient=True)
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        task = tasks.get(phase)
        if task is None:
            task = tasks[phase] = bar.add_task(f"{description}", total=total)
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


def _print_report(report: Any) -> None:
    """What a push / pull / copy did, in one line (plus the conflicts it resolved)."""
    verb = {"push": "pushed", "pull": "pulled", "copy": "copied"}.get(report.direction, report.direction)
    exps = ", ".join(report.experiments) or "nothing"
    if not report.changed:
        out().print(Text(f"{exps}: already up to date ({report.runs_unchanged} run(s) unchanged)",
                         style="green"))
        return
    line = (f"{verb} {exps}: {report.runs_created} run(s) created, {report.runs_updated} updated, "
            f"{report.runs_unchanged} unchanged; {report.points_sent:,} metric point(s), "
            f"{report.blobs_sent} blob(s) ({fmt_size(report.bytes_sent)})")
    out().print(Text(line, style="green"))
    if report.conflicts_resolved:
        out().print(Text(f"resolved {len(report.conflicts_resolved)} conflict(s): "
                         + ", ".join(report.conflicts_resolved), style="yellow"))


def push(
    ctx: typer.Context,
    experiments: Annotated[list[str] | None, typer.Argument(metavar="EXPERIMENT",
                                                            help="Default: every experiment.")] = None,
    uri: UriOption = None,
    remote: _RemoteOption = None,
    project: _ProjectOption = None,
    on_conflict: _ConflictOption = None,
    workers: _WorkersOption = 4,
) -> None:
    """Upload experiments to the remote: only runs changed since the last sync, only missing points and
    blobs. Safe to repeat and to restart after an interruption.

    Example: labvault push mnist --remote http://server:8000
    """
    target = _sync_remote(remote)
    resolve = _on_conflict(on_conflict)
    with open_vault(ctx, uri, remote=target) as vault, _sync_progress(f"push to {target}") as progress:
        report = vault.push(experiments or None, project=project, on_conflict=resolve,
                            progress=progress, workers=workers)
    _print_report(report)


def pull(
    ctx: typer.Context,
    experiments: Annotated[list[str] | None, typer.Argument(
        metavar="EXPERIMENT|URL", help="Names or <remote>#<project>/<name> URLs. Default: every "
                                            "experiment of the remote.")] = None,
    uri: UriOption = None,
    remote: _RemoteOption = None,
    project: _ProjectOption = None,
    on_conflict: _ConflictOption = None,
    workers: _WorkersOption = 4,
) -> None:
    """Download experiments from the remote when they are newer there (or missing here).

    Example: labvault pull mnist --remote http://server:8000
    """
    names = list(experiments or [])
    needs_remote = not names or any("#" not in n for n in names)
    target = _sync_remote(remote) if needs_remote else remote
    resolve = _on_conflict(on_conflict)
    with open_vault(ctx, uri, remote=target) as vault:
        if not names:
            assert target is not None
            names = _remote_experiments(target, project)
        for name in names:
            with _sync_progress(f"pull {name}") as progress:
                vault.pull(name, project=project, on_conflict=resolve, progress=progress, workers=workers)
            _print_report(vault.last_sync)


def _remote_experiments(remote: str, project: str | None) -> list[str]:
    """The names of the remote's experiments (of one project, if given)."""
    listing = labvault.open_backend(remote)
    try:
        return [e.name for e in listing.list_experiments(project)]
    finally:
        listing.close()


def status(
    ctx: typer.Context,
    experiment: Annotated[str, typer.Argument(metavar="EXPERIMENT", show_default=False)],
    uri: UriOption = None,
    remote: _RemoteOption = None,
    project: _ProjectOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per run: in sync, ahead (changed here), behind (changed on the remote) or diverged (both).

    Example: labvault status mnist --remote http://server:8000
    """
    target = _sync_remote(remote)
    with open_vault(ctx, uri, remote=target) as vault:
        found = vault.sync_status(experiment, project=project)
    if as_json:
        out().print_json(data=[{"run_id": s.run_id, "name": s.name, "state": s.state,
                                "local_revision": s.local_revision, "remote_revision": s.remote_revision,
                                "changed": s.changed, "conflicts": s.conflicts} for s in found])
        return
    table = Table(title=f"{experiment}: {vault.uri} vs {target}")
    for column in ("run", "name", "state", "changed", "conflicts"):
        table.add_column(column, no_wrap=column in ("run", "state"))
    for s in found:
        table.add_row(s.run_id[:SHORT_ID], Text(s.name or "-"), Text(s.state, style=_STATE_STYLE[s.state]),
                      Text(", ".join(s.changed) or "-"), Text(", ".join(s.conflicts) or "-"))
    out().print(table)


def copy_cmd(
    source: Annotated[str, typer.Argument(metavar="SRC_URI", show_default=False)],
    destination: Annotated[str, typer.Argument(metavar="DST_URI", show_default=False)],
    experiment: Annotated[list[str] | None, typer.Option(
        "--experiment", "-e", metavar="NAME", help="Only this experiment (repeatable).")] = None,
    project: _ProjectOption = None,
    on_conflict: _ConflictOption = None,
    workers: _WorkersOption = 4,
) -> None:
    """Copy a whole vault (or some experiments) to another store, any backend to any backend. Run ids are
    kept; copying again sends nothing new.

    Example: labvault copy ./labvault-data postgresql://db/team
    """
    resolve = "ours" if on_conflict == "ours" else ("theirs" if on_conflict == "theirs" else None)
    _on_conflict(on_conflict)
    with exit_on_error(), _sync_progress(f"copy to {destination}") as progress:
        report = labvault.copy(source, destination, experiment or None, project=project,
                               on_conflict=resolve, progress=progress, workers=workers)
    _print_report(report)
