"""``labvault watch``: print a store's changes as they happen (any process's), one line or JSON object
per event, filtered by kind and experiment; ``--after ID`` first replays what was missed."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from labvault.cli.common import UriOption, open_vault, out
from labvault.cli.format import dumps, iso_utc

if TYPE_CHECKING:
    from labvault.domain import ChangeEvent

__all__ = ["watch"]


def watch(
    ctx: typer.Context,
    uri: UriOption = None,
    kinds: Annotated[list[str] | None, typer.Option(
        "--kind", "-k", metavar="KIND", show_default=False,
        help="Only this kind (repeatable): run.finished, metric.logged, model.created, ..., or a family "
             "such as run or model.")] = None,
    experiment: Annotated[str | None, typer.Option(
        "--experiment", "-e", metavar="NAME", show_default=False, help="Only this experiment's changes.")]
    = None,
    after: Annotated[str | None, typer.Option(
        "--after", metavar="ID", show_default=False,
        help="Start right after this event id (replays what the store's change log still holds).")] = None,
    count: Annotated[int | None, typer.Option(
        "--count", "-n", min=1, metavar="N", show_default=False, help="Stop after N events.")] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=0.0, metavar="SECONDS", show_default=False,
        help="Stop when nothing arrived for this long (default: wait forever; Ctrl-C stops).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per event.")] = False,
) -> None:
    """Print the store's changes as they happen, from every process sharing it.

    Example: labvault watch -k run.finished -k model -e mnist
    """
    with open_vault(ctx, uri, read_only=True) as vault, \
            vault.watch(kinds, experiment, after=after) as feed:
        seen = 0
        try:
            while count is None or seen < count:
                event = feed.get(timeout=timeout)
                if event is None:
                    break
                seen += 1
                _print(event, as_json)
        except KeyboardInterrupt:
            pass


def _print(event: ChangeEvent, as_json: bool) -> None:
    if as_json:
        typer.echo(dumps(event.to_json()))
        return
    where = event.run_id[:8] if event.run_id else (event.experiment_id or "")[:8]
    data = " ".join(f"{k}={v}" for k, v in sorted(event.data.items()))
    line = Text.assemble((iso_utc(event.time or time.time()), "dim"), "  ", (f"{event.kind:<18}", "bold"),
                         " ", (where, "cyan"), "  ", data)
    out().print(line, soft_wrap=True)
