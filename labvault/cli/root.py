"""The root ``labvault`` Typer app: its global options (``--uri``, ``--version``), the command tree (every
command and command group, registered here in the order ``labvault --help`` lists them) and :func:`main`.

Each command lives in the module of its group: ``demo``, ``browse`` (experiments, runs, show),
``artifacts``, ``blobs``, ``maintenance`` (gc, db), ``server``, ``admin`` (users, tokens, login, logout)
and ``sync`` (push, pull, status, copy); ``common`` and ``format`` hold what they share.
"""

from __future__ import annotations

from typing import Annotated

import typer

import labvault
from labvault.cli import admin, browse, demo, maintenance, server, sync
from labvault.cli.artifacts import artifacts_app
from labvault.cli.blobs import blobs_app
from labvault.cli.common import UriOption

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


# The order here is the order of `labvault --help`: commands first, then the command groups.
for _name, _command in (
    ("demo", demo.demo),
    ("experiments", browse.experiments),
    ("runs", browse.runs),
    ("show", browse.show),
    ("gc", maintenance.gc_command),
    ("server", server.server),
    ("login", admin.login),
    ("logout", admin.logout),
    ("push", sync.push),
    ("pull", sync.pull),
    ("status", sync.status),
    ("copy", sync.copy_cmd),
):
    app.command(_name)(_command)
for _name, _group in (
    ("artifacts", artifacts_app),
    ("db", maintenance.db_app),
    ("blobs", blobs_app),
    ("users", admin.users_app),
    ("tokens", admin.tokens_app),
):
    app.add_typer(_group, name=_name)
del _name, _command, _group


def main() -> None:
    """The ``labvault`` console script (and ``python -m labvault``)."""
    app(prog_name="labvault")
