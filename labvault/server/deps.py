"""What the endpoints share: the server's state, who the request acts as, and the role each endpoint needs.

``Reader``, ``Writer`` and ``Admin`` are the parameter types of the endpoints (``p: Writer``): each is the
request's ``Principal``, checked for that role (403 ``PermissionDeniedError`` otherwise). The
authentication itself happened before routing (``labvault.server.app``'s auth middleware keeps the
principal in the request scope under ``PRINCIPAL_KEY``); these only read it, and declare the bearer
security scheme in the OpenAPI document.

Endpoints reach the server's state through their request (``state_of(request)``) rather than through one
more dependency: FastAPI's solving of a dependency costs every request about 9 us (measured), and the
metric flushes of every client go through here.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from labvault.errors import AuthenticationError, InvalidArgumentError, UnsupportedOperationError
from labvault.server.auth import AuthStore, Principal
from labvault.server.state import ServerState

__all__ = ["DIGEST_RE", "PRINCIPAL_KEY", "UPLOADS", "Admin", "Credentials", "Reader", "Writer", "auth_store",
           "check_digest", "state_of"]

#: A sha256 digest as the API writes it (64 lowercase hex digits).
DIGEST_RE = re.compile(r"[0-9a-f]{64}")
#: Where resumable uploads keep their parts in the blob store (``uploads/<id>/``).
UPLOADS = "uploads/"
#: Where the auth middleware keeps the request's ``Principal`` in the scope's ``state``.
PRINCIPAL_KEY = "labvault_principal"


def state_of(request: Request) -> ServerState:
    """The state of the server the request came to (``app.state.labvault``)."""
    state: ServerState = request.app.state.labvault
    return state


def check_digest(digest: str) -> str:
    """``digest`` when it is a sha256 hex digest, else ``InvalidArgumentError``."""
    if not DIGEST_RE.fullmatch(digest):
        raise InvalidArgumentError(f"{digest[:80]!r} is not a sha256 hex digest")
    return digest


def auth_store(state: ServerState) -> AuthStore:
    """The server's users and tokens (``UnsupportedOperationError`` when it runs without authentication)."""
    if state.auth is None:
        raise UnsupportedOperationError("this server runs without authentication (--insecure): no users")
    return state.auth


# The role checks are ``async def``: they only read the request scope, and a plain ``def`` dependency would
# cost every request one more trip through the thread pool.
_bearer = HTTPBearer(auto_error=False, description="an API token: lv_<id>_<secret>")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _principal(request: Request) -> Principal:
    """Who the request acts as (the auth middleware authenticated it before routing)."""
    principal = request.scope.get("state", {}).get(PRINCIPAL_KEY)
    if not isinstance(principal, Principal):  # only reachable if the middleware was bypassed
        raise AuthenticationError("this server needs an API token: send 'Authorization: Bearer <token>'")
    return principal


async def _reader(request: Request, credentials: Credentials) -> Principal:
    """Any authenticated caller."""
    return _principal(request)


async def _writer(request: Request, credentials: Credentials) -> Principal:
    """A caller with the writer role (or admin)."""
    p = _principal(request)
    p.require("writer")
    return p


async def _admin(request: Request, credentials: Credentials) -> Principal:
    """A caller with the admin role."""
    p = _principal(request)
    p.require("admin")
    return p


#: The request's principal, any role / at least a writer / an admin.
Reader = Annotated[Principal, Depends(_reader)]
Writer = Annotated[Principal, Depends(_writer)]
Admin = Annotated[Principal, Depends(_admin)]

