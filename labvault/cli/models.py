"""``labvault models``: the models of a vault (``ls``), one model's versions (``show``) and aliases
(``alias``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from labvault.cli.common import UriOption, open_vault, out
from labvault.cli.format import SHORT_ID, dumps, fmt_size, fmt_time

if TYPE_CHECKING:
    from labvault.client.models import Model

__all__ = ["models_app"]

#: ``labvault models``.
models_app = typer.Typer(
    help="Models kept in the vault: instance ids, versions, names, aliases (vault.create_model, "
         "run.log_model).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ModelArgument = Annotated[str, typer.Argument(metavar="MODEL", show_default=False,
                                              help="The model's name or instance id.")]


def _model_ref(text: str) -> int | str:
    """A model given on the command line: digits are an instance id, anything else a name."""
    return int(text) if text.isdigit() else text


def _row(m: Model) -> dict[str, object]:
    return {"instance_id": m.instance_id, "name": m.name, "version": m.version, "model_type": m.model_type,
            "format": m.format, "size": m.size, "aliases": m.aliases, "created_at": m.created_at,
            "source_run": m.source_run, "digest": m.digest}


def _table(title: str, models: list[Model]) -> Table:
    table = Table(title=title)
    for column in ("id", "name", "version", "aliases", "format", "size", "created", "run", "type"):
        table.add_column(column, justify="right" if column in ("id", "version", "size") else "left",
                         no_wrap=column != "type", overflow="fold" if column == "type" else "ellipsis")
    for m in models:
        table.add_row(str(m.instance_id), Text(m.name or "-"), str(m.version),
                      Text(", ".join(m.aliases) or "-"), m.format, fmt_size(m.size),
                      fmt_time(m.created_at, seconds=False), Text((m.source_run or "-")[:SHORT_ID]),
                      Text(m.model_type))
    return table


@models_app.command("ls")
def models_ls(
    ctx: typer.Context, uri: UriOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per model.")] = False,
) -> None:
    """List every model with its latest version.

    Example: labvault models ls
    """
    with open_vault(ctx, uri, read_only=True) as vault:
        models = vault.get_models()
        if as_json:
            for m in models:
                typer.echo(dumps(_row(m)))
            return
        out().print(_table(f"{len(models)} model(s)", models) if models else
                    Text("no models yet (vault.create_model or run.log_model stores one)", style="dim"))


@models_app.command("show")
def models_show(
    ctx: typer.Context, model: ModelArgument, uri: UriOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per version.")] = False,
) -> None:
    """Show every version of a model (aliases on the versions they point at).

    Example: labvault models show clf
    """
    with open_vault(ctx, uri, read_only=True) as vault:
        versions = vault.model_versions(_model_ref(model))
        if as_json:
            for m in versions:
                typer.echo(dumps(_row(m)))
            return
        out().print(_table(f"model {model}: {len(versions)} version(s)", versions))


@models_app.command("alias")
def models_alias(
    ctx: typer.Context, model: ModelArgument,
    alias: Annotated[str, typer.Argument(metavar="ALIAS", show_default=False, help="e.g. production.")],
    version: Annotated[int, typer.Argument(metavar="VERSION", min=1, show_default=False,
                                           help="The version the alias points at.")],
    uri: UriOption = None,
) -> None:
    """Point an alias at a version of a model (the last write wins).

    Example: labvault models alias clf production 3
    """
    with open_vault(ctx, uri, read_only=True) as vault:
        vault.set_model_alias(_model_ref(model), alias, version)
    out().print(Text(f"model {model}: {alias} -> version {version}"))
