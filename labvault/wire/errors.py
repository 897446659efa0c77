"""The labvault error classes on the wire: the HTTP status the server answers each one with, and the
class a client rebuilds from an answer (by the name the server sent, else by the status).

Both sides use these tables: the server in its exception handlers, ``labvault.wire.transport`` when it
turns an error response back into the exception the server raised. No FastAPI, no httpx here.
"""

from __future__ import annotations

from labvault import errors
from labvault.errors import LabvaultError

#: HTTP status for each labvault error class (the server's answer; the client maps back by name).
STATUS_BY_ERROR: dict[str, int] = {
    "NotFoundError": 404,
    "InvalidArgumentError": 400,
    "ConflictError": 409,
    "AlreadyExistsError": 409,
    "AuthenticationError": 401,
    "PermissionDeniedError": 403,
    "BackendUnavailableError": 503,
    "UnsupportedOperationError": 501,
    "CorruptDataError": 500,
    "LabvaultError": 500,
}
#: The error class a status means when a response carries no labvault error name (proxies, 413 ...).
ERROR_BY_STATUS: dict[int, str] = {
    400: "InvalidArgumentError", 401: "AuthenticationError", 403: "PermissionDeniedError",
    404: "NotFoundError", 405: "UnsupportedOperationError", 408: "BackendUnavailableError",
    409: "ConflictError", 411: "InvalidArgumentError", 413: "InvalidArgumentError",
    416: "InvalidArgumentError", 422: "InvalidArgumentError", 429: "BackendUnavailableError",
    501: "UnsupportedOperationError", 502: "BackendUnavailableError", 503: "BackendUnavailableError",
    504: "BackendUnavailableError",
}


def status_for(exc: LabvaultError) -> int:
    """The HTTP status the server answers a labvault error with."""
    for cls in type(exc).__mro__:
        status = STATUS_BY_ERROR.get(cls.__name__)
        if status is not None:
            return status
    return 500


def error_from(name: object, message: str, status: int) -> LabvaultError:
    """Rebuild the labvault error a server sent (by class name, else by status)."""
    cls_name = name if isinstance(name, str) and name in errors.__all__ else ERROR_BY_STATUS.get(status)
    cls = getattr(errors, cls_name, LabvaultError) if cls_name else LabvaultError
    assert isinstance(cls, type) and issubclass(cls, LabvaultError)
    return cls(message)
