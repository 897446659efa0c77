"""The exceptions labvault raises.

Every public entry point raises one of these, never a driver's own exception: backends translate
driver errors at their boundary (``raise ... from exc``) so callers can handle a missing run the same
way on SQLite, PostgreSQL or a remote server. The HTTP client re-raises the class the server sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "AlreadyExistsError",
    "AuthenticationError",
    "BackendUnavailableError",
    "ConflictError",
    "CorruptDataError",
    "ErrorTable",
    "InvalidArgumentError",
    "LabvaultError",
    "NotFoundError",
    "PermissionDeniedError",
    "UnsupportedOperationError",
    "translate",
    "translating",
]


class LabvaultError(Exception):
    """Base class of every labvault error."""


class NotFoundError(LabvaultError, KeyError):
    """The experiment, run, artifact or other entity asked for does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class AlreadyExistsError(LabvaultError):
    """Something that must be unique (a registered scheme, a name) exists already."""


class ConflictError(LabvaultError):
    """A write contradicts what is stored, e.g. a write-once parameter logged with a new value."""


class InvalidArgumentError(LabvaultError, ValueError):
    """An argument is malformed: a bad name, key, value, URI, path, filter or config."""


class PermissionDeniedError(LabvaultError):
    """The caller is authenticated but not allowed to do this."""


class AuthenticationError(LabvaultError):
    """The caller could not be authenticated (missing, wrong or revoked token)."""


class BackendUnavailableError(LabvaultError):
    """The storage backend cannot be reached (server down, connection refused, timeout)."""


class UnsupportedOperationError(LabvaultError):
    """The backend does not offer this capability."""


class CorruptDataError(LabvaultError):
    """Stored data fails verification: a digest mismatch, an unreadable document or segment."""


#: What ``translating`` maps: an exception class to the labvault class (whose message is then
#: ``"<where>: <original>"``) or to a function building the error from the exception.
ErrorTable = Mapping[type[BaseException], Callable[[BaseException], Any]]


class translating(contextlib.ContextDecorator):  # lower case: it reads as a verb, ``with translating(...)``
    """Translate driver errors into labvault errors at a backend boundary, from one table per backend.

    ``with translating(TABLE, where="PostgreSQL at db:5432"):`` (or as a decorator) re-raises the first
    matching entry's labvault error ``from`` the original; labvault errors and exceptions no entry
    matches pass through unchanged. As httpx keeps one mapping table for its transports, each backend
    keeps its table in one place, so the same failure reads the same on every path of that backend.
    """

    __slots__ = ("table", "where")

    def __init__(self, table: ErrorTable, where: str = "") -> None:
        self.table = table
        self.where = where

    def __enter__(self) -> translating:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, LabvaultError) or not isinstance(exc, Exception):
            return
        error = translate(exc, self.table, self.where)
        if error is not None:
            raise error from exc


def translate(exc: BaseException, table: ErrorTable, where: str = "") -> LabvaultError | None:
    """The labvault error ``table`` maps ``exc`` to (first match in table order), or None."""
    for cls, make in table.items():
        if isinstance(exc, cls):
            build: Callable[[Any], Any] = make
            if isinstance(make, type) and issubclass(make, LabvaultError):
                return make(f"{where}: {exc}" if where else str(exc))
            error = build(exc)
            assert isinstance(error, LabvaultError), f"{make!r} built {error!r}, not a LabvaultError"
            return error
    return None
