"""Shared URI checks: which scheme a URI names, and no secrets in URLs that must not carry them.

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

import re
from urllib.parse import parse_qsl, urlsplit

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
