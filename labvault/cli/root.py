"""The root ``labvault`` Typer app: its global options (``--uri``, ``--version``), the command tree (every
command and command group, registered here in the order ``labvault --help`` lists them) and :func:`main`.

Each command lives in the module of its group: ``demo``, ``browse`` (experiments, runs, show), ``runs``
(the runs group: list, delete, restore, rename), ``metrics``, ``watch``, ``models``,
``artifacts``, ``blobs``, ``maintenance`` (gc, db), ``server``, ``admin`` (users, tokens, login, logout)
and ``sync`` (push, pull, status, copy); ``common`` and ``format`` hold what they share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

import labvault
from labvault.cli import admin, browse, demo, maintenance, metrics, server, sync, watch
from labvault.cli.artifacts import artifacts_app
from labvault.cli.blobs import blobs_app
from labvault.cli.common import UriOption
from labvault.cli.models import models_app
from labvault.cli.runs import runs_app

__all__ = ["app", "main"]

#: ``labvault``: the whole command line.
app = typer.Typer(
    name="labvault",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"labvault {labvault.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    uri: UriOption = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True,
                     help="Print the labvault version and exit."),
    ] = False,
) -> None:
    """labvault: keep everything an ML experiment produces behind one API with pluggable storage.

    Start with `labvault demo`, then explore: `labvault runs demo --order-by "metrics.val_accuracy desc"`.
    """
    ctx.obj = {"uri": uri}


# The order here is the order of `labvault --help`.
_TREE: tuple[tuple[str, Callable[..., None] | typer.Typer], ...] = (
    ("demo", demo.demo),
    ("experiments", browse.experiments),
    ("runs", runs_app),
    ("show", browse.show),
    ("metrics", metrics.metrics),
    ("watch", watch.watch),
    ("gc", maintenance.gc_command),
    ("server", server.server),
    ("login", admin.login),
    ("logout", admin.logout),
    ("push", sync.push),
    ("pull", sync.pull),
    ("status", sync.status),
    ("copy", sync.copy_cmd),
    ("artifacts", artifacts_app),
    ("models", models_app),
    ("db", maintenance.db_app),
    ("blobs", blobs_app),
    ("users", admin.users_app),
    ("tokens", admin.tokens_app),
)
for _name, _entry in _TREE:
    if isinstance(_entry, typer.Typer):
        app.add_typer(_entry, name=_name)
    else:
        app.command(_name)(_entry)
del _name, _entry


def main() -> None:
    """The ``labvault`` console script (and ``python -m labvault``)."""
    app(prog_name="labvault")
