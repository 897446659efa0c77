"""The exceptions labvault raises.

Every public entry point raises one of these, never a driver's own exception: backends translate
driver errors at their boundary (``raise ... from exc``) so callers can handle a missing run the same
way on SQLite, PostgreSQL or a remote server. The HTTP client re-raises the class the server sent.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "AuthenticationError",
    "BackendUnavailableError",
    "ConflictError",
    "CorruptDataError",
    "InvalidArgumentError",
    "LabvaultError",
    "NotFoundError",
    "PermissionDeniedError",
    "UnsupportedOperationError",
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
