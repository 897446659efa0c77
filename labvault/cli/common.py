"""What every command shares: the options several commands take (``--uri``, ``--artifacts``,
``--auth-db``), the consoles, the one-line error exit, opening the vault a command names and finding a run
by a shortened id.

A labvault error prints ``error: <ClassName>: <message>`` in red on stderr and exits with status 1 (see
:func:`exit_on_error`); bad usage exits with status 2 (typer).
"""

from __future__ import annotations

import shlex
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TextIO

import typer
from rich.console import Console
from rich.text import Text

import labvault
from labvault._uri import missing_local_store
from labvault.errors import InvalidArgumentError, LabvaultError, NotFoundError

if TYPE_CHECKING:
    from labvault.client.run import Run
    from labvault.client.vault import Vault

_URI_HELP = (
    "Where the vault lives, e.g. ./labvault-data, sqlite:///runs.db or file://some/dir. "
    "Default: $LABVAULT_URI, else ./labvault-data (SQLite + local blobs)."
)
#: ``--uri URI``: the vault a command works on (every command that opens one, and ``labvault --uri``).
UriOption = Annotated[
    str | None, typer.Option("--uri", metavar="URI", help=_URI_HELP, show_default=False)
]

_ARTIFACTS_HELP = (
    "Where the vault keeps artifact bytes when not in its default place, e.g. "
    "s3://bucket/prefix?endpoint_url=http://127.0.0.1:8333 or file:///mnt/blobs."
)
#: ``--artifacts URL``: a blob store for the vault's artifact bytes (``artifacts put``, ``gc``).
ArtifactsOption = Annotated[
    str | None, typer.Option("--artifacts", metavar="URL", help=_ARTIFACTS_HELP, show_default=False)
]

#: ``--auth-db PATH``: a server's users and tokens (``server``, ``users``, ``tokens``).
AuthDbOption = Annotated[
    Path | None,
    typer.Option("--auth-db", metavar="PATH", envvar="LABVAULT_AUTH_DB", show_default=False,
                 help="The server's auth store (SQLite). Default: $LABVAULT_AUTH_DB, else auth.db in the "
                      "user's config dir (~/.config/labvault)."),
]


def out() -> Console:
    """The console for results (stdout)."""
    return Console(highlight=False)


def err() -> Console:
    """The console for messages, progress bars and errors (stderr)."""
    return Console(stderr=True, highlight=False)


def fail(exc: BaseException | None = None, *, name: str | None = None, message: str = "") -> NoReturn:
    """Print ``error: <ClassName>: <message>`` in red on stderr and exit with status 1."""
    if exc is not None:
        name = type(exc).__name__
        message = str(exc)
    err().print(Text(f"error: {name}: {message}", style="bold red"))
    raise typer.Exit(1)


def fail_invalid(message: str) -> NoReturn:
    """Exit with ``error: InvalidArgumentError: <message>`` (a bad combination of options)."""
    fail(name="InvalidArgumentError", message=message)


@contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn labvault errors into a one-line red message and exit status 1 (no traceback)."""
    try:
        yield
    except LabvaultError as exc:
        fail(exc)


def given_uri(ctx: typer.Context, uri: str | None) -> str | None:
    """The URI given to the command, else to ``labvault --uri ...``, else None (the library default)."""
    if uri is not None:
        return uri
    root = ctx.find_root().obj
    if isinstance(root, dict):
        value = root.get("uri")
        return value if isinstance(value, str) else None
    return None


@contextmanager
def open_vault(ctx: typer.Context, uri: str | None, *, artifacts: str | None = None,
               remote: str | None = None, read_only: bool = False) -> Iterator[Vault]:
    """The vault the command names (see :func:`given_uri`), closed afterwards; labvault errors exit 1.

    ``read_only`` commands (listing, showing, downloading) never create a store: on a local vault that is
    not there they exit with an error naming the path and how to get one, where opening would have left an
    empty vault behind (a typo in ``--uri``, or the wrong working directory).
    """
    with exit_on_error(), warnings.catch_warnings():
        warnings.showwarning = _show_warning
        named = given_uri(ctx, uri)
        missing = missing_local_store(named) if read_only else None
        if missing is not None:
            raise NotFoundError(
                f"no vault at {missing}; run `labvault demo` to make one there, or point at yours with "
                "--uri or LABVAULT_URI")
        vault = labvault.open(named, artifacts=artifacts, remote=remote)
        try:
            yield vault
        finally:
            vault.close()


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """A warning raised inside a command as one line on stderr (``warning: ...``), without Python's
    file and line decoration."""
    err().print(Text(f"warning: {message}", style="yellow"), soft_wrap=True)


def find_run(vault: Vault, run_id: str) -> Run:
    """The run with this id, or the only run whose id starts with it (ids are shown shortened)."""
    try:
        return vault.get_run(run_id)
    except NotFoundError:
        if run_id.isascii() and run_id.isalnum() and len(run_id) < 4:
            raise InvalidArgumentError(
                f"run id prefix {run_id!r} is too short: give at least 4 characters of the run id "
                "(labvault runs EXPERIMENT lists them)") from None
        if not (4 <= len(run_id) < 32 and run_id.isascii() and run_id.isalnum()):
            raise
        found = vault.search_runs(None, filter=f"id LIKE '{run_id}%'", deleted=None)
        matches = [r for r in found if r.id.startswith(run_id)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            shown = ", ".join(r.id for r in matches[:5])
            raise InvalidArgumentError(
                f"run id prefix {run_id!r} is ambiguous: it matches {len(matches)} runs ({shown}...)"
            ) from None
        raise


def cli_prefix(ctx: typer.Context, uri: str | None) -> str:
    """``labvault`` plus ``--uri ...`` when the user named a store explicitly (for suggested commands)."""
    given = given_uri(ctx, uri)
    return "labvault" if given is None else f"labvault --uri {shlex.quote(given)}"


def auth_store(auth_db: Path | None) -> Any:
    """The server's auth store (``labvault.server.auth.AuthStore``) at ``--auth-db`` or its default."""
    from labvault.server.auth import AuthStore, default_auth_db  # lazy: loads numpy: not at CLI start

    return AuthStore(auth_db if auth_db is not None else default_auth_db())
