"""``labvault runs``: list runs (``labvault runs [EXPERIMENT]``, see ``browse.runs``) and change one:
``delete``, ``restore``, ``rename``.

``labvault runs demo`` keeps meaning "list the runs of demo": the group hands anything that is not one of
its verbs to ``list`` (an experiment named like a verb is listed with ``labvault runs list delete``).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text
from typer.core import TyperGroup

from labvault.cli.browse import runs as list_runs
from labvault.cli.common import UriOption, find_run, open_vault, out

__all__ = ["runs_app"]


class _ListByDefault(TyperGroup):
    """A group whose first argument, when it is not a subcommand, is the ``list`` command's."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer vendors click: its Context
        if not args or args[0] not in self.commands:
            args = ["list", *args]
        return super().parse_args(ctx, args)


runs_app = typer.Typer(
    cls=_ListByDefault,
    help="List runs (labvault runs [EXPERIMENT]), or delete, restore or rename one.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
runs_app.command("list")(list_runs)

RunIdArgument = Annotated[str, typer.Argument(metavar="RUN_ID", show_default=False,
                                              help="The run's id, or a unique prefix of it (4+ characters).")]


@runs_app.command("delete")
def delete(ctx: typer.Context, run_id: RunIdArgument, uri: UriOption = None) -> None:
    """Delete a run: it leaves `labvault runs` and searches, and keeps its data until restored.

    Example: labvault runs delete 3f2a9c1e   (labvault runs --deleted lists deleted runs)
    """
    with open_vault(ctx, uri, read_only=True) as vault:
        run = find_run(vault, run_id)
        vault.delete_run(run)
        out().print(Text(f"deleted run {run.id} ({run.experiment.name} #{run.number}); "
                         f"labvault runs restore {run.id[:8]} brings it back"))


@runs_app.command("restore")
def restore(ctx: typer.Context, run_id: RunIdArgument, uri: UriOption = None) -> None:
    """Bring a deleted run back into `labvault runs` and searches.

    Example: labvault runs restore 3f2a9c1e
    """
    with open_vault(ctx, uri, read_only=True) as vault:
        run = find_run(vault, run_id)
        was = run.deleted
        vault.restore_run(run)
        out().print(Text(f"restored run {run.id} ({run.experiment.name} #{run.number})" if was else
                         f"run {run.id} is not deleted: nothing to do"))


@runs_app.command("rename")
def rename(
    ctx: typer.Context, run_id: RunIdArgument,
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False, help="The new name.")],
    uri: UriOption = None,
) -> None:
    """Give a run a new name (its id and number stay).

    Example: labvault runs rename 3f2a9c1e baseline
    """
    with open_vault(ctx, uri, read_only=True) as vault:
        run = find_run(vault, run_id)
        old = run.name
        run.rename(name)
        out().print(Text(f"renamed run {run.id} ({run.experiment.name} #{run.number}) from "
                         f"{old!r} to {name!r}"))
