"""URIs: which store a URI names, no secrets in URLs that must not carry them, and option coercion.

``resolve_uri`` applies labvault's defaults (``None`` -> ``$LABVAULT_URI`` -> the embedded default
``./labvault-data``; a directory holding ``labvault.db`` is the embedded SQLite layout).

``uri_scheme`` tells a ``scheme://...`` URI from a bare path for ``labvault.open``, ``open_backend`` and
the blob store URLs alike, so that a misspelt or unknown scheme (``git+file:///x``, ``hat:x``) is an
error naming it rather than a directory of that name.

Secrets (labvault server URLs, S3 URLs):

A credential in a URL ends up where URLs go: ``repr(vault)``, logs, shell history, sync state, error
messages. Stores whose credentials have a proper channel (a server token: ``token=``, ``$LABVAULT_TOKEN``,
``labvault login``; S3: the AWS environment) therefore refuse a URL that holds one, in ``user:password@``
or in a query parameter (or fragment field) whose name looks like a credential, with a message that names
where the credential was but never repeats it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from labvault._defaults import DEFAULT_URI, EMBEDDED_DB_NAME
from labvault._fs import path_from_uri
from labvault.errors import InvalidArgumentError

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
#: Query parameter names taken for credentials (matched case-insensitively anywhere in the name).
_CREDENTIAL_NAME = re.compile(
    r"token|passw|pwd|secret|credential|auth|api[_-]?key|access[_-]?key|signature|^key$|[_-]key$",
    re.IGNORECASE,
)


def credential_fields(url: str) -> list[str]:
    """Where ``url`` carries something that looks like a credential: ``"user:password@"`` and the names of
    credential-like query or fragment parameters (empty when there is none)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed '[' in the host
        raise InvalidArgumentError(f"malformed URL: {exc}") from None
    found = ["user:password@"] if "@" in parts.netloc else []
    for section in (parts.query, parts.fragment):
        for name, _ in parse_qsl(section, keep_blank_values=True):
            if _CREDENTIAL_NAME.search(name) and name not in found:
                found.append(name)
    return found


def without_secrets(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``: no user info, query or fragment (safe to show)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url.split("?", 1)[0].split("#", 1)[0]
    rest = rest.split("#", 1)[0].split("?", 1)[0]
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rsplit('@', 1)[-1]}{slash}{path}"


def refuse_credentials(url: str, what: str, advice: str) -> None:
    """Raise ``InvalidArgumentError`` when ``url`` carries a credential; ``what`` names the kind of URL
    (e.g. "labvault server URLs") and ``advice`` says where the credential goes instead."""
    found = credential_fields(url)
    if found:
        where = ", ".join(repr(f) if f != "user:password@" else f for f in found)
        raise InvalidArgumentError(
            f"{what} must not carry credentials ({where} in {without_secrets(url)!r}): {advice}")


def uri_scheme(uri: str, what: str) -> str | None:
    """The lower-case scheme of ``scheme://...``, or None for a bare path (``dir``, ``./dir``, ``/abs``).

    ``name:rest`` without ``//`` (a scheme missing its slashes, or a typo) is refused rather than taken
    for a directory called ``name:rest``; so is a malformed scheme. ``what`` names the URI in messages.
    """
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        if not _SCHEME.fullmatch(scheme):
            raise InvalidArgumentError(
                f"invalid {what} {without_secrets(uri)!r}: bad scheme {scheme!r} (letters, digits, '+', '-' "
                "and '.', starting with a letter)")
        return scheme.lower()
    head = uri.split("/", 1)[0]
    if ":" in head and len(head.split(":", 1)[0]) > 1:
        raise InvalidArgumentError(
            f"invalid {what} {uri!r}: write scheme://... (e.g. file:///dir) or a plain path")
    return None


# -- option coercion: URL query text or Python values, checked against a range ------------------------
def check_options(backend: str, options: Mapping[str, Any], known: Iterable[str]) -> None:
    """Raise ``InvalidArgumentError`` naming every option a backend does not understand."""
    allowed = sorted(known)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InvalidArgumentError(
            f"unknown option(s) for the {backend} backend: {', '.join(unknown)} (known: {', '.join(allowed)})"
        )


def int_option(owner: str, name: str, value: Any, low: int, high: int) -> int:
    """An integer option in ``[low, high]``, also from URL text; ``InvalidArgumentError`` naming it."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise InvalidArgumentError(f"{owner} option {name}={value!r} must be an integer") from None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidArgumentError(f"{owner} option {name}={value!r} must be an integer from {low} to {high}")
    return value


def float_option(owner: str, name: str, value: Any, low: float, high: float, *,
                 exclusive_low: bool = False) -> float:
    """A finite number option in ``[low, high]`` (``(low, high]`` with ``exclusive_low``), also from text."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InvalidArgumentError(f"{owner} option {name}={value!r} must be a number") from None
    above_low = value > low if exclusive_low else value >= low
    if (not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value)
            or not above_low or not value <= high):
        interval = f"({low}, {high}]" if exclusive_low else f"[{low}, {high}]"
        raise InvalidArgumentError(f"{owner} option {name}={value!r} must be a number in {interval}")
    return float(value)


def bool_option(owner: str, name: str, value: Any) -> bool:
    """A boolean option: a bool, or 1/0, true/false, yes/no, on/off as URL text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise InvalidArgumentError(f"{owner} option {name}={value!r} must be true or false")


# -- resolution: what labvault.open() makes of what the user passed -------------------------------------
def resolve_uri(uri: str | os.PathLike[str] | None) -> tuple[str, str]:
    """Return (scheme, uri) for what the user passed, applying the defaults (see the module docstring)."""
    if uri is None:
        uri = os.environ.get("LABVAULT_URI") or None
    if uri is None:
        return "sqlite", embedded_sqlite_uri(Path(DEFAULT_URI))
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str):
        raise InvalidArgumentError(f"uri must be a string or a path, got {type(uri).__name__}")
    if not uri or uri.strip() != uri or "\x00" in uri:
        raise InvalidArgumentError(f"invalid vault URI {uri!r}: empty, padded or containing NUL")
    scheme = uri_scheme(uri, "vault URI")
    if scheme is not None:
        return scheme, uri
    path = Path(uri).expanduser()
    if (path / EMBEDDED_DB_NAME).is_file():
        return "sqlite", embedded_sqlite_uri(path)
    return "file", uri


def missing_local_store(uri: str | os.PathLike[str] | None) -> str | None:
    """What the user named, shown as they would write it, when ``uri`` (resolved as ``labvault.open``
    resolves it) is a local store that does not exist yet: a file-backend directory or a SQLite database
    file that is not there. None when it exists, when the URI is not local (a server, PostgreSQL, S3, ...)
    or when it is malformed (opening it then says what is wrong).

    Opening a missing local store creates it; read-only commands ask this first so that a typo or the
    wrong working directory is reported instead of leaving an empty vault behind.
    """
    try:
        scheme, resolved = resolve_uri(uri)
    except InvalidArgumentError:
        return None
    given = os.fspath(uri) if uri is not None else os.environ.get("LABVAULT_URI") or DEFAULT_URI
    if scheme == "sqlite":
        db = unquote(urlsplit(resolved).path)[1:]
        if db and not Path(db).expanduser().exists():
            return given
    elif scheme == "file":
        try:
            path = path_from_uri(resolved, "file")
        except InvalidArgumentError:
            return None
        if not path.exists():
            return given
    return None


def embedded_sqlite_uri(directory: Path) -> str:
    """The SQLite URI of the embedded layout in ``directory``."""
    return f"sqlite:///{directory / EMBEDDED_DB_NAME}"


_SECRET_OPTION = re.compile(r"(?i)(password|passwd|secret|token|access_key|secret_key|session_token|key)$")


def redact(uri: str) -> str:
    """``uri`` fit to show or log: a password in it becomes ``***`` (the user stays), and so does the
    value of any query option whose name says it is a secret (``?password=``, ``?token=``, ...)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    authority, slash, tail = rest.partition("/")
    if not slash:
        authority, tail = rest.partition("?")[0], rest.partition("?")[1] + rest.partition("?")[2]
    if "@" in authority:
        creds, host = authority.rsplit("@", 1)
        user, colon, _ = creds.partition(":")
        authority = f"{user}:***@{host}" if colon else f"{user}@{host}"
    path, question, query = tail.partition("?")
    if question:
        query = "&".join(
            f"{name}=***" if is_set and _SECRET_OPTION.search(name) else f"{name}{is_set}{value}"
            for name, is_set, value in (item.partition("=") for item in query.split("&")))
    return f"{scheme}://{authority}{slash}{path}{question}{query}"
