"""Who may use a labvault server: ``labvault users`` and ``labvault tokens`` (kept in the server's auth
store), and ``labvault login`` / ``logout`` (a token saved on this machine for a server URL)."""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from labvault.cli.common import AuthDbOption, auth_store, err, exit_on_error, out
from labvault.cli.format import fmt_time
from labvault.store.http.credentials import forget_token, normalize_url, save_token

__all__ = ["login", "logout", "tokens_app", "users_app"]

#: ``labvault users``.
users_app = typer.Typer(
    help="Users of a labvault server and their roles (reader, writer, admin), kept in its auth store.",
    no_args_is_help=True,
)
#: ``labvault tokens``.
tokens_app = typer.Typer(
    help="API tokens of a labvault server's users (shown once when created; stored hashed).",
    no_args_is_help=True,
)

_ROLE_HELP = "reader (read), writer (read and write runs), admin (also deletes, users and tokens)."


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="User name.", show_default=False)],
    role: Annotated[str, typer.Option("--role", metavar="ROLE", help=_ROLE_HELP)] = "reader",
    auth_db: AuthDbOption = None,
) -> None:
    """Add a user with a role. Then give them a token: labvault tokens create NAME."""
    with exit_on_error():
        store = auth_store(auth_db)
        store.add_user(name, role)
    out().print(Text(f"added user {name!r} ({role}) to {store.path}"))


@users_app.command("list")
def users_list(auth_db: AuthDbOption = None) -> None:
    """List users, their roles and how many live tokens each has."""
    with exit_on_error():
        store = auth_store(auth_db)
        users = store.users()
        tokens = store.tokens()
    now = time.time()
    table = Table(box=None, header_style="bold")
    for column in ("user", "role", "tokens", "created"):
        table.add_column(column)
    for name, role, created in users:
        live = sum(1 for t in tokens if t.user == name and t.revoked_at is None
                   and (t.expires_at is None or t.expires_at > now))
        table.add_row(Text(name), role, str(live), fmt_time(created))
    out().print(table)


@users_app.command("passwd")
def users_passwd(
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False)],
    remove: Annotated[bool, typer.Option("--remove", help="Remove the password (tokens only).")] = False,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from the first line of stdin, not a prompt.")] = False,
    auth_db: AuthDbOption = None,
) -> None:
    """Set a user's password (prompted twice, never echoed; only an argon2 hash is kept), so that
    `labvault login URL --user NAME` gets them a token. Existing tokens stay valid.

    Example: labvault users passwd ana
    """
    with exit_on_error():
        store = auth_store(auth_db)
        if remove:
            store.set_password(name, None)
        else:
            password = _read_password(password_stdin, confirm=True)
            store.set_password(name, password)
    out().print(Text(f"removed the password of {name!r}" if remove else f"set the password of {name!r}"))


def _read_password(from_stdin: bool, *, confirm: bool) -> str:
    """A password from the first line of stdin, or from a hidden prompt (twice with ``confirm``)."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=confirm))


@users_app.command("set-role")
def users_set_role(
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False)],
    role: Annotated[str, typer.Argument(metavar="ROLE", help=_ROLE_HELP, show_default=False)],
    auth_db: AuthDbOption = None,
) -> None:
    """Change a user's role (takes effect on their next request)."""
    with exit_on_error():
        auth_store(auth_db).set_role(name, role)
    out().print(Text(f"user {name!r} is now {role}"))


@users_app.command("remove")
def users_remove(
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False)],
    auth_db: AuthDbOption = None,
) -> None:
    """Remove a user and every token of theirs."""
    with exit_on_error():
        auth_store(auth_db).remove_user(name)
    out().print(Text(f"removed user {name!r} and their tokens"))


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user the token acts as.",
                                        show_default=False)],
    description: Annotated[str | None, typer.Option("--description", metavar="TEXT",
                                                    help="What the token is for.")] = None,
    expires_days: Annotated[float | None, typer.Option("--expires-days", metavar="DAYS", min=0.0001,
                                                       help="Expire after this many days.")] = None,
    auth_db: AuthDbOption = None,
) -> None:
    """Issue a token for a user and print it once (stdout); only a hash of it is stored.

    Example: export LABVAULT_TOKEN=$(labvault tokens create ana --description laptop)
    """
    with exit_on_error():
        store = auth_store(auth_db)
        token_id, token = store.create_token(name, description,
                                             None if expires_days is None else expires_days * 86400)
    typer.echo(token)
    err().print(Text(f"token {token_id} for {name!r}: shown only now; revoke it with "
                     f"labvault tokens revoke {token_id}", style="yellow"))


@tokens_app.command("list")
def tokens_list(
    name: Annotated[str | None, typer.Argument(metavar="[NAME]", help="Only this user's tokens.",
                                               show_default=False)] = None,
    auth_db: AuthDbOption = None,
) -> None:
    """List tokens (ids, users, state), never their secrets."""
    with exit_on_error():
        tokens = auth_store(auth_db).tokens(name)
    now = time.time()
    table = Table(box=None, header_style="bold")
    for column in ("id", "user", "state", "created", "description"):
        table.add_column(column)
    for t in tokens:
        state = ("revoked" if t.revoked_at is not None
                 else "expired" if t.expires_at is not None and t.expires_at <= now else "active")
        table.add_row(t.id, Text(t.user), state, fmt_time(t.created_at), Text(t.description or ""))
    out().print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(metavar="TOKEN_ID", help="The 12 hex digits after 'lv_'.",
                                            show_default=False)],
    auth_db: AuthDbOption = None,
) -> None:
    """Revoke a token: every server using this auth store refuses it from the next request on."""
    with exit_on_error():
        auth_store(auth_db).revoke_token(token_id)
    out().print(Text(f"revoked token {token_id}"))


def login(
    url: Annotated[str, typer.Argument(metavar="URL", help="The server, e.g. https://lab.example:8443.",
                                       show_default=False)],
    token: Annotated[str | None, typer.Option("--token", metavar="TOKEN", show_default=False,
                                              help="The token (default: $LABVAULT_TOKEN, else a prompt).")]
    = None,
    user: Annotated[str | None, typer.Option("--user", "-u", metavar="NAME", show_default=False,
                                             help="Log in with this user's password (prompted) instead: "
                                                  "the server issues a new token.")] = None,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="With --user: read the password from stdin instead of a prompt.")] = False,
) -> None:
    """Check a token against a server and store it (mode 0600) for every later command on that URL;
    with --user, get a new token for a user name and password (POST /api/v1/auth/token) and store that.

    Example: labvault login https://lab.example:8443 --user ana, then labvault --uri https://lab.example:8443
    runs exp
    """
    from labvault.store.http.backend import HTTPBackend  # lazy: loads httpx (~100 ms): not at CLI start

    if user is not None and token is not None:
        raise typer.BadParameter("give --token or --user, not both")
    with exit_on_error():
        if user is not None:
            token = _token_for_password(url, user, _read_password(password_stdin, confirm=False))
        secret = token or os.environ.get("LABVAULT_TOKEN") or typer.prompt("token", hide_input=True)
        probe = HTTPBackend(url, token=secret.strip())
        try:
            info = probe.server_info()
        finally:
            probe.close()
        who = info.get("user") or {}
        path = save_token(url, secret.strip(), who.get("name"))
    out().print(Text(f"logged in to {probe.base_url} as {who.get('name')!r} ({who.get('role')}); "
                     f"token saved in {path}", style="green"))


def _token_for_password(url: str, user: str, password: str) -> str:
    """A new token for ``user`` from the server at ``url`` (``POST /api/v1/auth/token``)."""
    from labvault.wire.transport import APIClient  # lazy: loads httpx (~100 ms)

    api = APIClient(normalize_url(url))
    try:
        body = {"user": user, "password": password,
                "description": f"labvault login on {socket.gethostname()}"}
        answer = api.request("POST", "/auth/token", json_body=body).json()
    finally:
        api.close()
    return str(answer["token"])


def logout(
    url: Annotated[str, typer.Argument(metavar="URL", show_default=False)],
) -> None:
    """Forget the token stored for a server."""
    with exit_on_error():
        had = forget_token(url)
    out().print(Text(f"forgot the token of {url}" if had else f"no token was stored for {url}"))
