"""Looking after a store: ``labvault db upgrade`` (SQL schema versions) and ``labvault gc`` (artifact
blobs no run references any more)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from labvault._uri import resolve_uri
from labvault.cli.common import ArtifactsOption, UriOption, exit_on_error, given_uri, open_vault, out
from labvault.cli.format import fmt_size, fmt_time

__all__ = ["db_app", "gc_command"]

#: ``labvault db``.
db_app = typer.Typer(help="Maintain the store itself (labvault db upgrade).", no_args_is_help=True)

_SQL_SCHEMES = ("sqlite", "postgresql", "postgres")


def _without_password(resolved: str) -> str:
    """The URI to print: ``user:password@host`` loses its password."""
    if "@" not in resolved or "://" not in resolved:
        return resolved
    from sqlalchemy.engine import make_url  # lazy: sqlalchemy (~150 ms): not at CLI start

    try:
        return make_url(resolved).render_as_string(hide_password=True)
    except Exception:
        return resolved.split("://", 1)[0] + "://***@" + resolved.rsplit("@", 1)[1]


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, uri: UriOption = None) -> None:
    """Upgrade a SQL store's schema (SQLite or PostgreSQL) to this labvault's version, creating it if empty.

    A store made by an older labvault is never changed silently: opening it asks for this command. Safe
    to run from several processes at once (PostgreSQL: under an advisory lock; the others find nothing to
    do). Passwords in the URI are never printed.

    Example: labvault db upgrade --uri sqlite:///runs.db
    (or --uri postgresql://lab@db.example.org:5432/labvault)
    """
    console = out()
    with exit_on_error():
        scheme, resolved = resolve_uri(given_uri(ctx, uri))
        shown = _without_password(resolved)
        if scheme.split("+", 1)[0] not in _SQL_SCHEMES:
            console.print(Text(f"{shown} is a {scheme} store: it has no schema version, nothing to upgrade."))
            return
        from labvault.store.sql.migrations import upgrade  # lazy: sqlalchemy (~150 ms): not at CLI start

        old, new = upgrade(resolved)
    if old == 0:
        console.print(Text(f"created a new store at {shown} (schema version {new})."))
    elif old == new:
        console.print(Text(f"{shown} is already at schema version {new}: nothing to do."))
    else:
        console.print(Text(f"upgraded {shown} from schema version {old} to {new}.", style="green"))


def gc_command(
    ctx: typer.Context,
    uri: UriOption = None,
    artifacts: ArtifactsOption = None,
    grace: Annotated[
        float, typer.Option("--grace", metavar="HOURS", min=0.0,
                            help="Keep blobs written less than this many hours ago (protects a writer "
                                 "running now).")
    ] = 24.0,
    delete: Annotated[bool, typer.Option("--delete", help="Really delete (default: a dry run).")] = False,
) -> None:
    """Remove artifact blobs that no run references any more (after deleted runs or experiments).

    A dry run by default: prints what would be deleted and the bytes it would free. Blobs written within
    --grace hours are kept, so a collection is safe beside processes logging artifacts. If several vaults
    share one artifact store, a blob only another vault uses looks unreferenced: do not collect such a
    store from one vault.

    Example: labvault gc --uri sqlite:///runs.db --artifacts s3://bucket/blobs --delete
    """
    from labvault.client.gc import collect_garbage  # lazy: gc loads numpy: not at CLI start

    console = out()
    with open_vault(ctx, uri, artifacts=artifacts) as vault:
        report = collect_garbage(vault, grace_hours=grace, delete=delete)
    verb = "deleted" if report.deleted else "would delete"
    for blob in report.garbage:
        console.print(Text(f"{verb} {blob.key} ({fmt_size(blob.size)}, written {fmt_time(blob.modified)})"))
    summary = (f"{verb} {len(report.garbage)} unreferenced blob(s), {fmt_size(report.bytes_freed)} "
               f"{'freed' if report.deleted else 'to free'}; {len(report.recent)} kept inside the "
               f"{grace:g} h grace period; {report.referenced} referenced of {report.scanned} stored")
    console.print(Text(summary, style="green" if report.deleted else ""))
    if report.missing:
        console.print(Text(f"warning: {len(report.missing)} referenced blob(s) are missing from the store, "
                           f"e.g. {report.missing[0]}", style="yellow"))
    if not report.deleted and report.garbage:
        console.print(Text("dry run: pass --delete to delete them", style="dim"))
